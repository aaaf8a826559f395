//! Permissions a plugin asks for in its manifest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
];

/// A filesystem path in a permission, as written: absolute, or starting with one of
/// [`PLACEHOLDERS`]. The host resolves placeholders when it confines the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsPath(String);

impl FsPath {
    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with `${plugin_dir}` and `${data_dir}` replaced.
    pub fn resolve(&self, plugin_dir: &str, data_dir: &str) -> String {
        self.0
            .replace("${plugin_dir}", plugin_dir)
            .replace("${data_dir}", data_dir)
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
}

/// Why a permission string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// Not one of the known forms.
    #[error("unknown permission `{0}`; expected one of {known}", known = known())]
    Unknown(String),
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

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "process:data" => return Ok(Permission::ProcessData),
            "read:data" => return Ok(Permission::ReadData),
            "write:data" => return Ok(Permission::WriteData),
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
        Err(PermissionError::Unknown(text.to_owned()))
    }
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
    let anchored = path.starts_with('/')
        || PLACEHOLDERS
            .iter()
            .any(|placeholder| path.starts_with(placeholder));
    if !anchored {
        return Err(PermissionError::RelativePath {
            permission: permission.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(FsPath(path.to_owned()))
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
            ("", "unknown permission ``"),
        ] {
            let err = text.parse::<Permission>().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
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
