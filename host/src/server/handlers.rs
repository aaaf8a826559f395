//! The handlers: each turns a request into registry or runtime calls, run on the
//! blocking pool (SQLite and plugin calls block), and the result into JSON.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::body::{
    entry_point_path, Decision, JsonBody, PluginId, Records, RegisterBody, ReviewBody,
};
use super::error::{chain, ApiError, ErrorCode};
use super::App;
use crate::manifest::{Manifest, Permission};
use crate::registry::{ApiKey, Registration, RegistryError, Update};
use crate::runtime::{read_manifest, Host, StartError};
use crate::Batch;
use crate::Isolation;

/// Runs blocking work (SQLite, plugin calls) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::internal(format!("a request task failed: {err}")))?
}

/// The id a path's `{id}` names: an id as it is, or a bare name resolved by the
/// registry to its one version, or its one enabled version.
fn resolve(app: &App, id: &str) -> Result<String, ApiError> {
    Ok(app.registries.with(|registry| registry.resolve(id))?)
}

/// Who the audit log says did it: the key's name and id (never its secret).
pub(super) fn actor(key: &ApiKey) -> String {
    format!("{} (api key {})", key.name, key.id)
}

pub(crate) async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "instances": app.instances.running(),
        "abandoned_workers": app.host.abandoned_workers(),
    }))
}

pub(crate) async fn openapi(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.openapi.clone())
}

pub(crate) async fn list_plugins(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let plugins = blocking(move || Ok(app.registries.with(|registry| registry.list())?)).await?;
    Ok(Json(json!({ "plugins": plugins })))
}

pub(crate) async fn get_plugin(
    State(app): State<Arc<App>>,
    PluginId(id): PluginId,
) -> Result<Response, ApiError> {
    let plugin = blocking(move || {
        let id = resolve(&app, &id)?;
        let entry = app.registries.with(|registry| registry.get(&id))?;
        let mut plugin = serde_json::to_value(entry)
            .map_err(|err| ApiError::internal(format!("cannot write plugin {id}: {err}")))?;
        let runtime = serde_json::to_value(app.instances.report(&app.host, &id))
            .map_err(|err| ApiError::internal(format!("cannot write plugin {id}: {err}")))?;
        plugin["runtime"] = runtime;
        Ok(plugin)
    })
    .await?;
    Ok(Json(plugin).into_response())
}

pub(crate) async fn register_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Response, ApiError> {
    #[cfg(feature = "market")]
    if super::market::is_remote(&body.entry_point) {
        return super::market::register_remote(app, key, body).await;
    }
    let actor = actor(&key);
    let entry = blocking(move || {
        let registration = registration(&app.host, body, None)?;
        app.registries
            .with(|registry| registry.register(&app.host, registration, &actor))
            .map_err(registration_error)
    })
    .await?;
    let location = format!("/plugins/{}", entry.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(entry),
    )
        .into_response())
}

/// `PUT /plugins/{id}`: registers the library the body names as plugin `id` (the
/// body's `name@version`): as a new plugin (201) if `id` is not registered, else, if
/// the library or the manifest changed, as its next revision, pending review again
/// (200; `plugbay register DIR --update` in the CLI), and as it is if nothing
/// changed (200, the same revision).
pub(crate) async fn put_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Response, ApiError> {
    #[cfg(feature = "market")]
    if super::market::is_remote(&body.entry_point) {
        return Err(ApiError::field(
            "entry_point",
            format!(
                "`entry_point` {} is remote; PUT /plugins/{{id}} registers a rebuild from a file on the server's machine: download it there first, or register a new version with POST /plugins/register",
                body.entry_point
            ),
        ));
    }
    let named = format!("{}@{}", body.name, body.version);
    if !id.contains('@') {
        return Err(ApiError::new(
            ErrorCode::InvalidId,
            format!("`{id}` is a name; PUT the plugin at its id, /plugins/{named}"),
        ));
    }
    if named != id {
        let field = if id.starts_with(&format!("{}@", body.name)) {
            "version"
        } else {
            "name"
        };
        return Err(ApiError::field(
            field,
            format!("the body names plugin `{named}`, the path `{id}`; they must be the same id"),
        ));
    }
    let actor = actor(&key);
    let (entry, update) = blocking(move || {
        let registration = registration(&app.host, body, None)?;
        app.registries
            .with(|registry| registry.update(&app.host, registration, &actor))
            .map_err(registration_error)
    })
    .await?;
    Ok(match update {
        Update::Registered => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/plugins/{}", entry.id))],
            Json(entry),
        )
            .into_response(),
        Update::Revised | Update::Unchanged => Json(entry).into_response(),
    })
}

/// Maps the seed's registration body onto a manifest: the `plugin.json` beside the
/// library if it describes that library, else the manifest embedded in the library.
/// The body's name, version and permissions must agree with it. The library is
/// `downloaded` when the entry point was fetched, else the local file it names.
pub(super) fn registration(
    host: &Host,
    body: RegisterBody,
    downloaded: Option<PathBuf>,
) -> Result<Registration, ApiError> {
    let library = match downloaded {
        Some(path) => path,
        None => entry_point_path(&body.entry_point)?,
    };
    let (version, requested) = check_body(&body)?;
    match std::fs::metadata(&library) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::field(
                "entry_point",
                format!(
                    "`entry_point` {} does not exist on the server's machine; copy the library there first",
                    library.display()
                ),
            ))
        }
        Err(err) => {
            return Err(ApiError::field(
                "entry_point",
                format!("cannot read `entry_point` {}: {err}", library.display()),
            ))
        }
        Ok(metadata) if !metadata.is_file() => {
            return Err(ApiError::field(
                "entry_point",
                format!(
                    "`entry_point` {} is {}, not a library file; give the plugin's library file",
                    library.display(),
                    crate::image::kind_of(metadata.file_type())
                ),
            ))
        }
        Ok(_) => {}
    }
    let (mut manifest, plugin_dir) = manifest_for(host, &library)?;
    if body.name != manifest.name {
        return Err(ApiError::field(
            "name",
            format!(
                "`name` `{}` does not match the plugin's manifest, which says `{}`",
                body.name, manifest.name
            ),
        ));
    }
    if version != manifest.version {
        return Err(ApiError::field(
            "version",
            format!(
                "`version` `{version}` does not match the plugin's manifest, which says `{}`",
                manifest.version
            ),
        ));
    }
    let mut given = requested.clone();
    given.sort();
    given.dedup();
    let mut wanted = manifest.permissions.clone();
    wanted.sort();
    if given != wanted {
        return Err(ApiError::field(
            "permissions",
            format!(
                "`permissions` {} do not match what the plugin's manifest requests: {}",
                list(&requested),
                list(&manifest.permissions)
            ),
        ));
    }
    if let Some(description) = body.description {
        manifest.description = description;
    }
    Ok(Registration {
        manifest,
        library,
        plugin_dir,
    })
}

/// The body's version and permissions, parsed, and its description checked.
pub(super) fn check_body(
    body: &RegisterBody,
) -> Result<(semver::Version, Vec<Permission>), ApiError> {
    let version = semver::Version::parse(&body.version).map_err(|err| {
        ApiError::field(
            "version",
            format!(
                "`version` `{}` is not a semantic version ({err}); write it like `1.0.0`",
                body.version
            ),
        )
    })?;
    let mut requested = Vec::with_capacity(body.permissions.len());
    for (index, text) in body.permissions.iter().enumerate() {
        let permission: Permission = text
            .parse()
            .map_err(|err| ApiError::field(format!("permissions[{index}]"), format!("{err}")))?;
        requested.push(permission);
    }
    if body
        .description
        .as_deref()
        .is_some_and(|text| text.trim().is_empty())
    {
        return Err(ApiError::field(
            "description",
            "`description` must not be empty when given",
        ));
    }
    Ok((version, requested))
}

fn list(permissions: &[Permission]) -> String {
    let items: Vec<String> = permissions.iter().map(|p| format!("\"{p}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn manifest_for(host: &Host, library: &Path) -> Result<(Manifest, PathBuf), ApiError> {
    let dir = library.parent().unwrap_or(Path::new("/")).to_owned();
    let beside = dir.join("plugin.json");
    if beside.is_file() {
        let manifest = read_manifest(&beside).map_err(|err| {
            ApiError::field(
                "entry_point",
                format!(
                    "the plugin.json beside `entry_point` is invalid: {}",
                    chain(&err)
                ),
            )
        })?;
        if library.file_name() == Some(OsStr::new(&manifest.library_file_name())) {
            return Ok((manifest, dir));
        }
    }
    let inspection = host.inspect(library).map_err(inspect_error)?;
    Ok((inspection.manifest, dir))
}

fn inspect_error(err: StartError) -> ApiError {
    match err {
        StartError::Load(err) => ApiError::field(
            "entry_point",
            format!("`entry_point` cannot be loaded: {}", chain(&err)),
        ),
        // The same, from the worker process that opened the library.
        StartError::WorkerLoad { message } => ApiError::field(
            "entry_point",
            format!("`entry_point` cannot be loaded: {message}"),
        ),
        other => other.into(),
    }
}

pub(super) fn registration_error(err: RegistryError) -> ApiError {
    if let RegistryError::ManifestDiffers { differences, .. } = &err {
        let field = differences.first().map_or("manifest", |d| d.field);
        return ApiError::field(field, err.to_string());
    }
    match err {
        RegistryError::Inspect(err) => inspect_error(err),
        err @ (RegistryError::Library { .. } | RegistryError::Manifest(_)) => {
            ApiError::field("entry_point", chain(&err))
        }
        other => other.into(),
    }
}

pub(crate) async fn enable_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
) -> Result<Response, ApiError> {
    let actor = actor(&key);
    let entry = blocking(move || {
        let id = resolve(&app, &id)?;
        Ok(app
            .registries
            .with(|registry| registry.enable(&id, &actor))?)
    })
    .await?;
    Ok(Json(entry).into_response())
}

pub(crate) async fn disable_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
) -> Result<Response, ApiError> {
    let actor = actor(&key);
    let entry = blocking(move || {
        let id = resolve(&app, &id)?;
        let entry = app
            .registries
            .with(|registry| registry.disable(&id, &actor))?;
        app.instances.stop(&id);
        Ok(entry)
    })
    .await?;
    Ok(Json(entry).into_response())
}

pub(crate) async fn unregister_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
) -> Result<Response, ApiError> {
    let actor = actor(&key);
    let entry = blocking(move || {
        let id = resolve(&app, &id)?;
        let entry = app
            .registries
            .with(|registry| registry.unregister(&id, &actor))?;
        app.instances.stop(&id);
        Ok(entry)
    })
    .await?;
    Ok(Json(entry).into_response())
}

pub(crate) async fn review_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
    JsonBody(body): JsonBody<ReviewBody>,
) -> Result<Response, ApiError> {
    let reviewer = actor(&key);
    let entry = blocking(move || {
        let id = resolve(&app, &id)?;
        review(&app, &id, &reviewer, body)
    })
    .await?;
    Ok(Json(entry).into_response())
}

/// Records a review's decision on plugin `id`.
fn review(
    app: &App,
    id: &str,
    reviewer: &str,
    body: ReviewBody,
) -> Result<crate::registry::Entry, ApiError> {
    match body.decision {
        Decision::Approve => {
            if body.reason.is_some() {
                return Err(ApiError::field(
                    "reason",
                    "`reason` is only for `\"decision\": \"reject\"`; leave it out when approving",
                ));
            }
            let grants = match body.permissions {
                None => None,
                Some(texts) => {
                    let mut grants = Vec::with_capacity(texts.len());
                    for (index, text) in texts.iter().enumerate() {
                        grants.push(text.parse::<Permission>().map_err(|err| {
                            ApiError::field(format!("permissions[{index}]"), err.to_string())
                        })?);
                    }
                    Some(grants)
                }
            };
            let isolation = match body.isolation.as_deref() {
                None => Isolation::Process,
                Some(text) => text
                    .parse::<Isolation>()
                    .map_err(|err| ApiError::field("isolation", format!("`isolation`: {err}")))?,
            };
            Ok(app.registries.with(|registry| {
                registry.approve_with_isolation(id, reviewer, grants, isolation)
            })?)
        }
        Decision::Reject => {
            if body.permissions.is_some() {
                return Err(ApiError::field(
                    "permissions",
                    "`permissions` are only for `\"decision\": \"approve\"`; a rejection grants nothing",
                ));
            }
            if body.isolation.is_some() {
                return Err(ApiError::field(
                    "isolation",
                    "`isolation` is only for `\"decision\": \"approve\"`; a rejected plugin does not run",
                ));
            }
            let reason = body.reason.unwrap_or_default();
            let entry = app
                .registries
                .with(|registry| registry.reject(id, reviewer, &reason))?;
            app.instances.stop(id);
            Ok(entry)
        }
    }
}

/// A plugin's output, handed to the response without a copy.
struct Output(Batch);

impl AsRef<[u8]> for Output {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

pub(crate) async fn process_batch(
    State(app): State<Arc<App>>,
    PluginId(id): PluginId,
    Records(batch): Records,
) -> Result<Response, ApiError> {
    let output = blocking(move || {
        if crate::registry::is_name(&id)
            && app
                .registries
                .with(|registry| registry.enabled_current(&id))?
                .is_some()
        {
            // A bare name with an enabled current version: it, and whichever version
            // an upgrade makes current, from the next batch on.
            return app.upgrades.process(&app, &id, &batch);
        }
        let id = resolve(&app, &id)?;
        app.instances
            .process(&app.registries, &app.host, &id, &batch)
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(Bytes::from_owner(Output(output))),
    )
        .into_response())
}

/// `POST /plugins/{id}/upgrade`: makes version `id` the current version of its name,
/// starting it before the old one stops (see `upgrades`).
pub(crate) async fn upgrade_plugin(
    State(app): State<Arc<App>>,
    Extension(key): Extension<ApiKey>,
    PluginId(id): PluginId,
) -> Result<Response, ApiError> {
    let actor = actor(&key);
    let report = blocking(move || {
        let (entry, current) = app
            .registries
            .with(|registry| registry.check_upgrade(&id))?;
        let from = current.map(|current| current.id);
        app.upgrades
            .upgrade(&app, &entry.manifest.name, from.as_deref(), &id, &actor)
    })
    .await?;
    Ok(Json(report).into_response())
}

/// Any path the table does not have.
pub(crate) async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!(
            "no route {method} {}; GET /openapi.json lists the routes",
            uri.path()
        ),
    )
}
