//! `plugbay demo`: the example plugins through their whole lifecycle, each step
//! printed as it happens: register, review, enable, a sandbox denial, a pipeline
//! run on generated records, cleanup, disable, unregister.
//!
//! The registry is a temporary one (removed at the end) unless `--home` is given.
//! The libraries are looked up beside the `plugbay` binary (the cargo profile folder
//! that `cargo build --workspace` fills) and the manifests in the repository's
//! `example-plugins/`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use plugbay_host::registry::{Registration, Registry, RegistryError};
use plugbay_host::{Batch, Host, IoError, Permission, Pipeline, StartError};
use serde::Serialize;
use serde_json::{json, Value};

use super::{human_duration, permission_list, thousands, Context};

/// The example plugins, in pipeline order.
const PIPELINE: &[&str] = &["redactor", "dedup", "enricher", "data-processor"];

/// The plugin whose review withholds a grant, to show the sandbox deny its use.
const OVERREACHING: &str = "enricher";

/// Walk the example plugins through their lifecycle.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay demo
  plugbay demo --records 100000
  plugbay --json demo | jq '.steps[] | select(.action == \"denied\")'
  plugbay --home /tmp/demo-registry demo    # keep the registry (and its audit log)
  cargo build --release --workspace && target/release/plugbay demo    # from a fresh clone

The registry is a temporary folder, removed at the end, unless `--home DIR` is given
(`$PLUGBAY_HOME` is not used). The example plugins must be built: `cargo build
--workspace` (add `--release` for a release build of plugbay) puts their libraries
beside the plugbay binary.")]
pub struct Args {
    /// Where the example plugins' libraries are [default: the plugbay binary's folder]
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Where the example plugins' folders (each with its plugin.json) are [default: the
    /// `example-plugins` folder of the repository plugbay was built in, else of the
    /// current folder or one above it]
    #[arg(long, value_name = "DIR")]
    pub examples: Option<PathBuf>,
    /// How many records to generate (one in ten is a duplicate)
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub records: u64,
    /// Records per batch
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
}

/// One thing the demo did.
#[derive(Debug, Serialize)]
struct Step {
    /// 1-based number of the lifecycle stage.
    stage: usize,
    /// The stage: `register`, `review`, ….
    stage_name: &'static str,
    /// What happened: `registered`, `approved`, `denied`, ….
    action: &'static str,
    /// The plugin concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<String>,
    /// What happened, for people.
    message: String,
}

/// The demo's whole report, for `--json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    registry: PathBuf,
    temporary: bool,
    plugins_dir: &'a Path,
    examples_dir: &'a Path,
    steps: &'a [Step],
}

/// Prints steps as they happen (or gathers them for `--json`).
struct Narrator {
    json: bool,
    stage: usize,
    stage_name: &'static str,
    steps: Vec<Step>,
}

impl Narrator {
    fn stage(&mut self, name: &'static str, what: &str) -> io::Result<()> {
        self.stage += 1;
        self.stage_name = name;
        if !self.json {
            let mut out = io::stdout().lock();
            writeln!(out)?;
            writeln!(out, "{}. {name}: {what}", self.stage)?;
        }
        Ok(())
    }

    fn say(
        &mut self,
        action: &'static str,
        plugin: Option<&str>,
        message: impl Into<String>,
    ) -> io::Result<()> {
        let message = message.into();
        if !self.json {
            let subject = plugin.map(|p| format!("{p:<22}")).unwrap_or_default();
            writeln!(io::stdout().lock(), "   {action:<13} {subject}{message}")?;
        }
        self.steps.push(Step {
            stage: self.stage,
            stage_name: self.stage_name,
            action,
            plugin: plugin.map(ToOwned::to_owned),
            message,
        });
        Ok(())
    }

    fn line(&self, text: &str) -> io::Result<()> {
        if !self.json {
            writeln!(io::stdout().lock(), "{text}")?;
        }
        Ok(())
    }
}

/// Where the example plugins are.
struct Located {
    plugins_dir: PathBuf,
    examples_dir: PathBuf,
    libraries: Vec<PathBuf>,
}

/// Runs the demo.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    let located = locate(&args)?;
    let temporary = match context.home_flag() {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("plugbay-demo-")
                .tempdir()
                .context("cannot create a temporary folder for the demo's registry")?,
        ),
    };
    let home = match (&temporary, context.home_flag()) {
        (Some(dir), _) => dir.path().to_owned(),
        (None, Some(home)) => home.clone(),
        (None, None) => unreachable!("a temporary home is made when no --home is given"),
    };
    let mut registry = Registry::open(&home)?;
    let host = context.host(&registry)?;
    let mut narrator = Narrator {
        json: context.json,
        stage: 0,
        stage_name: "",
        steps: Vec::new(),
    };
    narrator.line("plugbay demo: the example plugins' whole lifecycle, step by step")?;
    narrator.line(&format!(
        "registry   {}{}",
        registry.path().display(),
        if temporary.is_some() {
            " (temporary, removed at the end)"
        } else {
            ""
        }
    ))?;
    narrator.line(&format!(
        "plugins    libraries in {}, manifests in {}",
        located.plugins_dir.display(),
        located.examples_dir.display()
    ))?;

    lifecycle(
        &args,
        context,
        &located,
        &mut registry,
        &host,
        &mut narrator,
    )?;

    let registry_path = registry.path().to_owned();
    drop(registry);
    if let Some(dir) = temporary {
        let path = dir.path().to_owned();
        dir.close()
            .with_context(|| format!("cannot remove the demo's registry {}", path.display()))?;
        narrator.line("")?;
        narrator.line(&format!(
            "done: every step of the lifecycle ran; removed the temporary registry {}",
            path.display()
        ))?;
    } else {
        narrator.line("")?;
        narrator.line(&format!(
            "done: every step of the lifecycle ran; the registry {} keeps the audit log",
            registry_path.display()
        ))?;
    }
    if context.json {
        super::print_json(&Report {
            registry: registry_path,
            temporary: context.home_flag().is_none(),
            plugins_dir: &located.plugins_dir,
            examples_dir: &located.examples_dir,
            steps: &narrator.steps,
        })?;
    }
    Ok(())
}

fn lifecycle(
    args: &Args,
    context: &Context,
    located: &Located,
    registry: &mut Registry,
    host: &Host,
    narrator: &mut Narrator,
) -> Result<()> {
    let actor = context.actor();

    narrator.stage(
        "register",
        "each library is copied into the store by its SHA-256 and inspected in a confined worker process; the plugin waits for review",
    )?;
    let mut ids = Vec::new();
    for (name, library) in PIPELINE.iter().zip(&located.libraries) {
        let folder = located.examples_dir.join(name);
        let registration = Registration::from_path(&folder, Some(library))?;
        let entry = registry
            .register(host, registration, actor)
            .with_context(|| format!("the demo could not register {}", folder.display()))?;
        narrator.say(
            "registered",
            Some(&entry.id),
            format!(
                "requests {}; sha256 {}…",
                permission_list(&entry.manifest.permissions),
                &entry.sha256[..12]
            ),
        )?;
        ids.push(entry.id);
    }
    let overreaching = ids[PIPELINE
        .iter()
        .position(|name| *name == OVERREACHING)
        .expect("the pipeline holds the overreaching plugin")]
    .clone();
    match registry.enable(&overreaching, actor) {
        Err(err @ RegistryError::NotApproved { .. }) => {
            narrator.say(
                "refused",
                Some(&overreaching),
                format!("enable before review: {err}"),
            )?;
        }
        Err(err) => return Err(err.into()),
        Ok(_) => bail!("the registry enabled {overreaching} before its review"),
    }

    narrator.stage(
        "review",
        "the reviewer sees what each plugin requests and grants all or part of it",
    )?;
    for id in &ids {
        let requested = registry.get(id)?.manifest.permissions;
        let grants: Option<Vec<Permission>> = (*id == overreaching).then(|| {
            requested
                .iter()
                .filter(|permission| permission.is_data())
                .cloned()
                .collect()
        });
        let entry = registry.approve(id, actor, grants)?;
        let withheld: Vec<Permission> = requested
            .iter()
            .filter(|permission| !entry.review.granted.contains(permission))
            .cloned()
            .collect();
        let mut message = format!("granted {}", permission_list(&entry.review.granted));
        if !withheld.is_empty() {
            message.push_str(&format!("; withheld {}", permission_list(&withheld)));
        }
        narrator.say("approved", Some(id), message)?;
    }

    narrator.stage(
        "enable",
        "approved plugins whose library is unchanged may run",
    )?;
    for id in &ids {
        registry.enable(id, actor)?;
        narrator.say("enabled", Some(id), "may run")?;
    }

    let lookup = registry
        .get(&overreaching)?
        .manifest
        .permissions
        .iter()
        .find(|permission| !permission.is_data())
        .map(ToString::to_string)
        .unwrap_or_default();
    narrator.stage(
        "sandbox",
        &format!("{overreaching} reads a file at init, but its review withheld `{lookup}`"),
    )?;
    match host.start(registry.spec(&overreaching)?) {
        Err(err @ (StartError::Init { .. } | StartError::InitPanicked { .. })) => {
            narrator.say(
                "denied",
                Some(&overreaching),
                format!("landlock stopped the read, so init failed: {err}"),
            )?;
        }
        Err(err) => return Err(err.into()),
        Ok(handle) => {
            let confinement = handle.status().confinement.clone();
            handle.shutdown()?;
            narrator.say(
                "not denied",
                Some(&overreaching),
                format!("this kernel gives confinement {confinement}, so nothing stopped the read"),
            )?;
        }
    }
    let entry = registry.approve(&overreaching, actor, None)?;
    narrator.say(
        "re-approved",
        Some(&overreaching),
        format!("granted {}", permission_list(&entry.review.granted)),
    )?;

    narrator.stage(
        "run",
        &format!(
            "{} generated records through {}, in batches of {}",
            thousands(args.records),
            ids.join(" → "),
            args.batch_size
        ),
    )?;
    let mut stages = Vec::new();
    for id in &ids {
        let handle = host.start(registry.spec(id)?)?;
        let status = handle.status();
        narrator.say(
            "initialized",
            Some(id),
            format!(
                "confinement {}, granted {}{}",
                status.confinement,
                permission_list(&status.granted),
                match status.pid {
                    Some(pid) => format!(", in worker process {pid}"),
                    None => String::new(),
                }
            ),
        )?;
        stages.push(handle);
    }
    let mut pipeline = Pipeline::new(stages);
    let mut records_out = 0u64;
    let mut sample: Option<Value> = None;
    let report = pipeline.run(
        generated(args.records, args.batch_size),
        |batch: Batch| -> Result<(), IoError> {
            records_out += batch.len().unwrap_or(0) as u64;
            if sample.is_none() {
                sample = batch.records::<Value>()?.into_iter().next();
            }
            Ok(())
        },
    )?;
    let seconds = report.elapsed.as_secs_f64();
    narrator.say(
        "processed",
        None,
        format!(
            "{} records in {} ({} records/s): {} in, {} out",
            thousands(args.records),
            human_duration(report.elapsed),
            thousands(if seconds > 0.0 {
                (args.records as f64 / seconds).round() as u64
            } else {
                0
            }),
            thousands(args.records),
            thousands(records_out)
        ),
    )?;
    for stage in &report.stages {
        narrator.say(
            "stage",
            Some(&stage.plugin),
            format!(
                "{} batches, {} records out, busy {}",
                thousands(stage.batches),
                thousands(stage.records_out),
                human_duration(stage.busy)
            ),
        )?;
    }
    if let Some(sample) = &sample {
        narrator.say("sample", None, sample.to_string())?;
    }

    narrator.stage(
        "cleanup",
        "each plugin's cleanup hook runs, then its worker process exits: no code of it runs again",
    )?;
    for handle in pipeline.into_stages() {
        let id = handle.id().to_owned();
        let status = handle.shutdown()?;
        narrator.say("cleaned up", Some(&id), format!("state {}", status.state))?;
    }
    if let Some(stats) = host.store().get("dedup/stats")? {
        narrator.say(
            "data store",
            None,
            format!(
                "dedup/stats = {} (written by dedup's cleanup, granted write:data)",
                String::from_utf8_lossy(&stats)
            ),
        )?;
    }

    narrator.stage(
        "disable",
        "a disabled plugin keeps its review but may not run",
    )?;
    for id in &ids {
        registry.disable(id, actor)?;
        narrator.say("disabled", Some(id), "may not run")?;
    }
    let first = &ids[0];
    match registry.spec(first) {
        Err(err @ RegistryError::Disabled { .. }) => {
            narrator.say("refused", Some(first), format!("run while disabled: {err}"))?;
        }
        Err(err) => return Err(err.into()),
        Ok(_) => bail!("the registry let disabled {first} run"),
    }

    narrator.stage(
        "unregister",
        "entries are removed; the audit log keeps their history",
    )?;
    for id in &ids {
        registry.unregister(id, actor)?;
        narrator.say("unregistered", Some(id), "removed from the registry")?;
    }
    let left = registry.list()?.len();
    let events = registry.audit_log(None)?.len();
    narrator.say(
        "registry",
        None,
        format!(
            "{left} plugins left; the audit log holds {events} events; integrity {}",
            if registry.integrity_ok()? {
                "ok"
            } else {
                "FAILED"
            }
        ),
    )?;
    Ok(())
}

/// `records` generated records in batches: people with e-mail addresses and phone
/// numbers (for the redactor), a country (for the enricher), one in ten a repeat of
/// an earlier record (for dedup).
fn generated(records: u64, batch_size: u64) -> impl Iterator<Item = Result<Batch, IoError>> + Send {
    const COUNTRIES: &[&str] = &["DE", "FR", "JP", "BR", "US", "KE", "NZ"];
    let distinct = (records - records / 10).max(1);
    let batches = records.div_ceil(batch_size);
    (0..batches).map(move |batch| {
        let start = batch * batch_size;
        let end = (start + batch_size).min(records);
        let rows: Vec<Value> = (start..end)
            .map(|i| {
                let n = i % distinct + 1;
                json!({
                    "id": n,
                    "name": format!("customer {n}"),
                    "email": format!("customer{n}@example.com"),
                    "phone": format!("+1 555 {:03} {:04}", n % 1000, n % 10_000),
                    "country": COUNTRIES[(n % COUNTRIES.len() as u64) as usize],
                    "amount": (n * 37) % 1000,
                })
            })
            .collect();
        Batch::from_records(&rows).map_err(|err| Box::new(err) as IoError)
    })
}

/// Finds the example plugins' libraries and manifests, or says which command builds them.
fn locate(args: &Args) -> Result<Located> {
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("cannot find the plugbay binary's own path")?;
    let exe_dir = exe
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| anyhow!("the plugbay binary {} has no folder", exe.display()))?;
    let plugins_dir = args.plugins.clone().unwrap_or_else(|| exe_dir.clone());
    let cwd = std::env::current_dir().unwrap_or_default();
    let examples_dir = match &args.examples {
        Some(dir) => dir.clone(),
        None => find_examples(&exe_dir)
            .or_else(|| find_examples(&cwd))
            .ok_or_else(|| {
                anyhow!(
                    "cannot find the example plugins' manifests (`example-plugins/*/plugin.json`) in a folder above {} or {}; run the demo from a clone of the plugbay repository, or pass `--examples DIR`",
                    exe_dir.display(),
                    cwd.display()
                )
            })?,
    };
    let build = match exe_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") if args.plugins.is_none() => "cargo build --workspace",
        _ => "cargo build --release --workspace",
    };
    let mut libraries = Vec::new();
    for name in PIPELINE {
        let manifest = examples_dir.join(name).join("plugin.json");
        if !manifest.is_file() {
            bail!(
                "the example plugin manifest {} is missing; pass the folder that holds the example plugins with `--examples DIR`",
                manifest.display()
            );
        }
        let library = plugins_dir.join(plugbay_host::manifest::library_file_name(
            &name.replace('-', "_"),
        ));
        if !library.is_file() {
            bail!(
                "the example plugin library {} is missing; build the example plugins with `{build}` in the repository's root (it puts them beside the plugbay binary), or pass their folder with `--plugins DIR`",
                library.display()
            );
        }
        libraries.push(library);
    }
    Ok(Located {
        plugins_dir,
        examples_dir,
        libraries,
    })
}

/// The `example-plugins` folder in `start` or the nearest folder above it.
fn find_examples(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join("example-plugins"))
        .find(|dir| dir.join(PIPELINE[0]).join("plugin.json").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_come_in_batches_with_duplicates() {
        let batches: Vec<Batch> = generated(25, 10).map(Result::unwrap).collect();
        assert_eq!(
            batches.iter().map(|b| b.len().unwrap()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let ids: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.records::<Value>().unwrap())
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 23);
    }
}
