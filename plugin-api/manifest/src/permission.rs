//! Permissions a plugin asks for in its manifest.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::suggest::{closest, expected};

/// The placeholders a filesystem permission may start with.
pub const PLACEHOLDERS: &[&str] = &["${plugin_dir}", "${data_dir}"];

const KNOWN: &[&str] = &[
    "process:data",
    "read:data",
    "write:data",
    "fs:read:PATH",
    "fs:write:PATH",
    "net:connect:PORT",
    "net:bind:PORT",
    "sys:dns",
];

/// A filesystem path in a permission: absolute, or starting with one of
/// [`PLACEHOLDERS`]. The host resolves placeholders when it confines the plugin.
///
/// The path is normalised lexically when it is parsed: `.` and empty segments are
/// dropped and `..` removes the segment before it, so `/a/./b/../c` becomes `/a/c` and
/// `${plugin_dir}/x/../y` becomes `${plugin_dir}/y`. A `..` above `/` stays at `/`; a `..`
/// above a placeholder's folder is refused ([`PermissionError::EscapesFolder`]), so a
/// placeholder path always names something inside its folder (as written; symlinks are
/// the host's to check when it resolves the path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsPath(String);

impl FsPath {
    /// The normalised path, placeholders unresolved.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The placeholder the path starts with (`${plugin_dir}` or `${data_dir}`), if any.
    pub fn placeholder(&self) -> Option<&'static str> {
        PLACEHOLDERS
            .iter()
            .copied()
            .find(|placeholder| self.0.starts_with(placeholder))
    }

    /// The path with `${plugin_dir}` and `${data_dir}` replaced.
    pub fn resolve(&self, plugin_dir: &str, data_dir: &str) -> String {
        self.resolve_in(Path::new(plugin_dir), Path::new(data_dir))
            .to_string_lossy()
            .into_owned()
    }

    /// The path with its placeholder replaced by `plugin_dir` or `data_dir` (an
    /// absolute path is returned as it is): what the host grants, and what a reviewer
    /// should be shown beside the written path.
    pub fn resolve_in(&self, plugin_dir: &Path, data_dir: &Path) -> PathBuf {
        let (folder, rest) = match self.placeholder() {
            Some("${plugin_dir}") => (plugin_dir, &self.0["${plugin_dir}".len()..]),
            Some(placeholder) => (data_dir, &self.0[placeholder.len()..]),
            None => return PathBuf::from(&self.0),
        };
        match rest.trim_start_matches('/') {
            "" => folder.to_owned(),
            rest => folder.join(rest),
        }
    }
}

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Permission {
    /// `process:data`: may receive batches.
    ProcessData,
    /// `read:data`: may read the host's data store.
    ReadData,
    /// `write:data`: may write the host's data store.
    WriteData,
    /// `fs:read:PATH`: may read files under PATH and list its directories.
    FsRead(FsPath),
    /// `fs:write:PATH`: may read, create, write and remove files under PATH.
    FsWrite(FsPath),
    /// `net:connect:PORT`: may open TCP connections to PORT.
    NetConnect(u16),
    /// `net:bind:PORT`: may bind TCP sockets to PORT.
    NetBind(u16),
    /// `sys:dns`: may read the system's name-resolution files (`/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/nsswitch.conf`, …), so that host names resolve.
    SysDns,
}

/// Why a permission string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// Not one of the known forms.
    #[error("unknown permission `{permission}`{}", expected(suggestion.as_deref(), &known()))]
    Unknown {
        /// The permission as written.
        permission: String,
        /// The known permission it most likely means, if one is close.
        suggestion: Option<String>,
    },
    /// A filesystem permission with a path that is neither absolute nor placeholder-based.
    #[error("permission `{permission}` has path `{path}`; a path must be absolute or start with `${{plugin_dir}}` or `${{data_dir}}`")]
    RelativePath {
        /// The whole permission.
        permission: String,
        /// The path part.
        path: String,
    },
    /// A placeholder Plugbay does not know.
    #[error("permission `{permission}` uses unknown placeholder `{placeholder}`; expected `${{plugin_dir}}` or `${{data_dir}}`")]
    UnknownPlaceholder {
        /// The whole permission.
        permission: String,
        /// The placeholder.
        placeholder: String,
    },
    /// A placeholder that does not stand alone at the start of the path.
    #[error("permission `{permission}` uses `{placeholder}` inside its path; a placeholder may only start a path, followed by `/` or nothing (`{placeholder}/file`)")]
    MisplacedPlaceholder {
        /// The whole permission.
        permission: String,
        /// The placeholder.
        placeholder: String,
    },
    /// A placeholder path whose `..` segments climb above the placeholder's folder.
    #[error("permission `{permission}` leaves `{placeholder}` through `..`; a path that starts with a placeholder must stay inside its folder (name a path inside it, or write an absolute path)")]
    EscapesFolder {
        /// The whole permission.
        permission: String,
        /// The placeholder whose folder it leaves.
        placeholder: String,
    },
    /// A network permission whose port is not a number from 1 to 65535.
    #[error("permission `{permission}` has port `{port}`; expected a number from 1 to 65535")]
    BadPort {
        /// The whole permission.
        permission: String,
        /// The port part.
        port: String,
    },
}

fn known() -> String {
    KNOWN
        .iter()
        .map(|known| format!("`{known}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Permission {
    /// Whether this is one of the data permissions (`process:data`, `read:data`, `write:data`).
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Permission::ProcessData | Permission::ReadData | Permission::WriteData
        )
    }
}

impl Permission {
    /// The path of an `fs:read:` or `fs:write:` permission.
    pub fn fs_path(&self) -> Option<&FsPath> {
        match self {
            Permission::FsRead(path) | Permission::FsWrite(path) => Some(path),
            _ => None,
        }
    }

    /// The path an `fs:` permission grants, its placeholder replaced by `plugin_dir`
    /// or `data_dir` (see [`FsPath::resolve_in`]); `None` for other permissions.
    pub fn resolved_path(&self, plugin_dir: &Path, data_dir: &Path) -> Option<PathBuf> {
        self.fs_path()
            .map(|path| path.resolve_in(plugin_dir, data_dir))
    }
}

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "process:data" => return Ok(Permission::ProcessData),
            "read:data" => return Ok(Permission::ReadData),
            "write:data" => return Ok(Permission::WriteData),
            "sys:dns" => return Ok(Permission::SysDns),
            _ => {}
        }
        if let Some((kind, path)) = text
            .strip_prefix("fs:read:")
            .map(|path| ("read", path))
            .or_else(|| text.strip_prefix("fs:write:").map(|path| ("write", path)))
        {
            let path = parse_path(text, path)?;
            return Ok(if kind == "read" {
                Permission::FsRead(path)
            } else {
                Permission::FsWrite(path)
            });
        }
        if let Some((kind, port)) = text
            .strip_prefix("net:connect:")
            .map(|port| ("connect", port))
            .or_else(|| text.strip_prefix("net:bind:").map(|port| ("bind", port)))
        {
            let number = port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| PermissionError::BadPort {
                    permission: text.to_owned(),
                    port: port.to_owned(),
                })?;
            return Ok(if kind == "connect" {
                Permission::NetConnect(number)
            } else {
                Permission::NetBind(number)
            });
        }
        Err(PermissionError::Unknown {
            permission: text.to_owned(),
            suggestion: suggest(text),
        })
    }
}

/// The permissions without a parameter.
const PLAIN: &[&str] = &["process:data", "read:data", "write:data", "sys:dns"];

/// The permissions with a parameter, by their `kind:operation` head.
const PARAMETERISED: &[(&str, &str)] = &[
    ("fs:read", "PATH"),
    ("fs:write", "PATH"),
    ("net:connect", "PORT"),
    ("net:bind", "PORT"),
];

/// The permission an unknown one most likely means: a near miss of a known form
/// (`read:dta`, `proces:data`), other separators (`read-data`, `read_data`), the
/// words swapped (`data:read`), or a misspelt head with its parameter kept
/// (`fs:raed:/etc` is `fs:read:/etc`).
fn suggest(text: &str) -> Option<String> {
    let trimmed = text.trim().to_ascii_lowercase();
    let plain = trimmed.replace(['-', '_', '.', ' '], ":");
    if PLAIN.contains(&plain.as_str()) {
        return Some(plain);
    }
    if let Some((first, second)) = plain.split_once(':') {
        let swapped = format!("{second}:{first}");
        if PLAIN.contains(&swapped.as_str()) {
            return Some(swapped);
        }
    }
    let heads = PARAMETERISED.iter().map(|(head, _)| *head);
    let (head, rest) = match trimmed.splitn(3, ':').collect::<Vec<_>>()[..] {
        [kind, operation, rest] => (format!("{kind}:{operation}"), Some(rest)),
        _ => (trimmed.trim_end_matches(':').to_owned(), None),
    };
    let fixed_head = if heads.clone().any(|known| known == head) {
        Some(head.as_str())
    } else {
        closest(&head, heads)
    };
    match (fixed_head, rest) {
        (Some(fixed), Some(rest)) if !rest.is_empty() => return Some(format!("{fixed}:{rest}")),
        (Some(fixed), _) => {
            let parameter = PARAMETERISED
                .iter()
                .find(|(known, _)| *known == fixed)
                .map_or("PATH", |(_, parameter)| *parameter);
            return Some(format!("{fixed}:{parameter}"));
        }
        (None, _) => {}
    }
    closest(&plain, PLAIN.iter().copied()).map(str::to_owned)
}

fn parse_path(permission: &str, path: &str) -> Result<FsPath, PermissionError> {
    let mut rest = path;
    while let Some(start) = rest.find("${") {
        let end = rest[start..]
            .find('}')
            .map(|end| start + end + 1)
            .unwrap_or(rest.len());
        let placeholder = &rest[start..end];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(PermissionError::UnknownPlaceholder {
                permission: permission.to_owned(),
                placeholder: placeholder.to_owned(),
            });
        }
        rest = &rest[end..];
    }
    let leading = PLACEHOLDERS
        .iter()
        .copied()
        .find(|placeholder| path.starts_with(placeholder));
    if leading.is_none() && !path.starts_with('/') {
        return Err(PermissionError::RelativePath {
            permission: permission.to_owned(),
            path: path.to_owned(),
        });
    }
    let root = leading.unwrap_or("");
    let below = &path[root.len()..];
    let misplaced = PLACEHOLDERS
        .iter()
        .copied()
        .find(|placeholder| below.contains(placeholder))
        .or(leading.filter(|_| !below.is_empty() && !below.starts_with('/')));
    if let Some(placeholder) = misplaced {
        return Err(PermissionError::MisplacedPlaceholder {
            permission: permission.to_owned(),
            placeholder: placeholder.to_owned(),
        });
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in below.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    if let Some(placeholder) = leading {
                        return Err(PermissionError::EscapesFolder {
                            permission: permission.to_owned(),
                            placeholder: placeholder.to_owned(),
                        });
                    }
                }
            }
            segment => segments.push(segment),
        }
    }
    let mut normalised = root.to_owned();
    if segments.is_empty() && leading.is_none() {
        normalised.push('/');
    }
    for segment in segments {
        normalised.push('/');
        normalised.push_str(segment);
    }
    Ok(FsPath(normalised))
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::ProcessData => f.write_str("process:data"),
            Permission::ReadData => f.write_str("read:data"),
            Permission::WriteData => f.write_str("write:data"),
            Permission::FsRead(path) => write!(f, "fs:read:{}", path.0),
            Permission::FsWrite(path) => write!(f, "fs:write:{}", path.0),
            Permission::NetConnect(port) => write!(f, "net:connect:{port}"),
            Permission::NetBind(port) => write!(f, "net:bind:{port}"),
            Permission::SysDns => f.write_str("sys:dns"),
        }
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for text in [
            "process:data",
            "read:data",
            "write:data",
            "fs:read:/etc/hostname",
            "fs:write:${data_dir}/out",
            "fs:read:${plugin_dir}",
            "net:connect:8080",
            "net:bind:1",
            "sys:dns",
        ] {
            let permission: Permission = text.parse().unwrap();
            assert_eq!(permission.to_string(), text);
        }
    }

    #[test]
    fn malformed_permissions_name_the_string() {
        for (text, expected) in [
            ("read:dta", "unknown permission `read:dta`"),
            ("fs:read:etc", "path `etc`"),
            ("fs:read:${home}/x", "unknown placeholder `${home}`"),
            ("net:bind:0", "port `0`"),
            ("net:connect:http", "port `http`"),
            ("", "unknown permission ``; expected"),
        ] {
            let err = text.parse::<Permission>().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn misspelt_permissions_get_a_suggestion() {
        for (text, suggestion) in [
            ("read:dta", Some("read:data")),
            ("proces:data", Some("process:data")),
            ("process-data", Some("process:data")),
            ("write_data", Some("write:data")),
            ("data:read", Some("read:data")),
            ("Process:Data", Some("process:data")),
            ("fs:raed:/etc/hosts", Some("fs:read:/etc/hosts")),
            ("net:conect:8080", Some("net:connect:8080")),
            ("fs:read", Some("fs:read:PATH")),
            ("net:bind", Some("net:bind:PORT")),
            ("sys:dsn", Some("sys:dns")),
            ("everything", None),
            ("", None),
        ] {
            let err = text.parse::<Permission>().unwrap_err();
            let PermissionError::Unknown {
                suggestion: found, ..
            } = &err
            else {
                panic!("{text}: {err}");
            };
            assert_eq!(found.as_deref(), suggestion, "{text}");
            let message = err.to_string();
            match suggestion {
                Some(suggestion) => assert!(
                    message.contains(&format!("did you mean `{suggestion}`?")),
                    "{message}"
                ),
                None => assert!(!message.contains("did you mean"), "{message}"),
            }
        }
    }

    fn path_of(text: &str) -> String {
        text.parse::<Permission>()
            .unwrap_or_else(|err| panic!("{text}: {err}"))
            .fs_path()
            .expect("an fs permission")
            .as_str()
            .to_owned()
    }

    #[test]
    fn paths_are_normalised_lexically() {
        for (written, normalised) in [
            ("fs:read:/a/./b", "/a/b"),
            ("fs:read:/a/../b", "/b"),
            ("fs:read:/a//b/", "/a/b"),
            ("fs:read:/..", "/"),
            ("fs:read:/../../etc", "/etc"),
            ("fs:read:/", "/"),
            ("fs:read:${plugin_dir}/x/../y", "${plugin_dir}/y"),
            ("fs:write:${data_dir}/./out/", "${data_dir}/out"),
            ("fs:read:${plugin_dir}/x/..", "${plugin_dir}"),
            ("fs:read:${plugin_dir}/", "${plugin_dir}"),
            ("fs:read:${plugin_dir}", "${plugin_dir}"),
        ] {
            assert_eq!(path_of(written), normalised, "{written}");
        }
        let permission: Permission = "fs:read:${plugin_dir}/x/../y".parse().unwrap();
        assert_eq!(permission.to_string(), "fs:read:${plugin_dir}/y");
        assert_eq!(
            permission,
            "fs:read:${plugin_dir}/y".parse::<Permission>().unwrap(),
            "the same grant, however it is written"
        );
    }

    #[test]
    fn paths_that_leave_their_placeholder_are_refused() {
        for (text, placeholder) in [
            ("fs:read:${plugin_dir}/..", "${plugin_dir}"),
            ("fs:write:${data_dir}/../x", "${data_dir}"),
            ("fs:read:${plugin_dir}/../../../../..", "${plugin_dir}"),
            ("fs:read:${plugin_dir}/a/../../b", "${plugin_dir}"),
        ] {
            let err = text.parse::<Permission>().unwrap_err();
            assert_eq!(
                err,
                PermissionError::EscapesFolder {
                    permission: text.to_owned(),
                    placeholder: placeholder.to_owned(),
                }
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("permission `{text}` leaves `{placeholder}`")),
                "{message}"
            );
        }
    }

    #[test]
    fn placeholders_may_only_start_a_path() {
        for (text, placeholder) in [
            ("fs:read:${plugin_dir}x", "${plugin_dir}"),
            ("fs:read:/x/${data_dir}", "${data_dir}"),
            ("fs:read:${plugin_dir}/${data_dir}", "${data_dir}"),
        ] {
            let err = text.parse::<Permission>().unwrap_err();
            assert_eq!(
                err,
                PermissionError::MisplacedPlaceholder {
                    permission: text.to_owned(),
                    placeholder: placeholder.to_owned(),
                },
                "{text}"
            );
        }
    }

    #[test]
    fn resolved_paths_for_display() {
        let (plugin_dir, data_dir) = (Path::new("/p"), Path::new("/d/name"));
        for (text, resolved) in [
            ("fs:read:${plugin_dir}/lookup.json", Some("/p/lookup.json")),
            ("fs:read:${plugin_dir}", Some("/p")),
            ("fs:write:${data_dir}/out", Some("/d/name/out")),
            ("fs:read:/etc/../etc/hostname", Some("/etc/hostname")),
            ("net:connect:80", None),
        ] {
            let permission: Permission = text.parse().unwrap();
            assert_eq!(
                permission.resolved_path(plugin_dir, data_dir),
                resolved.map(PathBuf::from),
                "{text}"
            );
        }
    }

    #[test]
    fn placeholders_resolve() {
        let Ok(Permission::FsRead(path)) = "fs:read:${plugin_dir}/lookup.json".parse() else {
            panic!("expected fs:read");
        };
        assert_eq!(path.resolve("/p", "/d"), "/p/lookup.json");
    }
}
