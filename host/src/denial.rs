//! Explaining a denied access: when a plugin's hook fails with "Permission denied"
//! and the plugin requested an `fs:` or `net:` permission it was not granted (a
//! review withheld it, or the host's policy), the error says so, naming the
//! permission and the path it would have granted, instead of leaving the author and
//! the operator with a bare `Permission denied (os error 13)`.

use std::fmt;
use std::path::{Path, PathBuf};

use plugbay_api::manifest::Permission;

/// The permissions a plugin requested but was not granted that its confinement
/// enforces (`fs:` and `net:`; the data permissions are refused by the host
/// services with their own message), each with the path it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Withheld(Vec<(Permission, Option<PathBuf>)>);

/// What a failed access says in the messages of `std::io::Error` and of the C
/// library: landlock refuses with `EACCES`, seccomp with `EPERM`.
const DENIED: &[&str] = &[
    "Permission denied",
    "permission denied",
    "(os error 13)",
    "Operation not permitted",
    "(os error 1)",
];

impl Withheld {
    /// What of `requested` is missing from `granted`, with placeholder paths resolved
    /// against `plugin_dir` and `data_dir`.
    pub(crate) fn new(
        requested: &[Permission],
        granted: &[Permission],
        plugin_dir: &Path,
        data_dir: &Path,
    ) -> Withheld {
        Withheld(
            requested
                .iter()
                .filter(|permission| !permission.is_data() && !granted.contains(permission))
                .map(|permission| {
                    (
                        permission.clone(),
                        permission.resolved_path(plugin_dir, data_dir),
                    )
                })
                .collect(),
        )
    }

    /// A note to append to a plugin's error `message` (`; …`), or nothing when the
    /// message does not read like a denied access or nothing was withheld. When the
    /// message names a path a withheld permission covers, only those are named.
    pub(crate) fn note(&self, id: &str, message: &str) -> Note {
        if self.0.is_empty() || !DENIED.iter().any(|denied| message.contains(denied)) {
            return Note::default();
        }
        let covering: Vec<&(Permission, Option<PathBuf>)> = self
            .0
            .iter()
            .filter(|(_, path)| {
                path.as_ref()
                    .is_some_and(|path| mentions_path_under(message, path))
            })
            .collect();
        let named = if covering.is_empty() {
            self.0.iter().collect()
        } else {
            covering
        };
        let permissions = named
            .iter()
            .map(|(permission, path)| match path {
                Some(path) if permission.fs_path().and_then(|p| p.placeholder()).is_some() => {
                    format!("`{permission}` ({})", path.display())
                }
                _ => format!("`{permission}`"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let (which, them) = if named.len() == 1 {
            ("which was", "it")
        } else {
            ("which were", "them")
        };
        Note(Some(Box::new(NoteText(format!(
            "; the sandbox denied it: the plugin requests {permissions}, {which} not granted; if its review withheld {them}, approve it again granting {them} (`plugbay review approve {id} --grant …`)"
        )))))
    }
}

/// Whether `message` names `path` or something beneath it.
fn mentions_path_under(message: &str, path: &Path) -> bool {
    let path = path.to_string_lossy();
    message.match_indices(path.as_ref()).any(|(at, _)| {
        match message[at + path.len()..].chars().next() {
            None | Some('/') => true,
            Some(next) => !(next.is_alphanumeric() || matches!(next, '_' | '-' | '.')),
        }
    })
}

/// The explanation [`Withheld::note`] appends to a plugin's error, empty when there
/// is none. One pointer wide: it rides in every error value, and is rarely there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note(Option<Box<NoteText>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct NoteText(String);

impl Note {
    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref().map_or("", |text| text.0.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permissions(texts: &[&str]) -> Vec<Permission> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn a_denied_access_to_a_withheld_path_names_the_permission_and_the_path() {
        let requested = permissions(&[
            "process:data",
            "fs:read:${plugin_dir}/lookup.json",
            "net:connect:443",
        ]);
        let granted = permissions(&["process:data"]);
        let withheld = Withheld::new(&requested, &granted, Path::new("/p"), Path::new("/d"));
        let note = withheld
            .note(
                "enricher@1.0.0",
                "cannot read lookup file /p/lookup.json: Permission denied (os error 13)",
            )
            .to_string();
        assert_eq!(
            note,
            "; the sandbox denied it: the plugin requests `fs:read:${plugin_dir}/lookup.json` (/p/lookup.json), which was not granted; if its review withheld it, approve it again granting it (`plugbay review approve enricher@1.0.0 --grant …`)"
        );
        let unnamed = withheld.note("x@1.0.0", "connect failed: Permission denied (os error 13)");
        assert!(
            unnamed.to_string().contains("`fs:read:${plugin_dir}/lookup.json` (/p/lookup.json), `net:connect:443`, which were not granted"),
            "{unnamed}"
        );
    }

    #[test]
    fn other_errors_and_full_grants_get_no_note() {
        let requested = permissions(&["process:data", "fs:read:/etc/hosts"]);
        let none = Withheld::new(&requested, &requested, Path::new("/p"), Path::new("/d"));
        assert!(none
            .note("x@1.0.0", "Permission denied (os error 13)")
            .is_empty());
        let some = Withheld::new(
            &requested,
            &permissions(&["process:data"]),
            Path::new("/p"),
            Path::new("/d"),
        );
        assert!(some.note("x@1.0.0", "no such file").is_empty());
        assert!(!some
            .note("x@1.0.0", "/etc/hosts: Permission denied")
            .is_empty());
        assert!(
            !mentions_path_under("/etc/hostsx: denied", Path::new("/etc/hosts")),
            "a longer name is another file"
        );
    }
}
