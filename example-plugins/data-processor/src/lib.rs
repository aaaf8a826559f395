//! `data-processor`: the seed's example. Marks each record `"processed": true` and
//! stamps it with the time its batch was processed, as an ISO 8601 string in UTC
//! (`"timestamp": "2026-11-25T15:42:39.863Z"`, as JavaScript's `toISOString()` writes
//! it).
//!
//! Config (all optional): `field` (default `processed`), `timestamp_field` (default
//! `timestamp`), `timestamp_format`: `iso8601` (the default) or `epoch_millis`
//! (milliseconds since the Unix epoch, a number).

use std::time::{SystemTime, UNIX_EPOCH};

use plugbay::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The plugin: config from `init`, a count for `cleanup`.
#[derive(Default)]
#[plugbay::plugin]
pub struct DataProcessor {
    config: Config,
    records: u64,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
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

impl Plugin for DataProcessor {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        self.config = ctx.config()?;
        Ok(())
    }

    fn process(
        &mut self,
        _ctx: &Context,
        mut batch: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, Error> {
        let stamp = self.config.timestamp_format.stamp(SystemTime::now());
        for record in &mut batch {
            record.insert(self.config.field.clone(), Value::Bool(true));
            record.insert(self.config.timestamp_field.clone(), stamp.clone());
        }
        self.records += batch.len() as u64;
        Ok(batch)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.info(format_args!("processed {} records", self.records));
        Ok(())
    }
}
