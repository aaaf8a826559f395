//! Errors as the API shows them: a status, a stable code, a message and, for a bad
//! body, the field at fault, always as `{"error": {"code", "message", "field"?}}`.

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::loader::LoadError;
use crate::registry::{AuthError, RegistryError};
use crate::runtime::{CallError, StartError};

/// The machine-readable part of an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The body (or a field of it) is wrong.
    InvalidBody,
    /// The `{id}` in the path is not `name@version`.
    InvalidId,
    /// No usable API key.
    Unauthorized,
    /// The key lacks the route's scope.
    Forbidden,
    /// No plugin with this id.
    NotFound,
    /// A bare name with several registered versions, not exactly one enabled.
    AmbiguousName,
    /// No route with this path.
    RouteNotFound,
    /// The path exists, not with this method.
    MethodNotAllowed,
    /// The id is already registered.
    AlreadyRegistered,
    /// The plugin has not been approved.
    NotApproved,
    /// The plugin is disabled.
    Disabled,
    /// The library changed since registration or review.
    LibraryChanged,
    /// The plugin may not receive batches (grant or hook missing).
    NotPermitted,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// The plugin refused the batch.
    PluginError,
    /// The plugin panicked.
    PluginPanicked,
    /// The plugin's instance failed.
    PluginFailed,
    /// The plugin's instance could not start.
    PluginStartFailed,
    /// The plugin returned something that is not a JSON array.
    InvalidPluginOutput,
    /// The plugin missed its deadline.
    PluginTimeout,
    /// The request missed the server's deadline.
    RequestTimeout,
    /// The plugin's instance failed too often: the next one starts later.
    PluginBackoff,
    /// The version an upgrade asked for did not start; the one before stays current.
    UpgradeFailed,
    /// A plugin name has no current version.
    NoCurrentVersion,
    /// Another upgrade changed the name's current version meanwhile.
    CurrentChanged,
    /// A marketplace artifact was refused: a digest or signature does not verify, or
    /// it contradicts its attestation, or it is not a plugin for this platform.
    ArtifactRefused,
    /// The plugin cannot be published (not approved, or not signed).
    NotPublishable,
    /// The marketplace tag already names another artifact.
    TagExists,
    /// The marketplace (an OCI registry) could not be reached or refused.
    UpstreamFailed,
    /// Anything else on the server's side.
    Internal,
    /// The request is not HTTP/1.1 the server can read.
    BadRequest,
    /// The request head did not arrive in full in time.
    HeaderTimeout,
    /// The request line is too long.
    UriTooLong,
    /// The request head is too large, or has too many fields.
    HeadersTooLarge,
    /// The server serves as many connections as it allows.
    TooManyConnections,
    /// The server is shutting down.
    ShuttingDown,
    /// Another HTTP version than 1.1 or 1.0.
    VersionNotSupported,
}

impl ErrorCode {
    /// Every code, for the OpenAPI document.
    pub(crate) const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidBody,
        ErrorCode::InvalidId,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AmbiguousName,
        ErrorCode::RouteNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AlreadyRegistered,
        ErrorCode::NotApproved,
        ErrorCode::Disabled,
        ErrorCode::LibraryChanged,
        ErrorCode::NotPermitted,
        ErrorCode::PayloadTooLarge,
        ErrorCode::PluginError,
        ErrorCode::PluginPanicked,
        ErrorCode::PluginFailed,
        ErrorCode::PluginStartFailed,
        ErrorCode::InvalidPluginOutput,
        ErrorCode::PluginTimeout,
        ErrorCode::RequestTimeout,
        ErrorCode::PluginBackoff,
        ErrorCode::UpgradeFailed,
        ErrorCode::NoCurrentVersion,
        ErrorCode::CurrentChanged,
        ErrorCode::ArtifactRefused,
        ErrorCode::NotPublishable,
        ErrorCode::TagExists,
        ErrorCode::UpstreamFailed,
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::HeaderTimeout,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::ShuttingDown,
        ErrorCode::VersionNotSupported,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AmbiguousName => "ambiguous_name",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::AlreadyRegistered => "already_registered",
            ErrorCode::NotApproved => "not_approved",
            ErrorCode::Disabled => "disabled",
            ErrorCode::LibraryChanged => "library_changed",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::PluginError => "plugin_error",
            ErrorCode::PluginPanicked => "plugin_panicked",
            ErrorCode::PluginFailed => "plugin_failed",
            ErrorCode::PluginStartFailed => "plugin_start_failed",
            ErrorCode::InvalidPluginOutput => "invalid_plugin_output",
            ErrorCode::PluginTimeout => "plugin_timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PluginBackoff => "plugin_backoff",
            ErrorCode::UpgradeFailed => "upgrade_failed",
            ErrorCode::NoCurrentVersion => "no_current_version",
            ErrorCode::CurrentChanged => "current_changed",
            ErrorCode::ArtifactRefused => "artifact_refused",
            ErrorCode::NotPublishable => "not_publishable",
            ErrorCode::TagExists => "tag_exists",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::HeaderTimeout => "header_timeout",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::VersionNotSupported => "http_version_not_supported",
        }
    }

    /// The status that goes with the code.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidBody | ErrorCode::InvalidId | ErrorCode::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::TooManyConnections | ErrorCode::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::AlreadyRegistered
            | ErrorCode::AmbiguousName
            | ErrorCode::NotApproved
            | ErrorCode::Disabled
            | ErrorCode::LibraryChanged
            | ErrorCode::NotPermitted
            | ErrorCode::NoCurrentVersion
            | ErrorCode::CurrentChanged
            | ErrorCode::NotPublishable
            | ErrorCode::TagExists => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PluginError | ErrorCode::ArtifactRefused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PluginPanicked
            | ErrorCode::PluginFailed
            | ErrorCode::PluginStartFailed
            | ErrorCode::UpgradeFailed
            | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InvalidPluginOutput | ErrorCode::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::RequestTimeout | ErrorCode::PluginBackoff => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PluginTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code for a status that some layer produced without one.
    pub(crate) fn for_status(status: StatusCode) -> ErrorCode {
        match status {
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::NOT_FOUND => ErrorCode::RouteNotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::REQUEST_TIMEOUT
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => ErrorCode::RequestTimeout,
            status if status.is_client_error() => ErrorCode::InvalidBody,
            _ => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// `WWW-Authenticate`, for 401 and 403.
    pub challenge: Option<String>,
    /// `Retry-After`, in seconds, for a 503 that knows when to come back.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            challenge: None,
            retry_after: None,
        }
    }

    /// A bad body, naming the field at fault.
    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(ErrorCode::InvalidBody, message)
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            challenge: Some("Bearer realm=\"plugbay\"".to_owned()),
            ..ApiError::new(ErrorCode::Unauthorized, message)
        }
    }

    pub(crate) fn forbidden(scope: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            challenge: Some(format!(
                "Bearer realm=\"plugbay\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            ..ApiError::new(ErrorCode::Forbidden, message)
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read, so this connection cannot carry
            // another request: say so, or a client may reuse it and lose its next one.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self
            .challenge
            .as_deref()
            .and_then(|text| HeaderValue::from_str(text).ok())
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            err @ RegistryError::InvalidId { .. } => {
                ApiError::new(ErrorCode::InvalidId, err.to_string())
            }
            RegistryError::NotFound { id } => ApiError::new(
                ErrorCode::NotFound,
                format!("no plugin `{id}` in the registry; GET /plugins lists the registered ids"),
            ),
            err @ RegistryError::Ambiguous { .. } => {
                ApiError::new(ErrorCode::AmbiguousName, err.to_string())
            }
            RegistryError::Conflict { id } => ApiError::new(
                ErrorCode::AlreadyRegistered,
                format!("plugin `{id}` is already registered; register a rebuild of it as its next revision (reviewed again) with PUT /plugins/{id}, unregister it first (DELETE /plugins/{id}), or bump its version"),
            ),
            RegistryError::NotApproved { id, status } => ApiError::new(
                ErrorCode::NotApproved,
                format!("plugin `{id}` is {status}, not approved; review it first (POST /plugins/{id}/review)"),
            ),
            RegistryError::Disabled { id } => ApiError::new(
                ErrorCode::Disabled,
                format!("plugin `{id}` is disabled; enable it first (PUT /plugins/{id}/enable)"),
            ),
            err @ RegistryError::LibraryChanged { .. } => {
                ApiError::new(ErrorCode::LibraryChanged, err.to_string())
            }
            err @ RegistryError::InvalidName { .. } => {
                ApiError::new(ErrorCode::InvalidId, err.to_string())
            }
            RegistryError::NoCurrentVersion { name, versions } => ApiError::new(
                ErrorCode::NoCurrentVersion,
                format!(
                    "plugin name `{name}` has no current version{}; POST /plugins/{name}@VERSION/upgrade makes an approved, enabled version current",
                    if versions.is_empty() { " (no version of it is registered)".to_owned() } else { format!(" (registered: {})", versions.join(", ")) }
                ),
            ),
            err @ RegistryError::CurrentChanged { .. } => {
                ApiError::new(ErrorCode::CurrentChanged, err.to_string())
            }
            err @ (RegistryError::NotRequested { .. } | RegistryError::ProcessDataWithheld { .. }) => {
                ApiError::field("permissions", err.to_string())
            }
            RegistryError::NoReason { id } => {
                ApiError::field("reason", format!("rejecting `{id}` needs a non-empty `reason`"))
            }
            RegistryError::Key(AuthError::Malformed) => ApiError::unauthorized(
                "malformed API key; send `Authorization: Bearer KEY` with the key `plugbay keys create` printed",
            ),
            RegistryError::Key(err @ (AuthError::Unknown | AuthError::Revoked { .. })) => {
                ApiError::unauthorized(err.to_string())
            }
            other => ApiError::internal(chain(&other)),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> ApiError {
        let code = match &err {
            CallError::Plugin { .. } => ErrorCode::PluginError,
            CallError::Panicked { .. } => ErrorCode::PluginPanicked,
            CallError::Timeout { .. } => ErrorCode::PluginTimeout,
            CallError::InvalidOutput { .. } => ErrorCode::InvalidPluginOutput,
            CallError::NotPermitted { .. } => ErrorCode::NotPermitted,
            _ => ErrorCode::PluginFailed,
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<StartError> for ApiError {
    fn from(err: StartError) -> ApiError {
        if matches!(err, StartError::Load(LoadError::DigestMismatch { .. })) {
            return ApiError::new(ErrorCode::LibraryChanged, chain(&err));
        }
        ApiError::new(ErrorCode::PluginStartFailed, chain(&err))
    }
}

/// An error and its causes, `: `-separated.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
