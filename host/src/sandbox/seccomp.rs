//! The seccomp filter of a confined thread: the system calls landlock does not cover.
//!
//! Landlock (ABI 6) checks opening files and TCP ports, but not changing a file's
//! metadata, connecting to a unix socket at a path, making device nodes, nor the
//! kernel interfaces that reach around a sandbox (io_uring, bpf, ptrace, namespaces,
//! mounts, keyrings, modules). This filter refuses those with `EPERM` and allows
//! everything else, so the host's own use of a worker thread (channels, futexes,
//! timers, logging, threads) keeps working.
//!
//! The filter is installed on the calling thread only (never with `TSYNC`), after
//! landlock and before the library opens; threads the plugin spawns inherit it.
//! Built with `seccompiler`: a call from another architecture than the host's (a
//! 32-bit `int 0x80` on x86_64) ends the process, as seccompiler's architecture check
//! does; x32 calls on x86_64 are refused like their 64-bit twins where the kernel
//! serves x32 at all.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

// System calls newer than the `libc` crate's tables. Since Linux 5.1 a new system
// call has the same number on every architecture seccompiler supports.
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;
const SYS_OPEN_TREE_ATTR: i64 = 467;
const SYS_FILE_SETATTR: i64 = 469;

/// `FS_IOC_SETFLAGS` (`chattr`), its 32-bit form, and `FS_IOC_FSSETXATTR`.
const FS_IOC_SETFLAGS: u64 = 0x4008_6602;
const FS_IOC32_SETFLAGS: u64 = 0x4004_6602;
const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;

/// The namespace flags of `clone`, which would create namespaces like `unshare`.
const CLONE_NAMESPACES: &[i32] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeccompError {
    /// seccompiler refused the filter, or does not know this architecture.
    #[error("cannot build the seccomp filter for {arch}: {source}")]
    Build {
        arch: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {source}")]
    Install {
        #[source]
        source: seccompiler::Error,
    },
}

/// Installs the filter on the calling thread (inherited by the threads it spawns).
///
/// The filters are built once per process. Installing them adds 0.4 to 1.1 ms to a
/// plugin's start (measured on a loaded 2-core VM): the kernel compiles them and walks
/// the program for every system call number to cache those it always allows, so the
/// calls a worker makes all the time (futex, read, write) cost nothing afterwards.
pub(crate) fn confine_current_thread() -> Result<(), SeccompError> {
    static BUILT: std::sync::OnceLock<[BpfProgram; 2]> = std::sync::OnceLock::new();
    let built = match BUILT.get() {
        Some(built) => built,
        None => {
            let built = filters()?;
            BUILT.get_or_init(|| built)
        }
    };
    for filter in built {
        seccompiler::apply_filter(filter).map_err(|source| SeccompError::Install { source })?;
    }
    Ok(())
}

/// The two filters: refusals with `EPERM`, and `clone3` with `ENOSYS`.
///
/// `clone3` takes its flags in memory seccomp cannot read, so it is answered "not
/// implemented": the C library then falls back to `clone`, whose flags the first
/// filter checks. Threads and child processes keep working.
fn filters() -> Result<[BpfProgram; 2], SeccompError> {
    let arch = std::env::consts::ARCH;
    let build = |source| SeccompError::Build { arch, source };
    let target = TargetArch::try_from(arch).map_err(build)?;
    let refused = SeccompFilter::new(
        refused_calls().map_err(build)?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .and_then(BpfProgram::try_from)
    .map_err(build)?;
    let clone3 = SeccompFilter::new(
        with_x32_twins(vec![(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target,
    )
    .and_then(BpfProgram::try_from)
    .map_err(build)?;
    Ok([refused, clone3])
}

/// Every refused call: unconditionally (no rules) or when one of its rules matches.
fn refused_calls() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let arg = |index: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
    };
    let device = |mode_arg: u8| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        [libc::S_IFCHR, libc::S_IFBLK]
            .into_iter()
            .map(|kind| {
                SeccompRule::new(vec![arg(
                    mode_arg,
                    SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                    u64::from(kind),
                )?])
            })
            .collect()
    };

    let mut calls: Vec<(i64, Vec<SeccompRule>)> =
        ALWAYS.iter().map(|call| (*call, Vec::new())).collect();
    calls.extend([
        // Device nodes; fifos and sockets stay with landlock's `fs:write:` rights.
        (libc::SYS_mknodat, device(2)?),
        // Unix sockets: a socket's path is invisible to seccomp, so no unix socket
        // can be created. Connected stream and seqpacket pairs stay allowed; a
        // datagram pair could still send to a path, so it is refused.
        (
            libc::SYS_socket,
            vec![SeccompRule::new(vec![arg(
                0,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )?])?],
        ),
        (
            libc::SYS_socketpair,
            vec![SeccompRule::new(vec![
                arg(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?,
                arg(1, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_DGRAM as u64)?,
            ])?],
        ),
        // `chattr` and project/extended flags through ioctl.
        (
            libc::SYS_ioctl,
            [FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR]
                .into_iter()
                .map(|request| SeccompRule::new(vec![arg(1, SeccompCmpOp::Eq, request)?]))
                .collect::<Result<_, _>>()?,
        ),
        // Querying the personality stays allowed; changing it does not.
        (
            libc::SYS_personality,
            vec![SeccompRule::new(vec![arg(
                0,
                SeccompCmpOp::Ne,
                0xffff_ffff,
            )?])?],
        ),
        // `clone` that would make a namespace.
        (
            libc::SYS_clone,
            CLONE_NAMESPACES
                .iter()
                .map(|flag| {
                    SeccompRule::new(vec![arg(
                        0,
                        SeccompCmpOp::MaskedEq(*flag as u64),
                        *flag as u64,
                    )?])
                })
                .collect::<Result<_, _>>()?,
        ),
    ]);
    #[cfg(target_arch = "x86_64")]
    calls.push((libc::SYS_mknod, device(1)?));
    Ok(with_x32_twins(calls))
}

/// The system calls refused whatever their arguments.
const ALWAYS: &[i64] = &[
    // File metadata: mode, owner, times, extended attributes, flags.
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    SYS_SETXATTRAT,
    SYS_REMOVEXATTRAT,
    SYS_FILE_SETATTR,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
    // Kernel interfaces that reach around landlock or into other processes.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    // Namespaces and mounts.
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    // The machine: kernel code, log, clock, names, swap, quotas, accounting.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_acct,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// On x86_64 the same calls can be made through the x32 ABI (the number with bit 30
/// set, and a few numbers of its own) where the kernel has it; refuse those as well.
/// (Where it does not, every x32 call fails with `ENOSYS`, and the twins would only
/// lengthen the filter.)
fn with_x32_twins(calls: Vec<(i64, Vec<SeccompRule>)>) -> BTreeMap<i64, Vec<SeccompRule>> {
    #[cfg(target_arch = "x86_64")]
    if x32_available() {
        const X32: i64 = 0x4000_0000;
        // x32 numbers of calls whose 64-bit number x32 does not use.
        let own = |call: i64| match call {
            libc::SYS_ptrace => Some(521),
            libc::SYS_kexec_load => Some(528),
            libc::SYS_process_vm_readv => Some(539),
            libc::SYS_process_vm_writev => Some(540),
            libc::SYS_ioctl => Some(514),
            _ => None,
        };
        let twins: Vec<(i64, Vec<SeccompRule>)> = calls
            .iter()
            .flat_map(|(call, rules)| {
                std::iter::once((X32 | call, rules.clone()))
                    .chain(own(*call).map(|number| (X32 | number, rules.clone())))
            })
            .collect();
        return calls.into_iter().chain(twins).collect();
    }
    calls.into_iter().collect()
}

/// Whether this kernel serves x32 system calls.
#[cfg(target_arch = "x86_64")]
fn x32_available() -> bool {
    const X32_GETPID: i64 = 0x4000_0000 | libc::SYS_getpid;
    // SAFETY: `getpid` takes no arguments and changes nothing.
    let pid = unsafe { libc::syscall(X32_GETPID) };
    pid != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build_for_this_architecture() {
        let [refused, clone3] = filters().unwrap();
        assert!(refused.len() > ALWAYS.len(), "one test per refused call");
        assert!(!clone3.is_empty());
    }

    /// Runs `call` on a fresh thread under the filter and returns its errno.
    fn errno_when_confined(call: impl FnOnce() -> i64 + Send + 'static) -> Option<i32> {
        std::thread::spawn(move || {
            confine_current_thread().unwrap();
            (call() == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn refused_calls_fail_with_eperm_on_the_confined_thread_only() {
        let dir = std::env::temp_dir().join(format!("plugbay-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        let chmod = move || {
            // SAFETY: `path` is a valid NUL-terminated string.
            i64::from(unsafe { libc::chmod(path.as_ptr(), 0o600) })
        };
        assert_eq!(errno_when_confined(chmod.clone()), Some(libc::EPERM));
        assert_eq!(chmod(), 0, "the host thread may chmod");
        // SAFETY: `clone3` with a null argument block only reads nothing and fails.
        let clone3 = || unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        assert_eq!(errno_when_confined(clone3), Some(libc::ENOSYS));
        assert_eq!(
            errno_when_confined(|| {
                // SAFETY: `socket` takes no pointers.
                i64::from(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) })
            }),
            Some(libc::EPERM)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn threads_and_processes_still_start_under_the_filter() {
        let spawned = std::thread::spawn(|| {
            confine_current_thread().unwrap();
            let thread = std::thread::spawn(|| 7).join().unwrap();
            let status = std::process::Command::new("true").status().unwrap();
            (thread, status.success())
        })
        .join()
        .unwrap();
        assert_eq!(spawned, (7, true));
    }
}
