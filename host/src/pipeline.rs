//! Pipelines: a chain of plugins, each on its own worker, with batches streaming
//! through bounded channels so that stage N works on batch k+1 while stage N+1 works
//! on batch k. Each worker takes its batches from the stage before it and hands its
//! results to the stage after it itself: no thread of the host stands between two
//! stages, and the host never parses a batch between them. The thread that runs the
//! pipeline delivers the output and watches every stage's deadline.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use plugbay_api::manifest::Hook;
use serde::Serialize;

use crate::batch::Batch;
use crate::runtime::{CallError, PluginHandle};
use crate::stream::{Clock, Stream};
use crate::upgrade::{Counters, Switchboard, Switching, Waited};

/// Batches waiting between two stages (back-pressure beyond that).
const STAGE_QUEUE: usize = 2;

/// A chain of running plugins.
///
/// # Examples
///
/// ```no_run
/// use plugbay_host::{Batch, Host, Pipeline, PluginSpec};
///
/// let host = Host::new();
/// let first = host.start(PluginSpec::from_manifest_file("redactor/plugin.json")?)?;
/// let second = host.start(PluginSpec::from_manifest_file("data-processor/plugin.json")?)?;
/// let mut pipeline = Pipeline::new(vec![first, second]);
/// let input = (0..10).map(|i| Ok(Batch::from_json(format!(r#"[{{"id": {i}}}]"#))));
/// let report = pipeline.run(input, |batch| {
///     println!("{}", String::from_utf8_lossy(batch.as_bytes()));
///     Ok(())
/// })?;
/// println!("{} batches in {:?}", report.batches, report.elapsed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) stages: Vec<PluginHandle>,
    /// Where stage upgrades are asked for (see [`Pipeline::switch`]).
    pub(crate) switchboard: Switchboard,
}

/// An error from outside the plugins: reading input or writing output.
pub type IoError = Box<dyn std::error::Error + Send + Sync>;

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A stage failed on a batch. The batch it was given is returned, not lost.
    #[error("pipeline stage {stage} failed on batch {index}: {error}")]
    Stage {
        /// 0-based stage.
        stage: usize,
        /// 0-based batch number.
        index: u64,
        /// What failed.
        #[source]
        error: CallError,
        /// The batch the stage was given (for a stage that could not take batches at
        /// all, the first input batch).
        batch: Batch,
    },
    /// Reading the input failed.
    #[error("reading pipeline input failed at batch {index}: {error}")]
    Input {
        /// 0-based batch number.
        index: u64,
        /// What failed.
        error: IoError,
    },
    /// The output sink failed.
    #[error("writing pipeline output failed at batch {index}: {error}")]
    Output {
        /// 0-based batch number.
        index: u64,
        /// What failed.
        error: IoError,
    },
    /// A stage could not switch to the new version of its plugin (its worker was gone
    /// when the stream was handed to it); the run stopped.
    #[error("pipeline stage {stage} could not switch from {from} to {to}: {error}")]
    Switch {
        /// 0-based stage.
        stage: usize,
        /// The plugin that was serving the stage.
        from: String,
        /// The plugin that was to serve it.
        to: String,
        /// What failed.
        #[source]
        error: Box<CallError>,
    },
    /// The thread that reads the input could not be spawned.
    #[error("cannot spawn the pipeline's input thread: {source}")]
    Spawn {
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline has no stages.
    #[error("a pipeline needs at least one plugin")]
    Empty,
}

/// What one stage did.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The plugin's id.
    pub plugin: String,
    /// Batches processed.
    pub batches: u64,
    /// Records returned (the host counts every batch a plugin returns).
    pub records_out: u64,
    /// Time spent waiting on the plugin.
    pub busy: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// Batches that came out of the last stage.
    pub batches: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// One entry per stage.
    pub stages: Vec<StageReport>,
}

impl Pipeline {
    /// A pipeline through `stages`, in order.
    pub fn new(stages: Vec<PluginHandle>) -> Pipeline {
        let switchboard = Switchboard::new(&stages);
        Pipeline {
            stages,
            switchboard,
        }
    }

    /// The stages.
    pub fn stages(&self) -> &[PluginHandle] {
        &self.stages
    }

    /// Takes the stages back (to shut them down one by one, for example).
    pub fn into_stages(self) -> Vec<PluginHandle> {
        self.stages
    }

    /// Streams `input` through every stage and hands each output batch to `sink`, in
    /// input order. Stops at the first error, which says where it happened and
    /// carries the batch that failed; every batch before it has reached `sink`.
    ///
    /// When a stage fails on batch k (an error, a panic or a missed deadline), it has
    /// processed batches 0 to k − 1 and nothing after them, so a stateful plugin can
    /// resume at batch k. A panic in `sink` or in the input iterator reaches the
    /// caller once every stage has left the run; the stages stay usable.
    ///
    /// The input is read on a thread of its own, which a failed run does not wait
    /// for: an input that blocks (stdin from a slow producer) does not hold back the
    /// error, and that thread ends at its next batch.
    pub fn run<I, F>(&mut self, input: I, mut sink: F) -> Result<PipelineReport, PipelineError>
    where
        I: IntoIterator<Item = Result<Batch, IoError>>,
        I::IntoIter: Send + 'static,
        F: FnMut(Batch) -> Result<(), IoError>,
    {
        if self.stages.is_empty() {
            return Err(PipelineError::Empty);
        }
        let input = input.into_iter();
        // A stage that cannot take batches fails the run on its first batch.
        if let Some((stage, error)) =
            self.stages.iter().enumerate().find_map(|(stage, handle)| {
                handle.takes_batches().err().map(|error| (stage, error))
            })
        {
            return self.refuse(input, stage, error);
        }
        let started = Instant::now();
        // Upgrades asked for while no run was going take effect now, before any batch.
        let mut switching = Switching::start(&self.switchboard, &mut self.stages);
        let mut before = self.counters();
        // Dropping a stage's sender in `aborts` wakes it out of its waits, and it
        // starts no other batch; the feeder goes with the first stage.
        let (mut aborts, abort_receivers): (Vec<_>, Vec<_>) = (0..self.stages.len())
            .map(|_| {
                let (abort, aborted) = bounded::<()>(0);
                (Some(abort), aborted)
            })
            .unzip();
        let (first_tx, first_rx) = bounded::<(u64, Batch)>(STAGE_QUEUE);
        let mut upstream = first_rx;
        let mut clocks = Vec::with_capacity(self.stages.len());
        // Each stage's input queue, to empty it if its worker is abandoned: a worker
        // that never returns never takes the batches waiting there.
        let mut queues = Vec::with_capacity(self.stages.len());
        for (stage, handle) in self.stages.iter_mut().enumerate() {
            let (tx, rx) = bounded::<(u64, Batch)>(STAGE_QUEUE);
            let clock = Arc::new(Clock::default());
            queues.push(upstream.clone());
            let stream = Stream {
                input: std::mem::replace(&mut upstream, rx),
                output: tx,
                aborted: abort_receivers[stage].clone(),
                clock: clock.clone(),
                timeout: handle.timeout(),
                handover: switching.handover(stage),
            };
            clocks.push(clock);
            if let Err(error) = handle.open_stream(stream) {
                // The worker is gone. Nothing has been read yet: stop the stages
                // before it, and fail on the first batch as above.
                aborts.clear();
                leave_unread(&mut self.stages[..stage]);
                return self.refuse(input, stage, error);
            }
        }
        let mut streaming = vec![true; self.stages.len()];
        let mut delivered = 0u64;
        let mut errors = Vec::new();

        let feeder = match std::thread::Builder::new()
            .name("plugbay-feeder".to_owned())
            .spawn({
                let aborted = abort_receivers[0].clone();
                move || feed(input, first_tx, aborted)
            }) {
            Ok(feeder) => feeder,
            Err(source) => {
                aborts.clear();
                leave_unread(&mut self.stages);
                return Err(PipelineError::Spawn { source });
            }
        };
        // Deliver the output and watch the deadlines. A stage that misses one on
        // batch k is failed at once; the batches before k are all past it, and
        // are delivered before the run stops.
        let mut stop_at = u64::MAX;
        let mut raised = None;
        loop {
            let now = Instant::now();
            for (stage, (handle, clock)) in self.stages.iter_mut().zip(&clocks).enumerate() {
                if !streaming[stage] {
                    continue;
                }
                if let Some((index, batch)) = clock.late(handle.timeout(), now) {
                    streaming[stage] = false;
                    stop_at = stop_at.min(index);
                    // What the stages before it do from now on cannot reach the sink.
                    aborts[..=stage].iter_mut().for_each(|abort| *abort = None);
                    errors.push(PipelineError::Stage {
                        stage,
                        index,
                        error: handle.time_out(Hook::Process),
                        batch,
                    });
                    empty(&queues[stage]);
                }
            }
            if delivered >= stop_at {
                break;
            }
            // A call that starts after this look is due after `now + timeout`; a
            // stage without a deadline (`Duration::MAX`) is never late.
            let wake = if streaming.contains(&true) {
                self.stages
                    .iter()
                    .zip(&clocks)
                    .zip(&streaming)
                    .filter(|(_, streaming)| **streaming)
                    .filter_map(|((handle, clock), _)| {
                        let timeout = handle.timeout();
                        clock.due(timeout, now.checked_add(timeout))
                    })
                    .min()
            } else {
                Some(now + END_GRACE)
            };
            let received = match switching.wait(&upstream, wake) {
                Waited::Upstream(received) => received,
                Waited::Switch(event) => {
                    // An upgrade of a stage: asked for, or handed over at a batch
                    // boundary (then the new version serves the stage from its next
                    // batch on). Its deadline is watched from the top of the loop.
                    let live = switching.on(
                        event,
                        &mut self.stages,
                        &mut clocks,
                        &abort_receivers,
                        &mut before,
                    );
                    if let Err(error) = live {
                        aborts.clear();
                        errors.push(error);
                        break;
                    }
                    continue;
                }
            };
            match received {
                Ok((index, batch)) => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| sink(batch))) {
                        Ok(Ok(())) => delivered += 1,
                        Ok(Err(error)) => {
                            errors.push(PipelineError::Output { index, error });
                            break;
                        }
                        // Raised again once every stage has left the run.
                        Err(panic) => {
                            raised = Some(panic);
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        aborts.clear();
        drop(upstream);

        for (stage, handle) in self.stages.iter_mut().enumerate() {
            let clock = &clocks[stage];
            if streaming[stage] {
                // A stage in a call has until that call's deadline to return;
                // one between calls leaves the run at once.
                let grace = Instant::now() + END_GRACE;
                let timeout = handle.timeout();
                let due = || clock.due(timeout, Some(grace));
                let failure = match handle.close_stream(due) {
                    Ok(failure) => failure,
                    Err(error) => {
                        empty(&queues[stage]);
                        clock.last().map(|(index, batch)| (index, batch, error))
                    }
                };
                if let Some((index, batch, error)) = failure {
                    errors.push(PipelineError::Stage {
                        stage,
                        index,
                        error,
                        batch,
                    });
                }
            }
            let (batches, records_out, busy) = clock.counters();
            handle.count(batches, records_out, busy);
        }
        // The feeder has ended unless the run stopped early while it waits on its
        // input (stdin from a slow producer): it is not waited for then, and ends at
        // its next batch, when it finds the run aborted.
        if (errors.is_empty() && raised.is_none()) || feeder.is_finished() {
            match feeder.join() {
                Ok(Some(error)) => errors.push(error),
                Ok(None) => {}
                // The input iterator panicked: so does the run, now that every
                // stage has left it.
                Err(panic) => {
                    raised.get_or_insert(panic);
                }
            }
        }
        // Upgrades still waiting for a batch boundary get the end of the run.
        switching.finish(&mut self.stages, &mut before);
        if let Some(panic) = raised {
            std::panic::resume_unwind(panic);
        }
        // The earliest failure is the cause; later ones are its echo.
        errors.sort_by_key(|error| match error {
            PipelineError::Stage { index, .. }
            | PipelineError::Input { index, .. }
            | PipelineError::Output { index, .. } => *index,
            PipelineError::Spawn { .. } | PipelineError::Switch { .. } | PipelineError::Empty => {
                u64::MAX
            }
        });
        if let Some(error) = errors.into_iter().next() {
            return Err(error);
        }
        Ok(self.report_with(started, &before, switching.carried(), delivered))
    }

    /// The error of a run that could not start because `stage` cannot take batches:
    /// the stage fails on the first batch, which is returned with the error.
    fn refuse<I>(
        &self,
        mut input: I,
        stage: usize,
        error: CallError,
    ) -> Result<PipelineReport, PipelineError>
    where
        I: Iterator<Item = Result<Batch, IoError>>,
    {
        match input.next() {
            None => Ok(self.report(Instant::now(), &self.counters(), 0)),
            Some(Ok(batch)) => Err(PipelineError::Stage {
                stage,
                index: 0,
                error,
                batch,
            }),
            Some(Err(error)) => Err(PipelineError::Input { index: 0, error }),
        }
    }

    fn counters(&self) -> Vec<(u64, u64, Duration)> {
        self.stages
            .iter()
            .map(|stage| {
                let status = stage.status();
                (status.batches, status.records_out, status.busy)
            })
            .collect()
    }

    fn report(
        &self,
        started: Instant,
        before: &[(u64, u64, Duration)],
        delivered: u64,
    ) -> PipelineReport {
        let carried = vec![Counters::default(); self.stages.len()];
        self.report_with(started, before, &carried, delivered)
    }

    /// The report of a run, counting for each stage what the plugins it retired in
    /// upgrades during the run did (`carried`) and what the one serving it now did
    /// since `before`.
    fn report_with(
        &self,
        started: Instant,
        before: &[(u64, u64, Duration)],
        carried: &[Counters],
        delivered: u64,
    ) -> PipelineReport {
        PipelineReport {
            batches: delivered,
            elapsed: started.elapsed(),
            stages: self
                .stages
                .iter()
                .zip(before)
                .zip(carried)
                .map(|((stage, (batches, records, busy)), carried)| StageReport {
                    plugin: stage.id().to_owned(),
                    batches: carried.batches + (stage.status().batches - batches),
                    records_out: carried.records_out + (stage.status().records_out - records),
                    busy: carried.busy + stage.status().busy.saturating_sub(*busy),
                })
                .collect(),
        }
    }
}

/// How long a stage that is not in a call has to leave its stream once the run ends.
const END_GRACE: Duration = Duration::from_secs(1);

/// Closes the streams of `stages` in a run that was aborted before any batch was
/// read: none of them has anything to report.
fn leave_unread(stages: &mut [PluginHandle]) {
    let grace = Instant::now() + END_GRACE;
    for stage in stages {
        let _ = stage.close_stream(|| Some(grace));
    }
}

/// Drops the batches waiting in an abandoned stage's input queue.
fn empty(queue: &Receiver<(u64, Batch)>) {
    while queue.try_recv().is_ok() {}
}

fn feed<I: Iterator<Item = Result<Batch, IoError>>>(
    input: I,
    to: Sender<(u64, Batch)>,
    aborted: Receiver<()>,
) -> Option<PipelineError> {
    for (index, batch) in (0u64..).zip(input) {
        match batch {
            Ok(batch) => {
                let sent = select! {
                    send(to, (index, batch)) -> sent => sent.is_ok(),
                    recv(aborted) -> _ => false,
                };
                if !sent {
                    return None;
                }
            }
            Err(error) => return Some(PipelineError::Input { index, error }),
        }
    }
    None
}
