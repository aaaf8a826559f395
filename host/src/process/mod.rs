//! Process isolation: a plugin instance in a worker process of its own.
//!
//! The worker is the host's own executable (or the program given with
//! [`Host::with_worker_program`](crate::Host::with_worker_program)), started with the
//! argument [`WORKER_ARG`] and an empty environment. Its `main` must call
//! [`serve_worker_if_asked`] first: the `plugbay` binary does. The host hands it two
//! descriptors at fixed numbers: the control socket ([`wire`]) and the shared memory
//! the batches cross ([`shm`]). Over the socket it then sends the sealed copy of the
//! library the host hashed (so the worker loads exactly the reviewed bytes, as a
//! worker thread does) and the setup. The worker confines itself as a whole process
//! ([`child`]) before it opens the library. A worker is launched before it is given
//! a plugin, so the host keeps one launched ahead for the next start ([`spare`]).
//!
//! What a worker process adds to a worker thread's confinement: the plugin cannot
//! read or write the host's memory or use the host's descriptors; a crash, an abort,
//! `exit()` or an allocation past its memory limit ends only the worker, and the
//! caller gets an error naming the cause; a call past its deadline gets the worker
//! killed (`SIGKILL`), so it uses no CPU after; its threads end with it, and it
//! cannot make processes (which would outlive it); its output reaches the host's log
//! rate-limited ([`output`]); it has no network at all unless a `net:` grant needs
//! it (a network namespace of its own, where the kernel allows one unprivileged).

pub(crate) mod child;
mod output;
mod shm;
mod spare;
mod wire;

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice, RStr};
use plugbay_api::abi::{ErrorKind, HostServicesBox, PluginError};
use serde::{Deserialize, Serialize};

use self::shm::Shared;
use self::spare::Launched;
use self::wire::{Message, PluginErrorWire, ReplyKind, RequestKind};
use crate::batch::Batch;
use crate::sandbox::{Confinement, SandboxMode};

/// How long before a reply is due the host stops sleeping and spins (as for a worker
/// thread: see `runtime`).
const WAKE_AHEAD: Duration = Duration::from_micros(200);

/// The argument that makes a program serve as a Plugbay worker process.
pub const WORKER_ARG: &str = "__plugbay-worker";

/// The second argument of a worker launched for a plugin that needs the host's
/// network (a `net:` grant): it does not enter a network namespace.
const HOST_NETWORK_ARG: &str = "--host-network";

/// Where the worker finds its control socket.
const CONTROL_FD: i32 = 3;
/// Where the worker finds the shared memory.
const SHARED_FD: i32 = 4;

/// Serves as a worker process if this process was started as one (its first
/// argument is [`WORKER_ARG`]), and then exits; returns at once otherwise.
///
/// Call it first thing in `main` of any program that starts plugins with
/// [`Isolation::Process`](crate::Isolation::Process): the host starts its worker
/// processes from its own executable.
///
/// # Examples
///
/// ```no_run
/// // First thing in `main`:
/// plugbay_host::serve_worker_if_asked();
/// // … then the program itself.
/// ```
pub fn serve_worker_if_asked() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == WORKER_ARG)
    {
        let code = child::serve();
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            70
        });
    }
}

/// Resource limits of a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Address space, in bytes (`RLIMIT_AS`; 8 GiB by default): an allocation past it
    /// fails, and the worker ends. It counts address space reserved, not memory used:
    /// a plugin with many threads (each with a stack and an allocator arena) may need
    /// more, and the SDK's allocator reserves 1 GiB at a time where the limit leaves
    /// room (past it, only what each allocation needs).
    pub memory_bytes: Option<u64>,
    /// Open descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// CPU seconds over the worker's whole life (`RLIMIT_CPU`); the deadline of each
    /// call is enforced separately.
    pub cpu_seconds: Option<u64>,
    /// Processes of the worker's user (`RLIMIT_NPROC`; not enforced for root, which
    /// the worker's seccomp filter covers by refusing new processes).
    pub processes: Option<u64>,
    /// The largest reply the host accepts from the worker, in bytes: a worker that
    /// claims more is killed, so it cannot make the host copy gigabytes.
    pub reply_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: Some(8 << 30),
            open_files: Some(256),
            cpu_seconds: None,
            processes: None,
            reply_bytes: 1 << 30,
        }
    }
}

/// What the host tells a worker process to load and how to confine it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Setup {
    pub id: String,
    pub library: PathBuf,
    pub sha256: String,
    pub manifest: String,
    pub granted: Vec<String>,
    pub plugin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub config: String,
    pub sandbox: SandboxMode,
    pub host_pid: u32,
    pub limits: Limits,
    /// Whether the plugin needs the host's network (a `net:` grant).
    pub network: bool,
    /// Only open the library and report its embedded manifest (no constructor, no
    /// `init`), then exit.
    #[serde(default)]
    pub inspect: bool,
    /// The most verbose level the host records from the plugin (a [`LogLevel`] as
    /// its number), `None` for none.
    #[serde(default)]
    pub log_level: Option<u8>,
}

/// What a started worker process reported.
pub(crate) struct Ready {
    pub api_version: semver::Version,
    pub confinement: Confinement,
    pub namespaces: Vec<String>,
    /// The embedded manifest (an inspection).
    pub manifest: Option<String>,
}

/// How many of a worker's last lines on stderr a crash's cause quotes (Rust's own
/// last words take two: a stack overflow's, for one).
const LAST_WORDS: usize = 2;

/// How long the host waits, after a worker process ended, for what it wrote last.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(200);

/// Why a call to a worker process gave no reply.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The deadline passed; the worker was killed.
    Timeout,
    /// The worker ended: how, in words.
    Crashed(String),
}

/// Why a worker process did not start.
#[derive(Debug)]
pub(crate) enum StartFault {
    /// The host could not start it.
    Spawn(std::io::Error),
    /// It said it failed: at which stage, why, and the plugin's error if it was one.
    Failed {
        stage: String,
        message: String,
        plugin_error: Option<PluginError>,
    },
    /// It did not answer before the deadline (it was killed).
    Timeout,
    /// It ended before it answered.
    Crashed(String),
}

/// A worker process, from the host's side.
pub(crate) struct ProcessWorker {
    id: String,
    child: Child,
    shared: Shared,
    /// Set when the control socket closes: the worker is gone.
    gone: Arc<AtomicBool>,
    /// The last bytes the worker wrote to stderr, for a crash's cause.
    last_words: Arc<Mutex<output::Tail>>,
    threads: Vec<JoinHandle<()>>,
    exited: Option<std::process::ExitStatus>,
    /// The largest reply accepted (`Limits::reply_bytes`).
    reply_limit: u64,
    /// A moving average of recent calls' durations, to sleep through most of a call.
    expected: Duration,
}

impl std::fmt::Debug for ProcessWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessWorker")
            .field("id", &self.id)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl ProcessWorker {
    /// Starts a worker process for `setup`, loading the sealed library `library`,
    /// with `services` answering its host-service calls. Returns once `init` ran.
    ///
    /// With `keep_spare`, it takes the worker launched ahead for `program` if one
    /// waits (see [`spare`]) and has the next one launched in the background; without
    /// it, it launches a worker of its own, whatever waits.
    pub fn start(
        program: &std::path::Path,
        setup: Setup,
        library: std::os::fd::BorrowedFd<'_>,
        services: HostServicesBox,
        timeout: Option<Duration>,
        keep_spare: bool,
    ) -> Result<(ProcessWorker, Ready), StartFault> {
        let id = setup.id.clone();
        let reply_limit = setup.limits.reply_bytes;
        // Workers launched ahead have entered a network namespace: a plugin that
        // needs the host's network gets a worker launched for it.
        let network = setup.network;
        let mut waiting = None;
        if keep_spare && !network {
            waiting = spare::take(program);
            spare::order(program);
        }
        let (mut child, host_end, shared) = loop {
            let from_pool = waiting.is_some();
            let launched = match waiting.take() {
                Some(launched) => launched,
                None => Launched::start(program, network).map_err(StartFault::Spawn)?,
            };
            // The library first: the worker takes it before it reads any frame. A
            // worker that waited and died since cannot take it: launch a fresh one.
            match wire::send_descriptor(&launched.control, library) {
                Err(_) if from_pool => launched.discard(),
                // A fresh worker that cannot take it has ended: its setup cannot be
                // sent either, and that is reported below with how it ended.
                _ => break (launched.child, launched.control, launched.shared),
            }
        };

        let gone = Arc::new(AtomicBool::new(false));
        let last_words = Arc::new(Mutex::new(output::Tail::default()));
        let mut threads = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            threads.push(output::relay(id.clone(), "stdout", stdout, None));
        }
        if let Some(stderr) = child.stderr.take() {
            threads.push(output::relay(
                id.clone(),
                "stderr",
                stderr,
                Some(last_words.clone()),
            ));
        }
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let mut writer = host_end.try_clone().map_err(StartFault::Spawn)?;
        let sent = wire::send(&mut writer, &Message::Setup(Box::new(setup)), &[]);
        threads.push(serve_services(
            id.clone(),
            host_end,
            writer,
            services,
            gone.clone(),
            ready_tx,
        ));
        let mut worker = ProcessWorker {
            id,
            child,
            shared,
            gone,
            last_words,
            threads,
            exited: None,
            reply_limit,
            expected: Duration::ZERO,
        };
        if sent.is_err() {
            // The worker closed its end before it read its setup: it is gone.
            return Err(StartFault::Crashed(worker.exit_cause(program)));
        }
        let ready = match timeout.and_then(|t| Instant::now().checked_add(t)) {
            Some(deadline) => ready_rx
                .recv_deadline(deadline)
                .map_err(|err| err.is_timeout()),
            None => ready_rx.recv().map_err(|_| false),
        };
        match ready {
            Ok(Ok(ready)) => Ok((worker, ready)),
            Ok(Err(StartFault::Crashed(_))) | Err(false) => {
                // The control channel closed before the worker said it was ready.
                Err(StartFault::Crashed(worker.exit_cause(program)))
            }
            Ok(Err(fault)) => {
                worker.reap(Duration::from_secs(1));
                Err(fault)
            }
            Err(true) => {
                worker.kill();
                Err(StartFault::Timeout)
            }
        }
    }

    /// How a worker that ended before it was ready ended, with a hint when the
    /// program exited cleanly without serving (it is not a worker program).
    fn exit_cause(&mut self, program: &std::path::Path) -> String {
        let mut cause = self.reap(Duration::from_secs(1));
        if self.exited.and_then(|status| status.code()) == Some(0) {
            cause.push_str(&format!(
                "; {} did not serve as a worker: its `main` must call `plugbay_host::serve_worker_if_asked()` first, or give the host a program that does (`Host::with_worker_program`)",
                program.display()
            ));
        }
        cause
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `batch` through `process`, until `deadline`.
    pub fn process(
        &mut self,
        batch: &Batch,
        deadline: Option<Instant>,
    ) -> Result<Result<Vec<u8>, PluginError>, Fault> {
        let (kind, bytes) = self.call(RequestKind::Process, batch.as_bytes(), deadline)?;
        match kind {
            Some(ReplyKind::Batch) => Ok(Ok(bytes)),
            Some(ReplyKind::Error) => Ok(Err(plugin_error(&bytes))),
            _ => Err(self.broken("answered process with another reply")),
        }
    }

    /// Runs `cleanup`, until `deadline`.
    pub fn cleanup(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<RResult<(), PluginError>, Fault> {
        let (kind, bytes) = self.call(RequestKind::Cleanup, &[], deadline)?;
        match kind {
            Some(ReplyKind::Done) => Ok(RResult::ROk(())),
            Some(ReplyKind::Error) => Ok(RResult::RErr(plugin_error(&bytes))),
            _ => Err(self.broken("answered cleanup with another reply")),
        }
    }

    /// Tells the worker to drop the instance and exit, and waits for it until
    /// `deadline`; kills it past that.
    pub fn stop(&mut self, deadline: Option<Instant>) {
        if self.exited.is_some() {
            return;
        }
        if !self.gone.load(Ordering::Acquire) {
            let header = self.shared.header();
            header
                .request_kind
                .store(RequestKind::Stop as u32, Ordering::Release);
            shm::ring(&header.request_seq, &header.worker_sleeps);
        }
        let wait = deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(5));
        self.reap(wait);
    }

    /// Kills the worker (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.reap(Duration::from_secs(5));
        }
    }

    fn broken(&mut self, why: &str) -> Fault {
        self.kill();
        Fault::Crashed(format!("the worker process {why}"))
    }

    fn call(
        &mut self,
        kind: RequestKind,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(Option<ReplyKind>, Vec<u8>), Fault> {
        if self.gone.load(Ordering::Acquire) {
            return Err(Fault::Crashed(self.reap(Duration::from_secs(1))));
        }
        if let Err(err) = self.shared.write(bytes) {
            return Err(self.broken(&format!("could not be given the batch: {err}")));
        }
        let header = self.shared.header();
        header
            .request_len
            .store(bytes.len() as u64, Ordering::Release);
        header.request_kind.store(kind as u32, Ordering::Release);
        let seen = header.reply_seq.load(Ordering::Acquire);
        let sent = Instant::now();
        shm::ring(&header.request_seq, &header.worker_sleeps);
        // Sleep through most of a call whose length the last calls tell, and spin
        // for the rest: a sleeper woken by the worker would pay a wake-up (tens of
        // microseconds on a virtual machine) on every call.
        let header = self.shared.header();
        let gone = self.gone.clone();
        let mut replied = false;
        if let Some(nap) = self.expected.checked_sub(WAKE_AHEAD) {
            // Asleep on the doorbell: a reply that comes early still wakes it.
            let until = deadline.map_or(sent + nap, |deadline| deadline.min(sent + nap));
            replied = shm::wait(
                &header.reply_seq,
                seen,
                &header.host_sleeps,
                Some(until),
                Duration::from_millis(10),
                Duration::ZERO,
                || gone.load(Ordering::Acquire),
            );
        }
        let replied = replied
            || shm::wait(
                &header.reply_seq,
                seen,
                &header.host_sleeps,
                deadline,
                Duration::from_millis(10),
                self.expected.min(WAKE_AHEAD) + WAKE_AHEAD,
                || gone.load(Ordering::Acquire),
            );
        if replied {
            self.expected = (self.expected * 3 + sent.elapsed()) / 4;
        }
        if !replied {
            if self.gone.load(Ordering::Acquire) {
                return Err(Fault::Crashed(self.reap(Duration::from_secs(1))));
            }
            self.kill();
            return Err(Fault::Timeout);
        }
        let header = self.shared.header();
        let kind = ReplyKind::from_u32(header.reply_kind.load(Ordering::Acquire));
        let len = header.reply_len.load(Ordering::Acquire);
        if len > self.reply_limit {
            let limit = self.reply_limit;
            return Err(self.broken(&format!(
                "claimed a reply of {len} bytes, more than the limit of {limit} bytes (`Limits::reply_bytes`)"
            )));
        }
        match self.shared.read(len) {
            Ok(bytes) => Ok((kind, bytes)),
            Err(err) => Err(self.broken(&format!("wrote a reply that cannot be read: {err}"))),
        }
    }

    /// Waits up to `wait` for the worker to exit (killing it after that), and says
    /// how it ended.
    fn reap(&mut self, wait: Duration) -> String {
        let status = match self.exited {
            Some(status) => status,
            None => {
                let until = Instant::now() + wait;
                let status = loop {
                    match self.child.try_wait() {
                        Ok(Some(status)) => break Some(status),
                        Ok(None) if Instant::now() < until => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Ok(None) => {
                            let _ = self.child.kill();
                            break self.child.wait().ok();
                        }
                        Err(_) => break None,
                    }
                };
                let Some(status) = status else {
                    return "the worker process could not be waited for".to_owned();
                };
                self.exited = Some(status);
                // The output and service threads end when the worker's end of their
                // pipes and socket closes. Something else may hold them open (a
                // process the worker made where new processes were not refused): do
                // not wait for it; the threads end when it does.
                let until = Instant::now() + LAST_WORDS_WAIT;
                while Instant::now() < until && !self.threads.iter().all(|t| t.is_finished()) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for thread in self.threads.drain(..) {
                    if thread.is_finished() {
                        let _ = thread.join();
                    }
                }
                status
            }
        };
        let mut cause = describe(status);
        let words = self
            .last_words
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_lines(LAST_WORDS);
        if !words.is_empty() {
            cause.push_str(&format!(" (its last words: {})", words.join(" / ")));
        }
        cause
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn plugin_error(bytes: &[u8]) -> PluginError {
    match serde_json::from_slice::<PluginErrorWire>(bytes) {
        Ok(error) => PluginError::new(ErrorKind(error.kind), error.message),
        Err(err) => PluginError::new(
            ErrorKind::FAILED,
            format!("the worker process sent an unreadable error: {err}"),
        ),
    }
}

/// How a worker process ended, in words.
fn describe(status: std::process::ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGSEGV => "SIGSEGV (a segmentation fault)",
            libc::SIGABRT => "SIGABRT (it aborted)",
            libc::SIGKILL => "SIGKILL",
            libc::SIGBUS => "SIGBUS (a bus error)",
            libc::SIGILL => "SIGILL (an illegal instruction)",
            libc::SIGFPE => "SIGFPE (an arithmetic fault)",
            libc::SIGXCPU => "SIGXCPU (it used up its CPU time)",
            libc::SIGSYS => "SIGSYS (a forbidden system call)",
            _ => return format!("the worker process was killed by signal {signal}"),
        };
        return format!("the worker process was killed by {name}");
    }
    match status.code() {
        Some(code) => format!("the worker process exited with status {code}"),
        None => "the worker process ended".to_owned(),
    }
}

/// Answers the worker's host-service calls (checked against its permissions by
/// `services`), logs what it logs, and passes on its ready or failed message.
fn serve_services(
    id: String,
    mut reader: UnixStream,
    mut writer: UnixStream,
    services: HostServicesBox,
    gone: Arc<AtomicBool>,
    ready: crossbeam_channel::Sender<Result<Ready, StartFault>>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("plugbay-services-{id}"))
        .spawn(move || {
            // Log lines from the plugin, rate-limited like its output: a worker cannot
            // flood the host's log through its services either.
            let (mut rate, mut dropped) = (output::Rate::new(Instant::now()), 0u64);
            loop {
                let (message, body) = match wire::receive(&mut reader) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(plugin = %id, error = %err, "the worker process broke its control channel");
                        break;
                    }
                };
                let reply = match message {
                    Message::Ready {
                        api_version,
                        confinement,
                        namespaces,
                        manifest,
                    } => {
                        let api_version = semver::Version::parse(&api_version)
                            .unwrap_or_else(|_| semver::Version::new(0, 0, 0));
                        let _ = ready.try_send(Ok(Ready {
                            api_version,
                            confinement,
                            namespaces,
                            manifest,
                        }));
                        continue;
                    }
                    Message::Failed {
                        stage,
                        message,
                        plugin_error,
                    } => {
                        let plugin_error = plugin_error
                            .map(|error| PluginError::new(ErrorKind(error.kind), error.message));
                        let _ = ready.try_send(Err(StartFault::Failed {
                            stage,
                            message,
                            plugin_error,
                        }));
                        continue;
                    }
                    Message::Log {
                        level,
                        target,
                        message,
                    } => {
                        let level = wire::log_level(level);
                        if rate.roll(Instant::now()) && dropped > 0 {
                            tracing::warn!(plugin = %id, dropped, "plugin log lines dropped (more than {} a second)", output::LINES_PER_SECOND);
                            dropped = 0;
                        }
                        if rate.full() {
                            dropped += 1;
                        } else {
                            rate.take();
                            services.log(
                                level,
                                RStr::from_str(&target),
                                RStr::from_str(&message),
                            );
                        }
                        continue;
                    }
                    Message::StoreGet { key } => match services.store_get(RStr::from_str(&key)) {
                        RResult::ROk(value) => match value.into_option() {
                            Some(value) => (Message::Value { found: true }, value.into_vec()),
                            None => (Message::Value { found: false }, Vec::new()),
                        },
                        RResult::RErr(error) => denied(error),
                    },
                    Message::StorePut { key } => {
                        match services.store_put(RStr::from_str(&key), RSlice::from_slice(&body)) {
                            RResult::ROk(()) => (Message::Done, Vec::new()),
                            RResult::RErr(error) => denied(error),
                        }
                    }
                    Message::StoreDelete { key } => {
                        match services.store_delete(RStr::from_str(&key)) {
                            RResult::ROk(existed) => (Message::Removed { existed }, Vec::new()),
                            RResult::RErr(error) => denied(error),
                        }
                    }
                    other => {
                        tracing::warn!(plugin = %id, message = ?other, "the worker process sent a message only the host sends");
                        break;
                    }
                };
                if wire::send(&mut writer, &reply.0, &reply.1).is_err() {
                    break;
                }
            }
            gone.store(true, Ordering::Release);
            let _ = ready.try_send(Err(StartFault::Crashed(String::new())));
        })
        .expect("a thread can be spawned for a worker's services")
}

fn denied(error: PluginError) -> (Message, Vec<u8>) {
    (
        Message::Denied {
            error: PluginErrorWire {
                kind: error.kind.0,
                message: error.message.into(),
            },
        },
        Vec::new(),
    )
}
