//! Process isolation: the same plugins in a worker process of their own, and the
//! faults that end only that process.

use plugbay_host::{Batch, CallError, Host, Isolation};
use serde_json::{json, Value};

use crate::{example, fixture};

/// A host whose plugins run in worker processes of the `plugbay` binary.
pub fn process_host() -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new()
        .with_isolation(Isolation::Process)
        .with_worker_program(plugbay_tests::plugbay_bin())
        .with_data_dir(dir.path().join("data"));
    (host, dir)
}

#[test]
fn a_plugin_runs_in_a_worker_process_of_its_own() {
    let (host, _dir) = process_host();
    let mut plugin = host.start(example("data-processor")).unwrap();
    let status = plugin.status().clone();
    assert_eq!(status.isolation, Isolation::Process);
    let pid = status.pid.expect("a worker process");
    assert_ne!(pid, std::process::id());
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let out: Vec<Value> = plugin
        .process(&Batch::from_records(&[json!({"id": 1}), json!({"id": 2})]).unwrap())
        .unwrap()
        .records()
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["processed"], true);
    // Batches larger than the first shared memory grow it.
    let big: Vec<Value> = (0..20_000)
        .map(|id| json!({"id": id, "text": "x".repeat(20)}))
        .collect();
    let out = plugin.process(&Batch::from_records(&big).unwrap()).unwrap();
    assert_eq!(out.len(), Some(20_000));
    plugin.shutdown().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists(),
        "the worker process is gone after shutdown"
    );
}

#[test]
fn a_panic_in_a_worker_process_is_an_error_and_the_host_goes_on() {
    let (host, _dir) = process_host();
    let mut spec = fixture("faulty");
    spec.config = Some(json!({"panic": "process"}));
    let mut plugin = host.start(spec).unwrap();
    let err = plugin.process(&Batch::from_json("[1]")).unwrap_err();
    assert!(matches!(err, CallError::Panicked { .. }), "{err}");
}

#[test]
fn a_pipeline_mixes_thread_and_process_stages() {
    let (host, _dir) = process_host();
    let redactor = host
        .start(example("redactor").with_isolation(Isolation::Thread))
        .unwrap();
    let processor = host.start(example("data-processor")).unwrap();
    assert_eq!(processor.status().isolation, Isolation::Process);
    let mut pipeline = plugbay_host::Pipeline::new(vec![redactor, processor]);
    let input = (0..20).map(|i| {
        Ok(
            Batch::from_records(&[json!({"id": i, "email": format!("user{i}@example.com")})])
                .unwrap(),
        )
    });
    let mut out = Vec::new();
    let report = pipeline
        .run(input, |batch| {
            out.extend(batch.records::<Value>().unwrap());
            Ok(())
        })
        .unwrap();
    assert_eq!(report.batches, 20);
    assert_eq!(out.len(), 20);
    for (i, record) in out.iter().enumerate() {
        assert_eq!(record["id"], i);
        assert_eq!(record["processed"], true);
        assert_ne!(record["email"], format!("user{i}@example.com"), "redacted");
    }
    // The stages are usable again after the run.
    let mut stages = pipeline.into_stages();
    let again = stages[1]
        .process(&Batch::from_json(r#"[{"id": 99}]"#))
        .unwrap();
    assert_eq!(again.len(), Some(1));
    for stage in stages {
        stage.shutdown().unwrap();
    }
}

#[test]
fn a_program_that_does_not_serve_as_a_worker_is_named() {
    let host = Host::new()
        .with_isolation(Isolation::Process)
        .with_worker_program("/bin/true");
    let err = host.start(example("data-processor")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("/bin/true did not serve as a worker")
            && text.contains("serve_worker_if_asked"),
        "{text}"
    );
}

#[test]
fn udp_is_refused_in_a_worker_process_without_a_net_grant() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let port = receiver.local_addr().unwrap().port();
    let send = |plugin: &mut plugbay_host::PluginHandle| -> Vec<Value> {
        let probes = [
            json!({"op": "udp", "port": port}),
            json!({"op": "udp", "port": port, "thread": true}),
        ];
        plugin
            .process(&Batch::from_records(&probes).unwrap())
            .unwrap()
            .records()
            .unwrap()
    };
    let mut buffer = [0u8; 16];

    // A worker thread shares the host's network: landlock does not cover UDP, and the
    // threat model says so.
    let (thread_host, _dir) = crate::host();
    let mut threaded = thread_host.start(fixture("prober")).unwrap();
    let out = send(&mut threaded);
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert!(receiver.recv(&mut buffer).is_ok(), "the datagram arrived");
    while receiver.recv(&mut buffer).is_ok() {}

    // A worker process has a network namespace of its own, with no interface up.
    let (host, _dir) = process_host();
    let mut isolated = host.start(fixture("prober")).unwrap();
    let namespaces = &isolated.status().namespaces;
    if !namespaces.iter().any(|ns| ns == "net") {
        eprintln!("this kernel gives unprivileged processes no network namespace; skipping");
        return;
    }
    let out = send(&mut isolated);
    assert_eq!(
        (out[0]["ok"].clone(), out[1]["ok"].clone()),
        (json!(false), json!(false)),
        "{out:?}"
    );
    assert!(receiver.recv(&mut buffer).is_err(), "no datagram arrived");
}

#[test]
fn a_reply_larger_than_the_limit_ends_the_worker_not_the_host() {
    let (host, _dir) = process_host();
    let host = host.with_limits(plugbay_host::Limits {
        reply_bytes: 1024,
        ..Default::default()
    });
    let mut plugin = host.start(fixture("noop")).unwrap();
    let small = Batch::from_json(r#"[{"id": 1}]"#);
    assert_eq!(plugin.process(&small).unwrap().len(), Some(1));
    let big = Batch::from_records(&[json!({"text": "x".repeat(4096)})]).unwrap();
    let err = plugin.process(&big).unwrap_err();
    assert!(
        matches!(&err, CallError::Crashed { cause, .. } if cause.contains("more than the limit of 1024 bytes")),
        "{err}"
    );
    let mut again = host.start(fixture("noop")).unwrap();
    assert_eq!(again.process(&small).unwrap().len(), Some(1));
}

#[test]
fn a_worker_outlives_the_thread_that_started_it() {
    // The parent-death signal fires when the thread that forked the worker ends: a
    // worker started from a short-lived thread (a server's blocking pool) must not die
    // with it.
    let (host, _dir) = process_host();
    let mut plugin = std::thread::spawn(move || host.start(example("data-processor")).unwrap())
        .join()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = plugin.process(&Batch::from_json(r#"[{"id": 1}]"#)).unwrap();
    assert_eq!(out.len(), Some(1));
    plugin.shutdown().unwrap();
}

/// The processes this test process started whose program is `program` (its first
/// argument, as the host passed it).
fn workers_of(program: &std::path::Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let first = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            if first == program.as_os_str().as_encoded_bytes() {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits until a worker of `program` other than those in `busy` runs, and returns it.
fn waiting_worker(program: &std::path::Path, busy: &[u32]) -> u32 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(pid) = workers_of(program).into_iter().find(|p| !busy.contains(p)) {
            return pid;
        }
        assert!(
            std::time::Instant::now() < until,
            "no worker was launched ahead"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A host whose worker program is a path of its own (a link to `plugbay`), so the
/// workers it launches ahead are its alone while other tests run.
fn host_with_own_program(dir: &std::path::Path) -> (Host, std::path::PathBuf) {
    let program = dir.join("worker");
    std::os::unix::fs::symlink(plugbay_tests::plugbay_bin(), &program).unwrap();
    let host = Host::new()
        .with_isolation(Isolation::Process)
        .with_worker_program(&program)
        .with_data_dir(dir.join("data"));
    (host, program)
}

#[test]
fn a_start_takes_the_worker_launched_ahead_and_a_dead_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (host, program) = host_with_own_program(dir.path());
    let first = host.start(example("data-processor")).unwrap();
    let first_pid = first.status().pid.unwrap();
    let ahead = waiting_worker(&program, &[first_pid]);

    let mut second = host.start(example("data-processor")).unwrap();
    assert_eq!(
        second.status().pid,
        Some(ahead),
        "the second start took the worker launched ahead"
    );
    let out = second.process(&Batch::from_json(r#"[{"id": 1}]"#)).unwrap();
    assert_eq!(out.len(), Some(1));

    // A worker killed while it waited is not used: the start launches another.
    let next = waiting_worker(&program, &[first_pid, ahead]);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &next.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Dead once the kernel has run its exit (its descriptors closed): a zombie, or
    // reaped. A loaded machine can take a while to get there.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(format!("/proc/{next}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    }) {
        assert!(
            std::time::Instant::now() < until,
            "worker {next} outlived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut third = host.start(example("data-processor")).unwrap();
    assert_ne!(third.status().pid, Some(next));
    let out = third.process(&Batch::from_json(r#"[{"id": 2}]"#)).unwrap();
    assert_eq!(out.len(), Some(1));
    for plugin in [first, second, third] {
        plugin.shutdown().unwrap();
    }
}

#[test]
fn without_a_spare_worker_none_is_launched_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (host, program) = host_with_own_program(dir.path());
    let without = host.clone().with_spare_worker(false);
    let plugin = without.start(example("data-processor")).unwrap();
    let pid = plugin.status().pid.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(workers_of(&program), vec![pid]);

    // Nor does it take one that another host of the process keeps waiting.
    let with = host.start(example("data-processor")).unwrap();
    let with_pid = with.status().pid.unwrap();
    let ahead = waiting_worker(&program, &[pid, with_pid]);
    let own = without.start(example("data-processor")).unwrap();
    let own_pid = own.status().pid.unwrap();
    assert_ne!(
        own_pid, ahead,
        "a start without spare workers launched its own"
    );
    assert!(
        workers_of(&program).contains(&ahead),
        "the waiting worker still waits"
    );
    for plugin in [plugin, with, own] {
        plugin.shutdown().unwrap();
    }
}
