//! The local registry: plugins, their security review, their state, an audit log of
//! every change, and API keys, in one SQLite database.
//!
//! Every change runs in an immediate transaction with a busy timeout, so several CLI
//! processes and a server on the same registry at once lose nothing and corrupt
//! nothing. Schema changes are versioned migrations (`PRAGMA user_version`).
//!
//! The lifecycle: [`register`](Registry::register) (the library is copied into the
//! home's content-addressed store, `libraries/<sha256>/<file name>`, read-only, and
//! that copy is inspected on a confined thread, or in a worker process when the
//! host isolates plugins in processes; the entry is `pending`) →
//! [`approve`](Registry::approve) or [`reject`](Registry::reject) →
//! [`enable`](Registry::enable) (approved only) → [`spec`](Registry::spec) to run it
//! (the load reads the stored library once, checks that its SHA-256 is the one
//! approved, and loads those same bytes) → [`disable`](Registry::disable) →
//! [`unregister`](Registry::unregister).
//!
//! The store decouples an entry from the file it was registered from: rebuilding a
//! plugin in its `target/` folder changes nothing registered (register the rebuilt
//! library to review it), and swapping that file, even while plugins start, never
//! gets unreviewed code loaded.

#[cfg(feature = "market")]
mod attested;
mod current;
mod keys;
mod schema;
mod store;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use plugbay_api::manifest::{Manifest, Permission};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(feature = "market")]
pub use attested::{AttestError, StoredAttestation};
pub use current::{is_name, CurrentVersion, Switched};
pub use keys::{ApiKey, AuthError, Scope, SCOPES};
pub use store::{SqliteStore, StoredKey, StoredValue, STORE_FILE};

use crate::image::hex;
use crate::isolation::Isolation;
use crate::loader::{self, ManifestDifference};
use crate::runtime::{Host, ManifestFileError, PluginSpec, StartError};
use crate::sandbox::Policy;

/// How long a writer waits for another to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry's file name inside its home.
pub const DATABASE_FILE: &str = "registry.db";

/// The folder inside the home that holds registered libraries by SHA-256.
pub const LIBRARIES_DIR: &str = "libraries";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The home folder could not be created.
    #[error("cannot create registry home {path}: {source}")]
    Home {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open registry {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// There is no registry in the home (a lookup does not create one).
    #[error("no registry in {} (it has no {DATABASE_FILE}); `plugbay register` creates one there, or give another home with `--home DIR` or `PLUGBAY_HOME`", home.display())]
    NoRegistry {
        /// The home.
        home: PathBuf,
    },
    /// The database was written by a newer Plugbay.
    #[error("registry {path} has schema version {found}, newer than this plugbay understands ({supported}); upgrade plugbay")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A database operation failed.
    #[error("registry database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The id is not of the form `name@version`.
    #[error("invalid plugin id `{id}`: {}; ids look like `name@version`, e.g. `data-processor@1.0.0`", id_problem(id).unwrap_or_default())]
    InvalidId {
        /// The id given.
        id: String,
    },
    /// A bare name with several registered versions, none of them the one enabled.
    #[error(
        "plugin name `{name}` is ambiguous: {}; give the id (`name@version`) of the one you mean",
        describe_versions(versions)
    )]
    Ambiguous {
        /// The name given.
        name: String,
        /// Every registered id with that name, and whether it is enabled.
        versions: Vec<(String, bool)>,
    },
    /// No plugin has this id.
    #[error("no plugin `{id}` in the registry; `plugbay list` shows the registered ids")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The id is already registered.
    #[error("plugin `{id}` is already registered; to register a rebuild of it as its next revision (reviewed again), add `--update`, or bump its version")]
    Conflict {
        /// The id.
        id: String,
    },
    /// The plugin is not approved.
    #[error("plugin `{id}` is {status}, not approved; review it first with `plugbay review approve {id}`")]
    NotApproved {
        /// The id.
        id: String,
        /// Its review status.
        status: ReviewStatus,
    },
    /// The plugin is disabled.
    #[error("plugin `{id}` is disabled; enable it with `plugbay enable {id}`")]
    Disabled {
        /// The id.
        id: String,
    },
    /// The library's SHA-256 differs from the one that was registered or approved.
    #[error("library {path} of plugin `{id}` changed since {since} (sha256 {expected} then, {actual} now); it will not be loaded; unregister, register and review it again")]
    LibraryChanged {
        /// The id.
        id: String,
        /// The library.
        path: PathBuf,
        /// `registration` or `review`.
        since: &'static str,
        /// The recorded hash.
        expected: String,
        /// The hash now.
        actual: String,
    },
    /// A grant that the manifest does not request.
    #[error("cannot grant `{permission}` to `{id}`: its manifest does not request it (it requests {requested})")]
    NotRequested {
        /// The id.
        id: String,
        /// The permission.
        permission: String,
        /// What the manifest requests.
        requested: String,
    },
    /// An approval that withholds `process:data` from a plugin with a `process` hook.
    #[error("cannot approve `{id}` without `process:data`: it declares the `process` hook, and without `process:data` it could never receive a batch; grant `process:data` too, or reject the plugin")]
    ProcessDataWithheld {
        /// The id.
        id: String,
    },
    /// A rejection needs a reason.
    #[error("rejecting `{id}` needs a reason (`--reason TEXT`)")]
    NoReason {
        /// The id.
        id: String,
    },
    /// The manifest given differs from the one built into the library.
    #[error("the manifest given for `{id}` differs from the one built into library {library}: {}; register the manifest the library was built with (`plugbay inspect {library}` shows it), or rebuild the plugin", join_differences(differences))]
    ManifestDiffers {
        /// The plugin id.
        id: String,
        /// The library.
        library: PathBuf,
        /// Every field that differs.
        differences: Vec<ManifestDifference>,
    },
    /// The library could not be copied into the registry's store.
    #[error("cannot store library {path} in the registry's library store {store}: {source}")]
    Store {
        /// The library.
        path: PathBuf,
        /// The store folder.
        store: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The library could not be read for hashing.
    #[error("cannot read library {path}: {source}")]
    Library {
        /// The library.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest file could not be used.
    #[error(transparent)]
    Manifest(#[from] ManifestFileError),
    /// The library failed inspection (it would not load).
    #[error(transparent)]
    Inspect(#[from] StartError),
    /// An API key operation failed.
    #[error(transparent)]
    Key(#[from] AuthError),
    /// A plugin name is not `[a-z0-9-]+`.
    #[error("invalid plugin name `{name}`; names are lowercase letters, digits and `-`, e.g. `data-processor`")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A plugin name has no current version.
    #[error("plugin name `{name}` has no current version{}; `plugbay upgrade {name}@VERSION` makes an approved, enabled version current", if versions.is_empty() { " (no version of it is registered)".to_owned() } else { format!(" (registered: {})", versions.join(", ")) })]
    NoCurrentVersion {
        /// The name.
        name: String,
        /// Its registered versions' ids.
        versions: Vec<String>,
    },
    /// Another upgrade of the name changed its current version meanwhile.
    #[error("the current version of `{name}` changed meanwhile (expected {}, found {}); look again and retry", expected.as_deref().unwrap_or("none"), found.as_deref().unwrap_or("none"))]
    CurrentChanged {
        /// The name.
        name: String,
        /// The version expected to be current.
        expected: Option<String>,
        /// The version that is.
        found: Option<String>,
    },
}

/// Where a plugin is in its security review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Registered, not reviewed yet.
    Pending,
    /// Approved: may be enabled.
    Approved,
    /// Rejected: may not be enabled.
    Rejected,
}

impl ReviewStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ReviewStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReviewStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pending" => Ok(ReviewStatus::Pending),
            "approved" => Ok(ReviewStatus::Approved),
            "rejected" => Ok(ReviewStatus::Rejected),
            other => Err(format!("unknown review status `{other}`")),
        }
    }
}

/// A plugin's security review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    /// Pending, approved or rejected.
    pub status: ReviewStatus,
    /// Who reviewed it.
    pub reviewer: Option<String>,
    /// When (RFC 3339).
    pub reviewed_at: Option<String>,
    /// The library's SHA-256 when it was approved.
    pub reviewed_sha256: Option<String>,
    /// What was granted (approved plugins).
    pub granted: Vec<Permission>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Where the reviewer decided it runs (approved plugins): a worker thread, for
    /// trusted plugins, or a worker process of its own.
    pub isolation: Option<Isolation>,
}

fn describe_versions(versions: &[(String, bool)]) -> String {
    let enabled = versions.iter().filter(|(_, enabled)| *enabled).count();
    let ids = versions
        .iter()
        .map(|(id, enabled)| {
            if *enabled {
                format!("{id} (enabled)")
            } else {
                id.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    match enabled {
        0 => format!(
            "{} versions are registered ({ids}) and none is enabled",
            versions.len()
        ),
        _ => format!(
            "{} versions are registered ({ids}) and {enabled} of them are enabled",
            versions.len()
        ),
    }
}

fn join_differences(differences: &[ManifestDifference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A registered plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// `name@version`.
    pub id: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The library: its read-only copy in the registry's store
    /// (`libraries/<sha256>/<file name>` in the home).
    pub library: PathBuf,
    /// The file the library was registered from (`None` for entries older than the
    /// store whose file was gone or changed when the store was made).
    pub source: Option<PathBuf>,
    /// The library's SHA-256 at registration.
    pub sha256: String,
    /// `${plugin_dir}`: where the manifest was.
    pub plugin_dir: PathBuf,
    /// Whether it may run.
    pub enabled: bool,
    /// Its review.
    pub review: Review,
    /// Config passed to `init` (the manifest's defaults if not set).
    pub config: Option<serde_json::Value>,
    /// When it was registered (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Its revision: 1 at registration, one more for each rebuilt library registered
    /// for the same id ([`Registry::update`]).
    pub revision: u32,
    /// The revision this one replaced, for its reviewer to compare; `None` for the
    /// first.
    pub previous: Option<PreviousRevision>,
    /// Whether it is the current version of its name, the one a bare name and live
    /// upgrades refer to ([`Registry::current`]).
    pub current: bool,
}

/// What an entry was before a rebuilt library replaced it ([`Registry::update`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousRevision {
    /// Its revision number.
    pub revision: u32,
    /// Its library's SHA-256.
    pub sha256: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its review, as it stood when it was replaced.
    pub review: Review,
    /// When it was replaced (RFC 3339).
    pub replaced_at: String,
}

/// What changed from an entry's previous revision to it: what its reviewer looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RevisionChanges {
    /// The library's SHA-256 before and now, when it changed.
    pub library: Option<(String, String)>,
    /// Permissions the manifest requests now and did not before.
    pub added: Vec<Permission>,
    /// Permissions the manifest no longer requests.
    pub removed: Vec<Permission>,
    /// Every other manifest field that changed (`built_in` is the previous value).
    pub fields: Vec<ManifestDifference>,
}

impl Entry {
    /// What changed since the previous revision, if there is one.
    pub fn changes(&self) -> Option<RevisionChanges> {
        let previous = self.previous.as_ref()?;
        let library = (previous.sha256 != self.sha256)
            .then(|| (previous.sha256.clone(), self.sha256.clone()));
        let before = &previous.manifest.permissions;
        let now = &self.manifest.permissions;
        Some(RevisionChanges {
            library,
            added: now
                .iter()
                .filter(|p| !before.contains(p))
                .cloned()
                .collect(),
            removed: before
                .iter()
                .filter(|p| !now.contains(p))
                .cloned()
                .collect(),
            fields: loader::manifest_differences(&previous.manifest, &self.manifest)
                .into_iter()
                .filter(|difference| difference.field != "permissions")
                .collect(),
        })
    }
}

/// What [`Registry::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The id was not registered: it is now, as by [`Registry::register`].
    Registered,
    /// The library and the manifest are the ones registered: nothing changed.
    Unchanged,
    /// The entry is its next revision, pending review.
    Revised,
}

/// One change in the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Order of events.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Who.
    pub actor: String,
    /// What (`register`, `approve`, …).
    pub action: String,
    /// Which plugin, if any.
    pub plugin_id: Option<String>,
    /// Details.
    pub detail: Option<String>,
}

/// What to register: a manifest and the library it describes.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The manifest.
    pub manifest: Manifest,
    /// The library.
    pub library: PathBuf,
    /// `${plugin_dir}` (the manifest's folder).
    pub plugin_dir: PathBuf,
}

impl Registration {
    /// From a `plugin.json` (or a folder holding one). The library is `library` if
    /// given, else `main` resolved in the manifest's folder.
    pub fn from_path(path: &Path, library: Option<&Path>) -> Result<Registration, RegistryError> {
        let manifest_path = if path.is_dir() {
            path.join("plugin.json")
        } else {
            path.to_owned()
        };
        let spec = PluginSpec::from_manifest_file(&manifest_path)?;
        Ok(Registration {
            library: library.map(Path::to_owned).unwrap_or(spec.library),
            manifest: spec.manifest,
            plugin_dir: spec.plugin_dir,
        })
    }
}

/// A handle to a registry database.
pub struct Registry {
    connection: Connection,
    path: PathBuf,
    home: PathBuf,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How long to wait before trying again a statement SQLite refused as locked.
const LOCKED_PAUSE: Duration = Duration::from_millis(10);

/// Whether SQLite refused a statement because another connection holds a lock.
fn is_locked(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
}

/// Runs `step` again while SQLite refuses it as locked, up to [`BUSY_TIMEOUT`]: for
/// the statements SQLite does not wait on with its busy handler.
fn retry_while_locked<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let started = Instant::now();
    loop {
        match step() {
            Err(err) if is_locked(&err) && started.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(LOCKED_PAUSE);
            }
            result => return result,
        }
    }
}

/// The current time, RFC 3339 in UTC with milliseconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub use crate::image::sha256_file;

/// What is wrong with a plugin id, if anything: its name must be a manifest's name,
/// its version a semantic version.
pub fn id_problem(id: &str) -> Option<String> {
    let Some((name, version)) = id.rsplit_once('@') else {
        return Some(match crate::manifest::validate_name(id) {
            Err(message) => format!("the name {message}"),
            Ok(()) => "it has no `@version`".to_owned(),
        });
    };
    if let Err(message) = crate::manifest::validate_name(name) {
        return Some(format!("the name {message}"));
    }
    match semver::Version::parse(version) {
        Ok(_) => None,
        Err(err) => Some(format!(
            "the version `{version}` is not a semantic version ({err})"
        )),
    }
}

fn check_id(id: &str) -> Result<(), RegistryError> {
    match id_problem(id) {
        None => Ok(()),
        Some(_) => Err(RegistryError::InvalidId { id: id.to_owned() }),
    }
}

impl Registry {
    /// Opens (and migrates if needed) the registry in `home` if there is one;
    /// [`RegistryError::NoRegistry`] if not. For lookups, which must not leave a new
    /// registry behind where none was (a mistyped `--home`, a machine with no
    /// registry yet).
    pub fn open_existing(home: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        let home = home.as_ref();
        if !home.join(DATABASE_FILE).is_file() {
            return Err(RegistryError::NoRegistry {
                home: home.to_owned(),
            });
        }
        Registry::open(home)
    }

    /// Opens (creating and migrating if needed) the registry in `home`.
    pub fn open(home: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        let home = home.as_ref();
        std::fs::create_dir_all(home).map_err(|source| RegistryError::Home {
            path: home.to_owned(),
            source,
        })?;
        let path = home.join(DATABASE_FILE);
        let open_error = |source| RegistryError::Open {
            path: path.clone(),
            source,
        };
        let mut connection = Connection::open(&path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // Switching a new database to WAL takes an exclusive lock, and SQLite answers
        // "database is locked" at once (no busy handler) when another process holds
        // one while it creates the same database: wait for it here.
        retry_while_locked(|| connection.pragma_update(None, "journal_mode", "WAL"))
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        let started = Instant::now();
        loop {
            match schema::migrate(&mut connection, &path) {
                Err(RegistryError::Open { source, .. })
                    if is_locked(&source) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(LOCKED_PAUSE);
                }
                result => break result?,
            }
        }
        let mut registry = Registry {
            connection,
            path,
            home: home.to_owned(),
        };
        registry.adopt_libraries()?;
        Ok(registry)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry's home folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where plugins of this registry keep their `${data_dir}`.
    pub fn data_dir(&self) -> PathBuf {
        self.home.join("data")
    }

    /// The data store of this registry's home (`store.db`), for a host to give its
    /// plugins ([`Host::with_store`](crate::Host::with_store)); see [`SqliteStore`].
    pub fn store(&self) -> Result<std::sync::Arc<SqliteStore>, crate::StoreError> {
        SqliteStore::open(&self.home)
    }

    /// Runs `body` in an immediate transaction (waiting out other writers up to the
    /// busy timeout) and commits it.
    pub(crate) fn write<T>(
        &mut self,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = body(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Registers a plugin: copies the library into the store (read once, hashed as
    /// it is copied), inspects that copy on a confined thread (as loading does),
    /// checks that the manifest built into it is the one given, field by field, and
    /// leaves the entry pending review.
    pub fn register(
        &mut self,
        host: &Host,
        registration: Registration,
        actor: &str,
    ) -> Result<Entry, RegistryError> {
        let Registration {
            manifest,
            library: source,
            plugin_dir,
        } = registration;
        let source = std::path::absolute(&source).unwrap_or(source);
        let plugin_dir = std::path::absolute(&plugin_dir).unwrap_or(plugin_dir);
        let id = manifest.id();
        if self.find(&id)?.is_some() {
            return Err(RegistryError::Conflict { id });
        }
        let (library, sha256) = self.checked_copy(host, &manifest, &source)?;
        let now = now();
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO plugins (id, name, version, manifest, library, source, sha256, plugin_dir, config, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    id,
                    manifest.name,
                    manifest.version.to_string(),
                    manifest.to_json(),
                    library.to_string_lossy(),
                    source.to_string_lossy(),
                    sha256,
                    plugin_dir.to_string_lossy(),
                    manifest.config.as_ref().map(|c| c.to_string()),
                    now,
                ],
            )?;
            if inserted == 0 {
                return Err(RegistryError::Conflict { id: id.clone() });
            }
            audit(tx, actor, "register", Some(&id), Some(&format!("library {} sha256 {sha256}", source.display())))
        })?;
        self.get(&id)
    }

    /// Registers a rebuilt plugin under the id it already has: its library (copied
    /// and inspected as [`register`](Registry::register) does) and manifest become
    /// the entry's next revision, which is pending review and disabled. An approval
    /// never carries over to other code. The revision it replaces is kept in
    /// [`Entry::previous`], so that the reviewer sees what changed
    /// ([`Entry::changes`]); the config set for it is kept too, unless it was the
    /// old manifest's default (then it is the new one's).
    ///
    /// An id not registered yet is registered; the same library and manifest again
    /// change nothing.
    pub fn update(
        &mut self,
        host: &Host,
        registration: Registration,
        actor: &str,
    ) -> Result<(Entry, Update), RegistryError> {
        let id = registration.manifest.id();
        let Some(old) = self.find(&id)? else {
            return Ok((
                self.register(host, registration, actor)?,
                Update::Registered,
            ));
        };
        let Registration {
            manifest,
            library: source,
            plugin_dir,
        } = registration;
        let source = std::path::absolute(&source).unwrap_or(source);
        let plugin_dir = std::path::absolute(&plugin_dir).unwrap_or(plugin_dir);
        let (library, sha256) = self.checked_copy(host, &manifest, &source)?;
        if sha256 == old.sha256 && manifest == old.manifest && plugin_dir == old.plugin_dir {
            return Ok((old, Update::Unchanged));
        }
        let config = if old.config == old.manifest.config {
            manifest.config.clone()
        } else {
            old.config.clone()
        };
        let now = now();
        let previous = PreviousRevision {
            revision: old.revision,
            sha256: old.sha256.clone(),
            manifest: old.manifest.clone(),
            review: old.review.clone(),
            replaced_at: now.clone(),
        };
        let previous_json = serde_json::to_string(&previous).expect("a revision serializes");
        let revision = old.revision + 1;
        let mut detail = format!(
            "revision {revision}: library {} sha256 {sha256} (was {}); pending review again",
            source.display(),
            old.sha256
        );
        let written = self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET manifest = ?2, library = ?3, source = ?4, sha256 = ?5,
                 plugin_dir = ?6, config = ?7, enabled = 0, review_status = 'pending',
                 reviewer = NULL, reviewed_at = NULL, reviewed_sha256 = NULL, granted = NULL,
                 review_reason = NULL, isolation = NULL, revision = ?8, previous = ?9,
                 updated_at = ?10
                 WHERE id = ?1 AND revision = ?11",
                params![
                    id,
                    manifest.to_json(),
                    library.to_string_lossy(),
                    source.to_string_lossy(),
                    sha256,
                    plugin_dir.to_string_lossy(),
                    config.as_ref().map(|c| c.to_string()),
                    revision,
                    previous_json,
                    now,
                    old.revision,
                ],
            )?;
            if changed == 0 {
                return Err(RegistryError::Conflict { id: id.clone() });
            }
            let changes = loader::manifest_differences(&old.manifest, &manifest);
            if !changes.is_empty() {
                detail.push_str("; manifest changed: ");
                detail.push_str(
                    &changes
                        .iter()
                        .map(|change| {
                            format!("`{}` {} → {}", change.field, change.built_in, change.given)
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            audit(tx, actor, "update", Some(&id), Some(&detail))
        });
        if let Err(err) = written {
            self.release_library(&library)?;
            return Err(err);
        }
        self.release_library(&old.library)?;
        Ok((self.get(&id)?, Update::Revised))
    }

    /// Copies the library at `source` into the store, inspects the copy on a confined
    /// thread (as loading does) and checks that the manifest built into it is
    /// `manifest`, field by field. Returns the stored copy and its SHA-256; on an
    /// error the copy is released again.
    fn checked_copy(
        &self,
        host: &Host,
        manifest: &Manifest,
        source: &Path,
    ) -> Result<(PathBuf, String), RegistryError> {
        let (library, sha256) = self.store_library(source)?;
        let checked = host
            .inspect_copy(&library, &sha256, source)
            .map_err(RegistryError::from)
            .and_then(|inspection| {
                let differences = loader::manifest_differences(&inspection.manifest, manifest);
                if differences.is_empty() {
                    Ok(())
                } else {
                    Err(RegistryError::ManifestDiffers {
                        id: manifest.id(),
                        library: source.to_owned(),
                        differences,
                    })
                }
            });
        if let Err(err) = checked {
            self.release_library(&library)?;
            return Err(err);
        }
        Ok((library, sha256))
    }

    /// The folder of the library store.
    pub fn libraries_dir(&self) -> PathBuf {
        self.home.join(LIBRARIES_DIR)
    }

    /// Copies the library at `source` into the store, reading it once through one
    /// descriptor and hashing what it copies: `libraries/<sha256>/<file name>`,
    /// read-only, folder included. Returns the stored path and the SHA-256.
    fn store_library(&self, source: &Path) -> Result<(PathBuf, String), RegistryError> {
        let store = self.libraries_dir();
        let store_error = |source_path: &Path| {
            let store = store.clone();
            let path = source_path.to_owned();
            move |source| RegistryError::Store {
                path: path.clone(),
                store: store.clone(),
                source,
            }
        };
        // Only a regular file is copied: `/dev/zero` would be copied until the disk
        // is full, and a named pipe would block the open.
        match std::fs::metadata(source) {
            Ok(metadata) if !metadata.is_file() => {
                return Err(RegistryError::Inspect(StartError::Load(
                    loader::LoadError::not_a_file(source, metadata.file_type()),
                )))
            }
            _ => {}
        }
        let mut input = std::fs::File::open(source).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                RegistryError::Inspect(StartError::Load(loader::LoadError::NotFound {
                    path: source.to_owned(),
                }))
            } else {
                RegistryError::Library {
                    path: source.to_owned(),
                    source: err,
                }
            }
        })?;
        std::fs::create_dir_all(&store).map_err(store_error(source))?;
        let mut incoming = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&store)
            .map_err(store_error(source))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 16];
        loop {
            let read = std::io::Read::read(&mut input, &mut buffer).map_err(|err| {
                RegistryError::Library {
                    path: source.to_owned(),
                    source: err,
                }
            })?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            std::io::Write::write_all(&mut incoming, &buffer[..read])
                .map_err(store_error(source))?;
        }
        let sha256 = hex(&hasher.finalize());
        let file_name = source
            .file_name()
            .map(|name| name.to_owned())
            .unwrap_or_else(|| "library".into());
        let folder = store.join(&sha256);
        let stored = folder.join(&file_name);
        if stored.is_file() && sha256_file(&stored).ok().as_deref() == Some(sha256.as_str()) {
            return Ok((stored, sha256));
        }
        set_mode(&folder, 0o755).ok();
        std::fs::create_dir_all(&folder).map_err(store_error(source))?;
        incoming.as_file().sync_all().map_err(store_error(source))?;
        set_mode(incoming.path(), 0o444).map_err(store_error(source))?;
        incoming
            .persist(&stored)
            .map_err(|err| store_error(source)(err.error))?;
        set_mode(&folder, 0o555).map_err(store_error(source))?;
        Ok((stored, sha256))
    }

    /// Removes a stored library from the store if no entry uses it.
    fn release_library(&self, library: &Path) -> Result<(), RegistryError> {
        let store = self.libraries_dir();
        let Some(folder) = library.parent() else {
            return Ok(());
        };
        if folder.parent() != Some(store.as_path()) {
            return Ok(());
        }
        let users: i64 = self.connection.query_row(
            "SELECT count(*) FROM plugins WHERE library = ?1",
            [library.to_string_lossy()],
            |row| row.get(0),
        )?;
        if users > 0 {
            return Ok(());
        }
        let removed = set_mode(folder, 0o755).and_then(|()| std::fs::remove_dir_all(folder));
        match removed {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(folder = %folder.display(), error = %err, "cannot remove an unused library from the store");
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves the libraries of entries registered before the store existed into it,
    /// when the file still has the SHA-256 recorded at registration.
    fn adopt_libraries(&mut self) -> Result<(), RegistryError> {
        let store = self.libraries_dir();
        let outside: Vec<(String, PathBuf, String)> = {
            let mut statement = self
                .connection
                .prepare("SELECT id, library, sha256 FROM plugins WHERE source IS NULL")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    PathBuf::from(row.get::<_, String>(1)?),
                    row.get::<_, String>(2)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, library, sha256) in outside {
            if library.starts_with(&store) {
                continue;
            }
            if sha256_file(&library).ok().as_deref() != Some(sha256.as_str()) {
                tracing::warn!(plugin = %id, library = %library.display(), "the library changed or is gone since registration; it stays outside the store and will not load");
                continue;
            }
            let (stored, stored_sha256) = match self.store_library(&library) {
                Ok(stored) => stored,
                Err(err) => {
                    tracing::warn!(plugin = %id, error = %err, "cannot move the library into the store");
                    continue;
                }
            };
            if stored_sha256 != sha256 {
                continue;
            }
            self.write(|tx| {
                tx.execute(
                    "UPDATE plugins SET library = ?2, source = ?3 WHERE id = ?1 AND source IS NULL",
                    params![id, stored.to_string_lossy(), library.to_string_lossy()],
                )?;
                audit(
                    tx,
                    "plugbay",
                    "store",
                    Some(&id),
                    Some(&format!(
                        "library {} copied into the store",
                        library.display()
                    )),
                )
            })?;
        }
        Ok(())
    }

    /// Every registered plugin, by id.
    pub fn list(&self) -> Result<Vec<Entry>, RegistryError> {
        let mut statement = self
            .connection
            .prepare(&format!("{SELECT_ENTRY} ORDER BY id"))?;
        let rows = statement.query_map([], row_to_entry)?;
        rows.map(|row| row?.map_err(RegistryError::from))
            .collect::<Result<Vec<_>, _>>()
    }

    fn find(&self, id: &str) -> Result<Option<Entry>, RegistryError> {
        self.connection
            .query_row(&format!("{SELECT_ENTRY} WHERE id = ?1"), [id], row_to_entry)
            .optional()?
            .transpose()
            .map_err(RegistryError::from)
    }

    /// The id a plugin is named by: an id (`name@version`) as it is, or a bare name
    /// (`data-processor`) resolved to its one registered version, else to its current
    /// version if that is enabled ([`current`](Registry::current): the one live
    /// upgrades switch), else to its one enabled version. A name with several versions, none current and not
    /// exactly one enabled is [`RegistryError::Ambiguous`], listing them; an unknown
    /// name is [`RegistryError::NotFound`].
    pub fn resolve(&self, name_or_id: &str) -> Result<String, RegistryError> {
        if name_or_id.contains('@') {
            check_id(name_or_id)?;
            return Ok(name_or_id.to_owned());
        }
        if crate::manifest::validate_name(name_or_id).is_err() {
            return Err(RegistryError::InvalidId {
                id: name_or_id.to_owned(),
            });
        }
        let mut versions: Vec<(String, bool, semver::Version)> = {
            let mut statement = self
                .connection
                .prepare("SELECT id, enabled, version FROM plugins WHERE name = ?1")?;
            let rows = statement.query_map([name_or_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            rows.map(|row| {
                row.map(|(id, enabled, version)| {
                    let version = semver::Version::parse(&version)
                        .unwrap_or_else(|_| semver::Version::new(0, 0, 0));
                    (id, enabled, version)
                })
            })
            .collect::<Result<_, _>>()?
        };
        versions.sort_by(|a, b| a.2.cmp(&b.2));
        if versions.len() > 1 {
            if let Some(current) = self.enabled_current(name_or_id)? {
                return Ok(current);
            }
        }
        let enabled: Vec<&String> = versions
            .iter()
            .filter(|(_, enabled, _)| *enabled)
            .map(|(id, _, _)| id)
            .collect();
        match (versions.len(), enabled.as_slice()) {
            (0, _) => Err(RegistryError::NotFound {
                id: name_or_id.to_owned(),
            }),
            (1, _) => Ok(versions.remove(0).0),
            (_, [one]) => Ok((*one).clone()),
            _ => Err(RegistryError::Ambiguous {
                name: name_or_id.to_owned(),
                versions: versions
                    .into_iter()
                    .map(|(id, enabled, _)| (id, enabled))
                    .collect(),
            }),
        }
    }

    /// One plugin.
    pub fn get(&self, id: &str) -> Result<Entry, RegistryError> {
        check_id(id)?;
        self.find(id)?
            .ok_or_else(|| RegistryError::NotFound { id: id.to_owned() })
    }

    /// Approves a plugin after review, granting `grants` (every requested permission
    /// if `None`), to run in a worker process of its own. See
    /// [`approve_with_isolation`](Registry::approve_with_isolation).
    pub fn approve(
        &mut self,
        id: &str,
        reviewer: &str,
        grants: Option<Vec<Permission>>,
    ) -> Result<Entry, RegistryError> {
        self.approve_with_isolation(id, reviewer, grants, Isolation::Process)
    }

    /// Approves a plugin after review, granting `grants` (every requested permission
    /// if `None`), to run with `isolation`. Records the reviewer, the time and the
    /// library's SHA-256, which must still be the one registered.
    pub fn approve_with_isolation(
        &mut self,
        id: &str,
        reviewer: &str,
        grants: Option<Vec<Permission>>,
        isolation: Isolation,
    ) -> Result<Entry, RegistryError> {
        let entry = self.get(id)?;
        let requested = &entry.manifest.permissions;
        let granted = match grants {
            None => requested.clone(),
            Some(grants) => {
                if let Some(extra) = grants.iter().find(|grant| !requested.contains(grant)) {
                    return Err(RegistryError::NotRequested {
                        id: id.to_owned(),
                        permission: extra.to_string(),
                        requested: list_permissions(requested),
                    });
                }
                requested
                    .iter()
                    .filter(|p| grants.contains(p))
                    .cloned()
                    .collect()
            }
        };
        if entry
            .manifest
            .has_hook(plugbay_api::manifest::Hook::Process)
            && !granted.contains(&Permission::ProcessData)
        {
            return Err(RegistryError::ProcessDataWithheld { id: id.to_owned() });
        }
        let actual = self.current_hash(&entry)?;
        if actual != entry.sha256 {
            return Err(RegistryError::LibraryChanged {
                id: id.to_owned(),
                path: entry.library,
                since: "registration",
                expected: entry.sha256,
                actual,
            });
        }
        let granted_json = serde_json::to_string(&granted).expect("permissions serialize");
        let now = now();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET review_status = 'approved', reviewer = ?2, reviewed_at = ?3,
                 reviewed_sha256 = ?4, granted = ?5, review_reason = NULL, isolation = ?6,
                 updated_at = ?3
                 WHERE id = ?1 AND sha256 = ?4",
                params![id, reviewer, now, actual, granted_json, isolation.as_str()],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound { id: id.to_owned() });
            }
            audit(
                tx,
                reviewer,
                "approve",
                Some(id),
                Some(&format!(
                    "granted {}; isolation {isolation}",
                    list_permissions(&granted)
                )),
            )
        })?;
        self.get(id)
    }

    /// Rejects a plugin, with a reason; a rejected plugin is disabled.
    pub fn reject(
        &mut self,
        id: &str,
        reviewer: &str,
        reason: &str,
    ) -> Result<Entry, RegistryError> {
        check_id(id)?;
        if reason.trim().is_empty() {
            return Err(RegistryError::NoReason { id: id.to_owned() });
        }
        let now = now();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET review_status = 'rejected', reviewer = ?2, reviewed_at = ?3,
                 reviewed_sha256 = NULL, granted = NULL, review_reason = ?4, isolation = NULL, enabled = 0,
                 updated_at = ?3
                 WHERE id = ?1",
                params![id, reviewer, now, reason],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound { id: id.to_owned() });
            }
            audit(tx, reviewer, "reject", Some(id), Some(reason))
        })?;
        self.get(id)
    }

    /// Enables an approved plugin whose library is unchanged since review.
    pub fn enable(&mut self, id: &str, actor: &str) -> Result<Entry, RegistryError> {
        let entry = self.get(id)?;
        self.check_runnable(&entry, false)?;
        let entry = self.set_enabled(id, true, actor)?;
        // The first version of a name to be enabled serves the name (see `current`).
        self.adopt_current(&entry)?;
        Ok(entry)
    }

    /// Disables a plugin (a running instance is the host's to drain and stop).
    pub fn disable(&mut self, id: &str, actor: &str) -> Result<Entry, RegistryError> {
        check_id(id)?;
        self.set_enabled(id, false, actor)
    }

    fn set_enabled(
        &mut self,
        id: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<Entry, RegistryError> {
        let now = now();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET enabled = ?2, updated_at = ?3
                 WHERE id = ?1 AND (?2 = 0 OR review_status = 'approved')",
                params![id, enabled, now],
            )?;
            if changed == 0 {
                let status: Option<String> = tx
                    .query_row(
                        "SELECT review_status FROM plugins WHERE id = ?1",
                        [id],
                        |row| row.get(0),
                    )
                    .optional()?;
                return Err(match status {
                    None => RegistryError::NotFound { id: id.to_owned() },
                    Some(status) => RegistryError::NotApproved {
                        id: id.to_owned(),
                        status: status.parse().unwrap_or(ReviewStatus::Pending),
                    },
                });
            }
            audit(
                tx,
                actor,
                if enabled { "enable" } else { "disable" },
                Some(id),
                None,
            )
        })?;
        self.get(id)
    }

    /// Removes a plugin (its audit history stays).
    pub fn unregister(&mut self, id: &str, actor: &str) -> Result<Entry, RegistryError> {
        let entry = self.get(id)?;
        self.write(|tx| {
            if tx.execute("DELETE FROM plugins WHERE id = ?1", [id])? == 0 {
                return Err(RegistryError::NotFound { id: id.to_owned() });
            }
            audit(tx, actor, "unregister", Some(id), None)
        })?;
        self.release_library(&entry.library)?;
        Ok(entry)
    }

    /// Sets the config passed to `init`.
    pub fn configure(
        &mut self,
        id: &str,
        config: &serde_json::Value,
        actor: &str,
    ) -> Result<Entry, RegistryError> {
        check_id(id)?;
        let now = now();
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE plugins SET config = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, config.to_string(), now],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound { id: id.to_owned() });
            }
            audit(tx, actor, "configure", Some(id), Some(&config.to_string()))
        })?;
        self.get(id)
    }

    /// What it takes to run a plugin: it must be approved and enabled. The spec
    /// grants what the review granted, and loads the stored library only if the bytes
    /// it reads have the SHA-256 that was approved (checked by the load itself, on
    /// the bytes it loads).
    pub fn spec(&self, id: &str) -> Result<PluginSpec, RegistryError> {
        let entry = self.get(id)?;
        check_approved(&entry, true)?;
        let approved = entry.review.reviewed_sha256.clone().unwrap_or_default();
        let mut spec = PluginSpec::new(&entry.library, entry.manifest.clone())
            .with_plugin_dir(&entry.plugin_dir)
            .with_policy(Policy::Allow(entry.review.granted.clone()))
            .with_sha256(approved)
            .with_isolation(entry.review.isolation.unwrap_or(Isolation::Process));
        if let Some(config) = entry.config {
            spec = spec.with_config(config);
        }
        Ok(spec)
    }

    fn check_runnable(&self, entry: &Entry, need_enabled: bool) -> Result<(), RegistryError> {
        check_approved(entry, need_enabled)?;
        let approved = entry.review.reviewed_sha256.clone().unwrap_or_default();
        let actual = self.current_hash(entry)?;
        if actual != approved {
            return Err(RegistryError::LibraryChanged {
                id: entry.id.clone(),
                path: entry.library.clone(),
                since: "review",
                expected: approved,
                actual,
            });
        }
        Ok(())
    }

    fn current_hash(&self, entry: &Entry) -> Result<String, RegistryError> {
        match sha256_file(&entry.library) {
            Ok(hash) => Ok(hash),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok("missing".to_owned()),
            Err(source) => Err(RegistryError::Library {
                path: entry.library.clone(),
                source,
            }),
        }
    }

    /// The audit log, oldest first; only one plugin's events if `id` is given.
    pub fn audit_log(&self, id: Option<&str>) -> Result<Vec<AuditEvent>, RegistryError> {
        let mut statement = self.connection.prepare(
            "SELECT seq, at, actor, action, plugin_id, detail FROM audit
             WHERE ?1 IS NULL OR plugin_id = ?1 ORDER BY seq",
        )?;
        let rows = statement.query_map([id], |row| {
            Ok(AuditEvent {
                seq: row.get(0)?,
                at: row.get(1)?,
                actor: row.get(2)?,
                action: row.get(3)?,
                plugin_id: row.get(4)?,
                detail: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Checks the database's integrity (`PRAGMA integrity_check`); `true` when sound.
    pub fn integrity_ok(&self) -> Result<bool, RegistryError> {
        let result: String = self
            .connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        Ok(result == "ok")
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }
}

/// Refuses an entry that is not approved, or (if `need_enabled`) not enabled.
fn check_approved(entry: &Entry, need_enabled: bool) -> Result<(), RegistryError> {
    if entry.review.status != ReviewStatus::Approved {
        return Err(RegistryError::NotApproved {
            id: entry.id.clone(),
            status: entry.review.status,
        });
    }
    if need_enabled && !entry.enabled {
        return Err(RegistryError::Disabled {
            id: entry.id.clone(),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_readonly(mode & 0o222 == 0);
    std::fs::set_permissions(path, permissions)
}

fn list_permissions(permissions: &[Permission]) -> String {
    if permissions.is_empty() {
        return "nothing".to_owned();
    }
    permissions
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn audit(
    tx: &rusqlite::Transaction<'_>,
    actor: &str,
    action: &str,
    plugin_id: Option<&str>,
    detail: Option<&str>,
) -> Result<(), RegistryError> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, plugin_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now(), actor, action, plugin_id, detail],
    )?;
    Ok(())
}

const SELECT_ENTRY: &str = "SELECT id, manifest, library, sha256, plugin_dir, enabled, review_status, reviewer,
    reviewed_at, reviewed_sha256, granted, review_reason, config, created_at, updated_at, source, isolation,
    revision, previous,
    EXISTS (SELECT 1 FROM current_versions WHERE current_versions.id = plugins.id)
    FROM plugins";

/// A row, or a description of what in it is corrupt.
fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Entry, rusqlite::Error>> {
    let corrupt = |column: usize, message: String| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            message.into(),
        )
    };
    let id: String = row.get(0)?;
    let manifest_text: String = row.get(1)?;
    let manifest = match Manifest::parse(&manifest_text) {
        Ok(manifest) => manifest,
        Err(err) => {
            return Ok(Err(corrupt(
                1,
                format!("stored manifest of `{id}` is invalid: {err}"),
            )))
        }
    };
    let status_text: String = row.get(6)?;
    let status = match status_text.parse() {
        Ok(status) => status,
        Err(err) => return Ok(Err(corrupt(6, err))),
    };
    let granted_text: Option<String> = row.get(10)?;
    let granted: Vec<Permission> = match granted_text
        .map(|text| serde_json::from_str(&text))
        .transpose()
    {
        Ok(granted) => granted.unwrap_or_default(),
        Err(err) => {
            return Ok(Err(corrupt(
                10,
                format!("stored grants of `{id}` are invalid: {err}"),
            )))
        }
    };
    let config_text: Option<String> = row.get(12)?;
    let config = match config_text
        .map(|text| serde_json::from_str(&text))
        .transpose()
    {
        Ok(config) => config,
        Err(err) => {
            return Ok(Err(corrupt(
                12,
                format!("stored config of `{id}` is invalid: {err}"),
            )))
        }
    };
    let previous_text: Option<String> = row.get(18)?;
    let previous = match previous_text
        .map(|text| serde_json::from_str::<PreviousRevision>(&text))
        .transpose()
    {
        Ok(previous) => previous,
        Err(err) => {
            return Ok(Err(corrupt(
                18,
                format!("stored previous revision of `{id}` is invalid: {err}"),
            )))
        }
    };
    Ok(Ok(Entry {
        id,
        manifest,
        library: PathBuf::from(row.get::<_, String>(2)?),
        source: row.get::<_, Option<String>>(15)?.map(PathBuf::from),
        sha256: row.get(3)?,
        plugin_dir: PathBuf::from(row.get::<_, String>(4)?),
        enabled: row.get(5)?,
        review: Review {
            status,
            reviewer: row.get(7)?,
            reviewed_at: row.get(8)?,
            reviewed_sha256: row.get(9)?,
            granted,
            reason: row.get(11)?,
            isolation: match row.get::<_, Option<String>>(16)? {
                None => None,
                Some(text) => match text.parse() {
                    Ok(isolation) => Some(isolation),
                    Err(err) => return Ok(Err(corrupt(16, err))),
                },
            },
        },
        config,
        created_at: row.get(13)?,
        updated_at: row.get(14)?,
        revision: row.get(17)?,
        previous,
        current: row.get(19)?,
    }))
}
