//! The data store of a registry's home: what plugins write through `store_put`
//! (`write:data`) and read through `store_get` (`read:data`), kept in `store.db`,
//! a SQLite database of its own beside `registry.db`.
//!
//! # Served by the host, apart from the registry
//!
//! Host services run on the calling plugin's worker thread, which landlock and
//! seccomp confine, so the store cannot open its file there. A [`SqliteStore`]
//! owns one thread of the host (started by [`SqliteStore::open`], so from an
//! unconfined thread), which holds the database connection and answers the calls
//! over a channel. It opens the file at the first call that needs it, and never
//! creates it to answer a read: a run whose plugins do not use the store opens
//! nothing, and `plugbay store` on a home without one sees it empty.
//!
//! The registry database is never this file: `plugbay run` still closes the
//! registry before any plugin starts. A plugin on a worker *thread* can reach the
//! store's descriptor once it is open (as it can reach the host's memory, where an
//! in-memory store lives); one in a worker process reaches neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::services::{DataStore, StoreError};

/// The data store's file name inside a registry's home.
pub const STORE_FILE: &str = "store.db";

/// How long a writer waits for another to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// One key of the store, as [`SqliteStore::list`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredKey {
    /// The key.
    pub key: String,
    /// The value's size in bytes.
    pub size: u64,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

/// A value of the store and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The bytes.
    pub value: Vec<u8>,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

enum Request {
    Get(String, Sender<Result<Option<StoredValue>, StoreError>>),
    Put(String, Vec<u8>, Sender<Result<(), StoreError>>),
    Delete(String, Sender<Result<bool, StoreError>>),
    List(String, Sender<Result<Vec<StoredKey>, StoreError>>),
}

/// The persistent data store of a registry's home (`store.db`), served by a thread
/// of the host (see the module docs). Keys are shared by every plugin of the home;
/// a plugin namespaces its own (`dedup/stats`).
///
/// # Examples
///
/// ```no_run
/// use plugbay_host::registry::SqliteStore;
/// use plugbay_host::Host;
///
/// let store = SqliteStore::open("/srv/plugbay")?;
/// let host = Host::new().with_store(store.clone());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SqliteStore {
    requests: Sender<Request>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The store of the registry home `home` (`home/store.db`), served by a thread
    /// this call starts; the file is opened at the first call that needs it.
    pub fn open(home: impl AsRef<Path>) -> Result<std::sync::Arc<SqliteStore>, StoreError> {
        let path = home.as_ref().join(STORE_FILE);
        let (requests, incoming) = bounded::<Request>(16);
        let served = path.clone();
        std::thread::Builder::new()
            .name("plugbay-store".to_owned())
            .spawn(move || {
                let mut database = Database {
                    path: served,
                    connection: None,
                };
                for request in incoming {
                    database.answer(request);
                }
            })
            .map_err(|err| {
                StoreError::new(format!(
                    "cannot start the data store thread for {}: {err}",
                    path.display()
                ))
            })?;
        Ok(std::sync::Arc::new(SqliteStore { requests, path }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ask<T>(
        &self,
        request: impl FnOnce(Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = bounded(1);
        let gone = || {
            StoreError::new(format!(
                "the data store thread for {} has stopped",
                self.path.display()
            ))
        };
        self.requests.send(request(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// The value under `key` and when it was written.
    pub fn get_with_time(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        self.ask(|reply| Request::Get(key.to_owned(), reply))
    }

    /// Every key that starts with `prefix`, in order.
    pub fn list(&self, prefix: &str) -> Result<Vec<StoredKey>, StoreError> {
        self.ask(|reply| Request::List(prefix.to_owned(), reply))
    }
}

impl DataStore for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_with_time(key)?.map(|stored| stored.value))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.ask(|reply| Request::Put(key.to_owned(), value.to_vec(), reply))
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.ask(|reply| Request::Delete(key.to_owned(), reply))
    }
}

/// The store thread's side: the connection, opened when first needed.
struct Database {
    path: PathBuf,
    connection: Option<Connection>,
}

impl Database {
    fn answer(&mut self, request: Request) {
        // A caller that gave up (its plugin was stopped) no longer waits for the answer.
        match request {
            Request::Get(key, reply) => {
                let _ = reply.send(self.get(&key));
            }
            Request::Put(key, value, reply) => {
                let _ = reply.send(self.put(&key, &value));
            }
            Request::Delete(key, reply) => {
                let _ = reply.send(self.delete(&key));
            }
            Request::List(prefix, reply) => {
                let _ = reply.send(self.list(&prefix));
            }
        }
    }

    fn error(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::new(format!(
            "cannot {what} the data store {}: {err}",
            self.path.display()
        ))
    }

    /// The connection, opening (and with `create`, creating) the database; `None`
    /// when there is no database and `create` is false.
    fn connection(&mut self, create: bool) -> Result<Option<&Connection>, StoreError> {
        if self.connection.is_none() {
            if !create && !self.path.exists() {
                return Ok(None);
            }
            if let Some(home) = self.path.parent() {
                std::fs::create_dir_all(home)
                    .map_err(|err| self.error("create the folder of", err))?;
            }
            let connection = Connection::open(&self.path).map_err(|err| self.error("open", err))?;
            let setup = || -> rusqlite::Result<()> {
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection.execute_batch(
                    "CREATE TABLE IF NOT EXISTS entries (
                        key TEXT PRIMARY KEY,
                        value BLOB NOT NULL,
                        updated_at TEXT NOT NULL
                    );",
                )
            };
            setup().map_err(|err| self.error("set up", err))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_ref())
    }

    fn get(&mut self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let Some(connection) = self.connection(false)? else {
            return Ok(None);
        };
        connection
            .query_row(
                "SELECT value, updated_at FROM entries WHERE key = ?1",
                [key],
                |row| {
                    Ok(StoredValue {
                        value: row.get(0)?,
                        updated_at: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|err| self.error("read", err))
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let now = super::now();
        let connection = self.connection(true)?.expect("created");
        connection
            .execute(
                "INSERT INTO entries (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, value, now],
            )
            .map(drop)
            .map_err(|err| self.error("write", err))
    }

    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let Some(connection) = self.connection(false)? else {
            return Ok(false);
        };
        connection
            .execute("DELETE FROM entries WHERE key = ?1", [key])
            .map(|deleted| deleted > 0)
            .map_err(|err| self.error("write", err))
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<StoredKey>, StoreError> {
        let Some(connection) = self.connection(false)? else {
            return Ok(Vec::new());
        };
        let listed = (|| -> rusqlite::Result<Vec<StoredKey>> {
            let mut statement = connection.prepare(
                "SELECT key, length(value), updated_at FROM entries
                 WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let rows = statement.query_map([prefix], |row| {
                Ok(StoredKey {
                    key: row.get(0)?,
                    size: row.get(1)?,
                    updated_at: row.get(2)?,
                })
            })?;
            rows.collect()
        })();
        listed.map_err(|err| self.error("read", err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_across_stores_and_reads_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let store = SqliteStore::open(&home).unwrap();
        assert_eq!(store.get("dedup/stats").unwrap(), None);
        assert!(!store.delete("dedup/stats").unwrap());
        assert!(store.list("").unwrap().is_empty());
        assert!(!home.join(STORE_FILE).exists(), "a read creates no file");

        store.put("dedup/stats", br#"{"kept": 9}"#).unwrap();
        store.put("dedup/other", b"x").unwrap();
        store.put("enricher/x", b"").unwrap();
        store.put("dedup/stats", br#"{"kept": 10}"#).unwrap();
        drop(store);

        let again = SqliteStore::open(&home).unwrap();
        assert_eq!(
            again.get("dedup/stats").unwrap().as_deref(),
            Some(&br#"{"kept": 10}"#[..])
        );
        let keys: Vec<(String, u64)> = again
            .list("dedup/")
            .unwrap()
            .into_iter()
            .map(|stored| (stored.key, stored.size))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedup/other".to_owned(), 1),
                ("dedup/stats".to_owned(), 12)
            ]
        );
        assert!(again.delete("dedup/other").unwrap());
        assert_eq!(again.list("").unwrap().len(), 2);
        assert_eq!(again.get("enricher/x").unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_store_that_cannot_be_written_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, "").unwrap();
        let store = SqliteStore::open(&file).unwrap();
        let err = store.put("k", b"v").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot create the folder of the data store {}",
                file.join(STORE_FILE).display()
            )),
            "{err}"
        );
    }
}
