//! A small pool of registry connections. SQLite calls block, so handlers use it from
//! `spawn_blocking`; the registry's immediate transactions and busy timeout keep
//! concurrent writers (other requests, the CLI) from losing anything.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::registry::{Registry, RegistryError};

/// Idle connections kept for reuse; more are opened under load and closed after.
const IDLE: usize = 16;

pub(crate) struct Registries {
    home: PathBuf,
    idle: Mutex<Vec<Registry>>,
}

impl Registries {
    /// A pool for the registry in `home`, seeded with an open connection.
    pub(crate) fn new(first: Registry) -> Registries {
        Registries {
            home: first.home().to_owned(),
            idle: Mutex::new(vec![first]),
        }
    }

    pub(crate) fn home(&self) -> &Path {
        &self.home
    }

    /// Runs `body` on a connection.
    pub(crate) fn with<T>(
        &self,
        body: impl FnOnce(&mut Registry) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut registry = match taken {
            Some(registry) => registry,
            None => Registry::open(&self.home)?,
        };
        let result = body(&mut registry);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE {
            idle.push(registry);
        }
        result
    }
}
