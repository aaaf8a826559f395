//! What `data-processor` does to a batch, apart from the plugin around it: its config
//! and the stamp it puts on each record.
//!
//! This file depends on serde, serde_json and humantime only, and reads no clock
//! itself (the caller passes the time), so that the peer benchmark
//! (`tests/peer-bench`) compiles this very code into the in-host baseline, a
//! WebAssembly plugin and a subprocess plugin, and compares them with this plugin on
//! the same work.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The plugin's config (all optional).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    field: String,
    timestamp_field: String,
    timestamp_format: TimestampFormat,
}

/// How the timestamp is written.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum TimestampFormat {
    /// `"2026-11-25T15:42:39.863Z"`.
    #[default]
    Iso8601,
    /// `1795620250831`.
    EpochMillis,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            field: "processed".to_owned(),
            timestamp_field: "timestamp".to_owned(),
            timestamp_format: TimestampFormat::Iso8601,
        }
    }
}

impl TimestampFormat {
    fn stamp(self, now: SystemTime) -> Value {
        match self {
            TimestampFormat::Iso8601 => {
                Value::String(humantime::format_rfc3339_millis(now).to_string())
            }
            TimestampFormat::EpochMillis => Value::from(
                now.duration_since(UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_millis() as u64)
                    .unwrap_or(0),
            ),
        }
    }
}

impl Config {
    /// Marks each record of `batch` with the config's field (`true`) and stamps it
    /// with `now`, the time the batch is processed.
    pub fn apply(&self, batch: &mut [Map<String, Value>], now: SystemTime) {
        let stamp = self.timestamp_format.stamp(now);
        for record in batch {
            record.insert(self.field.clone(), Value::Bool(true));
            record.insert(self.timestamp_field.clone(), stamp.clone());
        }
    }
}
