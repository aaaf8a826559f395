//! End-to-end tests: real `.so` files built from the workspace, loaded by the real
//! host, on real landlock.

mod api;
mod authors;
mod cli;
mod crates;
mod isolation;
mod isolation_faults;
mod loader;
mod local;
mod market;
mod pipeline;
mod readme;
mod registry;
mod runtime;
mod sandbox;
mod survival;
mod upgrade;

use std::time::Duration;

use plugbay_host::{Host, PluginSpec};

/// How long this suite may run before it is taken for hung (it takes 2–5 minutes with
/// its plugins built, and their build a few more): see [`plugbay_tests::watchdog`].
const HUNG_AFTER: Duration = Duration::from_secs(30 * 60);

/// The spec of example plugin `name` (see [`plugbay_tests::example_spec`]).
pub fn example(name: &str) -> PluginSpec {
    plugbay_tests::watchdog(HUNG_AFTER);
    plugbay_tests::example_spec(name)
}

/// The spec of fixture plugin `name` (see [`plugbay_tests::fixture_spec`]).
pub fn fixture(name: &str) -> PluginSpec {
    plugbay_tests::watchdog(HUNG_AFTER);
    plugbay_tests::fixture_spec(name)
}

/// A host whose plugin data lives in a fresh temporary folder.
pub fn host() -> (Host, tempfile::TempDir) {
    plugbay_tests::watchdog(HUNG_AFTER);
    let dir = tempfile::tempdir().unwrap();
    (Host::new().with_data_dir(dir.path()), dir)
}

/// A batch that asks the `raw-output` fixture to return exactly `bytes`.
pub fn raw_output_request(bytes: &[u8]) -> String {
    serde_json::json!([{ "raw_output_bytes": bytes }]).to_string()
}

/// `json` followed by what ABI 0.1's output mark looked like: a newline, then
/// `plugbay!` and a 48-bit record count in spaces (0) and tabs (1). Hosts of that ABI
/// took the count from it and skipped their check.
pub fn with_forged_mark(json: &[u8], records: u64) -> Vec<u8> {
    let bits = |value: u64, count: u32| {
        (0..count)
            .rev()
            .map(move |bit| if value >> bit & 1 == 1 { b'\t' } else { b' ' })
    };
    let mut bytes = json.to_vec();
    bytes.push(b'\n');
    bytes.extend(bits(u64::from_be_bytes(*b"plugbay!"), 64));
    bytes.extend(bits(records, 48));
    bytes
}

/// Bytes that are not JSON, with a forged mark claiming 281,474,976,710,655 records.
pub fn forged_garbage() -> Vec<u8> {
    with_forged_mark("[this is not json …]".as_bytes(), (1 << 48) - 1)
}
