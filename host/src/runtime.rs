//! Workers, channels and the lifecycle of a plugin instance.
//!
//! An instance runs on a worker thread of the host ([`Isolation::Thread`]) or in a
//! worker process of its own ([`Isolation::Process`], driven through
//! `crate::process`); one handle ([`PluginHandle`]) drives both, and
//! `docs/architecture.md` lists the states a worker of either kind goes through. What
//! follows is about worker threads.
//!
//! Each such instance lives on its own worker thread. The thread confines itself, opens
//! the library, builds the instance and calls `init`; then it serves requests from a
//! bounded crossbeam channel and answers each on a reply channel. Every call has a
//! deadline: on timeout the caller gets an error at once, the worker is abandoned
//! and the instance is marked failed. A panic in a hook comes back as an error and
//! marks the instance failed; the host and the other plugins go on.
//!
//! Stopping has a deadline too: the worker drops the instance (the plugin's `Drop`
//! runs there), and the handle waits for that at most one call's deadline before it
//! abandons the worker. A deadline too far to represent (`Duration::MAX`) means no
//! deadline.
//!
//! An abandoned worker may never return from the plugin. The host revokes its host
//! services, never waits for it again, and counts it
//! ([`Host::abandoned_workers`]) until its thread ends. What the stuck plugin may
//! still read stays allocated (the batch it was given, its own memory): freeing it
//! under a running plugin would be a use-after-free. Only process isolation takes
//! such a worker away for good: a worker process past its deadline is killed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use plugbay_api::abi::{ErrorKind, PluginBox, PluginContext, PluginError};
use plugbay_api::manifest::{Hook, Manifest, Permission};
use serde::Serialize;

use crate::batch::{count_array, Batch};
use crate::denial::{Note, Withheld};
use crate::image::Image;
use crate::isolation::Isolation;
use crate::loader::{self, LoadError};
use crate::pipeline::{self, Stopped, Stream, StreamEnd};
#[cfg(target_os = "linux")]
use crate::process::{self, Fault, Limits, ProcessWorker, StartFault};
use crate::sandbox::{self, Confinement, Policy, Rules, SandboxError, SandboxMode};
use crate::services::{DataStore, MemoryStore, Revoker, Services};

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
    isolation: Isolation,
    worker_program: Option<PathBuf>,
    #[cfg(target_os = "linux")]
    limits: Limits,
    /// Shared by the host's clones: the workers they abandoned that still run.
    census: Arc<Census>,
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
            isolation: Isolation::Thread,
            worker_program: None,
            #[cfg(target_os = "linux")]
            limits: Limits::default(),
            census: Arc::default(),
        }
    }

    /// Where plugins run when their spec does not say: a worker thread (the default)
    /// or a worker process of their own (see [`Isolation`]).
    pub fn with_isolation(mut self, isolation: Isolation) -> Host {
        self.isolation = isolation;
        self
    }

    /// The program worker processes run (with the argument
    /// [`WORKER_ARG`](crate::WORKER_ARG)); the host's own executable if unset, whose
    /// `main` must then call [`serve_worker_if_asked`](crate::serve_worker_if_asked)
    /// first.
    pub fn with_worker_program(mut self, program: impl Into<PathBuf>) -> Host {
        self.worker_program = Some(program.into());
        self
    }

    /// The resource limits of worker processes.
    #[cfg(target_os = "linux")]
    pub fn with_limits(mut self, limits: Limits) -> Host {
        self.limits = limits;
        self
    }

    /// The deadline of each call for plugins whose manifest sets no `timeout_ms`.
    /// A deadline too far to represent ([`Duration::MAX`]) means none: calls wait
    /// for as long as the plugin takes.
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

    /// How many worker threads this host (or a clone of it) abandoned that still run:
    /// each missed a deadline (in a hook, while starting or while dropping its
    /// instance) and may never return. Each keeps its thread, the plugin's memory and
    /// the batch it was given until it returns or the process exits; a worker that
    /// returns late leaves the count.
    pub fn abandoned_workers(&self) -> usize {
        self.census.total()
    }

    /// [`abandoned_workers`](Host::abandoned_workers) of plugin `id` (`name@version`).
    pub fn abandoned_workers_of(&self, id: &str) -> usize {
        self.census.of(id)
    }

    /// Reads a library's embedded manifest and versions, on a confined thread that is
    /// granted nothing but reading the library.
    ///
    /// The library is read and hashed once; what is inspected is exactly those bytes
    /// (see [`Inspection::sha256`]).
    pub fn inspect(&self, library: impl AsRef<Path>) -> Result<Inspection, StartError> {
        self.inspect_image(Image::open(library.as_ref(), None)?)
    }

    /// Inspects the library at `library`, whose SHA-256 must be `sha256`, naming it
    /// `shown_as` in errors and in the inspection (a stored copy of that file).
    #[cfg(feature = "registry")]
    pub(crate) fn inspect_copy(
        &self,
        library: &Path,
        sha256: &str,
        shown_as: &Path,
    ) -> Result<Inspection, StartError> {
        let mut image = Image::open(library, Some(sha256))?;
        image.path = shown_as.to_owned();
        self.inspect_image(image)
    }

    fn inspect_image(&self, image: Image) -> Result<Inspection, StartError> {
        #[cfg(target_os = "linux")]
        if self.isolation == Isolation::Process {
            return self.inspect_in_worker(image);
        }
        let library = image.path.clone();
        let id = library.display().to_string();
        let rules = Rules::new(&id, &library, &[], Path::new("/"), Path::new("/"))?;
        let mode = self.sandbox;
        std::thread::Builder::new()
            .name("plugbay-inspect".to_owned())
            .spawn(move || -> Result<Inspection, StartError> {
                let confinement = sandbox::confine_current_thread(&id, &rules, mode)?;
                let loaded = loader::open(&image)?;
                Ok(Inspection {
                    library: image.path,
                    sha256: image.sha256,
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
        let isolation = spec.isolation.unwrap_or(self.isolation);
        let prepared = self.prepare(spec)?;
        let withheld = prepared.withheld.clone();
        if isolation == Isolation::Process {
            return self
                .start_process(prepared)
                .map_err(|err| err.explained(&withheld));
        }
        let id = prepared.id.clone();
        let timeout = prepared.timeout;
        let thread_name = format!("plugbay-{}", prepared.manifest.name);

        let (request_tx, request_rx) = bounded::<Request>(1);
        let (reply_tx, reply_rx) = bounded::<Reply>(1);
        let (ready_tx, ready_rx) = bounded::<Result<Ready, StartError>>(1);
        let services = prepared.services;
        let life = Arc::new(WorkerLife {
            id: id.clone(),
            life: Mutex::new(Life::Serving),
            census: self.census.clone(),
        });
        let setup = Setup {
            id: id.clone(),
            image: prepared.image.clone(),
            manifest: prepared.manifest,
            rules: prepared.rules,
            mode: self.sandbox,
            context: prepared.context,
            services: services.clone(),
            life: life.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || worker(setup, ready_tx, request_rx, reply_tx))
            .map_err(|source| StartError::Spawn {
                id: id.clone(),
                source,
            })?;

        let deadline = deadline_after(Instant::now(), timeout);
        let ready = match recv_by(&ready_rx, deadline) {
            Ok(Ok(ready)) => ready,
            Ok(Err(err)) => {
                join_by(thread, &life, deadline);
                return Err(err.explained(&withheld));
            }
            Err(RecvTimeoutError::Timeout) => {
                services.revoke();
                life.abandon();
                return Err(StartError::Timeout { id, timeout });
            }
            Err(RecvTimeoutError::Disconnected) => {
                join_by(thread, &life, deadline);
                return Err(StartError::Crashed { id });
            }
        };
        tracing::debug!(plugin = %id, confinement = %ready.confinement, "plugin started");
        Ok(PluginHandle {
            status: PluginStatus::started(
                id,
                ready.confinement,
                prepared.granted,
                &ready.api_version,
                &prepared.image,
                timeout,
            )
            .with_withheld(withheld),
            may_process: prepared.may_process,
            requests: Some(request_tx),
            replies: reply_rx,
            thread: Some(thread),
            wait: ReplyWait::default(),
            services,
            life,
            #[cfg(target_os = "linux")]
            process: None,
            #[cfg(target_os = "linux")]
            relay: None,
        })
    }

    /// Starts an instance in a worker process (see [`Isolation::Process`]).
    #[cfg(target_os = "linux")]
    fn start_process(&self, prepared: Prepared) -> Result<PluginHandle, StartError> {
        let id = prepared.id.clone();
        let program = self.worker_program(&id)?;
        let network = prepared.granted.iter().any(|permission| {
            matches!(
                permission,
                Permission::NetConnect(_) | Permission::NetBind(_)
            )
        });
        let setup = process::Setup {
            id: id.clone(),
            library: prepared.image.path.clone(),
            sha256: prepared.image.sha256.clone(),
            manifest: prepared.manifest.to_json(),
            granted: prepared.granted.iter().map(ToString::to_string).collect(),
            plugin_dir: PathBuf::from(prepared.context.plugin_dir.as_str()),
            data_dir: PathBuf::from(prepared.context.data_dir.as_str()),
            config: prepared.context.config.to_string(),
            sandbox: self.sandbox,
            host_pid: std::process::id(),
            limits: self.limits,
            network,
            inspect: false,
        };
        let timeout = prepared.timeout;
        let services = prepared.services;
        let started = ProcessWorker::start(
            &program,
            setup,
            prepared.image.sealed_fd(),
            prepared.context.services,
            Some(timeout),
        );
        if started.is_err() {
            services.revoke();
        }
        let (worker, ready) = started.map_err(|fault| start_error(&id, timeout, fault))?;
        tracing::debug!(plugin = %id, pid = worker.pid(), confinement = %ready.confinement, "plugin started in a worker process");
        let (_, replies) = bounded::<Reply>(1);
        Ok(PluginHandle {
            status: PluginStatus {
                isolation: Isolation::Process,
                pid: Some(worker.pid()),
                namespaces: ready.namespaces,
                withheld: prepared.withheld,
                ..PluginStatus::started(
                    id,
                    ready.confinement,
                    prepared.granted,
                    &ready.api_version,
                    &prepared.image,
                    timeout,
                )
            },
            may_process: prepared.may_process,
            requests: None,
            replies,
            thread: None,
            wait: ReplyWait::default(),
            services,
            // A worker process is killed, never abandoned: it never joins the census.
            life: Arc::new(WorkerLife {
                id: prepared.id,
                life: Mutex::new(Life::Serving),
                census: self.census.clone(),
            }),
            process: Some(worker),
            relay: None,
        })
    }

    /// The program worker processes run.
    #[cfg(target_os = "linux")]
    fn worker_program(&self, id: &str) -> Result<PathBuf, StartError> {
        match &self.worker_program {
            Some(program) => Ok(program.clone()),
            None => std::env::current_exe().map_err(|source| StartError::Spawn {
                id: id.to_owned(),
                source,
            }),
        }
    }

    /// Inspects a library in a worker process that only opens it (its initializers
    /// run there, confined, never in the host) and reports what it embeds.
    #[cfg(target_os = "linux")]
    fn inspect_in_worker(&self, image: Image) -> Result<Inspection, StartError> {
        let id = image.path.display().to_string();
        let program = self.worker_program(&id)?;
        let setup = process::Setup {
            id: id.clone(),
            library: image.path.clone(),
            sha256: image.sha256.clone(),
            manifest: String::new(),
            granted: Vec::new(),
            plugin_dir: PathBuf::from("/"),
            data_dir: PathBuf::from("/"),
            config: String::new(),
            sandbox: self.sandbox,
            host_pid: std::process::id(),
            limits: self.limits,
            network: false,
            inspect: true,
        };
        let (services, revoker) = Services::create(id.clone(), &[], self.store.clone());
        let started = ProcessWorker::start(
            &program,
            setup,
            image.sealed_fd(),
            services,
            Some(self.timeout),
        );
        revoker.revoke();
        let (mut worker, ready) = started.map_err(|fault| start_error(&id, self.timeout, fault))?;
        worker.stop(Instant::now().checked_add(Duration::from_secs(5)));
        let manifest = ready.manifest.unwrap_or_default();
        let manifest = Manifest::parse(&manifest).map_err(|err| LoadError::EmbeddedManifest {
            path: image.path.clone(),
            reason: err.to_string(),
        })?;
        Ok(Inspection {
            library: image.path,
            sha256: image.sha256,
            manifest,
            api_version: ready.api_version,
            confinement: ready.confinement,
        })
    }

    /// Process isolation needs Linux.
    #[cfg(not(target_os = "linux"))]
    fn start_process(&self, prepared: Prepared) -> Result<PluginHandle, StartError> {
        Err(StartError::Worker {
            id: prepared.id,
            stage: "start".to_owned(),
            message: "process isolation needs Linux; use `Isolation::Thread`".to_owned(),
        })
    }

    /// Works out, on the host side, everything an instance of `spec` needs to start:
    /// its grants, deadline, sandbox rules and `init` context.
    pub(crate) fn prepare(&self, spec: PluginSpec) -> Result<Prepared, StartError> {
        let manifest = spec.manifest;
        let id = manifest.id();
        // Read and hash the library once: the worker loads these bytes, not the path.
        let image = Image::open(&spec.library, spec.sha256.as_deref())?;
        let library = image.path.clone();
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
        let rules = Rules::new(&id, &library, &granted, &plugin_dir, &data_dir)?;
        let withheld = Withheld::new(&manifest.permissions, &granted, &plugin_dir, &data_dir);
        let config = merged_config(manifest.config.as_ref(), spec.config);
        let (services, revoker) = Services::create(id.clone(), &granted, self.store.clone());
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
            services,
        };
        Ok(Prepared {
            id,
            image,
            manifest,
            granted,
            timeout,
            rules,
            context,
            services: revoker,
            may_process,
            withheld,
        })
    }

    /// Whether plugins may start without full confinement.
    pub(crate) fn sandbox_mode(&self) -> SandboxMode {
        self.sandbox
    }
}

/// The start error for a worker process that did not start.
#[cfg(target_os = "linux")]
fn start_error(id: &str, timeout: Duration, fault: StartFault) -> StartError {
    let id = id.to_owned();
    match fault {
        StartFault::Spawn(source) => StartError::Spawn { id, source },
        StartFault::Failed {
            stage,
            message,
            plugin_error,
        } => match (stage.as_str(), plugin_error) {
            ("init", Some(error)) => StartError::Init {
                id,
                error,
                note: Note::default(),
            },
            ("constructor", Some(error)) => StartError::Constructor { id, error },
            // The loader's own error, which names the library and what to do.
            ("load", None) => StartError::WorkerLoad { message },
            _ => StartError::Worker { id, stage, message },
        },
        StartFault::Timeout => StartError::Timeout { id, timeout },
        StartFault::Crashed(cause) => StartError::WorkerCrashed { id, cause },
    }
}

/// What [`Host::prepare`] worked out for one instance.
pub(crate) struct Prepared {
    pub id: String,
    /// The library, read and hashed: what the worker loads.
    pub image: Image,
    pub manifest: Manifest,
    pub granted: Vec<Permission>,
    pub timeout: Duration,
    pub rules: Rules,
    pub context: PluginContext,
    /// The host's hold on the services in `context`.
    pub services: Revoker,
    /// Whether the instance may receive batches, or why not.
    pub may_process: Result<(), &'static str>,
    /// What it requested and was not granted, to explain a denied access.
    pub withheld: Withheld,
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
    /// The SHA-256 of the bytes inspected.
    pub sha256: String,
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
    /// The SHA-256 the library must have (a reviewed digest), in hex; any if unset.
    /// The check and the load read the same bytes: a file swapped after the check is
    /// never loaded.
    pub sha256: Option<String>,
    /// Where the instance runs (the host's choice if unset).
    pub isolation: Option<Isolation>,
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
            sha256: None,
            isolation: None,
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
            sha256: None,
            isolation: None,
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

    /// The deadline of each call ([`Duration::MAX`]: none).
    pub fn with_timeout(mut self, timeout: Duration) -> PluginSpec {
        self.timeout = Some(timeout);
        self
    }

    /// Loads the library only if its SHA-256 is `sha256` (hex), as read by the load
    /// itself: what was reviewed is what runs.
    pub fn with_sha256(mut self, sha256: impl Into<String>) -> PluginSpec {
        self.sha256 = Some(sha256.into());
        self
    }

    /// Runs the instance on a worker thread or in a worker process.
    pub fn with_isolation(mut self, isolation: Isolation) -> PluginSpec {
        self.isolation = Some(isolation);
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
    #[error("plugin {id} failed to initialize: {error}{note}")]
    Init {
        /// The plugin.
        id: String,
        /// What the plugin said.
        error: PluginError,
        /// The host's explanation, when the error reads like a denied access to
        /// something the plugin requested and was not granted (else empty).
        note: Note,
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
    /// The worker process could not load or confine the plugin.
    #[error("plugin {id}'s worker process failed at {stage}: {message}")]
    Worker {
        /// The plugin.
        id: String,
        /// What it was doing (`sandbox`, `load`, …).
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// The worker process could not load the library (the loader's error, which
    /// names the library).
    #[error("{message}")]
    WorkerLoad {
        /// What the loader said.
        message: String,
    },
    /// The worker process ended before the plugin was ready.
    #[error("plugin {id}'s worker process ended while starting: {cause}")]
    WorkerCrashed {
        /// The plugin.
        id: String,
        /// How it ended.
        cause: String,
    },
    /// The worker thread ended without answering.
    #[error("plugin {id}'s worker thread ended while starting")]
    Crashed {
        /// The plugin.
        id: String,
    },
    /// The worker thread could not be spawned.
    #[error("cannot spawn a worker for plugin {id}: {source}")]
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

impl StartError {
    /// The error with the host's explanation of a denied access added, when `init`
    /// failed on one to something `withheld` names.
    pub(crate) fn explained(self, withheld: &Withheld) -> StartError {
        match self {
            StartError::Init { id, error, .. } => {
                let note = withheld.note(&id, &error.message);
                StartError::Init { id, error, note }
            }
            other => other,
        }
    }
}

/// Why a call failed. The caller's batch is never consumed: it can be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin returned an error; the instance goes on.
    #[error("plugin {id} failed in {hook}: {error}{note}")]
    Plugin {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// What the plugin said.
        error: PluginError,
        /// The host's explanation, when the error reads like a denied access to
        /// something the plugin requested and was not granted (else empty).
        note: Note,
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
    /// The worker process ended during the call (a crash, an abort, `exit()`, running
    /// out of memory); the instance is marked failed.
    #[error(
        "plugin {id}'s worker process ended in {hook}: {cause}; the instance is marked failed"
    )]
    Crashed {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// How the process ended.
        cause: String,
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
    /// Dropping the instance (the plugin's `Drop`) did not finish within the
    /// deadline; the worker was abandoned.
    #[error("plugin {id}'s instance did not finish dropping within {timeout:?}; its worker thread was abandoned and may still run plugin code")]
    DropTimeout {
        /// The plugin.
        id: String,
        /// The deadline.
        timeout: Duration,
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
    /// The worker process ended (a crash, an abort, `exit()`, out of memory).
    Crashed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic(message) => write!(f, "panic: {message}"),
            Failure::Timeout(message) => write!(f, "timeout: {message}"),
            Failure::WorkerLost(message) => write!(f, "worker lost: {message}"),
            Failure::Crashed(message) => write!(f, "crashed: {message}"),
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
    /// What the instance requested and was not granted, to explain a denied access.
    #[serde(skip)]
    pub(crate) withheld: Withheld,
}

impl PluginStatus {
    /// The status with what the instance requested and was not granted.
    pub(crate) fn with_withheld(mut self, withheld: Withheld) -> PluginStatus {
        self.withheld = withheld;
        self
    }

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
            withheld: Withheld::default(),
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
        if error.kind == ErrorKind::PANICKED {
            let message = error.message.to_string();
            self.fail(Failure::Panic(message.clone()));
            CallError::Panicked { id, hook, message }
        } else {
            let note = self.withheld.note(&id, &error.message);
            CallError::Plugin {
                id,
                hook,
                error,
                note,
            }
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
/// instance up and stops the worker, each with the call deadline: a worker that
/// misses one is abandoned, never waited for.
pub struct PluginHandle {
    status: PluginStatus,
    may_process: Result<(), &'static str>,
    requests: Option<Sender<Request>>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    wait: ReplyWait,
    services: Revoker,
    life: Arc<WorkerLife>,
    /// The worker process, for process isolation.
    #[cfg(target_os = "linux")]
    process: Option<ProcessWorker>,
    /// The thread relaying a pipeline stream to the worker process, which it gives
    /// back when the stream ends.
    #[cfg(target_os = "linux")]
    relay: Option<JoinHandle<ProcessWorker>>,
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
        #[cfg(target_os = "linux")]
        if self.process.is_some() {
            let result = self.process_in_worker(batch);
            self.status.busy += started.elapsed();
            return result;
        }
        let reply = self.call(Request::Process(batch.clone()), Hook::Process)?;
        self.status.busy += started.elapsed();
        let Reply::Processed(result) = reply else {
            return Err(self.lose_worker("answered process with another reply"));
        };
        self.status.processed(result)
    }

    /// Runs `cleanup` and stops the worker, which drops the instance; each has the
    /// call deadline. Returns the final status.
    pub fn shutdown(mut self) -> Result<PluginStatus, CallError> {
        let cleaned = self.cleanup();
        let stopped = self.stop();
        cleaned.and(stopped).map(|()| self.status.clone())
    }

    /// Runs the plugin's `cleanup` hook; the instance takes no more calls after it.
    pub fn cleanup(&mut self) -> Result<(), CallError> {
        #[cfg(target_os = "linux")]
        if self.process.is_some() {
            return self.cleanup_in_worker();
        }
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

    /// `process` in the worker process.
    #[cfg(target_os = "linux")]
    fn process_in_worker(&mut self, batch: &Batch) -> Result<Batch, CallError> {
        self.live()?;
        let deadline = Instant::now().checked_add(self.status.timeout);
        let worker = self.process.as_mut().expect("a process worker");
        match worker.process(batch, deadline) {
            Ok(Ok(bytes)) => {
                let checked = check_output(RVec::from(bytes));
                self.status.processed(checked)
            }
            Ok(Err(error)) => self.status.processed(Err(Outcome::Plugin(error))),
            Err(fault) => Err(self.worker_fault(fault, Hook::Process)),
        }
    }

    /// `cleanup` in the worker process.
    #[cfg(target_os = "linux")]
    fn cleanup_in_worker(&mut self) -> Result<(), CallError> {
        self.live()?;
        let deadline = Instant::now().checked_add(self.status.timeout);
        let worker = self.process.as_mut().expect("a process worker");
        match worker.cleanup(deadline) {
            Ok(result) => {
                self.status.state = State::CleanedUp;
                match result {
                    RResult::ROk(()) => Ok(()),
                    RResult::RErr(error) => Err(self.status.hook_error(Hook::Cleanup, error)),
                }
            }
            Err(fault) => Err(self.worker_fault(fault, Hook::Cleanup)),
        }
    }

    /// The caller's error for a worker process that timed out (it was killed) or
    /// ended; the instance is marked failed.
    #[cfg(target_os = "linux")]
    fn worker_fault(&mut self, fault: Fault, hook: Hook) -> CallError {
        match fault {
            Fault::Timeout => self.time_out(hook),
            Fault::Crashed(cause) => {
                self.status.fail(Failure::Crashed(cause.clone()));
                CallError::Crashed {
                    id: self.status.id.clone(),
                    hook,
                    cause,
                }
            }
        }
    }

    fn call(&mut self, request: Request, hook: Hook) -> Result<Reply, CallError> {
        let sent = self.send(request)?;
        let deadline = deadline_after(sent, self.status.timeout);
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
        #[cfg(target_os = "linux")]
        if let Some(worker) = self.process.take() {
            return self.stream_in_worker(worker, stream);
        }
        self.send(Request::Stream(stream)).map(drop)
    }

    /// A pipeline stage in a worker process: a relay thread of the host takes the
    /// stage's batches to the worker and its results on, and gives the worker back
    /// when the stream ends (see `close_stream`).
    #[cfg(target_os = "linux")]
    fn stream_in_worker(
        &mut self,
        mut worker: ProcessWorker,
        stream: Stream,
    ) -> Result<(), CallError> {
        let (reply_tx, reply_rx) = bounded::<Reply>(1);
        let timeout = self.status.timeout;
        let relay = std::thread::Builder::new()
            .name(format!("plugbay-relay-{}", self.status.id))
            .spawn(move || {
                let end = pipeline::stream_with(stream, |batch| {
                    let deadline = Instant::now().checked_add(timeout);
                    match worker.process(batch, deadline) {
                        Ok(Ok(bytes)) => check_output(RVec::from(bytes)),
                        Ok(Err(error)) => Err(Outcome::Plugin(error)),
                        Err(Fault::Timeout) => Err(Outcome::Late),
                        Err(Fault::Crashed(cause)) => Err(Outcome::Crashed(cause)),
                    }
                });
                let _ = reply_tx.send(Reply::Streamed(end));
                worker
            });
        match relay {
            Ok(relay) => {
                self.replies = reply_rx;
                self.relay = Some(relay);
                Ok(())
            }
            Err(err) => Err(self.lose_worker(&format!("cannot start a relay thread: {err}"))),
        }
    }

    /// Waits for the worker to leave its stream, until `due()` (asked again after each
    /// wait, as the worker may be in a call; `None`: no deadline). Returns where the
    /// stream stopped on a failure of the plugin or a late return: the batch number,
    /// the batch, and the caller's error.
    pub(crate) fn close_stream(
        &mut self,
        due: impl Fn() -> Option<Instant>,
    ) -> Result<Option<(u64, Batch, CallError)>, CallError> {
        let end = loop {
            match recv_by(&self.replies, due()) {
                Ok(Reply::Streamed(end)) => {
                    #[cfg(target_os = "linux")]
                    if let Some(relay) = self.relay.take() {
                        // The relay sent its last reply: it returns the worker now.
                        self.process = relay.join().ok();
                    }
                    break end;
                }
                Ok(_) => return Err(self.lose_worker("answered a stream with another reply")),
                Err(RecvTimeoutError::Timeout)
                    if due().is_some_and(|due| Instant::now() >= due) =>
                {
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
        self.abandon();
        CallError::Timeout {
            id: self.status.id.clone(),
            hook,
            timeout,
        }
    }

    /// Gives up on the worker: it is never sent, waited for or joined again, its
    /// host services end now, and the host counts it until its thread ends. What the
    /// plugin may still read (its instance, the batch it was given) stays allocated;
    /// the allocator gives back what is free.
    fn abandon(&mut self) {
        self.requests = None;
        self.services.revoke();
        #[cfg(target_os = "linux")]
        if self.status.isolation == Isolation::Process {
            // A worker process is not left running: it is killed (its relay, if a
            // stream was open, ends with it), and nothing of it stays in the host.
            if let Some(mut worker) = self.process.take() {
                worker.kill();
            }
            self.relay = None;
            return;
        }
        self.thread = None;
        self.life.abandon();
        self.status.abandoned = true;
        crate::allocator::release_free_memory();
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

    /// Closes the request channel, so that the worker drops the instance and ends,
    /// and waits for that until the call deadline; past it the worker is abandoned.
    fn stop(&mut self) -> Result<(), CallError> {
        self.requests = None;
        let mut result = Ok(());
        if let Some(thread) = self.thread.take() {
            let deadline = deadline_after(Instant::now(), self.status.timeout);
            // The worker drops its end of the reply channel once the instance is gone.
            let dropped = loop {
                match recv_by(&self.replies, deadline) {
                    // A reply nobody collected (a pipeline run whose sink panicked).
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Disconnected) => break true,
                    Err(RecvTimeoutError::Timeout) => break false,
                }
            };
            if dropped {
                join_by(thread, &self.life, deadline);
            } else {
                let timeout = self.status.timeout;
                self.status.fail(Failure::Timeout(format!(
                    "dropping the instance did not finish within {timeout:?}"
                )));
                self.abandon();
                result = Err(CallError::DropTimeout {
                    id: self.status.id.clone(),
                    timeout,
                });
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(relay) = self.relay.take() {
            // A stream that was never closed: its relay ends at the worker's deadline
            // at the latest (the worker is killed then), unless the instance failed,
            // which is never waited for; the worker process dies with the relay.
            if !matches!(self.status.state, State::Failed(_)) {
                self.process = relay.join().ok();
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(mut worker) = self.process.take() {
            // A worker process is told to drop the instance and exit, with the call
            // deadline; a failed one is killed at once. Either way it is gone after.
            if matches!(self.status.state, State::Failed(_)) {
                worker.kill();
            } else {
                worker.stop(Instant::now().checked_add(self.status.timeout));
            }
        }
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
        if matches!(self.status.state, State::Failed(_)) {
            // A failed worker may be stuck in plugin code, or has forgotten its
            // instance after a panic: never wait for it.
            self.requests = None;
            self.thread = None;
        }
        if let Err(err) = self.stop() {
            tracing::warn!(plugin = %self.status.id, error = %err, "stopping the plugin failed while dropping it");
        }
    }
}

/// When a call of `timeout` that starts at `start` is due; `None` when that is too
/// far to represent (as for [`Duration::MAX`]): no deadline.
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Option<Instant> {
    start.checked_add(timeout)
}

/// Receives from `channel`, waiting until `deadline` (for ever without one).
pub(crate) fn recv_by<T>(
    channel: &Receiver<T>,
    deadline: Option<Instant>,
) -> Result<T, RecvTimeoutError> {
    match deadline {
        Some(deadline) => channel.recv_deadline(deadline),
        None => channel.recv().map_err(RecvTimeoutError::from),
    }
}

/// Joins a worker thread that has left its loop, if it ends by `deadline` (its
/// plugin's thread-local destructors still run after that); else abandons it.
fn join_by(thread: JoinHandle<()>, life: &WorkerLife, deadline: Option<Instant>) {
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
struct Census {
    running: Mutex<HashMap<String, usize>>,
}

impl Census {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn total(&self) -> usize {
        self.counts().values().sum()
    }

    fn of(&self, id: &str) -> usize {
        self.counts().get(id).copied().unwrap_or(0)
    }
}

/// Where a worker thread is in its life, as its handle and the thread see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
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
struct WorkerLife {
    id: String,
    life: Mutex<Life>,
    census: Arc<Census>,
}

impl WorkerLife {
    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The host gives up on the worker; a worker that has ended stays ended.
    fn abandon(&self) {
        let mut life = self.life();
        if *life == Life::Serving {
            *life = Life::Abandoned;
            *self.census.counts().entry(self.id.clone()).or_default() += 1;
            tracing::warn!(plugin = %self.id, "worker thread abandoned; it may never return from the plugin");
        }
    }

    /// The worker thread ends; an abandoned one leaves the census.
    fn end(&self) {
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
struct Ending(Arc<WorkerLife>);

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
        deadline: Option<Instant>,
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
        deadline: Option<Instant>,
    ) -> Result<Reply, RecvTimeoutError> {
        let by_deadline = |instant: Instant| deadline.map_or(instant, |due| due.min(instant));
        if let Some(sleep) = self.expected.checked_sub(WAKE_AHEAD) {
            match replies.recv_deadline(by_deadline(sent + sleep)) {
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
                return recv_by(replies, deadline);
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
    /// The worker process ended (and is gone).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Crashed(String),
    /// The worker process missed the deadline (and was killed).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Late,
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
    image: Image,
    manifest: Manifest,
    rules: Rules,
    mode: SandboxMode,
    context: PluginContext,
    services: Revoker,
    life: Arc<WorkerLife>,
}

/// The worker thread: confine, load, construct, init, then serve requests; at the
/// end drop the instance (the handle waits for that with a deadline) and revoke its
/// host services. They are revoked as soon as `cleanup` returns, too.
fn worker(
    setup: Setup,
    ready: Sender<Result<Ready, StartError>>,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
) {
    let _ending = Ending(setup.life.clone());
    let services = setup.services.clone();
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
    while let Some(request) = next_request(&requests) {
        let reply = match request {
            Request::Process(batch) => Reply::Processed(process_here(&mut instance, &batch)),
            Request::Stream(stream) => {
                Reply::Streamed(pipeline::stream_here(&mut instance, stream))
            }
            Request::Cleanup => {
                let result = instance.cleanup();
                // Nothing the plugin does from now on reaches the host's services.
                services.revoke();
                Reply::CleanedUp(result)
            }
        };
        let panicked = matches!(
            &reply,
            Reply::Processed(Err(Outcome::Plugin(error)))
                | Reply::Streamed(Some((_, _, Stopped::Failed(Outcome::Plugin(error)))))
                | Reply::CleanedUp(RResult::RErr(error))
                if error.kind == ErrorKind::PANICKED
        );
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
    // Dropping `replies` (with the function's arguments) tells the handle.
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
    image: &Image,
    manifest: &Manifest,
    context: PluginContext,
) -> Result<(PluginBox, semver::Version), StartError> {
    let loaded = loader::open(image)?;
    loader::check_manifest(&image.path, &loaded.manifest, manifest)?;
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
            note: Note::default(),
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
            Err(Outcome::Crashed(cause)) => panic!("{cause}"),
            Err(Outcome::Late) => panic!("late"),
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
