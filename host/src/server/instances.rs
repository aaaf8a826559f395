//! Running plugin instances for `POST /plugins/{id}/process`: started on the first
//! batch, reused by later ones, one batch at a time per plugin, drained and cleaned
//! up on disable, unregister and server shutdown, and started afresh after a failure.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::error::ApiError;
use super::pool::Registries;
use crate::registry::{Entry, RegistryError, ReviewStatus};
use crate::runtime::{Host, PluginHandle, State};
use crate::Batch;

/// The running instances, one slot per plugin id.
#[derive(Default)]
pub(crate) struct Instances {
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    running: Option<Running>,
}

struct Running {
    handle: PluginHandle,
    /// What the instance was started from: a changed entry means a new instance.
    fingerprint: String,
    /// The library file as it was at start: a changed file means the hash is checked again.
    library: LibraryStamp,
}

#[derive(PartialEq, Eq)]
struct LibraryStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
}

impl LibraryStamp {
    fn of(path: &Path) -> Option<LibraryStamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(LibraryStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&metadata),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a slot leaves at worst a stale instance, which the next
    // call replaces: keep serving.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything about an entry that an instance was started from.
fn fingerprint(entry: &Entry) -> String {
    serde_json::json!([
        entry.created_at,
        entry.library,
        entry.sha256,
        entry.plugin_dir,
        entry.review.reviewed_at,
        entry.review.reviewed_sha256,
        entry.review.granted,
        entry.config,
    ])
    .to_string()
}

impl Instances {
    fn slot(&self, id: &str) -> Arc<Mutex<Slot>> {
        lock(&self.slots).entry(id.to_owned()).or_default().clone()
    }

    /// Sends `batch` through plugin `id`, starting an instance if none runs. The
    /// registry is read on every call, so a plugin disabled or unregistered by another
    /// process (the CLI) stops here too.
    pub(crate) fn process(
        &self,
        registries: &Registries,
        host: &Host,
        id: &str,
        batch: &Batch,
    ) -> Result<Batch, ApiError> {
        // Refuse unknown ids before a slot exists for them.
        registries.with(|registry| registry.get(id))?;
        let slot_arc = self.slot(id);
        let mut slot = lock(&slot_arc);
        let entry = match registries.with(|registry| registry.get(id)) {
            Ok(entry) => entry,
            Err(err) => {
                stop(id, slot.running.take());
                drop(slot);
                self.forget(id, &slot_arc);
                return Err(err.into());
            }
        };
        if entry.review.status != ReviewStatus::Approved {
            stop(id, slot.running.take());
            return Err(RegistryError::NotApproved {
                id: entry.id,
                status: entry.review.status,
            }
            .into());
        }
        if !entry.enabled {
            stop(id, slot.running.take());
            return Err(RegistryError::Disabled { id: entry.id }.into());
        }
        let fingerprint = fingerprint(&entry);
        let stale = slot.running.as_ref().is_some_and(|running| {
            running.fingerprint != fingerprint
                || LibraryStamp::of(&entry.library).as_ref() != Some(&running.library)
        });
        if stale {
            stop(id, slot.running.take());
        }
        let running = match &mut slot.running {
            Some(running) => running,
            empty => {
                // `spec` checks approval, enablement and the library's SHA-256.
                let spec = registries.with(|registry| registry.spec(id))?;
                let library = LibraryStamp::of(&spec.library);
                let handle = host.start(spec)?;
                tracing::info!(plugin = %id, confinement = %handle.status().confinement, "plugin instance started");
                empty.insert(Running {
                    handle,
                    fingerprint,
                    library: library.unwrap_or(LibraryStamp {
                        len: 0,
                        modified: None,
                        #[cfg(unix)]
                        inode: 0,
                    }),
                })
            }
        };
        let result = running.handle.process(batch);
        if matches!(running.handle.status().state, State::Failed(_)) {
            // A failed instance takes no more batches: the next call starts a fresh one.
            slot.running = None;
        }
        Ok(result?)
    }

    fn forget(&self, id: &str, slot: &Arc<Mutex<Slot>>) {
        let mut slots = lock(&self.slots);
        if slots
            .get(id)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            slots.remove(id);
        }
    }

    /// Drains plugin `id`'s instance, if one runs: waits for the batch in flight, runs
    /// `cleanup` and stops the worker.
    pub(crate) fn stop(&self, id: &str) {
        let slot = lock(&self.slots).remove(id);
        if let Some(slot) = slot {
            let running = lock(&slot).running.take();
            stop(id, running);
        }
    }

    /// Drains every instance (server shutdown).
    pub(crate) fn stop_all(&self) {
        let slots: Vec<_> = lock(&self.slots).drain().collect();
        for (id, slot) in slots {
            let running = lock(&slot).running.take();
            stop(&id, running);
        }
    }

    /// How many instances run now.
    pub(crate) fn running(&self) -> usize {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter(|slot| slot.try_lock().map_or(true, |slot| slot.running.is_some()))
            .count()
    }
}

fn stop(id: &str, running: Option<Running>) {
    let Some(running) = running else { return };
    match running.handle.shutdown() {
        Ok(status) => {
            tracing::info!(plugin = %id, batches = status.batches, "plugin instance cleaned up and stopped")
        }
        Err(err) => {
            tracing::warn!(plugin = %id, error = %err, "plugin cleanup failed; instance stopped")
        }
    }
}
