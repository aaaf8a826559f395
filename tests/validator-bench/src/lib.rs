//! Candidate validators for the host's check of plugin output, with one signature:
//! `bytes -> Ok(record count) | Err(reason)`. Each must refuse exactly what
//! `serde_json::from_slice::<serde_json::Value>` refuses, and anything that is not an
//! array (`src/main.rs` checks that on mutated documents); the bench measures them on
//! data-processor's output (`benches/validators.rs`).

use std::fmt;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::Deserializer as _;

/// The host's validator, this very file: serde_json's full parser, nothing allocated.
#[path = "../../../host/src/batch/check.rs"]
mod check;

/// A validator: the record count, or why the bytes are not one JSON array.
pub type Validator = fn(&[u8]) -> Result<usize, String>;

/// The candidates, by name.
pub const CANDIDATES: &[(&str, Validator)] = &[
    ("host", host),
    ("serde_json_strict", serde_json_strict),
    ("serde_json_ignored", serde_json_ignored),
    ("simdutf8_serde_json_ignored", simdutf8_serde_json_ignored),
    ("sonic_rs_strict", sonic_rs_strict),
    ("sonic_rs_ignored", sonic_rs_ignored),
    ("simd_json_tape", simd_json_tape),
];

/// The host's validator (`host/src/batch/check.rs`): the plain-JSON scanner, then
/// serde_json's full parser when the scanner is not sure.
pub fn host(bytes: &[u8]) -> Result<usize, String> {
    check::count_array(bytes)
}

/// serde_json's full parser alone, nothing allocated (the host's second pass).
pub fn serde_json_strict(bytes: &[u8]) -> Result<usize, String> {
    check::count_strict(bytes)
}

struct IgnoredCounter;

impl<'de> Visitor<'de> for IgnoredCounter {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(count)
    }
}

/// What the host did before: serde_json's skipping parser (`IgnoredAny`).
pub fn serde_json_ignored(bytes: &[u8]) -> Result<usize, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let count = deserializer
        .deserialize_seq(IgnoredCounter)
        .map_err(|err| err.to_string())?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(count)
}

/// A SIMD UTF-8 check of the whole buffer, then serde_json's skipping parser.
pub fn simdutf8_serde_json_ignored(bytes: &[u8]) -> Result<usize, String> {
    simdutf8::basic::from_utf8(bytes).map_err(|err| err.to_string())?;
    serde_json_ignored(bytes)
}

/// The same strict visitor as the host's, driven by sonic-rs's SIMD parser.
pub fn sonic_rs_strict(bytes: &[u8]) -> Result<usize, String> {
    let mut deserializer = sonic_rs::Deserializer::from_slice(bytes);
    let count = check::count_with(&mut deserializer).map_err(|err| err.to_string())?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(count)
}

/// sonic-rs's skipping of each element (`IgnoredAny`).
pub fn sonic_rs_ignored(bytes: &[u8]) -> Result<usize, String> {
    let mut deserializer = sonic_rs::Deserializer::from_slice(bytes);
    let count = (&mut deserializer)
        .deserialize_seq(IgnoredCounter)
        .map_err(|err| err.to_string())?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(count)
}

/// simd-json's tape (its two-stage SIMD parser). It writes into its input, so the
/// host would have to copy a plugin's buffer first; the copy is part of the cost.
pub fn simd_json_tape(bytes: &[u8]) -> Result<usize, String> {
    let mut copy = bytes.to_vec();
    let tape = simd_json::to_tape(&mut copy).map_err(|err| err.to_string())?;
    match tape.0.first() {
        Some(simd_json::Node::Array { len, .. }) => Ok(*len),
        _ => Err("not a JSON array".to_owned()),
    }
}

/// What data-processor returns for `n` records of the throughput bench: the bench's
/// records (`tests/benches/common/mod.rs`) with `processed` and `processed_at` added,
/// written by serde_json from maps (keys sorted), as the plugin writes them.
pub fn data_processor_output(n: usize) -> Vec<u8> {
    use serde_json::{json, Map, Value};
    const COUNTRIES: [&str; 6] = ["DE", "FR", "JP", "BR", "US", "KE"];
    let records: Vec<Map<String, Value>> = (0..n)
        .map(|i| {
            let mut record = match json!({
                "id": i,
                "name": format!("user {i}"),
                "email": format!("user{i}@example.com"),
                "phone": format!("+1 555 {:04} {:03}", i % 10_000, i % 1000),
                "country": COUNTRIES[i % COUNTRIES.len()],
                "score": (i % 100) as f64 / 7.0,
                "active": i % 3 != 0,
            }) {
                Value::Object(record) => record,
                _ => unreachable!("json! of an object is an object"),
            };
            record.insert("processed".to_owned(), Value::Bool(true));
            record.insert("processed_at".to_owned(), Value::from(1_764_489_600_000u64));
            record
        })
        .collect();
    serde_json::to_vec(&records).expect("records serialize")
}

/// serde_json's own verdict: parses as a `Value`, and that value is an array.
pub fn serde_json_verdict(bytes: &[u8]) -> Option<usize> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(records)) => Some(records.len()),
        _ => None,
    }
}
