//! The host survives any plugin the SDK builds: panics in `Drop` and panic payloads
//! whose `Drop` panics, deadlines too far to represent, a `Drop` that never returns,
//! workers abandoned for good, and threads a stopped plugin leaves running.
//!
//! A host that dies (exit 1, abort) or hangs would take the test binary with it, so
//! each scenario that could runs in a child process — this test binary again,
//! filtered to the one test — or as a `plugbay` command, under a watchdog.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugbay_host::registry::{Registration, Registry, Scope};
use plugbay_host::server::{ServeOptions, Server};
use plugbay_host::{
    Batch, CallError, DataStore, Host, Manifest, MemoryStore, Pipeline, PipelineError, PluginSpec,
    State, StoreError,
};
use plugbay_tests::{fixture_manifest, library, plugbay_bin};
use serde_json::{json, Value};

use crate::{example, fixture, host};

/// Set in a child process: run the scenario itself.
const CHILD: &str = "PLUGBAY_SURVIVAL_CHILD";

/// What a child process did.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for `child` at most `limit`, killing it past that (the test then fails).
fn watch(mut child: Child, limit: Duration, what: &str) -> Finished {
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("{what} did not end within {limit:?} (a hung host)\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs test `name` of this module in a child process, where `scenario` runs; the
/// child must pass within `limit`. Returns what it printed.
fn in_child(name: &str, limit: Duration, scenario: impl FnOnce()) -> Finished {
    if std::env::var_os(CHILD).is_some() {
        scenario();
        return Finished {
            status: ExitStatus::default(),
            stdout: String::new(),
            stderr: String::new(),
        };
    }
    // Build the plugins here, once, rather than in each child.
    plugbay_tests::plugins_dir();
    let test = format!("survival::{name}");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([&test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = watch(child, limit, &test);
    assert!(
        finished.status.success() && finished.stdout.contains("1 passed"),
        "{test} failed in its child process ({}; a host that exits or aborts fails here)\nstdout:\n{}\nstderr:\n{}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    finished
}

/// `plugbay run` on the faulty fixture with `config`, under a watchdog.
fn run_faulty(config: Value, env: Option<(&str, &str)>) -> Finished {
    plugbay_tests::plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"[{"id": 1}, {"id": 2}]"#).unwrap();
    let mut command = Command::new(plugbay_bin());
    command
        .arg("--home")
        .arg(dir.path().join("home"))
        .arg("run")
        .arg(library("fixture-faulty"))
        .arg("--config")
        .arg(config.to_string())
        .arg("--input")
        .arg(&input)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    watch(
        command.spawn().unwrap(),
        Duration::from_secs(60),
        &format!("plugbay run with {config}"),
    )
}

fn faulty(config: Value) -> PluginSpec {
    fixture("faulty").with_config(config)
}

// ---------------------------------------------------------------------------------
// Panics in `Drop`, and panic payloads whose `Drop` panics (the SDK contains them)
// ---------------------------------------------------------------------------------

#[test]
fn plugbay_run_survives_a_panic_in_drop() {
    for drop in ["panic", "bomb"] {
        let run = run_faulty(json!({ "drop": drop }), None);
        assert_eq!(
            run.status.code(),
            Some(0),
            "drop {drop}: {}\n{}",
            run.stdout,
            run.stderr
        );
        let records: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(records, json!([{"id": 1}, {"id": 2}]), "drop {drop}");
    }
}

#[test]
fn plugbay_run_reports_a_panic_whose_payload_panics_when_dropped() {
    for (config, env, message) in [
        (
            json!({"bomb": "process"}),
            None,
            "panicked in process: process panicked: a panic with a non-string payload",
        ),
        (
            json!({"bomb": "init"}),
            None,
            "panicked in init: init panicked: a panic with a non-string payload",
        ),
        (
            json!({}),
            Some(("PLUGBAY_FAULTY_DEFAULT", "bomb")),
            "could not be constructed: panicked: the constructor panicked: a panic with a non-string payload",
        ),
        (
            json!({}),
            Some(("PLUGBAY_FAULTY_DEFAULT", "panic")),
            "could not be constructed: panicked: the constructor panicked: deliberate panic in the constructor",
        ),
    ] {
        let run = run_faulty(config.clone(), env);
        // The run fails as any failed plugin does: exit 1 with the plugin's error,
        // not the process ended by a panic that escaped the plugin.
        assert_eq!(run.status.code(), Some(1), "{config} {env:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(message),
            "{config} {env:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_host_survives_panics_in_drop_and_in_dropping_payloads() {
    in_child(
        "a_host_survives_panics_in_drop_and_in_dropping_payloads",
        Duration::from_secs(120),
        || {
            let (host, _dir) = host();
            for how in ["panic", "bomb"] {
                let mut plugin = host.start(faulty(json!({ "drop": how }))).unwrap();
                plugin.process(&Batch::from_json("[1]")).unwrap();
                let status = plugin.shutdown().unwrap();
                assert_eq!(status.state, State::Unloaded, "drop {how}");
                // Dropped without `shutdown`, too.
                let mut plugin = host.start(faulty(json!({ "drop": how }))).unwrap();
                plugin.process(&Batch::from_json("[1]")).unwrap();
                drop(plugin);
            }
            for hook in ["process", "cleanup"] {
                let mut plugin = host.start(faulty(json!({ "bomb": hook }))).unwrap();
                let result = plugin
                    .process(&Batch::from_json("[1]"))
                    .and_then(|_| plugin.cleanup());
                match result {
                    Err(CallError::Panicked { message, .. }) => {
                        assert!(message.contains("non-string payload"), "{message}")
                    }
                    other => panic!("bomb in {hook}: expected a panic error, got {other:?}"),
                }
                drop(plugin);
            }
            let err = host
                .start(faulty(json!({"bomb": "init"})))
                .unwrap_err()
                .to_string();
            assert!(err.contains("panicked in init"), "{err}");
            let mut plugin = host.start(example("data-processor")).unwrap();
            plugin.process(&Batch::from_json("[{}]")).unwrap();
            plugin.shutdown().unwrap();
        },
    );
}

// ---------------------------------------------------------------------------------
// Deadlines too far to represent mean no deadline
// ---------------------------------------------------------------------------------

#[test]
fn a_deadline_of_duration_max_means_none() {
    in_child(
        "a_deadline_of_duration_max_means_none",
        Duration::from_secs(120),
        || {
            let dir = tempfile::tempdir().unwrap();
            // The host's default (for a plugin whose manifest sets no `timeout_ms`)...
            let host = Host::new()
                .with_data_dir(dir.path())
                .with_timeout(Duration::MAX);
            let mut spec = example("data-processor");
            spec.manifest.timeout_ms = None;
            let mut plugin = host.start(spec.clone()).unwrap();
            assert_eq!(plugin.status().timeout, Duration::MAX);
            let output = plugin.process(&Batch::from_json(r#"[{"id": 1}]"#)).unwrap();
            assert_eq!(output.len(), Some(1));
            assert_eq!(plugin.shutdown().unwrap().state, State::Unloaded);
            // ... a spec's ...
            let slow = faulty(json!({"slow": "process", "ms": 300})).with_timeout(Duration::MAX);
            let mut plugin = host.start(slow.clone()).unwrap();
            plugin.process(&Batch::from_json("[1]")).unwrap();
            drop(plugin);
            // ... and a pipeline's stages.
            let stages = vec![
                host.start(slow).unwrap(),
                host.start(spec).unwrap(),
                host.start(fixture("faulty").with_timeout(Duration::MAX))
                    .unwrap(),
            ];
            let mut pipeline = Pipeline::new(stages);
            let input = (0..3).map(|i| Ok(Batch::from_json(format!(r#"[{{"id": {i}}}]"#))));
            let mut out = 0;
            let report = pipeline
                .run(input, |_| {
                    out += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!((report.batches, out), (3, 3));
            for stage in pipeline.into_stages() {
                assert_eq!(stage.shutdown().unwrap().state, State::Unloaded);
            }
        },
    );
}

// ---------------------------------------------------------------------------------
// A `Drop` that never returns: dropping has the call deadline
// ---------------------------------------------------------------------------------

#[test]
fn a_drop_that_blocks_is_abandoned_at_the_deadline() {
    in_child(
        "a_drop_that_blocks_is_abandoned_at_the_deadline",
        Duration::from_secs(120),
        || {
            let (host, _dir) = host();
            let blocking =
                || faulty(json!({"drop": "hang"})).with_timeout(Duration::from_millis(300));
            // shutdown()
            let mut plugin = host.start(blocking()).unwrap();
            plugin.process(&Batch::from_json("[1]")).unwrap();
            let started = Instant::now();
            let err = plugin.shutdown().unwrap_err();
            assert!(matches!(err, CallError::DropTimeout { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("did not finish dropping within 300ms"),
                "{err}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(host.abandoned_workers_of("faulty@0.1.0"), 1);
            // Drop of the handle.
            let mut plugin = host.start(blocking()).unwrap();
            plugin.process(&Batch::from_json("[1]")).unwrap();
            let started = Instant::now();
            drop(plugin);
            assert!(started.elapsed() < Duration::from_secs(5));
            // Drop of a pipeline.
            let stages = vec![
                host.start(example("data-processor")).unwrap(),
                host.start(blocking()).unwrap(),
            ];
            let mut pipeline = Pipeline::new(stages);
            pipeline
                .run(std::iter::once(Ok(Batch::from_json("[{}]"))), |_| Ok(()))
                .unwrap();
            let started = Instant::now();
            drop(pipeline);
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(host.abandoned_workers(), 3);
            // The server's stop.
            server_stops_despite_a_blocking_drop();
        },
    );
}

fn server_stops_despite_a_blocking_drop() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let key = {
        let mut registry = Registry::open(&home).unwrap();
        let folder = fixture_manifest("faulty");
        let registration =
            Registration::from_path(&folder, Some(&library("fixture-faulty"))).unwrap();
        let entry = registry
            .register(&Host::new(), registration, "test")
            .unwrap();
        // On a worker thread of the server: a worker process would be killed instead.
        registry
            .approve_with_isolation(&entry.id, "test", None, plugbay_host::Isolation::Thread)
            .unwrap();
        registry.enable(&entry.id, "test").unwrap();
        registry
            .configure(&entry.id, &json!({"drop": "hang"}), "test")
            .unwrap();
        registry
            .create_key("runner", &[Scope::Execute], "test")
            .unwrap()
            .1
    };
    let mut options = ServeOptions::new(&home);
    options.addr = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(options).unwrap().spawn().unwrap();
    let reply = reqwest::blocking::Client::new()
        .post(format!(
            "http://{}/plugins/faulty@0.1.0/process",
            server.local_addr()
        ))
        .bearer_auth(key)
        .json(&json!([1]))
        .send()
        .unwrap();
    assert_eq!(reply.status(), 200);
    let started = Instant::now();
    server.stop().unwrap();
    // The manifest's deadline is 2 s, for `cleanup` and then for the drop.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn plugbay_run_ends_despite_a_drop_that_blocks() {
    plugbay_tests::plugins_dir();
    plugbay_bin();
    let started = Instant::now();
    let run = run_faulty(json!({"drop": "hang"}), None);
    assert!(started.elapsed() < Duration::from_secs(30));
    // Every record was written; then dropping the instance missed its deadline.
    let records: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(records, json!([{"id": 1}, {"id": 2}]));
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("the run finished, but cleaning up faulty@0.1.0 failed: plugin faulty@0.1.0's instance did not finish dropping within 2s; its worker thread was abandoned"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------
// Abandoned workers: counted, cost no host CPU, and hold only what the plugin reads
// ---------------------------------------------------------------------------------

#[test]
fn abandoned_workers_are_counted_until_they_return() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(
            faulty(json!({"slow": "process", "ms": 1500})).with_timeout(Duration::from_millis(200)),
        )
        .unwrap();
    let err = plugin.process(&Batch::from_json("[1]")).unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(plugin.status().abandoned);
    assert_eq!(host.abandoned_workers(), 1);
    assert_eq!(host.abandoned_workers_of("faulty@0.1.0"), 1);
    assert_eq!(
        host.clone().abandoned_workers(),
        1,
        "clones share the count"
    );
    let mut hung = host
        .start(faulty(json!({"hang": "init"})).with_timeout(Duration::from_millis(200)))
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(hung.contains("did not finish loading and init"), "{hung}");
    assert_eq!(host.abandoned_workers(), 2, "a start that timed out counts");
    // The slow one returns late, finds itself abandoned and ends.
    let started = Instant::now();
    while host.abandoned_workers() > 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    hung.clear();
    drop(plugin);
    assert_eq!(host.abandoned_workers(), 1);
}

/// The CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Clock ticks: `sysconf(_SC_CLK_TCK)` is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The resident memory of this process.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn abandoned_workers_cost_the_host_no_cpu() {
    in_child(
        "abandoned_workers_cost_the_host_no_cpu",
        Duration::from_secs(120),
        || {
            let (host, _dir) = host();
            let mut plugins = Vec::new();
            for _ in 0..4 {
                let mut plugin = host
                    .start(
                        faulty(json!({"hang": "process"})).with_timeout(Duration::from_millis(100)),
                    )
                    .unwrap();
                assert!(plugin.process(&Batch::from_json("[1]")).is_err());
                plugins.push(plugin);
            }
            let stages = vec![host
                .start(faulty(json!({"hang": "process"})).with_timeout(Duration::from_millis(100)))
                .unwrap()];
            let mut pipeline = Pipeline::new(stages);
            assert!(pipeline
                .run(std::iter::once(Ok(Batch::from_json("[1]"))), |_| Ok(()))
                .is_err());
            assert_eq!(host.abandoned_workers(), 5);
            let (before, started) = (cpu_time(), Instant::now());
            std::thread::sleep(Duration::from_secs(1));
            let used = cpu_time() - before;
            eprintln!(
                "5 abandoned workers: {used:?} of CPU in {:?}",
                started.elapsed()
            );
            assert!(
                used < started.elapsed() / 10,
                "5 abandoned workers cost {used:?} of CPU in {:?}",
                started.elapsed()
            );
        },
    );
}

#[test]
fn a_stuck_pipeline_stage_releases_the_batches_queued_for_it() {
    in_child(
        "a_stuck_pipeline_stage_releases_the_batches_queued_for_it",
        Duration::from_secs(120),
        || {
            const SIZE: usize = 48 << 20;
            let (host, _dir) = host();
            let stages = vec![host
                .start(faulty(json!({"hang": "process"})).with_timeout(Duration::from_secs(1)))
                .unwrap()];
            let mut pipeline = Pipeline::new(stages);
            let baseline = resident();
            // One string record of 48 MiB per batch: the stage hangs on the first
            // while the next ones wait in its queue.
            let input = (0..6).map(|_| {
                let mut json = vec![b'x'; SIZE + 4];
                json[..2].copy_from_slice(b"[\"");
                json[SIZE + 2..].copy_from_slice(b"\"]");
                Ok(Batch::from_json(json))
            });
            let err = pipeline.run(input, |_| Ok(())).unwrap_err();
            let PipelineError::Stage { error, batch, .. } = err else {
                panic!("expected a stage error, got {err}")
            };
            assert!(matches!(error, CallError::Timeout { .. }), "{error}");
            assert_eq!(
                batch.as_bytes().len(),
                SIZE + 4,
                "the caller gets its batch"
            );
            drop(batch);
            drop(pipeline);
            // Let the stuck plugin finish reading its batch.
            std::thread::sleep(Duration::from_secs(1));
            // The stuck plugin keeps what it may still read: the batch it was given
            // and its own copy of the record. The batches queued behind it are gone.
            let held = resident().saturating_sub(baseline);
            eprintln!("one stuck stage holds {} MiB", held >> 20);
            assert!(
                held < 5 * SIZE as u64 / 2,
                "the host holds {} MiB for one stuck stage",
                held >> 20
            );
        },
    );
}

// ---------------------------------------------------------------------------------
// Host services end with the instance
// ---------------------------------------------------------------------------------

/// A store that counts the writes that reach it.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    puts: AtomicU64,
}

impl DataStore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, value)
    }
    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key)
    }
}

/// Whether a thread named `name` runs in this process.
fn thread_runs(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
        std::fs::read_to_string(task.unwrap().path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == name)
    })
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 10_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

#[test]
fn a_stopped_plugins_threads_get_no_more_host_services() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore::default());
    let host = Host::new()
        .with_data_dir(dir.path())
        .with_store(store.clone());
    // Stopped by `shutdown`, and failed by a panic (the instance is forgotten).
    for extra in [json!({}), json!({"panic": "process"})] {
        let name = unique("linger");
        let mut config = json!({ "linger": name });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut plugin = host.start(faulty(config)).unwrap();
        let key = format!("faulty/linger/{name}");
        let started = Instant::now();
        while store.get(&key).unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the thread never wrote"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if extra.get("panic").is_some() {
            let err = plugin.process(&Batch::from_json("[1]")).unwrap_err();
            assert!(matches!(err, CallError::Panicked { .. }), "{err}");
            drop(plugin);
        } else {
            plugin.process(&Batch::from_json("[1]")).unwrap();
            plugin.shutdown().unwrap();
        }
        let (puts, value) = (store.puts.load(Ordering::SeqCst), store.get(&key).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(thread_runs(&name), "the plugin's thread runs on");
        assert_eq!(
            store.puts.load(Ordering::SeqCst) - puts,
            0,
            "puts landed after the plugin was stopped ({extra})"
        );
        assert_eq!(store.get(&key).unwrap(), value);
    }
}

#[test]
fn a_copy_of_the_services_without_its_count_is_denied_not_freed() {
    let finished = in_child(
        "a_copy_of_the_services_without_its_count_is_denied_not_freed",
        Duration::from_secs(120),
        || {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(CountingStore::default());
            let host = Host::new()
                .with_data_dir(dir.path())
                .with_store(store.clone());
            let manifest = Manifest::parse(
                r#"{"name":"raw-services","version":"0.1.0","description":"calls its host services after it is dropped","author":"Plugbay tests","main":"fixture_raw_services","hooks":["init","process","cleanup"],"permissions":["process:data","write:data"]}"#,
            )
            .unwrap();
            let spec = PluginSpec::new(library("fixture-raw-services"), manifest);
            for _ in 0..2 {
                let mut plugin = host.start(spec.clone()).unwrap();
                plugin.process(&Batch::from_json("[1]")).unwrap();
                plugin.shutdown().unwrap();
            }
            // Its thread calls through the copy every 10 ms from now on.
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(store.puts.load(Ordering::SeqCst), 0);
            assert!(store.get("raw-services/after-drop").unwrap().is_none());
        },
    );
    if std::env::var_os(CHILD).is_none() {
        assert!(
            finished.stderr.contains(
                "raw-services: store_put after drop: permission denied: store_put denied: plugin raw-services@0.1.0 was stopped"
            ),
            "{}",
            finished.stderr
        );
        assert!(!finished.stderr.contains("store_put after drop: stored"));
    }
}

#[test]
fn local_plugins_revoke_their_services_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore::default());
    let host = Host::new()
        .with_data_dir(dir.path())
        .with_store(store.clone());
    let name = unique("linger");
    let spec = faulty(json!({ "linger": name }));
    let key = format!("faulty/linger/{name}");
    let thread_store = store.clone();
    std::thread::spawn(move || {
        let plugin = host.start_local(spec).unwrap();
        let started = Instant::now();
        while thread_store.get(&key).unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the thread never wrote"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        plugin.shutdown().unwrap();
    })
    .join()
    .unwrap();
    let puts = store.puts.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert!(thread_runs(&name));
    assert_eq!(store.puts.load(Ordering::SeqCst), puts);
}
