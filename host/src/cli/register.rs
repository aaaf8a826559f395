//! `plugbay register MANIFEST|DIR [--library PATH] [--update]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use plugbay_host::registry::{Registration, Update};
use plugbay_host::LoadError;

use super::{locate, permission_list, print_json, revision, Context};

/// Register a plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay register example-plugins/data-processor --library target/release/libdata_processor.so
  plugbay register my-plugin/plugin.json
  plugbay register https://plugins.example.com/my-plugin/init
  cargo build --release && plugbay register my-plugin --update

The library is copied into the registry's store (`libraries/<sha256>/` in the home,
read-only) and that copy is inspected in a confined worker process: it must
load, be built against a compatible plugbay-api and embed exactly the manifest given
(every differing field is listed). The stored copy is what is reviewed and what runs:
rebuilding the plugin afterwards changes nothing registered. The plugin is `pending`
until `plugbay review approve ID`.

After a rebuild, `plugbay register DIR --update` registers the new library as the
plugin's next revision: its approval does not carry over to other code, so it is
pending review and disabled again, and `show` and `review approve` list what changed
since the revision that was reviewed. The same library again changes nothing.

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
    /// The plugin's library [default: the manifest's `main`, in the manifest's
    /// folder, else the newest that cargo built in `target/release` or `target/debug`]
    #[arg(long, value_name = "PATH")]
    pub library: Option<PathBuf>,
    /// If the id is registered already, register this library (a rebuild) as its next
    /// revision: pending review again and disabled, the previous revision kept for the
    /// reviewer to compare
    #[arg(long)]
    pub update: bool,
}

/// The library of a plugin folder that does not hold it: what cargo built, in the
/// `target/release` or `target/debug` folder of the plugin's crate or workspace (the
/// newest), under the manifest's `main` or the name cargo gives a `main` with `-`.
fn cargo_output(registration: &Registration) -> Result<PathBuf> {
    let manifest = &registration.manifest;
    let plugin_dir = &registration.plugin_dir;
    let written = manifest.library_file_name();
    let cargo_name = locate::cargo_file_name(manifest);
    let mut names = vec![written.clone()];
    names.extend(cargo_name.clone());
    let mut candidates = Vec::new();
    for name in &names {
        candidates.push(plugin_dir.join(name));
        candidates.extend(locate::cargo_candidates(plugin_dir, name));
    }
    let found = names.iter().find_map(|name| {
        let beside = plugin_dir.join(name);
        if beside.is_file() {
            return Some((name, beside));
        }
        locate::cargo_outputs(plugin_dir, name)
            .into_iter()
            .next()
            .map(|path| (name, path))
    });
    if let Some((name, library)) = found {
        if Some(name) == cargo_name.as_ref() {
            eprintln!(
                "warning: `main` is `{}`, but cargo turns `-` into `_` in library names: it builds {name}, not {written}; write `\"main\": \"{}\"` in plugin.json",
                manifest.main,
                manifest.main.replace('-', "_")
            );
        }
        if library.parent() != Some(plugin_dir.as_path()) {
            eprintln!(
                "using {}, the newest library cargo built for it",
                library.display()
            );
        }
        return Ok(library);
    }
    if let Some(err) = candidates
        .iter()
        .map(|path| LoadError::missing(path))
        .find(|err| matches!(err, LoadError::BuiltAsRlib { .. }))
    {
        return Err(err.into());
    }
    let hint = match &cargo_name {
        Some(cargo_name) => format!(
            " (cargo names a crate's library with `_` for `-`: {cargo_name} was looked for too)"
        ),
        None => String::new(),
    };
    bail!(
        "plugin library {} does not exist (the manifest's `main`, `{}`, in the manifest's folder), and cargo's target folder has none either{hint}; build the plugin (`cargo build --release`), or pass the built library with `--library PATH`",
        plugin_dir.join(&written).display(),
        manifest.main
    );
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
    let mut registry = context.create_registry()?;
    let host = context.host(&registry)?;
    if args.manifest.is_dir() && !args.manifest.join("plugin.json").is_file() {
        bail!(
            "folder {} has no plugin.json; pass the plugin's manifest or the folder that holds it",
            args.manifest.display()
        );
    }
    let mut registration = Registration::from_path(&args.manifest, args.library.as_deref())?;
    if args.library.is_none() && !registration.library.is_file() {
        registration.library = cargo_output(&registration)?;
    }
    let (entry, update) = if args.update {
        registry.update(&host, registration, context.actor())?
    } else {
        (
            registry.register(&host, registration, context.actor())?,
            Update::Registered,
        )
    };
    if context.json {
        return print_json(&entry);
    }
    let mut out = std::io::stdout().lock();
    match update {
        Update::Unchanged => {
            writeln!(
                out,
                "{} is unchanged: its library (sha256 {}) and manifest are the ones registered as revision {}",
                entry.id, entry.sha256, entry.revision
            )?;
            return Ok(());
        }
        Update::Registered => writeln!(out, "registered {} (pending review)", entry.id)?,
        Update::Revised => writeln!(
            out,
            "registered {} revision {} (pending review and disabled: an approval does not carry over to new code)",
            entry.id, entry.revision
        )?,
    }
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
    let data_dir = registry.data_dir().join(&entry.manifest.name);
    revision::write_changes(&mut out, &entry, &data_dir, 2)?;
    writeln!(out, "next: plugbay review approve {}", entry.id)?;
    Ok(())
}
