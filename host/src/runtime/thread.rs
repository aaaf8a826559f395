//! The worker thread of an instance in thread isolation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::RResult;
use crossbeam_channel::{RecvTimeoutError, Sender, TryRecvError};
use plugbay_api::abi::{ErrorKind, PluginContext, PluginError};
use plugbay_api::manifest::Manifest;

use super::{handoff, StartError};
use crate::batch::{Batch, Outputs};
use crate::call::{load_and_init, process_here, Outcome};
use crate::image::Image;
use crate::sandbox::{self, Confinement, Rules, SandboxMode};
use crate::services::Revoker;
use crate::stream::{self, Stopped, Stream, StreamEnd};
use crate::threads;

/// Joins a worker thread that has left its loop, if it ends by `deadline` (its
/// plugin's thread-local destructors still run after that); else abandons it.
pub(super) fn join_by(thread: JoinHandle<()>, life: &WorkerLife, deadline: Option<Instant>) {
    let mut pause = Duration::from_micros(20);
    while !thread.is_finished() {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            life.abandon();
            return;
        }
        let left = deadline.map_or(pause, |deadline| deadline - now);
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    let _ = thread.join();
}

/// The workers a host abandoned whose threads still run, per plugin id.
#[derive(Debug, Default)]
pub(super) struct Census {
    pub(super) running: Mutex<HashMap<String, usize>>,
}

impl Census {
    pub(super) fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn total(&self) -> usize {
        self.counts().values().sum()
    }

    pub(super) fn of(&self, id: &str) -> usize {
        self.counts().get(id).copied().unwrap_or(0)
    }
}

/// Where a worker thread is in its life, as its handle and the thread see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// Starting, serving calls, or dropping its instance, for a handle that waits.
    Serving,
    /// The host gave up waiting for it after a missed deadline: it may never return.
    Abandoned,
    /// The thread has left its function.
    Ended,
}

/// One worker's [`Life`], shared by its handle and its thread. The transitions:
/// `Serving → Abandoned` ([`abandon`](WorkerLife::abandon), the host), and
/// `Serving | Abandoned → Ended` ([`end`](WorkerLife::end), the thread). The host's
/// [`Census`] counts the workers in `Abandoned`.
pub(super) struct WorkerLife {
    pub(super) id: String,
    pub(super) life: Mutex<Life>,
    pub(super) census: Arc<Census>,
}

impl WorkerLife {
    pub(super) fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The host gives up on the worker; a worker that has ended stays ended.
    pub(super) fn abandon(&self) {
        let mut life = self.life();
        if *life == Life::Serving {
            *life = Life::Abandoned;
            *self.census.counts().entry(self.id.clone()).or_default() += 1;
            tracing::warn!(plugin = %self.id, "worker thread abandoned; it may never return from the plugin");
        }
    }

    /// The worker thread ends; an abandoned one leaves the census.
    pub(super) fn end(&self) {
        let mut life = self.life();
        if *life == Life::Abandoned {
            let mut counts = self.census.counts();
            if let Some(count) = counts.get_mut(&self.id) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.id);
                }
            }
            tracing::info!(plugin = %self.id, "an abandoned worker thread returned from the plugin and ended");
        }
        *life = Life::Ended;
    }
}

/// Ends the worker's [`Life`] when the worker's function returns or unwinds.
pub(super) struct Ending(Arc<WorkerLife>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// How long before a reply is due the caller stops sleeping and starts to spin.
///
/// Waking a parked thread costs tens of microseconds where cores sleep when idle
/// (measured on the 2-core virtual machine of BENCHMARKS.md: 50–100 µs, as long as a
/// batch of 50 records takes), and a sleeping timer wakes as late. Spinning this long
/// before the reply is due absorbs both.
pub(super) const WAKE_AHEAD: Duration = Duration::from_micros(200);

/// How long a waiting side (a caller for its reply, a worker for its next request)
/// polls at least without giving its core away, before it spins yielding and then
/// parks; a caller polls for up to twice the length of its recent calls, within
/// [`HOT_SPIN_MAX`].
///
/// A hand-off between two threads that both poll, each on a core of its own, takes a
/// few hundred nanoseconds; one that yields its core between polls can lose it for a
/// whole time slice to another thread of the machine, and one that has parked must be
/// woken (a system call for the waker, tens of microseconds for the wake-up). But when
/// the two threads share one core (the machine's other cores busy), the side that
/// polls keeps the other from running until it stops: so polling is short, and a
/// shared core costs a hand-off a few microseconds, not a time slice.
pub(super) const HOT_SPIN: Duration = Duration::from_micros(2);

/// The longest a caller polls without yielding, for calls of up to half as long.
pub(super) const HOT_SPIN_MAX: Duration = Duration::from_micros(20);

/// Polls between two readings of the clock in a hot spin: reading it costs more than
/// a poll (tens to a hundred nanoseconds in a virtual machine).
const POLLS_PER_CLOCK: u32 = 16;

/// Polls `channel` without yielding the core until `until`; `Ok(None)` if nothing
/// came by then.
pub(super) fn poll_hot<T>(
    channel: &mut handoff::Receiver<T>,
    until: Instant,
) -> Result<Option<T>, RecvTimeoutError> {
    loop {
        for _ in 0..POLLS_PER_CLOCK {
            match channel.try_recv() {
                Ok(message) => return Ok(Some(message)),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        if Instant::now() >= until {
            return Ok(None);
        }
    }
}

/// The cores a caller and its worker thread were last seen on, each written by its own
/// side when it starts to wait for the other. Two threads that share a core must not
/// poll for each other without yielding: the one polling keeps the other, which it
/// waits for, from running.
#[derive(Debug)]
pub(super) struct Cores {
    caller: AtomicUsize,
    worker: AtomicUsize,
}

impl Default for Cores {
    fn default() -> Cores {
        Cores {
            caller: AtomicUsize::new(usize::MAX),
            worker: AtomicUsize::new(usize::MAX - 1),
        }
    }
}

impl Cores {
    /// The caller is about to wait for its worker: whether the worker was last seen on
    /// another core.
    pub(super) fn caller_waits(&self) -> bool {
        let here = current_core();
        note(&self.caller, here);
        self.worker.load(Ordering::Relaxed) != here
    }

    /// The worker is about to wait for its caller: whether the caller was last seen on
    /// another core.
    pub(super) fn worker_waits(&self) -> bool {
        let here = current_core();
        note(&self.worker, here);
        self.caller.load(Ordering::Relaxed) != here
    }
}

/// Writes `core` into `seen` only if it changed: a thread stays on its core for many
/// calls, and a write would take the cache line from the other side's core each time.
fn note(seen: &AtomicUsize, core: usize) {
    if seen.load(Ordering::Relaxed) != core {
        seen.store(core, Ordering::Relaxed);
    }
}

/// The core the calling thread runs on (a read of the virtual DSO, no system call).
#[cfg(target_os = "linux")]
fn current_core() -> usize {
    rustix::thread::sched_getcpu()
}

/// Elsewhere: unknown, so never the same as the other side's.
#[cfg(not(target_os = "linux"))]
fn current_core() -> usize {
    usize::MAX - 2
}

/// How a caller waits for its worker's reply: it learns how long calls take; a short
/// call it polls for without giving its core away (up to [`HOT_SPIN_MAX`]); for a longer
/// one it sleeps (parked, no CPU) until shortly before the reply is due, spins
/// (yielding the core to any thread that wants it) until it comes, and parks again if
/// it is late.
///
/// A call shorter than [`WAKE_AHEAD`] is spun for whole, so a small batch costs a
/// hand-off of well under a microsecond instead of a wake-up; a long call costs at
/// most about `2 × WAKE_AHEAD` of spinning.
#[derive(Debug, Default)]
pub(super) struct ReplyWait {
    /// A moving average of recent calls' durations.
    pub(super) expected: Duration,
}

impl ReplyWait {
    /// Waits for the reply to a request sent at `sent`; returns it with the time it
    /// came (the caller's only reading of the clock after the call).
    pub(super) fn reply(
        &mut self,
        replies: &mut handoff::Receiver<Reply>,
        sent: Instant,
        deadline: Option<Instant>,
        hot: bool,
    ) -> Result<(Reply, Instant), RecvTimeoutError> {
        let reply = self.wait(replies, sent, deadline, hot)?;
        let came = Instant::now();
        // A call that took far longer than the last ones (its worker was descheduled,
        // or parked and woken) teaches at most a doubling, so that one such call does
        // not turn the next hundred short ones into sleeps; calls that really got
        // longer are learnt within a few dozen.
        let took = came
            .saturating_duration_since(sent)
            .min(self.expected * 2 + HOT_SPIN_MAX);
        self.expected = (self.expected * 3 + took) / 4;
        Ok((reply, came))
    }

    /// Waits as the type says; `hot`: the worker is on another core, so polling for a
    /// short call without yielding keeps nothing from running.
    pub(super) fn wait(
        &self,
        replies: &mut handoff::Receiver<Reply>,
        sent: Instant,
        deadline: Option<Instant>,
        hot: bool,
    ) -> Result<Reply, RecvTimeoutError> {
        let by_deadline = |instant: Instant| deadline.map_or(instant, |due| due.min(instant));
        if self.expected < HOT_SPIN_MAX {
            if !hot {
                // The worker waits for this core: let it run.
                std::thread::yield_now();
            }
            let window = if hot {
                (self.expected * 2).clamp(HOT_SPIN, HOT_SPIN_MAX)
            } else {
                Duration::ZERO
            };
            if let Some(reply) = poll_hot(replies, by_deadline(sent + window))? {
                return Ok(reply);
            }
        } else if let Some(sleep) = self.expected.checked_sub(WAKE_AHEAD) {
            match replies.recv_by(Some(by_deadline(sent + sleep))) {
                Err(RecvTimeoutError::Timeout) => {}
                other => return other,
            }
        }
        let spin_until = by_deadline(Instant::now() + self.expected.min(WAKE_AHEAD) + WAKE_AHEAD);
        loop {
            match replies.try_recv() {
                Ok(reply) => return Ok(reply),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= spin_until {
                return replies.recv_by(deadline);
            }
            std::thread::yield_now();
        }
    }
}

/// What a caller asks of its worker thread. Small, as [`Reply`] is, so that it
/// shares the hand-off's cache line with the word that says it is there: what is
/// rare goes in a box.
pub(super) enum Request {
    Process(Batch),
    Stream(Box<Stream>),
    Cleanup,
}

/// What a worker thread answers.
pub(super) enum Reply {
    /// The result, and the request's batch handed back: the caller drops it, so the
    /// count of a batch it shares is written on the caller's core only.
    Processed(Result<Batch, Box<Outcome>>, Batch),
    Streamed(Box<StreamEnd>),
    CleanedUp(Box<RResult<(), PluginError>>),
}

pub(super) struct Ready {
    pub(super) confinement: Confinement,
    pub(super) api_version: semver::Version,
}

pub(super) struct Setup {
    pub(super) id: String,
    pub(super) image: Image,
    pub(super) manifest: Manifest,
    pub(super) rules: Rules,
    pub(super) mode: SandboxMode,
    pub(super) context: PluginContext,
    pub(super) services: Revoker,
    pub(super) life: Arc<WorkerLife>,
    pub(super) left: Arc<threads::Left>,
    pub(super) cores: Arc<Cores>,
}

/// The worker thread: confine, load, construct, init, then serve requests; at the
/// end drop the instance (the handle waits for that with a deadline) and revoke its
/// host services. They are revoked as soon as `cleanup` returns, too.
pub(super) fn worker(
    setup: Setup,
    ready: Sender<Result<Ready, StartError>>,
    mut requests: handoff::Receiver<Request>,
    mut replies: handoff::Sender<Reply>,
) {
    let _ending = Ending(setup.life.clone());
    let services = setup.services.clone();
    // Before confinement: how the worker will find the threads its plugin leaves.
    let mut watch = threads::Watch::start();
    let left = setup.left.clone();
    let started = sandbox::confine_current_thread(&setup.id, &setup.rules, setup.mode)
        .map_err(StartError::from)
        .and_then(|confinement| {
            let (instance, api_version) =
                load_and_init(&setup.id, &setup.image, &setup.manifest, setup.context)?;
            Ok((
                instance,
                Ready {
                    confinement,
                    api_version,
                },
            ))
        });
    let mut instance = match started {
        Ok((instance, ready_message)) => {
            if ready.send(Ok(ready_message)).is_err() {
                // The caller gave up waiting (timeout): nobody will call us.
                services.revoke();
                drop(instance);
                return;
            }
            instance
        }
        Err(err) => {
            services.revoke();
            let _ = ready.send(Err(err));
            return;
        }
    };
    drop(ready);
    let mut outputs = Outputs::default();
    while let Some(request) = next_request(&mut requests, setup.cores.worker_waits()) {
        let is_panic = |error: &PluginError| error.kind == ErrorKind::PANICKED;
        let (reply, panicked) = match request {
            Request::Process(batch) => {
                let result = process_here(&mut instance, &batch, &mut outputs);
                let panicked = matches!(&result, Err(Outcome::Plugin(error)) if is_panic(error));
                (Reply::Processed(result.map_err(Box::new), batch), panicked)
            }
            Request::Stream(stream) => {
                let end = stream::stream_here(&mut instance, &mut outputs, *stream);
                let panicked = matches!(
                    &end,
                    Some((_, _, Stopped::Failed(Outcome::Plugin(error)))) if is_panic(error)
                );
                (Reply::Streamed(Box::new(end)), panicked)
            }
            Request::Cleanup => {
                let result = instance.cleanup();
                // Nothing the plugin does from now on reaches the host's services.
                services.revoke();
                let panicked = matches!(&result, RResult::RErr(error) if is_panic(error));
                (Reply::CleanedUp(Box::new(result)), panicked)
            }
        };
        if panicked {
            // After a panic the instance's state is unknown: never call or drop it again.
            std::mem::forget(instance);
            services.revoke();
            let _ = replies.send(reply);
            return;
        }
        if replies.send(reply).is_err() {
            // The handle is gone (it abandoned this worker, which returned late).
            break;
        }
    }
    // The SDK runs the plugin's `Drop` under `catch_unwind`; the handle waits for
    // this with the call deadline, and abandons the worker past it.
    drop(instance);
    services.revoke();
    left.record(watch.left());
    // Dropping `replies` (with the function's arguments) tells the handle.
}

/// How long a worker keeps looking for the next request after a reply before it
/// parks: callers that stream batches send the next one within microseconds, and
/// catching it awake saves them a wake-up (tens of microseconds on a virtual machine).
pub(super) const NEXT_REQUEST_SPIN: Duration = Duration::from_micros(50);

/// The next request, or `None` once the handle is gone. Polls without yielding for
/// [`HOT_SPIN`] if `hot` (the caller is on another core), spins yielding the core until
/// [`NEXT_REQUEST_SPIN`], then parks: an idle worker costs no CPU.
pub(super) fn next_request(
    requests: &mut handoff::Receiver<Request>,
    hot: bool,
) -> Option<Request> {
    let started = Instant::now();
    if hot {
        match poll_hot(requests, started + HOT_SPIN) {
            Ok(Some(request)) => return Some(request),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
    let spin_until = started + NEXT_REQUEST_SPIN;
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < spin_until => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return requests.recv(),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use abi_stable::std_types::RResult;

    fn cleaned_up() -> Reply {
        Reply::CleanedUp(Box::new(RResult::ROk(())))
    }

    #[test]
    fn requests_and_replies_fit_the_hand_off_line_with_its_state() {
        assert!(
            handoff::fits_one_line::<Request>(),
            "{} bytes",
            std::mem::size_of::<Request>()
        );
        assert!(
            handoff::fits_one_line::<Reply>(),
            "{} bytes",
            std::mem::size_of::<Reply>()
        );
    }

    /// The CPU time thread `tid` of this process has used so far.
    fn cpu_time(tid: i32) -> Duration {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
        Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
    }

    /// Runs `wait` on a thread of its own; returns the thread and its id.
    fn waiting<T: Send + 'static>(
        wait: impl FnOnce() -> T + Send + 'static,
    ) -> (std::thread::JoinHandle<T>, i32) {
        let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            wait()
        });
        (thread, tid_rx.recv().unwrap())
    }

    /// The CPU time thread `tid` uses over 200 ms, from 20 ms on (far past any spin).
    fn idle_cpu(tid: i32) -> Duration {
        std::thread::sleep(Duration::from_millis(20));
        let before = cpu_time(tid);
        std::thread::sleep(Duration::from_millis(200));
        cpu_time(tid) - before
    }

    #[test]
    fn an_idle_worker_parks_and_wakes_for_the_next_request() {
        let (mut requests_tx, mut requests_rx) = handoff::handoff::<Request>();
        let (worker, tid) = waiting(move || {
            let first = matches!(next_request(&mut requests_rx, true), Some(Request::Cleanup));
            (first, next_request(&mut requests_rx, false).is_none())
        });
        let used = idle_cpu(tid);
        assert!(
            used < Duration::from_millis(5),
            "a worker waiting for a request used {used:?} of CPU in 200 ms"
        );
        requests_tx.send(Request::Cleanup).ok().unwrap();
        drop(requests_tx);
        assert_eq!(
            worker.join().unwrap(),
            (true, true),
            "it took the request, then saw the handle go"
        );
    }

    #[test]
    fn a_caller_parks_while_a_long_call_runs() {
        let (mut replies_tx, mut replies_rx) = handoff::handoff::<Reply>();
        let (caller, tid) = waiting(move || {
            // It expects a short call (nothing learnt yet), so it polls first.
            let mut wait = ReplyWait::default();
            let sent = Instant::now();
            let (reply, came) = wait.reply(&mut replies_rx, sent, None, true).ok().unwrap();
            let learnt = wait.expected;
            (
                matches!(reply, Reply::CleanedUp(result) if matches!(*result, RResult::ROk(()))),
                came - sent,
                learnt,
            )
        });
        let used = idle_cpu(tid);
        assert!(
            used < Duration::from_millis(5),
            "a caller waiting for a reply used {used:?} of CPU in 200 ms"
        );
        replies_tx.send(cleaned_up()).ok().unwrap();
        let (replied, took, learnt) = caller.join().unwrap();
        assert!(replied);
        assert!(took >= Duration::from_millis(220), "{took:?}");
        assert_eq!(
            learnt,
            HOT_SPIN_MAX / 4,
            "one long call teaches the moving average at most a doubling (from nothing: the cap)"
        );
    }

    #[test]
    fn a_reply_that_comes_at_once_is_taken_while_polling() {
        let (mut replies_tx, mut replies_rx) = handoff::handoff::<Reply>();
        replies_tx.send(cleaned_up()).ok().unwrap();
        let sent = Instant::now();
        let reply = poll_hot(&mut replies_rx, sent + HOT_SPIN).unwrap();
        assert!(matches!(reply, Some(Reply::CleanedUp(_))));
        assert!(matches!(
            poll_hot(&mut replies_rx, Instant::now()),
            Ok(None)
        ));
        drop(replies_tx);
        assert!(matches!(
            poll_hot(&mut replies_rx, Instant::now() + HOT_SPIN),
            Err(RecvTimeoutError::Disconnected)
        ));
    }
}
