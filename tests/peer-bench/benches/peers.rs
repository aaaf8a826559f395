//! `data-processor`'s work five ways in one process, side by side: in the host
//! (serde_json, no plugin), through Plugbay on a worker thread and in a worker
//! process, as an Extism WebAssembly plugin, and as a long-lived subprocess plugin
//! over JSON-lines pipes. Run it with `tests/peer-bench/run`, which builds what it
//! needs first. BENCHMARKS.md ("Peers side by side") has the figures and the method.
//!
//! In order:
//!
//! 1. Every way processes batches of 1, 100, 1,000 and 10,000 records and an empty
//!    batch, and its output is compared with the in-host output (timestamps aside:
//!    each way reads the clock itself). Any difference stops the bench.
//! 2. criterion times each way on each batch size, and on the empty batch
//!    (`peers/N/WAY`, `peers/empty/WAY`).
//! 3. Rotating interleaved rounds, per batch size: in each round every way processes
//!    the same number of batches, in an order that rotates from round to round;
//!    each round gives each way's records/s and its ratio to the in-host way's in
//!    that same round. Load that comes and goes on a shared machine hits every way
//!    of a round alike.
//! 4. Empty calls, in rotating rounds of 500 calls per way, each call timed on its
//!    own: the median, p99 and p99.9.
//! 5. Start times, in rotating rounds: from nothing to a way ready for its first
//!    batch.
//! 6. The small host programs of `src/bin`, each run on its own: their size and
//!    their resident memory (and their children's).
//!
//! `PLUGBAY_BENCH_QUICK=1` shortens every part. Every process keeps glibc's
//! allocator defaults (Plugbay's plugins allocate from their own allocator);
//! `PLUGBAY_BENCH_TUNED_ALLOCATOR=1` sets what the host's earlier `tune_allocator`
//! set, in the bench, the host programs and the subprocess plugin, to compare with
//! runs from before.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use plugbay_host::Isolation;
use plugbay_peer_bench::{
    bench_host, compile_extism, quantile, same_output, tune_allocator_if_asked, Artifacts,
    Extism, ExtismSource, InHost, Input, Peer, Plugbay, Subprocess, SIZES,
};
use serde_json::Value;

/// Whether `PLUGBAY_BENCH_QUICK` asks for the quick mode.
fn quick() -> bool {
    std::env::var_os("PLUGBAY_BENCH_QUICK").is_some_and(|value| value != "0" && !value.is_empty())
}

/// Criterion's config: short in quick mode; command-line flags still override it.
fn criterion() -> Criterion {
    let criterion = Criterion::default().noise_threshold(0.05);
    let criterion = if quick() {
        criterion
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20)
    } else {
        criterion
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    criterion.configure_from_args()
}

/// The five ways, in table order; the first is the in-host baseline.
struct Ways {
    peers: Vec<Box<dyn Peer>>,
}

fn start_ways(artifacts: &Artifacts, wasm: &[u8]) -> Ways {
    let thread_host = bench_host(Isolation::Thread, artifacts);
    let process_host = bench_host(Isolation::Process, artifacts);
    let peers: Vec<Box<dyn Peer>> = vec![
        Box::new(InHost::new()),
        Box::new(Plugbay::start(
            &thread_host,
            artifacts,
            "Plugbay, worker thread",
        )),
        Box::new(Plugbay::start(
            &process_host,
            artifacts,
            "Plugbay, worker process",
        )),
        Box::new(Extism::start(ExtismSource::Wasm(wasm))),
        Box::new(Subprocess::start(&artifacts.subprocess_plugin)),
    ];
    Ways { peers }
}

/// Step 1: every way's output equals the in-host output, on every batch size and
/// on an empty batch. Panics, naming the way and the record, if not.
fn check_outputs(ways: &mut Ways, inputs: &[Input], empty: &Input) {
    for input in inputs.iter().chain([empty]) {
        let expected = ways.peers[0].process(input);
        for peer in &mut ways.peers[1..] {
            let output = peer.process(input);
            if let Err(difference) =
                same_output(peer.name(), output.as_bytes(), expected.as_bytes())
            {
                panic!(
                    "the ways disagree on a batch of {} records, so their timings would compare different work: {difference}",
                    input.records
                );
            }
        }
    }
    println!(
        "outputs checked: the {} ways agree on batches of 0, 1, 100, 1,000 and 10,000 records",
        ways.peers.len()
    );
}

/// Step 2: criterion, each way on each batch size and on the empty batch.
fn criterion_runs(criterion: &mut Criterion, ways: &mut Ways, inputs: &[Input], empty: &Input) {
    for input in inputs {
        let mut group = criterion.benchmark_group(format!("peers/{}", input.records));
        group.throughput(Throughput::Elements(input.records as u64));
        for peer in &mut ways.peers {
            let name = slug(peer.name());
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| black_box(peer.process(black_box(input))))
            });
        }
        group.finish();
    }
    let mut group = criterion.benchmark_group("peers/empty");
    for peer in &mut ways.peers {
        let name = slug(peer.name());
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(peer.process(black_box(empty))))
        });
    }
    group.finish();
}

/// A way's name as a criterion id: `Plugbay, worker thread` → `plugbay_worker_thread`.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        if !slug.is_empty() {
            slug.push('_');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug
}

/// Batches each way processes per round at each size: enough that a round's timing
/// is well above the clock's resolution, few enough for many rounds.
fn batches_per_round(records: usize) -> usize {
    match records {
        0..=1 => 200,
        2..=100 => 20,
        101..=1_000 => 4,
        _ => 1,
    }
}

/// Median and quartiles.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    low: f64,
    high: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            median: quantile(&values, 0.5),
            low: quantile(&values, 0.25),
            high: quantile(&values, 0.75),
        }
    }
}

/// One way's result at one batch size, from the rounds.
struct RoundResult {
    /// Records per second, per round.
    rate: Spread,
    /// Its records/s over the in-host way's in the same round.
    ratio: Spread,
}

/// Step 3: rotating interleaved rounds at one batch size, for about `budget` (at
/// least `min_rounds`). Returns each way's result, in table order, and the rounds
/// made.
fn rounds(
    ways: &mut Ways,
    input: &Input,
    budget: Duration,
    min_rounds: usize,
) -> (Vec<RoundResult>, usize) {
    let count = ways.peers.len();
    let batches = batches_per_round(input.records);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); count];
    let started = Instant::now();
    let mut round = 0;
    while round < min_rounds || started.elapsed() < budget {
        for step in 0..count {
            let way = (round + step) % count;
            let peer = &mut ways.peers[way];
            let begun = Instant::now();
            for _ in 0..batches {
                black_box(peer.process(input));
            }
            times[way].push(begun.elapsed().as_secs_f64());
        }
        round += 1;
    }
    let records = (input.records * batches) as f64;
    let results = (0..count)
        .map(|way| RoundResult {
            rate: Spread::of(times[way].iter().map(|time| records / time).collect()),
            ratio: Spread::of(
                times[0]
                    .iter()
                    .zip(&times[way])
                    .map(|(baseline, time)| baseline / time)
                    .collect(),
            ),
        })
        .collect();
    (results, round)
}

/// Step 4: each way's empty calls, timed one by one in rotating rounds of
/// `CALLS_PER_ROUND` calls per way, for about `budget`. Returns the sorted times in
/// nanoseconds, per way.
fn empty_calls(ways: &mut Ways, empty: &Input, budget: Duration) -> Vec<Vec<f64>> {
    const CALLS_PER_ROUND: usize = 500;
    let count = ways.peers.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); count];
    let started = Instant::now();
    let mut round = 0;
    while round < 10 || started.elapsed() < budget {
        for step in 0..count {
            let way = (round + step) % count;
            let peer = &mut ways.peers[way];
            for _ in 0..CALLS_PER_ROUND {
                let begun = Instant::now();
                black_box(peer.process(empty));
                times[way].push(begun.elapsed().as_nanos() as f64);
            }
        }
        round += 1;
    }
    for way in &mut times {
        way.sort_by(f64::total_cmp);
    }
    times
}

/// The ways' starts, in table order.
const STARTS: [&str; 6] = [
    "Plugbay, worker thread",
    "Plugbay, worker process (a worker launched ahead, as a host keeps one)",
    "Plugbay, worker process (none launched ahead)",
    "Extism (wasm): compile and instantiate",
    "Extism (wasm): instantiate a module compiled before",
    "subprocess (JSON lines): spawn, first answer",
];

/// Step 5: `count` starts of each way, in rotating rounds; each start is timed
/// from nothing to ready for a first batch, then stopped (untimed). Returns sorted
/// times in seconds, per way.
fn start_times(artifacts: &Artifacts, wasm: &[u8], count: usize) -> Vec<Vec<f64>> {
    let thread_host = bench_host(Isolation::Thread, artifacts);
    let process_host = bench_host(Isolation::Process, artifacts);
    // A host that keeps no worker waiting launches one for each start, even while
    // the other host of this process keeps one waiting.
    let cold_host = bench_host(Isolation::Process, artifacts).with_spare_worker(false);
    let compiled = compile_extism(wasm);
    // One untimed start of each first: the first start of a library hashes it and
    // launches the first waiting worker.
    Plugbay::start(&thread_host, artifacts, "warm-up").shutdown();
    Plugbay::start(&process_host, artifacts, "warm-up").shutdown();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STARTS.len()];
    for round in 0..count {
        for step in 0..STARTS.len() {
            let way = (round + step) % STARTS.len();
            if way == 1 {
                // A host that does not start plugins in a tight loop has its next
                // worker launched by now (the project's startup bench pauses alike).
                sleep(Duration::from_millis(100));
            }
            let begun = Instant::now();
            match way {
                0 => {
                    let plugin = Plugbay::start(&thread_host, artifacts, STARTS[0]);
                    times[way].push(begun.elapsed().as_secs_f64());
                    plugin.shutdown();
                }
                1 | 2 => {
                    let host = if way == 1 { &process_host } else { &cold_host };
                    let plugin = Plugbay::start(host, artifacts, STARTS[way]);
                    times[way].push(begun.elapsed().as_secs_f64());
                    plugin.shutdown();
                }
                3 => {
                    let plugin = Extism::start(ExtismSource::Wasm(wasm));
                    times[way].push(begun.elapsed().as_secs_f64());
                    drop(plugin);
                }
                4 => {
                    let plugin = Extism::start(ExtismSource::Compiled(&compiled));
                    times[way].push(begun.elapsed().as_secs_f64());
                    drop(plugin);
                }
                _ => {
                    let plugin = Subprocess::start(&artifacts.subprocess_plugin);
                    times[way].push(begun.elapsed().as_secs_f64());
                    drop(plugin);
                }
            }
        }
    }
    for way in &mut times {
        way.sort_by(f64::total_cmp);
    }
    times
}

/// A host program of `src/bin`, its arguments and what it stands for.
struct HostProgram {
    way: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    /// What else a host of this way ships besides its own binary.
    ships: fn(&Artifacts) -> Vec<(&'static str, std::path::PathBuf)>,
}

const HOST_PROGRAMS: [HostProgram; 5] = [
    HostProgram {
        way: "in-host serde_json",
        program: env!("CARGO_BIN_EXE_host-in-host"),
        args: &[],
        ships: |_| Vec::new(),
    },
    HostProgram {
        way: "Plugbay, worker thread",
        program: env!("CARGO_BIN_EXE_host-plugbay"),
        args: &["thread"],
        ships: |artifacts| vec![("plugin library", artifacts.data_processor.clone())],
    },
    HostProgram {
        way: "Plugbay, worker process",
        program: env!("CARGO_BIN_EXE_host-plugbay"),
        args: &["process"],
        ships: |artifacts| {
            vec![
                ("plugin library", artifacts.data_processor.clone()),
                ("worker program (`plugbay`)", artifacts.plugbay.clone()),
            ]
        },
    },
    HostProgram {
        way: "Extism (wasm)",
        program: env!("CARGO_BIN_EXE_host-extism"),
        args: &[],
        ships: |artifacts| vec![("wasm module", artifacts.wasm.clone())],
    },
    HostProgram {
        way: "subprocess (JSON lines)",
        program: env!("CARGO_BIN_EXE_host-subprocess"),
        args: &[],
        ships: |artifacts| vec![("plugin program", artifacts.subprocess_plugin.clone())],
    },
];

/// A file's size with symbols and debug information stripped (by `strip`, into a
/// temporary file), in bytes; a WebAssembly module's size as built (its debug
/// sections are not stripped, `strip` does not read WebAssembly).
fn stripped_size(path: &Path) -> u64 {
    let size = std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
        .len();
    if path.extension().is_some_and(|ext| ext == "wasm") {
        return size;
    }
    let stripped_path = std::env::temp_dir().join(format!(
        "plugbay-peer-bench-stripped-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|name| name.to_string_lossy())
            .unwrap_or_default()
    ));
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped_path)
        .arg(path)
        .status()
        .unwrap_or_else(|err| panic!("cannot run strip (binutils) on {}: {err}", path.display()));
    assert!(status.success(), "strip failed on {}", path.display());
    let stripped = std::fs::metadata(&stripped_path)
        .unwrap_or_else(|err| panic!("strip wrote no {}: {err}", stripped_path.display()))
        .len();
    let _ = std::fs::remove_file(&stripped_path);
    stripped
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn size_cell(path: &Path) -> String {
    mib(stripped_size(path) as f64)
}

/// Step 6: runs each host program `runs` times and returns, per program, the
/// median of each figure it reports (KiB).
fn footprints(runs: usize) -> Vec<Value> {
    HOST_PROGRAMS
        .iter()
        .map(|host| {
            let mut reports: Vec<Value> = Vec::new();
            for _ in 0..runs {
                let output = Command::new(host.program)
                    .args(host.args)
                    .output()
                    .unwrap_or_else(|err| panic!("cannot run {}: {err}", host.program));
                assert!(
                    output.status.success(),
                    "{} {:?} failed: {}",
                    host.program,
                    host.args,
                    String::from_utf8_lossy(&output.stderr)
                );
                let line = String::from_utf8_lossy(&output.stdout);
                reports.push(serde_json::from_str(line.trim()).unwrap_or_else(|err| {
                    panic!("{} printed no report ({err}): {line}", host.program)
                }));
            }
            let mut median = serde_json::Map::new();
            for key in [
                "ready_kib",
                "ready_children_kib",
                "after_kib",
                "after_children_kib",
            ] {
                let mut values: Vec<f64> = reports
                    .iter()
                    .filter_map(|report| report[key].as_f64())
                    .collect();
                values.sort_by(f64::total_cmp);
                median.insert(key.to_owned(), Value::from(quantile(&values, 0.5)));
            }
            Value::Object(median)
        })
        .collect()
}

/// Criterion's median time per iteration and its median absolute deviation, in
/// seconds, for `peers/GROUP/WAY`, read back from criterion's report (none if that
/// benchmark was filtered out).
fn criterion_median(group: &str, way: &str) -> Option<(f64, f64)> {
    let dir = match (
        std::env::var_os("CRITERION_HOME"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(home), _) => std::path::PathBuf::from(home),
        (None, Some(target)) => std::path::PathBuf::from(target).join("criterion"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion"),
    };
    let path = dir
        .join(format!("peers_{group}"))
        .join(slug(way))
        .join("new/estimates.json");
    let estimates: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some((
        estimates["median"]["point_estimate"].as_f64()? / 1e9,
        estimates["median_abs_dev"]["point_estimate"].as_f64()? / 1e9,
    ))
}

fn criterion_cell(group: &str, way: &str) -> String {
    match criterion_median(group, way) {
        Some((median, mad)) => format!("{} ± {}", time(median), time(mad)),
        None => "—".to_owned(),
    }
}

/// Prints a markdown table.
fn table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}\n");
    println!("| {} |", header.join(" | "));
    println!("|{}", " --- |".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

fn time(seconds: f64) -> String {
    let ns = seconds * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{seconds:.2} s")
    }
}

fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.0} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "CPU without a model name".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn main() {
    let allocator = tune_allocator_if_asked();
    let load_before = load_average();
    let artifacts = Artifacts::find().unwrap_or_else(|err| panic!("{err}"));
    let wasm = std::fs::read(&artifacts.wasm)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", artifacts.wasm.display()));
    let inputs: Vec<Input> = SIZES.iter().map(|&n| Input::new(n)).collect();
    let empty = Input::empty();
    let mut ways = start_ways(&artifacts, &wasm);
    check_outputs(&mut ways, &inputs, &empty);

    let mut criterion = criterion();
    criterion_runs(&mut criterion, &mut ways, &inputs, &empty);
    criterion.final_summary();

    let (budget, min_rounds, empty_budget, starts, footprint_runs) = if quick() {
        (Duration::from_secs(2), 10, Duration::from_secs(4), 5, 3)
    } else {
        (Duration::from_secs(8), 30, Duration::from_secs(15), 15, 5)
    };
    let mut throughput = Vec::new();
    for input in &inputs {
        throughput.push(rounds(&mut ways, input, budget, min_rounds));
    }
    let latencies = empty_calls(&mut ways, &empty, empty_budget);
    let names: Vec<&'static str> = ways.peers.iter().map(|peer| peer.name()).collect();
    drop(ways);
    let start = start_times(&artifacts, &wasm, starts);
    let footprint = footprints(footprint_runs);
    let load_after = load_average();

    println!(
        "\n{} · allocator: {allocator} · load average before {load_before}, after {load_after}",
        machine()
    );
    let mut rows = Vec::new();
    for (input, (results, made)) in inputs.iter().zip(&throughput) {
        for (way, result) in results.iter().enumerate() {
            rows.push(vec![
                input.records.to_string(),
                names[way].to_owned(),
                rate(result.rate.median),
                if way == 0 {
                    "1".to_owned()
                } else {
                    format!(
                        "**{:.2}** ({:.2}–{:.2})",
                        result.ratio.median, result.ratio.low, result.ratio.high
                    )
                },
                criterion_cell(&input.records.to_string(), names[way]),
                made.to_string(),
            ]);
        }
    }
    table(
        "Throughput, rotating interleaved rounds: records/s (median of rounds) and ratio to in-host in the same round (median, IQR)",
        &[
            "records/batch",
            "way",
            "records/s",
            "× in-host",
            "criterion, per batch (± MAD)",
            "rounds",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = latencies
        .iter()
        .enumerate()
        .map(|(way, times)| {
            vec![
                names[way].to_owned(),
                time(quantile(times, 0.5) / 1e9),
                time(quantile(times, 0.99) / 1e9),
                time(quantile(times, 0.999) / 1e9),
                criterion_cell("empty", names[way]),
                times.len().to_string(),
            ]
        })
        .collect();
    table(
        "Empty batch (`[]`), each call timed alone in rotating rounds of 500 per way",
        &[
            "way",
            "median",
            "p99",
            "p99.9",
            "criterion (± MAD)",
            "calls",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = start
        .iter()
        .enumerate()
        .map(|(way, times)| {
            vec![
                STARTS[way].to_owned(),
                time(quantile(times, 0.5)),
                format!(
                    "{}–{}",
                    time(quantile(times, 0.0)),
                    time(quantile(times, 1.0))
                ),
                times.len().to_string(),
            ]
        })
        .collect();
    table(
        "Start, from nothing to ready for a first batch (rotating rounds)",
        &["way", "median", "range", "starts"],
        &rows,
    );
    let kib = |value: &Value| mib(value.as_f64().unwrap_or(f64::NAN) * 1024.0);
    let rows: Vec<Vec<String>> = HOST_PROGRAMS
        .iter()
        .zip(&footprint)
        .map(|(host, report)| {
            let ships = (host.ships)(&artifacts)
                .into_iter()
                .map(|(what, path)| format!("{what} {}", size_cell(&path)))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                host.way.to_owned(),
                size_cell(Path::new(host.program)),
                if ships.is_empty() {
                    "—".to_owned()
                } else {
                    ships
                },
                kib(&report["ready_kib"]),
                kib(&report["after_kib"]),
                kib(&report["ready_children_kib"]),
                kib(&report["after_children_kib"]),
            ]
        })
        .collect();
    table(
        &format!(
            "Smallest host of each way (`src/bin`), each run alone: sizes stripped, resident memory (VmRSS, median of {footprint_runs} runs) when ready and after {} batches of 10,000 records, and its children's",
            plugbay_peer_bench::FOOTPRINT_BATCHES
        ),
        &[
            "way",
            "host binary",
            "also ships",
            "host RSS, ready",
            "host RSS, after",
            "children RSS, ready",
            "children RSS, after",
        ],
        &rows,
    );
}
