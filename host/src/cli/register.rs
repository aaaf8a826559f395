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
  plugbay register https://plugins.example.com/my-plugin/init

The library is copied into the registry's store (`libraries/<sha256>/` in the home,
read-only) and that copy is inspected in a confined worker process: it must
load, be built against a compatible plugbay-api and embed exactly the manifest given
(every differing field is listed). The stored copy is what is reviewed and what runs:
rebuilding the plugin afterwards changes nothing registered. The plugin is `pending`
until `plugbay review approve ID`.

An `https://` or `http://` URL is downloaded (at most 256 MiB, within 60 s, at most 5
redirects and never from https to http) and registered from its embedded manifest, as a
local library would be; `oci://HOST/NAMESPACE/NAME:VERSION` pulls this platform's
library from an OCI registry and registers it pending review, ignoring any attestation
(`plugbay install` is the command that takes one). `file:` URLs are local paths.")]
pub struct Args {
    /// The plugin's `plugin.json`, or the folder that holds it (its `${plugin_dir}`), or
    /// a URL to download the library from
    #[arg(value_name = "MANIFEST|DIR|URL")]
    pub manifest: PathBuf,
    /// The plugin's library [default: the manifest's `main`, in the manifest's folder]
    #[arg(long, value_name = "PATH")]
    pub library: Option<PathBuf>,
}

/// Registers the plugin and prints its entry.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    #[cfg(feature = "market")]
    if let Some(location) = args.manifest.to_str().filter(|text| {
        plugbay_host::market::is_http_url(text) || text.starts_with(plugbay_host::market::SCHEME)
    }) {
        if args.library.is_some() {
            bail!("`--library` is for a local manifest; a plugin registered from {location} is the library downloaded from there");
        }
        return super::market::register_remote(location, context);
    }
    let mut registry = context.registry()?;
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
