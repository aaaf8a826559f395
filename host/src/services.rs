//! Host services a plugin reaches through its context: logging into the host's
//! `tracing`, and a data store. Every call is checked against the plugin's granted
//! permissions here, on the host side; a denied call returns an error to the plugin
//! and is logged with the plugin's id.
//!
//! Services run on the plugin's worker thread, which landlock confines: a
//! [`DataStore`] must not open files or sockets per call (open them up front, or
//! serve the calls from a thread of its own).
//!
//! # Services end with the instance
//!
//! A plugin can keep calling its services after the host is done with it: from a
//! thread it started and left running, through a clone of its context, or (native
//! code can do anything) through a bitwise copy of the services object that skips
//! its reference count. So, in this order:
//!
//! 1. The host **revokes** an instance's services when `cleanup` returns, when the
//!    instance is dropped or forgotten, and when the host abandons its worker (a
//!    missed deadline). Revoking drops the services' reference to the data store,
//!    after waiting for the calls in flight: once it returns, no call of that
//!    instance reaches the store again. Every later `store_get`, `store_put` and
//!    `store_delete` returns a `DENIED` error that says the plugin was stopped, and
//!    `log` lines are dropped.
//! 2. The services object itself is **never freed**: the host leaks one reference
//!    to it on purpose. A copy without a reference count (or one that outlived every
//!    count) still points at a live object whose calls are denied, never at freed
//!    memory. The cost is one small object per instance started (the plugin's id and
//!    a few words, about 100 bytes), kept until the process exits; the store and
//!    everything else are released at revocation.
//!
//! Revocation is the host's side of "a stopped plugin gets no more services"; it
//! does not stop the plugin's threads, which run on until the process exits (only
//! process isolation ends them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RErr, ROk, ROption, RResult, RSlice, RStr, RVec};
use plugbay_api::abi::{
    ErrorKind, HostServices, HostServicesBox, HostServices_TO, LogLevel, PluginError,
};
use plugbay_api::manifest::Permission;

/// The data store plugins with `read:data` / `write:data` reach.
///
/// Keys are shared by all plugins of a host; a plugin namespaces its own keys
/// (`dedup/stats`). A call that fails returns a [`StoreError`], which the plugin
/// receives as the error of its `store_get`, `store_put` or `store_delete`.
///
/// The calls run on the calling plugin's worker thread, which is confined: a store
/// that needs files or sockets opens them up front, or serves the calls from a
/// thread of its own (as the registry's `SqliteStore` does).
pub trait DataStore: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; says whether it was there.
    fn delete(&self, key: &str) -> Result<bool, StoreError>;
}

/// Why a data store call failed: what failed, naming the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error that says `message` (lowercase, naming what failed and where).
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
        }
    }
}

/// A [`DataStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStore {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A poisoned map is still a consistent map: every operation is one call.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl DataStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries().get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.entries().insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.entries().remove(key).is_some())
    }
}

/// One plugin instance's view of the host services.
pub(crate) struct Services {
    plugin_id: String,
    read: bool,
    write: bool,
    /// The data store until the services are revoked, then `None`. Calls hold the
    /// read lock for their whole length, so revoking waits for the calls in flight.
    store: RwLock<Option<Arc<dyn DataStore>>>,
    /// Whether a call after revocation was logged (once per instance, not per call).
    reported: AtomicBool,
}

/// The host's hold on an instance's services, to revoke them.
#[derive(Clone)]
pub(crate) struct Revoker(RArc<Services>);

impl Services {
    /// The services of plugin `plugin_id` with `granted` permissions, as the object
    /// the plugin receives, and the host's hold on them.
    pub fn create(
        plugin_id: String,
        granted: &[Permission],
        store: Arc<dyn DataStore>,
    ) -> (HostServicesBox, Revoker) {
        let services = RArc::new(Services {
            plugin_id,
            read: granted.contains(&Permission::ReadData),
            write: granted.contains(&Permission::WriteData),
            store: RwLock::new(Some(store)),
            reported: AtomicBool::new(false),
        });
        // The leak that keeps the object alive for good (see the module docs).
        std::mem::forget(services.clone());
        let object = HostServices_TO::from_ptr(services.clone(), TD_Opaque);
        (object, Revoker(services))
    }

    /// The store, or `None` once revoked; the guard keeps revocation waiting.
    fn store(&self) -> RwLockReadGuard<'_, Option<Arc<dyn DataStore>>> {
        // A panic in a store call leaves the store as consistent as the store is.
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn denied(&self, call: &str, permission: &str) -> PluginError {
        tracing::warn!(plugin = %self.plugin_id, call, permission, "host service denied");
        PluginError::new(
            ErrorKind::DENIED,
            format!(
                "{call} denied: plugin {} was not granted `{permission}`",
                self.plugin_id
            ),
        )
    }

    fn failed(&self, call: &str, err: StoreError) -> PluginError {
        tracing::warn!(plugin = %self.plugin_id, call, error = %err, "data store call failed");
        PluginError::new(ErrorKind::FAILED, format!("{call} failed: {err}"))
    }

    fn stopped(&self, call: &str) -> PluginError {
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(plugin = %self.plugin_id, call, "a stopped plugin called host services (a thread it left running?); denied, and not logged again");
        }
        PluginError::new(
            ErrorKind::DENIED,
            format!(
                "{call} denied: plugin {} was stopped, and its host services ended with it",
                self.plugin_id
            ),
        )
    }
}

impl Revoker {
    /// Ends the services: waits for the calls in flight, then every later call is
    /// denied. Revoking twice is harmless.
    pub fn revoke(&self) {
        let store = self
            .0
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if store.is_some() {
            tracing::debug!(plugin = %self.0.plugin_id, "host services revoked");
        }
    }

    /// Whether the services were revoked.
    #[cfg(test)]
    fn is_revoked(&self) -> bool {
        self.0.store().is_none()
    }
}

/// The most verbose level at which the host's `tracing` subscriber records plugin log
/// lines (this module's target), `None` if it records none: what a plugin is told at
/// `init`, so that it drops the lines the host would drop before it formats them.
pub(crate) fn recorded_level() -> Option<LogLevel> {
    if tracing::enabled!(tracing::Level::TRACE) {
        Some(LogLevel::Trace)
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        Some(LogLevel::Debug)
    } else if tracing::enabled!(tracing::Level::INFO) {
        Some(LogLevel::Info)
    } else if tracing::enabled!(tracing::Level::WARN) {
        Some(LogLevel::Warn)
    } else if tracing::enabled!(tracing::Level::ERROR) {
        Some(LogLevel::Error)
    } else {
        None
    }
}

impl HostServices for Services {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        // Not held while logging: a log line may wait on the host's output, and
        // revocation must not wait for it.
        if self.store().is_none() {
            // A stopped plugin's lines are dropped (calls after revocation are
            // reported once, by the store calls).
            return;
        }
        let plugin = self.plugin_id.as_str();
        let message = message.as_str();
        // The module of the plugin (or of a crate it uses) that wrote the line, as
        // `log` and `tracing` name it; none for the plugin's own `Context::log`.
        let module = Some(target.as_str()).filter(|target| !target.is_empty());
        match level {
            LogLevel::Trace => tracing::trace!(plugin, module, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, module, "{message}"),
            LogLevel::Info => tracing::info!(plugin, module, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, module, "{message}"),
            LogLevel::Error => tracing::error!(plugin, module, "{message}"),
        }
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        let store = self.store();
        let Some(store) = store.as_ref() else {
            return RErr(self.stopped("store_get"));
        };
        if !self.read {
            return RErr(self.denied("store_get", "read:data"));
        }
        match store.get(key.as_str()) {
            Ok(value) => ROk(value.map(RVec::from).into()),
            Err(err) => RErr(self.failed("store_get", err)),
        }
    }

    fn store_put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError> {
        let store = self.store();
        let Some(store) = store.as_ref() else {
            return RErr(self.stopped("store_put"));
        };
        if !self.write {
            return RErr(self.denied("store_put", "write:data"));
        }
        match store.put(key.as_str(), value.as_slice()) {
            Ok(()) => ROk(()),
            Err(err) => RErr(self.failed("store_put", err)),
        }
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<bool, PluginError> {
        let store = self.store();
        let Some(store) = store.as_ref() else {
            return RErr(self.stopped("store_delete"));
        };
        if !self.write {
            return RErr(self.denied("store_delete", "write:data"));
        }
        match store.delete(key.as_str()) {
            Ok(deleted) => ROk(deleted),
            Err(err) => RErr(self.failed("store_delete", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_services_deny_every_call_and_release_the_store() {
        let store: Arc<dyn DataStore> = Arc::new(MemoryStore::default());
        let granted = [Permission::ReadData, Permission::WriteData];
        let (object, revoker) = Services::create("p@1.0.0".to_owned(), &granted, store.clone());
        assert!(object
            .store_put(RStr::from_str("k"), RSlice::from_slice(b"v"))
            .is_ok());
        assert_eq!(Arc::strong_count(&store), 2);
        revoker.revoke();
        assert!(revoker.is_revoked());
        assert_eq!(Arc::strong_count(&store), 1, "the store is released");
        for result in [
            object
                .store_put(RStr::from_str("k"), RSlice::from_slice(b"w"))
                .map(drop),
            object.store_get(RStr::from_str("k")).map(drop),
            object.store_delete(RStr::from_str("k")).map(drop),
        ] {
            let RErr(error) = result else {
                panic!("a call after revocation went through")
            };
            assert_eq!(error.kind, ErrorKind::DENIED);
            assert!(error.message.contains("p@1.0.0 was stopped"), "{error}");
        }
        object.log(
            LogLevel::Info,
            RStr::from_str(""),
            RStr::from_str("dropped"),
        );
        assert_eq!(store.get("k"), Ok(Some(b"v".to_vec())));
        revoker.revoke();
    }

    #[test]
    fn the_services_object_outlives_every_counted_reference() {
        let (object, revoker) = Services::create(
            "p@1.0.0".to_owned(),
            &[Permission::WriteData],
            Arc::new(MemoryStore::default()),
        );
        let services = revoker.0.clone();
        drop(object);
        drop(revoker);
        // The object and the host's revoker are gone; the leaked reference remains.
        assert_eq!(RArc::strong_count(&services), 2);
    }
}
