//! Hints on plugin errors that point at the sandbox.
//!
//! A confined plugin that tries what it was not granted gets the operating system's
//! answer, and libraries pass it on in their own words: "permission denied (os error
//! 13)", SQLite's "unable to open database file", the C library's "temporary failure
//! in name resolution". None of them says that a sandbox was involved, let alone
//! which permission would help. So when a hook fails (or `init` does) with an error
//! that reads like a refused access or a failed name lookup, the host's error adds
//! what the plugin was granted and what it requested but was not granted (what the
//! review or the host's policy withheld).
//!
//! The hint is a guess from the message's words: a plugin error is text. It never
//! replaces the plugin's own message, and it is added only to errors that read like
//! a denial.

use std::fmt;

use plugbay_api::manifest::Permission;

use crate::isolation::Isolation;
use crate::runtime::StartError;

/// What the host adds to a plugin's error that reads like a sandbox denial: empty
/// for any other error. Displayed after the plugin's message, starting with `; `.
///
/// One pointer wide, so that the errors carrying it stay small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint(Option<Box<Text>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Text(String);

impl Hint {
    fn new(text: String) -> Hint {
        Hint(Some(Box::new(Text(text))))
    }

    /// The hint's text, if the error read like a denial.
    pub fn text(&self) -> Option<&str> {
        self.0.as_deref().map(|text| text.0.as_str())
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            Some(text) => write!(f, "; {text}"),
            None => Ok(()),
        }
    }
}

/// Words of errors that come from a refused access, as the OS, Rust's standard
/// library and common libraries write them (compared in lowercase).
const DENIED: &[&str] = &[
    "permission denied",
    "operation not permitted",
    "os error 13)",
    "os error 1)",
    "code: 13, kind",
    "code: 1, kind",
    "unable to open database file",
    "attempt to write a readonly database",
    "read-only file system",
    // A worker process without a `net:` grant has a network namespace of its own
    // with no interface up.
    "network is unreachable",
];

/// Words of a failed name lookup (glibc's `gai_strerror` and Rust's wrapping).
const RESOLUTION: &[&str] = &[
    "temporary failure in name resolution",
    "name or service not known",
    "failed to lookup address",
    "no address associated with hostname",
];

/// What the plugin may do, for a hint: its grants in backticks, or "nothing".
fn listed(permissions: &[Permission]) -> String {
    if permissions.is_empty() {
        return "nothing".to_owned();
    }
    permissions
        .iter()
        .map(|permission| format!("`{permission}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The hint for a plugin error whose message is `message`, for an instance with
/// `granted` permissions that requested `withheld` too, running in `isolation`.
pub(crate) fn hint(
    message: &str,
    granted: &[Permission],
    withheld: &[Permission],
    isolation: Isolation,
) -> Hint {
    let lower = message.to_lowercase();
    let network = granted
        .iter()
        .any(|p| matches!(p, Permission::NetConnect(_) | Permission::NetBind(_)));
    if RESOLUTION.iter().any(|words| lower.contains(words)) {
        let text = if !granted.contains(&Permission::SysDns) {
            let how = if withheld.contains(&Permission::SysDns) {
                "it requested it, but it was not granted"
            } else {
                "add it to the plugin's permissions"
            };
            format!(
                "name resolution needs `sys:dns` ({how}); the plugin was granted {}",
                listed(granted)
            )
        } else if isolation == Isolation::Process && !network {
            "the plugin was granted `sys:dns`, but its worker process has no network without a `net:` grant: only names in /etc/hosts resolve".to_owned()
        } else {
            return Hint::default();
        };
        return Hint::new(text);
    }
    if !DENIED.iter().any(|words| lower.contains(words)) {
        return Hint::default();
    }
    let withheld_text = if withheld.is_empty() {
        "it requested nothing more; an access outside these grants needs a permission in its plugin.json, and some calls are refused whatever the grants (see the threat model)".to_owned()
    } else {
        format!("requested but not granted: {}", listed(withheld))
    };
    Hint::new(format!(
        "this looks like the sandbox refusing an access: the plugin was granted {} (and may read its library, the system's libraries, time zone and locale data); {withheld_text}",
        listed(granted)
    ))
}

/// `err` with a hint if it is an `init` failure that reads like a sandbox denial.
pub(crate) fn on_start_error(
    err: StartError,
    granted: &[Permission],
    withheld: &[Permission],
    isolation: Isolation,
) -> StartError {
    match err {
        StartError::Init { id, error, .. } => StartError::Init {
            hint: hint(&error.message, granted, withheld, isolation),
            id,
            error,
        },
        StartError::InitPanicked { id, message, .. } => StartError::InitPanicked {
            hint: hint(&message, granted, withheld, isolation),
            id,
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permissions(list: &[&str]) -> Vec<Permission> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn a_denial_names_the_grants_and_what_was_withheld() {
        let granted = permissions(&["process:data"]);
        let withheld = permissions(&["fs:write:${data_dir}"]);
        for message in [
            "unable to open database file: /d/db.sqlite",
            "Permission denied (os error 13)",
            "called `Result::unwrap()` on an `Err` value: Os { code: 13, kind: PermissionDenied, message: \"Permission denied\" }",
            "Operation not permitted (os error 1)",
        ] {
            let text = hint(message, &granted, &withheld, Isolation::Thread).to_string();
            assert!(text.starts_with("; this looks like the sandbox"), "{message}: {text}");
            assert!(text.contains("granted `process:data`"), "{text}");
            assert!(
                text.contains("requested but not granted: `fs:write:${data_dir}`"),
                "{text}"
            );
        }
        let text = hint("permission denied", &granted, &[], Isolation::Thread).to_string();
        assert!(text.contains("it requested nothing more"), "{text}");
    }

    #[test]
    fn a_failed_lookup_names_sys_dns() {
        let message = "failed to lookup address information: Temporary failure in name resolution";
        let granted = permissions(&["process:data", "net:connect:80"]);
        let text = hint(message, &granted, &[Permission::SysDns], Isolation::Thread).to_string();
        assert!(
            text.contains(
                "name resolution needs `sys:dns` (it requested it, but it was not granted)"
            ),
            "{text}"
        );
        assert!(text.contains("`net:connect:80`"), "{text}");
        let text = hint(message, &granted, &[], Isolation::Thread).to_string();
        assert!(
            text.contains("add it to the plugin's permissions"),
            "{text}"
        );
        let resolving = permissions(&["process:data", "sys:dns"]);
        let text = hint(message, &resolving, &[], Isolation::Process).to_string();
        assert!(text.contains("no network without a `net:` grant"), "{text}");
        assert_eq!(
            hint(
                message,
                &[granted, resolving].concat(),
                &[],
                Isolation::Thread
            ),
            Hint::default()
        );
    }

    #[test]
    fn other_errors_get_no_hint() {
        assert_eq!(
            hint("record 3 has no `id`", &[], &[], Isolation::Thread).to_string(),
            ""
        );
    }
}
