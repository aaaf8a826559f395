//! The marketplace over the API: `POST /plugins/install`, `POST /plugins/{id}/publish`,
//! and `POST /plugins/register` with an `https://`, `http://` or `oci://` entry point.
//! Network work runs on the server's runtime; registry work on the blocking pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::body::{JsonBody, PluginId, RegisterBody};
use super::error::{chain, ApiError, ErrorCode};
use super::handlers::{actor, blocking, check_body, registration, registration_error};
use super::App;
use crate::attestation::{Platform, TrustStore};
use crate::market::{self, DownloadLimits, Market, MarketError, PluginRef, PublishBundle, SCHEME};
use crate::registry::{ApiKey, AttestError};

/// `POST /plugins/install`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstallBody {
    /// `oci://HOST/NAMESPACE/NAME:VERSION`.
    pub reference: String,
}

/// `POST /plugins/{id}/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    /// `oci://HOST/NAMESPACE/NAME`.
    pub reference: String,
    /// Libraries of other platforms, by `os/arch`, as paths on the server's machine.
    #[serde(default)]
    pub platform_libraries: BTreeMap<String, String>,
    /// Move the tag if it names another artifact.
    #[serde(default)]
    pub force: bool,
}

/// Whether a registration's entry point is downloaded rather than read locally.
pub(crate) fn is_remote(entry_point: &str) -> bool {
    market::is_http_url(entry_point) || entry_point.starts_with(SCHEME)
}

impl From<MarketError> for ApiError {
    fn from(err: MarketError) -> ApiError {
        match err {
            err @ (MarketError::InvalidReference { .. } | MarketError::NoMarketplace { .. }) => {
                ApiError::field("reference", err.to_string())
            }
            err @ MarketError::Registry { .. } => {
                ApiError::new(ErrorCode::UpstreamFailed, err.to_string())
            }
            err @ (MarketError::NotAPlugin { .. }
            | MarketError::NoPlatform { .. }
            | MarketError::DigestMismatch { .. }
            | MarketError::TooLarge { .. }
            | MarketError::Tampered { .. }
            | MarketError::BadSignature { .. }) => {
                ApiError::new(ErrorCode::ArtifactRefused, chain(&err))
            }
            err @ MarketError::NotPublishable { .. } => {
                ApiError::new(ErrorCode::NotPublishable, err.to_string())
            }
            err @ MarketError::TagExists { .. } => {
                ApiError::new(ErrorCode::TagExists, err.to_string())
            }
            err @ MarketError::Download { .. } => ApiError::field("entry_point", err.to_string()),
            MarketError::Local(err) => err.into(),
            MarketError::Attest(AttestError::Registry(err)) => err.into(),
            MarketError::Attest(err) => ApiError::new(ErrorCode::ArtifactRefused, chain(&err)),
            other => ApiError::internal(chain(&other)),
        }
    }
}

fn created(installed_id: &str, body: impl serde::Serialize) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/plugins/{installed_id}"))],
        Json(body),
    )
        .into_response()
}

pub(crate) async fn install_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    JsonBody(body): JsonBody<InstallBody>,
) -> Result<Response, ApiError> {
    if !body.reference.starts_with(SCHEME) {
        return Err(ApiError::field(
            "reference",
            format!(
                "`reference` `{}` is not an OCI reference; write `oci://HOST/NAMESPACE/NAME:VERSION`",
                body.reference
            ),
        ));
    }
    let reference = PluginRef::for_install(&body.reference, None)?;
    let home = app.registries.home().to_owned();
    let fetched = Market::default().fetch(&reference, &home).await?;
    let actor = actor(&key);
    let installed = blocking(move || {
        let trust = TrustStore::open(&home).map_err(|err| ApiError::internal(chain(&err)))?;
        let mut outcome = None;
        app.registries.with(|registry| {
            outcome = Some(market::install(
                registry, &app.host, &fetched, &trust, &actor,
            ));
            Ok(())
        })?;
        Ok(outcome.expect("the registry ran the install")?)
    })
    .await?;
    Ok(created(&installed.entry.id.clone(), installed))
}

pub(crate) async fn publish_plugin(
    State(app): State<Arc<App>>,
    PluginId(id): PluginId,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, ApiError> {
    let target = PluginRef::parse(&body.reference)?;
    let mut files = Vec::with_capacity(body.platform_libraries.len());
    for (platform, path) in &body.platform_libraries {
        let field = format!("platform_libraries.{platform}");
        let parsed: Platform = platform
            .parse()
            .map_err(|err| ApiError::field(field.clone(), format!("{err}")))?;
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(ApiError::field(
                field,
                format!(
                    "`{}` is not an absolute path on the server's machine",
                    path.display()
                ),
            ));
        }
        files.push((parsed, path));
    }
    let bundle = blocking(move || {
        let mut bundle = None;
        app.registries.with(|registry| {
            bundle = Some(PublishBundle::from_registry(registry, &id, &files));
            Ok(())
        })?;
        Ok(bundle.expect("the registry gathered the bundle")?)
    })
    .await?;
    let published = Market::default()
        .publish(&bundle, &target, body.force)
        .await?;
    Ok(Json(published).into_response())
}

/// `POST /plugins/register` with a remote entry point: the body is checked first,
/// then the library is downloaded (or pulled) into a temporary folder in the home
/// and registered from there, pending review, as a local file would be.
pub(crate) async fn register_remote(
    app: Arc<App>,
    key: ApiKey,
    body: RegisterBody,
) -> Result<Response, ApiError> {
    check_body(&body)?;
    let home = app.registries.home().to_owned();
    let location = body.entry_point.clone();
    let home_for_fetch = home.clone();
    let dir = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempdir_in(&home)
        .map_err(|err| {
            ApiError::internal(format!(
                "cannot make a temporary folder in {}: {err}",
                home.display()
            ))
        })?;
    let (library, fetched, detail) = if location.starts_with(SCHEME) {
        let reference = PluginRef::for_install(&location, None)
            .map_err(|err| ApiError::field("entry_point", err.to_string()))?;
        let fetched = Market::default().fetch(&reference, &home_for_fetch).await?;
        let detail = format!("digest {}", fetched.digest);
        (fetched.library.clone(), Some(fetched), detail)
    } else {
        let download = market::download(
            &location,
            &dir.path().join("download"),
            DownloadLimits::default(),
        )
        .await?;
        let detail = format!(
            "{} bytes from {}, sha256 {}",
            download.size, download.final_url, download.sha256
        );
        (download.path, None, detail)
    };
    let actor = actor(&key);
    let entry = blocking(move || {
        // Messages name the URL, not the temporary file it was downloaded to.
        let shown = library.display().to_string();
        let in_terms_of_the_url = |mut err: ApiError| {
            err.message = err.message.replace(&shown, &location);
            err
        };
        let mut registration =
            registration(&app.host, body, Some(library.clone())).map_err(&in_terms_of_the_url)?;
        // The store keeps a library under the file name its manifest gives.
        registration.library = market::name_after(&library, &registration.manifest)?;
        registration.plugin_dir = market::plugin_dir(&home, &registration.manifest);
        let entry = app
            .registries
            .with(|registry| registry.register(&app.host, registration, &actor))
            .map_err(|err| in_terms_of_the_url(registration_error(err)))?;
        market::keep_manifest(&entry)?;
        let entry = app
            .registries
            .with(|registry| registry.record_origin(&entry.id, &location, &detail, &actor))?;
        drop((dir, fetched));
        Ok(entry)
    })
    .await?;
    let id = entry.id.clone();
    Ok(created(&id, entry))
}
