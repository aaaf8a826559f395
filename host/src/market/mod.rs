//! The marketplace: any OCI registry. Publish a reviewed, signed plugin there as one
//! artifact; install it on other hosts, checking every digest and the reviewer's
//! signature; list what a marketplace offers; and register a plugin from a URL.
//!
//! # The artifact
//!
//! A published plugin is one OCI artifact per version, tagged with the version (`+`
//! written `_`): for each platform an image manifest whose `artifactType` is
//! [`ARTIFACT_TYPE`], whose config blob is the plugin's `plugin.json`
//! ([`MANIFEST_MEDIA_TYPE`]) and whose layers are the library
//! ([`LIBRARY_MEDIA_TYPE`], its file name in `org.opencontainers.image.title`), the
//! attestation ([`ATTESTATION_MEDIA_TYPE`]) and its SSH signature
//! ([`SIGNATURE_MEDIA_TYPE`]). With more than one platform, the tag names an image
//! index whose entries carry each manifest's `platform`. Any tool that speaks OCI
//! (`oras`, `crane`, `skopeo`) can copy, mirror or inspect it; Plugbay stores and
//! serves nothing of its own.
//!
//! # Install
//!
//! [`Market::fetch`] pulls the manifest for this host's platform and its blobs,
//! checking the SHA-256 of every one against its descriptor and every size against
//! a limit, into a temporary folder in the registry's home. [`install`] then checks
//! the attestation: a signature that does not verify, an attestation whose library
//! digest or manifest differs from what was pulled, or a plugin other than the one
//! the reference names is refused, and nothing is stored; a sound signature by a
//! trusted reviewer key registers the plugin approved with the attested grants and
//! isolation; no signature, or one by a key that is not trusted, registers it
//! pending a local review. Registration itself inspects the library and refuses one
//! that does not embed the attested manifest.
//!
//! # Transport
//!
//! HTTPS, with the system's certificate roots, except to registries on loopback
//! (`localhost`, `127.0.0.0/8`, `[::1]`), which are spoken to in plain HTTP as Docker
//! does, or when [`MarketOptions::plain_http`] says so. The signature, not the
//! transport, is what makes an artifact trusted. Registry credentials come from
//! [`MarketOptions::credentials`], else from the Docker config file
//! (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`, with its credential
//! helpers), else none.
//!
//! The HTTP clients use rustls with the *ring* provider. rustls needs one provider
//! for the process: if the program has not installed one, the first client made
//! here installs *ring*'s as the process default.

mod artifact;
mod fetch;
mod install;
mod oci;
mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use artifact::{
    ARTIFACT_TYPE, ATTESTATION_MEDIA_TYPE, LIBRARY_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    SIGNATURE_MEDIA_TYPE,
};
pub use fetch::{download, is_http_url, Download, DownloadLimits};
pub use install::{install, register_download, register_fetched, Installed, Outcome};
#[cfg(feature = "server")]
pub(crate) use install::{keep_manifest, name_after, plugin_dir};
pub use oci::{Fetched, Market, Offer, OfferTrust, PublishBundle, Published};
pub use reference::{is_loopback, version_tag, MarketplaceRef, PluginRef, SCHEME};

use crate::attestation::{AttestationError, Platform, TrustError};
use crate::registry::{AttestError, RegistryError};

/// The environment variable naming the default marketplace (`oci://HOST/NAMESPACE`),
/// where `plugbay install NAME@VERSION` looks.
pub const MARKETPLACE_ENV: &str = "PLUGBAY_MARKETPLACE";

/// Why a marketplace operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// A reference could not be read.
    #[error("invalid marketplace reference `{given}`: {reason}")]
    InvalidReference {
        /// What was given.
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// `NAME@VERSION` without a default marketplace.
    #[error("`{given}` names no marketplace; give `oci://HOST/NAMESPACE/NAME:VERSION`, or set the default marketplace with `--marketplace oci://HOST/NAMESPACE` or `{MARKETPLACE_ENV}`")]
    NoMarketplace {
        /// What was given.
        given: String,
    },
    /// The registry could not be reached or refused a request.
    #[error("registry {registry}: cannot {action}: {reason}")]
    Registry {
        /// `HOST[:PORT]`.
        registry: String,
        /// What was being done.
        action: String,
        /// The cause.
        reason: String,
    },
    /// The artifact is not a Plugbay plugin, or not a well-formed one.
    #[error("{reference} is not a plugbay plugin artifact: {reason}")]
    NotAPlugin {
        /// The reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing was published for this host's platform.
    #[error("{reference} has no library for this host's platform {platform} (it has {offered})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// This host's platform.
        platform: Platform,
        /// What it has.
        offered: String,
    },
    /// A blob or manifest does not have the digest it was asked for by.
    #[error("{reference}: {what} has digest {actual}, not {expected} as its descriptor says; it was changed in the registry or in transit; nothing was stored")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// Which blob.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest received.
        actual: String,
    },
    /// A blob is larger than allowed.
    #[error("{reference}: {what} is larger than the limit of {limit} bytes; nothing was stored")]
    TooLarge {
        /// The reference.
        reference: String,
        /// Which blob.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The artifact contradicts its own attestation, or names another plugin than
    /// the reference: it was tampered with, or a tag was moved.
    #[error("{reference} was refused: {reason}; nothing was stored")]
    Tampered {
        /// The reference.
        reference: String,
        /// What does not agree.
        reason: String,
    },
    /// The attestation's signature does not verify.
    #[error("{reference} was refused: {source}; nothing was stored")]
    BadSignature {
        /// The reference.
        reference: String,
        /// Why.
        source: AttestationError,
    },
    /// The plugin cannot be published (not approved, or approved without a signature,
    /// or a platform's library is missing).
    #[error("cannot publish `{id}`: {reason}")]
    NotPublishable {
        /// The plugin.
        id: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The tag already names another artifact.
    #[error("{reference} already names another artifact ({existing}); a published version does not change: publish a new version, or pass `--force` to move the tag")]
    TagExists {
        /// The reference.
        reference: String,
        /// The digest it names.
        existing: String,
    },
    /// A download failed or was refused.
    #[error("cannot download {url}: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A temporary folder or file could not be made.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The async runtime could not be built.
    #[error("cannot start the network runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The registry refused.
    #[error(transparent)]
    Local(#[from] RegistryError),
    /// Registering from an attestation failed.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// The trust store failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// How to talk to registries.
#[derive(Clone, Default)]
pub struct MarketOptions {
    /// Speak plain HTTP to every registry, not only to those on loopback.
    pub plain_http: bool,
    /// `(username, password)` for the registry; else the Docker config file's.
    pub credentials: Option<(String, String)>,
    /// The largest library accepted ([`DEFAULT_MAX_LIBRARY_BYTES`] if `None`).
    pub max_library_bytes: Option<u64>,
    /// How long one request may wait for the registry (60 s if `None`).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for MarketOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketOptions")
            .field("plain_http", &self.plain_http)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted>")),
            )
            .field("max_library_bytes", &self.max_library_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The largest library accepted from a registry unless told otherwise (256 MiB).
pub const DEFAULT_MAX_LIBRARY_BYTES: u64 = 256 * 1024 * 1024;

/// Runs `future` to completion on a runtime of its own, for callers outside async code
/// (the CLI).
pub fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, MarketError>>,
) -> Result<T, MarketError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MarketError::Runtime)?
        .block_on(future)
}

/// rustls with the *ring* provider (installed as the process default if the process
/// has none yet: see the module docs).
pub(crate) fn client_tls(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    builder
}

/// An error and its causes, `: `-separated, leaving out causes already in the text.
pub(crate) fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
