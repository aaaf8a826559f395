//! `plugbay run ID|LIBRARY... [--input FILE|-] [--output FILE] [--batch-size N] [--config JSON]`
//!
//! Streams records through a pipeline of plugins: the input is read in batches on
//! its own thread, every plugin works on its own confined worker, and the output is
//! written batch by batch, so memory stays bounded whatever the input's size.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plugbay_host::registry::{Registry, RegistryError, SqliteStore};
use plugbay_host::{
    Batch, Confinement, Host, IoError, Pipeline, PipelineError, PipelineReport, PluginSpec, State,
};
use serde::Serialize;
use serde_json::Value;

use super::input::{self, InputError, Progress, Source};
use super::locate;
use super::table::Table;
use super::{counted, human_duration, permission_list, thousands, Context};

/// Run records through plugins.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay run data-processor@1.0.0 --input records.jsonl --output out.json
  plugbay run redactor@1.0.0 dedup@1.0.0 data-processor@1.0.0 < records.json > out.json
  echo '[{\"text\": \"hello\"}]' | plugbay run target/release/libshouter.so
  plugbay run target/release/libdedup.so --config '{\"key\": \"id\"}' -i records.json

A registered plugin must be approved and enabled, and runs with what its review
granted, where its review put it (a worker process of its own unless approved for a
thread). A library file (a plugin author's own build) is inspected first and runs
confined to what its embedded manifest requests, on a worker thread unless
`--isolation process` is given. Its `${plugin_dir}` is the folder of its plugin.json:
beside the library, or, for a library in cargo's target folder, the crate in the
workspace whose plugin.json has the plugin's name and version (else the library's
folder); `--plugin-dir` sets it. Its `${data_dir}` and its data store are in a
temporary folder (or under `--data-dir`), never the registry's.

Input: a JSON array of records, or JSON Lines (one object per line). Output: one JSON
array. The summary (records, time, records/s, per plugin) goes to stderr; a progress
bar too when stderr is a terminal. With `--json`, the summary is JSON: on stdout when
`--output` is a file, else on stderr. With `--output FILE`, the file appears only when
the run succeeds: a run that fails, or is stopped by Ctrl-C (exit code 130) or a
SIGTERM (143), leaves no file, neither the output nor a temporary one.")]
pub struct Args {
    /// Registered plugin ids (`name@version`) or plugin library files, chained in this order
    #[arg(value_name = "ID|LIBRARY", required = true)]
    pub plugins: Vec<String>,
    /// The records: a JSON array or JSON Lines file; `-` reads stdin
    #[arg(short, long, value_name = "FILE|-", default_value = "-")]
    pub input: String,
    /// Where to write the output JSON array [default: stdout]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Records per batch: each plugin call gets this many
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub batch_size: u64,
    /// Config for `init`, laid over the plugin's own: JSON for every plugin, or
    /// NAME=JSON for the plugin with that name or id (repeatable)
    #[arg(long, value_name = "JSON|NAME=JSON")]
    pub config: Vec<String>,
    /// `${plugin_dir}` of the plugin library files given: DIR for each, or NAME=DIR
    /// for the one with that name or id (repeatable) [default: the folder of the
    /// library's plugin.json, found beside it or in the cargo workspace it was built in]
    #[arg(long, value_name = "[NAME=]DIR")]
    pub plugin_dir: Vec<String>,
    /// Where plugin library files run: `thread` or `process` (registered plugins run
    /// where their review put them)
    #[arg(long, value_name = "ISOLATION", default_value = "thread")]
    pub isolation: plugbay_host::Isolation,
    /// Where plugin library files keep their data: each gets DIR/NAME/VERSION as its
    /// `${data_dir}` [default: a temporary folder, removed after the run]. Registered
    /// plugins always use the registry's.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// A plugin to run, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A registry id.
    Registered(String),
    /// A library file.
    Library(PathBuf),
}

impl Target {
    fn parse(text: &str) -> Result<Target> {
        let path = Path::new(text);
        if path.is_file() {
            return Ok(Target::Library(path.to_owned()));
        }
        let has_separator = text.contains('/') || text.contains(std::path::MAIN_SEPARATOR);
        if text.contains('@') && !has_separator {
            return Ok(Target::Registered(text.to_owned()));
        }
        if has_separator || text.ends_with(std::env::consts::DLL_SUFFIX) {
            return Ok(Target::Library(path.to_owned()));
        }
        // A bare name: the registry resolves it to its one version, or its enabled one.
        let is_name = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if is_name {
            return Ok(Target::Registered(text.to_owned()));
        }
        bail!("`{text}` is neither a plugin id (`name@version`) nor a library file; `plugbay list` shows the registered ids")
    }
}

/// A `--plugin-dir` value.
#[derive(Debug, Clone, PartialEq)]
struct PluginDirArg {
    /// The plugin's name or id, or every library of the run.
    plugin: Option<String>,
    dir: PathBuf,
}

impl PluginDirArg {
    fn parse(text: &str) -> PluginDirArg {
        match text.split_once('=') {
            Some((plugin, dir))
                if !plugin.is_empty()
                    && plugin.chars().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || matches!(c, '-' | '@' | '.' | '+')
                    }) =>
            {
                PluginDirArg {
                    plugin: Some(plugin.to_owned()),
                    dir: PathBuf::from(dir),
                }
            }
            _ => PluginDirArg {
                plugin: None,
                dir: PathBuf::from(text),
            },
        }
    }

    fn applies_to(&self, manifest: &plugbay_host::Manifest) -> bool {
        self.plugin
            .as_ref()
            .is_none_or(|name| *name == manifest.name || *name == manifest.id())
    }
}

/// A `--config` value.
#[derive(Debug, Clone, PartialEq)]
struct ConfigArg {
    /// The plugin's name or id, or every plugin.
    plugin: Option<String>,
    value: Value,
}

impl ConfigArg {
    fn parse(text: &str) -> Result<ConfigArg> {
        let trimmed = text.trim_start();
        let (plugin, json) = if trimmed.starts_with(['{', '[', '"']) {
            (None, trimmed)
        } else {
            match text.split_once('=') {
                Some((plugin, json)) if !plugin.trim().is_empty() => {
                    (Some(plugin.trim().to_owned()), json)
                }
                _ => (None, trimmed),
            }
        };
        let value = serde_json::from_str(json).map_err(|err| {
            anyhow!("invalid `--config` value `{text}`: {err}; give a JSON object, or NAME=JSON for one plugin")
        })?;
        Ok(ConfigArg { plugin, value })
    }
}

/// `base` with `over`'s fields on top (or `over` if either is not an object).
fn merge(base: Option<Value>, over: &Value) -> Value {
    match (base, over) {
        (Some(Value::Object(mut base)), Value::Object(fields)) => {
            base.extend(fields.clone());
            Value::Object(base)
        }
        _ => over.clone(),
    }
}

/// What the run did, for people and for `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    records_in: u64,
    records_out: u64,
    batches: u64,
    seconds: f64,
    records_per_second: f64,
    stages: Vec<StageSummary>,
}

#[derive(Debug, Serialize)]
struct StageSummary {
    plugin: String,
    batches: u64,
    records_out: u64,
    busy_seconds: f64,
    confinement: Confinement,
    state: State,
}

/// Runs the pipeline.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let targets = args
        .plugins
        .iter()
        .map(|text| Target::parse(text))
        .collect::<Result<Vec<_>>>()?;
    let configs = args
        .config
        .iter()
        .map(|text| ConfigArg::parse(text))
        .collect::<Result<Vec<_>>>()?;
    let source = Source::parse(&args.input);
    let batch_size = usize::try_from(args.batch_size).unwrap_or(usize::MAX);

    let registry = if targets
        .iter()
        .any(|target| matches!(target, Target::Registered(_)))
    {
        Some(context.registry()?)
    } else {
        None
    };
    let host = match &registry {
        Some(registry) => context.host(registry)?,
        None => Host::new().with_sandbox(context.sandbox),
    };
    // A library file is a development build: its data never goes where a registered
    // plugin of the same name and version keeps its own.
    let scratch;
    let library_data = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::Builder::new()
                .prefix("plugbay-run-data-")
                .tempdir()
                .context("cannot create a temporary data folder for the run")?;
            scratch.path().to_owned()
        }
    };
    // Its data store too: `store.db` in that folder. Registered plugins keep the home's.
    let library_host = host.clone().with_store(SqliteStore::open(&library_data)?);
    let plugin_dirs: Vec<PluginDirArg> = args
        .plugin_dir
        .iter()
        .map(|text| PluginDirArg::parse(text))
        .collect();
    let mut specs = targets
        .iter()
        .map(|target| {
            spec(
                target,
                registry.as_ref(),
                &host,
                args.isolation,
                &plugin_dirs,
                &library_data,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    check_plugin_dirs(&plugin_dirs, &targets, &specs)?;
    apply_configs(&mut specs, &configs)?;
    // Close the registry before any plugin code runs: a plugin could otherwise use
    // the open descriptor (pread/pwrite need no path) to rewrite its own review.
    drop(registry);

    let progress = Arc::new(Progress::default());
    let batches = input::read_batches(source.clone(), batch_size, progress.clone())?;

    let mut stages = Vec::with_capacity(specs.len());
    for (spec, target) in specs.into_iter().zip(&targets) {
        let handle = match target {
            Target::Registered(_) => host.start(spec)?,
            Target::Library(_) => library_host.start(spec)?,
        };
        if !context.json {
            let status = handle.status();
            eprintln!(
                "started {}{}: confinement {}, granted {}",
                status.id,
                match status.isolation {
                    plugbay_host::Isolation::Process => " in a worker process",
                    plugbay_host::Isolation::Thread => " on a worker thread",
                },
                status.confinement,
                permission_list(&status.granted)
            );
        }
        stages.push(handle);
    }

    if source == Source::Stdin && io::stdin().is_terminal() {
        eprintln!("reading records from stdin (end with Ctrl-D); `--input FILE` reads a file");
    }
    let bar = progress_bar(&source);
    let mut output = Output::create(args.output.as_deref())?;
    let mut pipeline = Pipeline::new(stages);
    let mut records_out = 0u64;
    let mut broken_pipe = false;
    let result = pipeline.run(batches, |batch: Batch| -> Result<(), IoError> {
        records_out += batch.len().unwrap_or(0) as u64;
        if let Err(err) = output.write(&batch) {
            broken_pipe = err.kind() == io::ErrorKind::BrokenPipe;
            return Err(Box::new(err));
        }
        if let Some(bar) = &bar {
            bar.set_position(progress.bytes.load(Ordering::Relaxed));
            bar.set_message(format!("{} records", thousands(records_out)));
        }
        Ok(())
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match result {
        Ok(report) => report,
        Err(_) if broken_pipe => return Ok(()),
        Err(err) => return Err(pipeline_error(err, &pipeline, batch_size, &output)),
    };
    let written = output.finish();
    if let Err(err) = &written {
        if err
            .downcast_ref::<io::Error>()
            .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
        {
            return Ok(());
        }
    }
    written?;

    let mut cleanup_error = None;
    let mut statuses = Vec::new();
    for stage in pipeline.into_stages() {
        let id = stage.id().to_owned();
        let fallback = stage.status().clone();
        match stage.shutdown() {
            Ok(status) => statuses.push(status),
            Err(err) => {
                statuses.push(fallback);
                cleanup_error.get_or_insert(
                    anyhow::Error::new(err)
                        .context(format!("the run finished, but cleaning up {id} failed")),
                );
            }
        }
    }
    let summary = summarize(
        &report,
        &statuses,
        progress.records.load(Ordering::Relaxed),
        records_out,
    );
    print_summary(&summary, context.json, args.output.is_some())?;
    match cleanup_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The spec of one target: from the registry (approved, enabled, unchanged), or
/// from the library's embedded manifest.
fn spec(
    target: &Target,
    registry: Option<&Registry>,
    host: &Host,
    isolation: plugbay_host::Isolation,
    plugin_dirs: &[PluginDirArg],
    library_data: &Path,
) -> Result<PluginSpec> {
    match target {
        Target::Registered(name_or_id) => {
            let registry = registry.expect("the registry is open when an id is given");
            let id = match registry.resolve(name_or_id) {
                Err(RegistryError::NotFound { .. }) if !name_or_id.contains('@') => bail!(
                    "`{name_or_id}` is neither a registered plugin nor a library file; `plugbay list` shows the registered ids"
                ),
                resolved => resolved?,
            };
            Ok(registry.spec(&id)?)
        }
        Target::Library(path) => {
            let inspection = super::inspect::inspect(host, path)?;
            let plugin_dir = match plugin_dirs
                .iter()
                .find(|dir| dir.applies_to(&inspection.manifest))
            {
                Some(given) => given.dir.clone(),
                None => match locate::manifest_folder(&inspection.library, &inspection.manifest) {
                    Ok(Some(dir)) => dir,
                    Ok(None) => inspection
                        .library
                        .parent()
                        .map(Path::to_owned)
                        .unwrap_or_default(),
                    Err(several) => {
                        bail!("{several}; give the plugin's folder with `--plugin-dir DIR`")
                    }
                },
            };
            tracing::info!(plugin = %inspection.manifest.id(), plugin_dir = %plugin_dir.display(), "the plugin's folder");
            let data_dir = plugbay_host::sandbox::plugin_data_dir(
                library_data,
                &inspection.manifest.name,
                &inspection.manifest.version,
            );
            // Run the bytes that were inspected, even if the file changes meanwhile.
            Ok(PluginSpec::new(inspection.library, inspection.manifest)
                .with_plugin_dir(plugin_dir)
                .with_sha256(inspection.sha256)
                .with_isolation(isolation)
                .with_data_dir(data_dir))
        }
    }
}

/// Refuses a `--plugin-dir NAME=DIR` that names no library file of the run.
fn check_plugin_dirs(
    plugin_dirs: &[PluginDirArg],
    targets: &[Target],
    specs: &[PluginSpec],
) -> Result<()> {
    let libraries: Vec<&PluginSpec> = targets
        .iter()
        .zip(specs)
        .filter(|(target, _)| matches!(target, Target::Library(_)))
        .map(|(_, spec)| spec)
        .collect();
    for given in plugin_dirs {
        if !libraries
            .iter()
            .any(|spec| given.applies_to(&spec.manifest))
        {
            let names: Vec<String> = libraries.iter().map(|spec| spec.manifest.id()).collect();
            bail!(
                "`--plugin-dir {}` names no plugin library file of this run (a registered plugin's folder is the one it was registered with){}",
                given.plugin.as_deref().map_or_else(
                    || given.dir.display().to_string(),
                    |name| format!("{name}={}", given.dir.display())
                ),
                if names.is_empty() {
                    String::new()
                } else {
                    format!("; the library files are {}", names.join(", "))
                }
            );
        }
    }
    Ok(())
}

fn apply_configs(specs: &mut [PluginSpec], configs: &[ConfigArg]) -> Result<()> {
    for config in configs {
        let mut matched = false;
        for spec in specs.iter_mut() {
            let applies = match &config.plugin {
                None => true,
                Some(name) => *name == spec.manifest.name || *name == spec.manifest.id(),
            };
            if applies {
                let base = spec.config.take().or_else(|| spec.manifest.config.clone());
                spec.config = Some(merge(base, &config.value));
                matched = true;
            }
        }
        if let (false, Some(name)) = (matched, &config.plugin) {
            let names: Vec<String> = specs.iter().map(|spec| spec.manifest.id()).collect();
            bail!(
                "`--config {name}=…` names no plugin of this run; the plugins are {}",
                names.join(", ")
            );
        }
    }
    Ok(())
}

fn pipeline_error(
    err: PipelineError,
    pipeline: &Pipeline,
    batch_size: usize,
    output: &Output,
) -> anyhow::Error {
    match err {
        PipelineError::Input { error, .. } => match error.downcast::<InputError>() {
            Ok(err) => anyhow::Error::new(*err),
            Err(other) => anyhow!("reading the input failed: {other}"),
        },
        PipelineError::Output { error, .. } => {
            anyhow!("cannot write output {}: {error}", output.name())
        }
        PipelineError::Stage {
            stage,
            index,
            error,
            ..
        } => {
            let plugin = pipeline
                .stages()
                .get(stage)
                .map(|handle| handle.id().to_owned())
                .unwrap_or_else(|| format!("stage {}", stage + 1));
            let first = index.saturating_mul(batch_size as u64) + 1;
            anyhow::Error::new(error).context(format!(
                "batch {} (records from {first}) failed in {plugin}, stage {} of {}; nothing after it was written",
                index + 1,
                stage + 1,
                pipeline.stages().len()
            ))
        }
        other => anyhow::Error::new(other),
    }
}

fn progress_bar(source: &Source) -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match source.size() {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("the template is valid"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// The output: one JSON array, written batch by batch to stdout or to a temporary
/// file that becomes `--output` when the run succeeds.
struct Output {
    writer: Writer,
    records_written: bool,
    /// The temporary file until it becomes the output: a signal that stops the run
    /// removes it (see [`remove_on_signal`]).
    pending: Arc<Mutex<Option<PathBuf>>>,
}

enum Writer {
    Stdout(BufWriter<io::Stdout>),
    File {
        path: PathBuf,
        file: BufWriter<tempfile::NamedTempFile>,
    },
}

impl Output {
    fn create(path: Option<&Path>) -> Result<Output> {
        let pending = Arc::new(Mutex::new(None));
        let writer = match path {
            None => Writer::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            Some(path) => {
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                remove_on_signal(pending.clone(), path.to_owned())?;
                let file = tempfile::Builder::new()
                    .prefix(".plugbay-output")
                    .tempfile_in(dir)
                    .with_context(|| format!("cannot create output {}", path.display()))?;
                *pending.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(file.path().to_owned());
                Writer::File {
                    path: path.to_owned(),
                    file: BufWriter::with_capacity(1 << 16, file),
                }
            }
        };
        Ok(Output {
            writer,
            records_written: false,
            pending,
        })
    }

    fn name(&self) -> String {
        match &self.writer {
            Writer::Stdout(_) => "<stdout>".to_owned(),
            Writer::File { path, .. } => path.display().to_string(),
        }
    }

    fn out(&mut self) -> &mut dyn Write {
        match &mut self.writer {
            Writer::Stdout(out) => out,
            Writer::File { file, .. } => file,
        }
    }

    /// Appends a batch's records to the array.
    fn write(&mut self, batch: &Batch) -> io::Result<()> {
        let inner = batch.inner_json();
        if inner.is_empty() {
            return Ok(());
        }
        // The array opens with the first record, so a run that fails before any
        // output leaves stdout empty.
        let separator: &[u8] = if self.records_written { b",\n" } else { b"[\n" };
        self.records_written = true;
        let out = self.out();
        out.write_all(separator)?;
        out.write_all(inner)
    }

    /// Closes the array; a file is moved into place.
    fn finish(mut self) -> Result<()> {
        let name = self.name();
        let end: &[u8] = if self.records_written {
            b"\n]\n"
        } else {
            b"[]\n"
        };
        let write_end = |out: &mut dyn Write| -> io::Result<()> {
            out.write_all(end)?;
            out.flush()
        };
        write_end(self.out()).with_context(|| format!("cannot write output {name}"))?;
        if let Writer::File { path, file } = self.writer {
            let file = file
                .into_inner()
                .map_err(|err| err.into_error())
                .with_context(|| format!("cannot write output {name}"))?;
            file.as_file()
                .sync_all()
                .with_context(|| format!("cannot write output {name}"))?;
            // A signal now either finds the temporary file (and removes it) or
            // waits until the output is in place.
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            file.persist(&path)
                .map_err(|err| err.error)
                .with_context(|| format!("cannot write output {name}"))?;
            *pending = None;
        }
        Ok(())
    }
}

/// Watches for the signals that stop a run (Ctrl-C, SIGTERM, SIGHUP) on a thread of
/// its own: the first one removes the temporary output file, says so, and exits with
/// 128 + the signal's number. The pipeline's threads may be busy in plugin code, or
/// blocked reading stdin, so the run is not asked to wind down: it is stopped.
#[cfg(unix)]
fn remove_on_signal(pending: Arc<Mutex<Option<PathBuf>>>, output: PathBuf) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot watch for Ctrl-C to remove a partial output")?;
    std::thread::Builder::new()
        .name("plugbay-signals".to_owned())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            // Held until the process ends, so the output cannot be moved into place
            // after this.
            let pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(temporary) = pending.as_ref() {
                let _ = std::fs::remove_file(temporary);
                eprintln!("\ninterrupted: {} was not written", output.display());
            }
            std::process::exit(128 + signal);
        })
        .context("cannot watch for Ctrl-C to remove a partial output")?;
    Ok(())
}

/// Elsewhere, a stopped run may leave its temporary output file behind.
#[cfg(not(unix))]
fn remove_on_signal(_pending: Arc<Mutex<Option<PathBuf>>>, _output: PathBuf) -> Result<()> {
    Ok(())
}

fn summarize(
    report: &PipelineReport,
    statuses: &[plugbay_host::PluginStatus],
    records_in: u64,
    records_out: u64,
) -> Summary {
    let seconds = report.elapsed.as_secs_f64();
    Summary {
        records_in,
        records_out,
        batches: report.batches,
        seconds,
        records_per_second: if seconds > 0.0 {
            records_in as f64 / seconds
        } else {
            0.0
        },
        stages: report
            .stages
            .iter()
            .zip(statuses)
            .map(|(stage, status)| StageSummary {
                plugin: stage.plugin.clone(),
                batches: stage.batches,
                records_out: stage.records_out,
                busy_seconds: stage.busy.as_secs_f64(),
                confinement: status.confinement.clone(),
                state: status.state.clone(),
            })
            .collect(),
    }
}

fn print_summary(summary: &Summary, json: bool, output_is_file: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(summary)?;
        if output_is_file {
            writeln!(io::stdout().lock(), "{text}")?;
        } else {
            eprintln!("{text}");
        }
        return Ok(());
    }
    let mut err = io::stderr().lock();
    writeln!(
        err,
        "processed {} in {} ({} records/s): {} in, {} out, {}",
        counted(summary.records_in, "record", "records"),
        human_duration(Duration::from_secs_f64(summary.seconds)),
        thousands(summary.records_per_second.round() as u64),
        thousands(summary.records_in),
        thousands(summary.records_out),
        counted(summary.batches, "batch", "batches"),
    )?;
    let mut table = Table::new(&[
        "PLUGIN",
        "BATCHES",
        "RECORDS OUT",
        "BUSY",
        "CONFINEMENT",
        "STATE",
    ])
    .indent(2);
    for stage in &summary.stages {
        table.row(vec![
            stage.plugin.clone(),
            thousands(stage.batches),
            thousands(stage.records_out),
            human_duration(Duration::from_secs_f64(stage.busy_seconds)),
            stage.confinement.to_string(),
            stage.state.to_string(),
        ]);
    }
    table.write(&mut err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_ids_or_libraries() {
        assert_eq!(
            Target::parse("data-processor@1.0.0").unwrap(),
            Target::Registered("data-processor@1.0.0".into())
        );
        assert_eq!(
            Target::parse("target/release/libx.so").unwrap(),
            Target::Library("target/release/libx.so".into())
        );
        assert_eq!(
            Target::parse("data-processor").unwrap(),
            Target::Registered("data-processor".into()),
            "a bare name, for the registry to resolve"
        );
        assert!(Target::parse("Data Processor")
            .unwrap_err()
            .to_string()
            .contains("neither a plugin id"));
    }

    #[test]
    fn plugin_dirs_are_dir_or_name_equals_dir() {
        assert_eq!(
            PluginDirArg::parse("plugins/shouter"),
            PluginDirArg {
                plugin: None,
                dir: "plugins/shouter".into()
            }
        );
        assert_eq!(
            PluginDirArg::parse("shouter=plugins/shouter"),
            PluginDirArg {
                plugin: Some("shouter".into()),
                dir: "plugins/shouter".into()
            }
        );
        assert_eq!(
            PluginDirArg::parse("/srv/a=b").plugin,
            None,
            "a path with `=` in it"
        );
    }

    #[test]
    fn configs_are_json_or_name_equals_json() {
        assert_eq!(
            ConfigArg::parse(r#"{"a": 1}"#).unwrap(),
            ConfigArg {
                plugin: None,
                value: serde_json::json!({"a": 1})
            }
        );
        assert_eq!(
            ConfigArg::parse(r#"dedup={"key": "id"}"#).unwrap(),
            ConfigArg {
                plugin: Some("dedup".into()),
                value: serde_json::json!({"key": "id"})
            }
        );
        let err = ConfigArg::parse("{oops}").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid `--config` value `{oops}`"),
            "{err}"
        );
    }

    #[test]
    fn configs_lay_fields_over_the_defaults() {
        assert_eq!(
            merge(
                Some(serde_json::json!({"a": 1, "b": 2})),
                &serde_json::json!({"b": 3})
            ),
            serde_json::json!({"a": 1, "b": 3})
        );
    }
}
