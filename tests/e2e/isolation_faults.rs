//! The faults native code can have, each in a worker process of its own (the
//! `crasher` fixture): the caller gets an error naming the cause and keeps its batch,
//! the host and its other plugins go on serving during and after, the worker process
//! is gone, and a new instance of the same plugin starts and serves.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use plugbay_host::{
    Batch, CallError, Failure, Hook, Host, Isolation, Limits, PluginHandle, PluginSpec, StartError,
    State,
};
use serde_json::{json, Value};

use crate::isolation::process_host;
use crate::{example, fixture};

/// The memory limit of the worker processes in these tests.
const MEMORY_LIMIT: u64 = 256 << 20;

/// A host of worker processes with a small memory limit.
fn faults_host() -> (Host, tempfile::TempDir) {
    let (host, dir) = process_host();
    let host = host.with_limits(Limits {
        memory_bytes: Some(MEMORY_LIMIT),
        ..Limits::default()
    });
    (host, dir)
}

/// The crasher with `config`, its calls due within `timeout`.
fn crasher(config: Value, timeout: Duration) -> PluginSpec {
    let mut spec = fixture("crasher").with_timeout(timeout);
    spec.config = Some(config);
    spec
}

/// Other plugins of the same host: one in a worker process, one on a worker thread
/// of the host's own process (which a fault that reached the host would end).
struct Bystanders(Vec<PluginHandle>);

impl Bystanders {
    fn start(host: &Host) -> Bystanders {
        let in_process = host.start(example("data-processor")).unwrap();
        let on_thread = host
            .start(example("data-processor").with_isolation(Isolation::Thread))
            .unwrap();
        assert_eq!(on_thread.status().isolation, Isolation::Thread);
        Bystanders(vec![in_process, on_thread])
    }

    /// Each serves one batch; returns the slowest call.
    fn serve(&mut self) -> Duration {
        let batch = Batch::from_records(&[json!({"id": 7})]).unwrap();
        let mut slowest = Duration::ZERO;
        for plugin in &mut self.0 {
            let started = Instant::now();
            let out: Vec<Value> = plugin
                .process(&batch)
                .unwrap_or_else(|err| panic!("a bystander stopped serving: {err}"))
                .records()
                .unwrap();
            slowest = slowest.max(started.elapsed());
            assert_eq!(out.len(), 1);
            assert_eq!(
                (&out[0]["id"], &out[0]["processed"]),
                (&json!(7), &json!(true))
            );
        }
        slowest
    }

    /// Serves batches until `done()`, at least once; returns how many rounds and the
    /// slowest call.
    fn serve_until(&mut self, mut done: impl FnMut() -> bool) -> (u32, Duration) {
        let (mut rounds, mut slowest) = (0, Duration::ZERO);
        loop {
            slowest = slowest.max(self.serve());
            rounds += 1;
            if done() {
                return (rounds, slowest);
            }
        }
    }
}

/// Whether process `pid` is gone (not even a zombie), waiting up to a second.
fn gone(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(1);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > until {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// What a fault in `process` did.
struct Outcome {
    error: CallError,
    state: State,
}

/// Runs the crasher with `config` in `process` while the host's other plugins serve
/// batches, and proves what every fault must leave behind: the batch is still the
/// caller's, the worker process is gone, the failed instance takes no more calls, the
/// other plugins serve during and after, and a new instance of the crasher starts and
/// serves.
fn fault_in_process(config: Value, timeout: Duration) -> Outcome {
    let (host, _dir) = faults_host();
    let mut bystanders = Bystanders::start(&host);
    let mut plugin = host.start(crasher(config, timeout)).unwrap();
    let pid = plugin.status().pid.expect("a worker process");
    let batch = Batch::from_records(&[json!({"id": 1}), json!({"id": 2})]).unwrap();
    let bytes = batch.as_bytes().to_vec();

    let error = thread::scope(|scope| {
        let call = scope.spawn(|| plugin.process(&batch));
        bystanders.serve_until(|| call.is_finished());
        call.join().unwrap().expect_err("the fault is an error")
    });
    assert_eq!(batch.as_bytes(), bytes, "the batch is still the caller's");
    assert!(gone(pid), "worker process {pid} is gone after its fault");
    let state = plugin.status().state.clone();
    assert!(matches!(state, State::Failed(_)), "{state}");
    let again = plugin.process(&batch).unwrap_err();
    assert!(matches!(again, CallError::Failed { .. }), "{again}");
    drop(plugin);

    bystanders.serve();
    let mut fresh = host
        .start(crasher(json!({"fault": "ok"}), timeout))
        .unwrap();
    assert_ne!(fresh.status().pid, Some(pid));
    let echoed = fresh.process(&batch).unwrap();
    assert_eq!(echoed.as_bytes(), bytes);
    fresh.shutdown().unwrap();
    bystanders.serve();
    Outcome { error, state }
}

/// The cause of a crash in `process`, after checking it is one.
fn crash_cause(outcome: &Outcome) -> &str {
    let CallError::Crashed { hook, cause, .. } = &outcome.error else {
        panic!("expected a crash, got: {}", outcome.error);
    };
    assert_eq!(*hook, Hook::Process);
    assert_eq!(
        outcome.state,
        State::Failed(Failure::Crashed(cause.clone()))
    );
    cause
}

/// Starts the crasher with the fault in `init`: the start fails naming the cause,
/// the other plugins serve, and a new instance starts and serves.
fn fault_in_init(fault: &str) -> String {
    let (host, _dir) = faults_host();
    let mut bystanders = Bystanders::start(&host);
    let timeout = Duration::from_secs(5);
    let err = host
        .start(crasher(json!({"fault": fault, "hook": "init"}), timeout))
        .expect_err("the fault in init fails the start");
    let StartError::WorkerCrashed { cause, .. } = &err else {
        panic!("expected the worker to crash while starting, got: {err}");
    };
    bystanders.serve();
    let mut fresh = host
        .start(crasher(json!({"fault": "ok"}), timeout))
        .unwrap();
    fresh.process(&Batch::from_json("[1]")).unwrap();
    bystanders.serve();
    cause.clone()
}

#[test]
fn a_segfault_ends_only_the_worker_and_names_sigsegv() {
    let outcome = fault_in_process(json!({"fault": "segfault"}), Duration::from_secs(5));
    let cause = crash_cause(&outcome);
    assert!(cause.contains("SIGSEGV"), "{cause}");
    let cause = fault_in_init("segfault");
    assert!(cause.contains("SIGSEGV"), "{cause}");
}

#[test]
fn an_abort_ends_only_the_worker_and_names_sigabrt() {
    let outcome = fault_in_process(json!({"fault": "abort"}), Duration::from_secs(5));
    let cause = crash_cause(&outcome);
    assert!(cause.contains("SIGABRT"), "{cause}");
    let cause = fault_in_init("abort");
    assert!(cause.contains("SIGABRT"), "{cause}");
}

#[test]
fn a_stack_overflow_ends_only_the_worker_and_says_so() {
    let outcome = fault_in_process(json!({"fault": "stack_overflow"}), Duration::from_secs(5));
    let cause = crash_cause(&outcome);
    assert!(cause.contains("overflowed its stack"), "{cause}");
    let cause = fault_in_init("stack_overflow");
    assert!(cause.contains("overflowed its stack"), "{cause}");
}

#[test]
fn exit_ends_only_the_worker_and_names_its_status() {
    let outcome = fault_in_process(json!({"fault": "exit"}), Duration::from_secs(5));
    let cause = crash_cause(&outcome);
    assert!(cause.contains("exited with status 3"), "{cause}");
    let cause = fault_in_init("exit");
    assert!(cause.contains("exited with status 3"), "{cause}");
}

#[test]
fn allocating_past_the_memory_limit_ends_only_the_worker_and_names_memory() {
    let outcome = fault_in_process(json!({"fault": "oom"}), Duration::from_secs(10));
    let cause = crash_cause(&outcome);
    assert!(cause.contains("memory allocation"), "{cause}");
    let cause = fault_in_init("oom");
    assert!(cause.contains("memory allocation"), "{cause}");
}

#[test]
fn an_endless_loop_is_killed_at_the_deadline_and_uses_no_cpu_after() {
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let outcome = fault_in_process(json!({"fault": "spin"}), timeout);
    let CallError::Timeout {
        hook, timeout: t, ..
    } = &outcome.error
    else {
        panic!("expected a timeout, got: {}", outcome.error);
    };
    assert_eq!((*hook, *t), (Hook::Process, timeout));
    assert!(matches!(outcome.state, State::Failed(Failure::Timeout(_))));
    // `fault_in_process` proved the process gone (`/proc/PID` absent): it was killed
    // and reaped, so it uses no CPU.
    assert!(started.elapsed() < Duration::from_secs(30));

    // In `init`, the start fails at the deadline (and the worker is killed the same
    // way).
    let (host, _dir) = faults_host();
    let mut bystanders = Bystanders::start(&host);
    let started = Instant::now();
    let err = host
        .start(crasher(json!({"fault": "spin", "hook": "init"}), timeout))
        .unwrap_err();
    assert!(matches!(err, StartError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
    bystanders.serve();
}

/// Of `pids`, those still there (zombies included) after up to a second.
fn survivors(pids: &[u32]) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_fork_bomb_makes_no_process_and_the_worker_goes_on() {
    let (host, _dir) = faults_host();
    let mut bystanders = Bystanders::start(&host);
    // Each child the fixture manages to fork sleeps this long (then exits), holding
    // what it inherited from the worker.
    let linger = Duration::from_secs(3);
    let config =
        json!({"fault": "fork_bomb", "children": 16, "linger_ms": linger.as_millis() as u64});
    let mut plugin = host.start(crasher(config, Duration::from_secs(5))).unwrap();
    let pid = plugin.status().pid.expect("a worker process");
    let batch = Batch::from_json("[1]");
    let out: Vec<Value> = plugin.process(&batch).unwrap().records().unwrap();
    let report = &out[0];
    let forked: Vec<u32> = serde_json::from_value(report["forked"].clone()).unwrap();
    bystanders.serve();

    // Whatever it managed, nothing it made outlives its worker process, and stopping
    // the worker does not wait for what it made.
    let stopping = Instant::now();
    plugin.shutdown().unwrap();
    let stopped = stopping.elapsed();
    assert!(gone(pid), "worker process {pid} is gone");
    let left = survivors(&forked);
    assert!(
        left.is_empty(),
        "processes forked by the worker outlive it: {left:?} (report: {report})"
    );
    assert!(stopped < linger, "stopping the worker took {stopped:?}");
    // The worker could not fork at all, and said why.
    assert!(forked.is_empty(), "the worker forked: {report}");
    assert_eq!(report["refused"], 16, "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("not permitted"), "{report}");
    assert_eq!(report["thread"], true, "threads still start: {report}");

    bystanders.serve();
    let mut fresh = host
        .start(crasher(json!({"fault": "ok"}), Duration::from_secs(5)))
        .unwrap();
    assert_eq!(fresh.process(&batch).unwrap().as_bytes(), b"[1]");
}

/// The resident memory of this process, in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib << 10
}

/// CPU time this process used so far (user and system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: `sysconf` only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn a_flood_of_output_is_logged_rate_limited_and_the_host_stays_responsive() {
    // Bytes the plugin writes to stdout (in lines of 1 MiB), and as many to stderr
    // (in lines of 16 bytes).
    const FLOOD: u64 = 1 << 30;
    let logged_before = crate::api::logs().len();
    let (host, _dir) = faults_host();
    let mut bystanders = Bystanders::start(&host);
    let config = json!({"fault": "flood", "bytes": FLOOD});
    let mut plugin = host
        .start(crasher(config, Duration::from_secs(30)))
        .unwrap();
    let batch = Batch::from_json("[1]");
    let (before, cpu_before, started) = (resident(), cpu_time(), Instant::now());
    let (result, rounds, slowest, peak) = thread::scope(|scope| {
        let call = scope.spawn(|| plugin.process(&batch));
        let mut peak = before;
        let (rounds, slowest) = bystanders.serve_until(|| {
            peak = peak.max(resident());
            call.is_finished()
        });
        (call.join().unwrap(), rounds, slowest, peak)
    });
    let (took, cpu) = (started.elapsed(), cpu_time() - cpu_before);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "a flood of 2 x {FLOOD} bytes took {took:?}, the host's CPU {cpu:?} (the bystanders' \
         {rounds} rounds included), its memory grew by {} KiB; slowest bystander call {slowest:?}",
        grew >> 10
    );
    assert_eq!(
        result.unwrap().as_bytes(),
        b"[1]",
        "the plugin returns normally"
    );
    assert!(grew < 64 << 20, "the host's memory grew by {grew} bytes");
    assert!(
        slowest < Duration::from_secs(1),
        "a bystander's call took {slowest:?}"
    );
    plugin.shutdown().unwrap();

    let logs = crate::api::logs();
    let ours: Vec<&str> = logs[logged_before..]
        .lines()
        .filter(|line| line.contains("plugin=crasher@0.1.0"))
        .collect();
    let lines = |stream: &str| {
        let tag = format!("stream=\"{stream}\"");
        ours.iter()
            .filter(|line| line.contains(" INFO ") && line.contains(&tag))
            .count()
    };
    // At most 100 lines a second per stream reach the log, each cut at 1 KiB.
    let allowed = 100 * (took.as_secs() as usize + 2);
    assert!(
        (1..=allowed).contains(&lines("stderr")),
        "{} stderr lines in {took:?}",
        lines("stderr")
    );
    assert!(
        (1..=allowed).contains(&lines("stdout")),
        "{} stdout lines in {took:?}",
        lines("stdout")
    );
    assert!(
        ours.iter().all(|line| line.len() < 2048),
        "a logged line is longer than 2 KiB"
    );
    let dropped = ours
        .iter()
        .find(|line| line.contains("plugin output dropped") && line.contains("stream=\"stderr\""));
    assert!(dropped.is_some(), "the log says output was dropped");
}

#[test]
fn a_flood_of_log_calls_is_rate_limited_too() {
    let logged_before = crate::api::logs().len();
    let (host, _dir) = process_host();
    let mut plugin = host
        .start(crasher(
            json!({"fault": "log_flood", "lines": 2000}),
            Duration::from_secs(30),
        ))
        .unwrap();
    let started = Instant::now();
    let input = Batch::from_json("[1]");
    assert_eq!(plugin.process(&input).unwrap().as_bytes(), b"[1]");
    // One more call a second later, so the host reports what it dropped.
    thread::sleep(Duration::from_millis(1100));
    plugin.process(&input).unwrap();
    let took = started.elapsed();
    plugin.shutdown().unwrap();
    let logs = crate::api::logs();
    let ours: Vec<&str> = logs[logged_before..]
        .lines()
        .filter(|line| line.contains("crasher@0.1.0"))
        .collect();
    let flood = ours
        .iter()
        .filter(|line| line.contains("log flood line"))
        .count();
    let allowed = 100 * (took.as_secs() as usize + 2);
    assert!(
        (1..=allowed).contains(&flood),
        "{flood} of 4,000 log lines reached the log in {took:?}"
    );
    assert!(
        ours.iter()
            .any(|line| line.contains("plugin log lines dropped")),
        "the log says lines were dropped"
    );
}
