//! API keys for `plugbay serve`: created with scopes, shown once, stored as the
//! SHA-256 of their secret, compared in constant time, revocable.
//!
//! A key reads `pb_<id>_<secret>`: the id finds the row, the secret (32 random bytes)
//! is checked against the stored hash. Keys are random, so a plain SHA-256 suffices
//! (no password hashing needed), and a key is never logged.

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{audit, hex, now, Registry, RegistryError};

/// Every scope a key can carry.
pub const SCOPES: &[&str] = &[
    "plugins:read",
    "plugins:write",
    "plugins:review",
    "plugins:execute",
    "plugins:install",
    "plugins:publish",
];

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// List and show plugins.
    Read,
    /// Register, enable, disable, unregister.
    Write,
    /// Approve and reject.
    Review,
    /// Process batches.
    Execute,
    /// Install plugins from a marketplace (registering them approved when a trusted
    /// reviewer signed them).
    Install,
    /// Publish approved plugins to a marketplace.
    Publish,
}

impl Scope {
    /// The scope as written: `plugins:read`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "plugins:read",
            Scope::Write => "plugins:write",
            Scope::Review => "plugins:review",
            Scope::Execute => "plugins:execute",
            Scope::Install => "plugins:install",
            Scope::Publish => "plugins:publish",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = AuthError;
    fn from_str(text: &str) -> Result<Self, AuthError> {
        match text {
            "plugins:read" => Ok(Scope::Read),
            "plugins:write" => Ok(Scope::Write),
            "plugins:review" => Ok(Scope::Review),
            "plugins:execute" => Ok(Scope::Execute),
            "plugins:install" => Ok(Scope::Install),
            "plugins:publish" => Ok(Scope::Publish),
            other => Err(AuthError::UnknownScope(other.to_owned())),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a key was refused or a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is not of the form `pb_<id>_<secret>`.
    #[error("malformed API key; keys look like `pb_<id>_<secret>` as `plugbay keys create` printed them")]
    Malformed,
    /// No key has this id, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked.
    #[error("API key `{id}` was revoked")]
    Revoked {
        /// The key's id.
        id: String,
    },
    /// A scope that does not exist.
    #[error("unknown scope `{0}`; expected one of `plugins:read`, `plugins:write`, `plugins:review`, `plugins:execute`, `plugins:install`, `plugins:publish`")]
    UnknownScope(String),
    /// A key needs at least one scope.
    #[error("a key needs at least one scope (`--scope plugins:read`, …)")]
    NoScopes,
    /// A key name is empty.
    #[error("a key needs a non-empty name (`--name NAME`)")]
    NoName,
    /// An active key already has this name.
    #[error("an active API key is already named `{0}`; revoke it or choose another name")]
    DuplicateName(String),
    /// No key has this id or name.
    #[error("no API key `{0}`; `plugbay keys list` shows them")]
    NotFound(String),
}

/// An API key, without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// The key's id (the public part of the key).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}

impl ApiKey {
    /// Whether the key carries `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system provides random bytes");
    hex(&buffer)
}

fn row_to_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes: String = row.get(2)?;
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: scopes.split(',').filter_map(|s| s.parse().ok()).collect(),
        created_at: row.get(3)?,
        revoked_at: row.get(4)?,
    })
}

impl Registry {
    /// Creates a key; returns it and the full token, which is shown only now.
    pub fn create_key(
        &mut self,
        name: &str,
        scopes: &[Scope],
        actor: &str,
    ) -> Result<(ApiKey, String), RegistryError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(AuthError::NoName.into());
        }
        if scopes.is_empty() {
            return Err(AuthError::NoScopes.into());
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let id = random_hex(8);
        let secret = random_hex(32);
        let scope_text = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let now = now();
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = ?1 AND revoked_at IS NULL)",
                [name],
                |row| row.get(0),
            )?;
            if taken {
                return Err(AuthError::DuplicateName(name.to_owned()).into());
            }
            tx.execute(
                "INSERT INTO api_keys (id, name, secret_sha256, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, secret_hash(&secret), scope_text, now],
            )?;
            audit(tx, actor, "key-create", None, Some(&format!("key {id} ({name}) scopes {scope_text}")))
        })?;
        let key = ApiKey {
            id: id.clone(),
            name: name.to_owned(),
            scopes,
            created_at: now,
            revoked_at: None,
        };
        Ok((key, format!("pb_{id}_{secret}")))
    }

    /// Every key, oldest first.
    pub fn list_keys(&self) -> Result<Vec<ApiKey>, RegistryError> {
        let mut statement = self.connection().prepare(
            "SELECT id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
        )?;
        let keys = statement
            .query_map([], row_to_key)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Revokes the key with this id (or, failing that, the active key with this name).
    pub fn revoke_key(&mut self, id_or_name: &str, actor: &str) -> Result<ApiKey, RegistryError> {
        let now = now();
        let id = self.write(|tx| {
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM api_keys WHERE id = ?1
                     UNION ALL SELECT id FROM api_keys WHERE name = ?1 AND revoked_at IS NULL LIMIT 1",
                    [id_or_name],
                    |row| row.get(0),
                )
                .optional()?;
            let id = id.ok_or_else(|| AuthError::NotFound(id_or_name.to_owned()))?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, now],
            )?;
            audit(tx, actor, "key-revoke", None, Some(&format!("key {id}")))?;
            Ok(id)
        })?;
        self.list_keys()?
            .into_iter()
            .find(|key| key.id == id)
            .ok_or_else(|| AuthError::NotFound(id).into())
    }

    /// The key a token belongs to, if it is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<ApiKey, RegistryError> {
        let (id, secret) = token
            .strip_prefix("pb_")
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, secret)| {
                id.len() == 16
                    && secret.len() == 64
                    && id
                        .chars()
                        .chain(secret.chars())
                        .all(|c| c.is_ascii_hexdigit())
            })
            .ok_or(AuthError::Malformed)?;
        let row: Option<(String, Option<String>, ApiKey)> = self
            .connection()
            .query_row(
                "SELECT id, name, scopes, created_at, revoked_at, secret_sha256 FROM api_keys WHERE id = ?1",
                [id],
                |row| Ok((row.get(5)?, row.get(4)?, row_to_key(row)?)),
            )
            .optional()?;
        // Compare against a dummy hash when the id is unknown, so both paths take the same time.
        let (stored, revoked, key) = match row {
            Some(row) => (row.0, row.1, Some(row.2)),
            None => (secret_hash(""), None, None),
        };
        let matches: bool = secret_hash(secret)
            .as_bytes()
            .ct_eq(stored.as_bytes())
            .into();
        match key {
            Some(key) if matches => match revoked {
                Some(_) => Err(AuthError::Revoked { id: key.id }.into()),
                None => Ok(key),
            },
            _ => Err(AuthError::Unknown.into()),
        }
    }
}
