//! Live upgrades: a running plugin replaced by another version of itself, start
//! before stop, without losing, repeating or reordering a batch.
//!
//! An upgrade happens in this order, for a [`PluginHandle`] ([`Host::upgrade`],
//! [`PluginHandle::replace_with`]) and for one stage of a running [`Pipeline`]
//! ([`StageSwitch`]) alike:
//!
//! 1. The new version is started and initialised, beside the old one, which goes on
//!    serving. If that fails, nothing else happens: the caller gets the error
//!    ([`UpgradeError::Start`], naming the new version) and the old one serves on.
//! 2. At the next batch boundary the old instance stops taking batches. The batch it
//!    is working on (a pipeline stage may be in one) finishes on it and goes on.
//! 3. The old instance's `cleanup` runs.
//! 4. The new instance takes the next batch, and every one after it.
//! 5. The old instance's worker stops: a worker thread is joined (its library stays
//!    mapped: a Rust library cannot be unloaded soundly), a worker process exits and
//!    its memory goes back to the system.
//!
//! State is the plugin's own. Steps 1 and 3 give it a way to carry state across: the
//! new version's `init` runs while the old one still serves (it can read what the
//! old one stored, and refuse to start on state it does not understand, which keeps
//! the old one serving), and the old version's `cleanup` has returned before the new
//! one's first `process`. So a plugin that stores its state at `cleanup` and takes it
//! up at its first batch loses nothing (`example-plugins/sequencer` does).
//!
//! A pipeline's stage is switched by the thread that runs the pipeline, between two
//! of its deliveries: the stage's worker hands its input and output queues back at a
//! batch boundary (never in the middle of a batch), and the new version's worker
//! gets the same queues. The stages before and after it never stop.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Select, Sender};

use crate::batch::Batch;
use crate::pipeline::{Pipeline, PipelineError};
use crate::runtime::{CallError, Host, PluginHandle, PluginSpec, PluginStatus, StartError, State};
use crate::stream::{Clock, Stream};

/// What an upgrade did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Upgrade {
    /// The id of the version that served before (`name@version`).
    pub from: String,
    /// The id of the version that serves now.
    pub to: String,
    /// The old instance's final status: its counters, and its state (`unloaded`, or
    /// `failed` if it had failed or its cleanup missed its deadline).
    pub previous: PluginStatus,
    /// Why the old instance's `cleanup` or stop failed, if it did. The upgrade
    /// happened all the same: the new version serves.
    pub cleanup_error: Option<CallError>,
}

/// Why an upgrade did not happen. The old version serves on in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The new version did not start (its library failed a check, its `init`
    /// returned an error or panicked, …).
    #[error("cannot upgrade {from} to {to}: {to} did not start, so {from} serves on")]
    Start {
        /// The version serving.
        from: String,
        /// The version that did not start.
        to: String,
        /// Why it did not start (naming it).
        #[source]
        source: Box<StartError>,
    },
    /// The new instance is another plugin, not another version of the same one.
    #[error("cannot upgrade {from} to {to}: an upgrade replaces a plugin with another version of the same name; start {to} beside it instead")]
    OtherPlugin {
        /// The version serving.
        from: String,
        /// The other plugin.
        to: String,
    },
    /// The new instance cannot take batches (see [`CallError::NotPermitted`]), or it
    /// has failed or stopped since it started.
    #[error("cannot upgrade {from} to {to}: {to} cannot take batches, so {from} serves on")]
    NotServing {
        /// The version serving.
        from: String,
        /// The new version.
        to: String,
        /// Why it cannot.
        #[source]
        source: Box<CallError>,
    },
    /// The pipeline has no such stage.
    #[error("cannot upgrade stage {stage} to {to}: the pipeline has {stages} stages (0 to {})", stages.saturating_sub(1))]
    NoStage {
        /// The 0-based stage asked for.
        stage: usize,
        /// The new version.
        to: String,
        /// How many stages the pipeline has.
        stages: usize,
    },
    /// The pipeline was dropped before it switched the stage.
    #[error("cannot upgrade stage {stage} to {to}: the pipeline was dropped before it switched the stage")]
    PipelineGone {
        /// The 0-based stage.
        stage: usize,
        /// The new version.
        to: String,
    },
}

/// The plugin name of an id (`name@version`).
fn name_of(id: &str) -> &str {
    id.split_once('@').map_or(id, |(name, _)| name)
}

/// Refuses to replace `from` with another plugin.
fn same_plugin(from: &str, to: &str) -> Result<(), UpgradeError> {
    if name_of(from) == name_of(to) {
        Ok(())
    } else {
        Err(UpgradeError::OtherPlugin {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

/// Runs the retired instance's `cleanup` (unless it failed or stopped already), and
/// stops its worker.
fn retire(old: PluginHandle, to: &str) -> Upgrade {
    clean_up(old, to).stop()
}

/// An instance an upgrade retired, cleaned up; its worker stops in [`Retired::stop`]
/// (on the thread that asked for the upgrade, not the one that runs a pipeline).
struct Retired {
    old: PluginHandle,
    to: String,
    cleaned: Result<(), CallError>,
}

/// Runs the retired instance's `cleanup`, unless it failed or stopped already.
fn clean_up(mut old: PluginHandle, to: &str) -> Retired {
    let cleaned = if matches!(old.status().state, State::Initialized | State::Running) {
        old.cleanup()
    } else {
        Ok(())
    };
    Retired {
        old,
        to: to.to_owned(),
        cleaned,
    }
}

impl Retired {
    /// Stops the retired instance's worker; what the upgrade did.
    fn stop(self) -> Upgrade {
        let Retired { old, to, cleaned } = self;
        let from = old.id().to_owned();
        let (previous, stopped) = old.stop_with_status();
        let cleanup_error = cleaned.and(stopped).err();
        if let Some(err) = &cleanup_error {
            tracing::warn!(plugin = %from, error = %err, "the version upgraded from did not clean up");
        }
        tracing::info!(plugin = %from, to = %to, "upgraded; the old instance is stopped");
        Upgrade {
            from,
            to,
            previous,
            cleanup_error,
        }
    }
}

impl Host {
    /// Upgrades the running instance behind `handle` to the plugin `spec` describes
    /// (another version of it, or a rebuild of the same version): starts and
    /// initialises the new instance first, and only if that succeeds runs the old
    /// one's `cleanup`, puts the new one behind `handle` and stops the old worker.
    /// The next call on `handle` reaches the new version; no call is lost, since a
    /// handle has one call at a time.
    ///
    /// If the new version does not start, `handle` is untouched and the error names
    /// the new version.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use plugbay_host::{Host, PluginSpec};
    ///
    /// let host = Host::new();
    /// let mut plugin = host.start(PluginSpec::from_manifest_file("v1/plugin.json")?)?;
    /// let upgrade = host.upgrade(&mut plugin, PluginSpec::from_manifest_file("v2/plugin.json")?)?;
    /// eprintln!("{} → {}: the old one did {} batches", upgrade.from, upgrade.to, upgrade.previous.batches);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upgrade(
        &self,
        handle: &mut PluginHandle,
        spec: PluginSpec,
    ) -> Result<Upgrade, UpgradeError> {
        let from = handle.id().to_owned();
        let to = spec.manifest.id();
        same_plugin(&from, &to)?;
        let new = self.start(spec).map_err(|source| UpgradeError::Start {
            from,
            to,
            source: Box::new(source),
        })?;
        handle.replace_with(new)
    }
}

impl PluginHandle {
    /// Puts `new`, a started instance of another version of this plugin, behind this
    /// handle: this instance's `cleanup` runs, then its worker stops, and the next
    /// call reaches `new`. See [`Host::upgrade`], which starts `new` too.
    ///
    /// Refused, leaving this handle untouched and dropping `new` (which cleans it up),
    /// when `new` is another plugin.
    pub fn replace_with(&mut self, new: PluginHandle) -> Result<Upgrade, UpgradeError> {
        same_plugin(self.id(), new.id())?;
        let to = new.id().to_owned();
        let old = std::mem::replace(self, new);
        Ok(retire(old, &to))
    }
}

/// Batches, records and busy time that a stage's retired plugins did in a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub batches: u64,
    pub records_out: u64,
    pub busy: Duration,
}

/// A request to switch a pipeline stage to another instance.
pub(crate) struct SwitchRequest {
    stage: usize,
    new: PluginHandle,
    reply: Sender<Result<Retired, UpgradeError>>,
}

/// Where a pipeline's stage upgrades are asked for, and which plugins serve its
/// stages (for the askers).
pub(crate) struct Switchboard {
    requests: Sender<SwitchRequest>,
    incoming: Receiver<SwitchRequest>,
    ids: Arc<Mutex<Vec<String>>>,
}

impl fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switchboard")
            .field("waiting", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

impl Switchboard {
    pub(crate) fn new(stages: &[PluginHandle]) -> Switchboard {
        let (requests, incoming) = unbounded();
        Switchboard {
            requests,
            incoming,
            ids: Arc::new(Mutex::new(ids_of(stages))),
        }
    }

    fn publish(&self, stages: &[PluginHandle]) {
        *self.ids.lock().unwrap_or_else(PoisonError::into_inner) = ids_of(stages);
    }
}

fn ids_of(stages: &[PluginHandle]) -> Vec<String> {
    stages.iter().map(|stage| stage.id().to_owned()).collect()
}

/// Upgrades the stages of a [`Pipeline`], from any thread, while it runs.
///
/// Each call waits until the switch has happened: at the stage's next batch boundary
/// in a run going on, at the start of the next run if none is, or at the end of the
/// run if the stage's input ended first. Dropping the pipeline fails the calls still
/// waiting ([`UpgradeError::PipelineGone`]).
///
/// # Examples
///
/// ```no_run
/// use plugbay_host::{Batch, Host, IoError, Pipeline, PluginSpec};
///
/// let host = Host::new();
/// let stages = vec![
///     host.start(PluginSpec::from_manifest_file("redactor/plugin.json")?)?,
///     host.start(PluginSpec::from_manifest_file("sequencer-1/plugin.json")?)?,
/// ];
/// let mut pipeline = Pipeline::new(stages);
/// let switch = pipeline.switch();
/// let upgrader = std::thread::spawn(move || {
///     let spec = PluginSpec::from_manifest_file("sequencer-2/plugin.json").unwrap();
///     switch.upgrade(&Host::new(), 1, spec)
/// });
/// let input = (0..1000).map(|i| Ok::<_, IoError>(Batch::from_json(format!(r#"[{{"n": {i}}}]"#))));
/// pipeline.run(input, |_batch| Ok(()))?;
/// let upgrade = upgrader.join().unwrap()?;
/// eprintln!("stage 1: {} → {}", upgrade.from, upgrade.to);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StageSwitch {
    requests: Sender<SwitchRequest>,
    ids: Arc<Mutex<Vec<String>>>,
}

impl StageSwitch {
    /// The ids of the plugins serving the stages now, in order.
    pub fn stage_ids(&self) -> Vec<String> {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Upgrades stage `stage` (0-based) to the plugin `spec` describes: starts and
    /// initialises it on `host` first (the stage goes on serving meanwhile), then
    /// switches the stage to it at its next batch boundary (see [`StageSwitch`]).
    /// If it does not start, the stage is untouched and the error names it.
    pub fn upgrade(
        &self,
        host: &Host,
        stage: usize,
        spec: PluginSpec,
    ) -> Result<Upgrade, UpgradeError> {
        let to = spec.manifest.id();
        let from = self.stage(stage, &to)?;
        same_plugin(&from, &to)?;
        let new = host.start(spec).map_err(|source| UpgradeError::Start {
            from,
            to,
            source: Box::new(source),
        })?;
        self.replace(stage, new)
    }

    /// Switches stage `stage` to `new`, an instance of another version of the
    /// plugin serving it, at the stage's next batch boundary; the old instance is
    /// cleaned up before `new` gets its first batch, then stopped. A refused switch
    /// drops `new` (which cleans it up).
    pub fn replace(&self, stage: usize, new: PluginHandle) -> Result<Upgrade, UpgradeError> {
        let to = new.id().to_owned();
        let from = self.stage(stage, &to)?;
        same_plugin(&from, &to)?;
        let (reply, replied) = bounded(1);
        let gone = || UpgradeError::PipelineGone {
            stage,
            to: to.clone(),
        };
        self.requests
            .send(SwitchRequest { stage, new, reply })
            .map_err(|_| gone())?;
        // The old worker stops here, on the caller's thread.
        Ok(replied.recv().map_err(|_| gone())??.stop())
    }

    fn stage(&self, stage: usize, to: &str) -> Result<String, UpgradeError> {
        let ids = self.stage_ids();
        ids.get(stage).cloned().ok_or(UpgradeError::NoStage {
            stage,
            to: to.to_owned(),
            stages: ids.len(),
        })
    }
}

impl Pipeline {
    /// A handle for upgrading this pipeline's stages from other threads, also while
    /// [`run`](Pipeline::run) streams batches (see [`StageSwitch`]).
    pub fn switch(&self) -> StageSwitch {
        StageSwitch {
            requests: self.switchboard.requests.clone(),
            ids: self.switchboard.ids.clone(),
        }
    }

    /// Switches stage `stage` to `new` between runs: the old instance's `cleanup`
    /// runs, its worker stops, and `new` serves the stage from the next run on.
    pub fn replace_stage(
        &mut self,
        stage: usize,
        new: PluginHandle,
    ) -> Result<Upgrade, UpgradeError> {
        let stages = self.stages.len();
        let Some(serving) = self.stages.get_mut(stage) else {
            return Err(UpgradeError::NoStage {
                stage,
                to: new.id().to_owned(),
                stages,
            });
        };
        let upgrade = serving.replace_with(new)?;
        self.switchboard.publish(&self.stages);
        Ok(upgrade)
    }
}

/// How a stage's stream is asked to hand its queues back, and where it hands them.
pub(crate) struct Handover {
    stage: usize,
    asked: Receiver<()>,
    back: Sender<Handed>,
}

/// A stage's input and output queues, handed from one version to the next.
pub(crate) struct Lanes {
    pub input: Receiver<(u64, Batch)>,
    pub output: Sender<(u64, Batch)>,
}

/// A stage whose stream stopped at a batch boundary, with its queues.
pub(crate) struct Handed {
    stage: usize,
    lanes: Lanes,
}

impl Handover {
    /// Whether the driver asks for the queues back now.
    pub(crate) fn asked(&self) -> bool {
        self.asked.try_recv().is_ok()
    }

    /// The channel the driver asks on (to wait on beside the input). Disconnected
    /// once the run is over.
    pub(crate) fn asking(&self) -> &Receiver<()> {
        &self.asked
    }

    /// Hands the stage's queues to the driver.
    pub(crate) fn hand_back(&self, lanes: Lanes) {
        // The driver keeps the receiving end for the whole run: if it is gone, so is
        // the run, and the queues may go too.
        let _ = self.back.send(Handed {
            stage: self.stage,
            lanes,
        });
    }
}

/// What the driver of a run waited for.
pub(crate) enum Waited<T> {
    /// The last stage's output (or the end of it, or the deadline).
    Upstream(Result<T, RecvTimeoutError>),
    /// Something about an upgrade.
    Switch(SwitchEvent),
}

/// An upgrade asked for, or a stage handed over at a batch boundary.
pub(crate) enum SwitchEvent {
    Asked(Box<SwitchRequest>),
    Handed(Handed),
}

/// The upgrades of one run: asked for, waiting for their stage's batch boundary,
/// and what the plugins they retired did in the run.
pub(crate) struct Switching {
    incoming: Receiver<SwitchRequest>,
    ids: Arc<Mutex<Vec<String>>>,
    /// Per stage, the channel its stream is asked on.
    asks: Vec<Option<Sender<()>>>,
    handed: (Sender<Handed>, Receiver<Handed>),
    /// Per stage, the upgrade asked of its stream and not handed over yet.
    pending: Vec<Option<SwitchRequest>>,
    /// Upgrades of stages that have one pending, in order.
    waiting: VecDeque<SwitchRequest>,
    carried: Vec<Counters>,
}

impl Switching {
    /// The upgrades of a run that starts now: those asked for while no run was going
    /// happen now, before any batch.
    pub(crate) fn start(board: &Switchboard, stages: &mut [PluginHandle]) -> Switching {
        let switching = Switching {
            incoming: board.incoming.clone(),
            ids: board.ids.clone(),
            asks: (0..stages.len()).map(|_| None).collect(),
            handed: unbounded(),
            pending: (0..stages.len()).map(|_| None).collect(),
            waiting: VecDeque::new(),
            carried: vec![Counters::default(); stages.len()],
        };
        while let Ok(request) = switching.incoming.try_recv() {
            if let Some(request) = switching.check(request, stages) {
                let (stage, reply) = (request.stage, request.reply);
                let to = request.new.id().to_owned();
                let old = std::mem::replace(&mut stages[stage], request.new);
                switching.publish(stages);
                let _ = reply.send(Ok(clean_up(old, &to)));
            }
        }
        switching
    }

    /// The handover of stage `stage`'s stream in this run.
    pub(crate) fn handover(&mut self, stage: usize) -> Handover {
        let (ask, asked) = bounded(1);
        self.asks[stage] = Some(ask);
        Handover {
            stage,
            asked,
            back: self.handed.0.clone(),
        }
    }

    /// What the plugins that served each stage before an upgrade in this run did.
    pub(crate) fn carried(&self) -> &[Counters] {
        &self.carried
    }

    /// Waits for the next output batch from `upstream` until `deadline` (for ever
    /// without one), or an upgrade to act on.
    pub(crate) fn wait<T>(&self, upstream: &Receiver<T>, deadline: Option<Instant>) -> Waited<T> {
        // The common case costs what a plain receive does.
        if let Ok(item) = upstream.try_recv() {
            return Waited::Upstream(Ok(item));
        }
        let mut select = Select::new();
        let output = select.recv(upstream);
        let asked = select.recv(&self.incoming);
        let handed = select.recv(&self.handed.1);
        let operation = match deadline {
            Some(deadline) => match select.select_deadline(deadline) {
                Ok(operation) => operation,
                Err(_) => return Waited::Upstream(Err(RecvTimeoutError::Timeout)),
            },
            None => select.select(),
        };
        let index = operation.index();
        if index == output {
            Waited::Upstream(
                operation
                    .recv(upstream)
                    .map_err(|_| RecvTimeoutError::Disconnected),
            )
        } else if index == asked {
            match operation.recv(&self.incoming) {
                Ok(request) => Waited::Switch(SwitchEvent::Asked(Box::new(request))),
                // The switchboard holds a sender for as long as the pipeline lives.
                Err(_) => Waited::Upstream(Err(RecvTimeoutError::Timeout)),
            }
        } else {
            debug_assert_eq!(index, handed);
            match operation.recv(&self.handed.1) {
                Ok(handed) => Waited::Switch(SwitchEvent::Handed(handed)),
                // This holds a sender too.
                Err(_) => Waited::Upstream(Err(RecvTimeoutError::Timeout)),
            }
        }
    }

    /// Acts on an upgrade event during a run: asks the stage's stream for a handover,
    /// or, once handed over, retires the old instance and gives the stage's queues to
    /// the new one. An error stops the run (the new instance's worker was gone).
    pub(crate) fn on(
        &mut self,
        event: SwitchEvent,
        stages: &mut [PluginHandle],
        clocks: &mut [Arc<Clock>],
        aborts: &[Receiver<()>],
        before: &mut [(u64, u64, Duration)],
    ) -> Result<(), PipelineError> {
        match event {
            SwitchEvent::Asked(request) => {
                if let Some(request) = self.check(*request, stages) {
                    self.ask(request);
                }
                Ok(())
            }
            SwitchEvent::Handed(Handed { stage, lanes }) => {
                let Some(request) = self.pending[stage].take() else {
                    // Never asked: cannot happen; the queues go, and the run ends.
                    return Ok(());
                };
                let old = &mut stages[stage];
                // Its stream has ended: collect that, and what it did.
                let grace = Instant::now() + Duration::from_secs(1);
                if let Err(err) = old.close_stream(|| Some(grace)) {
                    tracing::warn!(plugin = %old.id(), error = %err, "the stage upgraded from did not leave its stream cleanly");
                }
                let (batches, records_out, busy) = clocks[stage].counters();
                old.count(batches, records_out, busy);
                let from = old.id().to_owned();
                let to = request.new.id().to_owned();
                let timeout = request.new.timeout();
                let old = self.swap(stage, request.new, stages, before);
                // The old version cleans up before the new one takes a batch.
                let retired = clean_up(old, &to);
                let clock = Arc::new(Clock::default());
                clocks[stage] = clock.clone();
                let stream = Stream {
                    input: lanes.input,
                    output: lanes.output,
                    aborted: aborts[stage].clone(),
                    clock,
                    timeout,
                    handover: self.handover(stage),
                };
                let opened = stages[stage].open_stream(stream);
                let _ = request.reply.send(Ok(retired));
                self.next_waiting(stage, stages);
                opened.map_err(|error| PipelineError::Switch {
                    stage,
                    from,
                    to,
                    error: Box::new(error),
                })
            }
        }
    }

    /// After the run: the upgrades still pending (their stage's input ended, or the
    /// run stopped, before a batch boundary came) happen now.
    pub(crate) fn finish(
        &mut self,
        stages: &mut [PluginHandle],
        before: &mut [(u64, u64, Duration)],
    ) {
        self.asks.iter_mut().for_each(|ask| *ask = None);
        let pending: Vec<SwitchRequest> = self
            .pending
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.waiting.drain(..))
            .collect();
        for request in pending {
            let to = request.new.id().to_owned();
            let old = self.swap(request.stage, request.new, stages, before);
            let _ = request.reply.send(Ok(clean_up(old, &to)));
        }
    }

    /// Puts `new` in stage `stage`, keeping what the old one did in this run.
    fn swap(
        &mut self,
        stage: usize,
        new: PluginHandle,
        stages: &mut [PluginHandle],
        before: &mut [(u64, u64, Duration)],
    ) -> PluginHandle {
        let old = std::mem::replace(&mut stages[stage], new);
        let status = old.status();
        let (batches, records_out, busy) = before[stage];
        let carried = &mut self.carried[stage];
        carried.batches += status.batches.saturating_sub(batches);
        carried.records_out += status.records_out.saturating_sub(records_out);
        carried.busy += status.busy.saturating_sub(busy);
        let now = stages[stage].status();
        before[stage] = (now.batches, now.records_out, now.busy);
        self.publish(stages);
        old
    }

    /// Asks the stage's stream to hand over at its next batch boundary.
    fn ask(&mut self, request: SwitchRequest) {
        let stage = request.stage;
        if self.pending[stage].is_some() {
            self.waiting.push_back(request);
            return;
        }
        if let Some(ask) = &self.asks[stage] {
            // A stream that has ended already (its input did) never answers: the
            // upgrade then happens at the end of the run (`finish`).
            let _ = ask.try_send(());
        }
        self.pending[stage] = Some(request);
    }

    fn next_waiting(&mut self, stage: usize, stages: &[PluginHandle]) {
        if let Some(position) = self.waiting.iter().position(|r| r.stage == stage) {
            let request = self
                .waiting
                .remove(position)
                .expect("the position is in range");
            if let Some(request) = self.check(request, stages) {
                self.ask(request);
            }
        }
    }

    /// The request, if the switch it asks for can happen; else it is answered with
    /// why not (and its instance dropped).
    fn check(&self, request: SwitchRequest, stages: &[PluginHandle]) -> Option<SwitchRequest> {
        let to = request.new.id().to_owned();
        let refused = match stages.get(request.stage) {
            None => Some(UpgradeError::NoStage {
                stage: request.stage,
                to,
                stages: stages.len(),
            }),
            Some(serving) => same_plugin(serving.id(), &to).err().or_else(|| {
                request
                    .new
                    .takes_batches()
                    .err()
                    .map(|source| UpgradeError::NotServing {
                        from: serving.id().to_owned(),
                        to,
                        source: Box::new(source),
                    })
            }),
        };
        match refused {
            None => Some(request),
            Some(error) => {
                let _ = request.reply.send(Err(error));
                None
            }
        }
    }

    fn publish(&self, stages: &[PluginHandle]) {
        *self.ids.lock().unwrap_or_else(PoisonError::into_inner) = ids_of(stages);
    }
}
