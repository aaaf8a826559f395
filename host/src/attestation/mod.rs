//! Signed reviews: an attestation is a reviewer's signed statement of what was
//! reviewed and what was decided, in a format an existing tool verifies on its own.
//!
//! The statement ([`Attestation`]) names the plugin, the SHA-256 of its library on
//! each platform, its manifest, the permissions granted, the isolation, the reviewer
//! and the time. It is written once as JSON, and those exact bytes are signed with the
//! reviewer's SSH key as an SSH signature (`sshsig`, the format `ssh-keygen -Y sign`
//! writes and git uses for signed commits), in the namespace [`NAMESPACE`]. Anyone
//! can check one with OpenSSH alone:
//!
//! ```text
//! ssh-keygen -Y verify -f allowed_signers -I alice -n plugbay-review -s attestation.json.sig < attestation.json
//! ```
//!
//! The operator's trusted reviewer keys live in that same `allowed_signers` file, in
//! the registry's home ([`TrustStore`]), so what Plugbay trusts and what the command
//! above checks are one file. Keys are ordinary OpenSSH key files: a reviewer makes
//! one with `ssh-keygen -t ed25519`; only Ed25519 keys are accepted.
//!
//! Signing and checking go through the `ssh-key` crate (RustCrypto); nothing here is
//! home-made cryptography.

mod platform;
mod trust;

use std::path::{Path, PathBuf};

use plugbay_api::manifest::{Manifest, Permission};
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

pub use platform::{Platform, PlatformError};
pub use trust::{read_public_key, TrustError, TrustStore, TrustedKey, ALLOWED_SIGNERS_FILE};

use crate::isolation::Isolation;

/// The SSH signature namespace of Plugbay reviews (`ssh-keygen -Y … -n plugbay-review`):
/// a signature made for anything else (a git commit, a file) is never taken for a
/// review, and a review signature is never taken for anything else.
pub const NAMESPACE: &str = "plugbay-review";

/// The `type` of an attestation this build writes and reads.
pub const ATTESTATION_TYPE: &str = "plugbay.review.v1";

/// A reviewer's statement: what was reviewed and what was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// [`ATTESTATION_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The plugin's id, `name@version`.
    pub plugin: String,
    /// The manifest that was reviewed (the one built into every library).
    pub manifest: Manifest,
    /// The library reviewed for each platform, by platform.
    pub libraries: Vec<AttestedLibrary>,
    /// The permissions granted.
    pub granted: Vec<Permission>,
    /// Where the plugin runs.
    pub isolation: Isolation,
    /// Who reviewed it: the name their key is trusted under (`allowed_signers`).
    pub reviewer: String,
    /// When (RFC 3339, UTC).
    pub reviewed_at: String,
    /// The SHA-256 fingerprint of the key that signs this statement
    /// (`SHA256:…`, as `ssh-keygen -l` prints it).
    pub key: String,
}

/// One platform's library, as attested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestedLibrary {
    /// `os/arch`.
    pub platform: Platform,
    /// Its file name.
    pub file: String,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

impl Attestation {
    /// The library attested for `platform`, if any.
    pub fn library_for(&self, platform: &Platform) -> Option<&AttestedLibrary> {
        self.libraries
            .iter()
            .find(|library| &library.platform == platform)
    }

    /// The platforms attested, in order.
    pub fn platforms(&self) -> Vec<Platform> {
        self.libraries
            .iter()
            .map(|library| library.platform.clone())
            .collect()
    }
}

/// Why signing or checking an attestation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The signing key file could not be read.
    #[error("cannot read signing key {path}: {source}; give an OpenSSH private key file made with `ssh-keygen -t ed25519`")]
    KeyUnreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ssh_key::Error,
    },
    /// The signing key is protected by a passphrase.
    #[error("signing key {path} is encrypted with a passphrase, which plugbay cannot prompt for; keep the review key unencrypted on the reviewer's machine (or a copy: `ssh-keygen -p -N '' -f COPY`)")]
    KeyEncrypted {
        /// The file.
        path: PathBuf,
    },
    /// The signing key is not an Ed25519 key.
    #[error("signing key {path} is a {algorithm} key; plugbay signs reviews with Ed25519 keys only: make one with `ssh-keygen -t ed25519 -f {}`", path.display())]
    KeyAlgorithm {
        /// The file.
        path: PathBuf,
        /// Its algorithm.
        algorithm: String,
    },
    /// Signing failed.
    #[error("cannot sign the attestation of `{id}`: {source}")]
    Sign {
        /// The plugin.
        id: String,
        /// The cause.
        source: ssh_key::Error,
    },
    /// The statement is not an attestation this build reads.
    #[error("the attestation is not valid: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The signature is not an SSH signature.
    #[error("the attestation's signature is not an SSH signature (`-----BEGIN SSH SIGNATURE-----`): {source}")]
    SignatureMalformed {
        /// The cause.
        source: ssh_key::Error,
    },
    /// The signature does not match the statement: the statement or the signature
    /// was changed after signing.
    #[error("the attestation's signature does not verify (by key {fingerprint}): the statement or its signature was changed after signing")]
    BadSignature {
        /// The fingerprint of the key in the signature.
        fingerprint: String,
    },
    /// The signature was made for another purpose.
    #[error("the attestation's signature was made in namespace `{found}`, not `{NAMESPACE}`: it is not a plugbay review")]
    WrongNamespace {
        /// The namespace found.
        found: String,
    },
    /// The statement names another key than the one that signed it.
    #[error("the attestation says it is signed by key {claimed} but the signature is by {actual}")]
    KeyMismatch {
        /// The key named in the statement.
        claimed: String,
        /// The key that signed.
        actual: String,
    },
}

/// A reviewer's signing key: an Ed25519 OpenSSH private key file.
pub struct SigningKey {
    key: PrivateKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads an unencrypted Ed25519 OpenSSH private key (`ssh-keygen -t ed25519 -N ''`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<SigningKey, AttestationError> {
        let path = path.as_ref().to_owned();
        let key = PrivateKey::read_openssh_file(&path).map_err(|source| match source {
            // This build reads Ed25519 keys only: any other algorithm is unknown to it.
            ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. } => {
                AttestationError::KeyAlgorithm {
                    path: path.clone(),
                    algorithm: "non-Ed25519".to_owned(),
                }
            }
            source => AttestationError::KeyUnreadable {
                path: path.clone(),
                source,
            },
        })?;
        if key.is_encrypted() {
            return Err(AttestationError::KeyEncrypted { path });
        }
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(AttestationError::KeyAlgorithm {
                path,
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(SigningKey { key, path })
    }

    /// Its public half.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `attestation` as JSON and signs those bytes.
    pub fn sign(&self, attestation: &Attestation) -> Result<SignedAttestation, AttestationError> {
        let mut statement =
            serde_json::to_vec_pretty(attestation).expect("an attestation always serializes");
        statement.push(b'\n');
        let signature = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, &statement)
            .and_then(|signature| signature.to_pem(LineEnding::LF))
            .map_err(|source| AttestationError::Sign {
                id: attestation.plugin.clone(),
                source,
            })?;
        Ok(SignedAttestation {
            statement,
            signature,
        })
    }
}

/// An attestation as signed: the statement's exact bytes and the armored SSH
/// signature over them (`-----BEGIN SSH SIGNATURE-----`). The statement is never
/// written again from its parsed form: what was signed is what travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAttestation {
    /// The statement, JSON.
    pub statement: Vec<u8>,
    /// The signature, armored.
    pub signature: String,
}

/// What checking a signed attestation against the trusted keys found.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Signed by a key the operator trusts, under the name the statement gives.
    Trusted {
        /// The statement.
        attestation: Attestation,
        /// The fingerprint of the key.
        fingerprint: String,
    },
    /// A sound signature by a key the operator does not trust (or trusts under
    /// another name than the statement's reviewer).
    Untrusted {
        /// The statement.
        attestation: Attestation,
        /// The fingerprint of the key.
        fingerprint: String,
        /// Why it is not trusted, for people.
        reason: String,
    },
}

impl Verdict {
    /// The statement.
    pub fn attestation(&self) -> &Attestation {
        match self {
            Verdict::Trusted { attestation, .. } | Verdict::Untrusted { attestation, .. } => {
                attestation
            }
        }
    }
}

impl SignedAttestation {
    /// The statement, parsed, without checking the signature.
    pub fn statement(&self) -> Result<Attestation, AttestationError> {
        parse_statement(&self.statement)
    }

    /// Checks the signature (any key), then whether its key is trusted for the
    /// statement's reviewer. A signature that does not verify, or was made in another
    /// namespace, or by another key than the statement names, is an error: the
    /// artifact was tampered with.
    pub fn verify(&self, trust: &TrustStore) -> Result<Verdict, AttestationError> {
        let signature = SshSig::from_pem(self.signature.as_bytes())
            .map_err(|source| AttestationError::SignatureMalformed { source })?;
        let signer = PublicKey::from(signature.public_key().clone());
        let fingerprint = signer.fingerprint(HashAlg::Sha256).to_string();
        if signature.namespace() != NAMESPACE {
            return Err(AttestationError::WrongNamespace {
                found: signature.namespace().to_owned(),
            });
        }
        signer
            .verify(NAMESPACE, &self.statement, &signature)
            .map_err(|_| AttestationError::BadSignature {
                fingerprint: fingerprint.clone(),
            })?;
        let attestation = parse_statement(&self.statement)?;
        if attestation.key != fingerprint {
            return Err(AttestationError::KeyMismatch {
                claimed: attestation.key.clone(),
                actual: fingerprint,
            });
        }
        let principals = trust.principals_for(&signer);
        if principals.iter().any(|name| *name == attestation.reviewer) {
            return Ok(Verdict::Trusted {
                attestation,
                fingerprint,
            });
        }
        let reason = if principals.is_empty() {
            format!(
                "key {fingerprint} of reviewer `{}` is not among the trusted reviewer keys ({}); `plugbay trust add {} KEY.pub` trusts it",
                attestation.reviewer,
                trust.path().display(),
                attestation.reviewer
            )
        } else {
            format!(
                "key {fingerprint} is trusted as {}, but the attestation names reviewer `{}`",
                principals
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                attestation.reviewer
            )
        };
        Ok(Verdict::Untrusted {
            attestation,
            fingerprint,
            reason,
        })
    }
}

fn parse_statement(bytes: &[u8]) -> Result<Attestation, AttestationError> {
    let attestation: Attestation =
        serde_json::from_slice(bytes).map_err(|err| AttestationError::Malformed {
            reason: err.to_string(),
        })?;
    let malformed = |reason: String| Err(AttestationError::Malformed { reason });
    if attestation.kind != ATTESTATION_TYPE {
        return malformed(format!(
            "its type is `{}`, not `{ATTESTATION_TYPE}`; a newer plugbay may read it",
            attestation.kind
        ));
    }
    if attestation.plugin != attestation.manifest.id() {
        return malformed(format!(
            "it names plugin `{}` but its manifest is `{}`",
            attestation.plugin,
            attestation.manifest.id()
        ));
    }
    if attestation.libraries.is_empty() {
        return malformed("it attests no library".to_owned());
    }
    for (index, library) in attestation.libraries.iter().enumerate() {
        let is_hex = library.sha256.len() == 64
            && library
                .sha256
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex {
            return malformed(format!(
                "libraries[{index}].sha256 `{}` is not a SHA-256 in lowercase hex",
                library.sha256
            ));
        }
        if attestation.libraries[..index]
            .iter()
            .any(|other| other.platform == library.platform)
        {
            return malformed(format!("platform {} is attested twice", library.platform));
        }
        if library.file.is_empty() || library.file.contains(['/', '\\']) || library.file == ".." {
            return malformed(format!(
                "libraries[{index}].file `{}` is not a plain file name",
                library.file
            ));
        }
    }
    if let Some(extra) = attestation
        .granted
        .iter()
        .find(|grant| !attestation.manifest.permissions.contains(grant))
    {
        return malformed(format!(
            "it grants `{extra}`, which the manifest does not request"
        ));
    }
    Ok(attestation)
}

/// Whether `bytes` (a library) hold `manifest` exactly as the plugin macro builds it
/// in (its compact JSON): how a library for another platform, which cannot be loaded
/// here, is checked against the manifest that was reviewed.
pub fn embeds_manifest(bytes: &[u8], manifest: &Manifest) -> bool {
    let needle = manifest.to_json();
    let needle = needle.as_bytes();
    !needle.is_empty() && bytes.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest() -> Manifest {
        Manifest::parse(
            r#"{"name": "shouter", "version": "1.0.0", "description": "shouts", "author": "a",
                "main": "shouter", "hooks": ["process"], "permissions": ["process:data", "read:data"]}"#,
        )
        .unwrap()
    }

    pub(crate) fn test_key(dir: &Path) -> SigningKey {
        let key = PrivateKey::from_openssh(TEST_KEY).unwrap();
        let path = dir.join("reviewer");
        key.write_openssh_file(&path, LineEnding::LF).unwrap();
        SigningKey::from_file(&path).unwrap()
    }

    /// An Ed25519 key made with `ssh-keygen -t ed25519 -N '' -C reviewer`, for unit tests.
    const TEST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCR8ckBDlwwHLIDbuaii6HPEnPvX+fj40mUER8Hijdq0wAAAJDBL7c0wS+3
NAAAAAtzc2gtZWQyNTUxOQAAACCR8ckBDlwwHLIDbuaii6HPEnPvX+fj40mUER8Hijdq0w
AAAECtyvyymhfoj9QLlhZF34bBVfK2tZsRa3aRHDMK9oQQE5HxyQEOXDAcsgNu5qKLoc8S
c+9f5+PjSZQRHweKN2rTAAAACHJldmlld2VyAQIDBAU=
-----END OPENSSH PRIVATE KEY-----
";

    pub(crate) fn attestation(key: &SigningKey) -> Attestation {
        let manifest = manifest();
        Attestation {
            kind: ATTESTATION_TYPE.to_owned(),
            plugin: manifest.id(),
            libraries: vec![AttestedLibrary {
                platform: "linux/amd64".parse().unwrap(),
                file: "libshouter.so".to_owned(),
                sha256: "ab".repeat(32),
            }],
            granted: vec!["process:data".parse().unwrap()],
            manifest,
            isolation: Isolation::Process,
            reviewer: "alice".to_owned(),
            reviewed_at: "2026-01-01T00:00:00.000Z".to_owned(),
            key: key.fingerprint(),
        }
    }

    #[test]
    fn a_signed_attestation_verifies_with_a_trusted_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(dir.path());
        let signed = key.sign(&attestation(&key)).unwrap();
        assert!(signed
            .signature
            .starts_with("-----BEGIN SSH SIGNATURE-----"));
        let mut trust = TrustStore::open(dir.path()).unwrap();
        match signed.verify(&trust).unwrap() {
            Verdict::Untrusted { reason, .. } => {
                assert!(reason.contains("plugbay trust add alice"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        trust.add("alice", key.public_key()).unwrap();
        assert!(matches!(
            signed.verify(&trust).unwrap(),
            Verdict::Trusted { .. }
        ));
        // Trusted under another name: not for this reviewer.
        let mut other = TrustStore::open(dir.path().join("other")).unwrap();
        other.add("bob", key.public_key()).unwrap();
        match signed.verify(&other).unwrap() {
            Verdict::Untrusted { reason, .. } => assert!(reason.contains("`bob`"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_changed_statement_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(dir.path());
        let mut signed = key.sign(&attestation(&key)).unwrap();
        let text = String::from_utf8(signed.statement.clone()).unwrap();
        signed.statement = text.replace("\"process\"", "\"thread\"").into_bytes();
        let trust = TrustStore::open(dir.path()).unwrap();
        let err = signed.verify(&trust).unwrap_err();
        assert!(
            matches!(err, AttestationError::BadSignature { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_statement_granting_more_than_requested_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(dir.path());
        let mut statement = attestation(&key);
        statement.granted.push("write:data".parse().unwrap());
        let signed = key.sign(&statement).unwrap();
        let err = signed.statement().unwrap_err().to_string();
        assert!(err.contains("`write:data`"), "{err}");
    }

    #[test]
    fn a_foreign_library_is_checked_for_the_manifest_it_embeds() {
        let manifest = manifest();
        let mut bytes = b"MZ\x90\x00 some code ".to_vec();
        assert!(!embeds_manifest(&bytes, &manifest));
        bytes.extend_from_slice(manifest.to_json().as_bytes());
        bytes.extend_from_slice(b" more");
        assert!(embeds_manifest(&bytes, &manifest));
    }
}
