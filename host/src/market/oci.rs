//! Talking to OCI registries, through `oci-client`: publish a plugin's artifact,
//! fetch the one for this platform (every digest and size checked), list what a
//! marketplace offers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use plugbay_api::manifest::Manifest;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::artifact::{
    digest_of, entry_platform, image_index, image_manifest, parse_manifest, plugin_layers, Blob,
    Pulled, Written, ATTESTATION_MEDIA_TYPE, DESCRIPTION, LIBRARY_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    PLATFORM, REVIEWER, SIGNATURE_MEDIA_TYPE, TITLE, VERSION,
};
use super::reference::{is_loopback, version_tag, MarketplaceRef, PluginRef};
use super::{error_text, MarketError, MarketOptions, DEFAULT_MAX_LIBRARY_BYTES};
use crate::attestation::{
    Attestation, AttestedLibrary, Platform, SignedAttestation, TrustStore, Verdict,
};
use crate::image::hex;
use crate::registry::Registry;

/// The largest plugin manifest (config blob) or attestation accepted.
const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;

/// The largest signature accepted.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// The most repositories and tags a search reads.
const MAX_SEARCH_ITEMS: usize = 10_000;

/// Talks to OCI registries with one set of options.
#[derive(Debug, Clone, Default)]
pub struct Market {
    options: MarketOptions,
}

/// What `publish` pushes: an approved plugin with its signed attestation and the
/// library of every attested platform.
#[derive(Debug, Clone)]
pub struct PublishBundle {
    /// The plugin's id.
    pub id: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// The attestation as signed.
    pub signed: SignedAttestation,
    /// The attestation, parsed.
    pub attestation: Attestation,
    /// Each attested platform's library and its bytes.
    pub libraries: Vec<(AttestedLibrary, Vec<u8>)>,
}

/// What `publish` pushed.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// The plugin's id.
    pub id: String,
    /// Where: `oci://HOST/NAMESPACE/NAME:VERSION`.
    pub reference: String,
    /// The digest the tag names (the index, or the only platform's manifest).
    pub digest: String,
    /// The platforms published.
    pub platforms: Vec<Platform>,
    /// Who approved it.
    pub reviewer: String,
    /// How many blobs were uploaded (the others were in the registry already).
    pub uploaded_blobs: usize,
}

/// A plugin pulled for this platform, every digest checked, not yet registered. Its
/// files live in a temporary folder that goes away with it.
#[derive(Debug)]
pub struct Fetched {
    /// The reference it was pulled by.
    pub reference: PluginRef,
    /// The digest of what the reference named (index or manifest).
    pub digest: String,
    /// The platforms the artifact offers.
    pub platforms: Vec<Platform>,
    /// The plugin's manifest (the artifact's config).
    pub manifest: Manifest,
    /// The library for this platform.
    pub library: PathBuf,
    /// Its SHA-256, in hex.
    pub library_sha256: String,
    /// The attestation and its signature, if the artifact has them.
    pub signed: Option<SignedAttestation>,
    dir: tempfile::TempDir,
}

impl Fetched {
    /// The temporary folder holding the library.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How far a marketplace's offer is trusted here.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OfferTrust {
    /// Signed by a trusted reviewer key.
    Trusted {
        /// The key.
        fingerprint: String,
    },
    /// Soundly signed by a key that is not trusted here.
    Untrusted {
        /// The key.
        fingerprint: String,
    },
    /// No attestation.
    Unsigned,
    /// An attestation that does not verify, or an artifact that cannot be read.
    Invalid {
        /// Why.
        reason: String,
    },
}

/// One plugin version a marketplace offers.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    /// The plugin's name.
    pub name: String,
    /// Its version (the tag, read as a version).
    pub version: String,
    /// `oci://…:TAG`.
    pub reference: String,
    /// The platforms it has libraries for.
    pub platforms: Vec<Platform>,
    /// Its description.
    pub description: Option<String>,
    /// Who approved it, as the attestation says.
    pub reviewer: Option<String>,
    /// Whether that approval is trusted here.
    pub trust: OfferTrust,
}

impl PublishBundle {
    /// Gathers what publishing `id` takes: it must be approved with a signed
    /// attestation of its current approval; the library of this platform comes from
    /// the store, those of other attested platforms from `files`, each of which must
    /// have its attested SHA-256.
    pub fn from_registry(
        registry: &Registry,
        id: &str,
        files: &[(Platform, PathBuf)],
    ) -> Result<PublishBundle, MarketError> {
        let entry = registry.get(id)?;
        let refuse = |reason: String| MarketError::NotPublishable {
            id: id.to_owned(),
            reason,
        };
        if entry.review.status != crate::registry::ReviewStatus::Approved {
            return Err(refuse(format!(
                "it is {}; only approved plugins are published: review it with `plugbay review approve {id} --signing-key KEY`",
                entry.review.status
            )));
        }
        let stored = registry.attestation(id)?.ok_or_else(|| {
            refuse(format!(
                "its approval is not signed; sign it by approving it again with `plugbay review approve {id} --signing-key KEY`"
            ))
        })?;
        let here = Platform::current();
        for (platform, path) in files {
            if stored.attestation.library_for(platform).is_none() {
                return Err(refuse(format!(
                    "library {} is for {platform}, which the attestation does not cover (it covers {}); attest it with `plugbay review approve {id} --signing-key KEY --platform-library {platform}=PATH`",
                    path.display(),
                    platform_list(&stored.attestation.platforms())
                )));
            }
        }
        let mut libraries = Vec::new();
        for attested in &stored.attestation.libraries {
            let (bytes, from) = if attested.platform == here {
                let bytes = std::fs::read(&entry.library).map_err(|source| MarketError::Io {
                    action: "read",
                    path: entry.library.clone(),
                    source,
                })?;
                (bytes, entry.library.clone())
            } else {
                let Some((_, path)) = files
                    .iter()
                    .find(|(platform, _)| *platform == attested.platform)
                else {
                    return Err(refuse(format!(
                        "the attestation covers {} but no library was given for it; pass `--platform-library {}=PATH` with the file that was attested",
                        attested.platform, attested.platform
                    )));
                };
                let bytes = std::fs::read(path).map_err(|source| MarketError::Io {
                    action: "read",
                    path: path.clone(),
                    source,
                })?;
                (bytes, path.clone())
            };
            let sha256 = hex(&Sha256::digest(&bytes));
            if sha256 != attested.sha256 {
                return Err(refuse(format!(
                    "library {} for {} has sha256 {sha256}, but the attestation says {}; give the file that was reviewed",
                    from.display(),
                    attested.platform,
                    attested.sha256
                )));
            }
            libraries.push((attested.clone(), bytes));
        }
        Ok(PublishBundle {
            id: entry.id,
            manifest: entry.manifest,
            signed: stored.signed,
            attestation: stored.attestation,
            libraries,
        })
    }
}

/// For `map_err`: the error of `action` (what was being done) on `registry`.
fn registry_failure(
    registry: &str,
    action: String,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> MarketError {
    let registry = registry.to_owned();
    move |err| MarketError::Registry {
        registry,
        action,
        reason: registry_reason(&err),
    }
}

/// What a registry said, and what to do when it wants credentials.
fn registry_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let text = error_text(err);
    let lower = text.to_lowercase();
    if lower.contains("401") || lower.contains("unauthorized") || lower.contains("not authorized") {
        format!("{text}; the registry wants credentials: `docker login` to it (plugbay reads the Docker config file), or pass `--username USER --password-stdin`")
    } else {
        text
    }
}

fn platform_list(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Market {
    /// A market client with `options`.
    pub fn new(options: MarketOptions) -> Market {
        Market { options }
    }

    fn client(&self, registry: &str) -> Result<oci_client::Client, MarketError> {
        let _ = super::client_tls(reqwest::Client::builder());
        let timeout = self.options.timeout.unwrap_or(Duration::from_secs(60));
        let config = ClientConfig {
            protocol: if self.options.plain_http || is_loopback(registry) {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout.min(Duration::from_secs(15))),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|err| MarketError::Registry {
            registry: registry.to_owned(),
            action: "make a client".to_owned(),
            reason: error_text(&err),
        })
    }

    /// The credentials for `registry`: the options', else the Docker config file's,
    /// else none.
    fn auth(&self, registry: &str) -> RegistryAuth {
        if let Some((user, password)) = &self.options.credentials {
            return RegistryAuth::Basic(user.clone(), password.clone());
        }
        for server in [
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ] {
            match docker_credential::get_credential(&server) {
                Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
                    return RegistryAuth::Basic(user, password)
                }
                Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                    return RegistryAuth::Bearer(token)
                }
                Err(_) => {}
            }
        }
        RegistryAuth::Anonymous
    }

    /// Pushes `bundle` to `target` (`oci://HOST/NAMESPACE/NAME`, whose NAME must be
    /// the plugin's; a tag, if given, must be its version's), tagged with the
    /// version. An existing tag naming another artifact is refused unless `force`.
    pub async fn publish(
        &self,
        bundle: &PublishBundle,
        target: &PluginRef,
        force: bool,
    ) -> Result<Published, MarketError> {
        let manifest = &bundle.manifest;
        let tag = version_tag(&manifest.version);
        let refuse = |reason: String| MarketError::NotPublishable {
            id: bundle.id.clone(),
            reason,
        };
        if target.name() != manifest.name {
            return Err(refuse(format!(
                "{target} ends in `{}`, but the plugin is `{}`; publish it to a repository named after it, e.g. `{}`",
                target.name(),
                manifest.name,
                target.with_tag(tag.clone()).to_string().replace(
                    &format!("/{}:", target.name()),
                    &format!("/{}:", manifest.name)
                )
            )));
        }
        if target.digest.is_some() {
            return Err(refuse(format!(
                "{target} names a digest; publish to a repository (`oci://HOST/NAMESPACE/NAME`)"
            )));
        }
        if let Some(given) = &target.tag {
            if *given != tag {
                return Err(refuse(format!(
                    "{target} is tagged `{given}`, but a plugin is published under its version's tag, `{tag}`"
                )));
            }
        }
        let target = target.with_tag(tag.clone());
        let registry = target.registry.clone();
        let client = self.client(&registry)?;
        let auth = self.auth(&registry);
        let failed = |action: String| registry_failure(&registry, action);
        let tagged = target.oci();
        client
            .auth(&tagged, &auth, RegistryOperation::Push)
            .await
            .map_err(failed(format!("authenticate to push {target}")))?;

        let config = Blob::new(manifest.to_json().into_bytes(), MANIFEST_MEDIA_TYPE, None);
        let attestation = Blob::new(
            bundle.signed.statement.clone(),
            ATTESTATION_MEDIA_TYPE,
            Some("attestation.json"),
        );
        let signature = Blob::new(
            bundle.signed.signature.clone().into_bytes(),
            SIGNATURE_MEDIA_TYPE,
            Some("attestation.json.sig"),
        );
        let mut common = BTreeMap::from([
            (TITLE.to_owned(), manifest.name.clone()),
            (VERSION.to_owned(), manifest.version.to_string()),
            (DESCRIPTION.to_owned(), manifest.description.clone()),
            (REVIEWER.to_owned(), bundle.attestation.reviewer.clone()),
        ]);
        let mut blobs = vec![config.clone(), attestation.clone(), signature.clone()];
        let mut manifests: Vec<(Platform, Written)> = Vec::new();
        for (library, bytes) in &bundle.libraries {
            let blob = Blob::new(bytes.clone(), LIBRARY_MEDIA_TYPE, Some(&library.file));
            let mut annotations = common.clone();
            annotations.insert(PLATFORM.to_owned(), library.platform.to_string());
            let written = image_manifest(&config, &[&blob, &attestation, &signature], annotations);
            blobs.push(blob);
            manifests.push((library.platform.clone(), written));
        }
        let top = if manifests.len() == 1 {
            manifests[0].1.clone()
        } else {
            common.remove(PLATFORM);
            let refs: Vec<(Platform, &Written)> = manifests
                .iter()
                .map(|(platform, written)| (platform.clone(), written))
                .collect();
            image_index(&refs, common)
        };
        if !force {
            if let Ok(existing) = client.fetch_manifest_digest(&tagged, &auth).await {
                if existing != top.digest {
                    return Err(MarketError::TagExists {
                        reference: target.to_string(),
                        existing,
                    });
                }
            }
        }
        let mut uploaded = BTreeSet::new();
        for blob in &blobs {
            let digest = &blob.descriptor.digest;
            if uploaded.contains(digest) {
                continue;
            }
            let exists = client
                .blob_exists(&tagged, digest)
                .await
                .map_err(failed(format!("check blob {digest} in {target}")))?;
            if !exists {
                client
                    .push_blob(&tagged, blob.bytes.clone(), digest)
                    .await
                    .map_err(failed(format!("upload blob {digest} to {target}")))?;
                uploaded.insert(digest.clone());
            }
        }
        let push_manifest = |reference: oci_client::Reference, written: Written| {
            let client = client.clone();
            async move {
                let content_type = reqwest::header::HeaderValue::from_static(written.media_type);
                client
                    .push_manifest_raw(&reference, written.bytes, content_type)
                    .await
                    .map_err(failed(format!("push manifest {}", written.digest)))
            }
        };
        if manifests.len() > 1 {
            for (_, written) in &manifests {
                push_manifest(target.oci_at(&written.digest), written.clone()).await?;
            }
        }
        push_manifest(tagged.clone(), top.clone()).await?;
        Ok(Published {
            id: bundle.id.clone(),
            reference: target.to_string(),
            digest: top.digest,
            platforms: manifests
                .into_iter()
                .map(|(platform, _)| platform)
                .collect(),
            reviewer: bundle.attestation.reviewer.clone(),
            uploaded_blobs: uploaded.len(),
        })
    }

    /// Pulls the artifact `reference` names, for this host's platform, into a
    /// temporary folder in `home`: the manifest (and index), the plugin manifest, the
    /// attestation and signature if any, and the library; every one is checked
    /// against its digest and a size limit, and the plugin it holds must be the one
    /// the reference names (its repository's last segment and, for a tag, its
    /// version).
    pub async fn fetch(&self, reference: &PluginRef, home: &Path) -> Result<Fetched, MarketError> {
        let shown = reference.to_string();
        let registry = reference.registry.clone();
        let client = self.client(&registry)?;
        let auth = self.auth(&registry);
        let (top_bytes, _) = client
            .pull_manifest_raw(
                &reference.oci(),
                &auth,
                &[OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE],
            )
            .await
            .map_err(|err| MarketError::Registry {
                registry: registry.clone(),
                action: format!("pull {shown}"),
                reason: registry_reason(&err),
            })?;
        let digest = digest_of(&top_bytes);
        if let Some(expected) = &reference.digest {
            if *expected != digest {
                return Err(MarketError::DigestMismatch {
                    reference: shown,
                    what: "its manifest".to_owned(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let not_a_plugin = |reason: String| MarketError::NotAPlugin {
            reference: shown.clone(),
            reason,
        };
        let here = Platform::current();
        let (platforms, image) = match parse_manifest(&top_bytes).map_err(not_a_plugin)? {
            Pulled::Index(index) => {
                let platforms: Vec<Platform> =
                    index.manifests.iter().filter_map(entry_platform).collect();
                let entry = index
                    .manifests
                    .iter()
                    .find(|entry| entry_platform(entry).as_ref() == Some(&here))
                    .ok_or_else(|| MarketError::NoPlatform {
                        reference: shown.clone(),
                        platform: here.clone(),
                        offered: platform_list(&platforms),
                    })?;
                let (bytes, _) = client
                    .pull_manifest_raw(
                        &reference.oci_at(&entry.digest),
                        &auth,
                        &[OCI_IMAGE_MEDIA_TYPE],
                    )
                    .await
                    .map_err(|err| MarketError::Registry {
                        registry: registry.clone(),
                        action: format!("pull the {here} manifest of {shown}"),
                        reason: registry_reason(&err),
                    })?;
                let actual = digest_of(&bytes);
                if actual != entry.digest {
                    return Err(MarketError::DigestMismatch {
                        reference: shown,
                        what: format!("the {here} manifest"),
                        expected: entry.digest.clone(),
                        actual,
                    });
                }
                match parse_manifest(&bytes).map_err(not_a_plugin)? {
                    Pulled::Image(image) => (platforms, image),
                    Pulled::Index(_) => {
                        return Err(not_a_plugin("its index names another index".to_owned()))
                    }
                }
            }
            Pulled::Image(image) => {
                let platform = image
                    .annotations
                    .as_ref()
                    .and_then(|annotations| annotations.get(PLATFORM))
                    .and_then(|text| text.parse::<Platform>().ok())
                    .ok_or_else(|| {
                        not_a_plugin(format!("its manifest has no `{PLATFORM}` annotation"))
                    })?;
                if platform != here {
                    return Err(MarketError::NoPlatform {
                        reference: shown,
                        platform: here,
                        offered: platform.to_string(),
                    });
                }
                (vec![platform], image)
            }
        };
        let layers = plugin_layers(&image).map_err(not_a_plugin)?;
        let oci = reference.oci();
        let config = self
            .pull_bytes(
                &client,
                &oci,
                &image.config,
                "its plugin manifest",
                MAX_DOCUMENT_BYTES,
                &shown,
            )
            .await?;
        let text = String::from_utf8(config)
            .map_err(|_| not_a_plugin("its plugin manifest is not UTF-8".to_owned()))?;
        let manifest = Manifest::parse(&text)
            .map_err(|err| not_a_plugin(format!("its plugin manifest is invalid: {err}")))?;
        if manifest.name != reference.name() {
            return Err(MarketError::Tampered {
                reference: shown,
                reason: format!(
                    "the repository is `{}` but the artifact is plugin `{}`",
                    reference.name(),
                    manifest.id()
                ),
            });
        }
        if let Some(tag) = &reference.tag {
            if *tag != version_tag(&manifest.version) {
                return Err(MarketError::Tampered {
                    reference: shown,
                    reason: format!(
                        "tag `{tag}` names version {} of `{}`",
                        manifest.version, manifest.name
                    ),
                });
            }
        }
        let signed = match (layers.attestation, layers.signature) {
            (Some(statement), Some(signature)) => {
                let statement = self
                    .pull_bytes(
                        &client,
                        &oci,
                        statement,
                        "its attestation",
                        MAX_DOCUMENT_BYTES,
                        &shown,
                    )
                    .await?;
                let signature = self
                    .pull_bytes(
                        &client,
                        &oci,
                        signature,
                        "its signature",
                        MAX_SIGNATURE_BYTES,
                        &shown,
                    )
                    .await?;
                Some(SignedAttestation {
                    statement,
                    signature: String::from_utf8_lossy(&signature).into_owned(),
                })
            }
            _ => None,
        };
        let dir = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(home)
            .map_err(|source| MarketError::Io {
                action: "make a temporary folder in",
                path: home.to_owned(),
                source,
            })?;
        let library = dir.path().join(manifest.library_file_name());
        let mut file = std::fs::File::create(&library).map_err(|source| MarketError::Io {
            action: "write",
            path: library.clone(),
            source,
        })?;
        let limit = self
            .options
            .max_library_bytes
            .unwrap_or(DEFAULT_MAX_LIBRARY_BYTES);
        let library_digest = self
            .pull_into(
                &client,
                &oci,
                layers.library,
                "its library",
                limit,
                &shown,
                |chunk| std::io::Write::write_all(&mut file, chunk),
            )
            .await?;
        file.sync_all().map_err(|source| MarketError::Io {
            action: "write",
            path: library.clone(),
            source,
        })?;
        Ok(Fetched {
            reference: reference.clone(),
            digest,
            platforms,
            manifest,
            library,
            library_sha256: library_digest.trim_start_matches("sha256:").to_owned(),
            signed,
            dir,
        })
    }

    async fn pull_bytes(
        &self,
        client: &oci_client::Client,
        reference: &oci_client::Reference,
        descriptor: &OciDescriptor,
        what: &str,
        limit: u64,
        shown: &str,
    ) -> Result<Vec<u8>, MarketError> {
        let mut bytes = Vec::new();
        self.pull_into(client, reference, descriptor, what, limit, shown, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(bytes)
    }

    /// Streams a blob into `sink`, hashing and counting it; refuses one larger than
    /// `limit` or its descriptor's size, or whose digest is not the descriptor's.
    #[allow(clippy::too_many_arguments)]
    async fn pull_into(
        &self,
        client: &oci_client::Client,
        reference: &oci_client::Reference,
        descriptor: &OciDescriptor,
        what: &str,
        limit: u64,
        shown: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<String, MarketError> {
        let too_large = || MarketError::TooLarge {
            reference: shown.to_owned(),
            what: what.to_owned(),
            limit,
        };
        if !descriptor.digest.starts_with("sha256:") {
            return Err(MarketError::NotAPlugin {
                reference: shown.to_owned(),
                reason: format!(
                    "{what} has digest `{}`; plugbay checks sha256 digests only",
                    descriptor.digest
                ),
            });
        }
        let size = u64::try_from(descriptor.size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(too_large());
        }
        let registry = reference.registry().to_owned();
        let failed = |err: &(dyn std::error::Error + 'static)| MarketError::Registry {
            registry: registry.clone(),
            action: format!("pull {what} of {shown}"),
            reason: registry_reason(err),
        };
        let mut stream = client
            .pull_blob_stream(reference, descriptor)
            .await
            .map_err(|err| failed(&err))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client checks the digest too, once every byte has come: the
                // check below names both digests.
                Err(_) if received == size => break,
                Err(err) => return Err(failed(&err)),
            };
            received += chunk.len() as u64;
            if received > limit {
                return Err(too_large());
            }
            hasher.update(&chunk);
            sink(&chunk).map_err(|source| MarketError::Io {
                action: "write",
                path: PathBuf::from(what),
                source,
            })?;
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != descriptor.digest || received != size {
            return Err(MarketError::DigestMismatch {
                reference: shown.to_owned(),
                what: what.to_owned(),
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(actual)
    }

    /// Lists the plugin versions under `marketplace` (every repository below its
    /// namespace, every tag), with their platforms and who approved them, checked
    /// against `trust`. Repositories that hold something other than plugbay plugins
    /// are left out.
    pub async fn search(
        &self,
        marketplace: &MarketplaceRef,
        trust: &TrustStore,
    ) -> Result<Vec<Offer>, MarketError> {
        let registry = marketplace.registry.clone();
        let client = self.client(&registry)?;
        let auth = self.auth(&registry);
        let failed = |action: String| registry_failure(&registry, action);
        let prefix = if marketplace.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", marketplace.namespace)
        };
        let mut repositories = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = client
                .catalog(&marketplace.oci(), &auth, Some(100), last.as_deref())
                .await
                .map_err(failed(format!("list the repositories of {marketplace}")))?;
            let count = page.repositories.len();
            last = page.repositories.last().cloned();
            repositories.extend(
                page.repositories
                    .into_iter()
                    .filter(|repository| repository.starts_with(&prefix)),
            );
            if count < 100 || repositories.len() >= MAX_SEARCH_ITEMS {
                break;
            }
        }
        let mut offers = Vec::new();
        for repository in repositories {
            let reference = marketplace.plugin(&repository, "latest");
            let tags = client
                .list_tags(&reference.oci(), &auth, None, None)
                .await
                .map_err(failed(format!("list the tags of {repository}")))?;
            for tag in tags.tags.into_iter().take(MAX_SEARCH_ITEMS) {
                let reference = marketplace.plugin(&repository, &tag);
                if let Some(offer) = self.offer(&client, &auth, &reference, trust).await {
                    offers.push(offer);
                }
            }
        }
        offers.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(offers)
    }

    /// What one tag offers; `None` when it is not a plugbay plugin.
    async fn offer(
        &self,
        client: &oci_client::Client,
        auth: &RegistryAuth,
        reference: &PluginRef,
        trust: &TrustStore,
    ) -> Option<Offer> {
        let shown = reference.to_string();
        let invalid = |reason: String, platforms: Vec<Platform>| Offer {
            name: reference.name().to_owned(),
            version: reference.tag.clone().unwrap_or_default().replace('_', "+"),
            reference: shown.clone(),
            platforms,
            description: None,
            reviewer: None,
            trust: OfferTrust::Invalid { reason },
        };
        let accepted = [OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE];
        let (bytes, _) = match client
            .pull_manifest_raw(&reference.oci(), auth, &accepted)
            .await
        {
            Ok(pulled) => pulled,
            Err(err) => return Some(invalid(error_text(&err), Vec::new())),
        };
        let (platforms, image) = match parse_manifest(&bytes).ok()? {
            Pulled::Index(index) => {
                let platforms: Vec<Platform> =
                    index.manifests.iter().filter_map(entry_platform).collect();
                let first = index.manifests.first()?;
                let (bytes, _) = match client
                    .pull_manifest_raw(
                        &reference.oci_at(&first.digest),
                        auth,
                        &[OCI_IMAGE_MEDIA_TYPE],
                    )
                    .await
                {
                    Ok(pulled) => pulled,
                    Err(err) => return Some(invalid(error_text(&err), platforms)),
                };
                if digest_of(&bytes) != first.digest {
                    return Some(invalid(
                        "a manifest does not have the digest its index gives".to_owned(),
                        platforms,
                    ));
                }
                match parse_manifest(&bytes).ok()? {
                    Pulled::Image(image) => (platforms, image),
                    Pulled::Index(_) => return None,
                }
            }
            Pulled::Image(image) => {
                let platform = image
                    .annotations
                    .as_ref()
                    .and_then(|annotations| annotations.get(PLATFORM))
                    .and_then(|text| text.parse::<Platform>().ok());
                (platform.into_iter().collect(), image)
            }
        };
        let layers = plugin_layers(&image).ok()?;
        let description = image
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(DESCRIPTION))
            .cloned();
        let oci = reference.oci();
        let mut offer = Offer {
            name: reference.name().to_owned(),
            version: reference.tag.clone().unwrap_or_default().replace('_', "+"),
            reference: shown.clone(),
            platforms,
            description,
            reviewer: None,
            trust: OfferTrust::Unsigned,
        };
        let (Some(statement), Some(signature)) = (layers.attestation, layers.signature) else {
            return Some(offer);
        };
        let pulled = async {
            let statement = self
                .pull_bytes(
                    client,
                    &oci,
                    statement,
                    "its attestation",
                    MAX_DOCUMENT_BYTES,
                    &shown,
                )
                .await?;
            let signature = self
                .pull_bytes(
                    client,
                    &oci,
                    signature,
                    "its signature",
                    MAX_SIGNATURE_BYTES,
                    &shown,
                )
                .await?;
            Ok::<_, MarketError>(SignedAttestation {
                statement,
                signature: String::from_utf8_lossy(&signature).into_owned(),
            })
        }
        .await;
        offer.trust = match pulled.map(|signed| signed.verify(trust)) {
            Ok(Ok(verdict)) => {
                offer.reviewer = Some(verdict.attestation().reviewer.clone());
                match verdict {
                    Verdict::Trusted { fingerprint, .. } => OfferTrust::Trusted { fingerprint },
                    Verdict::Untrusted { fingerprint, .. } => OfferTrust::Untrusted { fingerprint },
                }
            }
            Ok(Err(err)) => OfferTrust::Invalid {
                reason: err.to_string(),
            },
            Err(err) => OfferTrust::Invalid {
                reason: err.to_string(),
            },
        };
        Some(offer)
    }
}
