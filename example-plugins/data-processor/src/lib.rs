//! `data-processor`: marks each record `"processed": true` and stamps it with the time
//! its batch was processed (milliseconds since the Unix epoch).
//!
//! Config (all optional): `field` (default `processed`), `timestamp_field`
//! (default `processed_at`).

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            field: "processed".to_owned(),
            timestamp_field: "processed_at".to_owned(),
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        for record in &mut batch {
            record.insert(self.config.field.clone(), Value::Bool(true));
            record.insert(self.config.timestamp_field.clone(), Value::from(now));
        }
        self.records += batch.len() as u64;
        Ok(batch)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.info(format_args!("processed {} records", self.records));
        Ok(())
    }
}
