//! Permissions → landlock: what a plugin is granted, and the confinement of its
//! worker thread.
//!
//! Granted = requested ∩ what the host's [`Policy`] allows. Each worker thread
//! confines itself with landlock **before** it opens the library, so no plugin code
//! (not even the library's initializers) ever runs unconfined. Confinement is per
//! thread and inherited by the threads the plugin spawns; host threads stay free.
//!
//! The ruleset is pinned to landlock ABI 6: every filesystem right is handled and
//! denied but read access to the library, the system library directories and the
//! granted `fs:` paths; TCP bind and connect are denied but on granted ports; signals
//! and abstract unix sockets are scoped to the plugin's own domain. Where the kernel
//! cannot enforce all of it, the plugin does not start, unless the host allows
//! degraded confinement ([`SandboxMode::AllowDegraded`]); the status says which.

use std::fmt;
use std::path::{Path, PathBuf};

use plugbay_api::manifest::Permission;
use serde::{Deserialize, Serialize};

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
    /// Granted paths that did not exist when the plugin started (and so grant nothing).
    pub missing_paths: Vec<PathBuf>,
}

impl fmt::Display for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.landlock_abi {
            Some(abi) => write!(f, "{} (landlock ABI {abi})", self.level),
            None => write!(f, "{} (no landlock)", self.level),
        }
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

impl Rules {
    /// The rules for a plugin whose library is `library`, with `granted` permissions.
    pub fn new(
        library: &Path,
        granted: &[Permission],
        plugin_dir: &Path,
        data_dir: &Path,
    ) -> Rules {
        let mut rules = Rules {
            read: vec![library.to_owned()],
            ..Rules::default()
        };
        rules.read.extend(
            SYSTEM_LIBRARY_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|path| path.exists()),
        );
        let (plugin_dir, data_dir) = (plugin_dir.to_string_lossy(), data_dir.to_string_lossy());
        for permission in granted {
            match permission {
                Permission::FsRead(path) => {
                    rules.read.push(path.resolve(&plugin_dir, &data_dir).into())
                }
                Permission::FsWrite(path) => rules
                    .write
                    .push(path.resolve(&plugin_dir, &data_dir).into()),
                Permission::NetConnect(port) => rules.connect.push(*port),
                Permission::NetBind(port) => rules.bind.push(*port),
                _ => {}
            }
        }
        rules
    }
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
        }
        union
    }
}

/// Confines the calling thread (and the threads it will spawn) to `rules`.
#[cfg(target_os = "linux")]
pub(crate) fn confine_current_thread(
    id: &str,
    rules: &Rules,
    mode: SandboxMode,
) -> Result<Confinement, SandboxError> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };

    let abi = ABI::V6;
    let level = match mode {
        SandboxMode::Enforce => CompatLevel::HardRequirement,
        SandboxMode::AllowDegraded => CompatLevel::BestEffort,
    };
    let (present, missing): (Vec<&PathBuf>, Vec<&PathBuf>) = rules
        .read
        .iter()
        .chain(&rules.write)
        .partition(|path| path.exists());
    let missing_paths: Vec<PathBuf> = missing.into_iter().cloned().collect();
    for path in &missing_paths {
        tracing::warn!(plugin = id, path = %path.display(), "granted path does not exist; it grants nothing");
    }
    let readable = rules.read.iter().filter(|path| present.contains(path));
    let writable = rules.write.iter().filter(|path| present.contains(path));

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
        .and_then(|ruleset| {
            ruleset.add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))
        })
        .and_then(|ruleset| {
            ruleset.add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))
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

    let level = match status.ruleset {
        RulesetStatus::FullyEnforced => ConfinementLevel::Full,
        RulesetStatus::PartiallyEnforced => ConfinementLevel::Partial,
        RulesetStatus::NotEnforced => ConfinementLevel::None,
    };
    if level != ConfinementLevel::Full && mode == SandboxMode::Enforce {
        return Err(SandboxError::Unsupported {
            id: id.to_owned(),
            reason: format!("the kernel enforces the landlock ruleset only {level}ly"),
        });
    }
    if level != ConfinementLevel::Full {
        tracing::warn!(plugin = id, confinement = %level, "plugin runs with degraded confinement");
    }
    Ok(Confinement {
        level,
        landlock_abi: (level != ConfinementLevel::None).then_some(LANDLOCK_ABI),
        missing_paths,
    })
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
            reason: "landlock exists only on Linux".to_owned(),
        }),
        SandboxMode::AllowDegraded => {
            tracing::warn!(
                plugin = id,
                "plugin runs unconfined: landlock exists only on Linux"
            );
            Ok(Confinement {
                level: ConfinementLevel::None,
                landlock_abi: None,
                missing_paths: Vec::new(),
            })
        }
    }
}

/// The confinement this kernel can give a plugin: confines a short-lived thread with
/// an empty grant and reports what was enforced.
pub fn probe() -> Confinement {
    std::thread::spawn(|| {
        confine_current_thread("probe", &Rules::default(), SandboxMode::AllowDegraded).unwrap_or(
            Confinement {
                level: ConfinementLevel::None,
                landlock_abi: None,
                missing_paths: Vec::new(),
            },
        )
    })
    .join()
    .unwrap_or(Confinement {
        level: ConfinementLevel::None,
        landlock_abi: None,
        missing_paths: Vec::new(),
    })
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
            Path::new("/p/lib.so"),
            &granted,
            Path::new("/p"),
            Path::new("/d"),
        );
        assert!(rules.read.contains(&PathBuf::from("/p/lookup.json")));
        assert_eq!(rules.write, vec![PathBuf::from("/d")]);
        assert_eq!(rules.bind, vec![9000]);
        assert!(rules.connect.is_empty());
    }

    #[test]
    fn a_union_of_rules_allows_what_any_allows_once() {
        let first = Rules::new(Path::new("/p/a.so"), &[], Path::new("/p"), Path::new("/d"));
        let granted: Vec<Permission> = vec!["net:connect:80".parse().unwrap()];
        let second = Rules::new(
            Path::new("/p/b.so"),
            &granted,
            Path::new("/p"),
            Path::new("/d"),
        );
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
}
