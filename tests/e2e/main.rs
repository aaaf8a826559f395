//! End-to-end tests: real `.so` files built from the workspace, loaded by the real
//! host, on real landlock.

mod api;
mod cli;
mod isolation;
mod isolation_faults;
mod loader;
mod local;
mod pipeline;
mod readme;
mod registry;
mod runtime;
mod sandbox;
mod survival;

use plugbay_host::{Host, PluginSpec};
use plugbay_tests::{example_manifest, fixture_manifest, library};

/// A spec for an example plugin, with its library from the build.
pub fn example(name: &str) -> PluginSpec {
    PluginSpec::from_manifest_file(example_manifest(name))
        .unwrap()
        .with_library(library(name))
}

/// A spec for a fixture plugin, with its library from the build.
pub fn fixture(name: &str) -> PluginSpec {
    PluginSpec::from_manifest_file(fixture_manifest(name))
        .unwrap()
        .with_library(library(&format!("fixture-{name}")))
}

/// A host whose plugin data lives in a fresh temporary folder.
pub fn host() -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Host::new().with_data_dir(dir.path()), dir)
}
