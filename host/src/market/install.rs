//! From a pulled artifact or a downloaded file to a registry entry: the checks that
//! need the trust store and the registry, after every digest was checked.

use std::path::{Path, PathBuf};

use plugbay_api::manifest::Manifest;
use serde::Serialize;

use super::fetch::Download;
use super::oci::Fetched;
use super::MarketError;
use crate::attestation::{Platform, TrustStore, Verdict};
use crate::registry::{Entry, Registration, Registry};
use crate::runtime::Host;

/// How an installed plugin was registered.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Approved, as a trusted reviewer attested.
    Approved {
        /// The reviewer.
        reviewer: String,
        /// Their key.
        fingerprint: String,
    },
    /// Pending a local review.
    Pending {
        /// Why the attestation was not taken (none, or an untrusted key).
        reason: String,
    },
}

/// An installed plugin: its registry entry, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// The registry entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Where it came from.
    pub reference: String,
    /// The digest of what the reference named.
    pub digest: String,
    /// The platforms the artifact offers.
    pub platforms: Vec<Platform>,
    /// Approved or pending.
    pub outcome: Outcome,
}

/// The `${plugin_dir}` of a plugin that came from a marketplace or a URL: a folder of
/// its own in the home (`plugins/NAME/VERSION`), made by [`keep_manifest`] once the
/// plugin is registered.
pub(crate) fn plugin_dir(home: &Path, manifest: &Manifest) -> PathBuf {
    home.join("plugins")
        .join(&manifest.name)
        .join(manifest.version.to_string())
}

/// Makes a registered plugin's `${plugin_dir}` and writes its `plugin.json` there.
pub(crate) fn keep_manifest(entry: &Entry) -> Result<(), MarketError> {
    let dir = &entry.plugin_dir;
    let io = |source| MarketError::Io {
        action: "write",
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("plugin.json"), entry.manifest.to_json()).map_err(io)
}

/// Registers a fetched plugin as its attestation allows: approved with the attested
/// grants and isolation when a trusted reviewer signed it, pending when it has no
/// attestation or one by an untrusted key; refused, with nothing stored, when the
/// signature does not verify or the attestation disagrees with what was pulled.
pub fn install(
    registry: &mut Registry,
    host: &Host,
    fetched: &Fetched,
    trust: &TrustStore,
    actor: &str,
) -> Result<Installed, MarketError> {
    let shown = fetched.reference.to_string();
    let verdict = match &fetched.signed {
        None => None,
        Some(signed) => Some(
            signed
                .verify(trust)
                .map_err(|source| MarketError::BadSignature {
                    reference: shown.clone(),
                    source,
                })?,
        ),
    };
    if let Some(verdict) = &verdict {
        let attestation = verdict.attestation();
        let tampered = |reason: String| MarketError::Tampered {
            reference: shown.clone(),
            reason,
        };
        if attestation.manifest != fetched.manifest {
            return Err(tampered(format!(
                "its plugin manifest is not the one attested for `{}`",
                attestation.plugin
            )));
        }
        let here = Platform::current();
        match attestation.library_for(&here) {
            None => {
                return Err(tampered(format!(
                    "its {here} library is not attested (the attestation covers {})",
                    attestation
                        .platforms()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(library) if library.sha256 != fetched.library_sha256 => {
                return Err(tampered(format!(
                    "its {here} library has sha256 {}, but reviewer `{}` attested {} (a tag moved, or a blob was replaced, after signing)",
                    fetched.library_sha256, attestation.reviewer, library.sha256
                )))
            }
            Some(_) => {}
        }
    }
    let registration = Registration {
        manifest: fetched.manifest.clone(),
        library: fetched.library.clone(),
        plugin_dir: plugin_dir(registry.home(), &fetched.manifest),
    };
    let (entry, outcome) = match verdict {
        Some(Verdict::Trusted {
            attestation,
            fingerprint,
        }) => {
            let signed = fetched.signed.as_ref().expect("a verdict has a signature");
            let entry = registry.install_attested(
                host,
                registration,
                signed,
                &fingerprint,
                &shown,
                actor,
            )?;
            let outcome = Outcome::Approved {
                reviewer: attestation.reviewer,
                fingerprint,
            };
            (entry, outcome)
        }
        other => {
            let reason = match other {
                Some(Verdict::Untrusted { reason, .. }) => reason,
                _ => "it has no signed attestation".to_owned(),
            };
            let entry = registry.register(host, registration, actor)?;
            let entry = registry.record_origin(
                &entry.id,
                &shown,
                &format!("digest {}; pending: {reason}", fetched.digest),
                actor,
            )?;
            (entry, Outcome::Pending { reason })
        }
    };
    keep_manifest(&entry)?;
    Ok(Installed {
        entry,
        reference: shown,
        digest: fetched.digest.clone(),
        platforms: fetched.platforms.clone(),
        outcome,
    })
}

/// Registers a fetched plugin pending review, whatever its attestation says, as a
/// registration from a local file would be (an OCI `entry_point`).
pub fn register_fetched(
    registry: &mut Registry,
    host: &Host,
    fetched: &Fetched,
    manifest: Manifest,
    actor: &str,
) -> Result<Entry, MarketError> {
    let registration = Registration {
        plugin_dir: plugin_dir(registry.home(), &manifest),
        manifest,
        library: fetched.library.clone(),
    };
    let entry = registry.register(host, registration, actor)?;
    keep_manifest(&entry)?;
    Ok(registry.record_origin(
        &entry.id,
        &fetched.reference.to_string(),
        &format!("digest {}", fetched.digest),
        actor,
    )?)
}

/// Registers a downloaded library pending review: inspects it for its embedded
/// manifest (or takes `manifest`, which registration checks against it), stores it
/// under the file name its manifest gives, and records the URL it came from.
pub fn register_download(
    registry: &mut Registry,
    host: &Host,
    download: &Download,
    manifest: Option<Manifest>,
    actor: &str,
) -> Result<Entry, MarketError> {
    let manifest = match manifest {
        Some(manifest) => manifest,
        None => {
            host.inspect(&download.path)
                .map_err(crate::registry::RegistryError::from)?
                .manifest
        }
    };
    let library = name_after(&download.path, &manifest)?;
    let registration = Registration {
        plugin_dir: plugin_dir(registry.home(), &manifest),
        manifest,
        library,
    };
    let entry = registry.register(host, registration, actor)?;
    keep_manifest(&entry)?;
    Ok(registry.record_origin(
        &entry.id,
        &download.url,
        &format!(
            "{} bytes from {}, sha256 {}",
            download.size, download.final_url, download.sha256
        ),
        actor,
    )?)
}

/// Renames a downloaded library to the file name its manifest gives (in the same
/// folder), so that the store keeps it under that name.
pub(crate) fn name_after(path: &Path, manifest: &Manifest) -> Result<PathBuf, MarketError> {
    let named = path.with_file_name(manifest.library_file_name());
    if named != path {
        std::fs::rename(path, &named).map_err(|source| MarketError::Io {
            action: "rename",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(named)
}
