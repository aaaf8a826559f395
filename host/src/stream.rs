//! A pipeline stage's part of a run, as its worker runs it: batches from the stage's
//! input through the plugin to its output, with a clock the pipeline's driver reads
//! for the deadline and the counters. The same loop serves a worker thread (on its
//! instance) and a worker process (through the host's relay thread).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TryRecvError};
use plugbay_api::abi::{ErrorKind, PluginBox, PluginError};

use crate::batch::Batch;
use crate::batch::Outputs;
use crate::call::{process_here, Outcome};
use crate::upgrade::{Handover, Lanes};

/// What a stage's worker tells the pipeline's driver as it goes: the batch it took
/// last and, while its plugin works on it, since when (for the deadline), and what
/// it has done so far (the counters survive a worker that never returns).
#[derive(Default)]
pub(crate) struct Clock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    last: Option<(u64, Batch)>,
    since: Option<Instant>,
    /// The driver found the batch in the plugin past its deadline.
    timed_out: bool,
    batches: u64,
    records_out: u64,
    busy: Duration,
}

impl Clock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plugin starts on batch `index`.
    pub fn start(&self, index: u64, batch: &Batch) {
        let mut state = self.state();
        state.last = Some((index, batch.clone()));
        state.since = Some(Instant::now());
    }

    /// The plugin returned, with a batch of `records` records if it gave one. Returns
    /// whether it returned in time: within `timeout`, and before the driver found it
    /// late (one lock decides, so the driver and the worker never disagree). A late
    /// batch is not counted: its output is dropped.
    pub fn finish(&self, timeout: Duration, records: Option<usize>) -> bool {
        let mut state = self.state();
        let Some(since) = state.since.take() else {
            return false;
        };
        let elapsed = since.elapsed();
        state.busy += elapsed;
        let in_time = !state.timed_out && elapsed < timeout;
        if let (true, Some(records)) = (in_time, records) {
            state.batches += 1;
            state.records_out += records as u64;
        }
        in_time
    }

    /// The last batch the stage took.
    pub fn last(&self) -> Option<(u64, Batch)> {
        self.state().last.clone()
    }

    /// When the batch in the plugin is due, or `idle` if the plugin is not in a
    /// call; `None`: no deadline (one too far to represent).
    pub fn due(&self, timeout: Duration, idle: Option<Instant>) -> Option<Instant> {
        match self.state().since {
            Some(since) => since.checked_add(timeout),
            None => idle,
        }
    }

    /// The batch in the plugin, if it is past its deadline at `now` (which the
    /// worker then learns when its plugin returns).
    pub fn late(&self, timeout: Duration, now: Instant) -> Option<(u64, Batch)> {
        let mut state = self.state();
        let past_due = |since: Instant| since.checked_add(timeout).is_some_and(|due| now >= due);
        match (&state.last, state.since) {
            (Some(last), Some(since)) if past_due(since) => {
                let last = last.clone();
                state.timed_out = true;
                Some(last)
            }
            _ => None,
        }
    }

    /// Batches returned, records in them, and time spent in `process`.
    pub fn counters(&self) -> (u64, u64, Duration) {
        let state = self.state();
        (state.batches, state.records_out, state.busy)
    }
}

/// A stage's part of a run, handed to its worker: batches come from `input` and
/// results go to `output`, until `input` ends, `output` closes, `aborted` is
/// disconnected or the plugin fails or returns after `timeout`.
pub(crate) struct Stream {
    pub input: Receiver<(u64, Batch)>,
    pub output: Sender<(u64, Batch)>,
    pub aborted: Receiver<()>,
    pub clock: Arc<Clock>,
    pub timeout: Duration,
    /// Asks the stream to stop at its next batch boundary and hand its input and
    /// output to the driver, for the next version of the plugin (an upgrade).
    pub handover: Handover,
}

/// Why a stream stopped on a batch: the plugin failed, or returned after its
/// deadline (its output is dropped, as a call's would be).
pub(crate) enum Stopped {
    Failed(Outcome),
    Late,
}

/// Where a stream stopped on a batch (its number and the batch), and why; `None`
/// when it ended with its input, its output or the run.
pub(crate) type StreamEnd = Option<(u64, Batch, Stopped)>;

/// Runs a stream on the worker's thread, with its instance.
pub(crate) fn stream_here(
    instance: &mut PluginBox,
    outputs: &mut Outputs,
    stream: Stream,
) -> StreamEnd {
    stream_with(stream, |batch| process_here(instance, batch, outputs))
}

/// Runs a stream, calling `process` on each batch (on a worker thread, the instance;
/// for a worker process, a call into it). An `Outcome::Crashed` stops the stream like
/// a panic; `None` from `process` means the call missed its deadline.
pub(crate) fn stream_with(
    stream: Stream,
    mut process: impl FnMut(&Batch) -> Result<Batch, Outcome>,
) -> StreamEnd {
    let Stream {
        input,
        output,
        aborted,
        clock,
        timeout,
        handover,
    } = stream;
    // Once the run is aborted no new batch starts, even one already waiting.
    let is_aborted = || matches!(aborted.try_recv(), Err(TryRecvError::Disconnected));
    loop {
        if is_aborted() {
            return None;
        }
        // An upgrade takes the stream between two batches: none is taken from the
        // input and dropped, and the batch before went out whole.
        if handover.asked() {
            handover.hand_back(Lanes { input, output });
            return None;
        }
        let next = select! {
            recv(input) -> next => next.ok(),
            recv(aborted) -> _ => None,
            recv(handover.asking()) -> asked => {
                if asked.is_ok() {
                    handover.hand_back(Lanes { input, output });
                }
                return None;
            }
        };
        let (index, batch) = next?;
        if is_aborted() {
            return None;
        }
        clock.start(index, &batch);
        let result = process(&batch);
        let records = result.as_ref().ok().map(|output| output.len().unwrap_or(0));
        let in_time = clock.finish(timeout, records);
        match result {
            // A panic is a panic, late or not: the instance is never called again.
            Err(
                outcome @ (Outcome::Plugin(PluginError {
                    kind: ErrorKind::PANICKED,
                    ..
                })
                | Outcome::Crashed(_)),
            ) => return Some((index, batch, Stopped::Failed(outcome))),
            Err(Outcome::Late) => return Some((index, batch, Stopped::Late)),
            _ if !in_time => return Some((index, batch, Stopped::Late)),
            _ => {}
        }
        match result {
            Ok(processed) => {
                let sent = select! {
                    send(output, (index, processed)) -> sent => sent.is_ok(),
                    recv(aborted) -> _ => false,
                };
                if !sent {
                    return None;
                }
            }
            Err(outcome) => return Some((index, batch, Stopped::Failed(outcome))),
        }
    }
}
