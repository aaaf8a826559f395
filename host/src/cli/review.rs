//! `plugbay review approve ID [--grant PERM]...` and `plugbay review reject ID --reason TEXT`

use std::io::Write;

use anyhow::Result;
use plugbay_host::{Isolation, Permission};

use super::table::Table;
use super::{permission_list, permission_with_path, print_json, Context};

/// Review a plugin.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Approve a plugin: shows the permissions it requests and records those granted
    #[command(after_help = "\
Examples:
  plugbay review approve data-processor@1.0.0
  plugbay review approve enricher@1.0.0 --grant process:data
  plugbay review approve x@1.0.0 --grant process:data --grant 'fs:read:${plugin_dir}/x.json'
  plugbay review approve my-own@1.0.0 --isolation thread

A permission whose path starts with `${plugin_dir}` or `${data_dir}` is shown with the
path it grants. Without `--grant`, every requested permission is granted. A grant the
manifest does not request is an error. The plugin runs in a worker process of its own
unless `--isolation thread` is given: a worker thread of the host is faster for tiny
batches but shares the host's memory and descriptors, so approve it only for code you
trust. The approval records the reviewer, the time, the isolation and the library's
SHA-256: if the library changes afterwards, the plugin will not run.")]
    Approve(ApproveArgs),
    /// Reject a plugin, with a reason; it is disabled and cannot be enabled
    #[command(after_help = "\
Examples:
  plugbay review reject prober@0.1.0 --reason 'opens sockets it does not need'")]
    Reject(RejectArgs),
}

/// `review approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
    /// A permission to grant (repeat it; only requested permissions can be granted)
    /// [default: every requested permission]
    #[arg(long = "grant", value_name = "PERM")]
    pub grants: Vec<Permission>,
    /// Who reviewed it [default: $USER]
    #[arg(long, value_name = "NAME")]
    pub reviewer: Option<String>,
    /// Where it runs: `process` (a worker process of its own: for any plugin you do
    /// not trust as your own code) or `thread` (a worker thread of the host: faster
    /// for tiny batches, for trusted plugins only)
    #[arg(long, value_name = "ISOLATION", default_value = "process")]
    pub isolation: Isolation,
}

/// `review reject`.
#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
    /// Why it is rejected
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Who reviewed it [default: $USER]
    #[arg(long, value_name = "NAME")]
    pub reviewer: Option<String>,
}

/// Runs the review.
pub fn exec(command: Command, context: &Context) -> Result<()> {
    match command {
        Command::Approve(args) => approve(args, context),
        Command::Reject(args) => reject(args, context),
    }
}

fn approve(args: ApproveArgs, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let reviewer = args.reviewer.as_deref().unwrap_or(context.actor());
    let grants = (!args.grants.is_empty()).then_some(args.grants);
    let id = registry.resolve(&args.id)?;
    let entry = registry.approve_with_isolation(&id, reviewer, grants, args.isolation)?;
    if context.json {
        return print_json(&entry);
    }
    let data_dir = plugbay_host::sandbox::plugin_data_dir(
        &registry.data_dir(),
        &entry.manifest.name,
        &entry.manifest.version,
    );
    let mut out = std::io::stdout().lock();
    super::revision::write_changes(&mut out, &entry, &data_dir, 0)?;
    writeln!(out, "{} requests:", entry.id)?;
    let added = entry
        .changes()
        .map(|changes| changes.added)
        .unwrap_or_default();
    let mut table = Table::new(&["PERMISSION", "DECISION"]).indent(2);
    for permission in &entry.manifest.permissions {
        let granted = entry.review.granted.contains(permission);
        let new = if added.contains(permission) {
            " (new in this revision)"
        } else {
            ""
        };
        table.row(vec![
            format!(
                "{}{new}",
                permission_with_path(permission, &entry.plugin_dir, &data_dir)
            ),
            if granted { "granted" } else { "not granted" }.to_owned(),
        ]);
    }
    table.write(&mut out)?;
    writeln!(
        out,
        "approved {} by {reviewer}: granted {}, isolation {} (library sha256 {})",
        entry.id,
        permission_list(&entry.review.granted),
        args.isolation,
        entry.review.reviewed_sha256.as_deref().unwrap_or("unknown")
    )?;
    if !entry.enabled {
        writeln!(out, "next: plugbay enable {}", entry.id)?;
    }
    Ok(())
}

fn reject(args: RejectArgs, context: &Context) -> Result<()> {
    let mut registry = context.registry()?;
    let reviewer = args.reviewer.as_deref().unwrap_or(context.actor());
    let id = registry.resolve(&args.id)?;
    let entry = registry.reject(&id, reviewer, &args.reason)?;
    if context.json {
        return print_json(&entry);
    }
    writeln!(
        std::io::stdout().lock(),
        "rejected {} by {reviewer}: {}",
        entry.id,
        args.reason.trim()
    )?;
    Ok(())
}
