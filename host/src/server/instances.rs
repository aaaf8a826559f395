//! Running plugin instances for `POST /plugins/{id}/process`: started on the first
//! batch, reused by later ones, one batch at a time per plugin, drained and cleaned
//! up on disable, unregister and server shutdown, and started afresh after a failure
//! — at once for the first few failures, then after a delay that doubles with each
//! further one (see [`RestartPolicy`]), and not at all while too many of the
//! plugin's workers are stuck in plugin code. What a client can make a plugin do
//! (hang, say) thus costs the server a bounded number of threads, not one per
//! request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::error::{ApiError, ErrorCode};
use super::pool::Registries;
use crate::loader::FileStamp;
use crate::registry::{Entry, RegistryError, ReviewStatus};
use crate::runtime::{Host, PluginHandle, PluginStatus, State};
use crate::Batch;

/// When the server starts a fresh instance of a plugin whose instance failed (a
/// panic, a missed deadline, a failed start).
///
/// The first [`immediate`](Self::immediate) failures within [`window`](Self::window)
/// are each followed by a fresh instance on the next batch. After each further one
/// the next instance waits [`backoff`](Self::backoff), doubled for every failure
/// beyond the first delayed one, up to [`max_backoff`](Self::max_backoff); batches
/// in the meantime get 503 `plugin_backoff` with `Retry-After`. A plugin with
/// [`max_abandoned`](Self::max_abandoned) workers still stuck in plugin code starts
/// no instance until one of them returns. A changed registry entry (config, library,
/// review), or disabling and enabling the plugin, forgets the failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Failures within the window after which an instance starts again at once.
    pub immediate: u32,
    /// The delay before the next instance after the first failure beyond those.
    pub backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
    /// How long a failure counts.
    pub window: Duration,
    /// Abandoned workers of one plugin that still run, at which no instance of it
    /// starts.
    pub max_abandoned: usize,
}

impl Default for RestartPolicy {
    /// 3 immediate restarts per 10 minutes, then 1 s, 2 s, 4 s, … up to 5 minutes;
    /// at most 4 stuck workers per plugin.
    fn default() -> Self {
        RestartPolicy {
            immediate: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            window: Duration::from_secs(600),
            max_abandoned: 4,
        }
    }
}

impl RestartPolicy {
    /// The delay before the next instance after `failures` failures in the window.
    fn delay(&self, failures: usize) -> Option<Duration> {
        let beyond = u32::try_from(failures)
            .unwrap_or(u32::MAX)
            .checked_sub(self.immediate)?
            .checked_sub(1)?;
        let factor = 2u32.checked_pow(beyond).unwrap_or(u32::MAX);
        Some(
            self.backoff
                .checked_mul(factor)
                .unwrap_or(self.max_backoff)
                .min(self.max_backoff),
        )
    }
}

/// The running instances, one slot per plugin id.
#[derive(Default)]
pub(crate) struct Instances {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    policy: RestartPolicy,
    /// Set once the server stops them all: no instance starts after that, so none
    /// outlives the stop without its `cleanup`.
    stopping: AtomicBool,
}

#[derive(Default)]
struct Slot {
    running: Mutex<Option<Running>>,
    /// Apart from `running`, so that a report never waits for a batch in flight.
    history: Mutex<History>,
}

/// A plugin's failures and restarts, in this server.
#[derive(Default)]
struct History {
    /// The entry the failures are about: a changed entry forgets them.
    fingerprint: Option<String>,
    /// Instances started after a failed one.
    restarts: u64,
    /// Whether the last instance failed (so the next start is a restart).
    failed: bool,
    /// When the failures within the policy's window happened.
    failures: VecDeque<Instant>,
    last_failure: Option<LastFailure>,
    /// No instance starts before this.
    not_before: Option<(Instant, SystemTime)>,
}

/// The last failure of a plugin's instance.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastFailure {
    /// When (RFC 3339).
    pub at: String,
    /// What happened.
    pub reason: String,
}

/// What `GET /plugins/{id}` shows of a plugin's instances in this server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuntimeReport {
    /// Whether an instance runs (or is starting, or busy with a batch).
    pub running: bool,
    /// Instances started after a failed one.
    pub restarts: u64,
    /// Failures within the restart policy's window.
    pub recent_failures: usize,
    /// The last failure.
    pub last_failure: Option<LastFailure>,
    /// Workers of this plugin that missed a deadline and still run plugin code.
    pub abandoned_workers: usize,
    /// No instance starts before this (RFC 3339), if a failure delayed the next one.
    pub next_start_at: Option<String>,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl History {
    /// Forgets the failures if they were about another entry.
    fn about(&mut self, fingerprint: &str) {
        if self.fingerprint.as_deref() != Some(fingerprint) {
            self.fingerprint = Some(fingerprint.to_owned());
            self.failures.clear();
            self.not_before = None;
        }
    }

    /// Records a failure now, and when the next instance may start.
    fn fail(&mut self, policy: &RestartPolicy, reason: String) {
        let now = Instant::now();
        while self
            .failures
            .front()
            .is_some_and(|&at| now.duration_since(at) > policy.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        self.failed = true;
        self.last_failure = Some(LastFailure {
            at: rfc3339(SystemTime::now()),
            reason,
        });
        self.not_before = policy
            .delay(self.failures.len())
            .map(|delay| (now + delay, SystemTime::now() + delay));
    }

    /// Refuses a start while the failures delay it.
    fn permit(&self, id: &str, policy: &RestartPolicy) -> Result<(), ApiError> {
        let Some((not_before, at)) = self.not_before else {
            return Ok(());
        };
        let Some(wait) = not_before.checked_duration_since(Instant::now()) else {
            return Ok(());
        };
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let last = self.last_failure.as_ref().map_or_else(String::new, |last| {
            format!("; last failure: {}", last.reason)
        });
        Err(ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                ErrorCode::PluginBackoff,
                format!(
                    "plugin {id} failed {} within {}, so its next instance starts no earlier than {} (in {seconds} s){last}; fix the plugin or its config, or disable and enable it to retry now",
                    match self.failures.len() {
                        1 => "once".to_owned(),
                        n => format!("{n} times"),
                    },
                    humantime::format_duration(policy.window),
                    rfc3339(at),
                ),
            )
        })
    }
}

struct Running {
    handle: PluginHandle,
    /// What the instance was started from: a changed entry means a new instance.
    fingerprint: String,
    /// The library file as it was at start: a changed file means the hash is checked again.
    library: FileStamp,
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
    /// No instances yet; failed ones restart as `policy` says.
    pub(crate) fn new(policy: RestartPolicy) -> Instances {
        Instances {
            slots: Mutex::default(),
            policy,
            stopping: AtomicBool::new(false),
        }
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        lock(&self.slots).entry(id.to_owned()).or_default().clone()
    }

    /// What this server knows of plugin `id`'s instances.
    pub(crate) fn report(&self, host: &Host, id: &str) -> RuntimeReport {
        let slot = lock(&self.slots).get(id).cloned();
        let running = slot.as_ref().is_some_and(|slot| {
            slot.running
                .try_lock()
                .map_or(true, |running| running.is_some())
        });
        let history = slot.as_ref().map(|slot| lock(&slot.history));
        let history = history.as_deref();
        RuntimeReport {
            running,
            restarts: history.map_or(0, |history| history.restarts),
            recent_failures: history.map_or(0, |history| {
                history
                    .failures
                    .iter()
                    .filter(|at| at.elapsed() <= self.policy.window)
                    .count()
            }),
            last_failure: history.and_then(|history| history.last_failure.clone()),
            abandoned_workers: host.abandoned_workers_of(id),
            next_start_at: history
                .and_then(|history| history.not_before)
                .filter(|(not_before, _)| *not_before > Instant::now())
                .map(|(_, at)| rfc3339(at)),
        }
    }

    /// Refuses to start an instance of `id` while too many of its workers are stuck.
    fn permit_start(&self, host: &Host, id: &str, history: &History) -> Result<(), ApiError> {
        let stuck = host.abandoned_workers_of(id);
        if stuck >= self.policy.max_abandoned {
            let last = history
                .last_failure
                .as_ref()
                .map_or_else(String::new, |last| {
                    format!("; last failure: {}", last.reason)
                });
            return Err(ApiError::new(
                ErrorCode::PluginBackoff,
                format!(
                    "plugin {id} has {stuck} worker threads stuck in plugin code (abandoned after missed deadlines; the limit is {}), so no instance of it starts until one of them returns or the server restarts{last}",
                    self.policy.max_abandoned
                ),
            ));
        }
        history.permit(id, &self.policy)
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
        let served = self.hold(registries, host, id, None, |handle| handle.process(batch))?;
        Ok(served.expect("a plugin named by its id is never moved")?)
    }

    /// [`process`](Self::process) for plugin `id` as the current version of plugin
    /// name `name`: `None` if `id` is no longer current when its turn comes (an
    /// upgrade switched the name meanwhile), so that the caller asks again.
    pub(crate) fn process_current(
        &self,
        registries: &Registries,
        host: &Host,
        id: &str,
        name: &str,
        batch: &Batch,
    ) -> Result<Option<Batch>, ApiError> {
        match self.hold(registries, host, id, Some(name), |handle| {
            handle.process(batch)
        })? {
            None => Ok(None),
            Some(result) => Ok(Some(result?)),
        }
    }

    /// Runs `body` on plugin `id`'s instance, with its slot held (one call at a time
    /// per plugin), starting an instance if none runs; a failed instance is dropped
    /// afterwards. With `current_of`, gives `None` without running anything if `id`
    /// is not the current version of that name once the slot is held.
    pub(crate) fn hold<T>(
        &self,
        registries: &Registries,
        host: &Host,
        id: &str,
        current_of: Option<&str>,
        body: impl FnOnce(&mut PluginHandle) -> T,
    ) -> Result<Option<T>, ApiError> {
        // Refuse unknown ids before a slot exists for them.
        registries.with(|registry| registry.get(id))?;
        let slot_arc = self.slot(id);
        let mut slot = lock(&slot_arc.running);
        // Checked with the slot held: a stop that began before this finds the slot in
        // its list and waits for it, one that begins after it finds this flag set.
        if self.stopping.load(Ordering::SeqCst) {
            stop(id, slot.take());
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down and starts no plugin instance; retry against the server once it is back",
            ));
        }
        let entry = match registries.with(|registry| registry.get(id)) {
            Ok(entry) => entry,
            Err(err) => {
                stop(id, slot.take());
                drop(slot);
                self.forget(id, &slot_arc);
                return Err(err.into());
            }
        };
        if entry.review.status != ReviewStatus::Approved {
            stop(id, slot.take());
            return Err(RegistryError::NotApproved {
                id: entry.id,
                status: entry.review.status,
            }
            .into());
        }
        if !entry.enabled {
            stop(id, slot.take());
            return Err(RegistryError::Disabled { id: entry.id }.into());
        }
        if let Some(name) = current_of {
            let current = registries.with(|registry| registry.current(name))?;
            if current.map(|current| current.id).as_deref() != Some(id) {
                return Ok(None);
            }
        }
        let fingerprint = fingerprint(&entry);
        let stale = slot.as_ref().is_some_and(|running| {
            running.fingerprint != fingerprint
                || FileStamp::of(&entry.library).as_ref() != Some(&running.library)
        });
        if stale {
            stop(id, slot.take());
        }
        let running = match &mut *slot {
            Some(running) => running,
            empty => {
                {
                    let mut history = lock(&slot_arc.history);
                    history.about(&fingerprint);
                    self.permit_start(host, id, &history)?;
                }
                // `spec` checks approval, enablement and the library's SHA-256.
                let spec = registries.with(|registry| registry.spec(id))?;
                let library = FileStamp::of(&spec.library);
                let started = host.start(spec);
                let mut history = lock(&slot_arc.history);
                let handle = match started {
                    Ok(handle) => handle,
                    Err(err) => {
                        history.fail(&self.policy, format!("start failed: {err}"));
                        return Err(err.into());
                    }
                };
                if std::mem::take(&mut history.failed) {
                    history.restarts += 1;
                }
                drop(history);
                tracing::info!(plugin = %id, confinement = %handle.status().confinement, "plugin instance started");
                empty.insert(Running {
                    handle,
                    fingerprint,
                    library: library.unwrap_or_default(),
                })
            }
        };
        let result = body(&mut running.handle);
        if let State::Failed(failure) = &running.handle.status().state {
            // A failed instance takes no more batches: the next call starts a fresh
            // one, when the restart policy allows.
            lock(&slot_arc.history).fail(&self.policy, failure.to_string());
            *slot = None;
        }
        Ok(Some(result))
    }

    /// Takes plugin `id`'s instance out of this server, if one runs: waits for the
    /// batch in flight, runs `cleanup` and stops the worker. Returns its final status
    /// and, if the cleanup or the stop failed, why.
    pub(crate) fn retire(&self, id: &str) -> Option<(PluginStatus, Option<String>)> {
        let slot = lock(&self.slots).remove(id)?;
        let running = lock(&slot.running).take()?;
        let status = running.handle.status().clone();
        Some(match running.handle.shutdown() {
            Ok(status) => (status, None),
            Err(err) => (status, Some(err.to_string())),
        })
    }

    fn forget(&self, id: &str, slot: &Arc<Slot>) {
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
            let running = lock(&slot.running).take();
            stop(id, running);
        }
    }

    /// Drains every instance (server shutdown).
    pub(crate) fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let slots: Vec<_> = lock(&self.slots).drain().collect();
        for (id, slot) in slots {
            let running = lock(&slot.running).take();
            stop(&id, running);
        }
    }

    /// How many instances run now.
    pub(crate) fn running(&self) -> usize {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter(|slot| {
                slot.running
                    .try_lock()
                    .map_or(true, |running| running.is_some())
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_longer_after_each_failure_beyond_the_immediate_ones() {
        let policy = RestartPolicy::default();
        let delays: Vec<_> = (1..=14).map(|failures| policy.delay(failures)).collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(&delays[..3], &[None, None, None]);
        assert_eq!(
            &delays[3..],
            &[
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(64),
                secs(128),
                secs(256),
                secs(300),
                secs(300)
            ]
        );
        assert_eq!(policy.delay(usize::MAX), secs(300));
    }

    #[test]
    fn a_delayed_restart_says_when_it_may_happen() {
        let policy = RestartPolicy {
            immediate: 0,
            ..RestartPolicy::default()
        };
        let mut history = History::default();
        history.about("entry");
        history.fail(&policy, "panic: boom".to_owned());
        let err = history.permit("p@1.0.0", &policy).unwrap_err();
        assert_eq!(err.code, ErrorCode::PluginBackoff);
        assert_eq!(err.retry_after, Some(1));
        assert!(
            err.message
                .contains("plugin p@1.0.0 failed once within 10m")
                && err.message.contains("no earlier than 20")
                && err.message.contains("last failure: panic: boom"),
            "{}",
            err.message
        );
        // Another entry (a new config) forgets the failures.
        history.about("changed");
        assert!(history.permit("p@1.0.0", &policy).is_ok());
    }
}
