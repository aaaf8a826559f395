//! `plugbay enable ID`

use std::io::Write;

use anyhow::Result;

use super::{permission_list, print_json, Context};

/// Enable a plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay enable data-processor@1.0.0

Only an approved plugin whose library still has the SHA-256 that was reviewed can be
enabled.")]
pub struct Args {
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
}

/// Enables the plugin.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let id = registry.resolve(&args.id)?;
    let entry = registry.enable(&id, context.actor())?;
    if context.json {
        return print_json(&entry);
    }
    writeln!(
        std::io::stdout().lock(),
        "enabled {} (granted {})",
        entry.id,
        permission_list(&entry.review.granted)
    )?;
    Ok(())
}
