//! `plugbay unregister ID`

use std::io::Write;

use anyhow::Result;

use super::{print_json, Context};

/// Unregister a plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay unregister data-processor@1.0.0

The plugin's entry is removed; its history stays in the audit log. Its files are not
touched.")]
pub struct Args {
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
}

/// Removes the plugin and prints the entry it had.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let id = registry.resolve(&args.id)?;
    let entry = registry.unregister(&id, context.actor())?;
    if context.json {
        return print_json(&entry);
    }
    writeln!(std::io::stdout().lock(), "unregistered {}", entry.id)?;
    Ok(())
}
