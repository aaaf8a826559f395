//! What was checked is what runs: a plugin library is read once, through one
//! descriptor, and hashed; the dynamic loader then opens exactly those bytes.
//!
//! Loading a library by its path after checking it by its path leaves a window in
//! which the file can be swapped (time of check ≠ time of use). So, on Linux, the
//! bytes that were hashed are copied into a sealed memfd (no write, grow, shrink or
//! further seals: not even this process can change them) and the loader opens that
//! memfd through `/proc/self/fd/N`. A path on disk is read once and never opened
//! again for the same load.
//!
//! One memfd is kept per distinct library content (by SHA-256) while an image of it
//! exists, and for the life of the process once the dynamic loader has opened it
//! here, or once it was loaded by an expected digest (reviewed bytes)
//! ([`Image::pin`]): a library is never unloaded (see [`loader`](crate::loader)),
//! the dynamic loader knows it by the memfd's `/proc/self/fd/N` name, and reusing
//! that name is how a second instance of the same library shares the first one's
//! mapping instead of mapping another copy. A copy of a library opened without a
//! digest (a development build) and only handed to worker processes outlives its last
//! image only while it is one of the [`RECENT_COPIES`] such copies used last, so
//! starting the same build again reads nothing, and a host that reloads
//! process-isolated builds again and again keeps at most that many it no longer runs.
//! When the caller already knows the digest it wants (a reviewed plugin) and that
//! content is sealed, the file is not read at all.
//!
//! A file hashed before is not read again while its stamp (inode, size, modification
//! and change times) is the same: any write changes its change time, so the sealed
//! copy still holds its bytes (see [`Stamp`]).
//!
//! Elsewhere than Linux the file is hashed and then loaded by its path, so the
//! window remains there; the docs say so.

#[cfg(target_os = "linux")]
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
#[cfg(target_os = "linux")]
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sha2::{Digest, Sha256};

use crate::loader::LoadError;

/// A plugin library, read and hashed, ready for the dynamic loader.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    /// The file it was read from (for messages and the status).
    pub path: PathBuf,
    /// The SHA-256 of the bytes the loader will open, in hex.
    pub sha256: String,
    /// What to hand the dynamic loader.
    pub load_path: PathBuf,
    /// Keeps the sealed copy open while this image may still be loaded.
    #[cfg(target_os = "linux")]
    _sealed: Arc<std::os::fd::OwnedFd>,
}

/// The sealed copies that exist, by SHA-256 (an image holds its copy open).
#[cfg(target_os = "linux")]
fn sealed_copies() -> &'static Mutex<HashMap<String, Weak<std::os::fd::OwnedFd>>> {
    static COPIES: OnceLock<Mutex<HashMap<String, Weak<std::os::fd::OwnedFd>>>> = OnceLock::new();
    COPIES.get_or_init(Default::default)
}

/// How many sealed copies of libraries loaded without a digest stay open after their
/// last instance is gone, the most recently used first: starting the same library
/// again (a restart, an instance started and stopped in a loop) then reads and hashes
/// nothing, and a host that loads build after build keeps at most this many it no
/// longer runs.
#[cfg(target_os = "linux")]
const RECENT_COPIES: usize = 2;

/// The sealed copies used last (see [`RECENT_COPIES`]).
#[cfg(target_os = "linux")]
fn recent_copies() -> &'static Mutex<std::collections::VecDeque<Arc<std::os::fd::OwnedFd>>> {
    static RECENT: OnceLock<Mutex<std::collections::VecDeque<Arc<std::os::fd::OwnedFd>>>> =
        OnceLock::new();
    RECENT.get_or_init(Default::default)
}

/// Keeps `sealed` among the recently used copies, unless it is kept for good.
#[cfg(target_os = "linux")]
fn used(sealed: &Arc<std::os::fd::OwnedFd>) {
    let pinned = pinned_copies().lock().unwrap_or_else(|e| e.into_inner());
    if pinned.iter().any(|copy| Arc::ptr_eq(copy, sealed)) {
        return;
    }
    drop(pinned);
    let mut recent = recent_copies().lock().unwrap_or_else(|e| e.into_inner());
    recent.retain(|copy| !Arc::ptr_eq(copy, sealed));
    recent.push_front(sealed.clone());
    recent.truncate(RECENT_COPIES);
}

/// The sealed copies the dynamic loader opened in this process, held open for good:
/// a loaded library's `/proc/self/fd/N` name must never come to mean another file.
#[cfg(target_os = "linux")]
fn pinned_copies() -> &'static Mutex<Vec<Arc<std::os::fd::OwnedFd>>> {
    static PINNED: OnceLock<Mutex<Vec<Arc<std::os::fd::OwnedFd>>>> = OnceLock::new();
    PINNED.get_or_init(Default::default)
}

impl Image {
    /// Reads the library at `path` and checks that its SHA-256 is `expected`, if given.
    pub fn open(path: &Path, expected: Option<&str>) -> Result<Image, LoadError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let image = Image::read(path, expected)?;
        // Reviewed bytes (loaded by their digest, as every registry run is) stay
        // sealed: a later load of the same review reads no file, so a stored library
        // tampered with meanwhile does not stop what was reviewed from running. Others
        // stay a while (see `RECENT_COPIES`).
        #[cfg(target_os = "linux")]
        if expected.is_some() {
            image.pin();
        } else {
            used(&image._sealed);
        }
        Ok(image)
    }

    /// [`open`](Image::open)'s sealed copy: one already there for the digest or the
    /// file's unchanged stamp, or the file read, hashed and sealed now.
    fn read(path: PathBuf, expected: Option<&str>) -> Result<Image, LoadError> {
        #[cfg(target_os = "linux")]
        if let Some(image) = expected.and_then(|digest| Image::already_sealed(&path, digest)) {
            return Ok(image);
        }
        let (mut file, metadata) = open_file(&path)?;
        #[cfg(target_os = "linux")]
        let stamp = Stamp::of(&metadata);
        #[cfg(target_os = "linux")]
        if let Some(image) = Image::unchanged(&path, &stamp, expected) {
            return Ok(image);
        }
        let bytes = read(&path, &mut file, &metadata)?;
        let sha256 = hex(&Sha256::digest(&bytes));
        #[cfg(target_os = "linux")]
        stamp.remember(&sha256);
        if let Some(expected) = expected {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(LoadError::DigestMismatch {
                    path,
                    expected: expected.to_owned(),
                    actual: sha256,
                });
            }
        }
        Image::from_bytes(path, sha256, bytes)
    }

    /// The sealed copy a host handed a worker process, with the path and digest the
    /// host read it as.
    #[cfg(target_os = "linux")]
    pub fn sealed(path: PathBuf, sha256: String, sealed: std::os::fd::OwnedFd) -> Image {
        Image::with_sealed(path, sha256, Arc::new(sealed))
    }

    /// Keeps this image's sealed copy open until the process exits: call it before
    /// the dynamic loader opens the copy here (a library is never unloaded, and its
    /// `/proc/self/fd/N` name must keep naming it).
    #[cfg(target_os = "linux")]
    pub fn pin(&self) {
        let mut pinned = pinned_copies().lock().unwrap_or_else(|e| e.into_inner());
        if !pinned.iter().any(|copy| Arc::ptr_eq(copy, &self._sealed)) {
            pinned.push(self._sealed.clone());
        }
        drop(pinned);
        // Kept for good now: its place among the recent copies goes to another.
        recent_copies()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|copy| !Arc::ptr_eq(copy, &self._sealed));
    }

    /// The sealed copy's descriptor (to hand to a worker process).
    #[cfg(target_os = "linux")]
    pub fn sealed_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self._sealed.as_fd()
    }

    /// A copy of this image in a sealed memfd of its own: the same bytes, which the
    /// dynamic loader maps as another library (with its own statics) because it is
    /// another file. See `grants`.
    #[cfg(target_os = "linux")]
    pub fn separate_copy(&self) -> std::io::Result<Image> {
        let bytes = std::fs::read(&self.load_path)?;
        let sealed = seal(&self.path, &bytes)?;
        Ok(Image::with_sealed(
            self.path.clone(),
            self.sha256.clone(),
            Arc::new(sealed),
        ))
    }

    /// This image (its path, for messages), loaded from `copy`'s sealed bytes.
    #[cfg(target_os = "linux")]
    pub fn with_copy_of(&self, copy: &Image) -> Image {
        Image {
            path: self.path.clone(),
            sha256: copy.sha256.clone(),
            load_path: copy.load_path.clone(),
            _sealed: copy._sealed.clone(),
        }
    }

    /// The sealed copy of a file hashed before whose stamp has not changed since (and
    /// whose digest is `expected`, if given): loading it again reads nothing.
    #[cfg(target_os = "linux")]
    fn unchanged(path: &Path, stamp: &Stamp, expected: Option<&str>) -> Option<Image> {
        let sha256 = {
            let stamps = stamps().lock().unwrap_or_else(|e| e.into_inner());
            let (known, sha256) = stamps.get(&(stamp.dev, stamp.ino))?;
            (known == stamp).then(|| sha256.clone())?
        };
        if expected.is_some_and(|expected| !expected.eq_ignore_ascii_case(&sha256)) {
            return None;
        }
        Image::already_sealed(path, &sha256)
    }

    #[cfg(target_os = "linux")]
    fn already_sealed(path: &Path, sha256: &str) -> Option<Image> {
        let copies = sealed_copies().lock().unwrap_or_else(|e| e.into_inner());
        let sealed = copies.get(&sha256.to_ascii_lowercase())?.upgrade()?;
        Some(Image::with_sealed(
            path.to_owned(),
            sha256.to_ascii_lowercase(),
            sealed,
        ))
    }

    #[cfg(target_os = "linux")]
    fn with_sealed(path: PathBuf, sha256: String, sealed: Arc<std::os::fd::OwnedFd>) -> Image {
        use std::os::fd::AsRawFd;
        Image {
            path,
            sha256,
            load_path: PathBuf::from(format!("/proc/self/fd/{}", sealed.as_raw_fd())),
            _sealed: sealed,
        }
    }

    #[cfg(target_os = "linux")]
    fn from_bytes(path: PathBuf, sha256: String, bytes: Vec<u8>) -> Result<Image, LoadError> {
        let mut copies = sealed_copies().lock().unwrap_or_else(|e| e.into_inner());
        let sealed = match copies.get(&sha256).and_then(Weak::upgrade) {
            Some(sealed) => sealed,
            None => {
                let sealed = Arc::new(seal(&path, &bytes).map_err(|source| LoadError::Seal {
                    path: path.clone(),
                    source,
                })?);
                copies.retain(|_, copy| copy.strong_count() > 0);
                copies.insert(sha256.clone(), Arc::downgrade(&sealed));
                sealed
            }
        };
        Ok(Image::with_sealed(path, sha256, sealed))
    }

    #[cfg(not(target_os = "linux"))]
    fn from_bytes(path: PathBuf, sha256: String, _bytes: Vec<u8>) -> Result<Image, LoadError> {
        Ok(Image {
            load_path: path.clone(),
            path,
            sha256,
        })
    }
}

fn not_readable(path: &Path) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::missing(path)
        } else {
            LoadError::Unreadable {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// What a file that is not a regular file is, for messages: `a folder`, `a
/// character device` (`/dev/zero`), `a named pipe`, ….
pub(crate) fn kind_of(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_fifo() {
            return "a named pipe";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens the library and reads its metadata (through the same descriptor). Only a
/// regular file is opened: a named pipe would block the open, and a device such as
/// `/dev/zero` would be read without end.
fn open_file(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), LoadError> {
    let before = std::fs::metadata(path).map_err(not_readable(path))?;
    if !before.is_file() {
        return Err(LoadError::not_a_file(path, before.file_type()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Swapped for a named pipe since: the open must not wait for a writer.
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(not_readable(path))?;
    let metadata = file.metadata().map_err(not_readable(path))?;
    if !metadata.is_file() {
        return Err(LoadError::not_a_file(path, metadata.file_type()));
    }
    Ok((file, metadata))
}

/// Reads the whole library through `file`.
fn read(
    path: &Path,
    file: &mut std::fs::File,
    metadata: &std::fs::Metadata,
) -> Result<Vec<u8>, LoadError> {
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(not_readable(path))?;
    Ok(bytes)
}

/// What identifies a file's content without reading it: its inode, size and change
/// times. Any write to a file changes its ctime, which no program can set back, so
/// a file whose stamp is the same as when it was hashed has the same bytes, as long
/// as its last change was longer ago than the file system's time granularity when
/// it was hashed (otherwise a write in the same tick would go unseen: such a stamp
/// is not remembered).
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[cfg(target_os = "linux")]
impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Remembers that a file with this stamp hashed to `sha256`, if its last change is
    /// old enough that a later one would change the stamp.
    fn remember(&self, sha256: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64);
        if self.ctime.0 + 2 < now {
            stamps()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((self.dev, self.ino), (self.clone(), sha256.to_owned()));
        }
    }
}

/// The stamps of files hashed so far, by device and inode, with their SHA-256.
#[cfg(target_os = "linux")]
type Stamps = Mutex<HashMap<(u64, u64), (Stamp, String)>>;

#[cfg(target_os = "linux")]
fn stamps() -> &'static Stamps {
    static STAMPS: OnceLock<Stamps> = OnceLock::new();
    STAMPS.get_or_init(Default::default)
}

/// A memfd holding `bytes`, sealed against any change.
#[cfg(target_os = "linux")]
fn seal(path: &Path, bytes: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let name = format!(
        "plugbay:{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // Ask for an executable memfd where the kernel knows the flag (6.3 and later, where
    // `vm.memfd_noexec` may otherwise make it non-executable); older kernels refuse the
    // flag, and their memfds are executable anyway.
    let fd = match memfd_create(&name, flags | MemfdFlags::EXEC) {
        Err(rustix::io::Errno::INVAL) => memfd_create(&name, flags)?,
        other => other?,
    };
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes)?;
    fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file.into())
}

/// `bytes` in lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The SHA-256 of the file at `path`, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_the_bytes_that_were_hashed() {
        let dir = tempfile_dir();
        let path = dir.join("libthing.so");
        std::fs::write(&path, b"first").unwrap();
        let image = Image::open(&path, None).unwrap();
        assert_eq!(image.sha256, hex(&Sha256::digest(b"first")));
        // The file changes on disk: the image does not.
        std::fs::write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&image.load_path).unwrap(), b"first");
        let err = Image::open(&path, Some(&image.sha256)).err();
        #[cfg(target_os = "linux")]
        assert!(
            err.is_none(),
            "the sealed copy of the expected digest is used"
        );
        #[cfg(not(target_os = "linux"))]
        assert!(matches!(err, Some(LoadError::DigestMismatch { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_wrong_digest_is_refused_with_both_digests() {
        let dir = tempfile_dir();
        let path = dir.join("libother.so");
        std::fs::write(&path, b"other bytes").unwrap();
        let expected = "0".repeat(64);
        let err = Image::open(&path, Some(&expected)).err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&expected), "{text}");
        assert!(
            text.contains(&hex(&Sha256::digest(b"other bytes"))),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_sealed_copy_cannot_be_written() {
        let dir = tempfile_dir();
        let path = dir.join("libsealed.so");
        std::fs::write(&path, b"sealed").unwrap();
        let image = Image::open(&path, None).unwrap();
        assert!(std::fs::OpenOptions::new()
            .write(true)
            .open(&image.load_path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, b"x"))
            .is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_changed_in_place_after_it_was_hashed_is_read_again() {
        let dir = tempfile_dir();
        let path = dir.join("libstamped.so");
        std::fs::write(&path, b"before!").unwrap();
        // Old enough that its stamp is remembered.
        std::thread::sleep(std::time::Duration::from_millis(3100));
        let first = Image::open(&path, None).unwrap();
        assert_eq!(first.sha256, hex(&Sha256::digest(b"before!")));
        assert!(Image::open(&path, Some(&first.sha256)).is_ok());
        // The same length, in place: the inode stays, its change time does not.
        std::fs::write(&path, b"after!!").unwrap();
        let second = Image::open(&path, None).unwrap();
        assert_eq!(second.sha256, hex(&Sha256::digest(b"after!!")));
        // Asked for the first digest, the load gets the sealed bytes that had it.
        let reviewed = Image::open(&path, Some(&first.sha256)).unwrap();
        assert_eq!(std::fs::read(&reviewed.load_path).unwrap(), b"before!");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reviewed_load_that_finds_its_copy_sealed_keeps_it_for_good() {
        let dir = tempfile_dir();
        let path = dir.join("libreviewed.so");
        std::fs::write(&path, b"the reviewed bytes").unwrap();
        let first = Image::open(&path, None).unwrap();
        let sha256 = first.sha256.clone();
        // Found sealed by its digest: no file is read, and it is kept like one read.
        let reviewed = Image::open(&path, Some(&sha256)).unwrap();
        drop((first, reviewed));
        use_other_builds(&dir, "newer");
        std::fs::write(&path, b"tampered with later").unwrap();
        let again = Image::open(&path, Some(&sha256)).expect("the reviewed copy stays");
        assert_eq!(
            std::fs::read(&again.load_path).unwrap(),
            b"the reviewed bytes"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_copy_not_loaded_here_outlives_its_last_image_while_recent_and_a_loaded_one_stays() {
        let dir = tempfile_dir();
        let gone = dir.join("libgone.so");
        std::fs::write(&gone, b"handed to worker processes only").unwrap();
        let image = Image::open(&gone, None).unwrap();
        let sha256 = image.sha256.clone();
        drop(image);
        assert!(
            Image::already_sealed(&gone, &sha256).is_some(),
            "kept while among the copies used last"
        );
        // Other libraries used since push it out.
        use_other_builds(&dir, "other");
        assert!(
            Image::already_sealed(&gone, &sha256).is_none(),
            "closed once {RECENT_COPIES} others were used after it"
        );

        let kept = dir.join("libkept.so");
        std::fs::write(&kept, b"opened by the dynamic loader here").unwrap();
        let image = Image::open(&kept, None).unwrap();
        let sha256 = image.sha256.clone();
        image.pin();
        drop(image);
        let again = Image::already_sealed(&kept, &sha256).expect("a pinned copy stays");
        assert_eq!(
            std::fs::read(&again.load_path).unwrap(),
            b"opened by the dynamic loader here"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Opens (without a digest) and drops [`RECENT_COPIES`] libraries of their own
    /// in `dir`, which pushes every older copy out of the recent ones.
    #[cfg(target_os = "linux")]
    fn use_other_builds(dir: &Path, name: &str) {
        for n in 0..RECENT_COPIES {
            let other = dir.join(format!("lib{name}{n}.so"));
            std::fs::write(&other, format!("another build, {name} number {n}")).unwrap();
            // Dropped at once: the recent copies hold it.
            drop(Image::open(&other, None).unwrap());
        }
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plugbay-image-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
