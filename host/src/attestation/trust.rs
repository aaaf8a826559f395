//! The operator's trusted reviewer keys: an OpenSSH `allowed_signers` file in the
//! registry's home, the very file `ssh-keygen -Y verify -f` reads.
//!
//! Each line Plugbay writes reads
//! `NAME namespaces="plugbay-review" ssh-ed25519 AAAA… COMMENT`: the key is trusted to
//! sign reviews (and nothing else) by the reviewer called `NAME`. Lines written by
//! hand are read too, with these rules, each stricter than or equal to OpenSSH's: a
//! line whose `namespaces` option leaves out `plugbay-review` is not trusted for
//! reviews; principal patterns (`*`, `?`, `!`) and certificate authorities are not
//! followed (such a line trusts nobody here); options Plugbay does not know
//! (`valid-after`, …) make the line trust nobody, rather than more than OpenSSH would.
//! Blank lines and `#` comments are kept as they are when Plugbay rewrites the file.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, PublicKey};

use super::NAMESPACE;

/// The trust store's file name inside the registry's home.
pub const ALLOWED_SIGNERS_FILE: &str = "allowed_signers";

/// Why a trust store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The file could not be read or written.
    #[error("cannot {action} trusted reviewer keys {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The reviewer's name cannot be written in an `allowed_signers` file.
    #[error("invalid reviewer name `{name}`: use letters, digits and `.-_@+` only (no spaces, commas, quotes or patterns), e.g. `alice@example.com`")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The key text is not an OpenSSH public key.
    #[error(
        "{what} is not an OpenSSH public key (`ssh-ed25519 AAAA…`, as in a `.pub` file): {reason}"
    )]
    InvalidKey {
        /// The file or text given.
        what: String,
        /// The parser's reason.
        reason: String,
    },
    /// Not an Ed25519 key.
    #[error("{what} is a {algorithm} key; plugbay reviews are signed with Ed25519 keys only")]
    KeyAlgorithm {
        /// The file or text given.
        what: String,
        /// Its algorithm.
        algorithm: String,
    },
    /// The same key is already trusted under this name.
    #[error("key {fingerprint} is already trusted as reviewer `{name}`")]
    AlreadyTrusted {
        /// The reviewer.
        name: String,
        /// The key.
        fingerprint: String,
    },
    /// Nothing matched a removal.
    #[error("no trusted reviewer key matches `{given}`; `plugbay trust list` shows the names and fingerprints")]
    NotFound {
        /// The name or fingerprint given.
        given: String,
    },
}

/// A key trusted to sign reviews for a reviewer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustedKey {
    /// The reviewer's name (the `allowed_signers` principal).
    pub name: String,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The key, as in a `.pub` file.
    pub key: String,
    /// The line's comment, if any.
    pub comment: String,
    /// The line in the file (1-based).
    pub line: usize,
}

/// One line of the file: either a key trusted for reviews or anything else, kept
/// as written.
#[derive(Debug, Clone)]
enum Line {
    Trusted { key: PublicKey, entry: TrustedKey },
    Other(String),
}

/// The trusted reviewer keys of a registry home (`allowed_signers`).
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: PathBuf,
    lines: Vec<Line>,
}

impl TrustStore {
    /// Reads the trust store of the registry home `home` (empty if it has no file).
    pub fn open(home: impl AsRef<Path>) -> Result<TrustStore, TrustError> {
        let path = home.as_ref().join(ALLOWED_SIGNERS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(TrustError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| parse_line(line, index + 1))
            .collect();
        Ok(TrustStore { path, lines })
    }

    /// The file (which `ssh-keygen -Y verify -f` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key trusted for reviews, in file order.
    pub fn list(&self) -> Vec<TrustedKey> {
        self.lines
            .iter()
            .filter_map(|line| match line {
                Line::Trusted { entry, .. } => Some(entry.clone()),
                Line::Other(_) => None,
            })
            .collect()
    }

    /// The reviewers `key` is trusted for.
    pub fn principals_for(&self, key: &PublicKey) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|line| match line {
                Line::Trusted {
                    key: trusted,
                    entry,
                } if trusted.key_data() == key.key_data() => Some(entry.name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Trusts `key` to sign reviews by `name`, and writes the file.
    pub fn add(&mut self, name: &str, key: &PublicKey) -> Result<TrustedKey, TrustError> {
        check_name(name)?;
        let what = "the key".to_owned();
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(TrustError::KeyAlgorithm {
                what,
                algorithm: key.algorithm().to_string(),
            });
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if self.principals_for(key).contains(&name) {
            return Err(TrustError::AlreadyTrusted {
                name: name.to_owned(),
                fingerprint,
            });
        }
        let openssh = key.to_openssh().map_err(|err| TrustError::InvalidKey {
            what,
            reason: err.to_string(),
        })?;
        let text = format!("{name} namespaces=\"{NAMESPACE}\" {openssh}");
        let line = parse_line(&text, self.lines.len() + 1);
        let Line::Trusted { entry, .. } = &line else {
            unreachable!("a line written here is a trusted key: {text}");
        };
        let entry = entry.clone();
        self.lines.push(line);
        self.save()?;
        Ok(entry)
    }

    /// Stops trusting every key of reviewer `given`, or the key whose fingerprint is
    /// `given`, and writes the file. Returns what was removed.
    pub fn remove(&mut self, given: &str) -> Result<Vec<TrustedKey>, TrustError> {
        let mut removed = Vec::new();
        self.lines.retain(|line| match line {
            Line::Trusted { entry, .. } if entry.name == given || entry.fingerprint == given => {
                removed.push(entry.clone());
                false
            }
            _ => true,
        });
        if removed.is_empty() {
            return Err(TrustError::NotFound {
                given: given.to_owned(),
            });
        }
        self.save()?;
        Ok(removed)
    }

    /// Writes the file: a new file beside it, then renamed over it.
    fn save(&self) -> Result<(), TrustError> {
        let io = |source| TrustError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        };
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Trusted { entry, .. } => {
                    text.push_str(&format!(
                        "{} namespaces=\"{NAMESPACE}\" {}",
                        entry.name, entry.key
                    ));
                    if !entry.comment.is_empty() {
                        text.push(' ');
                        text.push_str(&entry.comment);
                    }
                }
                Line::Other(other) => text.push_str(other),
            }
            text.push('\n');
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&self.path).map_err(|err| io(err.error))?;
        Ok(())
    }
}

/// Reads a public key from a `.pub` file or from the key text itself.
pub fn read_public_key(given: &str) -> Result<PublicKey, TrustError> {
    let (text, what) = if given.trim_start().starts_with("ssh-") {
        (given.to_owned(), "the key given".to_owned())
    } else {
        let path = Path::new(given);
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        (text, format!("file {given}"))
    };
    let key = PublicKey::from_openssh(text.trim()).map_err(|err| TrustError::InvalidKey {
        what: what.clone(),
        reason: err.to_string(),
    })?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(TrustError::KeyAlgorithm {
            what,
            algorithm: key.algorithm().to_string(),
        });
    }
    Ok(key)
}

fn check_name(name: &str) -> Result<(), TrustError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+'));
    if valid {
        Ok(())
    } else {
        Err(TrustError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Splits off the first field of `text`: a run of non-blank characters in which
/// double quotes may hold blanks.
fn first_field(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..at], &text[at..]),
            _ => {}
        }
    }
    (text, "")
}

/// Reads one line: a key trusted for reviews when it names one plain principal, no
/// option but `namespaces` (which must include ours), and an Ed25519 key.
fn parse_line(text: &str, number: usize) -> Line {
    let other = || Line::Other(text.to_owned());
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return other();
    }
    let (principal, rest) = first_field(trimmed);
    if check_name(principal).is_err() {
        return other();
    }
    let (options, key_text) = if rest.trim_start().starts_with("ssh-") {
        ("", rest.trim())
    } else {
        let (options, rest) = first_field(rest);
        (options, rest.trim())
    };
    if !options.is_empty() {
        let Some(value) = options.strip_prefix("namespaces=\"") else {
            return other();
        };
        let Some(list) = value.strip_suffix('"') else {
            return other();
        };
        if !list.split(',').any(|namespace| namespace == NAMESPACE) {
            return other();
        }
    }
    let Ok(key) = PublicKey::from_openssh(key_text) else {
        return other();
    };
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return other();
    }
    let Ok(openssh) = PublicKey::new(key.key_data().clone(), "").to_openssh() else {
        return other();
    };
    let entry = TrustedKey {
        name: principal.to_owned(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        key: openssh.trim().to_owned(),
        comment: key.comment().to_owned(),
        line: number,
    };
    Line::Trusted { key, entry }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHxyQEOXDAcsgNu5qKLoc8Sc+9f5+PjSZQRHweKN2rT reviewer";

    #[test]
    fn keys_are_added_listed_and_removed_in_the_openssh_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TrustStore::open(dir.path()).unwrap();
        assert!(store.list().is_empty());
        let key = read_public_key(KEY).unwrap();
        let added = store.add("alice@example.com", &key).unwrap();
        assert!(added.fingerprint.starts_with("SHA256:"));
        let text = std::fs::read_to_string(dir.path().join(ALLOWED_SIGNERS_FILE)).unwrap();
        assert!(
            text.starts_with("alice@example.com namespaces=\"plugbay-review\" ssh-ed25519 AAAA"),
            "{text}"
        );
        let err = store.add("alice@example.com", &key).unwrap_err();
        assert!(matches!(err, TrustError::AlreadyTrusted { .. }), "{err}");
        let reopened = TrustStore::open(dir.path()).unwrap();
        assert_eq!(reopened.principals_for(&key), ["alice@example.com"]);
        let mut store = reopened;
        assert_eq!(store.remove(&added.fingerprint).unwrap().len(), 1);
        assert!(store.principals_for(&key).is_empty());
        assert!(matches!(
            store.remove("alice@example.com").unwrap_err(),
            TrustError::NotFound { .. }
        ));
    }

    #[test]
    fn hand_written_lines_trust_no_more_than_openssh_would() {
        let dir = tempfile::tempdir().unwrap();
        let body = KEY.trim_end_matches(" reviewer");
        let text = format!(
            "# reviewers\n\
             a {body}\n\
             b namespaces=\"git,plugbay-review\" {body}\n\
             c namespaces=\"git\" {body}\n\
             *@corp {body}\n\
             d cert-authority {body}\n\
             e valid-after=\"20300101\" {body}\n"
        );
        std::fs::write(dir.path().join(ALLOWED_SIGNERS_FILE), &text).unwrap();
        let mut store = TrustStore::open(dir.path()).unwrap();
        let key = read_public_key(KEY).unwrap();
        assert_eq!(store.principals_for(&key), ["a", "b"]);
        store.remove("a").unwrap();
        let rewritten = std::fs::read_to_string(dir.path().join(ALLOWED_SIGNERS_FILE)).unwrap();
        assert!(
            rewritten.starts_with("# reviewers\nb namespaces"),
            "{rewritten}"
        );
        assert!(rewritten.contains("*@corp "), "{rewritten}");
    }

    #[test]
    fn bad_names_and_keys_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TrustStore::open(dir.path()).unwrap();
        let key = read_public_key(KEY).unwrap();
        for name in ["", "two words", "a,b", "*"] {
            let err = store.add(name, &key).unwrap_err().to_string();
            assert!(err.contains("invalid reviewer name"), "{err}");
        }
        let err = read_public_key("ssh-ed25519 not-base64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an OpenSSH public key"), "{err}");
        let err = read_public_key("/nonexistent/key.pub")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/key.pub"), "{err}");
    }
}
