//! What to start: a plugin's library, manifest and settings, and what an inspection finds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plugbay_api::manifest::{Manifest, Permission};
use serde::Serialize;

use crate::isolation::Isolation;
use crate::sandbox::{Confinement, Policy};

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
    /// `${data_dir}` for this instance (the host's `<data dir>/<name>/<version>` if
    /// unset).
    pub data_dir: Option<PathBuf>,
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
            data_dir: None,
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
            data_dir: None,
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

    /// Uses `dir` as the instance's `${data_dir}` instead of the host's folder for
    /// the plugin's name and version (a development run, a test).
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> PluginSpec {
        self.data_dir = Some(dir.into());
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
