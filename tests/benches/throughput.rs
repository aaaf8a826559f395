//! Records through real plugins, against the same work done without plugins:
//!
//! - `data_processor/{plugin,local,baseline}/N`: the `data-processor` example on
//!   batches of N = 1, 100, 1,000 and 10,000 records, through its worker thread
//!   (`plugin`, the normal way), on the calling thread (`local`), and as the same
//!   serde_json work done directly in the host with no plugin (`baseline`). Targets:
//!   plugin ≥ 0.9 × baseline in records/s from 1,000 records per batch up, and
//!   ≥ 0.6 × at one record per batch. The paired runs also time the baseline's code
//!   on a thread other than the main one (where workers run plugins), against itself
//!   on the main thread: what the process's C allocator gives such a thread.
//! - `pipeline/{pipelined,sequential}`: redactor → enricher → data-processor over
//!   batches of 1,000 records, as a [`Pipeline`] (each stage on its own worker,
//!   working on successive batches at once) and as the same three plugins called one
//!   after another on one thread. Target: pipelined ≥ 1.5 × sequential on 2 cores.
//!   Rounds of the two runs also time two sequential runs at once, on two threads
//!   with their own instances: what this machine gives two busy threads, the ceiling
//!   of any two-core speed-up here.

mod common;

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use plugbay_host::{Batch, IoError, Pipeline};
use serde_json::{Map, Value};

use common::{estimate, example, host, print_table, rate, records, time, LocalThread};

const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];

/// Batches of this many records go through the pipeline...
const PIPELINE_BATCH: usize = 1_000;
/// ...this many per measured iteration.
const PIPELINE_BATCHES: usize = 16;

/// What `data-processor` does, written directly in the host: parse the batch into
/// records, stamp each, write the batch back.
fn baseline(batch: &Batch) -> Vec<u8> {
    let input = batch.as_bytes();
    let mut records: Vec<Map<String, Value>> =
        serde_json::from_slice(input).expect("the batch is JSON records");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    for record in &mut records {
        record.insert("processed".to_owned(), Value::Bool(true));
        record.insert("processed_at".to_owned(), Value::from(now));
    }
    let mut output = Vec::with_capacity(input.len() + input.len() / 4 + 2);
    serde_json::to_writer(&mut output, &records).expect("records serialize");
    output
}

fn data_processor(c: &mut Criterion) {
    let host = host();
    let mut group = c.benchmark_group("data_processor");
    let mut plugin = host
        .start(example("data-processor"))
        .expect("data-processor starts");
    let local = LocalThread::start(host.clone(), vec![example("data-processor")]);
    for n in SIZES {
        let batch = records(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("baseline", n), &batch, |b, batch| {
            b.iter(|| black_box(baseline(black_box(batch))))
        });
        group.bench_with_input(BenchmarkId::new("plugin", n), &batch, |b, batch| {
            b.iter(|| black_box(plugin.process(black_box(batch)).expect("it processes")))
        });
        group.bench_with_input(BenchmarkId::new("local", n), &batch, |b, batch| {
            b.iter_custom(|iters| {
                let batch = batch.clone();
                local.run(move |plugins| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(plugins[0].process(black_box(&batch)).expect("it processes"));
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    // Ratios from interleaved runs, robust to load that comes and goes.
    let mut rows = Vec::new();
    for n in SIZES {
        let batch = records(n);
        let time_baseline = || {
            let started = Instant::now();
            black_box(baseline(&batch));
            started.elapsed()
        };
        let mut time_plugin = || {
            let started = Instant::now();
            black_box(plugin.process(&batch).expect("it processes"));
            started.elapsed()
        };
        let worker = common::paired_ratio(common::paired_budget(), time_baseline, &mut time_plugin);
        let local_batch = batch.clone();
        let time_local = || {
            let batch = local_batch.clone();
            local.run(move |plugins| {
                let started = Instant::now();
                black_box(plugins[0].process(&batch).expect("it processes"));
                started.elapsed()
            })
        };
        let local_ratio = common::paired_ratio(common::paired_budget(), time_baseline, time_local);
        // The baseline's own code on a thread other than the main one, where a worker
        // runs its plugin: what the host's C allocator gives such a thread.
        let thread_batch = batch.clone();
        let time_baseline_on_thread = || {
            let batch = thread_batch.clone();
            local.run(move |_| {
                let started = Instant::now();
                black_box(baseline(&batch));
                started.elapsed()
            })
        };
        let on_thread = common::paired_ratio(
            common::paired_budget(),
            time_baseline,
            time_baseline_on_thread,
        );
        let cell =
            |(median, low, high): (f64, f64, f64)| format!("{median:.3} (IQR {low:.3}–{high:.3})");
        rows.push(vec![
            n.to_string(),
            cell(worker),
            cell(local_ratio),
            cell(on_thread),
            match n {
                1 => format!("≥ 0.6: {}", if worker.0 >= 0.6 { "met" } else { "missed" }),
                n if n >= 1_000 => {
                    format!("≥ 0.9: {}", if worker.0 >= 0.9 { "met" } else { "missed" })
                }
                _ => String::new(),
            },
        ]);
    }
    *PAIRED.lock().expect("the paired results") = rows;
    plugin.shutdown().expect("data-processor shuts down");
}

/// Rows of the paired comparison, for the summary.
static PAIRED: std::sync::Mutex<Vec<Vec<String>>> = std::sync::Mutex::new(Vec::new());
/// The median time of each pipeline stage on one batch, in seconds.
static STAGE_COSTS: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());
/// The pipeline's rounds: speed-up, the machine's ceiling, and their ratio (each as
/// median and quartiles).
static PIPELINE_ROUNDS: std::sync::Mutex<Option<[(f64, f64, f64); 3]>> =
    std::sync::Mutex::new(None);

/// Runs `batches` through `plugins`, one after another, on the calling thread, and
/// returns the time it took.
fn chain(
    plugins: &mut [plugbay_host::local::LocalPlugin],
    batches: &[Batch],
) -> std::time::Duration {
    let started = Instant::now();
    for batch in batches {
        let mut batch = batch.clone();
        for plugin in plugins.iter_mut() {
            batch = plugin.process(&batch).expect("the stage processes");
        }
        black_box(batch);
    }
    started.elapsed()
}

fn stages() -> Vec<plugbay_host::PluginSpec> {
    vec![
        example("redactor"),
        example("enricher"),
        example("data-processor"),
    ]
}

fn pipeline(c: &mut Criterion) {
    let host = host();
    let batches: Vec<Batch> = (0..PIPELINE_BATCHES)
        .map(|_| records(PIPELINE_BATCH))
        .collect();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(
        (PIPELINE_BATCH * PIPELINE_BATCHES) as u64,
    ));
    if common::quick() {
        group.sample_size(10);
    }

    let handles = stages()
        .into_iter()
        .map(|spec| host.start(spec).expect("the stage starts"))
        .collect();
    let mut pipeline = Pipeline::new(handles);
    group.bench_function("pipelined", |b| {
        b.iter(|| {
            let input = batches.clone().into_iter().map(Ok::<Batch, IoError>);
            let report = pipeline
                .run(input, |batch| {
                    black_box(batch);
                    Ok(())
                })
                .expect("the pipeline runs");
            assert_eq!(report.batches, PIPELINE_BATCHES as u64);
        })
    });
    let local = LocalThread::start(host.clone(), stages());
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            let batches = batches.clone();
            local.run(move |plugins| (0..iters).map(|_| chain(plugins, &batches)).sum())
        })
    });
    group.finish();

    let time_sequential = || {
        let batches = batches.clone();
        local.run(move |plugins| chain(plugins, &batches))
    };
    let second = LocalThread::start(host.clone(), stages());
    let time_two_at_once = || {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for thread in [&local, &second] {
                let batches = batches.clone();
                scope.spawn(move || thread.run(move |plugins| chain(plugins, &batches)));
            }
        });
        started.elapsed()
    };
    let time_pipelined = || {
        let input = batches.clone().into_iter().map(Ok::<Batch, IoError>);
        let started = Instant::now();
        pipeline
            .run(input, |batch| {
                black_box(batch);
                Ok(())
            })
            .expect("the pipeline runs");
        started.elapsed()
    };
    // What each stage costs alone, on one thread: the pipeline can be no faster than
    // its slowest stage, nor than the whole work spread over the cores.
    let costs: Vec<f64> = local.run({
        let batches = batches.clone();
        move |plugins| {
            let mut costs = vec![Vec::new(); plugins.len()];
            for _ in 0..3 {
                for batch in &batches {
                    let mut batch = batch.clone();
                    for (stage, plugin) in plugins.iter_mut().enumerate() {
                        let started = Instant::now();
                        batch = plugin.process(&batch).expect("the stage processes");
                        costs[stage].push(started.elapsed().as_secs_f64());
                    }
                }
            }
            costs
                .into_iter()
                .map(|mut times| {
                    times.sort_by(f64::total_cmp);
                    times[times.len() / 2]
                })
                .collect()
        }
    });
    *STAGE_COSTS.lock().expect("the stage costs") = costs;
    *PIPELINE_ROUNDS.lock().expect("the pipeline rounds") = Some(pipeline_rounds(
        common::paired_budget() * 3,
        time_sequential,
        time_pipelined,
        time_two_at_once,
    ));
    for stage in pipeline.into_stages() {
        stage.shutdown().expect("the stage shuts down");
    }
}

/// Rounds of the sequential run, the pipeline, and two sequential runs at once, each
/// after the other, for `budget` (at least 5 rounds). Each round gives the pipeline's
/// speed-up (sequential / pipeline), the machine's ceiling (twice the sequential time
/// / the time of two at once) and the share of the ceiling the pipeline reached.
/// Returns the median and quartiles of each.
fn pipeline_rounds(
    budget: std::time::Duration,
    mut sequential: impl FnMut() -> std::time::Duration,
    mut pipelined: impl FnMut() -> std::time::Duration,
    mut two_at_once: impl FnMut() -> std::time::Duration,
) -> [(f64, f64, f64); 3] {
    let started = Instant::now();
    let mut rounds: [Vec<f64>; 3] = Default::default();
    while rounds[0].len() < 5 || started.elapsed() < budget {
        let one = sequential().as_secs_f64();
        let speedup = one / pipelined().as_secs_f64();
        let ceiling = 2.0 * one / two_at_once().as_secs_f64();
        rounds[0].push(speedup);
        rounds[1].push(ceiling);
        rounds[2].push(speedup / ceiling);
    }
    rounds.map(|mut values| {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.25), at(0.75))
    })
}

/// How long `batches` batches take through stages that cost `costs` each, with
/// queues of `queue` batches between stages, on `cores` cores shared perfectly: every
/// stage with a batch to work on gets `min(1, cores / busy stages)` of a core, and
/// hand-offs are free. A stage that has finished a batch holds it until the queue
/// after it has room, and takes no new batch meanwhile (as a pipeline's worker does).
fn ideal_makespan(costs: &[f64], batches: usize, queue: usize, cores: f64) -> f64 {
    let stages = costs.len();
    // Batches waiting before each stage; the first stage's input is always there.
    let mut waiting = vec![0usize; stages];
    waiting[0] = batches;
    let mut left: Vec<Option<f64>> = vec![None; stages];
    let mut held = vec![false; stages];
    let (mut done, mut now) = (0, 0.0);
    while done < batches {
        // Hand finished batches on and start new ones, until nothing moves.
        let mut moved = true;
        while moved {
            moved = false;
            for stage in 0..stages {
                if held[stage] && (stage + 1 == stages || waiting[stage + 1] < queue) {
                    held[stage] = false;
                    if stage + 1 == stages {
                        done += 1;
                    } else {
                        waiting[stage + 1] += 1;
                    }
                    moved = true;
                }
                if left[stage].is_none() && !held[stage] && waiting[stage] > 0 {
                    waiting[stage] -= 1;
                    left[stage] = Some(costs[stage]);
                    moved = true;
                }
            }
        }
        let busy = left.iter().flatten().count();
        if busy == 0 {
            break;
        }
        let rate = (cores / busy as f64).min(1.0);
        let step = left.iter().flatten().copied().fold(f64::INFINITY, f64::min) / rate;
        now += step;
        for stage in 0..stages {
            if let Some(work) = left[stage] {
                let rest = work - step * rate;
                if rest <= 1e-12 {
                    left[stage] = None;
                    held[stage] = true;
                } else {
                    left[stage] = Some(rest);
                }
            }
        }
    }
    now
}

fn summary() {
    print_table(
        "data-processor, paired runs: records/s of the plugin / records/s of the in-host baseline",
        &[
            "records/batch",
            "plugin (worker)",
            "plugin (local)",
            "in-host, on another thread",
            "target",
        ],
        &PAIRED.lock().expect("the paired results"),
    );
    let costs = STAGE_COSTS.lock().expect("the stage costs").clone();
    if !costs.is_empty() {
        let total: f64 = costs.iter().sum();
        let slowest = costs.iter().copied().fold(0.0, f64::max);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut rows: Vec<Vec<String>> = ["redactor", "enricher", "data-processor"]
            .iter()
            .zip(&costs)
            .map(|(name, cost)| {
                vec![
                    (*name).to_owned(),
                    time(cost * 1e9),
                    format!("{:.0} %", cost / total * 100.0),
                ]
            })
            .collect();
        rows.push(vec![
            "ideal pipeline speed-up: total / max(slowest, total / cores)".to_owned(),
            format!("{:.2}", total / slowest.max(total / cores)),
            String::new(),
        ]);
        rows.push(vec![
            format!("the same for {PIPELINE_BATCHES} batches, with filling and draining (ideal scheduler)"),
            format!(
                "{:.2}",
                total * PIPELINE_BATCHES as f64
                    / ideal_makespan(&costs, PIPELINE_BATCHES, 2, cores)
            ),
            String::new(),
        ]);
        print_table(
            &format!("Pipeline stages alone, one batch of {PIPELINE_BATCH} records each"),
            &["stage", "median", "share"],
            &rows,
        );
    }
    if let Some([speedup, ceiling, share]) = *PIPELINE_ROUNDS.lock().expect("the pipeline rounds") {
        let cell = |(median, low, high): (f64, f64, f64)| {
            vec![format!("{median:.2}"), format!("{low:.2}–{high:.2}")]
        };
        let row = |what: &str, values, target: String| {
            let mut row = vec![what.to_owned()];
            row.extend(cell(values));
            row.push(target);
            row
        };
        print_table(
            "Pipeline, in rounds of the three runs (median and IQR of the rounds)",
            &["per round", "median", "IQR", "target"],
            &[
                row(
                    "speed-up: sequential / pipeline",
                    speedup,
                    format!("≥ 1.5: {}", if speedup.0 >= 1.5 { "met" } else { "missed" }),
                ),
                row(
                    "machine's ceiling: 2 × sequential / two sequential runs at once",
                    ceiling,
                    String::new(),
                ),
                row(
                    "share of the ceiling: speed-up / ceiling",
                    share,
                    String::new(),
                ),
            ],
        );
    }
    let mut rows = Vec::new();
    for n in SIZES {
        let parameter = n.to_string();
        let found = |function| estimate("data_processor", function, Some(&parameter));
        let Some(baseline) = found("baseline") else {
            continue;
        };
        let per_second = |ns: f64| n as f64 * 1e9 / ns;
        for (function, what) in [
            ("baseline", "in-host baseline"),
            ("plugin", "plugin (worker)"),
            ("local", "plugin (local)"),
        ] {
            let Some(result) = found(function) else {
                continue;
            };
            let ratio = baseline.median / result.median;
            rows.push(vec![
                format!("{n}"),
                what.to_owned(),
                time(result.median),
                format!("± {}", time(result.mad)),
                rate(per_second(result.median)),
                if function == "baseline" {
                    "1".to_owned()
                } else {
                    format!("{ratio:.3}")
                },
                match (function, n >= 1_000) {
                    ("plugin", true) if ratio >= 0.9 => "≥ 0.9: met".to_owned(),
                    ("plugin", true) => "≥ 0.9: missed".to_owned(),
                    _ => String::new(),
                },
            ]);
        }
    }
    print_table(
        &format!(
            "data-processor throughput per batch size ({})",
            common::machine()
        ),
        &[
            "records/batch",
            "run",
            "median per batch",
            "spread (MAD)",
            "records/s",
            "plugin / baseline",
            "target",
        ],
        &rows,
    );

    let records = (PIPELINE_BATCH * PIPELINE_BATCHES) as f64;
    if let (Some(pipelined), Some(sequential)) = (
        estimate("pipeline", "pipelined", None),
        estimate("pipeline", "sequential", None),
    ) {
        let speedup = sequential.median / pipelined.median;
        let row = |what: &str, found: common::Estimate, target: String| {
            vec![
                what.to_owned(),
                time(found.median),
                format!("± {}", time(found.mad)),
                rate(records * 1e9 / found.median),
                target,
            ]
        };
        print_table(
            &format!(
                "redactor → enricher → data-processor, {PIPELINE_BATCHES} batches of {PIPELINE_BATCH} records"
            ),
            &["run", "median", "spread (MAD)", "records/s", "speed-up"],
            &[
                row("sequential, one thread", sequential, "1".to_owned()),
                row(
                    "pipeline",
                    pipelined,
                    format!(
                        "{speedup:.2} (target ≥ 1.5: {})",
                        if speedup >= 1.5 { "met" } else { "missed" }
                    ),
                ),
            ],
        );
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = data_processor, pipeline
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
