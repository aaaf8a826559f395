//! `plugbay disable ID`

use std::io::Write;

use anyhow::Result;

use super::{print_json, Context};

/// Disable a plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay disable data-processor@1.0.0

A disabled plugin keeps its review; `plugbay enable ID` lets it run again.")]
pub struct Args {
    /// The plugin's id, `name@version`
    pub id: String,
}

/// Disables the plugin.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let entry = registry.disable(&args.id, context.actor())?;
    if context.json {
        return print_json(&entry);
    }
    writeln!(std::io::stdout().lock(), "disabled {}", entry.id)?;
    Ok(())
}
