//! The OCI shape of a published plugin: media types, the per-platform image
//! manifests and the image index, written as bytes once (their digest is the digest
//! of those bytes) and read back with every field Plugbay relies on checked.

use std::collections::BTreeMap;

use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use sha2::{Digest, Sha256};

use crate::attestation::Platform;
use crate::image::hex;

/// The `artifactType` of a published plugin.
pub const ARTIFACT_TYPE: &str = "application/vnd.plugbay.plugin.v1";
/// The config blob: the plugin's `plugin.json`.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.plugbay.plugin.manifest.v1+json";
/// A layer: the plugin's library for the manifest's platform.
pub const LIBRARY_MEDIA_TYPE: &str = "application/vnd.plugbay.plugin.library.v1";
/// A layer: the attestation (JSON, as signed).
pub const ATTESTATION_MEDIA_TYPE: &str = "application/vnd.plugbay.attestation.v1+json";
/// A layer: the attestation's SSH signature (armored).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.plugbay.attestation.signature.v1";

/// `org.opencontainers.image.title`: a layer's file name.
pub(crate) const TITLE: &str = "org.opencontainers.image.title";
/// `org.opencontainers.image.version`.
pub(crate) const VERSION: &str = "org.opencontainers.image.version";
/// `org.opencontainers.image.description`.
pub(crate) const DESCRIPTION: &str = "org.opencontainers.image.description";
/// The platform of a per-platform manifest, `os/arch`.
pub(crate) const PLATFORM: &str = "dev.plugbay.platform";
/// Who approved it.
pub(crate) const REVIEWER: &str = "dev.plugbay.reviewer";

/// A blob to push: its bytes and its descriptor.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub bytes: Vec<u8>,
    pub descriptor: OciDescriptor,
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str, title: Option<&str>) -> Blob {
        let annotations = title.map(|title| BTreeMap::from([(TITLE.to_owned(), title.to_owned())]));
        let descriptor = OciDescriptor {
            media_type: media_type.to_owned(),
            digest: digest_of(&bytes),
            size: bytes.len() as i64,
            urls: None,
            annotations,
            ..OciDescriptor::default()
        };
        Blob { bytes, descriptor }
    }
}

/// A manifest as bytes, with its digest.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
}

/// The image manifest of one platform.
pub(crate) fn image_manifest(
    config: &Blob,
    layers: &[&Blob],
    annotations: BTreeMap<String, String>,
) -> Written {
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
        config: config.descriptor.clone(),
        layers: layers.iter().map(|blob| blob.descriptor.clone()).collect(),
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        annotations: Some(annotations),
    };
    let bytes = serde_json::to_vec(&manifest).expect("a manifest always serializes");
    Written {
        digest: digest_of(&bytes),
        bytes,
        media_type: OCI_IMAGE_MEDIA_TYPE,
    }
}

/// The image index over per-platform manifests.
pub(crate) fn image_index(
    manifests: &[(Platform, &Written)],
    annotations: BTreeMap<String, String>,
) -> Written {
    let entries = manifests
        .iter()
        .map(|(platform, written)| ImageIndexEntry {
            media_type: written.media_type.to_owned(),
            digest: written.digest.clone(),
            size: written.bytes.len() as i64,
            platform: Some(oci_platform(platform)),
            annotations: None,
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        })
        .collect();
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: entries,
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        annotations: Some(annotations),
    };
    let bytes = serde_json::to_vec(&index).expect("an index always serializes");
    Written {
        digest: digest_of(&bytes),
        bytes,
        media_type: OCI_IMAGE_INDEX_MEDIA_TYPE,
    }
}

fn oci_platform(platform: &Platform) -> oci_client::manifest::Platform {
    serde_json::from_value(serde_json::json!({
        "os": platform.os(),
        "architecture": platform.arch(),
    }))
    .expect("os and architecture are all a platform needs")
}

/// What a pulled manifest is.
pub(crate) enum Pulled {
    /// One platform's image manifest.
    Image(Box<OciImageManifest>),
    /// An index of per-platform manifests.
    Index(OciImageIndex),
}

/// Reads a manifest's bytes as an image manifest or an index (by its `mediaType`).
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Pulled, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: Option<u8>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let versioned: Versioned =
        serde_json::from_slice(bytes).map_err(|err| format!("its manifest is not JSON: {err}"))?;
    if versioned.schema_version != Some(2) {
        return Err("its manifest is not schema version 2".to_owned());
    }
    let is_index = match versioned.media_type.as_deref() {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE) => true,
        Some(OCI_IMAGE_MEDIA_TYPE) => false,
        None => versioned.manifests.is_some(),
        Some(other) => return Err(format!("its manifest has media type `{other}`")),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Pulled::Index)
            .map_err(|err| format!("its image index is not valid: {err}"))
    } else {
        serde_json::from_slice(bytes)
            .map(|image| Pulled::Image(Box::new(image)))
            .map_err(|err| format!("its image manifest is not valid: {err}"))
    }
}

/// The platform of an index entry, if it names one Plugbay knows.
pub(crate) fn entry_platform(entry: &ImageIndexEntry) -> Option<Platform> {
    let platform = entry.platform.as_ref()?;
    format!("{}/{}", platform.os, platform.architecture)
        .parse()
        .ok()
}

/// The layers of a plugin's image manifest, by role.
pub(crate) struct Layers<'a> {
    pub library: &'a OciDescriptor,
    pub attestation: Option<&'a OciDescriptor>,
    pub signature: Option<&'a OciDescriptor>,
}

/// Checks that `manifest` is a Plugbay plugin's, and finds its layers.
pub(crate) fn plugin_layers(manifest: &OciImageManifest) -> Result<Layers<'_>, String> {
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE)
        && manifest.config.media_type != MANIFEST_MEDIA_TYPE
    {
        return Err(format!(
            "its artifact type is `{}`, not `{ARTIFACT_TYPE}`",
            manifest
                .artifact_type
                .as_deref()
                .unwrap_or(&manifest.config.media_type)
        ));
    }
    if manifest.config.media_type != MANIFEST_MEDIA_TYPE {
        return Err(format!(
            "its config has media type `{}`, not `{MANIFEST_MEDIA_TYPE}`",
            manifest.config.media_type
        ));
    }
    let one = |media_type: &str| -> Result<Option<&OciDescriptor>, String> {
        let mut found = manifest
            .layers
            .iter()
            .filter(|layer| layer.media_type == media_type);
        let first = found.next();
        if found.next().is_some() {
            return Err(format!("it has more than one `{media_type}` layer"));
        }
        Ok(first)
    };
    let library = one(LIBRARY_MEDIA_TYPE)?
        .ok_or_else(|| format!("it has no `{LIBRARY_MEDIA_TYPE}` layer"))?;
    Ok(Layers {
        library,
        attestation: one(ATTESTATION_MEDIA_TYPE)?,
        signature: one(SIGNATURE_MEDIA_TYPE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_indexes_read_back_as_written() {
        let config = Blob::new(b"{}".to_vec(), MANIFEST_MEDIA_TYPE, None);
        let library = Blob::new(b"\x7fELF".to_vec(), LIBRARY_MEDIA_TYPE, Some("libx.so"));
        let manifest = image_manifest(&config, &[&library], BTreeMap::new());
        assert_eq!(manifest.digest, digest_of(&manifest.bytes));
        let Ok(Pulled::Image(read)) = parse_manifest(&manifest.bytes) else {
            panic!("an image manifest reads back");
        };
        let layers = plugin_layers(&read).unwrap();
        assert_eq!(layers.library.digest, library.descriptor.digest);
        assert!(layers.attestation.is_none());
        let windows: Platform = "windows/amd64".parse().unwrap();
        let index = image_index(&[(windows.clone(), &manifest)], BTreeMap::new());
        let Ok(Pulled::Index(read)) = parse_manifest(&index.bytes) else {
            panic!("an index reads back");
        };
        assert_eq!(entry_platform(&read.manifests[0]), Some(windows));
    }

    #[test]
    fn an_image_of_something_else_is_not_a_plugin() {
        let config = Blob::new(
            b"{}".to_vec(),
            "application/vnd.oci.image.config.v1+json",
            None,
        );
        let layer = Blob::new(
            b"tar".to_vec(),
            "application/vnd.oci.image.layer.v1.tar",
            None,
        );
        let manifest = image_manifest(&config, &[&layer], BTreeMap::new());
        let Ok(Pulled::Image(mut read)) = parse_manifest(&manifest.bytes) else {
            panic!("an image manifest reads back");
        };
        read.artifact_type = None;
        let err = plugin_layers(&read).err().unwrap();
        assert!(
            err.contains("application/vnd.oci.image.config.v1+json"),
            "{err}"
        );
    }
}
