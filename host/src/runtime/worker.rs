//! The seam between a [`PluginHandle`](super::PluginHandle) and its worker: one type
//! that serves a handle the same way whether the instance lives on a worker thread
//! of the host or in a worker process of its own.
//!
//! A worker goes through these states, as its handle sees them ([`WorkerState`]):
//!
//! ```text
//!              open_stream              close_stream
//!   Serving ───────────────► Streaming ───────────────► Serving
//!      │                         │
//!      ├── missed deadline ──────┼──► Abandoned   (thread: left running, counted;
//!      │                         │                 process: killed)
//!      ├── worker ended ─────────┴──► Crashed     (process: a signal or an exit;
//!      │                                 │         thread: it is gone)
//!      │                                 │ stop    (what is left is reaped)
//!      └── stop ─────────────────────────┴──► Stopped   (the instance was dropped)
//! ```
//!
//! `Abandoned` and `Stopped` are final, and a `Crashed` worker takes no request: only
//! its remains are stopped. Every transition goes through [`Worker::enter`], which
//! refuses any other.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::RResult;
#[cfg(target_os = "linux")]
use abi_stable::std_types::RVec;
use crossbeam_channel::RecvTimeoutError;
use plugbay_api::abi::PluginError;

use super::handoff;
use super::thread::{join_by, Cores, Reply, ReplyWait, Request, WorkerLife};
use crate::batch::Batch;
#[cfg(target_os = "linux")]
use crate::call::check_output;
use crate::call::{deadline_after, Outcome};
#[cfg(target_os = "linux")]
use crate::process::{Fault, ProcessWorker};
use crate::stream::{Stream, StreamEnd};
use crate::threads;

/// Where a worker is, as its handle sees it (see the module's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    /// Takes calls.
    Serving,
    /// Runs a pipeline stage's stream; takes no call until the stream is closed.
    Streaming,
    /// Missed a deadline: a thread is left to return (or never), a process killed.
    Abandoned,
    /// Ended by itself: a worker process's signal or exit, a worker thread gone.
    Crashed,
    /// Dropped its instance and ended (or was killed, having failed).
    Stopped,
}

impl WorkerState {
    /// Whether a worker in this state may go to `next`.
    fn may_become(self, next: WorkerState) -> bool {
        use WorkerState::*;
        matches!(
            (self, next),
            (Serving, Streaming | Abandoned | Crashed | Stopped)
                | (Streaming, Serving | Abandoned | Crashed | Stopped)
                | (Crashed, Stopped)
        )
    }
}

/// Why a worker gave no answer.
#[derive(Debug)]
pub(super) enum Lost {
    /// The call missed its deadline; the worker is abandoned (or killed).
    Late,
    /// The worker process ended: how, in words.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Crashed(String),
    /// The worker thread is gone, or answered out of turn: why, in words.
    Gone(String),
}

/// How stopping a worker went.
pub(super) enum Ended {
    /// The instance was dropped; a worker thread's plugin left this many threads
    /// running (`None`: not counted).
    Done { threads_left: Option<usize> },
    /// Dropping the instance missed the deadline: the worker is abandoned.
    DropLate,
}

/// A worker, of either kind, and its [`WorkerState`].
pub(super) struct Worker {
    kind: Kind,
    state: WorkerState,
}

enum Kind {
    Thread(ThreadSide),
    #[cfg(target_os = "linux")]
    Process(ProcessSide),
}

/// A worker thread, from its handle's side.
pub(super) struct ThreadSide {
    pub id: String,
    pub requests: Option<handoff::Sender<Request>>,
    pub replies: handoff::Receiver<Reply>,
    pub thread: Option<JoinHandle<()>>,
    pub wait: ReplyWait,
    /// The cores it and its caller were last seen on.
    pub cores: Arc<Cores>,
    pub life: Arc<WorkerLife>,
    /// The threads the plugin left running, as its worker thread found them.
    pub left: Arc<threads::Left>,
}

/// A worker process, from its handle's side.
#[cfg(target_os = "linux")]
struct ProcessSide {
    id: String,
    /// The process; held by the relay thread while a stream is open.
    process: Option<ProcessWorker>,
    /// The thread relaying a pipeline stream to the process, which gives it back when
    /// the stream ends, and the channel it says so on.
    relay: Option<(JoinHandle<ProcessWorker>, handoff::Receiver<Reply>)>,
}

impl Worker {
    /// A worker thread that has started its instance.
    pub fn on_thread(side: ThreadSide) -> Worker {
        Worker {
            kind: Kind::Thread(side),
            state: WorkerState::Serving,
        }
    }

    /// A worker process that has started its instance.
    #[cfg(target_os = "linux")]
    pub fn in_process(id: String, process: ProcessWorker) -> Worker {
        Worker {
            kind: Kind::Process(ProcessSide {
                id,
                process: Some(process),
                relay: None,
            }),
            state: WorkerState::Serving,
        }
    }

    /// The worker's state.
    pub fn state(&self) -> WorkerState {
        self.state
    }

    /// Moves to `next`; any transition the diagram does not show is a bug.
    fn enter(&mut self, next: WorkerState) {
        debug_assert!(
            self.state == next || self.state.may_become(next),
            "a worker cannot go from {:?} to {next:?}",
            self.state
        );
        if self.state.may_become(next) {
            self.state = next;
        }
    }

    /// Whether the worker takes a call now.
    fn serving(&self) -> Result<(), Lost> {
        match self.state {
            WorkerState::Serving => Ok(()),
            WorkerState::Streaming => Err(Lost::Gone("it is running a stream".to_owned())),
            other => Err(Lost::Gone(format!("it is {other:?}").to_lowercase())),
        }
    }

    /// Runs `process` on `batch`, within `timeout` from `started` (the caller's
    /// reading of the clock before the call). Returns the result and when it came.
    pub fn process(
        &mut self,
        batch: &Batch,
        timeout: Duration,
        started: Instant,
    ) -> (Result<Result<Batch, Outcome>, Lost>, Instant) {
        if let Err(lost) = self.serving() {
            return (Err(lost), Instant::now());
        }
        let (result, came) = match &mut self.kind {
            Kind::Thread(thread) => {
                match thread.call(Request::Process(batch.clone()), timeout, started) {
                    Ok((Reply::Processed(result, _input), came)) => {
                        (Ok(result.map_err(|outcome| *outcome)), came)
                    }
                    Ok((_, came)) => (
                        Err(Lost::Gone(
                            "the worker answered process with another reply".to_owned(),
                        )),
                        came,
                    ),
                    Err(lost) => (Err(lost), Instant::now()),
                }
            }
            #[cfg(target_os = "linux")]
            Kind::Process(process) => {
                let worker = process
                    .process
                    .as_mut()
                    .expect("a serving worker holds its process");
                let result = process_batch(worker, batch, timeout).map_err(Lost::from);
                (result, Instant::now())
            }
        };
        (self.settle(result), came)
    }

    /// Runs `cleanup`, within `timeout`.
    pub fn cleanup(&mut self, timeout: Duration) -> Result<RResult<(), PluginError>, Lost> {
        self.serving()?;
        let result = match &mut self.kind {
            Kind::Thread(thread) => match thread.call(Request::Cleanup, timeout, Instant::now()) {
                Ok((Reply::CleanedUp(result), _)) => Ok(*result),
                Ok(_) => Err(Lost::Gone(
                    "the worker answered cleanup with another reply".to_owned(),
                )),
                Err(lost) => Err(lost),
            },
            #[cfg(target_os = "linux")]
            Kind::Process(process) => {
                let worker = process
                    .process
                    .as_mut()
                    .expect("a serving worker holds its process");
                worker
                    .cleanup(Instant::now().checked_add(timeout))
                    .map_err(Lost::from)
            }
        };
        self.settle(result)
    }

    /// Hands the worker a pipeline stage's part of a run; returns at once. On a
    /// worker thread the thread runs it; for a worker process a relay thread of the
    /// host takes the stage's batches to the process and its results on.
    pub fn open_stream(&mut self, stream: Stream, timeout: Duration) -> Result<(), Lost> {
        self.serving()?;
        let opened = match &mut self.kind {
            Kind::Thread(thread) => thread.send(Request::Stream(Box::new(stream))),
            #[cfg(target_os = "linux")]
            Kind::Process(process) => process.open_stream(stream, timeout),
        };
        #[cfg(not(target_os = "linux"))]
        let _ = timeout;
        let opened = self.settle(opened);
        if opened.is_ok() {
            self.enter(WorkerState::Streaming);
        }
        opened
    }

    /// Waits for the worker to leave its stream, until `due()` (asked again after each
    /// wait, as the worker may be in a call; `None`: no deadline). Returns where the
    /// stream stopped, if it stopped on a batch.
    pub fn close_stream(&mut self, due: impl Fn() -> Option<Instant>) -> Result<StreamEnd, Lost> {
        if self.state != WorkerState::Streaming {
            return Err(Lost::Gone("no stream is open".to_owned()));
        }
        let end = match &mut self.kind {
            Kind::Thread(thread) => stream_end(&mut thread.replies, due),
            #[cfg(target_os = "linux")]
            Kind::Process(process) => match &mut process.relay {
                Some((_, replies)) => stream_end(replies, due),
                None => Err(Lost::Gone("its relay is gone".to_owned())),
            },
        };
        #[cfg(target_os = "linux")]
        if let (Ok(_), Kind::Process(process)) = (&end, &mut self.kind) {
            // The relay sent its last reply: it gives the process back now.
            if let Some((relay, _)) = process.relay.take() {
                process.process = relay.join().ok();
            }
        }
        let end = self.settle(end);
        if end.is_ok() {
            self.enter(WorkerState::Serving);
        }
        end
    }

    /// Moves to the state a lost answer leaves the worker in, and abandons (or kills)
    /// a worker that missed its deadline.
    fn settle<T>(&mut self, result: Result<T, Lost>) -> Result<T, Lost> {
        match &result {
            Ok(_) => {}
            Err(Lost::Late) => self.abandon(),
            Err(Lost::Crashed(_) | Lost::Gone(_)) => self.enter(WorkerState::Crashed),
        }
        result
    }

    /// Gives up on the worker. A worker thread is never sent, waited for or joined
    /// again, and the host counts it until its thread ends; what the plugin may still
    /// read (its instance, the batch it was given) stays allocated, and the allocator
    /// gives back what is free. A worker process is killed (its relay, if a stream
    /// was open, ends with it): nothing of it stays in the host.
    pub fn abandon(&mut self) {
        if !matches!(self.state, WorkerState::Serving | WorkerState::Streaming) {
            return;
        }
        match &mut self.kind {
            Kind::Thread(thread) => {
                thread.requests = None;
                thread.thread = None;
                thread.life.abandon();
                crate::allocator::release_free_memory();
            }
            #[cfg(target_os = "linux")]
            Kind::Process(process) => {
                if let Some(mut worker) = process.process.take() {
                    worker.kill();
                }
                process.relay = None;
            }
        }
        self.enter(WorkerState::Abandoned);
    }

    /// Whether giving up on this worker leaves anything running: a worker thread
    /// may never return; a worker process is killed.
    pub fn abandons_threads(&self) -> bool {
        matches!(self.kind, Kind::Thread(_))
    }

    /// Stops the worker: it drops the instance and ends, and the handle waits for
    /// that until `timeout`; past it the worker is abandoned. A `failed` worker is
    /// never waited for: a thread may be stuck in plugin code or has forgotten its
    /// instance after a panic; a process is killed.
    pub fn stop(&mut self, timeout: Duration, failed: bool) -> Ended {
        if matches!(self.state, WorkerState::Abandoned | WorkerState::Stopped) {
            return Ended::Done { threads_left: None };
        }
        let stopped = match &mut self.kind {
            Kind::Thread(thread) => thread.stop(timeout, failed),
            #[cfg(target_os = "linux")]
            Kind::Process(process) => {
                if let Some((relay, _)) = process.relay.take() {
                    // A stream that was never closed: its relay ends at the process's
                    // deadline at the latest (the process is killed then), unless the
                    // instance failed, which is never waited for; the process dies
                    // with the relay.
                    if !failed {
                        process.process = relay.join().ok();
                    }
                }
                if let Some(mut worker) = process.process.take() {
                    if failed {
                        worker.kill();
                    } else {
                        worker.stop(Instant::now().checked_add(timeout));
                    }
                }
                tracing::trace!(plugin = %process.id, "worker process stopped");
                // Its threads ended with it.
                Ended::Done {
                    threads_left: Some(0),
                }
            }
        };
        match stopped {
            Ended::DropLate => self.abandon(),
            Ended::Done { .. } => self.enter(WorkerState::Stopped),
        }
        stopped
    }
}

/// Waits on `replies` for the end of a stream, until `due()` (asked again after each
/// wait).
fn stream_end(
    replies: &mut handoff::Receiver<Reply>,
    due: impl Fn() -> Option<Instant>,
) -> Result<StreamEnd, Lost> {
    loop {
        match replies.recv_by(due()) {
            Ok(Reply::Streamed(end)) => return Ok(*end),
            Ok(_) => {
                return Err(Lost::Gone(
                    "the worker answered a stream with another reply".to_owned(),
                ))
            }
            Err(RecvTimeoutError::Timeout) if due().is_some_and(|due| Instant::now() >= due) => {
                return Err(Lost::Late)
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Lost::Gone("the worker thread ended".to_owned()))
            }
        }
    }
}

impl ThreadSide {
    /// Sends a request.
    fn send(&mut self, request: Request) -> Result<(), Lost> {
        let Some(requests) = &mut self.requests else {
            return Err(Lost::Gone(
                "the worker thread takes no more requests".to_owned(),
            ));
        };
        requests
            .send(request)
            .map_err(|_| Lost::Gone("the worker thread is gone".to_owned()))
    }

    /// Sends a request and waits for its reply, until `timeout` after `sent` (the
    /// caller's reading of the clock just before). Returns the reply and when it came.
    fn call(
        &mut self,
        request: Request,
        timeout: Duration,
        sent: Instant,
    ) -> Result<(Reply, Instant), Lost> {
        self.send(request)?;
        let deadline = deadline_after(sent, timeout);
        let hot = self.cores.caller_waits();
        loop {
            return match self.wait.reply(&mut self.replies, sent, deadline, hot) {
                // The end of a pipeline run that stopped without collecting it (its
                // sink panicked): the worker went on to this request after it.
                Ok((Reply::Streamed(_), _)) => continue,
                Ok(reply) => Ok(reply),
                Err(RecvTimeoutError::Timeout) => Err(Lost::Late),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(Lost::Gone("the worker thread ended".to_owned()))
                }
            };
        }
    }

    /// Closes the request channel, so that the worker drops the instance and ends,
    /// and waits for that until `timeout`.
    fn stop(&mut self, timeout: Duration, failed: bool) -> Ended {
        self.requests = None;
        if failed {
            self.thread = None;
            return Ended::Done { threads_left: None };
        }
        let Some(thread) = self.thread.take() else {
            return Ended::Done { threads_left: None };
        };
        let deadline = deadline_after(Instant::now(), timeout);
        // The worker drops its end of the reply channel once the instance is gone.
        let dropped = loop {
            match self.replies.recv_by(deadline) {
                // A reply nobody collected (a pipeline run whose sink panicked).
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) => break false,
            }
        };
        if !dropped {
            self.thread = Some(thread);
            return Ended::DropLate;
        }
        join_by(thread, &self.life, deadline);
        let name = self.id.split('@').next().unwrap_or_default();
        Ended::Done {
            threads_left: self.left.report(&self.id, &format!("plugbay-{name}"), name),
        }
    }
}

#[cfg(target_os = "linux")]
impl ProcessSide {
    fn open_stream(&mut self, stream: Stream, timeout: Duration) -> Result<(), Lost> {
        let Some(mut worker) = self.process.take() else {
            return Err(Lost::Gone("the worker process is gone".to_owned()));
        };
        let (mut reply_tx, reply_rx) = handoff::handoff::<Reply>();
        let relay = std::thread::Builder::new()
            .name(format!("plugbay-relay-{}", self.id))
            .spawn(move || {
                let end = crate::stream::stream_with(stream, |batch| {
                    match process_batch(&mut worker, batch, timeout) {
                        Ok(result) => result,
                        Err(Fault::Timeout) => Err(Outcome::Late),
                        Err(Fault::Crashed(cause)) => Err(Outcome::Crashed(cause)),
                    }
                });
                let _ = reply_tx.send(Reply::Streamed(Box::new(end)));
                worker
            })
            .map_err(|err| Lost::Gone(format!("cannot start a relay thread: {err}")))?;
        self.relay = Some((relay, reply_rx));
        Ok(())
    }
}

/// Runs `process` on `batch` in a worker process, within `timeout`, and checks the
/// batch it returns as any plugin output.
#[cfg(target_os = "linux")]
fn process_batch(
    worker: &mut ProcessWorker,
    batch: &Batch,
    timeout: Duration,
) -> Result<Result<Batch, Outcome>, Fault> {
    Ok(
        match worker.process(batch, Instant::now().checked_add(timeout))? {
            Ok(bytes) => check_output(RVec::from(bytes)),
            Err(error) => Err(Outcome::Plugin(error)),
        },
    )
}

#[cfg(target_os = "linux")]
impl From<Fault> for Lost {
    fn from(fault: Fault) -> Lost {
        match fault {
            Fault::Timeout => Lost::Late,
            Fault::Crashed(cause) => Lost::Crashed(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerState::*;

    #[test]
    fn final_states_take_no_transition() {
        for final_state in [Abandoned, Stopped] {
            for next in [Serving, Streaming, Abandoned, Crashed, Stopped] {
                assert!(!final_state.may_become(next), "{final_state:?} → {next:?}");
            }
        }
        for next in [Serving, Streaming, Abandoned, Crashed] {
            assert!(!Crashed.may_become(next), "a crashed worker serves no more");
        }
        assert!(Crashed.may_become(Stopped), "its remains are stopped");
    }

    #[test]
    fn a_stream_opens_from_serving_and_closes_back_to_it() {
        assert!(Serving.may_become(Streaming));
        assert!(Streaming.may_become(Serving));
        assert!(!Streaming.may_become(Streaming));
        assert!(!Serving.may_become(Serving));
    }
}
