//! Opening a plugin library and checking it, in the order the checks can fail:
//! the file opens; it exports a root module; abi_stable's layout check passes; the
//! plugbay-api version is compatible; the embedded manifest matches the one given.
//!
//! The bytes checked are the bytes loaded: `Image` (`image.rs`) reads and hashes a
//! library once, and the dynamic loader opens that copy, never the path again.
//!
//! Libraries are loaded with `libloading` and never closed: a library that passed
//! abi_stable's layout check leaves pointers in abi_stable's global caches, and a Rust
//! cdylib cannot be unloaded soundly anyway (thread-local destructors). "Unloaded"
//! means the host calls no code of it again and its host services are revoked;
//! threads the plugin started run on (only process isolation ends them), and its
//! mapped code and statics stay until the process exits.

use std::path::{Path, PathBuf};

use abi_stable::library::{AbiHeaderRef, LibraryError, ROOT_MODULE_LOADER_NAME_WITH_NUL};
use plugbay_api::abi::{PluginModRef, ABI_VERSION, API_VERSION};
use plugbay_api::manifest::{Manifest, Permission};

use crate::image::Image;

/// What a library file looks like from outside (size, modification time, inode):
/// a stamp that changes when the file is rebuilt or replaced, to notice a new build
/// without reading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path`; `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&metadata),
            #[cfg(not(unix))]
            inode: 0,
        })
    }
}

/// Why a library could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// There is no file at the path.
    #[error(
        "plugin library {path} does not exist; build the plugin (`cargo build`) or fix the path"
    )]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// There is no library at the path, but a Rust library (`.rlib`) of the same
    /// crate beside it: the crate was built without `crate-type = ["cdylib"]`.
    #[error("plugin library {path} does not exist, but {rlib} does: the crate is built as a Rust library (`rlib`), not a dynamic library; add `crate-type = [\"cdylib\"]` under `[lib]` in its Cargo.toml and build it again")]
    BuiltAsRlib {
        /// The path.
        path: PathBuf,
        /// The Rust library found beside it.
        rlib: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read plugin library {path}: {source}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The library's SHA-256 is not the one expected (the one reviewed).
    #[error("plugin library {path} has sha256 {actual}, not the expected {expected}; it was not loaded (a library that changed since its review must be registered and reviewed again)")]
    DigestMismatch {
        /// The path.
        path: PathBuf,
        /// The expected SHA-256.
        expected: String,
        /// The SHA-256 of the file as read.
        actual: String,
    },
    /// The sealed in-memory copy of the library could not be made.
    #[error("cannot make a sealed copy of plugin library {path} to load: {source}")]
    Seal {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a loadable library.
    #[error("{path} is not a loadable library: {reason}")]
    NotALibrary {
        /// The path.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// The library loads but exports no Plugbay root module.
    #[error("{path} is not a Plugbay plugin: it exports no root module; put `#[plugbay::plugin]` on the plugin struct")]
    NotAPlugin {
        /// The path.
        path: PathBuf,
    },
    /// abi_stable refused the library's header or ABI version.
    #[error("{path} was built for an incompatible plugin ABI: {reason}; rebuild it against plugbay-api {API_VERSION}")]
    IncompatibleAbi {
        /// The path.
        path: PathBuf,
        /// What abi_stable said.
        reason: String,
    },
    /// The library speaks another version of the plugin ABI (the types and the
    /// contract of the bytes that cross the boundary).
    #[error("{path} was built for plugin ABI {plugin}, but this host speaks plugin ABI {host}; rebuild it against plugbay-api {API_VERSION}")]
    AbiVersion {
        /// The path.
        path: PathBuf,
        /// The library's ABI version.
        plugin: String,
        /// The host's ABI version.
        host: &'static str,
    },
    /// The types the library was compiled with do not have the host's layout, although
    /// its plugbay-api version is one this host accepts: the plugin ABI changed without
    /// a change of [`ABI_VERSION`] (or of the crate's version).
    #[error("{path} does not have this host's plugin ABI layout: {summary}. {}", layout_advice(plugin_api.as_deref()))]
    LayoutMismatch {
        /// The path.
        path: PathBuf,
        /// The decisive part of abi_stable's report, naming the type and field (the
        /// full report is logged at debug level).
        summary: String,
        /// The plugbay-api version the library's ABI types come from, when the report
        /// names it.
        plugin_api: Option<String>,
    },
    /// The plugbay-api version the plugin was built against is not compatible.
    #[error("{path} was built against plugbay-api {plugin}, which this host (plugbay-api {host}) cannot load; rebuild it against plugbay-api {host}")]
    ApiVersion {
        /// The path.
        path: PathBuf,
        /// The plugin's plugbay-api version.
        plugin: String,
        /// The host's plugbay-api version.
        host: &'static str,
    },
    /// The plugin's manifest asks for a plugbay-api version range that excludes the host's.
    #[error("{path} requires plugbay-api {requirement}, but this host has plugbay-api {host}")]
    ApiRequirement {
        /// The path.
        path: PathBuf,
        /// The manifest's `api_version`.
        requirement: String,
        /// The host's plugbay-api version.
        host: &'static str,
    },
    /// The plugin was built with `panic = "abort"`, so a panic would end the host.
    #[error("{path} was built with `panic = \"abort\"`; plugins must be built with `panic = \"unwind\"` so a panic cannot end the host")]
    PanicAbort {
        /// The path.
        path: PathBuf,
    },
    /// The embedded manifest could not be read.
    #[error("{path} embeds an invalid manifest: {reason}")]
    EmbeddedManifest {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded manifest differs from the one the host was given.
    #[error("{path} embeds a manifest whose {field} is {embedded}, but the manifest given says {given}; rebuild the plugin or register the manifest it was built with")]
    ManifestMismatch {
        /// The path.
        path: PathBuf,
        /// Which field differs.
        field: &'static str,
        /// What the library says.
        embedded: String,
        /// What the given manifest says.
        given: String,
    },
}

impl LoadError {
    /// The error for a library path that names something other than a regular file
    /// (a folder, `/dev/zero`, a named pipe): such a thing is never read, since it
    /// may have no end or block forever.
    pub fn not_a_file(path: &Path, file_type: std::fs::FileType) -> LoadError {
        LoadError::NotALibrary {
            path: path.to_owned(),
            reason: format!(
                "it is {}, not a library file; give the plugin's `lib….so` (or `….dll`, `lib….dylib`)",
                crate::image::kind_of(file_type)
            ),
        }
    }

    /// The error for a library file that does not exist at `path`:
    /// [`LoadError::BuiltAsRlib`] when the crate's Rust library is there instead, else
    /// [`LoadError::NotFound`].
    pub fn missing(path: &Path) -> LoadError {
        let rlib = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| {
                let stem = name
                    .strip_prefix(std::env::consts::DLL_PREFIX)
                    .unwrap_or(name)
                    .strip_suffix(std::env::consts::DLL_SUFFIX)?;
                let rlib = path.with_file_name(format!("lib{stem}.rlib"));
                rlib.is_file().then_some(rlib)
            });
        match rlib {
            Some(rlib) => LoadError::BuiltAsRlib {
                path: path.to_owned(),
                rlib,
            },
            None => LoadError::NotFound {
                path: path.to_owned(),
            },
        }
    }
}

/// What to do about a layout mismatch between a plugin built against plugbay-api
/// `plugin_api` and this host.
fn layout_advice(plugin_api: Option<&str>) -> String {
    let fix = format!("rebuild the plugin against the plugbay-api this host was built with ({API_VERSION}, the same release or source), and give a changed ABI type a new `ABI_VERSION`");
    match plugin_api {
        Some(plugin) if plugin == API_VERSION => format!(
            "The plugin and this host were both built against plugbay-api {plugin}, so that version's plugin ABI was changed without a version bump: {fix}"
        ),
        Some(plugin) => format!(
            "The plugin was built against plugbay-api {plugin} and this host against {API_VERSION}, versions that must share one plugin ABI, so the ABI was changed without a version bump: {fix}"
        ),
        None => format!("The plugin ABI was changed without a version bump: {fix}"),
    }
}

/// A library that passed every check.
pub(crate) struct LoadedLibrary {
    pub module: PluginModRef,
    pub manifest: Manifest,
    pub api_version: semver::Version,
}

/// Whether a plugin built against plugbay-api `plugin` can be loaded by a host with
/// plugbay-api `host`: the same major version, or for 0.x the same minor version.
pub fn api_compatible(plugin: &semver::Version, host: &semver::Version) -> bool {
    plugin.major == host.major
        && (host.major != 0 || plugin.minor == host.minor)
        && (host.major != 0 || host.minor != 0 || plugin.patch == host.patch)
}

/// The host's plugbay-api version.
pub fn host_api_version() -> semver::Version {
    semver::Version::parse(API_VERSION).expect("plugbay-api's version is semver")
}

/// Opens `image` and runs every check but the manifest comparison.
///
/// Opening a library runs its initializers: call this only on a confined thread.
pub(crate) fn open(image: &Image) -> Result<LoadedLibrary, LoadError> {
    let path = image.path.as_path();
    // Once opened here, the library stays: so does the copy it was opened from.
    #[cfg(target_os = "linux")]
    image.pin();
    // SAFETY: opening a library runs its initializers, which may do anything native
    // code can. That is the premise of in-process plugins: the caller runs this on a
    // thread that landlock has already confined, and the threat model in the README
    // says what confinement does and does not stop.
    let library = unsafe { libloading::Library::new(&image.load_path) }.map_err(|err| {
        LoadError::NotALibrary {
            path: path.to_owned(),
            reason: error_chain(&err)
                .replace(&*image.load_path.to_string_lossy(), &path.to_string_lossy()),
        }
    })?;
    // SAFETY: abi_stable's root module loader symbol is a static `LibHeader` whose first
    // field is an `AbiHeader`; `AbiHeaderRef` is a transparent reference to it, so reading
    // the symbol's address as an `AbiHeaderRef` is what abi_stable's own loader does.
    // `upgrade` then checks the header before anything else is read through it.
    let header = unsafe {
        library
            .get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes())
            .map(|symbol| *symbol)
    }
    .map_err(|_| LoadError::NotAPlugin {
        path: path.to_owned(),
    })?;
    // Never close the library: the root module holds `'static` references into it,
    // and abi_stable's layout cache keeps pointers into it once checked.
    std::mem::forget(library);

    let module = header
        .upgrade()
        .and_then(|header| header.init_root_module::<PluginModRef>())
        .map_err(|err| library_error(path, err))?;

    let api_text = module.api_version().as_str();
    let host = host_api_version();
    let api_version = semver::Version::parse(api_text)
        .ok()
        .filter(|version| api_compatible(version, &host))
        .ok_or_else(|| LoadError::ApiVersion {
            path: path.to_owned(),
            plugin: api_text.to_owned(),
            host: API_VERSION,
        })?;
    if !module.panic_unwind() {
        return Err(LoadError::PanicAbort {
            path: path.to_owned(),
        });
    }
    let manifest =
        Manifest::parse(module.manifest().as_str()).map_err(|err| LoadError::EmbeddedManifest {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if let Some(requirement) = &manifest.api_version {
        if !requirement.matches(&host) {
            return Err(LoadError::ApiRequirement {
                path: path.to_owned(),
                requirement: requirement.to_string(),
                host: API_VERSION,
            });
        }
    }
    Ok(LoadedLibrary {
        module,
        manifest,
        api_version,
    })
}

/// Checks that the library's embedded manifest is the one the host was given: the
/// same name and version, and no permission the given manifest does not list.
pub(crate) fn check_manifest(
    path: &Path,
    embedded: &Manifest,
    given: &Manifest,
) -> Result<(), LoadError> {
    let mismatch = |field, embedded: String, given: String| LoadError::ManifestMismatch {
        path: path.to_owned(),
        field,
        embedded,
        given,
    };
    if embedded.name != given.name {
        return Err(mismatch("name", embedded.name.clone(), given.name.clone()));
    }
    if embedded.version != given.version {
        return Err(mismatch(
            "version",
            embedded.version.to_string(),
            given.version.to_string(),
        ));
    }
    let extra: Vec<&Permission> = embedded
        .permissions
        .iter()
        .filter(|permission| !given.permissions.contains(permission))
        .collect();
    if !extra.is_empty() {
        return Err(mismatch(
            "permissions",
            format!("{} (more than given)", join(&embedded.permissions)),
            join(&given.permissions),
        ));
    }
    Ok(())
}

/// One field in which two manifests differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestDifference {
    /// The field (`permissions`, `config`, …).
    pub field: &'static str,
    /// Its value in the manifest built into the library, as JSON.
    pub built_in: String,
    /// Its value in the manifest given, as JSON.
    pub given: String,
}

impl std::fmt::Display for ManifestDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` is {} in the library but {} in the manifest given",
            self.field, self.built_in, self.given
        )
    }
}

/// Every field in which `given` differs from the manifest `built_in` to a library.
/// Lists (`hooks`, `permissions`) are compared as sets: their order means nothing.
pub fn manifest_differences(built_in: &Manifest, given: &Manifest) -> Vec<ManifestDifference> {
    fn as_set<T: Ord + Clone>(items: &[T]) -> Vec<T> {
        let mut items = items.to_vec();
        items.sort();
        items.dedup();
        items
    }
    let json = |value: serde_json::Value| value.to_string();
    let mut differences = Vec::new();
    let mut compare = |field: &'static str, built: serde_json::Value, given: serde_json::Value| {
        if built != given {
            differences.push(ManifestDifference {
                field,
                built_in: json(built),
                given: json(given),
            });
        }
    };
    use serde_json::json;
    compare("name", json!(built_in.name), json!(given.name));
    compare(
        "version",
        json!(built_in.version.to_string()),
        json!(given.version.to_string()),
    );
    compare(
        "description",
        json!(built_in.description),
        json!(given.description),
    );
    compare("author", json!(built_in.author), json!(given.author));
    compare("website", json!(built_in.website), json!(given.website));
    compare("main", json!(built_in.main), json!(given.main));
    compare(
        "hooks",
        json!(as_set(&built_in.hooks)),
        json!(as_set(&given.hooks)),
    );
    compare(
        "permissions",
        json!(as_set(&built_in.permissions)),
        json!(as_set(&given.permissions)),
    );
    compare(
        "api_version",
        json!(built_in.api_version.as_ref().map(ToString::to_string)),
        json!(given.api_version.as_ref().map(ToString::to_string)),
    );
    compare(
        "timeout_ms",
        json!(built_in.timeout_ms),
        json!(given.timeout_ms),
    );
    compare("config", json!(built_in.config), json!(given.config));
    differences
}

fn join(permissions: &[Permission]) -> String {
    let names: Vec<String> = permissions.iter().map(|p| format!("`{p}`")).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn library_error(path: &Path, err: LibraryError) -> LoadError {
    match err {
        LibraryError::AbiInstability(report) => {
            let report = report.to_string();
            tracing::debug!(path = %path.display(), %report, "abi_stable layout report");
            let mismatch = LayoutReport::parse(&report);
            // abi_stable compares the version of the crate that defines each type: a
            // plugin built against another plugbay-api release shows up here.
            if mismatch.kind == "incompatible package versions" && mismatch.expected == API_VERSION
            {
                return LoadError::ApiVersion {
                    path: path.to_owned(),
                    plugin: mismatch.found,
                    host: API_VERSION,
                };
            }
            LoadError::LayoutMismatch {
                path: path.to_owned(),
                summary: mismatch.to_string(),
                plugin_api: mismatch.plugin_api.clone(),
            }
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => LoadError::AbiVersion {
            path: path.to_owned(),
            plugin: actual_version.to_string(),
            host: ABI_VERSION,
        },
        other => LoadError::IncompatibleAbi {
            path: path.to_owned(),
            reason: first_line(&other.to_string()),
        },
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("no reason given")
        .trim_end_matches('.')
        .to_owned()
}

/// The decisive part of abi_stable's layout report (which runs to hundreds of
/// lines): the first error, what was expected and found, and where.
#[derive(Debug, Default, PartialEq, Eq)]
struct LayoutReport {
    kind: String,
    /// What this host has there.
    expected: String,
    /// What the plugin has there.
    found: String,
    /// `Type.field.field` leading to the mismatch.
    location: String,
    /// The type whose layouts differ, when no field path leads to it.
    type_name: String,
    /// The plugbay-api version of the plugin's outermost mismatched type.
    plugin_api: Option<String>,
}

impl LayoutReport {
    fn parse(report: &str) -> LayoutReport {
        let lines: Vec<&str> = report.lines().map(str::trim).collect();
        let Some(error_at) = lines.iter().position(|line| line.starts_with("Error:")) else {
            return LayoutReport {
                kind: first_line(report),
                ..LayoutReport::default()
            };
        };
        let value_after = |label: &str| {
            lines[error_at..]
                .iter()
                .skip_while(|line| !line.starts_with(label))
                .skip(1)
                .find(|line| !line.is_empty())
                .map(|line| (*line).to_owned())
                .unwrap_or_default()
        };
        let block_start = lines[..error_at]
            .iter()
            .rposition(|line| line.ends_with("error(s)inside:"))
            .unwrap_or(error_at);
        let mut location: Vec<&str> = Vec::new();
        let mut plugin_api = None;
        let mut lines_in_block = lines[block_start..error_at].iter();
        while let Some(line) = lines_in_block.next() {
            if line.starts_with("Layout of expected type") {
                break;
            }
            if plugin_api.is_none() {
                plugin_api = line
                    .strip_prefix("package:'plugbay-api' version:'")
                    .and_then(|rest| rest.split_once('\''))
                    .map(|(version, _)| version.to_owned());
            }
            if let Some(field) = line.strip_prefix("field_name:") {
                if location.is_empty() {
                    if let Some(ty) = lines_in_block.next().and_then(|l| l.strip_prefix("type:")) {
                        location.push(ty);
                    }
                }
                if field != "0" {
                    location.push(field);
                }
            }
        }
        // The mismatched type itself: the first `type:` after "Layout of expected type".
        let type_name = lines[block_start..error_at]
            .iter()
            .skip_while(|line| !line.starts_with("Layout of expected type"))
            .find_map(|line| line.strip_prefix("type:"))
            .unwrap_or_default()
            .to_owned();
        LayoutReport {
            kind: lines[error_at]
                .trim_start_matches("Error:")
                .trim()
                .to_owned(),
            expected: value_after("Expected:"),
            found: value_after("Found:"),
            location: location.join("."),
            type_name,
            plugin_api,
        }
    }
}

/// `` `PluginMod.panic_unwind` is `u32` in the plugin but `bool` in this host
/// (mismatched type) ``.
impl std::fmt::Display for LayoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if !self.location.is_empty() {
            &self.location
        } else {
            &self.type_name
        };
        if place.is_empty() {
            f.write_str("a type")?;
        } else {
            write!(f, "`{place}`")?;
        }
        if !self.expected.is_empty() || !self.found.is_empty() {
            write!(
                f,
                " is `{}` in the plugin but `{}` in this host",
                self.found, self.expected
            )?;
        } else {
            f.write_str(" differs")?;
        }
        write!(f, " ({})", self.kind)
    }
}

/// The message of `err` and of each of its sources, joined (libloading 0.9 says only
/// "dlopen failed" at the top).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> semver::Version {
        semver::Version::parse(text).unwrap()
    }

    #[test]
    fn semver_compatibility_follows_cargo() {
        assert!(api_compatible(&v("0.1.0"), &v("0.1.9")));
        assert!(api_compatible(&v("0.1.9"), &v("0.1.0")));
        assert!(!api_compatible(&v("0.2.0"), &v("0.1.0")));
        assert!(api_compatible(&v("1.0.0"), &v("1.4.2")));
        assert!(!api_compatible(&v("2.0.0"), &v("1.4.2")));
        assert!(!api_compatible(&v("0.0.1"), &v("0.0.2")));
    }

    #[test]
    fn layout_reports_shrink_to_the_decisive_lines() {
        let report = "Compared <this>:\n  --- Type Layout ---\n0 error(s).\n\n1 error(s)inside:\n    <other>\n\n    field_name:0\n    type:PluginMod\n    size:48 align:8\n    package:'plugbay-api' version:'0.1.0'\n\n    field_name:panic_unwind\n    type:bool\n\nLayout of expected type:\n    --- Type Layout ---\n    type:bool\n    package:'std' version:'1.0.0'\n\nError:mismatched type\nExpected:\n    bool\nFound:\n    u32\n";
        let summary = LayoutReport::parse(report);
        assert_eq!(summary.plugin_api.as_deref(), Some("0.1.0"));
        assert_eq!(
            summary.to_string(),
            "`PluginMod.panic_unwind` is `u32` in the plugin but `bool` in this host (mismatched type)"
        );
        let err = LoadError::LayoutMismatch {
            path: PathBuf::from("/p/libx.so"),
            summary: summary.to_string(),
            plugin_api: Some(API_VERSION.to_owned()),
        };
        let text = err.to_string();
        assert!(
            text.contains(&format!("were both built against plugbay-api {API_VERSION}, so that version's plugin ABI was changed without a version bump")),
            "{text}"
        );
        assert!(!text.contains("rebuild it against plugbay-api"), "{text}");
    }

    #[test]
    fn a_missing_library_beside_an_rlib_says_how_the_crate_was_built() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir
            .path()
            .join(plugbay_api::manifest::library_file_name("shouter"));
        assert!(matches!(
            LoadError::missing(&library),
            LoadError::NotFound { .. }
        ));
        std::fs::write(dir.path().join("libshouter.rlib"), "").unwrap();
        let err = LoadError::missing(&library);
        assert!(matches!(err, LoadError::BuiltAsRlib { .. }), "{err}");
        assert!(
            err.to_string().contains("libshouter.rlib does: the crate is built as a Rust library (`rlib`), not a dynamic library; add `crate-type = [\"cdylib\"]`"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let err = Image::open(Path::new("/nonexistent/libnothing.so"), None)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("/nonexistent/libnothing.so does not exist"),
            "{err}"
        );
    }
}
