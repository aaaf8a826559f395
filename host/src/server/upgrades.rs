//! Live upgrades in `plugbay serve`: a batch sent to a plugin *name*
//! (`POST /plugins/sequencer/process`) goes to the name's current version, and an
//! upgrade switches the name to another version at the next batch boundary, start
//! before stop, without a failed request.
//!
//! A switch, whether asked of this server (`POST /plugins/{id}/upgrade`) or found in
//! the registry (`plugbay upgrade` from another process, noticed at the name's next
//! batch), goes:
//!
//! 1. the new version's instance is started and initialised while the old one goes
//!    on serving; if it does not start, the old version stays (or becomes again) the
//!    current one, the failure is audited (`upgrade-failed`) and the error names the
//!    new version;
//! 2. holding the new instance (batches for the name wait for it), the registry's
//!    current version becomes the new one;
//! 3. the old instance finishes the batch it is on, if any, runs `cleanup` and
//!    stops; a batch that was waiting for it asks for the current version again and
//!    goes to the new one;
//! 4. the new instance takes the batches.
//!
//! So the old version's `cleanup` returns before the new version's first batch, and
//! no batch is lost, repeated or refused on the way. Batches sent to an id
//! (`name@version`) go to that version, current or not.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use super::error::{chain, ApiError, ErrorCode};
use super::App;
use crate::runtime::PluginStatus;
use crate::Batch;

/// Who the audit log says switched a name back after a failed start.
const SERVER_ACTOR: &str = "plugbay serve";

/// How many times a batch asks for the current version again before it gives up
/// (each time, an upgrade switched the name while it waited).
const MAX_MOVES: usize = 16;

/// The names this server serves, and the switches between their versions.
#[derive(Default)]
pub(crate) struct Upgrades {
    /// Per name, the version this server serves it with.
    serving: Mutex<HashMap<String, String>>,
    /// One switch at a time.
    switching: Mutex<()>,
}

/// What `POST /plugins/{id}/upgrade` answers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UpgradeReport {
    /// The plugin name.
    pub name: String,
    /// The version that was current.
    pub from: Option<String>,
    /// The version that is current now.
    pub to: String,
    /// Whether anything changed.
    pub changed: bool,
    /// The old instances this server stopped: their final status.
    pub retired: Vec<PluginStatus>,
    /// Why an old instance's `cleanup` or stop failed, if one did (the upgrade
    /// happened all the same).
    pub cleanup_errors: Vec<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Upgrades {
    /// Sends `batch` through the current version of plugin name `name`, switching
    /// first if the registry's current version is not the one this server serves.
    pub(crate) fn process(&self, app: &App, name: &str, batch: &Batch) -> Result<Batch, ApiError> {
        for _ in 0..MAX_MOVES {
            let current = app.registries.with(|registry| registry.current_id(name))?;
            let serving = lock(&self.serving).get(name).cloned();
            match serving {
                Some(serving) if serving != current => {
                    self.follow(app, name, &serving, &current);
                    continue;
                }
                Some(_) => {}
                None => {
                    lock(&self.serving).insert(name.to_owned(), current.clone());
                }
            }
            let served =
                app.instances
                    .process_current(&app.registries, &app.host, &current, name, batch)?;
            if let Some(output) = served {
                return Ok(output);
            }
        }
        Err(ApiError::new(
            ErrorCode::PluginBackoff,
            format!("plugin name `{name}` was switched to another version {MAX_MOVES} times while this batch waited; send it again"),
        ))
    }

    /// Makes version `to` (checked by the registry: approved, enabled, unchanged)
    /// the current version of its name, `name`, whose current version is `from`:
    /// starts it, switches, and retires the old instances (see the module's docs).
    pub(crate) fn upgrade(
        &self,
        app: &App,
        name: &str,
        from: Option<&str>,
        to: &str,
        actor: &str,
    ) -> Result<UpgradeReport, ApiError> {
        let _one = lock(&self.switching);
        let serving = lock(&self.serving).get(name).cloned();
        let failed = match self.switch(app, name, from, serving.as_deref(), to, actor) {
            Ok(switched) => return switched,
            Err(failed) => failed,
        };
        let _ = app
            .registries
            .with(|registry| registry.record_upgrade_failure(to, from, &failed.message, actor));
        let kept = match from {
            Some(from) => format!("{from} stays current"),
            None => format!("`{name}` still has no current version"),
        };
        Err(ApiError::new(
            ErrorCode::UpgradeFailed,
            format!(
                "cannot upgrade {} to {to}: {to} did not start, so {kept}: {}",
                from.unwrap_or(name),
                failed.message
            ),
        ))
    }

    /// The registry's current version of `name` changed outside this server (from
    /// `serving` to `current`): switches to it as an upgrade would, or, if it does
    /// not start, makes `serving` current again.
    fn follow(&self, app: &App, name: &str, serving: &str, current: &str) {
        let _one = lock(&self.switching);
        if lock(&self.serving).get(name).map(String::as_str) != Some(serving) {
            return; // Another batch switched it meanwhile.
        }
        tracing::info!(plugin = %name, from = %serving, to = %current, "the current version changed in the registry; switching");
        let switched = self.switch(
            app,
            name,
            Some(current),
            Some(serving),
            current,
            SERVER_ACTOR,
        );
        if let Ok(Err(err)) = &switched {
            tracing::warn!(plugin = %name, error = %err.message, "the registry changed again while switching");
        }
        if let Err(err) = switched {
            tracing::warn!(plugin = %name, version = %current, error = %err.message, "the new current version did not start; the version before it stays current");
            let restored = app.registries.with(|registry| {
                registry.switch_current(name, Some(current), serving, SERVER_ACTOR)?;
                registry.record_upgrade_failure(current, Some(serving), &err.message, SERVER_ACTOR)
            });
            if let Err(restore) = restored {
                tracing::warn!(plugin = %name, error = %chain(&restore), "could not make the version before current again");
            }
        }
    }

    /// Starts `to` (unless its instance runs), makes it current if `from` is (and it
    /// is not already), and retires the instances of `from` and `serving`. The outer
    /// error is why `to` did not start (nothing changed then); the inner one why the
    /// registry did not switch (another upgrade did meanwhile).
    fn switch(
        &self,
        app: &App,
        name: &str,
        from: Option<&str>,
        serving: Option<&str>,
        to: &str,
        actor: &str,
    ) -> Result<Result<UpgradeReport, ApiError>, ApiError> {
        let held = app
            .instances
            .hold(&app.registries, &app.host, to, None, |_new| {
                // The new instance runs, and batches for it wait until this returns.
                let switched = app
                    .registries
                    .with(|registry| registry.switch_current(name, from, to, actor))?;
                let mut report = UpgradeReport {
                    name: name.to_owned(),
                    from: from.map(ToOwned::to_owned),
                    to: to.to_owned(),
                    changed: switched.changed,
                    retired: Vec::new(),
                    cleanup_errors: Vec::new(),
                };
                let mut old: Vec<&str> = from.into_iter().chain(serving).collect();
                old.dedup();
                for id in old.into_iter().filter(|id| *id != to) {
                    // Waits for the batch it is on; the old version cleans up before
                    // the new one takes a batch.
                    if let Some((status, error)) = app.instances.retire(id) {
                        report.retired.push(status);
                        report.cleanup_errors.extend(error);
                    }
                }
                lock(&self.serving).insert(name.to_owned(), to.to_owned());
                tracing::info!(plugin = %name, from = ?from, to = %to, "upgraded");
                Ok::<_, ApiError>(report)
            });
        held.map(|report| report.expect("an instance held by its id is never moved"))
    }
}
