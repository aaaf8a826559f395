//! Landlock confinement on this kernel, proven both ways: each access is denied
//! without its grant and works with it, from the hook and from a thread the plugin
//! spawns, while the host's own threads can do all of it.

use std::net::TcpListener;

use plugbay_host::{Batch, ConfinementLevel, Permission, PluginHandle, PluginSpec};
use serde_json::{json, Value};

use crate::{example, fixture, host};

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
    assert_eq!(status.confinement.to_string(), "full (landlock ABI 6)");
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
