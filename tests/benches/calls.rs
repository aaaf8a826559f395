//! The cost of the boundary itself, on the no-op fixture plugin and an empty batch:
//!
//! - `call/direct`: a `process` call on the calling thread ([`LocalPlugin`]), the
//!   floor: a function call through the ABI, the SDK's (empty) parse and write, and
//!   the host's output check. Target: median ≤ 50 ns.
//! - `call/worker_round_trip`: the same call sent to the plugin's worker thread and
//!   answered ([`PluginHandle::process`]). Target: median ≤ 10 µs.
//! - `call/process_round_trip`: the same call sent to a worker process through shared
//!   memory and answered (process isolation). Target: median ≤ 10 µs.
//!
//!
//! Then the spread of single calls, which criterion's means of many calls hide: each
//! of many calls timed on its own (`Instant` around it, whose own cost is in every
//! figure and printed beside them), for the median, p99 and p99.9 of the worker
//! round trip and the direct call. Target: worker round trip ≤ 0.5 µs median and
//! ≤ 5 µs p99.9.
//!
//! [`LocalPlugin`]: plugbay_host::local::LocalPlugin
//! [`PluginHandle::process`]: plugbay_host::PluginHandle::process

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use plugbay_host::Batch;

use common::{estimate, fixture, host, print_table, process_host, time, LocalThread};

fn calls(c: &mut Criterion) {
    let host = host();
    let empty = Batch::from_json("[]");
    let one = Batch::from_json(r#"[{"id":1}]"#);
    let mut group = c.benchmark_group("call");

    let local = LocalThread::start(host.clone(), vec![fixture("noop")]);
    for (name, batch) in [("direct", &empty), ("direct_one_record", &one)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let batch = batch.clone();
                local.run(move |plugins| {
                    let plugin = &mut plugins[0];
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(plugin.process(black_box(&batch)).expect("noop processes"));
                    }
                    started.elapsed()
                })
            })
        });
    }
    drop(local);

    let mut plugin = host.start(fixture("noop")).expect("noop starts");
    for (name, batch) in [
        ("worker_round_trip", &empty),
        ("worker_round_trip_one_record", &one),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(plugin.process(black_box(batch)).expect("noop processes")))
        });
    }
    let calls = if common::quick() { 100_000 } else { 1_000_000 };
    let mut rows = Vec::new();
    for (what, batch) in [
        ("worker round trip, empty batch", &empty),
        ("worker round trip, 1 record", &one),
    ] {
        let samples = (0..calls)
            .map(|_| {
                let started = Instant::now();
                black_box(plugin.process(black_box(batch)).expect("noop processes"));
                started.elapsed()
            })
            .collect();
        rows.push((what, samples));
    }
    plugin.shutdown().expect("noop shuts down");
    let local = LocalThread::start(host.clone(), vec![fixture("noop")]);
    for (what, batch) in [
        ("direct call, empty batch", &empty),
        ("direct call, 1 record", &one),
    ] {
        let batch = batch.clone();
        let samples = local.run(move |plugins| {
            (0..calls)
                .map(|_| {
                    let started = Instant::now();
                    black_box(
                        plugins[0]
                            .process(black_box(&batch))
                            .expect("noop processes"),
                    );
                    started.elapsed()
                })
                .collect()
        });
        rows.push((what, samples));
    }
    drop(local);
    let clock: Vec<Duration> = (0..calls)
        .map(|_| {
            let started = Instant::now();
            started.elapsed()
        })
        .collect();
    rows.push(("nothing (the clock's own cost)", clock));
    *SPREAD.lock().expect("the spread") = rows
        .into_iter()
        .map(|(what, samples)| (what, common::Spread::of(samples)))
        .collect();

    let mut plugin = process_host()
        .start(fixture("noop"))
        .expect("noop starts in a worker process");
    for (name, batch) in [
        ("process_round_trip", &empty),
        ("process_round_trip_one_record", &one),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(plugin.process(black_box(batch)).expect("noop processes")))
        });
    }
    group.finish();
    plugin.shutdown().expect("noop shuts down");
}

/// The spread of single calls, for the summary.
static SPREAD: Mutex<Vec<(&'static str, common::Spread)>> = Mutex::new(Vec::new());

fn summary() {
    let spread: Vec<Vec<String>> = SPREAD
        .lock()
        .expect("the spread")
        .iter()
        .map(|(what, spread)| {
            let target = match *what {
                "worker round trip, empty batch" => {
                    let met = spread.median <= 500.0 && spread.p999 <= 5_000.0;
                    format!("≤ 0.5 µs, ≤ 5 µs: {}", if met { "met" } else { "missed" })
                }
                _ => String::new(),
            };
            vec![
                (*what).to_owned(),
                time(spread.median),
                time(spread.p99),
                time(spread.p999),
                time(spread.max),
                spread.count.to_string(),
                target,
            ]
        })
        .collect();
    print_table(
        &format!(
            "Single calls on the no-op plugin, each timed ({})",
            common::machine()
        ),
        &[
            "call",
            "median",
            "p99",
            "p99.9",
            "max",
            "calls",
            "target (median, p99.9)",
        ],
        &spread,
    );

    let rows: Vec<Vec<String>> = [
        ("direct", "direct call, empty batch", 50.0),
        ("direct_one_record", "direct call, 1 record", f64::NAN),
        (
            "worker_round_trip",
            "worker round trip, empty batch",
            10_000.0,
        ),
        (
            "worker_round_trip_one_record",
            "worker round trip, 1 record",
            f64::NAN,
        ),
        (
            "process_round_trip",
            "worker process round trip, empty batch",
            10_000.0,
        ),
        (
            "process_round_trip_one_record",
            "worker process round trip, 1 record",
            f64::NAN,
        ),
    ]
    .into_iter()
    .filter_map(|(function, what, target)| {
        let found = estimate("call", function, None)?;
        Some(vec![
            what.to_owned(),
            time(found.median),
            format!("± {}", time(found.mad)),
            if target.is_nan() {
                "—".to_owned()
            } else {
                format!("≤ {}", time(target))
            },
            if target.is_nan() {
                String::new()
            } else if found.median <= target {
                "met".to_owned()
            } else {
                "missed".to_owned()
            },
        ])
    })
    .collect();
    print_table(
        &format!("Calls on the no-op plugin ({})", common::machine()),
        &["benchmark", "median", "spread (MAD)", "target", ""],
        &rows,
    );
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = calls
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
