//! Starting a plugin: confine a thread, open the library, abi_stable's layout check,
//! the version and manifest checks, the constructor and `init`.
//!
//! - `start/worker`: [`Host::start`] of `data-processor` (spawns and confines its
//!   worker, then waits for `init`). Target: median ≤ 5 ms.
//! - `start/local`: [`Host::start_local`] of `data-processor` on a fresh thread.
//! - `start/process`: [`Host::start`] of `data-processor` in a worker process of its
//!   own, as a host does by default: a worker launched ahead waits (the host launches
//!   the next one in the background, while the untimed shutdown runs), and the start
//!   gives it the library and setup, confines it, loads and calls `init`. Target:
//!   median ≤ 5 ms.
//! - `start/process_cold`: the same without a worker launched ahead
//!   (`Host::with_spare_worker(false)`): each start also spawns the `plugbay` binary.
//!
//! Both load a library this process has already opened (the first load of a library
//! maps it and checks its layout once; the `footprint` bench measures that cold
//! start separately). Stopping the instance is not timed.
//!
//! [`Host::start`]: plugbay_host::Host::start
//! [`Host::start_local`]: plugbay_host::Host::start_local

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};

use common::{estimate, example, host, print_table, process_host, time};

/// Between process starts, time for the worker launched ahead to get ready (its
/// program run and started), as between the starts of a host that is not starting
/// plugins in a tight loop.
const LAUNCH_PAUSE: Duration = Duration::from_millis(100);

fn start(c: &mut Criterion) {
    let host = host();
    let spec = example("data-processor");
    let mut group = c.benchmark_group("start");
    group.bench_function("worker", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let plugin = host.start(spec.clone()).expect("data-processor starts");
                total += started.elapsed();
                plugin.shutdown().expect("data-processor shuts down");
            }
            total
        })
    });
    group.bench_function("local", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (host, spec) = (host.clone(), spec.clone());
                total += std::thread::spawn(move || {
                    let started = Instant::now();
                    let plugin = host.start_local(spec).expect("data-processor starts");
                    let elapsed = started.elapsed();
                    plugin.shutdown().expect("data-processor shuts down");
                    elapsed
                })
                .join()
                .expect("the local thread ran");
            }
            total
        })
    });
    let process_host = process_host();
    group.bench_function("process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let plugin = process_host
                    .start(spec.clone())
                    .expect("data-processor starts in a worker process");
                total += started.elapsed();
                plugin.shutdown().expect("data-processor shuts down");
                // Untimed: the next worker's launch, in the background, finishes.
                std::thread::sleep(LAUNCH_PAUSE);
            }
            total
        })
    });
    let cold_host = process_host.clone().with_spare_worker(false);
    group.bench_function("process_cold", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let plugin = cold_host
                    .start(spec.clone())
                    .expect("data-processor starts in a worker process");
                total += started.elapsed();
                plugin.shutdown().expect("data-processor shuts down");
            }
            total
        })
    });
    group.finish();
}

fn summary() {
    let rows: Vec<Vec<String>> = [
        (
            "worker",
            "start (worker): confine + load + checks + init",
            5e6,
        ),
        ("local", "start (local thread)", 5e6),
        (
            "process",
            "start (worker process, launched ahead): confine + load + checks + init",
            5e6,
        ),
        (
            "process_cold",
            "start (worker process, none launched ahead): spawn + confine + load + checks + init",
            5e6,
        ),
    ]
    .into_iter()
    .filter_map(|(function, what, target)| {
        let found = estimate("start", function, None)?;
        Some(vec![
            what.to_owned(),
            time(found.median),
            format!("± {}", time(found.mad)),
            format!("≤ {}", time(target)),
            if found.median <= target {
                "met"
            } else {
                "missed"
            }
            .to_owned(),
        ])
    })
    .collect();
    print_table(
        &format!(
            "Starting data-processor, library already mapped ({})",
            common::machine()
        ),
        &["benchmark", "median", "spread (MAD)", "target", ""],
        &rows,
    );
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = start
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
