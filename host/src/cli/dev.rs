//! `plugbay dev LIBRARY [--input FILE|-]`: the author's loop. Runs a plugin library
//! being built and reloads it each time it is rebuilt, as a live upgrade: the rebuilt
//! library is started and initialised while the running one still serves, and the
//! switch happens at a batch boundary, so an edit shows without restarting anything
//! (and state the plugin keeps in the data store carries over).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use plugbay_host::loader::FileStamp;
use plugbay_host::{Batch, Host, Isolation, Pipeline, PluginHandle, PluginSpec, StageSwitch};

use super::input::{self, Progress, Source};
use super::{counted, human_duration, Context};

/// Run a plugin library and reload it whenever it is rebuilt.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay dev target/debug/libshouter.so --input records.json
  cargo watch -x build &   # or rebuild by hand: cargo build
  plugbay dev target/debug/libsequencer.so < records.jsonl

With `--input FILE`, the records go through the plugin and the output array is
printed; each time the library is rebuilt, the new build is started and the same
records go through it again. With stdin (the default), records stream through the
plugin as they come (one batch per record unless `--batch-size` says otherwise) and
each output record is printed as a JSON line; a rebuild takes over at the next batch.

A rebuild is started and initialised before the running build stops; if it does not
start (it does not load, or its `init` fails), the error is printed and the running
build serves on. The running build's `cleanup` runs before the new build's first
batch, and both share one data store, so state a plugin keeps there carries over.
The library is watched every `--poll` milliseconds (its size, time and inode); a
change counts once the file has stayed the same for one more look.

On a worker thread (the default) every build loaded stays mapped until `plugbay dev`
exits: a Rust library cannot be unloaded soundly. `--isolation process` runs each
build in a worker process that exits when the next one takes over (see BENCHMARKS.md
for the memory of both).")]
pub struct Args {
    /// The plugin library being built (`target/debug/lib….so`)
    #[arg(value_name = "LIBRARY")]
    pub library: PathBuf,
    /// The records: a JSON array or JSON Lines file, run again after each rebuild;
    /// `-` streams stdin
    #[arg(short, long, value_name = "FILE|-", default_value = "-")]
    pub input: String,
    /// Records per batch [default: 1 for stdin, 1000 for a file]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub batch_size: Option<u64>,
    /// Config for `init`, laid over the plugin's own (JSON)
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Where the plugin runs: `thread` or `process`
    #[arg(long, value_name = "ISOLATION", default_value = "thread")]
    pub isolation: Isolation,
    /// How often to look at the library, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll: u64,
    /// Where the plugin keeps its data: DIR/NAME/VERSION is its `${data_dir}`
    /// [default: a temporary folder, removed at exit]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// What every build of the library is started with.
struct Builds {
    library: PathBuf,
    inspector: Host,
    host: Host,
    isolation: Isolation,
    config: Option<serde_json::Value>,
    data_dir: PathBuf,
}

impl Builds {
    /// The spec of the library as it is now: inspected in a worker process (never
    /// in this one). It is not pinned to the inspected digest: a development build
    /// is loaded by its path, so that a host running builds in worker processes keeps
    /// no sealed copy of the builds it replaced (a build changed again meanwhile is
    /// checked against the inspected manifest, and the next change retries).
    fn spec(&self) -> Result<PluginSpec> {
        let inspection = super::inspect::inspect(&self.inspector, &self.library)?;
        let data_dir = plugbay_host::sandbox::plugin_data_dir(
            &self.data_dir,
            &inspection.manifest.name,
            &inspection.manifest.version,
        );
        let mut spec = PluginSpec::new(inspection.library, inspection.manifest)
            .with_isolation(self.isolation)
            .with_data_dir(data_dir);
        if let Some(config) = &self.config {
            spec = spec.with_config(config.clone());
        }
        Ok(spec)
    }
}

/// Runs the loop until Ctrl-C (or, streaming stdin, until it ends).
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let config = args
        .config
        .as_deref()
        .map(|text| {
            serde_json::from_str(text).map_err(|err| {
                anyhow::anyhow!("invalid `--config` value `{text}`: {err}; give a JSON object")
            })
        })
        .transpose()?;
    let scratch;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::Builder::new()
                .prefix("plugbay-dev-data-")
                .tempdir()
                .context("cannot create a temporary data folder")?;
            scratch.path().to_owned()
        }
    };
    let builds = Builds {
        library: args.library.clone(),
        inspector: Host::new()
            .with_sandbox(context.sandbox)
            .with_isolation(Isolation::Process),
        host: Host::new().with_sandbox(context.sandbox),
        isolation: args.isolation,
        config,
        data_dir,
    };
    let source = Source::parse(&args.input);
    let poll = Duration::from_millis(args.poll);
    let mut watch = Watch::new(&args.library);
    let first = builds.host.start(builds.spec()?)?;
    eprintln!(
        "started {} ({}, confinement {}); watching {} for rebuilds (Ctrl-C to stop)",
        first.id(),
        match first.status().isolation {
            Isolation::Process => "in a worker process",
            Isolation::Thread => "on a worker thread",
        },
        first.status().confinement,
        args.library.display()
    );
    match source {
        Source::File(path) => {
            let batch_size = usize::try_from(args.batch_size.unwrap_or(1000)).unwrap_or(usize::MAX);
            rerun_file(&builds, first, &path, batch_size, &mut watch, poll)
        }
        Source::Stdin => {
            let batch_size = usize::try_from(args.batch_size.unwrap_or(1)).unwrap_or(usize::MAX);
            stream_stdin(builds, first, batch_size, watch, poll)
        }
    }
}

/// Runs the file through the plugin, then again through each rebuild.
fn rerun_file(
    builds: &Builds,
    mut plugin: PluginHandle,
    path: &Path,
    batch_size: usize,
    watch: &mut Watch,
    poll: Duration,
) -> Result<()> {
    loop {
        if let Err(err) = run_file(&mut plugin, path, batch_size) {
            eprintln!("error: {}", super::error_chain(&err));
        }
        loop {
            watch.wait_for_change(poll);
            match reload(builds, |spec| builds.host.upgrade(&mut plugin, spec)) {
                Reloaded::Yes => break,
                Reloaded::No => {}
            }
        }
    }
}

/// One pass of the file through `plugin`: the output array on stdout, a summary on
/// stderr.
fn run_file(plugin: &mut PluginHandle, path: &Path, batch_size: usize) -> Result<()> {
    let started = Instant::now();
    let batches = input::read_batches(
        Source::File(path.to_owned()),
        batch_size,
        Arc::new(Progress::default()),
    )?;
    let mut outputs = Vec::new();
    let mut records = 0u64;
    for batch in batches {
        let batch = batch.map_err(|err| anyhow::anyhow!("{err}"))?;
        let output = plugin.process(&batch)?;
        records += output.len().unwrap_or(0) as u64;
        outputs.push(output);
    }
    let mut out = io::stdout().lock();
    let mut first = true;
    for output in &outputs {
        let inner = output.inner_json();
        if inner.is_empty() {
            continue;
        }
        out.write_all(if first { b"[\n" } else { b",\n" })?;
        out.write_all(inner)?;
        first = false;
    }
    out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    out.flush()?;
    eprintln!(
        "{}: {} out in {}",
        plugin.id(),
        counted(records, "record", "records"),
        human_duration(started.elapsed())
    );
    Ok(())
}

/// Streams stdin through the plugin, as a one-stage pipeline whose stage a watcher
/// thread upgrades on each rebuild.
fn stream_stdin(
    builds: Builds,
    first: PluginHandle,
    batch_size: usize,
    mut watch: Watch,
    poll: Duration,
) -> Result<()> {
    let batches = input::read_batches(Source::Stdin, batch_size, Arc::new(Progress::default()))?;
    let mut pipeline = Pipeline::new(vec![first]);
    let switch: StageSwitch = pipeline.switch();
    std::thread::Builder::new()
        .name("plugbay-dev-watch".to_owned())
        .spawn(move || loop {
            watch.wait_for_change(poll);
            let _ = reload(&builds, |spec| switch.upgrade(&builds.host, 0, spec));
        })
        .context("cannot start the thread that watches the library")?;
    let mut out = io::BufWriter::new(io::stdout());
    let result = pipeline.run(batches, |batch: Batch| {
        for record in batch.records::<Box<serde_json::value::RawValue>>()? {
            out.write_all(record.get().as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    });
    let report = result?;
    eprintln!(
        "{} in {}",
        counted(report.batches, "batch", "batches"),
        human_duration(report.elapsed)
    );
    for stage in pipeline.into_stages() {
        stage.shutdown()?;
    }
    Ok(())
}

enum Reloaded {
    Yes,
    No,
}

/// Starts the rebuilt library and switches to it with `upgrade`; says what
/// happened on stderr.
fn reload(
    builds: &Builds,
    upgrade: impl FnOnce(PluginSpec) -> Result<plugbay_host::Upgrade, plugbay_host::UpgradeError>,
) -> Reloaded {
    let spec = match builds.spec() {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!(
                "error: {} was rebuilt, but it cannot be loaded: {}; the running build serves on",
                builds.library.display(),
                super::error_chain(&err)
            );
            return Reloaded::No;
        }
    };
    match upgrade(spec) {
        Ok(upgrade) => {
            eprintln!(
                "reloaded {} → {} (the build before did {} and cleaned up{})",
                upgrade.from,
                upgrade.to,
                counted(upgrade.previous.batches, "batch", "batches"),
                match &upgrade.cleanup_error {
                    Some(err) => format!(", with an error: {err}"),
                    None => String::new(),
                }
            );
            Reloaded::Yes
        }
        Err(err) => {
            eprintln!("error: {}", super::error_chain(&anyhow::Error::new(err)));
            Reloaded::No
        }
    }
}

/// Polls a file for a change that has settled. (A watch on the folder through
/// inotify would need the same settling: cargo writes the library, then links it
/// into place.)
struct Watch {
    path: PathBuf,
    seen: Option<FileStamp>,
}

impl Watch {
    fn new(path: &Path) -> Watch {
        Watch {
            path: path.to_owned(),
            seen: FileStamp::of(path),
        }
    }

    /// Waits until the file differs from when it was last seen, and has stayed the
    /// same for one more look.
    fn wait_for_change(&mut self, poll: Duration) {
        loop {
            std::thread::sleep(poll);
            let now = FileStamp::of(&self.path);
            if now.is_none() || now == self.seen {
                continue;
            }
            std::thread::sleep(poll);
            if FileStamp::of(&self.path) == now {
                self.seen = now;
                return;
            }
        }
    }
}
