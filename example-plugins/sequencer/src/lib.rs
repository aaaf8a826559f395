//! `sequencer`: gives every record `seq`, one more than the record before it, across
//! batches, restarts and live upgrades, and `by`, the id of the version that numbered
//! it. The count is state that must outlive an instance, so it travels through the
//! host's data store (`read:data`, `write:data`), under `sequencer/state`.
//!
//! This is the pattern for a plugin whose state survives an upgrade to its next
//! version (`plugbay upgrade sequencer@2.0.0`, `Host::upgrade`, a pipeline's
//! `StageSwitch`). The host starts the new version while the old one still serves,
//! switches at a batch boundary, runs the old version's `cleanup`, and only then
//! gives the new version its first batch. So:
//!
//! - `init` reads the stored state, and fails on state it cannot read (a format it
//!   does not know): the upgrade is then refused and the old version serves on;
//! - the first `process` reads it again, because the version it replaces has
//!   processed more batches since, and stored its final count at its `cleanup`;
//! - `cleanup` stores the state.
//!
//! A version that changes the state's shape bumps `format` and reads the old one too.

use plugbay::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where the state lives in the host's data store.
pub const STATE_KEY: &str = "sequencer/state";

/// The format of the stored state this version writes and reads.
pub const FORMAT: u32 = 1;

/// The stored state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    /// What shape the rest has.
    pub format: u32,
    /// The `seq` of the next record.
    pub next: u64,
}

/// The plugin: the next number, and whether it has taken up the stored state at its
/// first batch.
#[derive(Default)]
#[plugbay::plugin]
pub struct Sequencer {
    next: u64,
    resumed: bool,
    by: String,
}

impl Sequencer {
    /// Reads the stored state, if there is one; refuses one it cannot read.
    fn load(&mut self, ctx: &Context) -> Result<(), Error> {
        let Some(bytes) = ctx.store_get(STATE_KEY)? else {
            return Ok(());
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|err| Error::new(format!("cannot read the stored `{STATE_KEY}`: {err}")))?;
        if stored.format != FORMAT {
            return Err(Error::new(format!(
                "the stored `{STATE_KEY}` has format {}, and {} reads format {FORMAT} only",
                stored.format, self.by
            )));
        }
        self.next = stored.next;
        Ok(())
    }
}

impl Plugin for Sequencer {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        self.by = ctx.plugin_id().to_owned();
        self.load(ctx)
    }

    fn process(
        &mut self,
        ctx: &Context,
        mut batch: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, Error> {
        if !self.resumed {
            // The version this one replaced stored its final count at its cleanup.
            self.load(ctx)?;
            self.resumed = true;
        }
        for record in &mut batch {
            record.insert("seq".to_owned(), Value::from(self.next));
            record.insert("by".to_owned(), Value::from(self.by.as_str()));
            self.next += 1;
        }
        Ok(batch)
    }

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {
        let stored = Stored {
            format: FORMAT,
            next: self.next,
        };
        let bytes = serde_json::to_vec(&stored).map_err(|err| Error::new(err.to_string()))?;
        ctx.store_put(STATE_KEY, &bytes)?;
        ctx.info(format_args!("{} stored next = {}", self.by, self.next));
        Ok(())
    }
}
