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
SHA-256: if the library changes afterwards, the plugin will not run.

With `--signing-key` (an Ed25519 OpenSSH key, `ssh-keygen -t ed25519`), the approval
is also signed: an attestation of the plugin, its manifest, the SHA-256 of its library
on each platform (this one, and each `--platform-library`), the grants, the isolation,
the reviewer and the time, which `plugbay publish` ships with the plugin and
`plugbay attestation ID` shows. Example:
  plugbay review approve x@1.0.0 --signing-key ~/.ssh/review_ed25519 --reviewer alice \
      --platform-library windows/amd64=target/x86_64-pc-windows-gnu/release/x.dll")]
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
    /// Sign the approval with this Ed25519 OpenSSH private key
    #[cfg(feature = "market")]
    #[arg(long, value_name = "KEY", env = "PLUGBAY_SIGNING_KEY")]
    pub signing_key: Option<std::path::PathBuf>,
    /// The plugin's library for another platform, attested with the signature
    /// (repeat it; needs `--signing-key`)
    #[cfg(feature = "market")]
    #[arg(
        long = "platform-library",
        value_name = "OS/ARCH=PATH",
        requires = "signing_key"
    )]
    pub platform_libraries: Vec<super::market::PlatformLibrary>,
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
    #[cfg(feature = "market")]
    if let Some(key) = &args.signing_key {
        let signed = super::market::SignedApproval {
            id: &id,
            reviewer,
            grants,
            isolation: args.isolation,
            key,
            platform_libraries: &args.platform_libraries,
        };
        return super::market::approve_signed(&mut registry, signed, context);
    }
    let entry = registry.approve_with_isolation(&id, reviewer, grants, args.isolation)?;
    if context.json {
        return print_json(&entry);
    }
    print_approval(&registry, &entry, reviewer, args.isolation)?;
    if !entry.enabled {
        writeln!(
            std::io::stdout().lock(),
            "next: plugbay enable {}",
            entry.id
        )?;
    }
    Ok(())
}

/// Prints what an approval granted (and what changed since the last revision).
pub(super) fn print_approval(
    registry: &plugbay_host::registry::Registry,
    entry: &plugbay_host::registry::Entry,
    reviewer: &str,
    isolation: Isolation,
) -> Result<()> {
    let data_dir = plugbay_host::sandbox::plugin_data_dir(
        &registry.data_dir(),
        &entry.manifest.name,
        &entry.manifest.version,
    );
    let mut out = std::io::stdout().lock();
    super::revision::write_changes(&mut out, entry, &data_dir, 0)?;
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
        isolation,
        entry.review.reviewed_sha256.as_deref().unwrap_or("unknown")
    )?;
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
