//! Starting worker processes, and keeping one started ahead of need.
//!
//! Most of a cold start does not depend on the plugin: `fork` and `exec` of the
//! host's executable, the dynamic loader's relocation of it, the runtime's start, and
//! new user and network namespaces. So a worker is *launched* (started, its inherited
//! descriptors closed, its parent-death signal set, its namespaces entered) apart
//! from being *given* a plugin (the sealed library over the control socket, then the
//! setup); the worker limits and confines itself only after that, from the setup. A
//! host keeps one launched worker per worker program waiting ([`take`], [`order`]),
//! so the next start skips the launch. A plugin granted `net:` needs the host's
//! network, so it gets a worker launched for it, without a network namespace.
//!
//! A waiting worker runs only Plugbay's code, holds only its channel and has an empty
//! environment; it dies with the host (its parent-death signal) and is discarded if
//! it ended while it waited.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::shm::Shared;
use super::{CONTROL_FD, HOST_NETWORK_ARG, SHARED_FD, WORKER_ARG};

/// The shared memory a worker starts with; it grows with the largest batch.
const FIRST_SHARED_BYTES: usize = 1 << 16;

/// A started worker process that has not been given a plugin yet.
pub(super) struct Launched {
    pub program: PathBuf,
    pub child: Child,
    /// The host's end of the control socket.
    pub control: UnixStream,
    pub shared: Shared,
}

impl Launched {
    /// Starts `program` as a worker, forked by the host's lasting spawner thread. A
    /// worker for a plugin that needs the host's network (`network`) enters no
    /// network namespace.
    pub fn start(program: &Path, network: bool) -> std::io::Result<Launched> {
        Launched::start_with(program, network, spawn_from_a_lasting_thread)
    }

    fn start_with(
        program: &Path,
        network: bool,
        spawn: impl FnOnce(Command) -> std::io::Result<Child>,
    ) -> std::io::Result<Launched> {
        let (host_end, worker_end) = UnixStream::pair()?;
        let shared = Shared::create(FIRST_SHARED_BYTES)?;
        // Owned by the closure below, so they stay open as long as the command may
        // still be spawned (a spawn the caller gave up waiting for runs later).
        let fds = [above_channel(&worker_end)?, above_channel(shared.fd())?];
        let mut command = Command::new(program);
        command.arg(WORKER_ARG);
        if network {
            command.arg(HOST_NETWORK_ARG);
        }
        command
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // `dup2`, which is async-signal-safe. The sources are descriptors above 9
        // (see `above_channel`) that the closure owns, so they are open whenever it
        // runs; the targets are 3 and 4, so no move overwrites a source still to be
        // moved; `dup2` leaves the new descriptors without close-on-exec, so exactly
        // these two reach the worker.
        unsafe {
            command.pre_exec(move || {
                for (source, target) in fds.iter().zip([CONTROL_FD, SHARED_FD]) {
                    if libc::dup2(source.as_raw_fd(), target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = spawn(command)?;
        Ok(Launched {
            program: program.to_owned(),
            child,
            control: host_end,
            shared,
        })
    }

    /// Whether the process still runs (it may have been killed while it waited).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills and reaps a worker that will not be used.
    pub fn discard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Duplicates `fd` above the descriptor numbers the worker uses, so moving it into
/// place in the child cannot overwrite another of them.
fn above_channel(fd: impl std::os::fd::AsFd) -> std::io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 10)?)
}

/// The launched workers waiting for a plugin, at most one per program, and the
/// programs one is being launched for.
#[derive(Default)]
struct Pool {
    waiting: Vec<Launched>,
    launching: Vec<PathBuf>,
}

/// The pool, and the condition its changes signal.
fn pool_and_change() -> &'static (Mutex<Pool>, Condvar) {
    static POOL: OnceLock<(Mutex<Pool>, Condvar)> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

fn pool() -> MutexGuard<'static, Pool> {
    pool_and_change()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// How long a start waits for a worker being launched ahead before it launches one
/// itself (a launch takes a few milliseconds; one under way is nearer done).
const LAUNCH_WAIT: Duration = Duration::from_millis(250);

/// The waiting worker of `program`, if there is one that still runs; if one is being
/// launched, waits for it (at most [`LAUNCH_WAIT`]).
pub(super) fn take(program: &Path) -> Option<Launched> {
    let (_, changed) = pool_and_change();
    let until = Instant::now() + LAUNCH_WAIT;
    let mut pool = pool();
    let mut launched = loop {
        if let Some(index) = pool.waiting.iter().position(|w| w.program == program) {
            break pool.waiting.swap_remove(index);
        }
        let now = Instant::now();
        if now >= until || !pool.launching.iter().any(|p| p == program) {
            return None;
        }
        pool = changed
            .wait_timeout(pool, until - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    };
    drop(pool);
    if launched.alive() {
        Some(launched)
    } else {
        launched.discard();
        None
    }
}

/// Launches a worker of `program` to wait for the next start, in the background,
/// unless one waits or is being launched already.
pub(super) fn order(program: &Path) {
    {
        let mut pool = pool();
        if pool.waiting.iter().any(|w| w.program == program)
            || pool.launching.iter().any(|p| p == program)
        {
            return;
        }
        pool.launching.push(program.to_owned());
    }
    let program = program.to_owned();
    let job_program = program.clone();
    let ordered = on_spawner(Box::new(move || {
        let launched = Launched::start_with(&job_program, false, |mut command| command.spawn());
        let mut pool = pool();
        pool.launching.retain(|p| *p != job_program);
        match launched {
            Ok(launched) => pool.waiting.push(launched),
            Err(err) => {
                tracing::debug!(program = %job_program.display(), error = %err, "cannot launch a worker process ahead of need")
            }
        }
        drop(pool);
        // A start waiting in `take` for this launch takes it now.
        pool_and_change().1.notify_all();
    }));
    if ordered.is_err() {
        pool().launching.retain(|p| *p != program);
        pool_and_change().1.notify_all();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on one thread of the host that lives as long as the process.
///
/// The worker's parent-death signal fires when the *thread* that forked it ends, not
/// the process: a worker spawned from a short-lived thread (a server's blocking pool,
/// a caller's own thread) would be killed when that thread exits. So every worker is
/// forked by the same thread, which never ends.
fn on_spawner(job: Job) -> std::io::Result<()> {
    static SPAWNER: OnceLock<std::io::Result<crossbeam_channel::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, incoming) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("plugbay-spawner".to_owned())
            .spawn(move || {
                for job in incoming {
                    job();
                }
            })
            .map(|_| jobs)
    });
    let spawner = match spawner {
        Ok(spawner) => spawner,
        Err(err) => return Err(std::io::Error::new(err.kind(), err.to_string())),
    };
    spawner
        .send(job)
        .map_err(|_| std::io::Error::other("the thread that spawns worker processes is gone"))
}

/// How long a start waits for the spawner thread to start its worker. A spawn takes
/// milliseconds; one that takes this long is stuck (the thread is then still busy with
/// it, or with a launch before it), and the start fails instead of waiting for ever.
const SPAWN_WAIT: Duration = Duration::from_secs(30);

/// Spawns `command` on the lasting spawner thread and waits for it, at most
/// [`SPAWN_WAIT`].
fn spawn_from_a_lasting_thread(command: Command) -> std::io::Result<Child> {
    // A rendezvous: the answer is taken only by a start still waiting for it.
    let (answer, spawned) = crossbeam_channel::bounded(0);
    let mut command = command;
    on_spawner(Box::new(move || {
        if let Err(unwanted) = answer.send(command.spawn()) {
            // The start gave up waiting: nobody will use this worker.
            if let Ok(mut child) = unwanted.into_inner() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }))?;
    match spawned.recv_timeout(SPAWN_WAIT) {
        Ok(spawned) => spawned,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the thread that spawns worker processes did not start one within {} s (it is stuck in an earlier spawn); retry, and report it if it lasts",
                SPAWN_WAIT.as_secs()
            ),
        )),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(std::io::Error::other(
            "the thread that spawns worker processes is gone",
        )),
    }
}
