//! `redactor`: masks e-mail addresses and phone numbers in every string of every
//! record, however deeply nested, and counts what it masked.
//!
//! Config (all optional): `mask` (default `[redacted]`), `emails` and `phones`
//! (booleans, default `true`).

use plugbay::prelude::*;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

/// The plugin.
#[derive(Default)]
#[plugbay::plugin]
pub struct Redactor {
    patterns: Vec<Regex>,
    mask: String,
    masked: u64,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    mask: String,
    emails: bool,
    phones: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mask: "[redacted]".to_owned(),
            emails: true,
            phones: true,
        }
    }
}

const EMAIL: &str = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}";
// International or local numbers of 7 or more digits, with the usual separators.
const PHONE: &str = r"\+?\d[\d\s().-]{5,}\d";

impl Plugin for Redactor {
    type Input = Value;
    type Output = Value;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        let config: Config = ctx.config()?;
        self.mask = config.mask;
        if config.emails {
            self.patterns.push(Regex::new(EMAIL)?);
        }
        if config.phones {
            self.patterns.push(Regex::new(PHONE)?);
        }
        Ok(())
    }

    fn process(&mut self, _ctx: &Context, mut batch: Vec<Value>) -> Result<Vec<Value>, Error> {
        for record in &mut batch {
            self.redact(record);
        }
        Ok(batch)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        ctx.info(format_args!("masked {} values", self.masked));
        Ok(())
    }
}

impl Redactor {
    fn redact(&mut self, value: &mut Value) {
        match value {
            Value::String(text) => {
                for pattern in &self.patterns {
                    let found = pattern.find_iter(text).count();
                    if found > 0 {
                        *text = pattern.replace_all(text, self.mask.as_str()).into_owned();
                        self.masked += found as u64;
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact(item)),
            Value::Object(fields) => fields.values_mut().for_each(|item| self.redact(item)),
            _ => {}
        }
    }
}
