//! Why a plugin did not start, why a call failed, and why an instance failed: the
//! errors every layer of the runtime shares.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use plugbay_api::abi::PluginError;
use plugbay_api::manifest::Hook;
use serde::Serialize;

use crate::hints::Hint;
use crate::loader::LoadError;
use crate::sandbox::SandboxError;

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
    #[error("plugin {id} failed to initialize: {error}{hint}")]
    Init {
        /// The plugin.
        id: String,
        /// What the plugin said.
        error: PluginError,
        /// What the plugin was granted and not granted, if the error reads like a
        /// sandbox denial.
        hint: Hint,
    },
    /// `init` panicked.
    #[error("plugin {id} panicked in init: {message}{hint}")]
    InitPanicked {
        /// The plugin.
        id: String,
        /// The panic message.
        message: String,
        /// What the plugin was granted and not granted, if the panic reads like a
        /// sandbox denial.
        hint: Hint,
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

/// Why a call failed. The caller's batch is never consumed: it can be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin returned an error; the instance goes on.
    #[error("plugin {id} failed in {hook}: {error}{hint}")]
    Plugin {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// What the plugin said.
        error: PluginError,
        /// What the plugin was granted and not granted, if the error reads like a
        /// sandbox denial.
        hint: Hint,
    },
    /// The hook panicked; the instance is marked failed.
    #[error("plugin {id} panicked in {hook}: {message}{hint}; the instance is marked failed")]
    Panicked {
        /// The plugin.
        id: String,
        /// The hook.
        hook: Hook,
        /// The panic message.
        message: String,
        /// What the plugin was granted and not granted, if the panic reads like a
        /// sandbox denial.
        hint: Hint,
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
