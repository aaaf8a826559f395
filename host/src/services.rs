//! Host services a plugin reaches through its context: logging into the host's
//! `tracing`, and a data store. Every call is checked against the plugin's granted
//! permissions here, on the host side; a denied call returns an error to the plugin
//! and is logged with the plugin's id.
//!
//! Services run on the plugin's worker thread, which landlock confines: a
//! [`DataStore`] must not open files or sockets per call (open them up front).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RStr, RVec};
use plugbay_api::abi::{ErrorKind, HostServices, LogLevel, PluginError};
use plugbay_api::manifest::Permission;

/// The data store plugins with `read:data` / `write:data` reach.
///
/// Keys are shared by all plugins of a host; a plugin namespaces its own keys
/// (`dedup/stats`).
pub trait DataStore: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key`.
    fn put(&self, key: &str, value: &[u8]);
    /// Removes `key`; says whether it was there.
    fn delete(&self, key: &str) -> bool;
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
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries().get(key).cloned()
    }

    fn put(&self, key: &str, value: &[u8]) {
        self.entries().insert(key.to_owned(), value.to_vec());
    }

    fn delete(&self, key: &str) -> bool {
        self.entries().remove(key).is_some()
    }
}

/// One plugin's view of the host services.
pub(crate) struct Services {
    pub plugin_id: String,
    pub read: bool,
    pub write: bool,
    pub store: Arc<dyn DataStore>,
}

impl Services {
    pub fn new(plugin_id: String, granted: &[Permission], store: Arc<dyn DataStore>) -> Self {
        Services {
            plugin_id,
            read: granted.contains(&Permission::ReadData),
            write: granted.contains(&Permission::WriteData),
            store,
        }
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
}

impl HostServices for Services {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let plugin = self.plugin_id.as_str();
        let message = message.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        if !self.read {
            return RErr(self.denied("store_get", "read:data"));
        }
        ROk(self.store.get(key.as_str()).map(RVec::from).into())
    }

    fn store_put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError> {
        if !self.write {
            return RErr(self.denied("store_put", "write:data"));
        }
        self.store.put(key.as_str(), value.as_slice());
        ROk(())
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<bool, PluginError> {
        if !self.write {
            return RErr(self.denied("store_delete", "write:data"));
        }
        ROk(self.store.delete(key.as_str()))
    }
}
