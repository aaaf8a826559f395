//! `plugbay show ID`

use std::io::Write;

use anyhow::Result;
use plugbay_host::registry::{sha256_file, AuditEvent, Entry, ReviewStatus};
use serde::Serialize;

use super::table::Table;
use super::{hook_list, permission_list_with_paths, print_json, Context};

/// Show one plugin.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay show data-processor@1.0.0
  plugbay --json show data-processor@1.0.0 | jq .review

`library_sha256_now` is the library's hash as it is now (`missing` if the file is
gone): a plugin whose library changed since its review will not run. A permission whose
path starts with `${plugin_dir}` or `${data_dir}` is followed by the path it grants.")]
pub struct Args {
    /// The plugin's id, `name@version`, or its name when it has one registered
    /// version or one enabled
    pub id: String,
}

/// A plugin's entry, the library's hash now, and its audit history.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    library_sha256_now: String,
    /// The signed attestation of the current approval, if any.
    #[cfg(feature = "market")]
    attestation: Option<plugbay_host::registry::StoredAttestation>,
    audit: Vec<AuditEvent>,
}

/// Prints the plugin's entry and history.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let registry = context.registry()?;
    let entry = registry.get(&registry.resolve(&args.id)?)?;
    let audit = registry.audit_log(Some(&entry.id))?;
    let library_sha256_now = match sha256_file(&entry.library) {
        Ok(hash) => hash,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => "missing".to_owned(),
        Err(err) => format!("unreadable: {err}"),
    };
    #[cfg(feature = "market")]
    let attestation = registry.attestation(&entry.id)?;
    if context.json {
        return print_json(&Shown {
            entry: &entry,
            library_sha256_now,
            #[cfg(feature = "market")]
            attestation: attestation.clone(),
            audit,
        });
    }
    let manifest = &entry.manifest;
    let data_dir = plugbay_host::sandbox::plugin_data_dir(
        &registry.data_dir(),
        &manifest.name,
        &manifest.version,
    );
    let permissions = |list| permission_list_with_paths(list, &entry.plugin_dir, &data_dir);
    let mut out = std::io::stdout().lock();
    let mut field = |name: &str, value: &str| writeln!(out, "{name:<12} {value}");
    field("id", &entry.id)?;
    field("description", &manifest.description)?;
    field("author", &manifest.author)?;
    if let Some(website) = &manifest.website {
        field("website", website)?;
    }
    field("library", &entry.library.display().to_string())?;
    if let Some(source) = &entry.source {
        field("from", &source.display().to_string())?;
    }
    let hash_state = if library_sha256_now == entry.sha256 {
        "unchanged since registration".to_owned()
    } else {
        format!("CHANGED since registration: now {library_sha256_now}")
    };
    field("sha256", &format!("{} ({hash_state})", entry.sha256))?;
    field("plugin dir", &entry.plugin_dir.display().to_string())?;
    field("hooks", &hook_list(&manifest.hooks))?;
    if let Some(requirement) = &manifest.api_version {
        field("api version", &requirement.to_string())?;
    }
    if let Some(timeout) = manifest.timeout_ms {
        field("timeout", &format!("{timeout} ms per call"))?;
    }
    field("requests", &permissions(&manifest.permissions))?;
    let review = &entry.review;
    let reviewed = match (&review.reviewer, &review.reviewed_at) {
        (Some(reviewer), Some(at)) => format!(" by {reviewer} at {at}"),
        _ => String::new(),
    };
    let review_text = match review.status {
        ReviewStatus::Pending => "pending".to_owned(),
        ReviewStatus::Approved => format!("approved{reviewed}"),
        ReviewStatus::Rejected => format!(
            "rejected{reviewed}: {}",
            review.reason.as_deref().unwrap_or("no reason recorded")
        ),
    };
    field("review", &review_text)?;
    if review.status == ReviewStatus::Approved {
        field("granted", &permissions(&review.granted))?;
        let isolation = review.isolation.unwrap_or(plugbay_host::Isolation::Process);
        field("isolation", isolation.as_str())?;
        #[cfg(feature = "market")]
        field(
            "signed",
            &match &attestation {
                Some(stored) => format!(
                    "by {} with key {}{} (`plugbay attestation {}`)",
                    stored.reviewer,
                    stored.fingerprint,
                    stored
                        .origin
                        .as_deref()
                        .map(|origin| format!(", installed from {origin}"))
                        .unwrap_or_default(),
                    entry.id
                ),
                None => "no: a local approval, not publishable".to_owned(),
            },
        )?;
    }
    field("enabled", if entry.enabled { "yes" } else { "no" })?;
    let current = match registry.current(&manifest.name)? {
        _ if entry.current => "yes: batches sent to its name reach it".to_owned(),
        Some(current) => format!(
            "no: the current version is {} (`plugbay upgrade {}` makes this one current)",
            current.id, entry.id
        ),
        None => format!(
            "no: {} has no current version (`plugbay upgrade {}` makes this one current)",
            manifest.name, entry.id
        ),
    };
    field("current", &current)?;
    if let Some(config) = &entry.config {
        field("config", &config.to_string())?;
    }
    field("registered", &entry.created_at)?;
    field("updated", &entry.updated_at)?;
    field("revision", &entry.revision.to_string())?;
    super::revision::write_changes(&mut out, &entry, &data_dir, 0)?;
    writeln!(out, "history")?;
    let mut table = Table::new(&["AT", "BY", "ACTION", "DETAIL"]).indent(2);
    for event in &audit {
        table.row(vec![
            event.at.clone(),
            event.actor.clone(),
            event.action.clone(),
            event.detail.clone().unwrap_or_default(),
        ]);
    }
    table.write(&mut out)?;
    Ok(())
}
