//! What changed from a plugin's previous revision to the one registered now, as a
//! reviewer reads it (`register --update`, `show`, `review approve`).

use std::io::{self, Write};
use std::path::Path;

use plugbay_host::registry::{Entry, ReviewStatus};

use super::permission_with_path;

/// `revision 1 (approved by alice at …)`: the previous revision and its review.
pub fn previous_summary(entry: &Entry) -> Option<String> {
    let previous = entry.previous.as_ref()?;
    let review = &previous.review;
    let by = match (&review.reviewer, &review.reviewed_at) {
        (Some(reviewer), Some(at)) => format!(" by {reviewer} at {at}"),
        _ => String::new(),
    };
    Some(format!(
        "revision {} ({}{by})",
        previous.revision,
        match review.status {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
        }
    ))
}

/// Writes what changed since the previous revision, one line per change, each
/// indented by `indent`; nothing for a first revision.
pub fn write_changes(
    out: &mut impl Write,
    entry: &Entry,
    data_dir: &Path,
    indent: usize,
) -> io::Result<()> {
    let (Some(changes), Some(summary)) = (entry.changes(), previous_summary(entry)) else {
        return Ok(());
    };
    let pad = " ".repeat(indent);
    writeln!(out, "{pad}changes since {summary}:")?;
    let with_path = |permission| permission_with_path(permission, &entry.plugin_dir, data_dir);
    if let Some((before, now)) = &changes.library {
        writeln!(out, "{pad}  library      sha256 {before} → {now}")?;
    }
    for permission in &changes.added {
        writeln!(out, "{pad}  requests     + {}", with_path(permission))?;
    }
    for permission in &changes.removed {
        writeln!(out, "{pad}  requests     - {}", with_path(permission))?;
    }
    for difference in &changes.fields {
        writeln!(
            out,
            "{pad}  {:<12} {} → {}",
            difference.field, difference.built_in, difference.given
        )?;
    }
    let unchanged = changes.library.is_none()
        && changes.added.is_empty()
        && changes.removed.is_empty()
        && changes.fields.is_empty();
    if unchanged {
        writeln!(
            out,
            "{pad}  the plugin's folder: {}",
            entry.plugin_dir.display()
        )?;
    }
    Ok(())
}
