//! Pipelines: a chain of plugins, each on its own worker, with batches streaming
//! through bounded channels so that stage N works on batch k+1 while stage N+1 works
//! on batch k. The host never parses a batch between stages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use serde::Serialize;

use crate::batch::Batch;
use crate::runtime::{CallError, PluginHandle};

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
    stages: Vec<PluginHandle>,
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
        /// The batch the stage was given.
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
    /// Records returned (when the host checks output).
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
        Pipeline { stages }
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
    /// carries the batch that failed.
    ///
    /// Each stage keeps a second batch queued behind the one its plugin is working
    /// on. When a stage fails on batch k, its plugin may already have processed batch
    /// k + 1 (whose output is dropped with the rest of the run): a stateful plugin that
    /// resumes at batch k has seen k + 1 once before.
    pub fn run<I, F>(&mut self, input: I, mut sink: F) -> Result<PipelineReport, PipelineError>
    where
        I: IntoIterator<Item = Result<Batch, IoError>>,
        I::IntoIter: Send,
        F: FnMut(Batch) -> Result<(), IoError>,
    {
        if self.stages.is_empty() {
            return Err(PipelineError::Empty);
        }
        let started = Instant::now();
        let before: Vec<(u64, u64, Duration)> = self
            .stages
            .iter()
            .map(|stage| {
                (
                    stage.status().batches,
                    stage.status().records_out,
                    stage.status().busy,
                )
            })
            .collect();
        let input = input.into_iter();
        let (first_tx, first_rx) = bounded::<(u64, Batch)>(STAGE_QUEUE);
        let mut delivered = 0u64;

        let errors: Vec<PipelineError> = std::thread::scope(|scope| {
            let feeder = scope.spawn(move || feed(input, first_tx));
            let mut stage_threads = Vec::new();
            let mut upstream = first_rx;
            for (stage, handle) in self.stages.iter_mut().enumerate() {
                let (tx, rx) = bounded::<(u64, Batch)>(STAGE_QUEUE);
                let from = std::mem::replace(&mut upstream, rx);
                stage_threads.push(scope.spawn(move || run_stage(stage, handle, from, tx)));
            }
            let mut errors = Vec::new();
            for (index, batch) in upstream.iter() {
                if let Err(error) = sink(batch) {
                    errors.push(PipelineError::Output { index, error });
                    break;
                }
                delivered += 1;
            }
            drop(upstream);
            // The first failure upstream is the cause; later ones are its echo.
            let mut upstream_errors: Vec<PipelineError> = Vec::new();
            if let Ok(Some(error)) = feeder.join() {
                upstream_errors.push(error);
            }
            for thread in stage_threads {
                if let Ok(Some(error)) = thread.join() {
                    upstream_errors.push(error);
                }
            }
            upstream_errors.sort_by_key(|error| match error {
                PipelineError::Stage { index, .. } | PipelineError::Input { index, .. } => *index,
                _ => u64::MAX,
            });
            upstream_errors.extend(errors);
            upstream_errors
        });
        if let Some(error) = errors.into_iter().next() {
            return Err(error);
        }
        Ok(PipelineReport {
            batches: delivered,
            elapsed: started.elapsed(),
            stages: self
                .stages
                .iter()
                .zip(before)
                .map(|(stage, (batches, records, busy))| StageReport {
                    plugin: stage.id().to_owned(),
                    batches: stage.status().batches - batches,
                    records_out: stage.status().records_out - records,
                    busy: stage.status().busy - busy,
                })
                .collect(),
        })
    }
}

fn feed<I: Iterator<Item = Result<Batch, IoError>>>(
    input: I,
    to: Sender<(u64, Batch)>,
) -> Option<PipelineError> {
    for (index, batch) in (0u64..).zip(input) {
        match batch {
            Ok(batch) => {
                if to.send((index, batch)).is_err() {
                    return None;
                }
            }
            Err(error) => return Some(PipelineError::Input { index, error }),
        }
    }
    None
}

fn run_stage(
    stage: usize,
    handle: &mut PluginHandle,
    from: Receiver<(u64, Batch)>,
    to: Sender<(u64, Batch)>,
) -> Option<PipelineError> {
    // The queues hide a stage's wait for its plugin; spinning would only take a core
    // from the stages that are working.
    handle.set_spin(false);
    let result = stage_loop(stage, handle, from, to);
    handle.set_spin(true);
    result
}

fn stage_loop(
    stage: usize,
    handle: &mut PluginHandle,
    from: Receiver<(u64, Batch)>,
    to: Sender<(u64, Batch)>,
) -> Option<PipelineError> {
    // The batches sent to the plugin and not yet answered, oldest first: one in the
    // plugin and one queued behind it, so the worker goes from one batch to the next
    // without waiting for this thread to wake up.
    let mut pending: VecDeque<(u64, Batch)> = VecDeque::with_capacity(2);
    let mut upstream_open = true;
    loop {
        while upstream_open && pending.len() < 2 {
            let next = if pending.is_empty() {
                from.recv().ok()
            } else {
                match from.try_recv() {
                    Ok(next) => Some(next),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            let Some((index, batch)) = next else {
                upstream_open = false;
                break;
            };
            if let Err(error) = handle.submit(&batch) {
                // A worker that is gone may have answered the batch before this one
                // (a panic ends it): deliver or report that first, so the error
                // names the batch that caused it.
                if let Some((earlier, earlier_batch)) = pending.pop_front() {
                    match handle.receive() {
                        Ok(output) => {
                            let _ = to.send((earlier, output));
                        }
                        Err(error) => {
                            return Some(PipelineError::Stage {
                                stage,
                                index: earlier,
                                error,
                                batch: earlier_batch,
                            })
                        }
                    }
                }
                return Some(PipelineError::Stage {
                    stage,
                    index,
                    error,
                    batch,
                });
            }
            pending.push_back((index, batch));
        }
        // Nothing in flight and the upstream closed: the stage is done.
        let (index, batch) = pending.pop_front()?;
        match handle.receive() {
            Ok(output) => {
                if to.send((index, output)).is_err() {
                    return None;
                }
            }
            Err(error) => {
                return Some(PipelineError::Stage {
                    stage,
                    index,
                    error,
                    batch,
                })
            }
        }
    }
}
