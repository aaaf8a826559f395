//! Load, confine and drive Plugbay plugins.
//!
//! A Plugbay plugin is a native dynamic library built with `#[plugbay::plugin]`
//! (see the `plugbay-api` crate). This crate loads such libraries, checks them
//! (stable ABI layout, plugbay-api version, embedded manifest), confines each one
//! with landlock on its own worker thread, and drives it: batches of JSON records
//! in, batches out, with a deadline on every call.
//!
//! # Use cases
//!
//! - Run one plugin over your data: [`Host::start`] then [`PluginHandle::process`].
//! - Chain plugins so that they work on successive batches at once: [`Pipeline`].
//! - Offer plugins a data store and logging: [`DataStore`], [`Host::with_store`].
//! - Replace a running plugin with another version of it, start before stop, without
//!   losing a batch: [`Host::upgrade`], and for one stage of a running pipeline,
//!   [`Pipeline::switch`] ([`StageSwitch`]).
//!
//! # Examples
//!
//! ```no_run
//! use plugbay_host::{Batch, Host, PluginSpec};
//!
//! let host = Host::new();
//! let spec = PluginSpec::from_manifest_file("plugins/data-processor/plugin.json")?;
//! let mut plugin = host.start(spec)?;
//! println!("confinement: {}", plugin.status().confinement);
//! let input = Batch::from_json(r#"[{"id": 1}, {"id": 2}]"#);
//! let output = plugin.process(&input)?;
//! assert_eq!(output.len(), Some(2));
//! plugin.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! On a worker thread, confinement protects against buggy and overreaching plugins,
//! not malicious ones: native code can read and write host memory, use descriptors
//! the host already has open, and an `abort()` or segfault ends the host. For
//! untrusted plugins, run each in a worker process of its own
//! ([`Isolation::Process`]; the program's `main` calls [`serve_worker_if_asked`]
//! first): there a crash, an abort or a hang ends only that process. The README's
//! threat model says exactly what each isolation stops.
//!
//! A Rust library cannot be unloaded soundly: the host calls no code of a stopped
//! plugin again and revokes its host services, but threads the plugin started itself
//! run on (only process isolation ends them), and its mapped code stays until the
//! process exits. A worker that misses a deadline (in a hook, or while its instance
//! is dropped) is abandoned and counted ([`Host::abandoned_workers`]), never waited for.
//!
//! # Compatibility
//!
//! Plugins built against any semver-compatible plugbay-api load (same major; for 0.x
//! the same minor). Confinement needs Linux with landlock ABI 6 (kernel 6.12 or
//! later) and seccomp on x86_64, aarch64 or riscv64; elsewhere plugins start only
//! with [`SandboxMode::AllowDegraded`].
#![deny(missing_docs)]

mod allocator;
#[cfg(feature = "market")]
pub mod attestation;
mod batch;
mod call;
mod error;
mod grants;
mod hints;
mod image;
mod isolation;
pub mod loader;
pub mod local;
#[cfg(feature = "market")]
pub mod market;
mod pipeline;
#[cfg(target_os = "linux")]
mod process;
#[cfg(feature = "registry")]
pub mod registry;
mod runtime;
pub mod sandbox;
#[cfg(feature = "server")]
pub mod server;
mod services;
mod stream;
mod threads;
mod upgrade;

pub use batch::Batch;
pub use hints::Hint;
pub use image::sha256_file;
pub use isolation::Isolation;
pub use loader::{manifest_differences, LoadError, ManifestDifference};
pub use pipeline::{IoError, Pipeline, PipelineError, PipelineReport, StageReport};
pub use plugbay_api::abi::{ErrorKind, PluginError};
pub use plugbay_api::manifest::{self, Hook, Manifest, Permission};
#[cfg(target_os = "linux")]
pub use process::{serve_worker_if_asked, Limits, WORKER_ARG};
pub use runtime::{
    read_manifest, CallError, Failure, Host, Inspection, ManifestFileError, PluginHandle,
    PluginSpec, PluginStatus, StartError, State, DEFAULT_TIMEOUT,
};
pub use sandbox::{Confinement, ConfinementLevel, Policy, SandboxError, SandboxMode};
pub use services::{DataStore, MemoryStore, StoreError};
pub use upgrade::{StageSwitch, Upgrade, UpgradeError};
