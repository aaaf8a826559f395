//! The parts of the peer benchmark (`benches/peers.rs`): `data-processor`'s work done
//! five ways behind one trait ([`Peer`]), the records they work on, the check that
//! their outputs agree, and what the small host programs of `src/bin` share.
//!
//! The five ways:
//!
//! - [`InHost`]: the transform called directly in the host, with the same serde_json
//!   reading and writing as Plugbay's SDK: the baseline.
//! - [`Plugbay`] on a worker thread and in a worker process: the `data-processor`
//!   example, built as a cdylib, started from its `plugin.json`.
//! - [`Extism`]: the same transform compiled for `wasm32-unknown-unknown`
//!   (`wasm-plugin/`), run by Extism (wasmtime inside).
//! - [`Subprocess`]: the same transform in a long-lived child process that reads a
//!   batch per line on its standard input and writes the result as a line on its
//!   standard output (`src/bin/subprocess-plugin.rs`), as process-based plugin
//!   systems work.
//!
//! All five run `example-plugins/data-processor/src/transform.rs`, compiled into each
//! of them, with its default config (which is also the one in `plugin.json`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugbay_host::{Batch, Host, Isolation, PluginHandle, PluginSpec};
use serde_json::{json, Map, Value};

/// `data-processor`'s transform, this very file.
#[path = "../../../example-plugins/data-processor/src/transform.rs"]
pub mod transform;

use transform::Config;

/// The batch sizes the bench runs, in records.
pub const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];

/// The field the transform stamps with the time (its default config's).
pub const TIMESTAMP_FIELD: &str = "timestamp";

/// Whether `PLUGBAY_BENCH_TUNED_ALLOCATOR` asks for the allocator settings the host
/// once asked its users to set (its earlier `tune_allocator`), to compare with runs
/// from before plugins had an allocator of their own.
pub fn tuned_allocator() -> bool {
    std::env::var_os("PLUGBAY_BENCH_TUNED_ALLOCATOR").is_some_and(|value| value != "0")
}

/// Leaves glibc's allocator defaults, as a host does, unless
/// `PLUGBAY_BENCH_TUNED_ALLOCATOR` asks for the settings of the host's earlier
/// `tune_allocator` (32 MiB mmap threshold, 64 MiB trim threshold, fast bins off).
/// Returns what the process runs with, for the record.
pub fn tune_allocator_if_asked() -> &'static str {
    if !tuned_allocator() {
        return "glibc's defaults";
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` has no preconditions: it sets one of the allocator's
        // tunables under the allocator's own lock; blocks already allocated keep
        // working.
        let set = |param, value| unsafe { libc::mallopt(param, value) } == 1;
        let all = set(libc::M_MMAP_THRESHOLD, 32 << 20)
            & set(libc::M_TRIM_THRESHOLD, 64 << 20)
            & set(libc::M_MXFAST, 0);
        assert!(all, "mallopt refused one of the allocator settings");
        "tuned (mmap threshold 32 MiB, trim threshold 64 MiB, fast bins off)"
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        "the platform's defaults (no glibc to tune)"
    }
}

/// `n` records of the kind the project's throughput bench uses (about 150 bytes of
/// JSON each), as one compact JSON array.
pub fn records(n: usize) -> Vec<u8> {
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
    serde_json::to_vec(&records).expect("records serialize")
}

/// One batch, ready for each way: its bytes, the same bytes as a Plugbay [`Batch`],
/// and as a line for the subprocess (the bytes and a newline). Each way gets its
/// batch in the form it takes, made once, outside the timing.
pub struct Input {
    /// The records in the batch.
    pub records: usize,
    bytes: Vec<u8>,
    batch: Batch,
    line: Vec<u8>,
}

impl Input {
    /// A batch of `n` [`records`].
    pub fn new(n: usize) -> Input {
        Input::from_json(n, records(n))
    }

    /// A batch of `records` records, `bytes` holding them as a compact JSON array.
    pub fn from_json(records: usize, bytes: Vec<u8>) -> Input {
        let mut line = bytes.clone();
        line.push(b'\n');
        Input {
            records,
            batch: Batch::from_json(bytes.clone()),
            bytes,
            line,
        }
    }

    /// An empty batch, `[]`.
    pub fn empty() -> Input {
        Input::from_json(0, b"[]".to_vec())
    }

    /// The batch's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A processed batch, as each way hands it over.
pub enum Output {
    /// Bytes the caller owns.
    Bytes(Vec<u8>),
    /// A Plugbay batch (checked by the host).
    Batch(Batch),
}

impl Output {
    /// The batch's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Output::Bytes(bytes) => bytes,
            Output::Batch(batch) => batch.as_bytes(),
        }
    }
}

/// One way of doing `data-processor`'s work.
pub trait Peer {
    /// The way's name in the tables.
    fn name(&self) -> &'static str;
    /// Processes one batch. Panics, saying what failed, if the way fails: a bench
    /// has no use for a way that cannot do the work.
    fn process(&mut self, input: &Input) -> Output;
}

/// Reads a batch, applies the transform, writes the batch, exactly as Plugbay's SDK
/// does around a plugin's `process` (`[]` for no records, an output buffer sized
/// from the input).
pub fn in_host(config: &Config, input: &[u8]) -> Vec<u8> {
    let mut records: Vec<Map<String, Value>> =
        serde_json::from_slice(input).expect("the batch is JSON records");
    config.apply(&mut records, SystemTime::now());
    if records.is_empty() {
        return b"[]".to_vec();
    }
    let mut output = Vec::with_capacity(input.len() + input.len() / 4 + 2);
    serde_json::to_writer(&mut output, &records).expect("records serialize");
    output
}

/// The transform called in the host: no plugin at all.
pub struct InHost {
    config: Config,
}

impl InHost {
    /// With the default config (the one in `plugin.json`).
    pub fn new() -> InHost {
        InHost {
            config: Config::default(),
        }
    }
}

impl Default for InHost {
    fn default() -> Self {
        InHost::new()
    }
}

impl Peer for InHost {
    fn name(&self) -> &'static str {
        "in-host serde_json"
    }

    fn process(&mut self, input: &Input) -> Output {
        Output::Bytes(in_host(&self.config, input.bytes()))
    }
}

/// The files the ways need, built by `tests/peer-bench/run`.
pub struct Artifacts {
    /// `example-plugins/data-processor/plugin.json`.
    pub manifest: PathBuf,
    /// The `data-processor` cdylib.
    pub data_processor: PathBuf,
    /// The `plugbay` binary, the program of worker processes.
    pub plugbay: PathBuf,
    /// The Extism plugin (`wasm-plugin/`).
    pub wasm: PathBuf,
    /// The subprocess plugin (`src/bin/subprocess-plugin.rs`).
    pub subprocess_plugin: PathBuf,
}

/// The profile folder this program was built into (`target/release`), from the
/// path of the running executable (a bench runs from `target/release/deps`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running program has a path");
    let dir = exe.parent().expect("the program is in a folder");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent()
            .expect("deps/ is in the profile folder")
            .to_owned()
    } else {
        dir.to_owned()
    }
}

impl Artifacts {
    /// The files, in the target folder this program was built into; an error names
    /// the first that is missing.
    pub fn find() -> Result<Artifacts, String> {
        let profile = profile_dir();
        let profile_name = profile
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = profile.parent().expect("the profile folder has a parent");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let artifacts = Artifacts {
            manifest: workspace.join("example-plugins/data-processor/plugin.json"),
            data_processor: profile.join(format!(
                "{}data_processor{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            )),
            plugbay: profile.join(format!("plugbay{}", std::env::consts::EXE_SUFFIX)),
            wasm: target
                .join("wasm32-unknown-unknown")
                .join(&profile_name)
                .join("peer_wasm_plugin.wasm"),
            subprocess_plugin: profile
                .join(format!("subprocess-plugin{}", std::env::consts::EXE_SUFFIX)),
        };
        for path in [
            &artifacts.manifest,
            &artifacts.data_processor,
            &artifacts.plugbay,
            &artifacts.wasm,
            &artifacts.subprocess_plugin,
        ] {
            if !path.is_file() {
                return Err(format!(
                    "{} is missing: build everything with tests/peer-bench/run (it builds the plugins, the plugbay binary and the bench into one target folder)",
                    path.display()
                ));
            }
        }
        Ok(artifacts)
    }
}

/// A host for the bench's Plugbay plugins, with its data folder in the temporary
/// folder.
pub fn bench_host(isolation: Isolation, artifacts: &Artifacts) -> Host {
    Host::new()
        .with_data_dir(std::env::temp_dir().join("plugbay-peer-bench-data"))
        .with_isolation(isolation)
        .with_worker_program(&artifacts.plugbay)
}

/// The `data-processor` example, from its `plugin.json` and its built library.
pub fn data_processor_spec(artifacts: &Artifacts) -> PluginSpec {
    PluginSpec::from_manifest_file(&artifacts.manifest)
        .unwrap_or_else(|err| panic!("{}: {err}", artifacts.manifest.display()))
        .with_library(&artifacts.data_processor)
}

/// The `data-processor` example through Plugbay.
pub struct Plugbay {
    name: &'static str,
    handle: Option<PluginHandle>,
}

impl Plugbay {
    /// Starts `data-processor` on `host` (its isolation decides where it runs).
    pub fn start(host: &Host, artifacts: &Artifacts, name: &'static str) -> Plugbay {
        let handle = host
            .start(data_processor_spec(artifacts))
            .unwrap_or_else(|err| panic!("{name}: data-processor does not start: {err}"));
        Plugbay {
            name,
            handle: Some(handle),
        }
    }

    /// Stops the plugin (cleanup, then its worker).
    pub fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            handle
                .shutdown()
                .unwrap_or_else(|err| panic!("{}: data-processor does not stop: {err}", self.name));
        }
    }
}

impl Peer for Plugbay {
    fn name(&self) -> &'static str {
        self.name
    }

    fn process(&mut self, input: &Input) -> Output {
        let handle = self.handle.as_mut().expect("the plugin is running");
        Output::Batch(
            handle
                .process(&input.batch)
                .unwrap_or_else(|err| panic!("{}: the batch failed: {err}", self.name)),
        )
    }
}

/// The host function the WebAssembly plugin reads the time from: milliseconds since
/// the Unix epoch, in Extism's user namespace.
pub fn now_millis_function() -> extism::Function {
    extism::Function::new(
        "now_millis",
        [],
        [extism::ValType::I64],
        extism::UserData::new(()),
        |_plugin, _params, results, _data| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            results[0] = extism::Val::I64(now as i64);
            Ok(())
        },
    )
}

/// How to make an Extism plugin from the module: compile it, or instantiate a
/// module compiled before.
pub enum ExtismSource<'a> {
    /// The module's bytes, compiled now (wasmtime's compilation cache off).
    Wasm(&'a [u8]),
    /// A module compiled before.
    Compiled(&'a extism::CompiledPlugin),
}

/// Compiles the WebAssembly plugin (wasmtime's compilation cache off, so that every
/// compile is a real one).
pub fn compile_extism(wasm: &[u8]) -> extism::CompiledPlugin {
    extism::PluginBuilder::new(wasm)
        .with_functions([now_millis_function()])
        .with_wasi(false)
        .with_cache_disabled()
        .compile()
        .unwrap_or_else(|err| panic!("Extism does not compile the plugin: {err:#}"))
}

/// The transform as an Extism plugin.
pub struct Extism {
    plugin: extism::Plugin,
}

impl Extism {
    /// Makes the plugin from `source`.
    pub fn start(source: ExtismSource<'_>) -> Extism {
        let plugin = match source {
            ExtismSource::Wasm(wasm) => extism::Plugin::new_from_compiled(&compile_extism(wasm)),
            ExtismSource::Compiled(compiled) => extism::Plugin::new_from_compiled(compiled),
        }
        .unwrap_or_else(|err| panic!("Extism does not instantiate the plugin: {err:#}"));
        Extism { plugin }
    }
}

impl Peer for Extism {
    fn name(&self) -> &'static str {
        "Extism (wasm)"
    }

    fn process(&mut self, input: &Input) -> Output {
        // The output lives in the plugin's memory until the next call: the host
        // copies it out to own it, as it must to keep or pass it on.
        let output: &[u8] = self
            .plugin
            .call("process", input.bytes())
            .unwrap_or_else(|err| panic!("Extism: the batch failed: {err:#}"));
        Output::Bytes(output.to_vec())
    }
}

/// The transform in a long-lived child process, over JSON-lines pipes.
pub struct Subprocess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    last_len: usize,
}

impl Subprocess {
    /// Starts the subprocess plugin and returns once it has answered an empty batch,
    /// so that it is ready.
    pub fn start(program: &Path) -> Subprocess {
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let stdin = child.stdin.take().expect("its standard input is piped");
        let stdout = child.stdout.take().expect("its standard output is piped");
        let mut plugin = Subprocess {
            child,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(1 << 20, stdout),
            last_len: 0,
        };
        let answer = plugin.process(&Input::empty());
        assert_eq!(
            answer.as_bytes(),
            b"[]",
            "the subprocess plugin answers an empty batch with []"
        );
        plugin
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Peer for Subprocess {
    fn name(&self) -> &'static str {
        "subprocess (JSON lines)"
    }

    fn process(&mut self, input: &Input) -> Output {
        let stdin = self.stdin.as_mut().expect("the subprocess is running");
        stdin
            .write_all(&input.line)
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|err| panic!("subprocess: cannot write the batch: {err}"));
        let mut line = Vec::with_capacity(self.last_len + 1);
        let read = self
            .stdout
            .read_until(b'\n', &mut line)
            .unwrap_or_else(|err| panic!("subprocess: cannot read the answer: {err}"));
        assert!(
            read > 0 && line.last() == Some(&b'\n'),
            "subprocess: the plugin closed its output before answering"
        );
        line.pop();
        self.last_len = line.len();
        Output::Bytes(line)
    }
}

impl Drop for Subprocess {
    fn drop(&mut self) {
        // Closing its input ends the plugin's loop.
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// Checks that `output`, from `way`, is `expected` (the in-host output of the same
/// batch), record by record, the timestamps aside: each way reads the clock itself,
/// so each record's stamp must be an RFC 3339 time within a minute of now, the same
/// for every record of the batch, and everything else must be equal. The error names
/// the way, the record and both versions of it.
pub fn same_output(way: &str, output: &[u8], expected: &[u8]) -> Result<(), String> {
    let read = |who: &str, bytes: &[u8]| -> Result<Vec<Map<String, Value>>, String> {
        let mut records: Vec<Map<String, Value>> = serde_json::from_slice(bytes)
            .map_err(|err| format!("{who}'s output is not JSON records: {err}"))?;
        let mut stamp: Option<Value> = None;
        for (place, record) in records.iter_mut().enumerate() {
            let value = record.remove(TIMESTAMP_FIELD).ok_or_else(|| {
                format!("{who}'s record {place} has no `{TIMESTAMP_FIELD}` field")
            })?;
            let text = value.as_str().ok_or_else(|| {
                format!("{who}'s record {place}: `{TIMESTAMP_FIELD}` is not a string: {value}")
            })?;
            let time = humantime::parse_rfc3339(text).map_err(|err| {
                format!("{who}'s record {place}: `{TIMESTAMP_FIELD}` {text:?} is not an RFC 3339 time: {err}")
            })?;
            let off = match SystemTime::now().duration_since(time) {
                Ok(ago) => ago,
                Err(ahead) => ahead.duration(),
            };
            if off > Duration::from_secs(60) {
                return Err(format!(
                    "{who}'s record {place}: `{TIMESTAMP_FIELD}` {text:?} is not the time of the batch (it is {off:?} away from now)"
                ));
            }
            match &stamp {
                None => stamp = Some(value),
                Some(first) if *first == value => {}
                Some(first) => {
                    return Err(format!(
                        "{who}'s record {place} has another stamp ({value}) than the batch's first ({first})"
                    ))
                }
            }
        }
        Ok(records)
    };
    let got = read(way, output)?;
    let want = read("in-host", expected)?;
    if got.len() != want.len() {
        return Err(format!(
            "{way} returned {} records, in-host {}",
            got.len(),
            want.len()
        ));
    }
    if let Some(place) = (0..got.len()).find(|&place| got[place] != want[place]) {
        return Err(format!(
            "{way}'s record {place} differs (timestamp aside): {way}: {}, in-host: {}",
            Value::Object(got[place].clone()),
            Value::Object(want[place].clone())
        ));
    }
    if output.len() != expected.len() {
        return Err(format!(
            "{way}'s output is {} bytes, in-host's {}: the same records written differently",
            output.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// The resident memory (`VmRSS`) of a process (this one for `None`), in KiB.
pub fn resident_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The children of this process (of any of its threads), by process id.
pub fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|pid| pid.parse::<u32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// What a host program of `src/bin` reports: its resident memory once its way is
/// ready and after it processed [`FOOTPRINT_BATCHES`] batches of 10,000 records, and
/// its children's (a worker process, a waiting worker, a subprocess plugin), in KiB.
/// Printed as one JSON line.
pub fn footprint(mut peer: impl Peer) {
    let report = |stage: &str| {
        let children: u64 = children()
            .into_iter()
            .filter_map(|pid| resident_kib(Some(pid)))
            .sum();
        json!({
            format!("{stage}_kib"): resident_kib(None),
            format!("{stage}_children_kib"): children,
        })
    };
    let ready = report("ready");
    let input = Input::new(10_000);
    for _ in 0..FOOTPRINT_BATCHES {
        std::hint::black_box(peer.process(&input));
    }
    let after = report("after");
    let mut line = ready.as_object().cloned().unwrap_or_default();
    line.extend(after.as_object().cloned().unwrap_or_default());
    println!("{}", Value::Object(line));
}

/// The batches a host program processes before it reads its memory again.
pub const FOOTPRINT_BATCHES: usize = 20;

/// The `q` quantile (0 to 1) of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processed(n: usize) -> Vec<u8> {
        in_host(&Config::default(), &records(n))
    }

    /// Replaces the value of `field` in record `place` of a written batch.
    fn with_field(batch: &[u8], place: usize, field: &str, value: Value) -> Vec<u8> {
        let mut records: Vec<Map<String, Value>> = serde_json::from_slice(batch).unwrap();
        records[place].insert(field.to_owned(), value);
        serde_json::to_vec(&records).unwrap()
    }

    #[test]
    fn the_same_work_agrees_though_read_at_another_millisecond() {
        let first = processed(100);
        std::thread::sleep(Duration::from_millis(5));
        let second = processed(100);
        assert_ne!(first, second, "the stamps differ");
        same_output("again", &second, &first).unwrap();
    }

    #[test]
    fn a_changed_record_is_named() {
        let expected = processed(3);
        let output = with_field(&expected, 1, "name", Value::from("someone else"));
        let err = same_output("changed", &output, &expected).unwrap_err();
        assert!(err.contains("changed's record 1 differs"), "{err}");
        assert!(err.contains("someone else"), "{err}");
    }

    #[test]
    fn a_missing_or_stale_or_uneven_stamp_is_refused() {
        let expected = processed(3);
        let mut records: Vec<Map<String, Value>> = serde_json::from_slice(&expected).unwrap();
        records[2].remove(TIMESTAMP_FIELD);
        let missing = serde_json::to_vec(&records).unwrap();
        let err = same_output("missing", &missing, &expected).unwrap_err();
        assert!(err.contains("record 2 has no `timestamp`"), "{err}");

        let stale = with_field(
            &expected,
            0,
            TIMESTAMP_FIELD,
            Value::from("2001-01-01T00:00:00.000Z"),
        );
        let err = same_output("stale", &stale, &expected).unwrap_err();
        assert!(err.contains("is not the time of the batch"), "{err}");

        let now = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(1));
        let uneven = with_field(&expected, 1, TIMESTAMP_FIELD, Value::from(now.to_string()));
        let err = same_output("uneven", &uneven, &expected).unwrap_err();
        assert!(err.contains("another stamp"), "{err}");
    }

    #[test]
    fn fewer_records_or_other_bytes_are_refused() {
        let expected = processed(3);
        let err = same_output("short", &processed(2), &expected).unwrap_err();
        assert!(err.contains("returned 2 records, in-host 3"), "{err}");
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&expected).unwrap())
                .unwrap();
        let err = same_output("pretty", &pretty, &expected).unwrap_err();
        assert!(err.contains("written differently"), "{err}");
    }

    #[test]
    fn an_empty_batch_is_written_as_an_empty_array() {
        assert_eq!(in_host(&Config::default(), b"[]"), b"[]");
        same_output("empty", b"[]", b"[]").unwrap();
    }
}
