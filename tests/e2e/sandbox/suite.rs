// The sandbox suite, included by `mod.rs` once per isolation, where `host()` is
// defined. No inner attributes or doc comments: it is included into a module.

use std::net::TcpListener;

use plugbay_host::{Batch, ConfinementLevel, Permission, PluginHandle, PluginSpec};
use serde_json::{json, Value};

use crate::{example, fixture};

fn prober(extra: &[String]) -> PluginSpec {
    let mut spec = fixture("prober");
    for permission in extra {
        spec.manifest
            .permissions
            .push(permission.parse::<Permission>().unwrap());
    }
    spec
}

fn probe(plugin: &mut PluginHandle, probe: Value) -> (bool, bool) {
    let mut threaded = probe.clone();
    threaded["thread"] = json!(true);
    let out: Vec<Value> = plugin
        .process(&Batch::from_records(&[probe, threaded]).unwrap())
        .unwrap()
        .records()
        .unwrap();
    (
        out[0]["ok"].as_bool().unwrap(),
        out[1]["ok"].as_bool().unwrap(),
    )
}

/// Runs `attempt` without and with `grant`, and checks the host can do it meanwhile.
fn denied_then_allowed(grant: &[String], attempt: Value, host_can: impl Fn() -> bool) {
    let (host, _dir) = host();
    let mut confined = host.start(prober(&[])).unwrap();
    assert_eq!(confined.status().confinement.level, ConfinementLevel::Full);
    assert_eq!(
        probe(&mut confined, attempt.clone()),
        (false, false),
        "{attempt} without a grant"
    );
    assert!(host_can(), "the host thread can still do {attempt}");
    let mut granted = host.start(prober(grant)).unwrap();
    assert_eq!(
        probe(&mut granted, attempt.clone()),
        (true, true),
        "{attempt} with {grant:?}"
    );
}

#[test]
fn reading_a_file_needs_fs_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, "s3cret").unwrap();
    let path = file.display().to_string();
    denied_then_allowed(
        &[format!("fs:read:{path}")],
        json!({"op": "read", "path": path}),
        || std::fs::read(&file).is_ok(),
    );
}

#[test]
fn confinement_is_visible_through_the_host_api() {
    let (host, _dir) = host();
    let plugin = host.start(example("enricher")).unwrap();
    let status = plugin.status();
    assert_eq!(status.confinement.level, ConfinementLevel::Full);
    assert_eq!(
        status.confinement.landlock_abi,
        Some(plugbay_host::sandbox::LANDLOCK_ABI)
    );
    assert!(status.confinement.missing_paths.is_empty());
    assert!(status.confinement.seccomp);
    assert_eq!(
        status.confinement.to_string(),
        "full (landlock ABI 6, seccomp)"
    );
    let granted: Vec<String> = status.granted.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        granted,
        ["process:data", "fs:read:${plugin_dir}/lookup.json"]
    );

    // Degraded confinement allowed: this kernel still gives the full ruleset.
    let lenient = host
        .clone()
        .with_sandbox(plugbay_host::SandboxMode::AllowDegraded);
    let plugin = lenient.start(example("data-processor")).unwrap();
    assert_eq!(plugin.status().confinement.level, ConfinementLevel::Full);

    // A granted path that does not exist grants nothing, and the status says so.
    let mut spec = prober(&["fs:read:/nonexistent/plugbay".to_owned()]);
    spec.plugin_dir = std::env::temp_dir();
    let plugin = host.start(spec).unwrap();
    assert_eq!(
        plugin.status().confinement.missing_paths,
        [std::path::PathBuf::from("/nonexistent/plugbay")]
    );
}

#[test]
fn reading_etc_hostname_is_denied() {
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[])).unwrap();
    if std::path::Path::new("/etc/hostname").exists() {
        assert_eq!(
            probe(&mut plugin, json!({"op": "read", "path": "/etc/hostname"})),
            (false, false)
        );
        assert!(std::fs::read("/etc/hostname").is_ok());
    }
}

#[test]
fn time_zone_data_is_readable_and_name_resolution_files_need_sys_dns() {
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[])).unwrap();
    for path in ["/etc/localtime", "/usr/share/zoneinfo/Europe/Paris"] {
        if std::path::Path::new(path).exists() {
            assert_eq!(
                probe(&mut plugin, json!({"op": "read", "path": path})),
                (true, true),
                "{path}"
            );
        }
    }
    let hosts = json!({"op": "read", "path": "/etc/hosts"});
    assert_eq!(probe(&mut plugin, hosts.clone()), (false, false));
    let mut resolving = host.start(prober(&["sys:dns".to_owned()])).unwrap();
    assert_eq!(probe(&mut resolving, hosts), (true, true));
    // The rest of /etc stays closed.
    assert_eq!(
        probe(&mut resolving, json!({"op": "read", "path": "/etc/passwd"})),
        (false, false)
    );
}

#[test]
fn listing_a_directory_needs_fs_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    denied_then_allowed(
        &[format!("fs:read:{path}")],
        json!({"op": "list", "path": path}),
        || std::fs::read_dir(dir.path()).is_ok(),
    );
}

#[test]
fn writing_needs_fs_write() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.txt");
    let path = target.display().to_string();
    let folder = dir.path().display().to_string();
    denied_then_allowed(
        &[format!("fs:write:{folder}")],
        json!({"op": "write", "path": path}),
        || std::fs::write(dir.path().join("host.txt"), "host").is_ok(),
    );
    assert!(std::fs::read_to_string(&target).unwrap().contains("probe"));
}

#[test]
fn read_grants_do_not_allow_writing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().display().to_string();
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[format!("fs:read:{folder}")])).unwrap();
    let path = dir.path().join("nope.txt").display().to_string();
    assert_eq!(
        probe(&mut plugin, json!({"op": "write", "path": path})),
        (false, false)
    );
}

#[test]
fn connecting_needs_net_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    denied_then_allowed(
        &[format!("net:connect:{port}")],
        json!({"op": "connect", "port": port}),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

#[test]
fn binding_needs_net_bind() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    denied_then_allowed(
        &[format!("net:bind:{port}")],
        json!({"op": "bind", "port": port}),
        || TcpListener::bind(("127.0.0.1", port)).is_ok(),
    );
}

#[test]
fn signalling_outside_the_sandbox_is_denied() {
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[])).unwrap();
    // A process of the host's (SIGURG is ignored by default, so a leak would be harmless).
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let parent = std::os::unix::process::parent_id() as i32;
    for target in [pid, parent] {
        assert_eq!(
            probe(&mut plugin, json!({"op": "signal", "pid": target})),
            (false, false),
            "signal to {target}"
        );
    }
    // The host's own threads are not confined.
    let status = std::process::Command::new("kill")
        .args(["-URG", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn abstract_unix_sockets_outside_the_sandbox_are_denied() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    let name = format!("plugbay-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = UnixListener::bind_addr(&addr).unwrap();
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[])).unwrap();
    assert_eq!(
        probe(&mut plugin, json!({"op": "abstract", "path": name})),
        (false, false)
    );
    assert!(
        UnixStream::connect_addr(&addr).is_ok(),
        "the host thread can connect"
    );
}

#[test]
fn the_enricher_reads_its_lookup_file_only_with_the_grant() {
    let (host, _dir) = host();
    let mut plugin = host.start(example("enricher")).unwrap();
    let out: Vec<Value> = plugin
        .process(&Batch::from_json(
            r#"[{"country": "JP"}, {"country": "XX"}]"#,
        ))
        .unwrap()
        .records()
        .unwrap();
    assert_eq!(out[0]["country_name"], "Japan");
    assert!(out[1].get("country_name").is_none());

    // Without the fs grant, init cannot read the file.
    let err = host
        .start(example("enricher").with_grants(vec![Permission::ProcessData]))
        .unwrap_err();
    assert!(err.to_string().contains("cannot read lookup file"), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("permission denied"),
        "{err}"
    );
}

#[test]
fn data_services_are_gated_by_permissions() {
    let (host, _dir) = host();
    let outcome = |grants: &[&str]| -> Vec<Value> {
        let grants = grants.iter().map(|p| p.parse().unwrap()).collect();
        let mut plugin = host
            .start(
                fixture("faulty")
                    .with_config(json!({"store": true}))
                    .with_grants(grants),
            )
            .unwrap();
        plugin
            .process(&Batch::from_json("[]"))
            .unwrap()
            .records()
            .unwrap()
    };
    let all = outcome(&["process:data", "read:data", "write:data"]);
    assert_eq!(
        all,
        vec![
            json!({"ok": null}),
            json!({"ok": "value"}),
            json!({"ok": true})
        ]
    );

    let read_only = outcome(&["process:data", "read:data"]);
    assert_eq!(read_only[0]["denied"], true);
    assert!(read_only[0]["error"]
        .as_str()
        .unwrap()
        .contains("write:data"));
    assert_eq!(read_only[1], json!({"ok": null}));
    assert_eq!(read_only[2]["denied"], true);

    let write_only = outcome(&["process:data", "write:data"]);
    assert_eq!(write_only[0], json!({"ok": null}));
    assert_eq!(write_only[1]["denied"], true);
    assert!(write_only[1]["error"]
        .as_str()
        .unwrap()
        .contains("read:data"));
}

#[test]
fn without_process_data_no_batches() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(example("data-processor").with_grants(vec![]))
        .unwrap();
    let err = plugin.process(&Batch::from_json("[]")).unwrap_err();
    assert!(err.to_string().contains("process:data"), "{err}");
    assert!(plugin.status().granted.is_empty());
}

/// What the plugin's hook and a thread it spawns got for `probe`: each `errno`, or
/// `None` when the call worked.
fn errnos(plugin: &mut PluginHandle, probe: Value) -> (Option<i32>, Option<i32>) {
    let mut threaded = probe.clone();
    threaded["thread"] = json!(true);
    let out: Vec<Value> = plugin
        .process(&Batch::from_records(&[probe, threaded]).unwrap())
        .unwrap()
        .records()
        .unwrap();
    let errno = |record: &Value| {
        assert_eq!(
            record["ok"].as_bool(),
            Some(record["errno"].is_null()),
            "{record}"
        );
        record["errno"].as_i64().map(|errno| errno as i32)
    };
    (errno(&out[0]), errno(&out[1]))
}

const EPERM: Option<i32> = Some(libc::EPERM);

/// A folder the plugin is granted `fs:write:` on, with one file in it: landlock would
/// allow anything there, so what is refused is refused by the seccomp filter.
fn writable_file() -> (tempfile::TempDir, std::path::PathBuf, PluginHandle) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "data").unwrap();
    let (host, _data) = host();
    let plugin = host
        .start(prober(&[format!("fs:write:{}", dir.path().display())]))
        .unwrap();
    assert!(plugin.status().confinement.seccomp);
    (dir, file, plugin)
}

fn c_path(path: &std::path::Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
}

#[test]
fn file_metadata_cannot_be_changed_even_beneath_a_write_grant() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let (_dir, file, mut plugin) = writable_file();
    let path = file.display().to_string();
    let before = std::fs::metadata(&file).unwrap();
    for op in ["chmod", "chown", "utimes", "setxattr"] {
        assert_eq!(
            errnos(&mut plugin, json!({"op": op, "path": path})),
            (EPERM, EPERM),
            "{op} from the plugin"
        );
    }
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(after.mode(), before.mode(), "the mode is unchanged");
    assert_eq!(after.mtime(), before.mtime(), "the times are unchanged");
    // Writing the file itself is what the grant is for.
    assert_eq!(
        errnos(&mut plugin, json!({"op": "write", "path": path})),
        (None, None)
    );

    // The host's own thread changes all of it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(after.uid()), Some(after.gid())).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let c_file = c_path(&file);
    // SAFETY: the path, name and value are valid for the lengths given.
    let set = unsafe {
        libc::setxattr(
            c_file.as_ptr(),
            c"user.plugbay".as_ptr(),
            b"host".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let changed = std::fs::metadata(&file).unwrap();
    assert_eq!(changed.mode() & 0o777, 0o600);
    assert_eq!(changed.mtime(), 0);
}

#[test]
fn unix_sockets_at_paths_are_refused() {
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.sock");
    let datagram = dir.path().join("datagram.sock");
    let _listener = UnixListener::bind(&stream).unwrap();
    let receiver = UnixDatagram::bind(&datagram).unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let (host, _data) = host();
    // Even with every filesystem right on the sockets' folder.
    for grants in [vec![], vec![format!("fs:write:{}", dir.path().display())]] {
        let mut plugin = host.start(prober(&grants)).unwrap();
        assert_eq!(
            errnos(
                &mut plugin,
                json!({"op": "unix-connect", "path": stream.display().to_string()})
            ),
            (EPERM, EPERM),
            "connect with {grants:?}"
        );
        assert_eq!(
            errnos(
                &mut plugin,
                json!({"op": "unix-datagram", "path": datagram.display().to_string()})
            ),
            (EPERM, EPERM),
            "datagram with {grants:?}"
        );
    }
    assert!(
        UnixStream::connect(&stream).is_ok(),
        "the host thread connects"
    );
    let (sender, _peer) = UnixDatagram::pair().unwrap();
    sender.send_to(b"host", &datagram).unwrap();
    let mut buffer = [0; 8];
    assert_eq!(
        receiver.recv(&mut buffer).unwrap(),
        4,
        "only the host's datagram"
    );
}

#[test]
fn device_nodes_cannot_be_made_even_beneath_a_write_grant() {
    let (dir, _file, mut plugin) = writable_file();
    let node = dir.path().join("kmsg");
    assert_eq!(
        errnos(
            &mut plugin,
            json!({"op": "mknod", "path": node.display().to_string()})
        ),
        (EPERM, EPERM)
    );
    assert!(!node.exists());
    // The host thread can, where the process may make devices (CAP_MKNOD: these tests
    // run as root here); otherwise the kernel refuses it to the host too.
    let c_node = c_path(&node);
    // SAFETY: the path is a valid NUL-terminated string.
    let made = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 11)) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(made, 0, "the host thread makes the device: {error}");
        assert!(node.exists());
    } else {
        assert_eq!(
            error.raw_os_error(),
            EPERM,
            "not root: the kernel refuses it"
        );
    }
}

/// How a raw system call should end for the plugin.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused by the filter (`EPERM`), while the host thread's call reaches the kernel.
    Refused,
    /// Allowed: the plugin gets what the host thread gets.
    Same,
    /// "Not implemented" (`ENOSYS`), so the C library falls back to a call the filter
    /// can check.
    Missing,
}

/// System calls with null or invalid pointer arguments (or no effect), so each fails
/// in the kernel, or does nothing, when it is allowed: never `EPERM` for a root host.
fn system_calls() -> Vec<(&'static str, i64, Vec<u64>, Expect)> {
    use Expect::{Missing, Refused, Same};
    let none = u64::MAX; // -1: no such descriptor, or "unchanged" for owners
    let fdcwd = libc::AT_FDCWD as u64;
    let char_device = u64::from(libc::S_IFCHR | 0o600);
    let kmsg = libc::makedev(1, 11);
    let mut calls = vec![
        ("fchmod", libc::SYS_fchmod, vec![none, 0o600], Refused),
        (
            "fchmodat",
            libc::SYS_fchmodat,
            vec![fdcwd, 0, 0o600],
            Refused,
        ),
        (
            "fchmodat2",
            libc::SYS_fchmodat2,
            vec![fdcwd, 0, 0o600, 0],
            Refused,
        ),
        ("fchown", libc::SYS_fchown, vec![none, none, none], Refused),
        (
            "fchownat",
            libc::SYS_fchownat,
            vec![fdcwd, 0, none, none, 0],
            Refused,
        ),
        (
            "utimensat",
            libc::SYS_utimensat,
            vec![none, 0, 0, 0],
            Refused,
        ),
        (
            "lsetxattr",
            libc::SYS_lsetxattr,
            vec![0, 0, 0, 0, 0],
            Refused,
        ),
        (
            "fsetxattr",
            libc::SYS_fsetxattr,
            vec![none, 0, 0, 0, 0],
            Refused,
        ),
        ("removexattr", libc::SYS_removexattr, vec![0, 0], Refused),
        ("lremovexattr", libc::SYS_lremovexattr, vec![0, 0], Refused),
        (
            "fremovexattr",
            libc::SYS_fremovexattr,
            vec![none, 0],
            Refused,
        ),
        ("setxattrat", 463, vec![fdcwd, 0, 0, 0, 0], Refused),
        ("removexattrat", 466, vec![fdcwd, 0, 0, 0], Refused),
        ("file_setattr", 469, vec![fdcwd, 0, 0, 0, 0], Refused),
        (
            "ioctl FS_IOC_SETFLAGS",
            libc::SYS_ioctl,
            vec![none, 0x4008_6602, 0],
            Refused,
        ),
        (
            "ioctl FS_IOC_FSSETXATTR",
            libc::SYS_ioctl,
            vec![none, 0x401c_5820, 0],
            Refused,
        ),
        (
            "ioctl FS_IOC_GETFLAGS",
            libc::SYS_ioctl,
            vec![none, 0x8008_6601, 0],
            Same,
        ),
        (
            "mknodat char",
            libc::SYS_mknodat,
            vec![fdcwd, 0, char_device, kmsg],
            Refused,
        ),
        (
            "mknodat fifo",
            libc::SYS_mknodat,
            vec![fdcwd, 0, u64::from(libc::S_IFIFO | 0o600), 0],
            Same,
        ),
        // A type unix sockets do not support, so the host's call makes no socket.
        (
            "socket unix",
            libc::SYS_socket,
            vec![libc::AF_UNIX as u64, libc::SOCK_DCCP as u64, 0],
            Refused,
        ),
        (
            "socketpair unix datagram",
            libc::SYS_socketpair,
            vec![libc::AF_UNIX as u64, libc::SOCK_DGRAM as u64, 0, 0],
            Refused,
        ),
        (
            "socketpair unix stream",
            libc::SYS_socketpair,
            vec![libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0],
            Same,
        ),
        (
            "io_uring_setup",
            libc::SYS_io_uring_setup,
            vec![0, 0],
            Refused,
        ),
        (
            "io_uring_enter",
            libc::SYS_io_uring_enter,
            vec![none, 0, 0, 0, 0, 0],
            Refused,
        ),
        (
            "io_uring_register",
            libc::SYS_io_uring_register,
            vec![none, 0, 0, 0],
            Refused,
        ),
        ("bpf", libc::SYS_bpf, vec![0xffff, 0, 0], Refused),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            vec![0, 0, none, none, 0],
            Refused,
        ),
        (
            "userfaultfd",
            libc::SYS_userfaultfd,
            vec![0xffff_ffff],
            Refused,
        ),
        (
            "keyctl",
            libc::SYS_keyctl,
            vec![0xffff, 0, 0, 0, 0],
            Refused,
        ),
        ("add_key", libc::SYS_add_key, vec![0, 0, 0, 0, 0], Refused),
        (
            "request_key",
            libc::SYS_request_key,
            vec![0, 0, 0, 0],
            Refused,
        ),
        (
            "ptrace",
            libc::SYS_ptrace,
            vec![libc::PTRACE_CONT as u64, 0x7fff_ffff, 0, 0],
            Refused,
        ),
        (
            "process_vm_readv",
            libc::SYS_process_vm_readv,
            vec![0x7fff_ffff, 0, 0, 0, 0, 1],
            Refused,
        ),
        (
            "process_vm_writev",
            libc::SYS_process_vm_writev,
            vec![0x7fff_ffff, 0, 0, 0, 0, 1],
            Refused,
        ),
        (
            "pidfd_getfd",
            libc::SYS_pidfd_getfd,
            vec![none, 0, 0],
            Refused,
        ),
        (
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            vec![none, 0, 0],
            Refused,
        ),
        (
            "fanotify_init",
            libc::SYS_fanotify_init,
            vec![0xffff_ffff, 0],
            Refused,
        ),
        ("unshare", libc::SYS_unshare, vec![0], Refused),
        ("setns", libc::SYS_setns, vec![none, 0], Refused),
        ("mount", libc::SYS_mount, vec![0, 0, 0, 0, 0], Refused),
        ("umount2", libc::SYS_umount2, vec![0, 0], Refused),
        ("pivot_root", libc::SYS_pivot_root, vec![0, 0], Refused),
        ("chroot", libc::SYS_chroot, vec![0], Refused),
        ("open_tree", libc::SYS_open_tree, vec![none, 0, 0], Refused),
        ("open_tree_attr", 467, vec![none, 0, 0, 0, 0], Refused),
        (
            "move_mount",
            libc::SYS_move_mount,
            vec![none, 0, none, 0, 0],
            Refused,
        ),
        ("fsopen", libc::SYS_fsopen, vec![0, 0], Refused),
        (
            "fsconfig",
            libc::SYS_fsconfig,
            vec![none, 0, 0, 0, 0],
            Refused,
        ),
        ("fsmount", libc::SYS_fsmount, vec![none, 0, 0], Refused),
        ("fspick", libc::SYS_fspick, vec![none, 0, 0], Refused),
        (
            "mount_setattr",
            libc::SYS_mount_setattr,
            vec![none, 0, 0, 0, 0],
            Refused,
        ),
        ("init_module", libc::SYS_init_module, vec![0, 0, 0], Refused),
        (
            "finit_module",
            libc::SYS_finit_module,
            vec![none, 0, 0],
            Refused,
        ),
        (
            "delete_module",
            libc::SYS_delete_module,
            vec![0, 0],
            Refused,
        ),
        (
            "kexec_load",
            libc::SYS_kexec_load,
            vec![0, 100, 0, 0],
            Refused,
        ),
        ("reboot", libc::SYS_reboot, vec![0, 0, 0, 0], Refused),
        ("syslog", libc::SYS_syslog, vec![0xffff, 0, 0], Refused),
        ("settimeofday", libc::SYS_settimeofday, vec![0, 0], Refused),
        (
            "clock_settime",
            libc::SYS_clock_settime,
            vec![0xffff, 0],
            Refused,
        ),
        (
            "clock_adjtime",
            libc::SYS_clock_adjtime,
            vec![0xffff, 0],
            Refused,
        ),
        ("adjtimex", libc::SYS_adjtimex, vec![0], Refused),
        (
            "sethostname",
            libc::SYS_sethostname,
            vec![0, 100_000],
            Refused,
        ),
        (
            "setdomainname",
            libc::SYS_setdomainname,
            vec![0, 100_000],
            Refused,
        ),
        ("swapon", libc::SYS_swapon, vec![0, 0], Refused),
        ("swapoff", libc::SYS_swapoff, vec![0], Refused),
        ("quotactl", libc::SYS_quotactl, vec![0, 0, 0, 0], Refused),
        (
            "quotactl_fd",
            libc::SYS_quotactl_fd,
            vec![none, 0, 0, 0],
            Refused,
        ),
        ("acct", libc::SYS_acct, vec![1], Refused),
        (
            "personality query",
            libc::SYS_personality,
            vec![0xffff_ffff],
            Same,
        ),
        ("clone3", libc::SYS_clone3, vec![0, 0], Missing),
        // Without CLONE_SIGHAND, CLONE_THREAD makes the kernel refuse these with EINVAL
        // before it creates anything.
        (
            "clone thread",
            libc::SYS_clone,
            vec![libc::CLONE_THREAD as u64],
            Same,
        ),
    ];
    for (name, flag) in [
        ("clone CLONE_NEWNS", libc::CLONE_NEWNS),
        ("clone CLONE_NEWUTS", libc::CLONE_NEWUTS),
        ("clone CLONE_NEWIPC", libc::CLONE_NEWIPC),
        ("clone CLONE_NEWUSER", libc::CLONE_NEWUSER),
        ("clone CLONE_NEWPID", libc::CLONE_NEWPID),
        ("clone CLONE_NEWNET", libc::CLONE_NEWNET),
        ("clone CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ] {
        calls.push((
            name,
            libc::SYS_clone,
            vec![(flag | libc::CLONE_THREAD) as u64],
            Refused,
        ));
    }
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        ("chmod", libc::SYS_chmod, vec![0, 0o600], Refused),
        ("chown", libc::SYS_chown, vec![0, none, none], Refused),
        ("lchown", libc::SYS_lchown, vec![0, none, none], Refused),
        ("utime", libc::SYS_utime, vec![0, 0], Refused),
        ("utimes", libc::SYS_utimes, vec![0, 0], Refused),
        ("futimesat", libc::SYS_futimesat, vec![fdcwd, 0, 0], Refused),
        ("setxattr", libc::SYS_setxattr, vec![0, 0, 0, 0, 0], Refused),
        (
            "mknod char",
            libc::SYS_mknod,
            vec![0, char_device, kmsg],
            Refused,
        ),
        (
            "kexec_file_load",
            libc::SYS_kexec_file_load,
            vec![none, none, 0, 0, 0xffff],
            Refused,
        ),
        ("iopl", libc::SYS_iopl, vec![100], Refused),
        ("ioperm", libc::SYS_ioperm, vec![0, 0, 0], Refused),
    ]);
    // Where the kernel serves the x32 ABI, its forms of the calls are refused too
    // (elsewhere every x32 call fails with ENOSYS, for the host as for the plugin).
    #[cfg(target_arch = "x86_64")]
    if host_errno(0x4000_0000 | libc::SYS_getpid, &[]) != Some(libc::ENOSYS) {
        calls.extend([
            (
                "x32 chmod",
                0x4000_0000 | libc::SYS_chmod,
                vec![0, 0o600],
                Refused,
            ),
            ("x32 ptrace", 0x4000_0000 | 521, vec![0, 0, 0, 0], Refused),
        ]);
    }
    calls
}

/// The errno of a raw system call on the calling (host) thread, `None` if it worked.
fn host_errno(nr: i64, args: &[u64]) -> Option<i32> {
    let mut all = [0u64; 6];
    all[..args.len()].copy_from_slice(args);
    let [a, b, c, d, e, f] = all;
    // SAFETY: every pointer argument in `system_calls` is null or invalid, which the
    // kernel checks before it reads or writes through it; the calls that succeed
    // change nothing (`unshare(0)`, `settimeofday(NULL, NULL)`, a personality query).
    let result = unsafe { libc::syscall(nr, a, b, c, d, e, f) };
    (result == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

#[test]
fn kernel_interfaces_around_the_sandbox_are_refused_to_the_plugin_only() {
    let (host, _dir) = host();
    let mut plugin = host.start(prober(&[])).unwrap();
    let calls = system_calls();
    let batch: Vec<Value> = calls
        .iter()
        .flat_map(|(_, nr, args, _)| {
            let probe = json!({"op": "syscall", "nr": nr, "args": args});
            let mut threaded = probe.clone();
            threaded["thread"] = json!(true);
            [probe, threaded]
        })
        .collect();
    let out: Vec<Value> = plugin
        .process(&Batch::from_records(&batch).unwrap())
        .unwrap()
        .records()
        .unwrap();
    let mut failures = Vec::new();
    for ((name, nr, args, expect), results) in calls.iter().zip(out.chunks(2)) {
        let plugin_got: Vec<Option<i32>> = results
            .iter()
            .map(|record| record["errno"].as_i64().map(|errno| errno as i32))
            .collect();
        let host_got = host_errno(*nr, args);
        let wanted = match expect {
            Expect::Refused => EPERM,
            Expect::Same => host_got,
            Expect::Missing => Some(libc::ENOSYS),
        };
        // The host thread's call reached the kernel (ENOSYS: this kernel lacks it).
        let host_ok = match expect {
            Expect::Refused => host_got != EPERM,
            Expect::Missing => host_got != Some(libc::ENOSYS),
            Expect::Same => true,
        };
        if plugin_got != [wanted, wanted] || !host_ok {
            failures.push(format!(
                "{name}: plugin (hook, thread) got {plugin_got:?}, expected {wanted:?}; host thread got {host_got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_symlink_out_of_the_plugin_folder_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/", dir.path().join("link")).unwrap();
    let (host, _data) = host();
    let mut spec = prober(&["fs:read:${plugin_dir}/link".to_owned()]);
    spec.plugin_dir = dir.path().to_owned();
    let err = host.start(spec).unwrap_err().to_string();
    assert!(
        err.contains("permission `fs:read:${plugin_dir}/link` resolves to `/`"),
        "{err}"
    );
    assert!(err.contains("did not start"), "{err}");

    // A link that stays inside the folder is fine.
    std::fs::create_dir(dir.path().join("inside")).unwrap();
    std::fs::write(dir.path().join("inside/data.txt"), "ok").unwrap();
    std::os::unix::fs::symlink("inside", dir.path().join("near")).unwrap();
    let mut spec = prober(&["fs:read:${plugin_dir}/near".to_owned()]);
    spec.plugin_dir = dir.path().to_owned();
    let mut plugin = host.start(spec).unwrap();
    let data = dir.path().join("near/data.txt").display().to_string();
    assert_eq!(
        errnos(&mut plugin, json!({"op": "read", "path": data})),
        (None, None)
    );
}
