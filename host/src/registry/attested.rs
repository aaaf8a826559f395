//! Signed reviews in the registry: an approval signed with the reviewer's key, the
//! attestation kept beside it, and plugins registered from an attestation someone
//! else signed (installed from a marketplace).
//!
//! An attestation belongs to one approval: its row records the `reviewed_at` of the
//! approval it was made for, and [`Registry::attestation`] gives it only while the
//! plugin is still approved with that approval, the same library, grants and
//! isolation. A new approval (signed or not), a rejection or an unregister makes an
//! older row stale, whatever path changed the review.

use std::path::{Path, PathBuf};

use plugbay_api::manifest::Permission;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{audit, check_id, now, Entry, Registration, Registry, RegistryError, ReviewStatus};
use crate::attestation::{
    embeds_manifest, Attestation, AttestationError, AttestedLibrary, Platform, SignedAttestation,
    SigningKey, ATTESTATION_TYPE,
};
use crate::image::hex;
use crate::isolation::Isolation;
use crate::runtime::Host;

/// Why a signed review, or a registration from an attestation, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Signing or checking the attestation failed.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// A library for another platform cannot be attested.
    #[error("cannot attest library {path} for {platform}: {reason}")]
    PlatformLibrary {
        /// The platform.
        platform: Platform,
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The registered library does not have the attested SHA-256.
    #[error("the library of `{id}` has sha256 {actual}, but the attestation says {expected}; nothing was registered")]
    DigestMismatch {
        /// The plugin.
        id: String,
        /// The attested digest.
        expected: String,
        /// The digest of the library.
        actual: String,
    },
    /// The attestation does not cover this platform.
    #[error("the attestation of `{id}` has no library for this host's platform {platform} (it attests {attested})")]
    NoLibraryForPlatform {
        /// The plugin.
        id: String,
        /// This host's platform.
        platform: Platform,
        /// The platforms it attests.
        attested: String,
    },
}

/// A plugin's attestation, as kept in the registry.
#[derive(Debug, Clone, Serialize)]
pub struct StoredAttestation {
    /// The statement, parsed.
    pub attestation: Attestation,
    /// The statement's exact bytes and the signature, as signed.
    #[serde(skip)]
    pub signed: SignedAttestation,
    /// The reviewer who signed (the name their key is trusted under).
    pub reviewer: String,
    /// The signing key's fingerprint.
    pub fingerprint: String,
    /// Where it was installed from (`None`: signed in this registry).
    pub origin: Option<String>,
}

impl Registry {
    /// Approves a plugin as [`approve_with_isolation`](Registry::approve_with_isolation)
    /// does, and signs an attestation of that approval with `key`: the plugin, its
    /// manifest, the library reviewed here and `other_platforms`' libraries (each
    /// checked to be a library of its platform that embeds the plugin's manifest), the
    /// grants, the isolation, the reviewer and the time. The attestation is kept with
    /// the approval ([`attestation`](Registry::attestation)).
    pub fn approve_signed(
        &mut self,
        id: &str,
        reviewer: &str,
        grants: Option<Vec<Permission>>,
        isolation: Isolation,
        key: &SigningKey,
        other_platforms: &[(Platform, PathBuf)],
    ) -> Result<(Entry, SignedAttestation), AttestError> {
        let current = self.get(id)?;
        let mut libraries = Vec::with_capacity(other_platforms.len() + 1);
        let here = Platform::current();
        for (platform, path) in other_platforms {
            let refuse = |reason: String| AttestError::PlatformLibrary {
                platform: platform.clone(),
                path: path.clone(),
                reason,
            };
            if *platform == here {
                return Err(refuse(format!(
                    "{platform} is this host's platform, whose library is the registered one ({}); give libraries of other platforms only",
                    current.library.display()
                )));
            }
            if libraries
                .iter()
                .any(|library: &AttestedLibrary| &library.platform == platform)
            {
                return Err(refuse(format!("{platform} is given twice")));
            }
            libraries.push(foreign_library(&current, platform, path).map_err(refuse)?);
        }
        let entry = self.approve_with_isolation(id, reviewer, grants, isolation)?;
        let file = entry
            .library
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| entry.manifest.library_file_name());
        libraries.push(AttestedLibrary {
            platform: here,
            file,
            sha256: entry.review.reviewed_sha256.clone().unwrap_or_default(),
        });
        libraries.sort_by(|a, b| a.platform.cmp(&b.platform));
        let attestation = Attestation {
            kind: ATTESTATION_TYPE.to_owned(),
            plugin: entry.id.clone(),
            manifest: entry.manifest.clone(),
            libraries,
            granted: entry.review.granted.clone(),
            isolation,
            reviewer: reviewer.to_owned(),
            reviewed_at: entry.review.reviewed_at.clone().unwrap_or_default(),
            key: key.fingerprint(),
        };
        let signed = key.sign(&attestation)?;
        let review_at = attestation.reviewed_at.clone();
        self.write(|tx| {
            keep_attestation(
                tx,
                id,
                &review_at,
                &signed,
                reviewer,
                &key.fingerprint(),
                None,
            )?;
            audit(
                tx,
                reviewer,
                "sign",
                Some(id),
                Some(&format!(
                    "attestation signed with key {} for {}",
                    key.fingerprint(),
                    attestation
                        .platforms()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            )
        })?;
        Ok((entry, signed))
    }

    /// The attestation of a plugin's current approval, if it has one: `None` when the
    /// plugin is not approved, or was approved without a signature, or its approval
    /// changed since the attestation was made.
    pub fn attestation(&self, id: &str) -> Result<Option<StoredAttestation>, RegistryError> {
        check_id(id)?;
        let entry = self.get(id)?;
        let row = self
            .connection()
            .query_row(
                "SELECT review_at, statement, signature, reviewer, fingerprint, origin
                 FROM attestations WHERE plugin_id = ?1",
                [id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((review_at, statement, signature, reviewer, fingerprint, origin)) = row else {
            return Ok(None);
        };
        if entry.review.status != ReviewStatus::Approved
            || entry.review.reviewed_at.as_deref() != Some(review_at.as_str())
        {
            return Ok(None);
        }
        let signed = SignedAttestation {
            statement,
            signature,
        };
        let Ok(attestation) = signed.statement() else {
            return Ok(None);
        };
        if !covers(&attestation, &entry) {
            return Ok(None);
        }
        Ok(Some(StoredAttestation {
            attestation,
            signed,
            reviewer,
            fingerprint,
            origin,
        }))
    }

    /// Registers a plugin from a marketplace whose attestation `signed` was verified
    /// against a trusted key (whose fingerprint is `fingerprint`): registers `registration` (its library copied into the store and
    /// inspected, as any registration, which checks that it embeds the attested
    /// manifest), checks that the stored library has the attested SHA-256 for this
    /// platform, then approves it with the attested grants and isolation, for the
    /// attested reviewer, and keeps the attestation. A failed check leaves nothing
    /// registered.
    pub fn install_attested(
        &mut self,
        host: &Host,
        registration: Registration,
        signed: &SignedAttestation,
        fingerprint: &str,
        origin: &str,
        actor: &str,
    ) -> Result<Entry, AttestError> {
        let attestation = &signed.statement()?;
        let id = attestation.plugin.clone();
        let here = Platform::current();
        let attested =
            attestation
                .library_for(&here)
                .ok_or_else(|| AttestError::NoLibraryForPlatform {
                    id: id.clone(),
                    platform: here.clone(),
                    attested: platform_list(attestation),
                })?;
        let entry = self.register(host, registration, actor)?;
        if entry.sha256 != attested.sha256 {
            self.unregister(&id, actor)?;
            return Err(AttestError::DigestMismatch {
                id,
                expected: attested.sha256.clone(),
                actual: entry.sha256,
            });
        }
        let approved = self.approve_with_isolation(
            &id,
            &attestation.reviewer,
            Some(attestation.granted.clone()),
            attestation.isolation,
        );
        let entry = match approved {
            Ok(entry) => entry,
            Err(err) => {
                self.unregister(&id, actor)?;
                return Err(err.into());
            }
        };
        let review_at = entry.review.reviewed_at.clone().unwrap_or_default();
        self.write(|tx| {
            keep_attestation(
                tx,
                &id,
                &review_at,
                signed,
                &attestation.reviewer,
                fingerprint,
                Some(origin),
            )?;
            tx.execute(
                "UPDATE plugins SET source = ?2 WHERE id = ?1",
                params![id, origin],
            )?;
            audit(
                tx,
                actor,
                "install",
                Some(&id),
                Some(&format!(
                    "from {origin}; approved by reviewer {} (key {fingerprint}) at {}: granted {}; isolation {}",
                    attestation.reviewer,
                    attestation.reviewed_at,
                    super::list_permissions(&attestation.granted),
                    attestation.isolation
                )),
            )
        })?;
        Ok(self.get(&id)?)
    }

    /// Records where a registered plugin's library came from (a URL or an OCI
    /// reference it was downloaded from), in place of the temporary file it was
    /// registered from.
    pub fn record_origin(
        &mut self,
        id: &str,
        origin: &str,
        detail: &str,
        actor: &str,
    ) -> Result<Entry, RegistryError> {
        check_id(id)?;
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET source = ?2 WHERE id = ?1",
                params![id, origin],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound { id: id.to_owned() });
            }
            audit(
                tx,
                actor,
                "download",
                Some(id),
                Some(&format!("from {origin}; {detail}")),
            )
        })?;
        self.get(id)
    }
}

/// Whether `attestation` states exactly `entry`'s current approval.
fn covers(attestation: &Attestation, entry: &Entry) -> bool {
    let mut granted = entry.review.granted.clone();
    granted.sort();
    let mut attested = attestation.granted.clone();
    attested.sort();
    attestation.plugin == entry.id
        && attestation
            .library_for(&Platform::current())
            .is_some_and(|library| {
                Some(library.sha256.as_str()) == entry.review.reviewed_sha256.as_deref()
            })
        && granted == attested
        && Some(attestation.isolation) == entry.review.isolation
}

fn keep_attestation(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    review_at: &str,
    signed: &SignedAttestation,
    reviewer: &str,
    fingerprint: &str,
    origin: Option<&str>,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO attestations (plugin_id, review_at, statement, signature, reviewer, fingerprint, origin, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (plugin_id) DO UPDATE SET review_at = ?2, statement = ?3, signature = ?4,
             reviewer = ?5, fingerprint = ?6, origin = ?7, created_at = ?8",
        params![
            id,
            review_at,
            signed.statement,
            signed.signature,
            reviewer,
            fingerprint,
            origin,
            now()
        ],
    )?;
    Ok(())
}

fn platform_list(attestation: &Attestation) -> String {
    attestation
        .platforms()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a library built for another platform and checks what can be checked here:
/// that it is a library of that platform, and that it embeds the plugin's manifest.
fn foreign_library(
    entry: &Entry,
    platform: &Platform,
    path: &Path,
) -> Result<AttestedLibrary, String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read it: {err}"))?;
    platform.check_format(&bytes)?;
    if !embeds_manifest(&bytes, &entry.manifest) {
        return Err(format!(
            "it does not embed the manifest of `{}` as the registered library does; build it from the same source and plugin.json",
            entry.id
        ));
    }
    Ok(AttestedLibrary {
        platform: platform.clone(),
        file: platform.library_file_name(&entry.manifest.main),
        sha256: hex(&Sha256::digest(&bytes)),
    })
}
