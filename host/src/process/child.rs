//! The worker process: confines itself, loads the plugin and serves the host.
//!
//! As soon as it starts, it keeps only its channel's descriptors (control socket,
//! shared memory) and its standard streams, which the host reads, and it dies with
//! its parent (a parent-death signal). It may then wait, launched ahead of need (see
//! `spare`), until the host gives it the sealed copy of a library and its setup.
//!
//! Then, in order, before the library is opened: it checks that its parent is still
//! the host; it applies its resource limits; it enters new user and network
//! namespaces where the kernel lets it (no network namespace if a `net:` grant needs
//! the host's network); it refuses itself new processes (a seccomp filter, see
//! [`refuse_new_processes`]); and it confines its one thread with landlock and
//! seccomp, which every thread it starts later inherits, so the whole process is
//! confined. Its environment was emptied by the host when it was spawned.
//!
//! Then it loads the sealed library the host hashed, builds the instance, calls
//! `init` with host services that are requests over the control socket, says it is
//! ready, and answers requests from shared memory until told to stop. The plugin runs
//! on the process's main thread.

use std::borrow::Cow;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec};
use plugbay_api::abi::{
    ErrorKind, HostServices, HostServices_TO, LogLevel, PluginContext, PluginError,
};
use plugbay_api::manifest::{Manifest, Permission};

use super::shm::{self, Shared};
use super::wire::{self, Message, PluginErrorWire, ReplyKind, RequestKind};
use super::{Setup, CONTROL_FD, HOST_NETWORK_ARG, SHARED_FD};
use crate::call::load_and_init;
use crate::image::Image;
use crate::loader;
use crate::runtime::StartError;
use crate::sandbox::{self, Rules, SandboxMode};

/// Runs the worker on the descriptors the host gave it. Never returns to `main`'s
/// caller code: its result is the process's exit code.
pub(crate) fn serve() -> ExitCode {
    // SAFETY: the host put these descriptors at these numbers before it executed this
    // process (see `spare::Launched::start`), and nothing in this process has taken
    // ownership of them yet.
    let (control, shared) = unsafe {
        (
            UnixStream::from_raw_fd(CONTROL_FD),
            OwnedFd::from_raw_fd(SHARED_FD),
        )
    };
    let host_network = std::env::args_os()
        .nth(2)
        .is_some_and(|arg| arg == HOST_NETWORK_ARG);
    match launch(host_network).and_then(|namespaces| run(control, shared, namespaces)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "plugbay worker: {message}");
            ExitCode::from(70)
        }
    }
}

/// What the worker does as soon as it starts, before it knows its plugin (it may
/// wait for one, launched ahead of need): it keeps only its standard streams and its
/// channel, dies with the thread of the host that forked it, and enters new user and
/// network namespaces, unless it was launched for a plugin that needs the host's
/// network (which enters a user namespace only, once it has its setup). Returns the
/// namespaces it entered.
fn launch(host_network: bool) -> Result<Option<Vec<String>>, String> {
    // SAFETY: no object of this process owns a descriptor above the channel's: the
    // process has just started and opened nothing (the host empties its environment
    // and gives it only these descriptors, but inherited ones may exist).
    let closed = unsafe { libc::close_range(SHARED_FD as u32 + 1, u32::MAX, 0) };
    if closed != 0 {
        return Err(format!(
            "cannot close inherited descriptors: {}",
            std::io::Error::last_os_error()
        ));
    }
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    Ok((!host_network).then(|| enter_namespaces(false)))
}

fn run(
    control: UnixStream,
    shared: OwnedFd,
    namespaces: Option<Vec<String>>,
) -> Result<(), String> {
    // The sealed library comes first, then the setup.
    let library = match wire::receive_descriptor(&control) {
        Ok(library) => library,
        // The host let this worker go unused (it exits, or discarded it).
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(err) => return Err(format!("cannot receive the library: {err}")),
    };
    let mut reader = control.try_clone().map_err(|e| e.to_string())?;
    let setup = match wire::receive(&mut reader) {
        Ok(Some((Message::Setup(setup), _))) => *setup,
        Ok(_) => return Err("the host sent no setup".to_owned()),
        Err(err) => return Err(format!("cannot read the setup: {err}")),
    };
    let control = std::sync::Arc::new(Mutex::new(control));
    let fail = |stage: &str, message: String, plugin_error: Option<PluginErrorWire>| {
        let mut out = control.lock().unwrap_or_else(|e| e.into_inner());
        let _ = wire::send(
            &mut *out,
            &Message::Failed {
                stage: stage.to_owned(),
                message: message.clone(),
                plugin_error,
            },
            &[],
        );
        message
    };

    let namespaces = match confine_process(&setup, namespaces) {
        Ok(namespaces) => namespaces,
        Err(message) => return Err(fail("sandbox", message, None)),
    };
    let granted: Vec<Permission> = setup
        .granted
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: plugbay_api::manifest::PermissionError| fail("setup", e.to_string(), None))?;
    let rules = Rules::new(
        &setup.id,
        &setup.library,
        &granted,
        &setup.plugin_dir,
        &setup.data_dir,
    )
    .map_err(|e| fail("sandbox", e.to_string(), None))?;
    let confinement = sandbox::confine_current_thread(&setup.id, &rules, setup.sandbox)
        .map_err(|e| fail("sandbox", e.to_string(), None))?;

    let image = Image::sealed(setup.library.clone(), setup.sha256.clone(), library);
    if setup.inspect {
        // Only read what the library embeds: its initializers run (confined, here),
        // its constructor and `init` do not.
        let loaded = loader::open(&image).map_err(|e| fail("load", e.to_string(), None))?;
        let mut out = control.lock().unwrap_or_else(|e| e.into_inner());
        wire::send(
            &mut *out,
            &Message::Ready {
                api_version: loaded.api_version.to_string(),
                confinement,
                namespaces,
                manifest: Some(loaded.manifest.to_json()),
            },
            &[],
        )
        .map_err(|e| format!("cannot report the inspection: {e}"))?;
        return Ok(());
    }
    let manifest =
        Manifest::parse(&setup.manifest).map_err(|e| fail("setup", e.to_string(), None))?;
    let services = ChildServices {
        control: control.clone(),
    };
    let context = PluginContext {
        plugin_id: RString::from(setup.id.as_str()),
        config: RString::from(setup.config.as_str()),
        plugin_dir: RString::from(setup.plugin_dir.to_string_lossy().as_ref()),
        data_dir: RString::from(setup.data_dir.to_string_lossy().as_ref()),
        services: HostServices_TO::from_ptr(
            abi_stable::std_types::RArc::new(services),
            abi_stable::sabi_trait::TD_Opaque,
        ),
        log_level: setup.log_level.map(wire::log_level).into(),
    };
    let (mut instance, api_version) = match load_and_init(&setup.id, &image, &manifest, context) {
        Ok(started) => started,
        Err(err) => {
            let plugin_error = match &err {
                StartError::Init { error, .. } | StartError::Constructor { error, .. } => {
                    Some(PluginErrorWire {
                        kind: error.kind.0,
                        message: error.message.to_string(),
                    })
                }
                _ => None,
            };
            let stage = match &err {
                StartError::Init { .. } | StartError::InitPanicked { .. } => "init",
                StartError::Constructor { .. } => "constructor",
                _ => "load",
            };
            return Err(fail(stage, err.to_string(), plugin_error));
        }
    };
    // Read the request doorbell before saying ready: the host may ring it as soon as
    // it hears, and a ring read as the starting point would never be answered.
    let mut shared =
        Shared::open(shared).map_err(|e| format!("cannot map the shared memory: {e}"))?;
    let mut seen = shared.header().request_seq.load(Ordering::Acquire);
    // The plugin writes every output into this buffer, reused from batch to batch.
    let mut output = RVec::new();
    {
        let mut out = control.lock().unwrap_or_else(|e| e.into_inner());
        wire::send(
            &mut *out,
            &Message::Ready {
                api_version: api_version.to_string(),
                confinement,
                namespaces,
                manifest: None,
            },
            &[],
        )
        .map_err(|e| format!("cannot say it is ready: {e}"))?;
    }

    loop {
        let header = shared.header();
        let rang = shm::wait(
            &header.request_seq,
            seen,
            &header.worker_sleeps,
            None,
            Duration::from_secs(1),
            NEXT_REQUEST_SPIN,
            || false,
        );
        if !rang {
            continue;
        }
        seen = shared.header().request_seq.load(Ordering::Acquire);
        let kind = RequestKind::from_u32(shared.header().request_kind.load(Ordering::Acquire));
        let (reply, bytes): (ReplyKind, Cow<'_, [u8]>) = match kind {
            Some(RequestKind::Process) => {
                let len = shared.header().request_len.load(Ordering::Acquire);
                let batch = shared
                    .slice(len)
                    .map_err(|e| format!("cannot read the batch: {e}"))?;
                output.clear();
                match instance.process_into(RSlice::from_slice(batch), &mut output) {
                    ROk(()) => (ReplyKind::Batch, Cow::Borrowed(output.as_slice())),
                    RErr(error) => error_reply(&error),
                }
            }
            Some(RequestKind::Cleanup) => match instance.cleanup() {
                ROk(()) => (ReplyKind::Done, Cow::Borrowed(&[][..])),
                RErr(error) => error_reply(&error),
            },
            Some(RequestKind::Stop) | None => {
                drop(instance);
                return Ok(());
            }
        };
        let panicked = reply == ReplyKind::Error && bytes_are_panic(&bytes);
        shared
            .write(&bytes)
            .map_err(|e| format!("cannot write the reply: {e}"))?;
        let header = shared.header();
        header
            .reply_len
            .store(bytes.len() as u64, Ordering::Release);
        header.reply_kind.store(reply as u32, Ordering::Release);
        shm::ring(&header.reply_seq, &header.host_sleeps);
        if panicked {
            // After a panic the instance's state is unknown: never call it again. The
            // host marks it failed and stops this process.
            std::mem::forget(instance);
            return Ok(());
        }
    }
}

/// How long the worker looks for the next request after a reply before it sleeps:
/// a host that streams batches sends the next one after checking the last (about
/// 0.15 ms for 1,000 records), and a worker caught awake saves it a wake-up. The
/// spin yields its core to any thread that wants it.
const NEXT_REQUEST_SPIN: Duration = Duration::from_micros(300);

fn error_reply(error: &PluginError) -> (ReplyKind, Cow<'static, [u8]>) {
    let wire = PluginErrorWire {
        kind: error.kind.0,
        message: error.message.to_string(),
    };
    (
        ReplyKind::Error,
        Cow::Owned(serde_json::to_vec(&wire).unwrap_or_default()),
    )
}

fn bytes_are_panic(bytes: &[u8]) -> bool {
    serde_json::from_slice::<PluginErrorWire>(bytes)
        .is_ok_and(|error| ErrorKind(error.kind) == ErrorKind::PANICKED)
}

/// Everything but landlock and seccomp: descriptors, parent death, limits,
/// namespaces. Returns the namespaces entered.
fn confine_process(setup: &Setup, entered: Option<Vec<String>>) -> Result<Vec<String>, String> {
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32)
        != Some(setup.host_pid)
    {
        return Err("the host exited before the worker started".to_owned());
    }
    for (resource, name, limit) in [
        (
            rustix::process::Resource::As,
            "address space",
            setup.limits.memory_bytes,
        ),
        (
            rustix::process::Resource::Nofile,
            "open files",
            setup.limits.open_files,
        ),
        (
            rustix::process::Resource::Cpu,
            "cpu time",
            setup.limits.cpu_seconds,
        ),
        (
            rustix::process::Resource::Nproc,
            "processes",
            setup.limits.processes,
        ),
        (rustix::process::Resource::Core, "core dumps", Some(0)),
    ] {
        if let Some(limit) = limit {
            rustix::process::setrlimit(
                resource,
                rustix::process::Rlimit {
                    current: Some(limit),
                    maximum: Some(limit),
                },
            )
            .map_err(|e| format!("cannot limit {name} to {limit}: {e}"))?;
        }
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let namespaces = match entered {
        // Launched ahead: it entered its namespaces then, with no network.
        Some(_) if setup.network => {
            return Err(
                "a worker launched without network cannot serve a plugin granted `net:`".to_owned(),
            )
        }
        Some(entered) => entered,
        None => enter_namespaces(setup.network),
    };
    if let Err(message) = refuse_new_processes() {
        if setup.sandbox == SandboxMode::Enforce {
            return Err(message);
        }
        let _ = writeln!(
            std::io::stderr(),
            "plugbay worker: {message}; going on without it (sandbox mode allows degraded)"
        );
    }
    Ok(namespaces)
}

/// Refuses the whole worker process new processes, with a seccomp filter that every
/// thread shares: `fork`, `vfork` and `clone` without `CLONE_THREAD` fail with
/// `EPERM`; `clone3`, whose flags a filter cannot read, fails with `ENOSYS`, so libc
/// makes threads with `clone` instead. Threads are made as before.
///
/// Why: a forked child does not inherit the parent-death signal, so it would outlive
/// the worker, as root no `RLIMIT_NPROC` bounds how many there are, and each holds
/// the worker's control socket and output pipes open. So a fork bomb is refused at
/// its first fork, and nothing the plugin runs outlives its worker.
fn refuse_new_processes() -> Result<(), String> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::collections::BTreeMap;

    fn failed(e: impl std::fmt::Display) -> String {
        format!("cannot refuse new processes: {e}")
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(failed)?;
    let without_thread = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .map_err(failed)?])
    .map_err(failed)?;
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    refused.insert(libc::SYS_clone, vec![without_thread]);
    let mut absent: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    absent.insert(libc::SYS_clone3, Vec::new());
    #[cfg(target_arch = "x86_64")]
    {
        refused.insert(libc::SYS_fork, Vec::new());
        refused.insert(libc::SYS_vfork, Vec::new());
        // The same calls through the x32 ABI's numbers, which the filters would
        // otherwise not see as these calls.
        const X32: i64 = 0x4000_0000;
        for call in [
            libc::SYS_clone,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_clone3,
        ] {
            refused.insert(X32 | call, Vec::new());
        }
    }
    for (rules, errno) in [(refused, libc::EPERM), (absent, libc::ENOSYS)] {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(failed)?;
        let program = BpfProgram::try_from(filter).map_err(failed)?;
        seccompiler::apply_filter_all_threads(&program).map_err(failed)?;
    }
    Ok(())
}

/// Enters a new user namespace (mapping this process's user and group to
/// themselves) and, unless the plugin needs the host's network, a new network
/// namespace with no interface up: no network at all, UDP included. Where the
/// kernel refuses (unprivileged user namespaces turned off), the process goes on in
/// the host's namespaces and the status says which it entered.
fn enter_namespaces(network: bool) -> Vec<String> {
    use rustix::thread::UnshareFlags;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut flags = UnshareFlags::NEWUSER;
    if !network {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: the process has one thread and the flags are namespaces only (no
    // `CLONE_FILES`/`CLONE_FS` sharing changes that other threads could observe).
    if unsafe { rustix::thread::unshare_unsafe(flags) }.is_err() {
        // Without a user namespace, a new network namespace needs privileges this
        // process may still have (a root host): try it alone.
        // SAFETY: as above.
        if !network && unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.is_ok() {
            return vec!["net".to_owned()];
        }
        return Vec::new();
    }
    let _ = std::fs::write("/proc/self/setgroups", "deny");
    let _ = std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"));
    let _ = std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"));
    let mut entered = vec!["user".to_owned()];
    if !network {
        entered.push("net".to_owned());
    }
    entered
}

/// Host services as requests to the host over the control socket.
struct ChildServices {
    control: std::sync::Arc<Mutex<UnixStream>>,
}

impl ChildServices {
    fn call(&self, message: &Message, body: &[u8]) -> Result<(Message, Vec<u8>), PluginError> {
        let lost = |err: std::io::Error| {
            PluginError::new(
                ErrorKind::FAILED,
                format!("the host's services are unreachable: {err}"),
            )
        };
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        wire::send(&mut *control, message, body).map_err(lost)?;
        match wire::receive(&mut *control).map_err(lost)? {
            Some((Message::Denied { error }, _)) => {
                Err(PluginError::new(ErrorKind(error.kind), error.message))
            }
            Some(reply) => Ok(reply),
            None => Err(lost(std::io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

impl HostServices for ChildServices {
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let _ = wire::send(
            &mut *control,
            &Message::Log {
                level: level as u8,
                target: target.as_str().to_owned(),
                message: message.as_str().to_owned(),
            },
            &[],
        );
    }

    fn store_get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        match self.call(
            &Message::StoreGet {
                key: key.as_str().to_owned(),
            },
            &[],
        ) {
            Ok((Message::Value { found: true }, body)) => ROk(ROption::RSome(RVec::from(body))),
            Ok((Message::Value { found: false }, _)) => ROk(ROption::RNone),
            Ok(_) => RErr(unexpected()),
            Err(error) => RErr(error),
        }
    }

    fn store_put(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError> {
        match self.call(
            &Message::StorePut {
                key: key.as_str().to_owned(),
            },
            value.as_slice(),
        ) {
            Ok((Message::Done, _)) => ROk(()),
            Ok(_) => RErr(unexpected()),
            Err(error) => RErr(error),
        }
    }

    fn store_delete(&self, key: RStr<'_>) -> RResult<bool, PluginError> {
        match self.call(
            &Message::StoreDelete {
                key: key.as_str().to_owned(),
            },
            &[],
        ) {
            Ok((Message::Removed { existed }, _)) => ROk(existed),
            Ok(_) => RErr(unexpected()),
            Err(error) => RErr(error),
        }
    }
}

fn unexpected() -> PluginError {
    PluginError::new(
        ErrorKind::FAILED,
        "the host answered a service call with another reply",
    )
}
