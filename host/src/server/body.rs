//! Request bodies: extractors whose every refusal is a JSON error naming the field at
//! fault (axum's own extractors answer in plain text), and the bodies the API takes.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};
use super::App;
use crate::batch::count_array;
use crate::Batch;

/// A JSON body of type `T`.
pub(crate) struct JsonBody<T>(pub T);

/// A body that is a JSON array of records.
pub(crate) struct Records(pub Batch);

/// The `{id}` of a path.
pub(crate) struct PluginId(pub String);

async fn read_body(request: Request, app: &Arc<App>) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, app)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(app.body_limit)
            } else {
                ApiError::new(
                    ErrorCode::InvalidBody,
                    format!("cannot read the request body: {}", rejection.body_text()),
                )
            }
        })
}

pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than this server's limit of {limit} bytes; send smaller batches"),
    )
}

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let bytes = read_body(request, app).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl FromRequest<Arc<App>> for Records {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let bytes = read_body(request, app).await?;
        count_array(&bytes).map_err(|reason| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!("request body must be a JSON array of records: {reason}"),
            )
        })?;
        Ok(Records(Batch::from_json(bytes.to_vec())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PluginId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(PluginId(id)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidId,
                format!("invalid plugin id in the path: {}", rejection.body_text()),
            )),
        }
    }
}

/// Parses a JSON object body; an error names the field (`permissions[1]`) where it
/// can. Every body the API reads is an object: anything else is refused as what it
/// is (`[1]` is an array, not invalid JSON).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let Some(&first) = bytes.trim_ascii().first() else {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "request body is empty; send a JSON object",
        ));
    };
    if first != b'{' && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        let found = match first {
            b'[' => "an array",
            b'"' => "a string",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            _ => "a number",
        };
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("request body must be a JSON object, not {found}"),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let inner = err.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                ErrorCode::InvalidBody,
                format!("request body is not valid JSON: {inner}"),
            );
        }
        let path = err.path().to_string();
        let field = if path == "." {
            quoted_field(&inner.to_string())
        } else {
            Some(path)
        };
        match field {
            Some(field) if !inner.to_string().contains(&format!("`{field}`")) => {
                ApiError::field(field.clone(), format!("invalid `{field}`: {inner}"))
            }
            Some(field) => ApiError::field(field, format!("invalid request body: {inner}")),
            None => ApiError::new(
                ErrorCode::InvalidBody,
                format!("invalid request body: {inner}"),
            ),
        }
    })?;
    deserializer.end().map_err(|err| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("request body has trailing characters after the JSON value: {err}"),
        )
    })?;
    Ok(value)
}

/// The field a serde message such as "missing field `name`" or "unknown field `x`,
/// expected …" is about.
fn quoted_field(message: &str) -> Option<String> {
    ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field.to_owned())
}

/// `POST /plugins/register`: the seed's registration body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    pub entry_point: String,
    pub permissions: Vec<String>,
}

/// `POST /plugins/{id}/review`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewBody {
    pub decision: Decision,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub isolation: Option<String>,
}

/// What a review decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Decision {
    Approve,
    Reject,
}

/// The library an `entry_point` names: an absolute local path or a `file://` URL.
/// Any other scheme is a remote location, which the server does not fetch.
pub(crate) fn entry_point_path(entry_point: &str) -> Result<PathBuf, ApiError> {
    const FIELD: &str = "entry_point";
    if entry_point.trim().is_empty() {
        return Err(ApiError::field(
            FIELD,
            "`entry_point` is empty; give the absolute path of the plugin's library on the server's machine",
        ));
    }
    if let Some((scheme, rest)) = entry_point.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            if !scheme.eq_ignore_ascii_case("file") {
                let downloaded = if cfg!(feature = "market") {
                    ", or an https://, http:// or oci:// location to download it from"
                } else {
                    ""
                };
                return Err(ApiError::field(
                    FIELD,
                    format!(
                        "`entry_point` `{entry_point}` is a remote `{scheme}` URL; remote entry points are not supported: copy the library to the server's machine and give its local path or a file:// URL{downloaded}"
                    ),
                ));
            }
            let path = match rest.find('/') {
                Some(0) => rest,
                Some(at) if rest[..at].eq_ignore_ascii_case("localhost") => &rest[at..],
                Some(at) => {
                    return Err(ApiError::field(
                        FIELD,
                        format!(
                            "`entry_point` `{entry_point}` names host `{}`; remote entry points are not supported: copy the library to the server's machine and use file:///PATH",
                            &rest[..at]
                        ),
                    ))
                }
                None => {
                    return Err(ApiError::field(
                        FIELD,
                        format!("`entry_point` `{entry_point}` has no path; write file:///absolute/path/to/libplugin.so"),
                    ))
                }
            };
            let decoded = percent_decode(path).ok_or_else(|| {
                ApiError::field(
                    FIELD,
                    format!("`entry_point` `{entry_point}` has an invalid percent-escape"),
                )
            })?;
            return Ok(PathBuf::from(decoded));
        }
    }
    let path = PathBuf::from(entry_point);
    if !path.is_absolute() {
        return Err(ApiError::field(
            FIELD,
            format!(
                "`entry_point` `{entry_point}` is a relative path; give the absolute path of the library on the server's machine or a file:// URL"
            ),
        ));
    }
    Ok(path)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_are_local_paths_or_file_urls() {
        assert_eq!(
            entry_point_path("/opt/p/libp.so").unwrap(),
            PathBuf::from("/opt/p/libp.so")
        );
        assert_eq!(
            entry_point_path("file:///opt/my%20p/libp.so").unwrap(),
            PathBuf::from("/opt/my p/libp.so")
        );
        assert_eq!(
            entry_point_path("file://localhost/opt/libp.so").unwrap(),
            PathBuf::from("/opt/libp.so")
        );
        for remote in [
            "https://example.com/libp.so",
            "http://example.com/libp.so",
            "s3://bucket/libp.so",
            "file://otherhost/opt/libp.so",
        ] {
            let err = entry_point_path(remote).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("entry_point"));
            assert!(
                err.message
                    .contains("remote entry points are not supported"),
                "{}",
                err.message
            );
        }
        let relative = entry_point_path("libp.so").unwrap_err();
        assert!(relative.message.contains("relative path"));
        assert!(entry_point_path("file:///bad%zz").is_err());
    }

    #[test]
    fn body_errors_name_the_field() {
        let missing = parse_json::<RegisterBody>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(missing.field.as_deref(), Some("version"));
        let unknown = parse_json::<RegisterBody>(
            br#"{"name": "x", "version": "1.0.0", "entry_point": "/x", "permissions": [], "colour": 1}"#,
        )
        .unwrap_err();
        assert_eq!(unknown.field.as_deref(), Some("colour"));
        let wrong = parse_json::<RegisterBody>(
            br#"{"name": "x", "version": "1.0.0", "entry_point": "/x", "permissions": ["a", 5]}"#,
        )
        .unwrap_err();
        assert_eq!(wrong.field.as_deref(), Some("permissions[1]"));
        let syntax = parse_json::<RegisterBody>(br#"{"name": "#).unwrap_err();
        assert_eq!(syntax.field, None);
        assert!(syntax.message.contains("not valid JSON"));
        let decision = parse_json::<ReviewBody>(br#"{"decision": "maybe"}"#).unwrap_err();
        assert_eq!(decision.field.as_deref(), Some("decision"));
        for (body, found) in [
            (&b"[1]"[..], "an array"),
            (b" [{\"decision\": \"approve\"}] ", "an array"),
            (b"\"approve\"", "a string"),
            (b"null", "null"),
            (b"1", "a number"),
        ] {
            let error = parse_json::<ReviewBody>(body).unwrap_err();
            assert_eq!(
                error.message,
                format!("request body must be a JSON object, not {found}")
            );
        }
        assert!(parse_json::<ReviewBody>(b"[1,")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }
}
