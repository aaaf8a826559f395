//! `plugbay inspect LIBRARY`

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plugbay_host::loader::host_api_version;
use plugbay_host::{Host, Inspection, LoadError, StartError};
use serde::Serialize;

use super::{hook_list, permission_list, print_json, Context};

/// Inspect a library.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay inspect target/release/libdata_processor.so
  plugbay --json inspect target/release/libdata_processor.so | jq .manifest.permissions

The library is opened on a thread that landlock confines to reading the library (as
when it runs), so `confinement` is what this kernel gives plugins.")]
pub struct Args {
    /// The plugin library (`lib….so`, `….dll`, `lib….dylib`)
    pub library: PathBuf,
}

/// Inspects `library` on a confined thread; a missing file is reported before any
/// sandbox is built for it.
pub fn inspect(host: &Host, library: &Path) -> Result<Inspection, StartError> {
    if !library.is_file() {
        return Err(StartError::Load(LoadError::missing(
            &std::path::absolute(library).unwrap_or_else(|_| library.to_owned()),
        )));
    }
    host.inspect(library)
}

#[derive(Debug, Serialize)]
struct Inspected {
    #[serde(flatten)]
    inspection: Inspection,
    host_api_version: String,
}

/// Prints what the library embeds.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    // The library is untrusted: it is opened in a worker process, never here.
    let host = Host::new()
        .with_sandbox(context.sandbox)
        .with_isolation(plugbay_host::Isolation::Process);
    let inspection = inspect(&host, &args.library)?;
    let inspected = Inspected {
        inspection,
        host_api_version: host_api_version().to_string(),
    };
    if context.json {
        return print_json(&inspected);
    }
    let Inspected {
        inspection,
        host_api_version,
    } = &inspected;
    let manifest = &inspection.manifest;
    let mut out = std::io::stdout().lock();
    let mut field = |name: &str, value: &str| writeln!(out, "{name:<12} {value}");
    field("library", &inspection.library.display().to_string())?;
    field("sha256", &inspection.sha256)?;
    field("plugin", &format!("{}@{}", manifest.name, manifest.version))?;
    field("description", &manifest.description)?;
    field("author", &manifest.author)?;
    field(
        "plugbay-api",
        &format!(
            "{} (this host: {host_api_version}, compatible)",
            inspection.api_version
        ),
    )?;
    field("hooks", &hook_list(&manifest.hooks))?;
    field("requests", &permission_list(&manifest.permissions))?;
    if let Some(config) = &manifest.config {
        field("config", &config.to_string())?;
    }
    field("confinement", &inspection.confinement.to_string())?;
    Ok(())
}
