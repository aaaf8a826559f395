//! `enricher`: adds fields to each record from a lookup table read at `init` from a
//! file shipped beside the plugin. Its manifest asks for exactly that file
//! (`fs:read:${plugin_dir}/lookup.json`): the sandbox lets it read nothing else.
//!
//! Config: `lookup` (the file, relative to the plugin's directory; default
//! `lookup.json`) and `key` (the record field to look up;
//! default `country`).

use std::collections::HashMap;

use plugbay::prelude::*;
use serde_json::{Map, Value};

/// The plugin: the lookup table and the field to match.
#[derive(Default)]
#[plugbay::plugin]
pub struct Enricher {
    key: String,
    table: HashMap<String, Map<String, Value>>,
}

impl Plugin for Enricher {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        self.key = ctx
            .config_field("key")?
            .unwrap_or_else(|| "country".to_owned());
        let file: String = ctx
            .config_field("lookup")?
            .unwrap_or_else(|| "lookup.json".to_owned());
        let path = ctx.plugin_dir().join(&file);
        let text = std::fs::read_to_string(&path).map_err(|err| {
            Error::new(format_args!(
                "cannot read lookup file {}: {err}",
                path.display()
            ))
        })?;
        self.table = serde_json::from_str(&text).map_err(|err| {
            Error::new(format_args!(
                "lookup file {} is not a JSON object of objects: {err}",
                path.display()
            ))
        })?;
        ctx.info(format_args!(
            "loaded {} lookup entries from {}",
            self.table.len(),
            path.display()
        ));
        Ok(())
    }

    fn process(
        &mut self,
        _ctx: &Context,
        mut batch: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, Error> {
        for record in &mut batch {
            let extra = record
                .get(&self.key)
                .and_then(Value::as_str)
                .and_then(|key| self.table.get(key));
            if let Some(extra) = extra {
                for (field, value) in extra {
                    record.entry(field.clone()).or_insert_with(|| value.clone());
                }
            }
        }
        Ok(batch)
    }
}
