//! `plugbay keys create|list|revoke`: API keys for `plugbay serve`.

use std::io::Write;

use anyhow::Result;
use plugbay_host::registry::{ApiKey, Scope};
use serde::Serialize;

use super::table::Table;
use super::{print_json, Context};

/// Manage API keys.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a key; its token is printed once, and only its hash is stored
    #[command(after_help = "\
Examples:
  plugbay keys create --name ci --scope plugins:read --scope plugins:execute
  TOKEN=$(plugbay keys create --name ops --scope plugins:read plugins:write)

Scopes: plugins:read, plugins:write, plugins:review, plugins:execute, plugins:install
(install from a marketplace), plugins:publish (publish to one).
The token goes to stdout alone; the note about it goes to stderr.")]
    Create(CreateArgs),
    /// List the keys (never their tokens)
    #[command(after_help = "\
Examples:
  plugbay keys list")]
    List,
    /// Revoke a key, by id or by name
    #[command(after_help = "\
Examples:
  plugbay keys revoke ci
  plugbay keys revoke 3f9c2a4b7d1e8f60")]
    Revoke(RevokeArgs),
}

/// `keys create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A name for people (unique among active keys)
    #[arg(long, value_name = "N")]
    pub name: String,
    /// What the key may do: plugins:read, plugins:write, plugins:review, plugins:execute,
    /// plugins:install, plugins:publish
    #[arg(long = "scope", value_name = "S", required = true, num_args = 1..)]
    pub scopes: Vec<Scope>,
}

/// `keys revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The key's id or name
    #[arg(value_name = "ID|NAME")]
    pub key: String,
}

#[derive(Debug, Serialize)]
struct Created {
    key: ApiKey,
    token: String,
}

/// Runs the key command.
pub fn exec(command: Command, context: &Context) -> Result<()> {
    let mut registry = match command {
        Command::Create(_) => context.create_registry()?,
        _ => context.registry()?,
    };
    match command {
        Command::Create(args) => {
            let (key, token) = registry.create_key(&args.name, &args.scopes, context.actor())?;
            if context.json {
                return print_json(&Created { key, token });
            }
            eprintln!(
                "created API key {} ({}) with scopes {}; the token below is shown only now, store it",
                key.id,
                key.name,
                scope_list(&key)
            );
            writeln!(std::io::stdout().lock(), "{token}")?;
        }
        Command::List => {
            let keys = registry.list_keys()?;
            if context.json {
                return print_json(&keys);
            }
            let mut out = std::io::stdout().lock();
            if keys.is_empty() {
                writeln!(
                    out,
                    "no API keys; create one with `plugbay keys create --name N --scope S`"
                )?;
                return Ok(());
            }
            let mut table = Table::new(&["ID", "NAME", "SCOPES", "CREATED", "REVOKED"]);
            for key in &keys {
                table.row(vec![
                    key.id.clone(),
                    key.name.clone(),
                    scope_list(key),
                    key.created_at.clone(),
                    key.revoked_at.clone().unwrap_or_else(|| "-".to_owned()),
                ]);
            }
            table.write(&mut out)?;
        }
        Command::Revoke(args) => {
            let key = registry.revoke_key(&args.key, context.actor())?;
            if context.json {
                return print_json(&key);
            }
            writeln!(
                std::io::stdout().lock(),
                "revoked API key {} ({})",
                key.id,
                key.name
            )?;
        }
    }
    Ok(())
}

fn scope_list(key: &ApiKey) -> String {
    key.scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
