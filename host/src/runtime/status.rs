//! An instance's state and counters, as its handle reports them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use plugbay_api::abi::{ErrorKind, PluginError};
use plugbay_api::manifest::{Hook, Permission};
use serde::Serialize;

use super::{CallError, Failure};
use crate::batch::Batch;
use crate::call::Outcome;
use crate::hints;
use crate::image::Image;
use crate::isolation::Isolation;
use crate::sandbox::Confinement;

/// Where an instance is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Initialized, no batch yet.
    Initialized,
    /// Has processed batches.
    Running,
    /// `cleanup` ran; no more calls.
    CleanedUp,
    /// The worker stopped and the instance was dropped: the host calls no code of
    /// the plugin again and its host services are revoked. Threads the plugin
    /// started itself run on (only process isolation ends them), and its code and
    /// statics stay mapped until the process exits.
    Unloaded,
    /// Failed; no more calls.
    Failed(Failure),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Initialized => f.write_str("initialized"),
            State::Running => f.write_str("running"),
            State::CleanedUp => f.write_str("cleaned up"),
            State::Unloaded => f.write_str("unloaded"),
            State::Failed(failure) => write!(f, "failed ({failure})"),
        }
    }
}

/// What a host can see of a running instance.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// The plugin's id.
    pub id: String,
    /// Its lifecycle state.
    pub state: State,
    /// The confinement of its worker thread.
    pub confinement: Confinement,
    /// The permissions it was granted.
    pub granted: Vec<Permission>,
    /// The plugbay-api version it was built against.
    pub api_version: String,
    /// Its library.
    pub library: PathBuf,
    /// The SHA-256 of the library bytes that were loaded.
    pub sha256: String,
    /// The deadline of each call.
    pub timeout: Duration,
    /// Batches processed.
    pub batches: u64,
    /// Records returned (counted when the host checks output).
    pub records_out: u64,
    /// Time spent in `process`: as the caller saw it for a call, as the worker
    /// measured it in a pipeline.
    pub busy: Duration,
    /// Whether it runs on a worker thread or in a worker process.
    pub isolation: Isolation,
    /// The worker process's id (process isolation).
    pub pid: Option<u32>,
    /// The namespaces the worker process entered (`user`, `net`), where the kernel
    /// allowed them.
    pub namespaces: Vec<String>,
    /// Whether the host abandoned the instance's worker after a missed deadline: the
    /// thread may still be running plugin code ([`Host::abandoned_workers`] counts
    /// those that do).
    pub abandoned: bool,
    /// The permissions the manifest requests that the instance was not granted (what
    /// the review or the host's policy withheld).
    pub withheld: Vec<Permission>,
    /// Once the instance has stopped: how many threads the plugin started were still
    /// running, on a worker thread (they keep its confinement and run until the
    /// process exits, renamed `left:NAME`); 0 in a worker process, whose threads end
    /// with it. `None` while it runs, for local plugins, and where the kernel cannot
    /// tell (see `threads`).
    pub threads_left: Option<usize>,
}

impl PluginStatus {
    /// The status of an instance that has just started, on a worker thread.
    pub(crate) fn started(
        id: String,
        confinement: Confinement,
        granted: Vec<Permission>,
        api_version: &semver::Version,
        image: &Image,
        timeout: Duration,
    ) -> PluginStatus {
        PluginStatus {
            id,
            state: State::Initialized,
            confinement,
            granted,
            api_version: api_version.to_string(),
            library: image.path.clone(),
            sha256: image.sha256.clone(),
            timeout,
            batches: 0,
            records_out: 0,
            busy: Duration::ZERO,
            isolation: Isolation::Thread,
            pid: None,
            namespaces: Vec::new(),
            abandoned: false,
            withheld: Vec::new(),
            threads_left: None,
        }
    }

    /// Refuses a batch when the instance may not receive batches.
    pub(crate) fn permit(&self, may_process: Result<(), &'static str>) -> Result<(), CallError> {
        may_process.map_err(|reason| CallError::NotPermitted {
            id: self.id.clone(),
            reason: reason.to_owned(),
        })
    }

    /// The caller's result of one `process` call: a returned batch is counted, a
    /// failure becomes the caller's error (a panic marks the instance failed).
    pub(crate) fn processed(&mut self, result: Result<Batch, Outcome>) -> Result<Batch, CallError> {
        match result {
            Ok(output) => {
                self.state = State::Running;
                self.batches += 1;
                self.records_out += output.len().unwrap_or(0) as u64;
                Ok(output)
            }
            Err(outcome) => Err(self.process_error(outcome)),
        }
    }

    /// The caller's error for a `process` call that gave no batch.
    pub(crate) fn process_error(&mut self, outcome: Outcome) -> CallError {
        match outcome {
            Outcome::Plugin(error) => self.hook_error(Hook::Process, error),
            Outcome::InvalidOutput(reason) => CallError::InvalidOutput {
                id: self.id.clone(),
                reason,
            },
            Outcome::Crashed(cause) => {
                self.fail(Failure::Crashed(cause.clone()));
                CallError::Crashed {
                    id: self.id.clone(),
                    hook: Hook::Process,
                    cause,
                }
            }
            Outcome::Late => {
                let timeout = self.timeout;
                self.fail(Failure::Timeout(format!(
                    "process did not return within {timeout:?}"
                )));
                CallError::Timeout {
                    id: self.id.clone(),
                    hook: Hook::Process,
                    timeout,
                }
            }
        }
    }

    /// The caller's error for a hook's failure; a panic marks the instance failed.
    pub(crate) fn hook_error(&mut self, hook: Hook, error: PluginError) -> CallError {
        let id = self.id.clone();
        let hint = hints::hint(
            &error.message,
            &self.granted,
            &self.withheld,
            self.isolation,
        );
        if error.kind == ErrorKind::PANICKED {
            let message = error.message.to_string();
            self.fail(Failure::Panic(message.clone()));
            CallError::Panicked {
                id,
                hook,
                message,
                hint,
            }
        } else {
            CallError::Plugin {
                id,
                hook,
                error,
                hint,
            }
        }
    }

    /// Marks the instance failed: it takes no more calls.
    pub(crate) fn fail(&mut self, failure: Failure) {
        tracing::warn!(plugin = %self.id, %failure, "plugin instance failed");
        self.state = State::Failed(failure);
    }
}
