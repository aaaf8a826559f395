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
//! one-message hand-off and answers each on another (see `handoff`). Every call has a
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::RString;
use crossbeam_channel::{bounded, RecvTimeoutError};
use plugbay_api::abi::PluginContext;
use plugbay_api::manifest::{Hook, Manifest, Permission};

use crate::call::{deadline_after, recv_by};
use crate::grants;
use crate::hints;
#[cfg(target_os = "linux")]
use crate::hints::Hint;
use crate::image::Image;
use crate::isolation::Isolation;
use crate::loader;
#[cfg(target_os = "linux")]
use crate::loader::LoadError;
#[cfg(target_os = "linux")]
use crate::process::{self, Limits, ProcessWorker, StartFault};
use crate::sandbox::{self, Policy, Rules, SandboxMode};
use crate::services::{DataStore, MemoryStore, Revoker, Services};
use crate::threads;

mod handle;
mod handoff;
mod spec;
mod status;
mod thread;
mod worker;

pub use crate::error::{CallError, Failure, StartError};
pub use handle::PluginHandle;
pub use spec::{read_manifest, Inspection, ManifestFileError, PluginSpec};
pub use status::{PluginStatus, State};
use thread::{
    join_by, worker, Census, Cores, Life, Ready, Reply, ReplyWait, Request, Setup, WorkerLife,
};
use worker::{ThreadSide, Worker};

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
    /// Whether a worker process is launched ahead for the next process start.
    spare_worker: bool,
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
            spare_worker: true,
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

    /// Whether to keep a worker process launched ahead of need (the default): the
    /// first process-isolated start launches the worker program, and every start
    /// after it finds a launched worker waiting and has the next one launched in the
    /// background. A waiting worker holds no plugin and costs a process of about
    /// 4 MiB resident until it is used or the host exits. Waiting workers are kept
    /// per worker program for the whole process, so hosts of one process share them.
    /// Without it each start of this host launches the program itself (see
    /// BENCHMARKS.md), even where another host keeps a worker waiting.
    pub fn with_spare_worker(mut self, spare: bool) -> Host {
        self.spare_worker = spare;
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

    /// Where plugins get their `${data_dir}`: one folder per plugin name and version,
    /// `<dir>/<name>/<version>` (see [`sandbox::plugin_data_dir`]), unless a spec
    /// sets its own ([`PluginSpec::with_data_dir`]).
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
        if isolation == Isolation::Process {
            return self.start_process(prepared);
        }
        let id = prepared.id.clone();
        let timeout = prepared.timeout;
        let thread_name = format!("plugbay-{}", prepared.manifest.name);
        // The copy of the library that belongs to this instance's grants (see `grants`).
        let key = grants::Key::of(&prepared.granted, &prepared.rules, &prepared.image.path);
        let image = grants::image_for(&id, &prepared.image, key)?;
        let left = Arc::new(threads::Left::default());

        let (request_tx, request_rx) = handoff::handoff::<Request>();
        let (reply_tx, reply_rx) = handoff::handoff::<Reply>();
        let (ready_tx, ready_rx) = bounded::<Result<Ready, StartError>>(1);
        let cores = Arc::new(Cores::default());
        let services = prepared.services;
        let life = Arc::new(WorkerLife {
            id: id.clone(),
            life: Mutex::new(Life::Serving),
            census: self.census.clone(),
        });
        let setup = Setup {
            id: id.clone(),
            image,
            manifest: prepared.manifest,
            rules: prepared.rules,
            mode: self.sandbox,
            context: prepared.context,
            services: services.clone(),
            life: life.clone(),
            left: left.clone(),
            cores: cores.clone(),
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
                let (granted, withheld) = (&prepared.granted, &prepared.withheld);
                return Err(hints::on_start_error(
                    err,
                    granted,
                    withheld,
                    Isolation::Thread,
                ));
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
            status: PluginStatus {
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
            worker: Worker::on_thread(ThreadSide {
                id: prepared.id,
                requests: Some(request_tx),
                replies: reply_rx,
                thread: Some(thread),
                wait: ReplyWait::default(),
                cores,
                life,
                left,
            }),
            services,
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
            log_level: prepared
                .context
                .log_level
                .into_option()
                .map(|level| level as u8),
        };
        let timeout = prepared.timeout;
        let services = prepared.services;
        let started = ProcessWorker::start(
            &program,
            setup,
            prepared.image.sealed_fd(),
            prepared.context.services,
            Some(timeout),
            self.spare_worker,
        );
        if started.is_err() {
            services.revoke();
        }
        let (worker, ready) = started.map_err(|fault| {
            let (granted, withheld) = (&prepared.granted, &prepared.withheld);
            let err = start_error(&id, timeout, fault);
            hints::on_start_error(err, granted, withheld, Isolation::Process)
        })?;
        tracing::debug!(plugin = %id, pid = worker.pid(), confinement = %ready.confinement, "plugin started in a worker process");
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
            // A worker process is killed, never abandoned: it never joins the census.
            worker: Worker::in_process(prepared.id, worker),
            services,
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
            log_level: None,
        };
        let (services, revoker) = Services::create(id.clone(), &[], self.store.clone());
        let started = ProcessWorker::start(
            &program,
            setup,
            image.sealed_fd(),
            services,
            Some(self.timeout),
            self.spare_worker,
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
        let data_dir = spec.data_dir.clone().unwrap_or_else(|| {
            sandbox::plugin_data_dir(&self.data_dir, &manifest.name, &manifest.version)
        });
        if granted.iter().any(
            |p| matches!(p, Permission::FsWrite(path) if path.as_str().contains("${data_dir}")),
        ) {
            std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        }
        let rules = Rules::new(&id, &library, &granted, &plugin_dir, &data_dir)?;
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
            log_level: crate::services::recorded_level().into(),
        };
        let withheld = manifest
            .permissions
            .iter()
            .filter(|permission| !granted.contains(permission))
            .cloned()
            .collect();
        Ok(Prepared {
            id,
            image,
            manifest,
            withheld,
            granted,
            timeout,
            rules,
            context,
            services: revoker,
            may_process,
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
                hint: Hint::default(),
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
    /// What the manifest requests that was not granted.
    pub withheld: Vec<Permission>,
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
