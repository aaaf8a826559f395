//! What runs around every handler: the API key check, the per-request deadline, and
//! the guarantee that every error leaves as a JSON body.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body::Body as _;

use super::error::{ApiError, ErrorCode};
use super::routes::Access;
use super::App;
use crate::registry::ApiKey;

/// Checks the `Authorization: Bearer KEY` header against the registry's keys and the
/// route's scope; the key (never its secret) goes into the request's extensions.
pub(crate) async fn authorize(
    State((app, access)): State<(Arc<App>, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).cloned();
    let route = format!("{} {}", request.method(), request.uri().path());
    match check(&app, access, header, &route).await {
        Ok(key) => {
            request.extensions_mut().insert(key);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

async fn check(
    app: &Arc<App>,
    access: Access,
    header: Option<HeaderValue>,
    route: &str,
) -> Result<ApiKey, ApiError> {
    let header = header.ok_or_else(|| {
            ApiError::unauthorized(
                "missing `Authorization: Bearer KEY` header; create a key with `plugbay keys create --name NAME --scope SCOPE`",
            )
        })?;
    let text = header.to_str().map_err(|_| {
        ApiError::unauthorized("malformed `Authorization` header; send `Authorization: Bearer KEY`")
    })?;
    let token = text
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "malformed `Authorization` header; it must use the Bearer scheme: `Authorization: Bearer KEY`",
            )
        })?;
    let pool = app.clone();
    let key = tokio::task::spawn_blocking(move || {
        pool.registries
            .with(|registry| registry.authenticate(&token))
    })
    .await
    .map_err(|err| ApiError::internal(format!("the key check failed: {err}")))??;
    match access {
        Access::Scope(scope) if !key.allows(scope) => Err(ApiError::forbidden(
            scope.as_str(),
            format!(
                "API key `{}` lacks scope `{scope}`, which {route} needs; create a key with `--scope {scope}`",
                key.name,
            ),
        )),
        _ => Ok(key),
    }
}

/// Answers 503 `request_timeout` when a request takes longer than the server allows.
pub(crate) async fn deadline(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = app.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request did not finish within the server's request timeout ({limit:?})"),
        )
        .into_response(),
    }
}

/// How much more than the body limit a request may declare and still be read (and
/// discarded) before its 413...
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
/// ...and for how long at most.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Answers 413 to a request whose `Content-Length` is over the body limit, after
/// reading and discarding its body (up to [`LINGER_BYTES`] over the limit, for
/// [`LINGER_TIME`] at most). A server that answers and closes with the body unread
/// makes the kernel reset the connection, and a client still sending its body then
/// often loses the answer along with the connection: it sees "connection reset"
/// instead of the 413 that says what to do. Bodies that declare no length are cut
/// off at the limit by the layers inside.
pub(crate) async fn refuse_long_bodies(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit = app.body_limit as u64;
    match declared {
        Some(length) if length > limit => {
            if length <= limit.saturating_add(LINGER_BYTES) {
                let mut body = request.into_body();
                let drain = async {
                    while let Some(Ok(_)) =
                        std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    {
                    }
                };
                let _ = tokio::time::timeout(LINGER_TIME, drain).await;
            }
            super::body::too_large(app.body_limit).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Turns an error answered by a layer or by axum itself (405, 413, a rejection) into
/// the API's JSON error body, keeping headers such as `Allow`.
pub(crate) async fn json_errors(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let code = ErrorCode::for_status(status);
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "method {method} is not allowed on {path}; it allows {}",
            super::routes::allowed_methods(&path).join(", ")
        ),
        StatusCode::PAYLOAD_TOO_LARGE => super::body::too_large(app.body_limit).message,
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    // The status stays the one the layer chose; the code describes it.
    let error = ApiError::new(code, message);
    let mut replaced = (status, Json(error.body())).into_response();
    if method == Method::HEAD {
        *replaced.body_mut() = axum::body::Body::empty();
    }
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().append(name.clone(), value.clone());
        }
    }
    replaced
}
