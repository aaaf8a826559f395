//! `data-processor`: the seed's example. Marks each record `"processed": true` and
//! stamps it with the time its batch was processed, as an ISO 8601 string in UTC
//! (`"timestamp": "2026-11-25T15:42:39.863Z"`, as JavaScript's `toISOString()` writes
//! it).
//!
//! Config (all optional): `field` (default `processed`), `timestamp_field` (default
//! `timestamp`), `timestamp_format`: `iso8601` (the default) or `epoch_millis`
//! (milliseconds since the Unix epoch, a number).

use std::time::SystemTime;

use plugbay::prelude::*;
use serde_json::{Map, Value};

mod transform;

use transform::Config;

/// The plugin: config from `init`, a count for `cleanup`.
#[derive(Default)]
#[plugbay::plugin]
pub struct DataProcessor {
    config: Config,
    records: u64,
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
        self.config.apply(&mut batch, SystemTime::now());
        self.records += batch.len() as u64;
        Ok(batch)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.info(format_args!("processed {} records", self.records));
        Ok(())
    }
}
