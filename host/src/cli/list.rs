//! `plugbay list`

use std::io::Write;

use anyhow::Result;
use plugbay_host::registry::{Registry, RegistryError};

use super::table::Table;
use super::{print_json, Context};

/// List the registered plugins.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay list
  plugbay --json list")]
pub struct Args {}

/// Prints every registered plugin, by id.
pub fn exec(_args: Args, context: &Context) -> Result<()> {
    let registry = match Registry::open_existing(context.home()?) {
        Ok(registry) => registry,
        // Nothing registered, and nothing created by looking.
        Err(RegistryError::NoRegistry { home }) => {
            if context.json {
                return print_json(&[(); 0]);
            }
            writeln!(
                std::io::stdout().lock(),
                "no plugins: there is no registry in {} yet; `plugbay register MANIFEST` creates it",
                home.display()
            )?;
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let entries = registry.list()?;
    if context.json {
        return print_json(&entries);
    }
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        writeln!(
            out,
            "no plugins in {}; add one with `plugbay register MANIFEST`",
            registry.path().display()
        )?;
        return Ok(());
    }
    let mut table = Table::new(&["ID", "REVIEW", "ENABLED", "CURRENT", "DESCRIPTION"]);
    for entry in &entries {
        table.row(vec![
            entry.id.clone(),
            entry.review.status.to_string(),
            if entry.enabled { "yes" } else { "no" }.to_owned(),
            if entry.current { "yes" } else { "" }.to_owned(),
            entry.manifest.description.clone(),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}
