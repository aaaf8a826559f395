//! `plugbay register MANIFEST|DIR [--library PATH]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use plugbay_host::registry::Registration;

use super::{permission_list, print_json, Context};

/// Register a plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay register example-plugins/data-processor --library target/release/libdata_processor.so
  plugbay register my-plugin/plugin.json

The library is copied into the registry's store (`libraries/<sha256>/` in the home,
read-only) and that copy is inspected in a confined worker process: it must
load, be built against a compatible plugbay-api and embed exactly the manifest given
(every differing field is listed). The stored copy is what is reviewed and what runs:
rebuilding the plugin afterwards changes nothing registered. The plugin is `pending`
until `plugbay review approve ID`.")]
pub struct Args {
    /// The plugin's `plugin.json`, or the folder that holds it (its `${plugin_dir}`)
    #[arg(value_name = "MANIFEST|DIR")]
    pub manifest: PathBuf,
    /// The plugin's library [default: the manifest's `main`, in the manifest's folder]
    #[arg(long, value_name = "PATH")]
    pub library: Option<PathBuf>,
}

/// Registers the plugin and prints its entry.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let mut registry = context.create_registry()?;
    let host = context.host(&registry);
    if args.manifest.is_dir() && !args.manifest.join("plugin.json").is_file() {
        bail!(
            "folder {} has no plugin.json; pass the plugin's manifest or the folder that holds it",
            args.manifest.display()
        );
    }
    let registration = Registration::from_path(&args.manifest, args.library.as_deref())?;
    if args.library.is_none() && !registration.library.is_file() {
        bail!(
            "plugin library {} does not exist (the manifest's `main`, `{}`, in the manifest's folder); build the plugin, or pass the built library with `--library PATH`",
            registration.library.display(),
            registration.manifest.main
        );
    }
    let entry = registry.register(&host, registration, context.actor())?;
    if context.json {
        return print_json(&entry);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "registered {} (pending review)", entry.id)?;
    if let Some(source) = &entry.source {
        writeln!(out, "  from      {}", source.display())?;
    }
    writeln!(out, "  stored    {}", entry.library.display())?;
    writeln!(out, "  sha256    {}", entry.sha256)?;
    writeln!(
        out,
        "  requests  {}",
        permission_list(&entry.manifest.permissions)
    )?;
    writeln!(out, "next: plugbay review approve {}", entry.id)?;
    Ok(())
}
