//! The shared memory a host and its worker process pass batches through, and the
//! doorbells that say a batch is there.
//!
//! One memfd, mapped by both: a page of header (sequence numbers, lengths, sizes),
//! then the data area, which holds the request (a batch for the worker) and then the
//! reply (the worker's batch, or its error) in turn. Only the side whose turn it is
//! touches the data area: the host after ringing the worker's bell waits for the
//! reply's bell before it reads, and the worker does the same the other way. A side
//! that needs a larger area grows the memfd and says so in the header; the memfd is
//! sealed against shrinking, so neither side can make the other's mapping fault.
//!
//! The worker is untrusted: the host reads lengths and sizes from the header only
//! through bounds checks, copies a reply out before it looks at it, and never
//! derives a pointer from anything the worker wrote.
//!
//! A doorbell is a sequence number in the header: the ringer increments it and
//! wakes the other side with `FUTEX_WAKE` if it said it sleeps; the waiter spins as
//! long as it is told (a reply to a small batch comes within microseconds), then sleeps in
//! `FUTEX_WAIT` on the number.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};

/// The header's size: one page, so the data area starts page-aligned.
const HEADER: usize = 4096;

/// The largest data area either side may ask for.
pub(crate) const MAX_DATA: u64 = 1 << 32;

/// The header, at the start of the memfd.
#[repr(C)]
pub(crate) struct Header {
    /// Rung by the host when a request is in the data area.
    pub request_seq: AtomicU32,
    /// Rung by the worker when its reply is in the data area.
    pub reply_seq: AtomicU32,
    /// Non-zero while the worker sleeps on `request_seq`.
    pub worker_sleeps: AtomicU32,
    /// Non-zero while the host sleeps on `reply_seq`.
    pub host_sleeps: AtomicU32,
    /// What the request is (see [`Request`](super::wire::RequestKind)).
    pub request_kind: AtomicU32,
    /// What the reply is (see [`Reply`](super::wire::ReplyKind)).
    pub reply_kind: AtomicU32,
    /// Bytes of the request in the data area.
    pub request_len: AtomicU64,
    /// Bytes of the reply in the data area.
    pub reply_len: AtomicU64,
    /// The memfd's size as its last grower left it.
    pub size: AtomicU64,
}

/// A mapping of the shared memfd.
pub(crate) struct Shared {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Shared` hands out the header only as
// atomics and the data area only through `&mut self` methods, so moving it to
// another thread is sound.
unsafe impl Send for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping this value made and still owns.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

impl Shared {
    /// A new shared memfd with `data` bytes of data area, sealed against shrinking.
    pub fn create(data: usize) -> std::io::Result<Shared> {
        use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create(
            "plugbay:batches",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let size = (HEADER + data) as u64;
        ftruncate(&fd, size)?;
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
        let shared = Shared::map(fd, size as usize)?;
        shared.header().size.store(size, Ordering::Release);
        Ok(shared)
    }

    /// Maps a shared memfd that the other side created.
    pub fn open(fd: OwnedFd) -> std::io::Result<Shared> {
        let size = rustix::fs::fstat(&fd)?.st_size as u64;
        if !(HEADER as u64 + 1..=HEADER as u64 + MAX_DATA).contains(&size) {
            return Err(std::io::Error::other(format!(
                "shared memory of {size} bytes is out of range"
            )));
        }
        Shared::map(fd, size as usize)
    }

    fn map(fd: OwnedFd, len: usize) -> std::io::Result<Shared> {
        // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the
        // kernel picks; nothing else refers to that range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        Ok(Shared {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    /// The memfd (to hand to the worker).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least `HEADER` bytes, page-aligned, and `Header`
        // is made of atomics, which may be shared with another process.
        unsafe { &*self.ptr.cast::<Header>() }
    }

    /// The data area's size in this mapping.
    fn capacity(&self) -> usize {
        self.len - HEADER
    }

    /// Makes this mapping cover at least `data` bytes of data area: grows the memfd
    /// if it is smaller, and maps it again if it grew (here or on the other side).
    pub fn reserve(&mut self, data: usize) -> std::io::Result<()> {
        if data as u64 > MAX_DATA {
            return Err(std::io::Error::other(format!(
                "a batch of {data} bytes is larger than the shared memory's limit of {MAX_DATA} bytes"
            )));
        }
        let file_size = rustix::fs::fstat(&self.fd)?.st_size as u64;
        let wanted = (HEADER + data) as u64;
        if file_size < wanted {
            let grown = wanted
                .max(file_size.saturating_mul(2))
                .min(HEADER as u64 + MAX_DATA);
            rustix::fs::ftruncate(&self.fd, grown)?;
        }
        let file_size = rustix::fs::fstat(&self.fd)?.st_size as u64;
        if file_size > HEADER as u64 + MAX_DATA {
            return Err(std::io::Error::other(
                "the shared memory grew past its limit",
            ));
        }
        if file_size as usize != self.len {
            let fd = self.fd.try_clone()?;
            *self = Shared::map(fd, file_size as usize)?;
            self.header().size.store(file_size, Ordering::Release);
        }
        Ok(())
    }

    /// Copies `bytes` into the data area, growing it if needed.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reserve(bytes.len())?;
        // SAFETY: the data area starts `HEADER` bytes into a mapping of `self.len`
        // bytes and `reserve` made it at least `bytes.len()` long; it is this side's
        // turn, so the other side does not touch it (and if it does, it can only
        // change bytes, never make this copy leave the mapping).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(HEADER), bytes.len());
        }
        Ok(())
    }

    /// Copies the first `len` bytes of the data area out (after mapping it again if
    /// the other side grew it).
    pub fn read(&mut self, len: u64) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len as u64 <= MAX_DATA)
            .ok_or_else(|| {
                std::io::Error::other(format!("a reply of {len} bytes is out of range"))
            })?;
        if len > self.capacity() {
            self.reserve(len)?;
        }
        let mut bytes = Vec::with_capacity(len);
        // SAFETY: `len` bytes from the data area's start lie within the mapping (checked
        // above); they are copied into `bytes`' spare capacity, which is `len` long.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(HEADER), bytes.as_mut_ptr(), len);
            bytes.set_len(len);
        }
        Ok(bytes)
    }

    /// The first `len` bytes of the data area, in place (the worker reads the host's
    /// batch this way, without a copy).
    pub fn slice(&mut self, len: u64) -> std::io::Result<&[u8]> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.capacity() {
            self.reserve(len)?;
        }
        // SAFETY: as in `read`; the slice borrows `self` mutably, so no grow or remap
        // can happen while it lives, and it is this side's turn.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.add(HEADER), len) })
    }
}

/// Rings a doorbell: the other side sees `seq` change.
pub(crate) fn ring(seq: &AtomicU32, sleeps: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    if sleeps.load(Ordering::SeqCst) != 0 {
        let _ = rustix::thread::futex::wake(seq, rustix::thread::futex::Flags::empty(), 1);
    }
}

/// Waits until `seq` is no longer `seen`, until `deadline` (none: forever), or until
/// `stop()` says to give up (checked at least every `check`), spinning for `spin`
/// before it sleeps. Returns whether it changed.
pub(crate) fn wait(
    seq: &AtomicU32,
    seen: u32,
    sleeps: &AtomicU32,
    deadline: Option<Instant>,
    check: Duration,
    spin: Duration,
    stop: impl Fn() -> bool,
) -> bool {
    let spin_until = Instant::now() + spin;
    while Instant::now() < spin_until {
        if seq.load(Ordering::Acquire) != seen {
            return true;
        }
        std::hint::spin_loop();
        std::thread::yield_now();
    }
    loop {
        sleeps.store(1, Ordering::SeqCst);
        if seq.load(Ordering::SeqCst) != seen {
            sleeps.store(0, Ordering::SeqCst);
            return true;
        }
        if stop() {
            sleeps.store(0, Ordering::SeqCst);
            return false;
        }
        let mut slice = check;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                sleeps.store(0, Ordering::SeqCst);
                return seq.load(Ordering::SeqCst) != seen;
            }
            slice = slice.min(left);
        }
        let timeout = rustix::thread::futex::Timespec {
            tv_sec: slice.as_secs() as i64,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        let _ = rustix::thread::futex::wait(
            seq,
            rustix::thread::futex::Flags::empty(),
            seen,
            Some(&timeout),
        );
        sleeps.store(0, Ordering::SeqCst);
        if seq.load(Ordering::Acquire) != seen {
            return true;
        }
    }
}
