//! Worker threads, channels and the lifecycle of a plugin instance.
//!
//! Each instance lives on its own worker thread. The thread confines itself, opens
//! the library, builds the instance and calls `init`; then it serves requests from a
//! bounded crossbeam channel and answers each on a reply channel. Every call has a
//! deadline: on timeout the caller gets an error at once, the worker is abandoned
//! and the instance is marked failed. A panic in a hook comes back as an error and
//! marks the instance failed; the host and the other plugins go on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use plugbay_api::abi::{ErrorKind, HostServices_TO, PluginBox, PluginContext, PluginError};
use plugbay_api::manifest::{Hook, Manifest, Permission};
use serde::Serialize;

use crate::batch::{count_array, Batch};
use crate::loader::{self, LoadError};
use crate::pipeline::{self, Stopped, Stream, StreamEnd};
use crate::sandbox::{self, Confinement, Policy, Rules, SandboxError, SandboxMode};
use crate::services::{DataStore, MemoryStore, Services};

/// The deadline of a call when neither the manifest nor the spec sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A host: the settings every plugin it starts shares.
///
/// # Examples
///
/// ```no_run
/// use plugbay_host::{Batch, Host, PluginSpec};
///
/// let host = Host::new();
/// let spec = PluginSpec::from_manifest_file("example-plugins/data-processor/plugin.json")?
///     .with_library("target/release/libdata_processor.so");
/// let mut plugin = host.start(spec)?;
/// let output = plugin.process(&Batch::from_json(r#"[{"id": 1}]"#))?;
/// println!("{}", String::from_utf8_lossy(output.as_bytes()));
/// plugin.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Host {
    timeout: Duration,
    sandbox: SandboxMode,
    policy: Policy,
    data_dir: PathBuf,
    store: Arc<dyn DataStore>,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("timeout", &self.timeout)
            .field("sandbox", &self.sandbox)
            .field("policy", &self.policy)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host that enforces full confinement, grants what manifests request, gives
    /// each call [`DEFAULT_TIMEOUT`], keeps plugin data under the system's temporary
    /// directory and stores host-service data in memory.
    pub fn new() -> Host {
        Host {
            timeout: DEFAULT_TIMEOUT,
            sandbox: SandboxMode::Enforce,
            policy: Policy::AllowRequested,
            data_dir: std::env::temp_dir().join("plugbay-data"),
            store: Arc::new(MemoryStore::default()),
        }
    }

    /// The deadline of each call for plugins whose manifest sets no `timeout_ms`.
    pub fn with_timeout(mut self, timeout: Duration) -> Host {
        self.timeout = timeout;
        self
    }

    /// Whether plugins may start without full confinement.
    pub fn with_sandbox(mut self, mode: SandboxMode) -> Host {
        self.sandbox = mode;
        self
    }

    /// What plugins may be granted (a [`PluginSpec`] may narrow it further).
    pub fn with_policy(mut self, policy: Policy) -> Host {
        self.policy = policy;
        self
    }

    /// Where plugins get their `${data_dir}` (one folder per plugin name).
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Host {
        self.data_dir = dir.into();
        self
    }

    /// The data store behind `read:data` / `write:data`.
    pub fn with_store(mut self, store: Arc<dyn DataStore>) -> Host {
        self.store = store;
        self
    }

    /// The data store plugins reach through host services.
    pub fn store(&self) -> &Arc<dyn DataStore> {
        &self.store
    }

    /// Reads a library's embedded manifest and versions, on a confined thread that is
    /// granted nothing but reading the library.
    pub fn inspect(&self, library: impl AsRef<Path>) -> Result<Inspection, StartError> {
        let library = absolute(library.as_ref());
        let rules = Rules::new(&library, &[], Path::new("/"), Path::new("/"));
        let mode = self.sandbox;
        let id = library.display().to_string();
        let thread_library = library.clone();
        std::thread::Builder::new()
            .name("plugbay-inspect".to_owned())
            .spawn(move || -> Result<Inspection, StartError> {
                let confinement = sandbox::confine_current_thread(&id, &rules, mode)?;
                let loaded = loader::open(&thread_library)?;
                Ok(Inspection {
                    library: thread_library,
                    manifest: loaded.manifest,
                    api_version: loaded.api_version,
                    confinement,
                })
            })
            .map_err(|source| StartError::Spawn {
                id: library.display().to_string(),
                source,
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(StartError::Crashed {
                    id: library.display().to_string(),
                })
            })
    }

    /// Starts a plugin instance: a worker thread confines itself to the granted
    /// permissions, opens and checks the library, builds the instance and calls
    /// `init`. Returns when the instance is ready for batches.
    pub fn start(&self, spec: PluginSpec) -> Result<PluginHandle, StartError> {
        let prepared = self.prepare(spec)?;
        let id = prepared.id.clone();
        let timeout = prepared.timeout;
        let thread_name = format!("plugbay-{}", prepared.manifest.name);

        let (request_tx, request_rx) = bounded::<Request>(1);
        let (reply_tx, reply_rx) = bounded::<Reply>(1);
        let (ready_tx, ready_rx) = bounded::<Result<Ready, StartError>>(1);
        let setup = Setup {
            id: id.clone(),
            library: prepared.library.clone(),
            manifest: prepared.manifest,
            rules: prepared.rules,
            mode: self.sandbox,
            context: prepared.context,
        };
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || worker(setup, ready_tx, request_rx, reply_tx))
            .map_err(|source| StartError::Spawn {
                id: id.clone(),
                source,
            })?;

        let ready = match ready_rx.recv_timeout(timeout) {
            Ok(Ok(ready)) => ready,
            Ok(Err(err)) => {
                let _ = thread.join();
                return Err(err);
            }
            Err(RecvTimeoutError::Timeout) => return Err(StartError::Timeout { id, timeout }),
            Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                return Err(StartError::Crashed { id });
            }
        };
        tracing::debug!(plugin = %id, confinement = %ready.confinement, "plugin started");
        Ok(PluginHandle {
            status: PluginStatus {
                id,
                state: State::Initialized,
                confinement: ready.confinement,
                granted: prepared.granted,
                api_version: ready.api_version.to_string(),
                library: prepared.library,
                timeout,
                batches: 0,
                records_out: 0,
                busy: Duration::ZERO,
            },
            may_process: prepared.may_process,
            requests: Some(request_tx),
            replies: reply_rx,
            thread: Some(thread),
            wait: ReplyWait::default(),
        })
    }

    /// Works out, on the host side, everything an instance of `spec` needs to start:
    /// its grants, deadline, sandbox rules and `init` context.
    pub(crate) fn prepare(&self, spec: PluginSpec) -> Result<Prepared, StartError> {
        let manifest = spec.manifest;
        let id = manifest.id();
        let library = absolute(&spec.library);
        let policy = spec.policy.as_ref().unwrap_or(&self.policy);
        let granted = policy.grant(&manifest.permissions);
        let timeout = spec
            .timeout
            .or(manifest.timeout_ms.map(Duration::from_millis))
            .unwrap_or(self.timeout);
        let plugin_dir = absolute(&spec.plugin_dir);
        let data_dir = self.data_dir.join(&manifest.name);
        if granted.iter().any(
            |p| matches!(p, Permission::FsWrite(path) if path.as_str().contains("${data_dir}")),
        ) {
            std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        }
        let rules = Rules::new(&library, &granted, &plugin_dir, &data_dir);
        let config = merged_config(manifest.config.as_ref(), spec.config);
        let services = Services::new(id.clone(), &granted, self.store.clone());
        let may_process = if !manifest.has_hook(Hook::Process) {
            Err("its manifest does not declare the `process` hook")
        } else if !granted.contains(&Permission::ProcessData) {
            Err("it was not granted `process:data`")
        } else {
            Ok(())
        };
        let context = PluginContext {
            plugin_id: RString::from(id.as_str()),
            config: RString::from(config.to_string()),
            plugin_dir: RString::from(plugin_dir.to_string_lossy().as_ref()),
            data_dir: RString::from(data_dir.to_string_lossy().as_ref()),
            services: HostServices_TO::from_ptr(
                abi_stable::std_types::RArc::new(services),
                abi_stable::sabi_trait::TD_Opaque,
            ),
        };
        Ok(Prepared {
            id,
            library,
            manifest,
            granted,
            timeout,
            rules,
            context,
            may_process,
        })
    }

    /// Whether plugins may start without full confinement.
    pub(crate) fn sandbox_mode(&self) -> SandboxMode {
        self.sandbox
    }
}

/// What [`Host::prepare`] worked out for one instance.
pub(crate) struct Prepared {
    pub id: String,
    pub library: PathBuf,
    pub manifest: Manifest,
    pub granted: Vec<Permission>,
    pub timeout: Duration,
    pub rules: Rules,
    pub context: PluginContext,
    /// Whether the instance may receive batches, or why not.
    pub may_process: Result<(), &'static str>,
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The manifest's default config with the given one's fields on top.
fn merged_config(
    defaults: Option<&serde_json::Value>,
    given: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut config = defaults.cloned().unwrap_or_else(|| serde_json::json!({}));
    match (config.as_object_mut(), given) {
        (Some(base), Some(serde_json::Value::Object(fields))) => base.extend(fields),
        (_, Some(other)) => config = other,
        (_, None) => {}
    }
    config
}

/// What [`Host::inspect`] found in a library.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The library's path.
    pub library: PathBuf,
    /// The manifest embedded at compile time.
    pub manifest: Manifest,
    /// The plugbay-api version the plugin was built against.
    pub api_version: semver::Version,
    /// The confinement this kernel gave the inspecting thread.
    pub confinement: Confinement,
}

/// What to start: a library, its manifest, and how to run it.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The library file.
    pub library: PathBuf,
    /// The manifest the host was given (the library's embedded one must match it).
    pub manifest: Manifest,
    /// `${plugin_dir}`: where the plugin's own files are.
    pub plugin_dir: PathBuf,
    /// Config for `init`, laid over the manifest's `config`.
    pub config: Option<serde_json::Value>,
    /// What this plugin may be granted (the host's policy if unset).
    pub policy: Option<Policy>,
    /// The deadline of each call (the manifest's `timeout_ms`, then the host's, if unset).
    pub timeout: Option<Duration>,
}

/// Why a manifest file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestFileError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is invalid.
    #[error("invalid manifest {path}: {source}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong, with the field named.
        source: plugbay_api::manifest::ManifestError,
    },
}

impl PluginSpec {
    /// A spec for `library` with `manifest`; the plugin directory is the library's.
    pub fn new(library: impl Into<PathBuf>, manifest: Manifest) -> PluginSpec {
        let library = library.into();
        let plugin_dir = library.parent().map(Path::to_owned).unwrap_or_default();
        PluginSpec {
            library,
            manifest,
            plugin_dir,
            config: None,
            policy: None,
            timeout: None,
        }
    }

    /// A spec from a `plugin.json`: the plugin directory is the manifest's, and the
    /// library is `main` in that directory (change it with [`with_library`](Self::with_library)).
    pub fn from_manifest_file(path: impl AsRef<Path>) -> Result<PluginSpec, ManifestFileError> {
        let path = path.as_ref();
        let manifest = read_manifest(path)?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let library = dir.join(manifest.library_file_name());
        Ok(PluginSpec {
            library,
            manifest,
            plugin_dir: dir,
            config: None,
            policy: None,
            timeout: None,
        })
    }

    /// Uses `library` as the plugin's library file.
    pub fn with_library(mut self, library: impl Into<PathBuf>) -> PluginSpec {
        self.library = library.into();
        self
    }

    /// Sets `${plugin_dir}`.
    pub fn with_plugin_dir(mut self, dir: impl Into<PathBuf>) -> PluginSpec {
        self.plugin_dir = dir.into();
        self
    }

    /// Config for `init`, laid over the manifest's defaults.
    pub fn with_config(mut self, config: serde_json::Value) -> PluginSpec {
        self.config = Some(config);
        self
    }

    /// Allows only what `policy` allows.
    pub fn with_policy(mut self, policy: Policy) -> PluginSpec {
        self.policy = Some(policy);
        self
    }

    /// Grants exactly `permissions` (those the manifest requests among them).
    pub fn with_grants(self, permissions: Vec<Permission>) -> PluginSpec {
        self.with_policy(Policy::Allow(permissions))
    }

    /// The deadline of each call.
    pub fn with_timeout(mut self, timeout: Duration) -> PluginSpec {
        self.timeout = Some(timeout);
        self
    }
}

/// Reads and validates a `plugin.json`.
pub fn read_manifest(path: &Path) -> Result<Manifest, ManifestFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Manifest::parse(&text).map_err(|source| ManifestFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Why a plugin did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The library failed a check.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The worker thread could not be confined.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The plugin's constructor failed or panicked.
    #[error("plugin {id} could not be constructed: {error}")]
    Constructor {
        /// The plugin.
        id: String,
        /// What the plugin said.
        error: PluginError,
    },
    /// `init` returned an error.
    #[error("plugin {id} failed to initialize: {error}")]
    Init {
        /// The plugin.
        id: String,
        /// What the plugin said.
        error: PluginError,
    },
    /// `init` panicked.
    #[error("plugin {id} panicked in init: {message}")]
    InitPanicked {
        /// The plugin.
        id: String,
        /// The panic message.
        message: String,
    },
    /// Loading and `init` did not finish within the deadline.
    #[error(
        "plugin {id} did not finish loading and init within {timeout:?}; its worker was abandoned"
    )]
    Timeout {
        /// The plugin.
        id: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The worker thread ended without answering.
    #[error("plugin {id}'s worker thread ended while starting")]
    Crashed {
        /// The plugin.
        id: String,
    },
    /// The worker thread could not be spawned.
    #[error("cannot spawn a worker thread for plugin {id}: {source}")]
    Spawn {
        /// The plugin.
        id: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The calling thread was already confined for local plugins.
    #[error("cannot start local plugin(s) {ids}: the calling thread was already confined for local plugin(s) {running}; start all the local plugins of a thread in one `Host::start_local_all` call, or use another thread")]
    AlreadyConfined {
        /// The plugins that were to start.
        ids: String,
        /// The plugins the thread was confined for.
        running: String,
    },
    /// The plugin's data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why a call failed. The caller's batch is never consumed: it can be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin returned an error; the instance goes on.
    #[error("plugin {id} failed in {hook}: {error}")]
    Plugin {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// What the plugin said.
        error: PluginError,
    },
    /// The hook panicked; the instance is marked failed.
    #[error("plugin {id} panicked in {hook}: {message}; the instance is marked failed")]
    Panicked {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// The panic message.
        message: String,
    },
    /// The hook did not return within the deadline; the instance is marked failed.
    #[error("plugin {id} did not return from {hook} within {timeout:?}; the instance is marked failed and its worker abandoned")]
    Timeout {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// The deadline.
        timeout: Duration,
    },
    /// The plugin returned bytes that are not exactly one JSON array (every batch a
    /// plugin returns is validated; nothing it says about its own output is trusted).
    #[error(
        "plugin {id} returned invalid output from process: {reason}; the batch was not passed on"
    )]
    InvalidOutput {
        /// The plugin.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The instance failed earlier and takes no more calls.
    #[error("plugin {id} failed earlier ({reason}) and takes no more calls; start a new instance")]
    Failed {
        /// The plugin.
        id: String,
        /// Why it failed.
        reason: String,
    },
    /// The plugin may not receive batches.
    #[error("plugin {id} cannot receive batches: {reason}")]
    NotPermitted {
        /// The plugin.
        id: String,
        /// Which permission or hook is missing.
        reason: String,
    },
    /// The instance has been cleaned up.
    #[error("plugin {id} has been cleaned up and takes no more calls")]
    Stopped {
        /// The plugin.
        id: String,
    },
}

/// Why an instance failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum Failure {
    /// A hook panicked.
    Panic(String),
    /// A hook missed its deadline.
    Timeout(String),
    /// The worker thread ended unexpectedly.
    WorkerLost(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic(message) => write!(f, "panic: {message}"),
            Failure::Timeout(message) => write!(f, "timeout: {message}"),
            Failure::WorkerLost(message) => write!(f, "worker lost: {message}"),
        }
    }
}

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
    /// The worker stopped; no code of the plugin runs again.
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
    /// The deadline of each call.
    pub timeout: Duration,
    /// Batches processed.
    pub batches: u64,
    /// Records returned (counted when the host checks output).
    pub records_out: u64,
    /// Time spent in `process`: as the caller saw it for a call, as the worker
    /// measured it in a pipeline.
    pub busy: Duration,
}

impl PluginStatus {
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
        }
    }

    /// The caller's error for a hook's failure; a panic marks the instance failed.
    pub(crate) fn hook_error(&mut self, hook: Hook, error: PluginError) -> CallError {
        let id = self.id.clone();
        if error.kind == ErrorKind::PANICKED {
            let message = error.message.to_string();
            self.fail(Failure::Panic(message.clone()));
            CallError::Panicked { id, hook, message }
        } else {
            CallError::Plugin { id, hook, error }
        }
    }

    /// Marks the instance failed: it takes no more calls.
    pub(crate) fn fail(&mut self, failure: Failure) {
        tracing::warn!(plugin = %self.id, %failure, "plugin instance failed");
        self.state = State::Failed(failure);
    }
}

/// A running plugin instance: a handle to its worker thread.
///
/// Calls take `&mut self`: an instance processes one batch at a time. For several at
/// once, start several instances or chain them in a [`Pipeline`](crate::Pipeline).
///
/// # Thread-safety
///
/// The handle is `Send`: it can move to another thread. Dropping it cleans the
/// instance up (with its deadline) and stops the worker.
pub struct PluginHandle {
    status: PluginStatus,
    may_process: Result<(), &'static str>,
    requests: Option<Sender<Request>>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    wait: ReplyWait,
}

impl fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHandle")
            .field("status", &self.status)
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
        let started = Instant::now();
        let reply = self.call(Request::Process(batch.clone()), Hook::Process)?;
        self.status.busy += started.elapsed();
        let Reply::Processed(result) = reply else {
            return Err(self.lose_worker("answered process with another reply"));
        };
        self.status.processed(result)
    }

    /// Runs `cleanup` and stops the worker. Returns the final status.
    pub fn shutdown(mut self) -> Result<PluginStatus, CallError> {
        let result = self.cleanup();
        self.stop();
        result.map(|()| self.status.clone())
    }

    /// Runs the plugin's `cleanup` hook; the instance takes no more calls after it.
    pub fn cleanup(&mut self) -> Result<(), CallError> {
        let reply = self.call(Request::Cleanup, Hook::Cleanup)?;
        let Reply::CleanedUp(result) = reply else {
            return Err(self.lose_worker("answered cleanup with another reply"));
        };
        self.status.state = State::CleanedUp;
        match result {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(error) => Err(self.status.hook_error(Hook::Cleanup, error)),
        }
    }

    fn call(&mut self, request: Request, hook: Hook) -> Result<Reply, CallError> {
        let sent = self.send(request)?;
        let deadline = sent + self.status.timeout;
        loop {
            return match self.wait.reply(&self.replies, sent, deadline) {
                // The end of a pipeline run that stopped without collecting it (its
                // sink panicked): the worker went on to this request after it.
                Ok(Reply::Streamed(_)) => continue,
                Ok(reply) => Ok(reply),
                Err(RecvTimeoutError::Timeout) => Err(self.time_out(hook)),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(self.lose_worker("the worker thread ended"))
                }
            };
        }
    }

    /// Hands the worker a pipeline stage's part of a run: it takes batches from the
    /// stream's input and sends results to its output until the input ends, the
    /// output closes, the run is aborted or the plugin fails. Returns at once.
    pub(crate) fn open_stream(&mut self, stream: Stream) -> Result<(), CallError> {
        self.takes_batches()?;
        self.send(Request::Stream(stream)).map(drop)
    }

    /// Waits for the worker to leave its stream, until `due()` (asked again after each
    /// wait, as the worker may be in a call). Returns where the stream stopped on a
    /// failure of the plugin or a late return: the batch number, the batch, and the
    /// caller's error.
    pub(crate) fn close_stream(
        &mut self,
        due: impl Fn() -> Instant,
    ) -> Result<Option<(u64, Batch, CallError)>, CallError> {
        let end = loop {
            match self.replies.recv_deadline(due()) {
                Ok(Reply::Streamed(end)) => break end,
                Ok(_) => return Err(self.lose_worker("answered a stream with another reply")),
                Err(RecvTimeoutError::Timeout) if Instant::now() >= due() => {
                    return Err(self.time_out(Hook::Process))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.lose_worker("the worker thread ended"))
                }
            }
        };
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

    /// Sends a request to a live instance; returns when it was sent.
    fn send(&mut self, request: Request) -> Result<Instant, CallError> {
        self.live()?;
        let Some(requests) = &self.requests else {
            return Err(CallError::Stopped {
                id: self.status.id.clone(),
            });
        };
        let sent = Instant::now();
        if requests.send(request).is_err() {
            return Err(self.lose_worker("the worker thread is gone"));
        }
        Ok(sent)
    }

    /// Marks the instance failed because `hook` missed its deadline, and abandons the
    /// worker: it may never return from the plugin.
    pub(crate) fn time_out(&mut self, hook: Hook) -> CallError {
        let timeout = self.status.timeout;
        self.status.fail(Failure::Timeout(format!(
            "{hook} did not return within {timeout:?}"
        )));
        self.requests = None;
        self.thread = None;
        CallError::Timeout {
            id: self.status.id.clone(),
            hook,
            timeout,
        }
    }

    /// The deadline of each call.
    pub(crate) fn timeout(&self) -> Duration {
        self.status.timeout
    }

    fn lose_worker(&mut self, why: &str) -> CallError {
        self.status.fail(Failure::WorkerLost(why.to_owned()));
        CallError::Failed {
            id: self.status.id.clone(),
            reason: why.to_owned(),
        }
    }

    /// Closes the request channel and waits for the worker, unless it was abandoned.
    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !matches!(self.status.state, State::Failed(_)) {
            self.status.state = State::Unloaded;
        }
    }
}

impl Drop for PluginHandle {
    fn drop(&mut self) {
        if matches!(self.status.state, State::Initialized | State::Running) {
            if let Err(err) = self.cleanup() {
                tracing::warn!(plugin = %self.status.id, error = %err, "cleanup failed while dropping the plugin");
            }
        }
        if matches!(self.status.state, State::Failed(_)) {
            // A failed worker may be stuck in plugin code: never wait for it.
            self.requests = None;
            self.thread = None;
        }
        self.stop();
    }
}

/// How long before a reply is due the caller stops sleeping and starts to spin.
///
/// Waking a parked thread costs tens of microseconds where cores sleep when idle
/// (measured on the 2-core virtual machine of BENCHMARKS.md: 50–100 µs, as long as a
/// batch of 50 records takes), and a sleeping timer wakes as late. Spinning this long
/// before the reply is due absorbs both.
const WAKE_AHEAD: Duration = Duration::from_micros(200);

/// How a caller waits for its worker's reply: it learns how long calls take, sleeps
/// (parked, no CPU) until shortly before the reply is due, spins (yielding the core to
/// any thread that wants it) until it comes, and parks again if it is late.
///
/// A call shorter than [`WAKE_AHEAD`] is spun for whole, so a small batch costs a
/// hand-off of about a microsecond instead of a wake-up; a long call costs at most
/// about `2 × WAKE_AHEAD` of spinning.
#[derive(Debug, Default)]
struct ReplyWait {
    /// A moving average of recent calls' durations.
    expected: Duration,
}

impl ReplyWait {
    fn reply(
        &mut self,
        replies: &Receiver<Reply>,
        sent: Instant,
        deadline: Instant,
    ) -> Result<Reply, RecvTimeoutError> {
        let result = self.wait(replies, sent, deadline);
        if result.is_ok() {
            self.expected = (self.expected * 3 + sent.elapsed()) / 4;
        }
        result
    }

    fn wait(
        &self,
        replies: &Receiver<Reply>,
        sent: Instant,
        deadline: Instant,
    ) -> Result<Reply, RecvTimeoutError> {
        if let Some(sleep) = self.expected.checked_sub(WAKE_AHEAD) {
            match replies.recv_deadline(deadline.min(sent + sleep)) {
                Err(RecvTimeoutError::Timeout) => {}
                other => return other,
            }
        }
        let spin_until = deadline.min(Instant::now() + self.expected.min(WAKE_AHEAD) + WAKE_AHEAD);
        loop {
            match replies.try_recv() {
                Ok(reply) => return Ok(reply),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= spin_until {
                return replies.recv_deadline(deadline);
            }
            std::thread::yield_now();
        }
    }
}

enum Request {
    Process(Batch),
    Stream(Stream),
    Cleanup,
}

/// Why `process` gave no batch.
pub(crate) enum Outcome {
    Plugin(PluginError),
    InvalidOutput(String),
}

enum Reply {
    Processed(Result<Batch, Outcome>),
    Streamed(StreamEnd),
    CleanedUp(RResult<(), PluginError>),
}

struct Ready {
    confinement: Confinement,
    api_version: semver::Version,
}

struct Setup {
    id: String,
    library: PathBuf,
    manifest: Manifest,
    rules: Rules,
    mode: SandboxMode,
    context: PluginContext,
}

/// The worker thread: confine, load, construct, init, then serve requests.
fn worker(
    setup: Setup,
    ready: Sender<Result<Ready, StartError>>,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
) {
    let started = sandbox::confine_current_thread(&setup.id, &setup.rules, setup.mode)
        .map_err(StartError::from)
        .and_then(|confinement| {
            let (instance, api_version) =
                load_and_init(&setup.id, &setup.library, &setup.manifest, setup.context)?;
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
                return;
            }
            instance
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    drop(ready);
    while let Some(request) = next_request(&requests) {
        let reply = match request {
            Request::Process(batch) => Reply::Processed(process_here(&mut instance, &batch)),
            Request::Stream(stream) => {
                Reply::Streamed(pipeline::stream_here(&mut instance, stream))
            }
            Request::Cleanup => Reply::CleanedUp(instance.cleanup()),
        };
        let panicked = matches!(
            &reply,
            Reply::Processed(Err(Outcome::Plugin(error)))
                | Reply::Streamed(Some((_, _, Stopped::Failed(Outcome::Plugin(error)))))
                | Reply::CleanedUp(RResult::RErr(error))
                if error.kind == ErrorKind::PANICKED
        );
        if replies.send(reply).is_err() || panicked {
            // After a panic the instance's state is unknown: never call or drop it again.
            std::mem::forget(instance);
            return;
        }
    }
}

/// How long a worker keeps looking for the next request after a reply before it
/// parks: callers that stream batches send the next one within microseconds, and
/// catching it awake saves them a wake-up (tens of microseconds on a virtual machine).
const NEXT_REQUEST_SPIN: Duration = Duration::from_micros(50);

/// The next request, or `None` once the handle is gone. Spins (yielding the core)
/// for [`NEXT_REQUEST_SPIN`], then parks: an idle worker costs no CPU.
fn next_request(requests: &Receiver<Request>) -> Option<Request> {
    let spin_until = Instant::now() + NEXT_REQUEST_SPIN;
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < spin_until => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return requests.recv().ok(),
        }
    }
}

/// Opens and checks `library`, builds an instance and calls its `init` with
/// `context`. Returns the instance and the plugbay-api version it was built against.
///
/// Opening a library runs its code: call this only on a thread that is already
/// confined.
pub(crate) fn load_and_init(
    id: &str,
    library: &Path,
    manifest: &Manifest,
    context: PluginContext,
) -> Result<(PluginBox, semver::Version), StartError> {
    let loaded = loader::open(library)?;
    loader::check_manifest(library, &loaded.manifest, manifest)?;
    let mut instance = match (loaded.module.new())() {
        RResult::ROk(instance) => instance,
        RResult::RErr(error) => {
            return Err(StartError::Constructor {
                id: id.to_owned(),
                error,
            })
        }
    };
    match instance.init(context) {
        RResult::ROk(()) => Ok((instance, loaded.api_version)),
        RResult::RErr(error) if error.kind == ErrorKind::PANICKED => {
            // After a panic the instance's state is unknown: never drop it.
            std::mem::forget(instance);
            Err(StartError::InitPanicked {
                id: id.to_owned(),
                message: error.message.into(),
            })
        }
        RResult::RErr(error) => Err(StartError::Init {
            id: id.to_owned(),
            error,
        }),
    }
}

/// Calls the instance's `process` hook on the current thread, and validates and
/// counts its output.
pub(crate) fn process_here(instance: &mut PluginBox, batch: &Batch) -> Result<Batch, Outcome> {
    match instance.process(RSlice::from_slice(batch.as_bytes())) {
        RResult::ROk(bytes) => check_output(bytes),
        RResult::RErr(error) => Err(Outcome::Plugin(error)),
    }
}

/// Every batch a plugin returns must be exactly one JSON array (see
/// `PluginInstance::process` in plugbay-api); the host counts its records itself.
fn check_output(bytes: RVec<u8>) -> Result<Batch, Outcome> {
    match count_array(bytes.as_slice()) {
        Ok(records) => Ok(Batch::from_plugin(bytes, records)),
        Err(reason) => Err(Outcome::InvalidOutput(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(bytes: &[u8]) -> Result<Batch, Outcome> {
        check_output(RVec::from(bytes.to_vec()))
    }

    fn invalid(bytes: &[u8]) -> String {
        match output(bytes) {
            Err(Outcome::InvalidOutput(reason)) => reason,
            Ok(batch) => panic!("{bytes:?} passed as {batch:?}"),
            Err(Outcome::Plugin(error)) => panic!("{error}"),
        }
    }

    #[test]
    fn output_is_validated_and_counted_by_the_host() {
        let batch = output(br#"[{"a":1},{"a":2}]"#).ok().unwrap();
        assert_eq!(batch.as_bytes(), br#"[{"a":1},{"a":2}]"#);
        assert_eq!(batch.len(), Some(2));
        assert_eq!(output(b" [] ").ok().unwrap().len(), Some(0));
    }

    #[test]
    fn output_that_is_not_one_array_is_refused() {
        assert!(invalid(b"[1,").contains("EOF"));
        assert!(invalid(b"{}").contains("expected a JSON array"));
        assert!(invalid(b"[1] [2]").contains("trailing characters"));
        assert!(invalid(b"").contains("no bytes"));
        assert!(invalid(b"[\"\xff\"]").contains("invalid unicode"));
        // What the mark of ABI 0.1 looked like: trailing whitespace is allowed by
        // JSON, so the bytes pass, but they are counted, not trusted.
        let forged = [&b"[1,2]\n"[..], &[b'\t'; 112]].concat();
        assert_eq!(output(&forged).ok().unwrap().len(), Some(2));
    }
}
