//! The handle a caller drives an instance through, whatever its worker is.

use std::fmt;
use std::time::{Duration, Instant};

use abi_stable::std_types::RResult;
use plugbay_api::abi::PluginError;
use plugbay_api::manifest::Hook;

use super::worker::{Ended, Lost, Worker};
use super::{CallError, Failure, PluginStatus, State};
use crate::batch::Batch;
use crate::services::Revoker;
use crate::stream::{Stopped, Stream};

/// A running plugin instance: a handle to its worker, a thread of the host or a
/// process of its own (see [`Isolation`](crate::Isolation)).
///
/// Calls take `&mut self`: an instance processes one batch at a time. For several at
/// once, start several instances or chain them in a [`Pipeline`](crate::Pipeline).
///
/// # Thread-safety
///
/// The handle is `Send`: it can move to another thread. Dropping it cleans the
/// instance up and stops the worker, each with the call deadline: a worker that
/// misses one is abandoned (a process killed), never waited for.
pub struct PluginHandle {
    pub(super) status: PluginStatus,
    pub(super) may_process: Result<(), &'static str>,
    pub(super) worker: Worker,
    pub(super) services: Revoker,
}

impl fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHandle")
            .field("status", &self.status)
            .field("worker", &self.worker.state())
            .finish_non_exhaustive()
    }
}

impl PluginHandle {
    /// The plugin's id, `name@version`.
    pub fn id(&self) -> &str {
        &self.status.id
    }

    /// The instance's status: state, confinement, grants and counters.
    pub fn status(&self) -> &PluginStatus {
        &self.status
    }

    /// Sends `batch` through the plugin's `process` hook and waits for the result,
    /// at most the call's deadline. `batch` stays the caller's whatever happens.
    pub fn process(&mut self, batch: &Batch) -> Result<Batch, CallError> {
        self.status.permit(self.may_process)?;
        self.live()?;
        let started = Instant::now();
        let (result, came) = self.worker.process(batch, self.status.timeout, started);
        self.status.busy += came.saturating_duration_since(started);
        match result {
            Ok(result) => self.status.processed(result),
            Err(lost) => Err(self.lost(lost, Hook::Process)),
        }
    }

    /// Runs `cleanup` and stops the worker, which drops the instance; each has the
    /// call deadline. Returns the final status.
    pub fn shutdown(self) -> Result<PluginStatus, CallError> {
        let (status, result) = self.shutdown_with_status();
        result.map(|()| status)
    }

    /// [`shutdown`](PluginHandle::shutdown), returning the final status whether or
    /// not it succeeded: after a cleanup that missed its deadline the state is
    /// failed, after one that returned an error it is unloaded.
    pub fn shutdown_with_status(mut self) -> (PluginStatus, Result<(), CallError>) {
        let cleaned = self.cleanup();
        let stopped = self.stop();
        (self.status.clone(), cleaned.and(stopped))
    }

    /// Stops the worker without running `cleanup` (a caller that ran it already,
    /// such as an upgrade), and returns the final status. See `upgrade`.
    pub(crate) fn stop_with_status(mut self) -> (PluginStatus, Result<(), CallError>) {
        let stopped = self.stop();
        (self.status.clone(), stopped)
    }

    /// Runs the plugin's `cleanup` hook; the instance takes no more calls after it.
    pub fn cleanup(&mut self) -> Result<(), CallError> {
        self.live()?;
        match self.worker.cleanup(self.status.timeout) {
            Ok(result) => {
                self.status.state = State::CleanedUp;
                self.cleaned(result)
            }
            Err(lost) => Err(self.lost(lost, Hook::Cleanup)),
        }
    }

    fn cleaned(&mut self, result: RResult<(), PluginError>) -> Result<(), CallError> {
        match result {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(error) => Err(self.status.hook_error(Hook::Cleanup, error)),
        }
    }

    /// The caller's error for a worker that gave no answer to `hook`; the instance is
    /// marked failed (the worker has already been abandoned or killed if it was late).
    fn lost(&mut self, lost: Lost, hook: Hook) -> CallError {
        match lost {
            Lost::Late => self.timed_out(hook),
            Lost::Crashed(cause) => {
                self.status.fail(Failure::Crashed(cause.clone()));
                CallError::Crashed {
                    id: self.status.id.clone(),
                    hook,
                    cause,
                }
            }
            Lost::Gone(why) => {
                self.status.fail(Failure::WorkerLost(why.clone()));
                CallError::Failed {
                    id: self.status.id.clone(),
                    reason: why,
                }
            }
        }
    }

    /// Hands the worker a pipeline stage's part of a run: it takes batches from the
    /// stream's input and sends results to its output until the input ends, the
    /// output closes, the run is aborted or the plugin fails. Returns at once.
    pub(crate) fn open_stream(&mut self, stream: Stream) -> Result<(), CallError> {
        self.takes_batches()?;
        self.worker
            .open_stream(stream, self.status.timeout)
            .map_err(|lost| self.lost(lost, Hook::Process))
    }

    /// Waits for the worker to leave its stream, until `due()` (asked again after each
    /// wait, as the worker may be in a call; `None`: no deadline). Returns where the
    /// stream stopped on a failure of the plugin or a late return: the batch number,
    /// the batch, and the caller's error.
    pub(crate) fn close_stream(
        &mut self,
        due: impl Fn() -> Option<Instant>,
    ) -> Result<Option<(u64, Batch, CallError)>, CallError> {
        let end = self
            .worker
            .close_stream(due)
            .map_err(|lost| self.lost(lost, Hook::Process))?;
        Ok(end.map(|(index, batch, stopped)| {
            let error = match stopped {
                Stopped::Failed(outcome) => self.status.process_error(outcome),
                Stopped::Late => self.time_out(Hook::Process),
            };
            (index, batch, error)
        }))
    }

    /// Adds what a stream did to the instance's counters.
    pub(crate) fn count(&mut self, batches: u64, records_out: u64, busy: Duration) {
        if batches > 0 && self.status.state == State::Initialized {
            self.status.state = State::Running;
        }
        self.status.batches += batches;
        self.status.records_out += records_out;
        self.status.busy += busy;
    }

    /// Whether the instance takes batches now: it may process them, and it has
    /// neither failed nor stopped.
    pub(crate) fn takes_batches(&self) -> Result<(), CallError> {
        self.status.permit(self.may_process)?;
        self.live()
    }

    fn live(&self) -> Result<(), CallError> {
        let id = &self.status.id;
        match &self.status.state {
            State::Failed(failure) => Err(CallError::Failed {
                id: id.clone(),
                reason: failure.to_string(),
            }),
            State::CleanedUp | State::Unloaded => Err(CallError::Stopped { id: id.clone() }),
            State::Initialized | State::Running => Ok(()),
        }
    }

    /// Marks the instance failed because `hook` missed its deadline, and abandons the
    /// worker (a worker process is killed): it may never return from the plugin.
    pub(crate) fn time_out(&mut self, hook: Hook) -> CallError {
        self.worker.abandon();
        self.timed_out(hook)
    }

    /// The caller's error for `hook` past its deadline, the worker already given up.
    fn timed_out(&mut self, hook: Hook) -> CallError {
        let timeout = self.status.timeout;
        self.status.fail(Failure::Timeout(format!(
            "{hook} did not return within {timeout:?}"
        )));
        self.gave_up();
        CallError::Timeout {
            id: self.status.id.clone(),
            hook,
            timeout,
        }
    }

    /// After the worker was given up: its host services end now, and a worker thread
    /// left running shows in the status.
    fn gave_up(&mut self) {
        self.services.revoke();
        if self.worker.abandons_threads() {
            self.status.abandoned = true;
        }
    }

    /// The deadline of each call.
    pub(crate) fn timeout(&self) -> Duration {
        self.status.timeout
    }

    /// Stops the worker, which drops the instance, with the call deadline; past it
    /// the worker is abandoned.
    fn stop(&mut self) -> Result<(), CallError> {
        let failed = matches!(self.status.state, State::Failed(_));
        let result = match self.worker.stop(self.status.timeout, failed) {
            Ended::Done { threads_left } => {
                if threads_left.is_some() {
                    self.status.threads_left = threads_left;
                }
                Ok(())
            }
            Ended::DropLate => {
                let timeout = self.status.timeout;
                self.status.fail(Failure::Timeout(format!(
                    "dropping the instance did not finish within {timeout:?}"
                )));
                self.gave_up();
                Err(CallError::DropTimeout {
                    id: self.status.id.clone(),
                    timeout,
                })
            }
        };
        self.services.revoke();
        if !matches!(self.status.state, State::Failed(_)) {
            self.status.state = State::Unloaded;
        }
        result
    }
}

impl Drop for PluginHandle {
    fn drop(&mut self) {
        if matches!(self.status.state, State::Initialized | State::Running) {
            if let Err(err) = self.cleanup() {
                tracing::warn!(plugin = %self.status.id, error = %err, "cleanup failed while dropping the plugin");
            }
        }
        if let Err(err) = self.stop() {
            tracing::warn!(plugin = %self.status.id, error = %err, "stopping the plugin failed while dropping it");
        }
    }
}
