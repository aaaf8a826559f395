//! The `plugin.json` manifest of a Plugbay plugin: parsing, validation and permissions.
//!
//! One validator serves the `#[plugbay::plugin]` macro (at compile time), the host
//! (at load time) and the registry (at registration), so a manifest means the same
//! thing everywhere.
//!
//! # Examples
//!
//! ```
//! use plugbay_manifest::{Manifest, Permission};
//!
//! let manifest = Manifest::parse(r#"{
//!     "name": "data-processor",
//!     "version": "1.0.0",
//!     "description": "marks records as processed",
//!     "author": "Plugbay",
//!     "website": "https://example.com",
//!     "main": "data_processor",
//!     "hooks": ["init", "process", "cleanup"],
//!     "permissions": ["process:data"]
//! }"#)?;
//! assert_eq!(manifest.id(), "data-processor@1.0.0");
//! assert!(manifest.permissions.contains(&Permission::ProcessData));
//! # Ok::<(), plugbay_manifest::ManifestError>(())
//! ```
#![deny(missing_docs)]

mod permission;
mod suggest;

use std::fmt;

pub use permission::{FsPath, Permission, PermissionError, PLACEHOLDERS};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub use suggest::closest;
use suggest::expected;

/// Every field a manifest may have, in the order they are documented.
pub const FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "author",
    "website",
    "main",
    "hooks",
    "permissions",
    "api_version",
    "timeout_ms",
    "config",
];

/// The lifecycle hooks a plugin may declare.
pub const HOOKS: &[&str] = &["init", "process", "cleanup"];

/// The largest per-call deadline a manifest may ask for (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// A lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// `init(context)`: receives the plugin id, its config and the host services.
    Init,
    /// `process(batch)`: receives a batch of JSON records and returns one.
    Process,
    /// `cleanup()`: the last call an instance receives.
    Cleanup,
}

impl Hook {
    /// The hook's name as written in `plugin.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Process => "process",
            Hook::Cleanup => "cleanup",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Plugin name: lowercase letters, digits and `-`.
    pub name: String,
    /// The plugin's own version.
    pub version: semver::Version,
    /// What the plugin does.
    pub description: String,
    /// Who wrote it.
    pub author: String,
    /// Where to read more (an `http://` or `https://` URL), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    /// The library: a bare name (`data_processor`) resolves to the platform's file
    /// name (`libdata_processor.so`, `data_processor.dll`, `libdata_processor.dylib`).
    pub main: String,
    /// The hooks the plugin implements. `plugin.json` may list them
    /// (`["init", "process"]`) or, as the seed's manifests do, map each to the name
    /// of its handler (`{"init": "onInit", "process": "onProcess"}`): for a native
    /// plugin the names are informational (its hooks are the methods of its `Plugin`
    /// impl), so only the hooks are kept, in the order they run.
    pub hooks: Vec<Hook>,
    /// The permissions the plugin asks for.
    pub permissions: Vec<Permission>,
    /// The plugbay-api versions the plugin works with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<semver::VersionReq>,
    /// The deadline of each call, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The default config passed to `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The text is not JSON.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The JSON is not an object.
    #[error("the manifest must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A field that the manifest format does not have.
    #[error(
        "unknown field `{field}` (line {line}){}",
        expected(closest(field, FIELDS.iter().copied()), &list(FIELDS))
    )]
    UnknownField {
        /// The field's name.
        field: String,
        /// 1-based line where it appears.
        line: usize,
    },
    /// A required field is absent.
    #[error(
        "missing field `{field}`; add it (every manifest needs {})",
        list(REQUIRED)
    )]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A field is present but its value is wrong.
    #[error("invalid `{field}` (line {line}): {message}")]
    InvalidField {
        /// The field's name (with an index for list items: `permissions[2]`).
        field: String,
        /// 1-based line where the field appears.
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },
}

const REQUIRED: &[&str] = &[
    "name",
    "version",
    "description",
    "author",
    "main",
    "hooks",
    "permissions",
];

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The 1-based line of the first `"key":` in `text`, or 1 if it cannot be found.
fn line_of(text: &str, key: &str) -> usize {
    let needle = format!("\"{key}\"");
    text.find(&needle)
        .map(|at| text[..at].matches('\n').count() + 1)
        .unwrap_or(1)
}

struct Fields<'a> {
    text: &'a str,
    object: Map<String, Value>,
}

impl Fields<'_> {
    fn invalid(&self, field: &str, message: impl Into<String>) -> ManifestError {
        let key = field.split(['[', '.']).next().unwrap_or(field);
        ManifestError::InvalidField {
            field: field.to_owned(),
            line: line_of(self.text, key),
            message: message.into(),
        }
    }

    fn required(&mut self, field: &'static str) -> Result<Value, ManifestError> {
        self.object
            .remove(field)
            .ok_or(ManifestError::MissingField { field })
    }

    fn string(&mut self, field: &'static str) -> Result<String, ManifestError> {
        let value = self.required(field)?;
        self.as_string(field, value)
    }

    fn as_string(&self, field: &str, value: Value) -> Result<String, ManifestError> {
        match value {
            Value::String(text) => Ok(text),
            other => Err(self.invalid(
                field,
                format!("expected a string, found {}", json_type(&other)),
            )),
        }
    }

    fn strings(&mut self, field: &'static str) -> Result<Vec<String>, ManifestError> {
        match self.required(field)? {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| self.as_string(&format!("{field}[{index}]"), item))
                .collect(),
            other => Err(self.invalid(
                field,
                format!("expected an array of strings, found {}", json_type(&other)),
            )),
        }
    }
}

impl Fields<'_> {
    /// `hooks`: a list of hook names (`["init", "process"]`), or the seed's object
    /// of hook names to handler names (`{"init": "onInit", "process": "onProcess"}`),
    /// whose values are informational for a native plugin (its hooks are the methods
    /// of its `Plugin` impl) and are not kept.
    fn hooks(&mut self) -> Result<Vec<Hook>, ManifestError> {
        let value = self.required("hooks")?;
        let object_form = value.is_object();
        let names: Vec<(String, String)> = match value {
            Value::Object(object) => {
                let mut names = Vec::with_capacity(object.len());
                for (hook, handler) in object {
                    let field = format!("hooks.{hook}");
                    match handler {
                        Value::String(_) => names.push((field, hook)),
                        other => {
                            return Err(self.invalid(
                                &field,
                                format!(
                                    "expected the name of the hook's handler (a string; informational for a native plugin), found {}",
                                    json_type(&other)
                                ),
                            ))
                        }
                    }
                }
                names
            }
            Value::Array(items) => {
                let mut names = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    let field = format!("hooks[{index}]");
                    let name = self.as_string(&field, item)?;
                    names.push((field, name));
                }
                names
            }
            other => {
                return Err(self.invalid(
                    "hooks",
                    format!(
                        "expected an array of hook names (`[\"init\", \"process\"]`) or an object of hook names to handler names (`{{\"process\": \"onProcess\"}}`), found {}",
                        json_type(&other)
                    ),
                ))
            }
        };
        let mut hooks = Vec::with_capacity(names.len());
        for (field, name) in names {
            let parsed = match name.as_str() {
                "init" => Hook::Init,
                "process" => Hook::Process,
                "cleanup" => Hook::Cleanup,
                other => {
                    return Err(self.invalid(
                        &field,
                        format!(
                            "unknown hook `{other}`{}",
                            expected(closest(other, HOOKS.iter().copied()), &list(HOOKS))
                        ),
                    ))
                }
            };
            if hooks.contains(&parsed) {
                return Err(self.invalid(&field, format!("hook `{name}` is listed twice")));
            }
            hooks.push(parsed);
        }
        if object_form {
            // An object's keys have no order of their own: list the hooks in the
            // order they run.
            hooks.sort();
        }
        Ok(hooks)
    }
}

impl Manifest {
    /// Parses and validates a manifest.
    ///
    /// Every error names the field at fault and, where it can, the line.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let value: Value = serde_json::from_str(text).map_err(|err| json_error(text, &err))?;
        let object = match value {
            Value::Object(object) => object,
            other => {
                return Err(ManifestError::NotAnObject {
                    found: json_type(&other),
                })
            }
        };
        if let Some(field) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(ManifestError::UnknownField {
                line: line_of(text, field),
                field: field.clone(),
            });
        }
        let mut fields = Fields { text, object };

        let name = fields.string("name")?;
        validate_name(&name).map_err(|message| fields.invalid("name", message))?;

        let version_text = fields.string("version")?;
        let version = semver::Version::parse(&version_text).map_err(|err| {
            fields.invalid(
                "version",
                format!(
                    "`{version_text}` is not a semantic version ({err}); write it as MAJOR.MINOR.PATCH, like `1.0.0`"
                ),
            )
        })?;

        let description = fields.string("description")?;
        if description.trim().is_empty() {
            return Err(fields.invalid("description", "must not be empty"));
        }
        let author = fields.string("author")?;
        if author.trim().is_empty() {
            return Err(fields.invalid("author", "must not be empty"));
        }

        let website = match fields.object.remove("website") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let url = fields.as_string("website", value)?;
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.len() <= "https://".len()
                {
                    return Err(fields.invalid(
                        "website",
                        format!("`{url}` is not an http:// or https:// URL"),
                    ));
                }
                Some(url)
            }
        };

        let main = fields.string("main")?;
        validate_main(&main).map_err(|message| fields.invalid("main", message))?;

        let hooks = fields.hooks()?;

        let mut permissions = Vec::new();
        for (index, text) in fields.strings("permissions")?.into_iter().enumerate() {
            let field = format!("permissions[{index}]");
            let permission: Permission = text
                .parse()
                .map_err(|err: PermissionError| fields.invalid(&field, err.to_string()))?;
            if permissions.contains(&permission) {
                return Err(fields.invalid(&field, format!("permission `{text}` is listed twice")));
            }
            permissions.push(permission);
        }
        if hooks.contains(&Hook::Process) && !permissions.contains(&Permission::ProcessData) {
            return Err(fields.invalid(
                "permissions",
                "the `process` hook needs the `process:data` permission; add it to `permissions`",
            ));
        }

        let api_version = match fields.object.remove("api_version") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let text = fields.as_string("api_version", value)?;
                Some(semver::VersionReq::parse(&text).map_err(|err| {
                    fields.invalid(
                        "api_version",
                        format!(
                            "`{text}` is not a semver requirement ({err}); write it like `^0.1`"
                        ),
                    )
                })?)
            }
        };

        let timeout_ms = match fields.object.remove("timeout_ms") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64() {
                Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Some(ms),
                _ => {
                    return Err(fields.invalid(
                        "timeout_ms",
                        format!("expected a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, found {value}"),
                    ))
                }
            },
        };

        let config = match fields.object.remove("config") {
            None | Some(Value::Null) => None,
            Some(value @ Value::Object(_)) => Some(value),
            Some(other) => {
                return Err(fields.invalid(
                    "config",
                    format!("expected an object, found {}", json_type(&other)),
                ))
            }
        };

        Ok(Manifest {
            name,
            version,
            description,
            author,
            website,
            main,
            hooks,
            permissions,
            api_version,
            timeout_ms,
            config,
        })
    }

    /// The plugin's id: `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Whether the manifest declares `hook`.
    pub fn has_hook(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    /// The manifest as compact JSON, in the format [`Manifest::parse`] reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a manifest always serializes")
    }

    /// The library's file name on this platform: a bare `main` (no `.` and no `/`)
    /// becomes `lib{main}.so` on Linux, `{main}.dll` on Windows and
    /// `lib{main}.dylib` on macOS; anything else is used as written.
    pub fn library_file_name(&self) -> String {
        if self.main.contains(['.', '/', '\\']) {
            self.main.clone()
        } else {
            library_file_name(&self.main)
        }
    }
}

/// The file name of the library `name` on this platform: `lib{name}.so` on Linux,
/// `{name}.dll` on Windows, `lib{name}.dylib` on macOS. A cdylib crate `data-processor`
/// is the library `data_processor`.
pub fn library_file_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// A JSON syntax error, with a hint for the mistakes people make in hand-written
/// JSON: a comma after the last item (reported at the comma, not at the bracket that
/// follows it) and comments.
fn json_error(text: &str, err: &serde_json::Error) -> ManifestError {
    let message = strip_position(&err.to_string());
    let at = byte_offset(text, err.line(), err.column());
    if message == "trailing comma" {
        let comma = at.and_then(|at| text[..at].trim_end().strip_suffix(','));
        if let Some(before) = comma {
            let (line, column) = line_column(text, before.len());
            return ManifestError::Json {
                line,
                column,
                message: "trailing comma; JSON allows no comma after the last item, remove it"
                    .to_owned(),
            };
        }
    }
    let hint = match at.map(|at| &text[at..]) {
        Some(rest) if rest.starts_with("//") || rest.starts_with("/*") => {
            "; JSON has no comments, remove it"
        }
        _ => "",
    };
    ManifestError::Json {
        line: err.line(),
        column: err.column(),
        message: format!("{message}{hint}"),
    }
}

/// The byte offset of serde_json's 1-based line and (byte) column, if it is in `text`.
fn byte_offset(text: &str, line: usize, column: usize) -> Option<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let at = start + column.checked_sub(1)?;
    (at <= text.len() && text.is_char_boundary(at)).then_some(at)
}

/// The 1-based line and (character) column of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "`{name}` must be 1 to 64 characters of `a-z`, `0-9` and `-`"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{name}` contains `{bad}`; use only `a-z`, `0-9` and `-`"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("`{name}` must not start or end with `-`"));
    }
    Ok(())
}

fn validate_main(main: &str) -> Result<(), String> {
    if main.trim().is_empty() {
        return Err("must name the library, e.g. `data_processor`".to_owned());
    }
    if main.contains("://") {
        return Err(format!(
            "`{main}` is a URL; `main` is the library's file name or a path relative to plugin.json"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
  "name": "data-processor",
  "version": "1.0.0",
  "description": "marks records as processed",
  "author": "Plugbay",
  "website": "https://example.com",
  "main": "data_processor",
  "hooks": ["init", "process", "cleanup"],
  "permissions": ["process:data", "fs:read:${plugin_dir}/data"],
  "timeout_ms": 500,
  "config": {"mode": "fast"}
}"#;

    fn with(field: &str, value: &str) -> String {
        let mut object: Map<String, Value> = serde_json::from_str(GOOD).unwrap();
        object.insert(field.to_owned(), serde_json::from_str(value).unwrap());
        serde_json::to_string_pretty(&object).unwrap()
    }

    fn without(field: &str) -> String {
        let mut object: Map<String, Value> = serde_json::from_str(GOOD).unwrap();
        object.remove(field);
        serde_json::to_string_pretty(&object).unwrap()
    }

    #[test]
    fn parses_the_seed_manifest_and_round_trips() {
        let manifest = Manifest::parse(GOOD).unwrap();
        assert_eq!(manifest.id(), "data-processor@1.0.0");
        assert_eq!(
            manifest.hooks,
            vec![Hook::Init, Hook::Process, Hook::Cleanup]
        );
        assert_eq!(manifest.timeout_ms, Some(500));
        assert_eq!(Manifest::parse(&manifest.to_json()).unwrap(), manifest);
        if cfg!(target_os = "linux") {
            assert_eq!(manifest.library_file_name(), "libdata_processor.so");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (with("name", "\"Data Processor\""), "invalid `name`"),
            (with("version", "\"1.0\""), "invalid `version`"),
            (with("website", "\"ftp://x\""), "invalid `website`"),
            (with("hooks", "[\"start\"]"), "unknown hook `start`"),
            (
                with("permissions", "[\"read:dta\"]"),
                "unknown permission `read:dta`",
            ),
            (
                with("permissions", "[\"fs:read:relative\"]"),
                "invalid `permissions[0]`",
            ),
            (
                with("permissions", "[\"net:connect:70000\"]"),
                "invalid `permissions[0]`",
            ),
            (
                with("permissions", "[]"),
                "needs the `process:data` permission",
            ),
            (with("timeout_ms", "0"), "invalid `timeout_ms`"),
            (with("config", "[1]"), "invalid `config`"),
            (
                with("api_version", "\"not a req\""),
                "invalid `api_version`",
            ),
            (with("colour", "\"red\""), "unknown field `colour`"),
            (without("author"), "missing field `author`"),
            (
                with("description", "3"),
                "expected a string, found a number",
            ),
            ("[1]".to_owned(), "must be a JSON object"),
            ("{\"name\": }".to_owned(), "invalid JSON at line 1"),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_line() {
        let err = Manifest::parse(&with("version", "\"x\"")).unwrap_err();
        match err {
            ManifestError::InvalidField { field, line, .. } => {
                assert_eq!(field, "version");
                assert!(line > 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_mistakes_get_a_hint() {
        let trailing = "{\n  \"name\": \"x\",\n  \"hooks\": [\"init\"],\n}";
        assert_eq!(
            Manifest::parse(trailing).unwrap_err(),
            ManifestError::Json {
                line: 3,
                column: 20,
                message: "trailing comma; JSON allows no comma after the last item, remove it"
                    .to_owned(),
            }
        );
        let in_list = Manifest::parse("{\"hooks\": [\"init\", ]}").unwrap_err();
        assert!(
            in_list
                .to_string()
                .contains("line 1, column 18: trailing comma"),
            "{in_list}"
        );
        for comment in [
            "{\n  // the name\n  \"name\": \"x\"\n}",
            "{\"name\": /* x */ \"x\"}",
        ] {
            let err = Manifest::parse(comment).unwrap_err().to_string();
            assert!(err.ends_with("; JSON has no comments, remove it"), "{err}");
        }
    }

    #[test]
    fn hooks_may_be_the_seeds_object_of_handler_names() {
        let seed = with(
            "hooks",
            r#"{"init": "onInit", "process": "onProcess", "cleanup": "onCleanup"}"#,
        );
        let manifest = Manifest::parse(&seed).unwrap();
        assert_eq!(
            manifest.hooks,
            vec![Hook::Init, Hook::Process, Hook::Cleanup]
        );
        assert_eq!(manifest, Manifest::parse(GOOD).unwrap(), "the same plugin");
        let only_process = Manifest::parse(&with("hooks", r#"{"process": "run"}"#)).unwrap();
        assert_eq!(only_process.hooks, vec![Hook::Process]);

        for (hooks, expected) in [
            (
                r#"{"init": "onInit", "proces": "onProcess"}"#,
                "unknown hook `proces`; did you mean `process`? expected one of `init`, `process`, `cleanup`",
            ),
            (
                r#"{"process": true}"#,
                "expected the name of the hook's handler (a string; informational for a native plugin), found a boolean",
            ),
            (r#""process""#, "expected an array of hook names"),
            (r#"["init", "Process"]"#, "unknown hook `Process`; did you mean `process`?"),
        ] {
            let err = Manifest::parse(&with("hooks", hooks)).unwrap_err();
            let ManifestError::InvalidField { field, line, .. } = &err else {
                panic!("{err}");
            };
            assert!(field.starts_with("hooks"), "{err}");
            assert_eq!(*line, line_of(&with("hooks", hooks), "hooks"), "{err}");
            let err = err.to_string();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn misspelt_fields_get_a_suggestion() {
        let err = Manifest::parse(&with("permission", r#"["process:data"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `permission` (line 14); did you mean `permissions`? expected one of `name`,"),
            "{err}"
        );
        let err = Manifest::parse(&with("permissions", r#"["process:data", "read:dta"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown permission `read:dta`; did you mean `read:data`? expected one of `process:data`,"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let err = Manifest::parse(&with("permissions", "[\"process:data\", \"process:data\"]"))
            .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }
}
