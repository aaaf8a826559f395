//! Where a plugin is in a marketplace: `oci://HOST/NAMESPACE/NAME:VERSION` (an OCI
//! reference with an `oci://` prefix, so that it cannot be taken for a path), or
//! `NAME@VERSION` in the configured default marketplace; and a marketplace itself,
//! `oci://HOST/NAMESPACE`.

use std::fmt;

use super::MarketError;

/// The prefix of a marketplace reference.
pub const SCHEME: &str = "oci://";

/// A plugin in a marketplace: registry host, repository, and a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// `NAMESPACE/NAME` (the last segment is the plugin's name).
    pub repository: String,
    /// The tag (the version, `+` written `_`), if given.
    pub tag: Option<String>,
    /// `sha256:…`, if given.
    pub digest: Option<String>,
}

/// A marketplace: a registry host and a namespace in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketplaceRef {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The namespace (may be empty: the whole registry).
    pub namespace: String,
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Display for MarketplaceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.registry)?;
        if !self.namespace.is_empty() {
            write!(f, "/{}", self.namespace)?;
        }
        Ok(())
    }
}

/// The OCI tag of a plugin version: semver's `+` (build metadata) is not allowed in
/// a tag, so it is written `_`, as Helm does.
pub fn version_tag(version: &semver::Version) -> String {
    version.to_string().replace('+', "_")
}

fn invalid(given: &str, reason: impl Into<String>) -> MarketError {
    MarketError::InvalidReference {
        given: given.to_owned(),
        reason: reason.into(),
    }
}

/// `[a-z0-9]+([._-][a-z0-9]+)*`, as OCI repository path components are.
fn is_path_component(text: &str) -> bool {
    !text.is_empty()
        && text.split(['.', '_', '-']).all(|part| {
            !part.is_empty() && part.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9'))
        })
}

fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_host(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn strip_scheme(given: &str) -> Result<&str, MarketError> {
    given.strip_prefix(SCHEME).ok_or_else(|| {
        invalid(
            given,
            "it does not start with `oci://`; write `oci://HOST/NAMESPACE/NAME:VERSION`",
        )
    })
}

impl PluginRef {
    /// Reads `oci://HOST/NAMESPACE/NAME:TAG` or `oci://HOST/NAMESPACE/NAME@sha256:…`
    /// (a tag is required for installing; publishing adds the version's).
    pub fn parse(given: &str) -> Result<PluginRef, MarketError> {
        let rest = strip_scheme(given)?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => {
                let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
                    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                if !valid {
                    return Err(invalid(
                        given,
                        format!("`{digest}` is not a digest; digests read `sha256:` and 64 lowercase hex digits"),
                    ));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            invalid(
                given,
                "it has no repository; write `oci://HOST/NAMESPACE/NAME:VERSION`",
            )
        })?;
        if !is_host(registry) {
            return Err(invalid(
                given,
                format!("`{registry}` is not a registry host (`HOST` or `HOST:PORT`)"),
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag.to_owned())),
            _ => (path, None),
        };
        if let Some(bad) = repository.split('/').find(|part| !is_path_component(part)) {
            return Err(invalid(
                given,
                format!("repository component `{bad}` is not valid: OCI repositories are lowercase letters, digits and `.`, `_`, `-` between them"),
            ));
        }
        if let Some(tag) = &tag {
            if !is_tag(tag) {
                return Err(invalid(given, format!("`{tag}` is not a valid tag")));
            }
        }
        Ok(PluginRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// Reads what `plugbay install` takes: `oci://…`, or `NAME@VERSION` in
    /// `marketplace` (the configured default).
    pub fn for_install(
        given: &str,
        marketplace: Option<&MarketplaceRef>,
    ) -> Result<PluginRef, MarketError> {
        if given.starts_with(SCHEME) {
            let reference = PluginRef::parse(given)?;
            if reference.tag.is_none() && reference.digest.is_none() {
                return Err(invalid(
                    given,
                    "it names no version; add the version as its tag, e.g. `:1.0.0`",
                ));
            }
            return Ok(reference);
        }
        let Some((name, version)) = given.split_once('@') else {
            return Err(invalid(
                given,
                "install takes `oci://HOST/NAMESPACE/NAME:VERSION`, or `NAME@VERSION` with a default marketplace",
            ));
        };
        let version = semver::Version::parse(version).map_err(|err| {
            invalid(
                given,
                format!("`{version}` is not a semantic version: {err}"),
            )
        })?;
        if !is_path_component(name) {
            return Err(invalid(given, format!("`{name}` is not a plugin name")));
        }
        let marketplace = marketplace.ok_or(MarketError::NoMarketplace {
            given: given.to_owned(),
        })?;
        let repository = if marketplace.namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", marketplace.namespace)
        };
        Ok(PluginRef {
            registry: marketplace.registry.clone(),
            repository,
            tag: Some(version_tag(&version)),
            digest: None,
        })
    }

    /// The plugin name the repository ends with.
    pub fn name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }

    /// This reference with `tag` and no digest.
    pub fn with_tag(&self, tag: String) -> PluginRef {
        PluginRef {
            tag: Some(tag),
            digest: None,
            ..self.clone()
        }
    }

    /// The oci-client reference (by digest when there is one).
    pub(crate) fn oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (None, tag) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        }
    }

    /// This repository at `digest`.
    pub(crate) fn oci_at(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_owned(),
        )
    }
}

impl MarketplaceRef {
    /// Reads `oci://HOST` or `oci://HOST/NAMESPACE`.
    pub fn parse(given: &str) -> Result<MarketplaceRef, MarketError> {
        let rest = strip_scheme(given)?.trim_end_matches('/');
        let (registry, namespace) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_host(registry) {
            return Err(invalid(
                given,
                format!("`{registry}` is not a registry host (`HOST` or `HOST:PORT`)"),
            ));
        }
        if !namespace.is_empty() {
            if let Some(bad) = namespace.split('/').find(|part| !is_path_component(part)) {
                return Err(invalid(given, format!("namespace component `{bad}` is not valid: lowercase letters, digits and `.`, `_`, `-` between them")));
            }
        }
        Ok(MarketplaceRef {
            registry: registry.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// A reference to the registry itself (for the catalog).
    pub(crate) fn oci(&self) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.registry.clone(),
            "plugbay".to_owned(),
            "latest".to_owned(),
        )
    }

    /// The plugin `repository` of this registry at `tag`.
    pub(crate) fn plugin(&self, repository: &str, tag: &str) -> PluginRef {
        PluginRef {
            registry: self.registry.clone(),
            repository: repository.to_owned(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }
}

/// Whether the registry host is on this machine (loopback), which plugbay, as
/// Docker does, speaks plain HTTP to.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_oci_writes_them() {
        let reference =
            PluginRef::parse("oci://127.0.0.1:5000/plugbay/data-processor:1.0.0").unwrap();
        assert_eq!(reference.registry, "127.0.0.1:5000");
        assert_eq!(reference.repository, "plugbay/data-processor");
        assert_eq!(reference.tag.as_deref(), Some("1.0.0"));
        assert_eq!(reference.name(), "data-processor");
        assert_eq!(
            reference.to_string(),
            "oci://127.0.0.1:5000/plugbay/data-processor:1.0.0"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = PluginRef::parse(&format!("oci://ghcr.io/org/x@{digest}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(pinned.tag, None);
        for (bad, needle) in [
            ("ghcr.io/org/x:1.0.0", "oci://"),
            ("oci://ghcr.io", "no repository"),
            ("oci://ghcr.io/Org/x:1.0.0", "`Org`"),
            ("oci://ghcr.io/org/x:1.0.0+build", "not a valid tag"),
            ("oci://ghcr.io/org/x@sha256:12", "not a digest"),
        ] {
            let err = PluginRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn a_name_and_version_is_looked_up_in_the_default_marketplace() {
        let market = MarketplaceRef::parse("oci://localhost:5000/team").unwrap();
        let reference = PluginRef::for_install("redactor@1.2.0+b7", Some(&market)).unwrap();
        assert_eq!(
            reference.to_string(),
            "oci://localhost:5000/team/redactor:1.2.0_b7"
        );
        let err = PluginRef::for_install("redactor@1.2.0", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PLUGBAY_MARKETPLACE"), "{err}");
        let err = PluginRef::for_install("oci://localhost:5000/team/redactor", Some(&market))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no version"), "{err}");
    }

    #[test]
    fn loopback_registries_are_told_apart() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
