//! `dedup`: drops every record it has seen before, across batches, keyed by the
//! field named in the config (`key`) or by the whole record. At cleanup it reports
//! what it kept and dropped, in the log and in the host's data store under
//! `dedup/stats` (`write:data`).

use std::collections::HashSet;

use plugbay::prelude::*;
use serde_json::{json, Value};

/// The plugin: the keys seen so far, and the counts.
#[derive(Default)]
#[plugbay::plugin]
pub struct Dedup {
    key: Option<String>,
    seen: HashSet<String>,
    kept: u64,
    dropped: u64,
}

impl Plugin for Dedup {
    type Input = Value;
    type Output = Value;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        self.key = ctx.config_field("key")?;
        Ok(())
    }

    fn process(&mut self, _ctx: &Context, batch: Vec<Value>) -> Result<Vec<Value>, Error> {
        let total = batch.len() as u64;
        let mut kept = Vec::with_capacity(batch.len());
        for record in batch {
            let key = match &self.key {
                Some(field) => record.get(field).map(Value::to_string).unwrap_or_default(),
                None => record.to_string(),
            };
            if self.seen.insert(key) {
                kept.push(record);
            }
        }
        self.dropped += total - kept.len() as u64;
        self.kept += kept.len() as u64;
        Ok(kept)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        let stats =
            json!({ "kept": self.kept, "dropped": self.dropped, "distinct": self.seen.len() });
        ctx.info(format_args!(
            "kept {} records, dropped {} duplicates",
            self.kept, self.dropped
        ));
        ctx.store_put("dedup/stats", stats.to_string().as_bytes())?;
        Ok(())
    }
}
