//! What the benchmark targets share: the criterion config (with a quick mode), test
//! data, a thread that runs local plugins, and a summary table read back from
//! criterion's results.
//!
//! Each bench target compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use plugbay_host::local::LocalPlugin;
use plugbay_host::{Batch, Host, PluginSpec};
use serde_json::{json, Value};

/// Whether `PLUGBAY_BENCH_QUICK` asks for the quick mode (a few minutes in all).
pub fn quick() -> bool {
    std::env::var_os("PLUGBAY_BENCH_QUICK").is_some_and(|value| value != "0" && !value.is_empty())
}

/// Criterion's config: the defaults, or short warm-up and measurement in quick mode.
/// Command-line flags (`--sample-size`, `--measurement-time`, …) still override both.
pub fn config() -> Criterion {
    let criterion = Criterion::default().noise_threshold(0.05);
    if quick() {
        criterion
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20)
    } else {
        criterion
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(5))
    }
}

#[allow(unused_imports)] // each bench target uses part of this module
pub use plugbay_tests::{example_spec as example, fixture_spec as fixture};

/// A host whose plugins keep their data in a temporary folder. The process's C
/// allocator keeps glibc's defaults, as the `plugbay` binary's does.
pub fn host() -> Host {
    Host::new().with_data_dir(std::env::temp_dir().join("plugbay-bench-data"))
}

/// [`host`], with plugins in worker processes of the `plugbay` binary (built in this
/// bench's profile).
pub fn process_host() -> Host {
    host()
        .with_isolation(plugbay_host::Isolation::Process)
        .with_worker_program(plugbay_tests::plugbay_bin())
}

/// `n` records of the kind the examples process (about 150 bytes of JSON each):
/// an id, a name, an e-mail and a phone number to redact, a country to enrich.
pub fn records(n: usize) -> Batch {
    const COUNTRIES: [&str; 6] = ["DE", "FR", "JP", "BR", "US", "KE"];
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("user {i}"),
                "email": format!("user{i}@example.com"),
                "phone": format!("+1 555 {:04} {:03}", i % 10_000, i % 1000),
                "country": COUNTRIES[i % COUNTRIES.len()],
                "score": (i % 100) as f64 / 7.0,
                "active": i % 3 != 0,
            })
        })
        .collect();
    Batch::from_records(&records).expect("records serialize")
}

type Job = Box<dyn FnOnce(&mut [LocalPlugin]) + Send>;

/// A thread dedicated to local plugins (which confine the thread that starts them for
/// good, while criterion's thread must stay free to write its reports). Jobs run on
/// it with the plugins at hand.
pub struct LocalThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalThread {
    /// Starts `specs` on a new thread with `host.start_local_all`.
    pub fn start(host: Host, specs: Vec<PluginSpec>) -> LocalThread {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("plugbay-bench-local".to_owned())
            .spawn(move || {
                let mut plugins = match host.start_local_all(specs) {
                    Ok(plugins) => plugins,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                for job in jobs_rx {
                    job(&mut plugins);
                }
            })
            .expect("the local plugin thread starts");
        if let Err(err) = ready_rx.recv().expect("the local plugin thread answers") {
            panic!("local plugins did not start: {err}");
        }
        LocalThread {
            jobs: Some(jobs_tx),
            thread: Some(thread),
        }
    }

    /// Runs `job` on the plugins' thread and returns what it returns.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut [LocalPlugin]) -> T + Send + 'static,
    ) -> T {
        let (done_tx, done_rx) = mpsc::channel();
        let job: Job = Box::new(move |plugins| {
            let _ = done_tx.send(job(plugins));
        });
        self.jobs
            .as_ref()
            .expect("the job channel is open")
            .send(job)
            .expect("the local plugin thread is running");
        done_rx.recv().expect("the job ran")
    }
}

impl Drop for LocalThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Criterion's output folder (as criterion finds it).
fn criterion_dir() -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => plugbay_tests::profile_dir()
            .parent()
            .expect("the profile folder is in the target folder")
            .join("criterion"),
    }
}

/// One result read back from criterion: the median time per iteration and the median
/// absolute deviation, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    /// Median time per iteration.
    pub median: f64,
    /// Median absolute deviation of the samples.
    pub mad: f64,
}

/// The latest estimate of `group/function[/parameter]`, if that benchmark ran.
pub fn estimate(group: &str, function: &str, parameter: Option<&str>) -> Option<Estimate> {
    let mut dir = criterion_dir().join(group).join(function);
    if let Some(parameter) = parameter {
        dir = dir.join(parameter);
    }
    let text = std::fs::read_to_string(dir.join("new/estimates.json")).ok()?;
    let estimates: Value = serde_json::from_str(&text).ok()?;
    Some(Estimate {
        median: estimates["median"]["point_estimate"].as_f64()?,
        mad: estimates["median_abs_dev"]["point_estimate"].as_f64()?,
    })
}

/// A duration in nanoseconds, in the unit that reads best.
pub fn time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A rate in items per second, in the unit that reads best.
pub fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}

/// Prints a markdown table.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        return;
    }
    println!("\n{title}\n");
    println!("| {} |", header.join(" | "));
    println!("|{}", " --- |".repeat(header.len()));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

/// The machine, for the record: CPU model, cores, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown kernel".to_owned());
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// A paired comparison on a noisy machine: runs `first` and `second` alternately
/// (each timed by the closure itself) for about `budget`, and returns the median of
/// the ratios `first / second` of each pair, with the quartiles of those ratios.
/// Load that comes and goes hits both sides of a pair alike, which separate
/// criterion runs minutes apart cannot promise.
pub fn paired_ratio(
    budget: Duration,
    mut first: impl FnMut() -> Duration,
    mut second: impl FnMut() -> Duration,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let mut ratios = Vec::new();
    while ratios.len() < 5 || (started.elapsed() < budget && ratios.len() < 100_000) {
        let a = first().as_secs_f64();
        let b = second().as_secs_f64();
        ratios.push(a / b);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// The budget of a paired comparison: seconds, or a fraction in quick mode.
pub fn paired_budget() -> Duration {
    if quick() {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(5)
    }
}

/// A field of `/proc/self/status` in kB (`VmRSS`, …); 0 where there is none.
pub fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The spread of many single measurements, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub count: usize,
    pub median: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Spread {
    /// The median, p99, p99.9 and maximum of `samples` (at least one).
    pub fn of(mut samples: Vec<Duration>) -> Spread {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        let ns = |duration: Duration| duration.as_secs_f64() * 1e9;
        Spread {
            count: samples.len(),
            median: ns(at(0.5)),
            p99: ns(at(0.99)),
            p999: ns(at(0.999)),
            max: ns(at(1.0)),
        }
    }
}
