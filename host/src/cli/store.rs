//! `plugbay store list|get|delete`: the data store of the registry's home
//! (`store.db`), where plugins granted `write:data` keep what they write through
//! `store_put`, from `plugbay run` and `plugbay serve` alike.

use std::io::Write;

use anyhow::{bail, Result};
use plugbay_host::registry::SqliteStore;
use plugbay_host::DataStore;
use serde::Serialize;

use super::table::Table;
use super::{print_json, Context};

/// Read and delete what plugins keep in the data store.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the keys (with a prefix, those that start with it)
    #[command(after_help = "\
Examples:
  plugbay store list
  plugbay store list dedup/
  plugbay --json store list")]
    List(ListArgs),
    /// Print the value of a key, as the plugin wrote it
    #[command(after_help = "\
Examples:
  plugbay store get dedup/stats
  plugbay --json store get dedup/stats | jq -r .value

The value goes to stdout byte for byte, without a newline added. With `--json` it is
a string, for values that are UTF-8 text.")]
    Get(KeyArgs),
    /// Delete a key
    #[command(after_help = "\
Examples:
  plugbay store delete dedup/stats")]
    Delete(KeyArgs),
}

/// `store list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the keys that start with this
    #[arg(value_name = "PREFIX", default_value = "")]
    pub prefix: String,
}

/// `store get` and `store delete`.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The key, as the plugin wrote it (plugins namespace their keys: `dedup/stats`)
    #[arg(value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Serialize)]
struct Value<'a> {
    key: &'a str,
    value: &'a str,
    size: usize,
    updated_at: &'a str,
}

#[derive(Debug, Serialize)]
struct Deleted<'a> {
    key: &'a str,
    deleted: bool,
}

/// Runs the store command.
pub fn exec(command: Command, context: &Context) -> Result<()> {
    let home = context.home()?;
    let store = SqliteStore::open(&home)?;
    match command {
        Command::List(args) => list(&store, &args.prefix, context),
        Command::Get(args) => get(&store, &args.key, context),
        Command::Delete(args) => delete(&store, &args.key, context),
    }
}

fn missing(store: &SqliteStore, key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no key `{key}` in the data store {}; `plugbay store list` shows the keys",
        store.path().display()
    )
}

fn list(store: &SqliteStore, prefix: &str, context: &Context) -> Result<()> {
    let keys = store.list(prefix)?;
    if context.json {
        return print_json(&keys);
    }
    let mut out = std::io::stdout().lock();
    if keys.is_empty() {
        let which = if prefix.is_empty() {
            String::new()
        } else {
            format!(" starting with `{prefix}`")
        };
        writeln!(
            out,
            "no keys{which} in the data store {}; plugins granted `write:data` add them with `store_put`",
            store.path().display()
        )?;
        return Ok(());
    }
    let mut table = Table::new(&["KEY", "SIZE", "UPDATED"]);
    for stored in &keys {
        table.row(vec![
            stored.key.clone(),
            format!("{} B", super::thousands(stored.size)),
            stored.updated_at.clone(),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}

fn get(store: &SqliteStore, key: &str, context: &Context) -> Result<()> {
    let Some(stored) = store.get_with_time(key)? else {
        return Err(missing(store, key));
    };
    if context.json {
        let Ok(text) = std::str::from_utf8(&stored.value) else {
            bail!(
                "the value of `{key}` ({} bytes) is not UTF-8 text, so it has no JSON string; print it without `--json`",
                stored.value.len()
            );
        };
        return print_json(&Value {
            key,
            value: text,
            size: stored.value.len(),
            updated_at: &stored.updated_at,
        });
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&stored.value)?;
    out.flush()?;
    Ok(())
}

fn delete(store: &SqliteStore, key: &str, context: &Context) -> Result<()> {
    if !store.delete(key)? {
        return Err(missing(store, key));
    }
    if context.json {
        return print_json(&Deleted { key, deleted: true });
    }
    writeln!(std::io::stdout().lock(), "deleted {key}")?;
    Ok(())
}
