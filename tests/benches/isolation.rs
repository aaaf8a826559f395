//! Process isolation beside the worker thread, on the same plugins and batches:
//!
//! - paired runs of `data-processor` at 1,000 and 10,000 records per batch, the
//!   worker process against the worker thread (records/s of the process / records/s
//!   of the thread). Target: ≥ 0.85.
//! - the resident memory of an idle worker process (`VmRSS` of each of 10 idle
//!   `data-processor` workers, median), and what it adds to the host.
//!
//! The round trip of an empty batch is in the `calls` bench
//! (`call/process_round_trip`), the start in `startup` (`start/process`).

mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{example, host, paired_budget, paired_ratio, print_table, process_host, records};

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    let thread_host = host();
    let process_host = process_host();
    let mut thread = thread_host
        .start(example("data-processor"))
        .expect("data-processor starts on a worker thread");
    let mut process = process_host
        .start(example("data-processor"))
        .expect("data-processor starts in a worker process");

    let mut rows = Vec::new();
    for n in [1_000, 10_000] {
        let batch = records(n);
        // Warm both up, and check they agree.
        let a = thread.process(&batch).expect("the thread processes");
        let b = process.process(&batch).expect("the process processes");
        assert_eq!(a.len(), b.len(), "both return every record");
        let time_thread = || {
            let started = Instant::now();
            black_box(thread.process(&batch).expect("the thread processes"));
            started.elapsed()
        };
        let time_process = || {
            let started = Instant::now();
            black_box(process.process(&batch).expect("the process processes"));
            started.elapsed()
        };
        // thread time / process time = process records/s / thread records/s.
        let (median, low, high) = paired_ratio(paired_budget(), time_thread, time_process);
        rows.push(vec![
            n.to_string(),
            format!("{median:.3} (IQR {low:.3}–{high:.3})"),
            format!("≥ 0.85: {}", if median >= 0.85 { "met" } else { "missed" }),
        ]);
    }
    thread.shutdown().expect("the thread shuts down");
    process.shutdown().expect("the process shuts down");
    print_table(
        &format!(
            "data-processor, paired runs: records/s in a worker process / records/s on a worker thread ({})",
            common::machine()
        ),
        &["records/batch", "process / thread", "target"],
        &rows,
    );

    let before = resident_kib(std::process::id()).unwrap_or(0);
    let idle: Vec<_> = (0..10)
        .map(|_| {
            process_host
                .start(example("data-processor"))
                .expect("data-processor starts in a worker process")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut workers: Vec<u64> = idle
        .iter()
        .filter_map(|plugin| plugin.status().pid.and_then(resident_kib))
        .collect();
    workers.sort_unstable();
    let host_added = resident_kib(std::process::id())
        .unwrap_or(0)
        .saturating_sub(before);
    let median = workers.get(workers.len() / 2).copied().unwrap_or(0);
    print_table(
        "Resident memory of idle isolated plugins (data-processor, 10 at once)",
        &["what", "KiB"],
        &[
            vec![
                "one idle worker process (VmRSS, median)".to_owned(),
                median.to_string(),
            ],
            vec![
                "smallest / largest worker".to_owned(),
                format!(
                    "{} / {}",
                    workers.first().unwrap_or(&0),
                    workers.last().unwrap_or(&0)
                ),
            ],
            vec![
                "added to the host for all 10".to_owned(),
                host_added.to_string(),
            ],
        ],
    );
    for plugin in idle {
        plugin.shutdown().expect("an idle plugin shuts down");
    }
}
