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
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
}

/// Disables the plugin.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let id = registry.resolve(&args.id)?;
    let entry = registry.disable(&id, context.actor())?;
    if context.json {
        return print_json(&entry);
    }
    writeln!(std::io::stdout().lock(), "disabled {}", entry.id)?;
    Ok(())
}
