//! `data-processor`'s work as an Extism plugin, for the peer benchmark: the same
//! transform code (`example-plugins/data-processor/src/transform.rs`), the same
//! serde_json reading and writing as Plugbay's SDK, compiled for
//! `wasm32-unknown-unknown`.
//!
//! That target has no clock (`SystemTime::now` panics there), so the plugin asks the
//! host for the time once per batch, through the host function `now_millis` in
//! Extism's user namespace, as a plugin that stamps records must.

use std::time::{Duration, UNIX_EPOCH};

use extism_pdk::{plugin_fn, FnResult};
use serde_json::{Map, Value};

#[path = "../../../../example-plugins/data-processor/src/transform.rs"]
mod transform;

#[link(wasm_import_module = "extism:host/user")]
extern "C" {
    /// Milliseconds since the Unix epoch, from the host's clock.
    fn now_millis() -> u64;
}

/// The batch in, JSON records; the batch out, each marked and stamped.
#[plugin_fn]
pub fn process(input: Vec<u8>) -> FnResult<Vec<u8>> {
    let mut records: Vec<Map<String, Value>> = serde_json::from_slice(&input)?;
    // SAFETY: `now_millis` takes nothing and returns a number; the host defines it
    // with exactly that signature (no parameters, one i64 result), and Extism refuses
    // to instantiate a plugin whose imports do not match.
    let now = UNIX_EPOCH + Duration::from_millis(unsafe { now_millis() });
    transform::Config::default().apply(&mut records, now);
    if records.is_empty() {
        return Ok(b"[]".to_vec());
    }
    let mut output = Vec::with_capacity(input.len() + input.len() / 4 + 2);
    serde_json::to_writer(&mut output, &records)?;
    Ok(output)
}
