//! What loaded plugins cost while they wait, and what a cold start costs. Not a
//! criterion bench: it measures the process once and prints a table.
//!
//! 1. Memory: resident memory (`VmRSS`) before and after starting 1, 10 and 100
//!    instances of `data-processor` at once, then after each has processed one batch.
//!    Target: under 1 MiB resident per idle plugin.
//! 2. Idle CPU: with the 100 instances loaded and idle, the CPU time and context
//!    switches of their worker threads over one second (from `/proc/self/task`).
//!    Target: none.
//! 3. Cold start: [`Host::start`] of `data-processor` from libraries this process
//!    has never opened (fresh copies of the `.so`), so each start maps the library
//!    and runs abi_stable's full layout check. Target: ≤ 5 ms.
//! 4. The platform's floor for a hand-off between threads, without Plugbay: what
//!    waking a parked thread costs on this machine.
//!
//! `PLUGBAY_BENCH_QUICK=1` measures fewer cold starts.
//!
//! [`Host::start`]: plugbay_host::Host::start

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use plugbay_host::PluginHandle;

use common::{example, host, print_table, records, status_kb, time};

/// CPU time (ns) and context switches of the threads whose name starts with `prefix`.
fn threads_activity(prefix: &str) -> (u64, u64, usize) {
    let (mut cpu_ns, mut switches, mut threads) = (0, 0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0, 0);
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        cpu_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        switches += status
            .lines()
            .filter(|line| line.contains("ctxt_switches"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    (cpu_ns, switches, threads)
}

fn mib(kb: f64) -> String {
    if kb.abs() < 1024.0 {
        format!("{kb:.0} KiB")
    } else {
        format!("{:.2} MiB", kb / 1024.0)
    }
}

fn memory_and_idle() {
    let host = host();
    let spec = example("data-processor");
    let batch = records(100);
    let mut plugins: Vec<PluginHandle> = Vec::new();
    let before = status_kb("VmRSS");
    let mut rows = Vec::new();
    let mut last = (0usize, before);
    for count in [1, 10, 100] {
        while plugins.len() < count {
            plugins.push(host.start(spec.clone()).expect("data-processor starts"));
        }
        let started = status_kb("VmRSS");
        for plugin in &mut plugins {
            plugin.process(&batch).expect("data-processor processes");
        }
        let worked = status_kb("VmRSS");
        let added = (count - last.0) as f64;
        rows.push(vec![
            count.to_string(),
            mib(started as f64),
            mib((started - before) as f64 / count as f64),
            mib((started as f64 - last.1 as f64) / added),
            mib((worked - before) as f64 / count as f64),
            if (started - before) as f64 / (count as f64) < 1024.0 {
                "met"
            } else {
                "missed"
            }
            .to_owned(),
        ]);
        last = (count, worked);
    }
    print_table(
        &format!(
            "Resident memory of idle data-processor instances (before: {}; {})",
            mib(before as f64),
            common::machine()
        ),
        &[
            "plugins",
            "VmRSS",
            "per plugin, all",
            "per plugin, added",
            "per plugin after one batch each",
            "< 1 MiB",
        ],
        &[rows, Vec::new()].concat(),
    );

    // Let the last replies settle, then watch the idle workers for a second.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu_before, switches_before, threads) = threads_activity("plugbay-");
    let process_before = process_cpu_ns();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_after, switches_after, _) = threads_activity("plugbay-");
    let process_after = process_cpu_ns();
    let wall = wall.elapsed();
    print_table(
        &format!(
            "{threads} idle worker threads over {:.2} s",
            wall.as_secs_f64()
        ),
        &[
            "worker CPU time",
            "worker context switches",
            "whole process CPU time",
            "target",
        ],
        &[vec![
            time((cpu_after - cpu_before) as f64),
            (switches_after - switches_before).to_string(),
            time((process_after - process_before) as f64),
            if cpu_after == cpu_before && switches_after == switches_before {
                "no CPU: met"
            } else {
                "no CPU: missed"
            }
            .to_owned(),
        ]],
    );
    for plugin in plugins {
        plugin.shutdown().expect("data-processor shuts down");
    }
}

/// CPU time of the whole process (every thread), in ns.
fn process_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|times| times.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux architecture Plugbay supports.
    ticks * 10_000_000
}

fn cold_starts() {
    let host = host();
    let original = plugbay_tests::library("data-processor");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let count = if common::quick() { 5 } else { 20 };
    let mut times = Vec::new();
    for i in 0..count {
        let copy = dir.path().join(format!("libdata_processor_{i}.so"));
        std::fs::copy(&original, &copy).expect("the library copies");
        let spec = example("data-processor").with_library(&copy);
        let started = Instant::now();
        let plugin = host.start(spec).expect("data-processor starts");
        times.push(started.elapsed());
        plugin.shutdown().expect("data-processor shuts down");
    }
    let first = times[0];
    let mut rest: Vec<f64> = times[1..].iter().map(|t| t.as_nanos() as f64).collect();
    rest.sort_by(f64::total_cmp);
    let median = rest[rest.len() / 2];
    let spread = {
        let mut deviations: Vec<f64> = rest.iter().map(|t| (t - median).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        deviations[deviations.len() / 2]
    };
    print_table(
        &format!(
            "Cold start of data-processor: a library never opened before ({} bytes)",
            file_size(&original)
        ),
        &["start", "median", "spread (MAD)", "min / max", "target", ""],
        &[
            vec![
                "first library of the process".to_owned(),
                time(first.as_nanos() as f64),
                "—".to_owned(),
                "—".to_owned(),
                "≤ 5 ms".to_owned(),
                verdict(first.as_nanos() as f64),
            ],
            vec![
                format!("{} more fresh copies", rest.len()),
                time(median),
                format!("± {}", time(spread)),
                format!("{} / {}", time(rest[0]), time(rest[rest.len() - 1])),
                "≤ 5 ms".to_owned(),
                verdict(median),
            ],
        ],
    );
}

/// The platform's floor for a hand-off: a thread asks another to work for `w` and
/// waits for the answer on a `std` channel (park and wake, like any blocking
/// channel). The time beyond `w` is the cost of the two hand-offs; once `w` outlasts
/// the waiter's short spin, it includes waking a parked thread.
fn wake_ups() {
    use std::sync::mpsc::sync_channel;
    let (to_worker, work) = sync_channel::<Duration>(1);
    let (done, from_worker) = sync_channel::<()>(1);
    let worker = std::thread::spawn(move || {
        for busy in work {
            let started = Instant::now();
            while started.elapsed() < busy {
                std::hint::spin_loop();
            }
            if done.send(()).is_err() {
                return;
            }
        }
    });
    let budget = if common::quick() { 0.3 } else { 1.0 };
    let mut rows = Vec::new();
    for micros in [0u64, 1, 5, 20, 100, 1_000] {
        let busy = Duration::from_micros(micros);
        let rounds = ((budget * 1e6) / (micros as f64 + 5.0)).clamp(50.0, 50_000.0) as usize;
        let mut overheads: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                to_worker.send(busy).expect("the worker runs");
                from_worker.recv().expect("the worker answers");
                (started.elapsed() - busy).as_nanos() as f64
            })
            .collect();
        overheads.sort_by(f64::total_cmp);
        let at = |q: f64| overheads[((overheads.len() - 1) as f64 * q) as usize];
        rows.push(vec![
            format!("{micros} µs"),
            time(at(0.1)),
            time(at(0.5)),
            time(at(0.9)),
        ]);
    }
    drop(to_worker);
    let _ = worker.join();
    print_table(
        "Platform floor: a request and its reply between two threads, beyond the work itself",
        &["work per request", "p10", "median", "p90"],
        &rows,
    );
}

fn verdict(ns: f64) -> String {
    if ns <= 5e6 { "met" } else { "missed" }.to_owned()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

fn main() {
    // `cargo bench -- FILTER` passes a filter; this bench has no parts to pick, so it
    // runs whole unless the filter names something else.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("footprint: bench");
        return;
    }
    if let Some(filter) = args.iter().find(|arg| !arg.starts_with('-')) {
        if !"footprint".contains(filter.as_str()) {
            return;
        }
    }
    // Build the plugins before measuring anything.
    plugbay_tests::plugins_dir();
    memory_and_idle();
    cold_starts();
    wake_ups();
}
