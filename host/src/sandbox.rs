//! Permissions → landlock and seccomp: what a plugin is granted, and the
//! confinement of its worker thread.
//!
//! Granted = requested ∩ what the host's [`Policy`] allows. Each worker thread
//! confines itself with landlock and a seccomp filter **before** it opens the library,
//! so no plugin code (not even the library's initializers) ever runs unconfined.
//! Confinement is per thread and inherited by the threads the plugin spawns; host
//! threads stay free.
//!
//! The ruleset is pinned to landlock ABI 6: every filesystem right is handled and
//! denied but read access to the library, the system library directories, the time
//! zone and locale data ([`SYSTEM_DATA_PATHS`]), the name-resolution files with
//! `sys:dns` ([`NAME_RESOLUTION_PATHS`]) and the granted `fs:` paths (where
//! `fs:write:` gives every right but making character and block devices); TCP bind and connect are denied but on granted ports; signals and
//! abstract unix sockets are scoped to the plugin's own domain. The seccomp filter
//! refuses what landlock does not cover: changing file metadata, unix sockets,
//! device nodes, and the kernel interfaces that reach around a sandbox (see the
//! `seccomp` module). Where the kernel cannot enforce all of it, the plugin does not
//! start, unless the host allows degraded confinement ([`SandboxMode::AllowDegraded`]);
//! the status says which.
//!
//! A granted path that starts with a placeholder must stay inside the placeholder's
//! folder once symlinks are resolved ([`SandboxError::PathEscapes`]).

use std::fmt;
use std::path::{Path, PathBuf};

use plugbay_api::manifest::{FsPath, Permission};
use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
mod seccomp;

/// The landlock ABI the ruleset is written for (and tested on).
pub const LANDLOCK_ABI: u8 = 6;

/// Which permissions the host allows plugins to have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Grant whatever the manifest requests (a plugin author's own build, or a host
    /// that trusts its manifests).
    #[default]
    AllowRequested,
    /// Grant only these (for example, what a review approved).
    Allow(Vec<Permission>),
}

impl Policy {
    /// Granted = requested ∩ allowed, in the order requested.
    pub fn grant(&self, requested: &[Permission]) -> Vec<Permission> {
        match self {
            Policy::AllowRequested => requested.to_vec(),
            Policy::Allow(allowed) => requested
                .iter()
                .filter(|permission| allowed.contains(permission))
                .cloned()
                .collect(),
        }
    }
}

/// Whether a plugin may start without full confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Fail closed: a plugin starts only under the full ruleset.
    #[default]
    Enforce,
    /// Start with whatever the kernel can enforce, and say so in the status.
    AllowDegraded,
}

/// How much of the ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfinementLevel {
    /// Every rule is enforced.
    Full,
    /// Some rules are enforced (degraded confinement was allowed).
    Partial,
    /// Nothing is enforced (degraded confinement was allowed).
    None,
}

impl fmt::Display for ConfinementLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfinementLevel::Full => "full",
            ConfinementLevel::Partial => "partial",
            ConfinementLevel::None => "none",
        })
    }
}

/// A plugin's confinement, as enforced on its worker thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// How much is enforced.
    pub level: ConfinementLevel,
    /// The landlock ABI of the ruleset, when landlock is in use.
    pub landlock_abi: Option<u8>,
    /// Whether the seccomp filter is installed.
    pub seccomp: bool,
    /// Granted paths that did not exist when the plugin started (and so grant nothing).
    pub missing_paths: Vec<PathBuf>,
}

impl fmt::Display for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.landlock_abi {
            Some(abi) => write!(f, "{} (landlock ABI {abi}", self.level)?,
            None => write!(f, "{} (no landlock", self.level)?,
        }
        f.write_str(if self.seccomp {
            ", seccomp)"
        } else {
            ", no seccomp)"
        })
    }
}

/// Why a plugin could not be confined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The kernel cannot enforce the whole ruleset and degraded confinement is not allowed.
    #[error("cannot confine plugin {id}: {reason}; the plugin did not start (allow degraded confinement with `--allow-unconfined` to run it anyway)")]
    Unsupported {
        /// The plugin.
        id: String,
        /// What the kernel could not do.
        reason: String,
    },
    /// Building or applying the ruleset failed.
    #[error("cannot confine plugin {id}: {reason}")]
    Ruleset {
        /// The plugin.
        id: String,
        /// What failed.
        reason: String,
    },
    /// A granted path was replaced between its check and the confinement.
    #[error("cannot confine plugin {id}: the path of permission `{permission}` (`{path}`) was replaced after it was checked; the plugin did not start (start it again; if this repeats, something is swapping the plugin's files)", path = path.display())]
    PathChanged {
        /// The plugin.
        id: String,
        /// The permission, as granted.
        permission: String,
        /// The path as checked.
        path: PathBuf,
    },
    /// A granted path under a placeholder resolves (through a symlink) outside the
    /// placeholder's folder.
    #[error("cannot confine plugin {id}: permission `{permission}` resolves to `{resolved}`, outside its folder `{folder}`; the plugin did not start (remove the symlink, or grant its target with an absolute path)", resolved = resolved.display(), folder = folder.display())]
    PathEscapes {
        /// The plugin.
        id: String,
        /// The permission, as granted.
        permission: String,
        /// Where its path leads, symlinks resolved.
        resolved: PathBuf,
        /// The placeholder's folder, symlinks resolved.
        folder: PathBuf,
    },
}

/// What a worker thread is allowed to touch, with placeholders resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Files and directories to read (the library, system libraries, `fs:read:` grants).
    pub read: Vec<PathBuf>,
    /// Files and directories to read and write (`fs:write:` grants).
    pub write: Vec<PathBuf>,
    /// Ports to connect to.
    pub connect: Vec<u16>,
    /// Ports to bind.
    pub bind: Vec<u16>,
    /// Paths checked to stay inside their placeholder's folder, with what they were
    /// then: confinement refuses to start if one has been replaced since.
    pub checked: Vec<Checked>,
}

/// A granted path under a placeholder, as [`Rules::new`] checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Checked {
    /// The permission, as granted.
    pub permission: String,
    /// The resolved path (no symlinks in it when it was checked).
    pub path: PathBuf,
    /// Its device and inode when it was checked; `None` if it did not exist then
    /// (and so must not exist when the worker confines itself either).
    pub file: Option<(u64, u64)>,
}

/// Directories the dynamic loader reads when it opens a plugin's dependencies.
const SYSTEM_LIBRARY_PATHS: &[&str] = &[
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",
];

/// Harmless system data every plugin may read, whatever its grants: time zone data
/// and locale data. Without it, time libraries (`chrono::Local`, `jiff`, C's
/// `localtime`) fall back to UTC without an error, which is wrong data, not a denial.
pub const SYSTEM_DATA_PATHS: &[&str] = &[
    "/usr/share/zoneinfo",
    "/etc/localtime",
    "/etc/timezone",
    "/usr/share/locale",
    "/usr/share/i18n",
    "/etc/locale.alias",
];

/// What `sys:dns` lets a plugin read: the files the C library's resolver reads to
/// turn a host name (`localhost` included) into addresses.
pub const NAME_RESOLUTION_PATHS: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
];

/// The `${data_dir}` of a plugin in a host whose data folder is `base`:
/// `<base>/<name>/<version>`.
///
/// Per version, not per name: two versions of a plugin may run at once (an upgrade
/// starts the new one before it stops the old), each with its own copy of any C
/// library it links statically, such as SQLite, whose file locks are per process; two
/// such copies writing one database file can corrupt it. A new version starts with an
/// empty folder: carry data over by copying the old version's folder, or keep it in
/// the host's data store (`read:data` / `write:data`).
pub fn plugin_data_dir(base: &Path, name: &str, version: &semver::Version) -> PathBuf {
    base.join(name).join(version.to_string())
}

/// The paths of `candidates` that exist on this system.
fn existing(candidates: &'static [&'static str]) -> impl Iterator<Item = PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .filter(|path| path.exists())
}

impl Rules {
    /// The rules for plugin `id`, whose library is `library`, with `granted`
    /// permissions.
    ///
    /// A path under `${plugin_dir}` or `${data_dir}` is resolved through its symlinks
    /// and must stay inside that folder ([`SandboxError::PathEscapes`] otherwise); the
    /// rule then names the resolved path. A path that does not exist is kept as
    /// written (it grants nothing; see [`Confinement::missing_paths`]). The worker
    /// refuses to start if a checked path was replaced, or appeared, since
    /// ([`SandboxError::PathChanged`]).
    pub fn new(
        id: &str,
        library: &Path,
        granted: &[Permission],
        plugin_dir: &Path,
        data_dir: &Path,
    ) -> Result<Rules, SandboxError> {
        let mut rules = Rules {
            read: vec![library.to_owned()],
            ..Rules::default()
        };
        let mut checked = Vec::new();
        rules.read.extend(existing(SYSTEM_LIBRARY_PATHS));
        rules.read.extend(existing(SYSTEM_DATA_PATHS));
        for permission in granted {
            match permission {
                Permission::FsRead(path) => rules.read.push(granted_path(
                    id,
                    permission,
                    path,
                    (plugin_dir, data_dir),
                    &mut checked,
                )?),
                Permission::FsWrite(path) => rules.write.push(granted_path(
                    id,
                    permission,
                    path,
                    (plugin_dir, data_dir),
                    &mut checked,
                )?),
                Permission::NetConnect(port) => rules.connect.push(*port),
                Permission::NetBind(port) => rules.bind.push(*port),
                Permission::SysDns => rules.read.extend(existing(NAME_RESOLUTION_PATHS)),
                _ => {}
            }
        }
        rules.checked = checked;
        Ok(rules)
    }
}

/// The path `permission` (whose path is `path`) grants: as written when absolute;
/// resolved through its symlinks, and refused if that leaves the folder, when it
/// starts with a placeholder. What was checked goes into `checked`.
fn granted_path(
    id: &str,
    permission: &Permission,
    path: &FsPath,
    (plugin_dir, data_dir): (&Path, &Path),
    checked: &mut Vec<Checked>,
) -> Result<PathBuf, SandboxError> {
    let written = path.resolve_in(plugin_dir, data_dir);
    let folder = match path.placeholder() {
        None => return Ok(written),
        Some("${plugin_dir}") => plugin_dir,
        Some(_) => data_dir,
    };
    let (Ok(resolved), Ok(folder)) = (written.canonicalize(), folder.canonicalize()) else {
        checked.push(Checked {
            permission: permission.to_string(),
            path: written.clone(),
            file: None,
        });
        return Ok(written);
    };
    if !resolved.starts_with(&folder) {
        return Err(SandboxError::PathEscapes {
            id: id.to_owned(),
            permission: permission.to_string(),
            resolved,
            folder,
        });
    }
    if let Some(file) = file_id(&resolved) {
        checked.push(Checked {
            permission: permission.to_string(),
            path: resolved.clone(),
            file: Some(file),
        });
    }
    Ok(resolved)
}

/// The device and inode of what `path` names now.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

impl Rules {
    /// Everything any of `all` allows (for plugins that share one thread).
    pub fn union(all: impl IntoIterator<Item = Rules>) -> Rules {
        fn add<T: PartialEq>(to: &mut Vec<T>, items: Vec<T>) {
            for item in items {
                if !to.contains(&item) {
                    to.push(item);
                }
            }
        }
        let mut union = Rules::default();
        for rules in all {
            add(&mut union.read, rules.read);
            add(&mut union.write, rules.write);
            add(&mut union.connect, rules.connect);
            add(&mut union.bind, rules.bind);
            add(&mut union.checked, rules.checked);
        }
        union
    }
}

/// Opens `path` for landlock: `O_PATH`, following symlinks, as landlock's own
/// `PathFd` does.
#[cfg(target_os = "linux")]
fn open_path(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
}

/// Confines the calling thread (and the threads it will spawn) to `rules`: landlock
/// first, then the seccomp filter.
#[cfg(target_os = "linux")]
pub(crate) fn confine_current_thread(
    id: &str,
    rules: &Rules,
    mode: SandboxMode,
) -> Result<Confinement, SandboxError> {
    let (landlock, missing_paths) = restrict_with_landlock(id, rules, mode)?;
    let seccomp = match seccomp::confine_current_thread() {
        Ok(()) => true,
        Err(err) if mode == SandboxMode::Enforce => {
            return Err(SandboxError::Unsupported {
                id: id.to_owned(),
                reason: err.to_string(),
            })
        }
        Err(err) => {
            tracing::warn!(plugin = id, error = %err, "plugin runs without its seccomp filter");
            false
        }
    };
    let level = match (landlock, seccomp) {
        (ConfinementLevel::Full, true) => ConfinementLevel::Full,
        (ConfinementLevel::None, false) => ConfinementLevel::None,
        _ => ConfinementLevel::Partial,
    };
    if level != ConfinementLevel::Full {
        tracing::warn!(plugin = id, confinement = %level, "plugin runs with degraded confinement");
    }
    Ok(Confinement {
        level,
        landlock_abi: (landlock != ConfinementLevel::None).then_some(LANDLOCK_ABI),
        seccomp,
        missing_paths,
    })
}

/// Applies the landlock ruleset to the calling thread; returns how much the kernel
/// enforces and the granted paths that do not exist.
#[cfg(target_os = "linux")]
fn restrict_with_landlock(
    id: &str,
    rules: &Rules,
    mode: SandboxMode,
) -> Result<(ConfinementLevel, Vec<PathBuf>), SandboxError> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };

    let abi = ABI::V6;
    let level = match mode {
        SandboxMode::Enforce => CompatLevel::HardRequirement,
        SandboxMode::AllowDegraded => CompatLevel::BestEffort,
    };
    // Each path is opened once; the rule is made from that descriptor, which must
    // still be the file a placeholder path was checked as (or still be missing).
    let mut missing_paths = Vec::new();
    let mut open = |paths: &[PathBuf]| -> Result<Vec<std::fs::File>, SandboxError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let file = match open_path(path) {
                Ok(file) => file,
                Err(err) => {
                    tracing::warn!(plugin = id, path = %path.display(), error = %err, "granted path cannot be opened; it grants nothing");
                    missing_paths.push(path.clone());
                    continue;
                }
            };
            if let Some(checked) = rules.checked.iter().find(|checked| &checked.path == path) {
                let now = file.metadata().ok().map(|meta| {
                    use std::os::unix::fs::MetadataExt;
                    (meta.dev(), meta.ino())
                });
                if now.is_none() || now != checked.file {
                    return Err(SandboxError::PathChanged {
                        id: id.to_owned(),
                        permission: checked.permission.clone(),
                        path: path.clone(),
                    });
                }
            }
            files.push(file);
        }
        Ok(files)
    };
    let readable = open(&rules.read)?;
    let writable = open(&rules.write)?;
    /// A file takes only the rights that apply to files, as in landlock's own
    /// `path_beneath_rules`.
    fn beneath(
        files: &[std::fs::File],
        access: landlock::BitFlags<AccessFs>,
        abi: ABI,
    ) -> Vec<Result<PathBeneath<&std::fs::File>, landlock::RulesetError>> {
        let file_access = access & AccessFs::from_file(abi);
        files
            .iter()
            .map(|file| {
                let is_dir = file.metadata().is_ok_and(|meta| meta.is_dir());
                Ok(PathBeneath::new(
                    file,
                    if is_dir { access } else { file_access },
                ))
            })
            .collect()
    }

    let failure = |err: landlock::RulesetError| match mode {
        SandboxMode::Enforce => SandboxError::Unsupported {
            id: id.to_owned(),
            reason: err.to_string().to_lowercase(),
        },
        SandboxMode::AllowDegraded => SandboxError::Ruleset {
            id: id.to_owned(),
            reason: err.to_string().to_lowercase(),
        },
    };
    let status = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|ruleset| ruleset.handle_access(AccessNet::from_all(abi)))
        .and_then(|ruleset| ruleset.scope(Scope::from_all(abi)))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| ruleset.add_rules(beneath(&readable, AccessFs::from_read(abi), abi)))
        .and_then(|ruleset| {
            ruleset.add_rules(beneath(
                &writable,
                AccessFs::from_all(abi) & !(AccessFs::MakeChar | AccessFs::MakeBlock),
                abi,
            ))
        })
        .and_then(|ruleset| {
            ruleset.add_rules(rules.connect.iter().map(|port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(*port, AccessNet::ConnectTcp))
            }))
        })
        .and_then(|ruleset| {
            ruleset.add_rules(rules.bind.iter().map(|port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(*port, AccessNet::BindTcp))
            }))
        })
        .and_then(|ruleset| ruleset.restrict_self())
        .map_err(failure)?;

    let landlock = match status.ruleset {
        RulesetStatus::FullyEnforced => ConfinementLevel::Full,
        RulesetStatus::PartiallyEnforced => ConfinementLevel::Partial,
        RulesetStatus::NotEnforced => ConfinementLevel::None,
    };
    if landlock != ConfinementLevel::Full && mode == SandboxMode::Enforce {
        return Err(SandboxError::Unsupported {
            id: id.to_owned(),
            reason: format!("the kernel enforces the landlock ruleset only {landlock}ly"),
        });
    }
    Ok((landlock, missing_paths))
}

/// Confines the calling thread: without landlock there is nothing to enforce, so this
/// fails closed unless degraded confinement is allowed.
#[cfg(not(target_os = "linux"))]
pub(crate) fn confine_current_thread(
    id: &str,
    _rules: &Rules,
    mode: SandboxMode,
) -> Result<Confinement, SandboxError> {
    match mode {
        SandboxMode::Enforce => Err(SandboxError::Unsupported {
            id: id.to_owned(),
            reason: "landlock and seccomp exist only on Linux".to_owned(),
        }),
        SandboxMode::AllowDegraded => {
            tracing::warn!(
                plugin = id,
                "plugin runs unconfined: landlock and seccomp exist only on Linux"
            );
            Ok(Confinement {
                level: ConfinementLevel::None,
                landlock_abi: None,
                seccomp: false,
                missing_paths: Vec::new(),
            })
        }
    }
}

/// The confinement this kernel can give a plugin: confines a short-lived thread with
/// an empty grant and reports what was enforced.
pub fn probe() -> Confinement {
    let nothing = Confinement {
        level: ConfinementLevel::None,
        landlock_abi: None,
        seccomp: false,
        missing_paths: Vec::new(),
    };
    let fallback = nothing.clone();
    std::thread::spawn(|| {
        confine_current_thread("probe", &Rules::default(), SandboxMode::AllowDegraded)
            .unwrap_or(fallback)
    })
    .join()
    .unwrap_or(nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_is_requested_intersected_with_allowed() {
        let requested: Vec<Permission> = ["process:data", "read:data", "net:connect:80"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let policy = Policy::Allow(vec![
            "read:data".parse().unwrap(),
            "write:data".parse().unwrap(),
        ]);
        assert_eq!(
            policy.grant(&requested),
            vec!["read:data".parse::<Permission>().unwrap()]
        );
        assert_eq!(Policy::AllowRequested.grant(&requested), requested);
    }

    #[test]
    fn placeholders_resolve_into_rules() {
        let granted: Vec<Permission> = [
            "fs:read:${plugin_dir}/lookup.json",
            "fs:write:${data_dir}",
            "net:bind:9000",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let rules = Rules::new(
            "test",
            Path::new("/p/lib.so"),
            &granted,
            Path::new("/p"),
            Path::new("/d"),
        )
        .unwrap();
        assert!(rules.read.contains(&PathBuf::from("/p/lookup.json")));
        assert_eq!(rules.write, vec![PathBuf::from("/d")]);
        assert_eq!(rules.bind, vec![9000]);
        assert!(rules.connect.is_empty());
    }

    #[test]
    fn system_data_is_for_everyone_and_name_resolution_for_sys_dns() {
        let rules = |grants: &[Permission]| {
            Rules::new(
                "clock",
                Path::new("/p/lib.so"),
                grants,
                Path::new("/p"),
                Path::new("/d"),
            )
            .unwrap()
            .read
        };
        let nothing = rules(&[]);
        for path in SYSTEM_DATA_PATHS.iter().filter(|p| Path::new(p).exists()) {
            assert!(nothing.contains(&PathBuf::from(path)), "{path}");
        }
        let hosts = PathBuf::from("/etc/hosts");
        assert!(!nothing.contains(&hosts));
        let dns = rules(&[Permission::SysDns]);
        if hosts.exists() {
            assert!(dns.contains(&hosts));
        }
        assert_eq!(
            plugin_data_dir(Path::new("/d"), "clock", &semver::Version::new(1, 2, 3)),
            Path::new("/d/clock/1.2.3")
        );
    }

    #[test]
    fn a_union_of_rules_allows_what_any_allows_once() {
        let first = Rules::new(
            "a",
            Path::new("/p/a.so"),
            &[],
            Path::new("/p"),
            Path::new("/d"),
        )
        .unwrap();
        let granted: Vec<Permission> = vec!["net:connect:80".parse().unwrap()];
        let second = Rules::new(
            "b",
            Path::new("/p/b.so"),
            &granted,
            Path::new("/p"),
            Path::new("/d"),
        )
        .unwrap();
        let union = Rules::union([first.clone(), second]);
        assert!(union.read.contains(&PathBuf::from("/p/a.so")));
        assert!(union.read.contains(&PathBuf::from("/p/b.so")));
        assert_eq!(union.read.len(), first.read.len() + 1, "system paths once");
        assert_eq!(union.connect, vec![80]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_confined_thread_cannot_read_what_the_host_can() {
        assert!(std::fs::read("/etc/hostname").is_ok() || !Path::new("/etc/hostname").exists());
        let confined = std::thread::spawn(|| {
            let status =
                confine_current_thread("test", &Rules::default(), SandboxMode::Enforce).unwrap();
            (status.level, std::fs::read_dir("/etc").is_err())
        })
        .join()
        .unwrap();
        assert_eq!(confined, (ConfinementLevel::Full, true));
        assert!(
            std::fs::read_dir("/etc").is_ok(),
            "the host thread stays free"
        );
    }

    fn rules_for(plugin_dir: &Path, grants: &[&str]) -> Result<Rules, SandboxError> {
        let granted: Vec<Permission> = grants.iter().map(|p| p.parse().unwrap()).collect();
        Rules::new(
            "linker@1.0.0",
            &plugin_dir.join("lib.so"),
            &granted,
            plugin_dir,
            &plugin_dir.join("data"),
        )
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_placeholder_folder_is_refused() {
        let dir = std::env::temp_dir().join(format!("plugbay-rules-{}", std::process::id()));
        let plugin_dir = dir.join("plugin");
        std::fs::create_dir_all(plugin_dir.join("inside")).unwrap();
        std::os::unix::fs::symlink("/", plugin_dir.join("root")).unwrap();
        std::os::unix::fs::symlink("inside", plugin_dir.join("near")).unwrap();

        let err = rules_for(&plugin_dir, &["fs:read:${plugin_dir}/root"]).unwrap_err();
        let SandboxError::PathEscapes {
            permission,
            resolved,
            ..
        } = &err
        else {
            panic!("expected PathEscapes, got {err:?}");
        };
        assert_eq!(permission, "fs:read:${plugin_dir}/root");
        assert_eq!(resolved, Path::new("/"));
        assert!(
            err.to_string()
                .contains("permission `fs:read:${plugin_dir}/root` resolves to `/`"),
            "{err}"
        );

        // A symlink that stays inside is granted by its target; the plugin folder
        // itself may be reached through a symlink; absolute grants are the
        // operator's own and are taken as written.
        let canonical = plugin_dir.canonicalize().unwrap();
        let rules = rules_for(&plugin_dir, &["fs:write:${plugin_dir}/near"]).unwrap();
        assert_eq!(rules.write, [canonical.join("inside")]);
        std::os::unix::fs::symlink(&plugin_dir, dir.join("alias")).unwrap();
        let rules = rules_for(&dir.join("alias"), &["fs:read:${plugin_dir}"]).unwrap();
        assert!(rules.read.contains(&canonical));
        let rules = rules_for(
            &plugin_dir,
            &[&format!("fs:read:{}/root", plugin_dir.display())],
        )
        .unwrap();
        assert!(rules.read.contains(&plugin_dir.join("root")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A checked path swapped for a symlink before the worker confines itself (the
    /// window between the host's check and landlock's open) stops the start.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_path_replaced_after_its_check_is_refused() {
        let dir = std::env::temp_dir().join(format!("plugbay-swap-{}", std::process::id()));
        let plugin_dir = dir.join("plugin");
        std::fs::create_dir_all(plugin_dir.join("data")).unwrap();
        let rules = rules_for(&plugin_dir, &["fs:write:${plugin_dir}/data"]).unwrap();
        assert_eq!(rules.checked.len(), 1);

        let confine = |rules: Rules| {
            std::thread::spawn(move || {
                restrict_with_landlock("linker@1.0.0", &rules, SandboxMode::Enforce).map(drop)
            })
            .join()
            .unwrap()
        };
        confine(rules.clone()).unwrap();
        std::fs::rename(plugin_dir.join("data"), dir.join("moved")).unwrap();
        std::os::unix::fs::symlink("/", plugin_dir.join("data")).unwrap();
        let err = confine(rules).unwrap_err();
        assert!(
            matches!(&err, SandboxError::PathChanged { permission, .. } if permission == "fs:write:${plugin_dir}/data"),
            "{err:?}"
        );

        // A path that did not exist when it was checked must not appear meanwhile.
        let rules = rules_for(&plugin_dir, &["fs:read:${plugin_dir}/later"]).unwrap();
        assert_eq!(rules.checked[0].file, None);
        std::os::unix::fs::symlink("/", plugin_dir.join("later")).unwrap();
        let err = confine(rules).unwrap_err();
        assert!(
            matches!(&err, SandboxError::PathChanged { permission, .. } if permission == "fs:read:${plugin_dir}/later"),
            "{err:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Landlock on its own (without the seccomp filter) refuses device nodes beneath
    /// an `fs:write:` grant, and still allows files and fifos there.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_grant_does_not_make_devices() {
        use std::os::unix::ffi::OsStrExt;

        let dir = std::env::temp_dir().join(format!("plugbay-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = Rules {
            write: vec![dir.clone()],
            ..Rules::default()
        };
        let node = |name: &str, kind: libc::mode_t, dev: libc::dev_t| {
            let path = std::ffi::CString::new(dir.join(name).as_os_str().as_bytes()).unwrap();
            // SAFETY: `path` is a valid NUL-terminated string.
            match unsafe { libc::mknod(path.as_ptr(), kind | 0o600, dev) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error().raw_os_error()),
            }
        };
        let kmsg = libc::makedev(1, 11);
        let confined = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (level, _) =
                        restrict_with_landlock("test", &rules, SandboxMode::Enforce).unwrap();
                    assert_eq!(level, ConfinementLevel::Full);
                    (
                        node("char", libc::S_IFCHR, kmsg),
                        node("block", libc::S_IFBLK, libc::makedev(7, 0)),
                        node("fifo", libc::S_IFIFO, 0),
                        std::fs::write(dir.join("file"), "x").is_ok(),
                    )
                })
                .join()
                .unwrap()
        });
        assert_eq!(
            confined,
            (
                Err(Some(libc::EACCES)),
                Err(Some(libc::EACCES)),
                Ok(()),
                true
            )
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
