//! The current version of each plugin name: several versions of a plugin may be
//! registered (`sequencer@1.0.0`, `sequencer@2.0.0`), and one of them serves the
//! name. An upgrade (`plugbay upgrade NAME@VERSION`, `POST /plugins/{id}/upgrade`)
//! makes another approved, enabled version current; `plugbay serve` switches the
//! instances it runs for the name at their next batch (see `server::upgrades`), and
//! a version that fails to start there leaves the version before it current.
//!
//! The first version of a name to be enabled becomes current by itself (its
//! `enable` is the audit log's record of it). Every later change of the current
//! version, and every upgrade that failed, is in the audit log (`upgrade`,
//! `upgrade-failed`). Unregistering the current version leaves the name
//! without one until an upgrade names another.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{audit, check_id, now, Entry, Registry, RegistryError, SELECT_ENTRY};

/// The version that serves a plugin name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentVersion {
    /// The plugin name.
    pub name: String,
    /// The id of its current version (`name@version`).
    pub id: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// What an upgrade in the registry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switched {
    /// The plugin name.
    pub name: String,
    /// The version that was current, if one was.
    pub from: Option<String>,
    /// The version that is current now.
    pub to: String,
    /// Whether anything changed (`false`: `to` was current already).
    pub changed: bool,
}

/// Whether `text` is a plugin name (`[a-z0-9-]+`), as opposed to an id.
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    if is_name(name) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName {
            name: name.to_owned(),
        })
    }
}

impl Registry {
    /// The current version of plugin name `name`, if it has one.
    pub fn current(&self, name: &str) -> Result<Option<CurrentVersion>, RegistryError> {
        check_name(name)?;
        Ok(self
            .connection
            .query_row(
                "SELECT name, id, since FROM current_versions WHERE name = ?1",
                [name],
                |row| {
                    Ok(CurrentVersion {
                        name: row.get(0)?,
                        id: row.get(1)?,
                        since: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// The id of the current version of `name` if it has one and that version is
    /// enabled: the version a bare name stands for ([`Registry::resolve`]).
    pub fn enabled_current(&self, name: &str) -> Result<Option<String>, RegistryError> {
        let Some(current) = self.current(name)? else {
            return Ok(None);
        };
        Ok(self
            .find(&current.id)?
            .filter(|entry| entry.enabled)
            .map(|entry| entry.id))
    }

    /// The id of the current version of `name`; an error that lists the registered
    /// versions when it has none.
    pub fn current_id(&self, name: &str) -> Result<String, RegistryError> {
        if let Some(current) = self.current(name)? {
            return Ok(current.id);
        }
        let versions: Vec<String> = self.versions(name)?.into_iter().map(|e| e.id).collect();
        Err(RegistryError::NoCurrentVersion {
            name: name.to_owned(),
            versions,
        })
    }

    /// Every registered version of plugin name `name`, oldest version first.
    pub fn versions(&self, name: &str) -> Result<Vec<Entry>, RegistryError> {
        check_name(name)?;
        let mut statement = self
            .connection
            .prepare(&format!("{SELECT_ENTRY} WHERE name = ?1"))?;
        let rows = statement.query_map([name], super::row_to_entry)?;
        let mut entries = rows
            .map(|row| row?.map_err(RegistryError::from))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.manifest.version.cmp(&b.manifest.version));
        Ok(entries)
    }

    /// Checks that version `id` may become current: it is registered, approved,
    /// enabled, and its stored library is the one reviewed. Returns it and the
    /// current version of its name.
    pub fn check_upgrade(
        &self,
        id: &str,
    ) -> Result<(Entry, Option<CurrentVersion>), RegistryError> {
        check_id(id)?;
        let entry = self.get(id)?;
        self.check_runnable(&entry, true)?;
        let current = self.current(&entry.manifest.name)?;
        Ok((entry, current))
    }

    /// Makes version `id` (approved, enabled, its library unchanged since review) the
    /// current version of its name, and records it in the audit log. A `plugbay
    /// serve` on this registry switches its instances for the name at their next
    /// batch; if the version does not start there, the server makes the version
    /// before it current again (audited as `upgrade-failed`).
    pub fn upgrade(&mut self, id: &str, actor: &str) -> Result<Switched, RegistryError> {
        let (entry, current) = self.check_upgrade(id)?;
        let from = current.map(|current| current.id);
        self.switch_current(&entry.manifest.name, from.as_deref(), id, actor)
    }

    /// Makes `to` the current version of `name` if `from` is current now (compare and
    /// swap, in one transaction), and records it. `to` must be a version of `name`.
    /// Returns [`RegistryError::CurrentChanged`] if another version is current.
    pub fn switch_current(
        &mut self,
        name: &str,
        from: Option<&str>,
        to: &str,
        actor: &str,
    ) -> Result<Switched, RegistryError> {
        check_name(name)?;
        check_id(to)?;
        if to.split_once('@').map(|(n, _)| n) != Some(name) {
            return Err(RegistryError::InvalidId { id: to.to_owned() });
        }
        let since = now();
        self.write(|tx| {
            let now_current: Option<String> = tx
                .query_row(
                    "SELECT id FROM current_versions WHERE name = ?1",
                    [name],
                    |row| row.get(0),
                )
                .optional()?;
            if now_current.as_deref() != from {
                return Err(RegistryError::CurrentChanged {
                    name: name.to_owned(),
                    expected: from.map(ToOwned::to_owned),
                    found: now_current,
                });
            }
            if from == Some(to) {
                return Ok(Switched {
                    name: name.to_owned(),
                    from: from.map(ToOwned::to_owned),
                    to: to.to_owned(),
                    changed: false,
                });
            }
            tx.execute(
                "INSERT INTO current_versions (name, id, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET id = excluded.id, since = excluded.since",
                params![name, to, since],
            )?;
            let detail = match from {
                Some(from) => format!("current version of {name}: {from} → {to}"),
                None => format!("current version of {name}: {to} (it had none)"),
            };
            audit(tx, actor, "upgrade", Some(to), Some(&detail))?;
            Ok(Switched {
                name: name.to_owned(),
                from: from.map(ToOwned::to_owned),
                to: to.to_owned(),
                changed: true,
            })
        })
    }

    /// Records in the audit log that version `to` of `name` did not start, so it did
    /// not become current (or stopped being current: `restored` names the version
    /// current again).
    pub fn record_upgrade_failure(
        &mut self,
        to: &str,
        restored: Option<&str>,
        reason: &str,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let detail = match restored {
            Some(from) => format!("{to} did not start ({reason}); {from} stays current"),
            None => format!("{to} did not start ({reason})"),
        };
        self.write(|tx| audit(tx, actor, "upgrade-failed", Some(to), Some(&detail)))
    }

    /// Makes `entry`, just enabled, the current version of its name if the name has
    /// none yet (the `enable` in the audit log records it).
    pub(super) fn adopt_current(&mut self, entry: &Entry) -> Result<(), RegistryError> {
        let since = now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO current_versions (name, id, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![entry.manifest.name, entry.id, since],
            )?;
            Ok(())
        })
    }
}
