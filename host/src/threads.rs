//! Threads a plugin leaves running when its instance stops, on a worker thread.
//!
//! A plugin may start threads itself (a thread pool's, directly or through a crate),
//! and nothing ends them when its instance stops: they keep running plugin code, in
//! the instance's confinement, until the process exits. The host cannot stop them,
//! but it counts them and names them, so that neither the status nor `ps` hides them.
//!
//! How a worker knows its plugin's threads: before it is confined, the worker thread
//! takes a filesystem context of its own (`unshare(CLONE_FS)`: its working folder,
//! root and umask), which every thread it starts shares, and the threads those start,
//! whatever they are named. When the instance has been dropped, the worker lists the
//! process's threads (through `/proc/self/task`, opened before it was confined) and
//! asks the kernel (`kcmp(KCMP_FS)`) which share its context: those are the plugin's.
//! A side effect: a plugin's `chdir` or `umask` now changes only its own threads'.
//!
//! The count goes into [`PluginStatus::threads_left`](crate::PluginStatus), and
//! each such thread that still carries the worker's name (threads inherit their
//! creator's name) is renamed `left:NAME`, so that it is not mistaken for a live
//! worker of the host.
//!
//! Where the kernel has no `kcmp` (built without `CONFIG_KCMP`), nothing is counted
//! and the status says `None`.

use std::sync::{Mutex, PoisonError};
#[cfg(target_os = "linux")]
use std::time::{Duration, Instant};

/// How long a worker waits for threads that are ending (a thread pool dropped in
/// `cleanup` or `Drop` tells its threads to end, without joining them).
#[cfg(target_os = "linux")]
const ENDING_WAIT: Duration = Duration::from_millis(50);

/// A worker thread's means of finding its plugin's threads.
pub(crate) struct Watch {
    /// `/proc/self/task`, opened before the worker was confined.
    #[cfg(target_os = "linux")]
    tasks: Option<rustix::fs::Dir>,
}

impl Watch {
    /// Called on the worker thread before it is confined or runs plugin code.
    #[cfg(target_os = "linux")]
    pub fn start() -> Watch {
        use rustix::fs::{Mode, OFlags};
        // SAFETY: `CLONE_FS` only gives this thread its own copy of the working
        // folder, root and umask; no memory or descriptor is shared or unshared.
        let own = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) };
        let tasks = own.ok().and_then(|()| {
            rustix::fs::open(
                "/proc/self/task",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .and_then(|fd| rustix::fs::Dir::new(fd).ok())
        });
        Watch { tasks }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn start() -> Watch {
        Watch {}
    }

    /// The ids of the threads, other than this one, that share this worker's
    /// filesystem context: those the plugin started, still running. Waits up to
    /// [`ENDING_WAIT`] for threads that are ending. `None` if the kernel cannot tell.
    #[cfg(target_os = "linux")]
    pub fn left(&mut self) -> Option<Vec<i32>> {
        let tasks = self.tasks.as_mut()?;
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        let until = Instant::now() + ENDING_WAIT;
        loop {
            tasks.rewind();
            let mut left = Vec::new();
            for entry in tasks.by_ref() {
                let Ok(entry) = entry else { continue };
                let Some(tid) = entry
                    .file_name()
                    .to_str()
                    .ok()
                    .and_then(|name| name.parse::<i32>().ok())
                else {
                    continue;
                };
                if tid == me {
                    continue;
                }
                match same_fs(me, tid) {
                    Some(true) => left.push(tid),
                    Some(false) => {}
                    // No kcmp in this kernel: the worker cannot tell.
                    None => return None,
                }
            }
            if left.is_empty() || Instant::now() >= until {
                return Some(left);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn left(&mut self) -> Option<Vec<i32>> {
        None
    }
}

/// Whether threads `a` and `b` of this process share one filesystem context
/// (`kcmp(KCMP_FS)`); `None` if the kernel has no `kcmp`. A thread that has ended
/// meanwhile shares nothing.
#[cfg(target_os = "linux")]
fn same_fs(a: i32, b: i32) -> Option<bool> {
    const KCMP_FS: libc::c_long = 3;
    // SAFETY: `kcmp` reads no memory of this process: it compares the filesystem
    // contexts of two tasks named by their ids, and fails if one does not exist.
    let result = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(a),
            libc::c_long::from(b),
            KCMP_FS,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    match result {
        0 => Some(true),
        -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) => None,
        _ => Some(false),
    }
}

/// What a worker found when its instance stopped, for its handle.
#[derive(Debug, Default)]
pub(crate) struct Left(Mutex<Option<Vec<i32>>>);

impl Left {
    /// The worker records the threads its plugin left.
    pub fn record(&self, threads: Option<Vec<i32>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = threads;
    }

    /// After the worker ended: how many threads the plugin left running (`None`: not
    /// counted), each renamed `left:NAME` if it still carries the worker's name
    /// `worker_name`.
    pub fn report(&self, id: &str, worker_name: &str, plugin_name: &str) -> Option<usize> {
        let threads = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        if threads.is_empty() {
            return Some(0);
        }
        let renamed = format!("left:{plugin_name}");
        let renamed = truncated(&renamed);
        for tid in &threads {
            rename(*tid, truncated(worker_name), renamed);
        }
        tracing::warn!(
            plugin = id,
            threads = threads.len(),
            "the plugin left threads running after it stopped: they keep its confinement and run until the process exits (those that carried its worker's name are renamed `{renamed}`); own your threads and end them in `cleanup`"
        );
        Some(threads.len())
    }
}

/// `name` cut to the 15 bytes a thread's kernel name holds (at a character boundary).
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Renames thread `tid` of this process to `to` if it is still named `from`.
#[cfg(target_os = "linux")]
fn rename(tid: i32, from: &str, to: &str) {
    let path = format!("/proc/self/task/{tid}/comm");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim_end_matches('\n') == from {
        let _ = std::fs::write(&path, to);
    }
}

#[cfg(not(target_os = "linux"))]
fn rename(_tid: i32, _from: &str, _to: &str) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_worker_finds_the_threads_it_started_and_only_those() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        let left = std::thread::Builder::new()
            .name("plugbay-watched".to_owned())
            .spawn(move || {
                let mut watch = Watch::start();
                // A thread that ends at once is not counted; one that runs on is, and
                // so is a thread it starts.
                std::thread::spawn(|| ()).join().unwrap();
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let inner = std::thread::spawn(move || stop_rx.recv());
                    ready_tx.send(()).unwrap();
                    let _ = inner.join();
                });
                ready_rx.recv().unwrap();
                watch.left()
            })
            .unwrap()
            .join()
            .unwrap();
        let left = left.expect("this kernel has kcmp");
        assert_eq!(left.len(), 2, "{left:?}");
        let record = Left::default();
        record.record(Some(left.clone()));
        assert_eq!(
            record.report("watched@1.0.0", "plugbay-watched", "watched"),
            Some(2)
        );
        for tid in &left {
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
            assert_eq!(name.trim_end(), "left:watched");
        }
        drop(stop_tx);
        other.join().unwrap();
    }

    #[test]
    fn names_are_cut_to_what_the_kernel_keeps() {
        assert_eq!(truncated("left:data-processor"), "left:data-proce");
        assert_eq!(truncated("short"), "short");
        assert_eq!(truncated("left:ééééééééé"), "left:ééééé");
    }
}
