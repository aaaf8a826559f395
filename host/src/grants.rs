//! One copy of a library per confinement in a process: a library's global state
//! never crosses from one set of grants to another.
//!
//! A library is mapped once per process, and its statics are shared by every
//! instance of it: a thread pool started on first use (rayon's global pool), a cache,
//! a pooled database connection. Such state keeps the confinement it was made in: a
//! thread inherits its creator's landlock domain, a descriptor stays open whatever
//! the next caller may open. So an instance started with narrower grants than the
//! one that made the state could read, through it, what it was not granted; one with
//! wider grants would find its pool unable to do what it may.
//!
//! So on a worker thread (and for local plugins) an instance loads the copy of its
//! library that belongs to its confinement: its grants and the paths and ports they
//! resolve to. The first confinement that loads a library in the process takes the
//! sealed copy the host hashed; another confinement gets a copy of its own (the same
//! bytes in another sealed memfd, which the dynamic loader maps as another library,
//! with its own statics and its own threads). Instances with equal grants share one
//! copy, as they may share anything.
//!
//! What copies do not separate is what any two plugins of one process share: the C
//! library's state, libraries a plugin links dynamically (other than the C runtime),
//! the descriptor table and the address space. Process isolation separates those
//! too, with a process per instance. A copy costs the library's size in memory for
//! as long as the process lives (a library is never unloaded); each is logged.
//!
//! An inspection loads the host's copy under the smallest confinement there is (the
//! library and the system files every plugin may read) and claims no copy: whatever
//! its initializers leave behind can do no more than any instance may.

#[cfg(target_os = "linux")]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
#[cfg(target_os = "linux")]
use std::sync::{Mutex, OnceLock, PoisonError};

use plugbay_api::manifest::Permission;

use crate::image::Image;
use crate::loader::LoadError;
use crate::sandbox::Rules;

/// What makes two confinements the same: the grants as written and what their paths
/// and ports resolve to (the library itself aside: the same bytes may come from two
/// paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    granted: Vec<String>,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    connect: Vec<u16>,
    bind: Vec<u16>,
}

impl Key {
    /// The confinement of an instance of `library` with `granted` permissions under
    /// `rules`.
    pub fn of(granted: &[Permission], rules: &Rules, library: &Path) -> Key {
        fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
            let mut items = items.to_vec();
            items.sort();
            items.dedup();
            items
        }
        let mut granted: Vec<String> = granted.iter().map(ToString::to_string).collect();
        granted.sort();
        granted.dedup();
        let read: Vec<PathBuf> = rules
            .read
            .iter()
            .filter(|path| path.as_path() != library)
            .cloned()
            .collect();
        Key {
            granted,
            read: sorted(&read),
            write: sorted(&rules.write),
            connect: sorted(&rules.connect),
            bind: sorted(&rules.bind),
        }
    }
}

/// A copy of a library loaded (or about to be) in this process, and the
/// confinement it belongs to.
#[cfg(target_os = "linux")]
struct Copy {
    key: Key,
    image: Image,
    /// The plugin that loaded it first.
    first: String,
}

#[cfg(target_os = "linux")]
fn copies() -> &'static Mutex<HashMap<String, Vec<Copy>>> {
    static COPIES: OnceLock<Mutex<HashMap<String, Vec<Copy>>>> = OnceLock::new();
    COPIES.get_or_init(Default::default)
}

/// The image an instance of plugin `id` with confinement `key` loads: the copy of
/// `image`'s library that belongs to that confinement, made now if there is none.
#[cfg(target_os = "linux")]
pub(crate) fn image_for(id: &str, image: &Image, key: Key) -> Result<Image, LoadError> {
    let mut copies = copies().lock().unwrap_or_else(PoisonError::into_inner);
    let loaded = copies.entry(image.sha256.clone()).or_default();
    if let Some(copy) = loaded.iter().find(|copy| copy.key == key) {
        return Ok(image.with_copy_of(&copy.image));
    }
    let copy = match loaded.first() {
        None => image.clone(),
        Some(first) => {
            let copy = image.separate_copy().map_err(|source| LoadError::Seal {
                path: image.path.clone(),
                source,
            })?;
            tracing::info!(
                plugin = id,
                sha256 = %image.sha256,
                copies = loaded.len() + 1,
                first = %first.first,
                "the library is already loaded in this process under other grants; this instance loads a copy of its own, so that global state (thread pools, caches, connections) stays with the grants it was made under"
            );
            copy
        }
    };
    loaded.push(Copy {
        key,
        image: copy.clone(),
        first: id.to_owned(),
    });
    Ok(copy)
}

/// Elsewhere than Linux nothing is confined (plugins run only with degraded
/// confinement allowed), so there is nothing to keep apart.
#[cfg(not(target_os = "linux"))]
pub(crate) fn image_for(_id: &str, image: &Image, _key: Key) -> Result<Image, LoadError> {
    Ok(image.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(grants: &[&str], library: &str) -> Key {
        let granted: Vec<Permission> = grants.iter().map(|p| p.parse().unwrap()).collect();
        let rules = Rules::new(
            "k@1.0.0",
            Path::new(library),
            &granted,
            Path::new("/p"),
            Path::new("/d"),
        )
        .unwrap();
        Key::of(&granted, &rules, Path::new(library))
    }

    #[test]
    fn a_key_is_the_grants_and_what_they_resolve_to_not_the_library_path() {
        assert_eq!(
            key(&["process:data", "fs:read:/x"], "/a/lib.so"),
            key(&["fs:read:/x", "process:data"], "/b/lib.so")
        );
        assert_ne!(
            key(&["process:data"], "/a/lib.so"),
            key(&["process:data", "fs:read:/x"], "/a/lib.so")
        );
        assert_ne!(
            key(&["process:data"], "/a/lib.so"),
            key(&["process:data", "read:data"], "/a/lib.so"),
            "data grants are part of it: a library's statics may hold a context"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn each_confinement_gets_its_own_copy_and_equal_ones_share() {
        let dir = std::env::temp_dir().join(format!("plugbay-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("libcopied.so");
        std::fs::write(&path, format!("copied {}", std::process::id())).unwrap();
        let image = Image::open(&path, None).unwrap();
        let narrow = key(&["process:data"], "/a/lib.so");
        let wide = key(&["process:data", "fs:read:/x"], "/a/lib.so");
        let first = image_for("c@1.0.0", &image, narrow.clone()).unwrap();
        assert_eq!(
            first.load_path, image.load_path,
            "the first takes the host's copy"
        );
        let second = image_for("c@1.0.0", &image, wide.clone()).unwrap();
        assert_ne!(second.load_path, image.load_path);
        assert_eq!(
            std::fs::read(&second.load_path).unwrap(),
            std::fs::read(&path).unwrap()
        );
        assert_eq!(second.sha256, image.sha256);
        assert_eq!(
            image_for("c@1.0.0", &image, wide).unwrap().load_path,
            second.load_path
        );
        assert_eq!(
            image_for("c@1.0.0", &image, narrow).unwrap().load_path,
            first.load_path
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
