//! Versioned migrations: migration N brings `PRAGMA user_version` from N-1 to N.
//! Never edit a migration that has shipped; add a new one.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::RegistryError;

const MIGRATIONS: &[&str] = &[
    // 1: plugins with their review, the audit log, API keys.
    "CREATE TABLE plugins (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        manifest TEXT NOT NULL,
        library TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        plugin_dir TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),
        review_status TEXT NOT NULL DEFAULT 'pending'
            CHECK (review_status IN ('pending', 'approved', 'rejected')),
        reviewer TEXT,
        reviewed_at TEXT,
        reviewed_sha256 TEXT,
        granted TEXT,
        review_reason TEXT,
        config TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        CHECK (enabled = 0 OR review_status = 'approved')
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        plugin_id TEXT,
        detail TEXT
    );
    CREATE INDEX audit_by_plugin ON audit (plugin_id, seq);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;",
    // 2: the library store. `library` is the stored copy, `source` the file it was
    // registered from (NULL until an older entry's library is moved into the store).
    "ALTER TABLE plugins ADD COLUMN source TEXT;",
    // 3: where an approved plugin runs, as its reviewer decided (NULL: not approved,
    // or approved before isolation existed, which means a worker process).
    "ALTER TABLE plugins ADD COLUMN isolation TEXT
        CHECK (isolation IS NULL OR isolation IN ('thread', 'process'));",
    // 4: revisions. A rebuilt library registered for the same id (`update`) is the
    // entry's next revision, pending review again; `previous` keeps the revision it
    // replaced (its manifest, library digest and review, as JSON) for the reviewer.
    "ALTER TABLE plugins ADD COLUMN revision INTEGER NOT NULL DEFAULT 1 CHECK (revision >= 1);
     ALTER TABLE plugins ADD COLUMN previous TEXT;",
    // 5: signed reviews. One row per plugin: the attestation of its current approval
    // (`review_at` is the `reviewed_at` of the approval it belongs to; a row of an
    // earlier approval is stale and ignored), signed here or installed from `origin`.
    "CREATE TABLE attestations (
        plugin_id TEXT PRIMARY KEY,
        review_at TEXT NOT NULL,
        statement BLOB NOT NULL,
        signature TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        origin TEXT,
        created_at TEXT NOT NULL
    );",
    // 6: the current version of each plugin name (live upgrades): the version that
    // serves the name. A name whose one enabled version exists gets it.
    "CREATE TABLE current_versions (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE REFERENCES plugins (id) ON DELETE CASCADE,
        since TEXT NOT NULL
    );
    INSERT INTO current_versions (name, id, since)
        SELECT name, min(id), strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM plugins
        WHERE enabled = 1 GROUP BY name HAVING count(*) = 1;",
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], one migration per transaction.
pub fn migrate(connection: &mut Connection, path: &Path) -> Result<(), RegistryError> {
    let open_error = |source| RegistryError::Open {
        path: path.to_owned(),
        source,
    };
    loop {
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_error)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_error)?;
        if version > SCHEMA_VERSION {
            return Err(RegistryError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version as usize])
            .map_err(open_error)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(open_error)?;
        tx.commit().map_err(open_error)?;
    }
}
