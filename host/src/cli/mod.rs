//! The `plugbay` command line: clap's derive types, the settings every command
//! shares, and one module per subcommand, each a thin `exec` over the plugbay-host
//! library.
//!
//! Results go to stdout (a table or text for people, JSON with `--json`); logs,
//! progress and errors go to stderr. Exit codes: 0 ok, 1 error, 2 usage.

mod demo;
mod dev;
mod disable;
mod enable;
mod input;
mod inspect;
mod keys;
mod list;
mod locate;
#[cfg(feature = "market")]
mod market;
mod new;
mod register;
mod review;
mod revision;
mod run;
mod serve;
mod show;
mod store;
mod table;
#[cfg(feature = "market")]
mod trust;
mod unregister;
mod upgrade;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use plugbay_host::registry::Registry;
use plugbay_host::{Host, Permission, SandboxMode};
use serde::Serialize;

const EXAMPLES: &str = "\
Examples:
  plugbay demo
  plugbay new shouter && cd shouter && cargo test
  plugbay register example-plugins/data-processor --library target/release/libdata_processor.so
  plugbay review approve data-processor@1.0.0 --grant process:data
  plugbay enable data-processor@1.0.0
  plugbay run data-processor@1.0.0 --input records.jsonl --output out.json
  echo '[{\"id\": 1}]' | plugbay run target/release/libdata_processor.so
  plugbay --json list
  plugbay store get dedup/stats
  plugbay publish data-processor@1.0.0 oci://registry.example.com/plugins/data-processor
  plugbay install oci://registry.example.com/plugins/data-processor:1.0.0

Environment:
  PLUGBAY_HOME   the registry's home folder (`--home` overrides it)
  PLUGBAY_MARKETPLACE  the default marketplace, `oci://HOST/NAMESPACE`
  PLUGBAY_SIGNING_KEY  the reviewer's signing key for `review approve`
  RUST_LOG       log filter for stderr, e.g. `plugbay_host=debug` (`-v` overrides it)

Exit codes: 0 ok, 1 error, 2 usage.";

/// Register, review, enable, run and unregister Plugbay plugins.
///
/// The registry is a SQLite file, `registry.db`, in the registry's home folder.
#[derive(Debug, Parser)]
#[command(name = "plugbay", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Settings every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command takes (before or after the command's name).
#[derive(Debug, Args)]
pub struct Global {
    /// The registry's home folder [default: $PLUGBAY_HOME, else the platform data
    /// folder: ~/.local/share/plugbay on Linux]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print results as JSON, for scripts
    #[arg(long, global = true)]
    pub json: bool,
    /// Start plugins even where the kernel cannot enforce their whole sandbox (their
    /// confinement then says `partial` or `none`)
    #[arg(long, global = true)]
    pub allow_unconfined: bool,
    /// More logs on stderr: -v info, -vv debug, -vvv trace (RUST_LOG when not given)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a plugin crate that builds and runs with `cargo test`
    New(new::Args),
    /// Register a plugin: check its manifest and library, record the library's
    /// SHA-256; the plugin then waits for review
    Register(register::Args),
    /// List the registered plugins
    List(list::Args),
    /// Show one plugin: manifest, library, review, state and history
    Show(show::Args),
    /// Enable an approved plugin so that it may run
    Enable(enable::Args),
    /// Disable a plugin: it may not run until enabled again
    Disable(disable::Args),
    /// Remove a plugin from the registry (its history stays in the audit log)
    Unregister(unregister::Args),
    /// Review a plugin: approve it with the permissions you grant, or reject it
    #[command(subcommand)]
    Review(review::Command),
    /// Read a library's embedded manifest and API version, on a confined thread
    Inspect(inspect::Args),
    /// Run records through plugins: registered ids or library files, chained in order
    Run(run::Args),
    /// Make a version the current version of its name (a live upgrade)
    Upgrade(upgrade::Args),
    /// Run a plugin library you are building, and reload it each time it is rebuilt
    Dev(dev::Args),
    /// Walk the example plugins through their whole lifecycle on a temporary registry
    Demo(demo::Args),
    /// Manage the API keys of `plugbay serve`
    #[command(subcommand)]
    Keys(keys::Command),
    /// Read and delete what plugins keep in the data store of the home
    #[command(subcommand)]
    Store(store::Command),
    /// Serve the registry as a REST API guarded by scoped API keys
    Serve(serve::Args),
    /// Manage the reviewer keys whose signed reviews this host trusts
    #[cfg(feature = "market")]
    #[command(subcommand)]
    Trust(trust::Command),
    /// Show a plugin's signed attestation, or write it out for `ssh-keygen -Y verify`
    #[cfg(feature = "market")]
    Attestation(market::AttestationArgs),
    /// Publish an approved, signed plugin to an OCI registry (the marketplace)
    #[cfg(feature = "market")]
    Publish(market::PublishArgs),
    /// Install a plugin from a marketplace, checking its digests and its signed review
    #[cfg(feature = "market")]
    Install(market::InstallArgs),
    /// List the plugins a marketplace offers, with who approved them
    #[cfg(feature = "market")]
    Search(market::SearchArgs),
}

impl Cli {
    /// Runs the command.
    pub fn exec(self) -> Result<()> {
        let context = Context::new(&self.global);
        match self.command {
            Command::New(args) => new::exec(args, &context),
            Command::Register(args) => register::exec(args, &context),
            Command::List(args) => list::exec(args, &context),
            Command::Show(args) => show::exec(args, &context),
            Command::Enable(args) => enable::exec(args, &context),
            Command::Disable(args) => disable::exec(args, &context),
            Command::Unregister(args) => unregister::exec(args, &context),
            Command::Review(command) => review::exec(command, &context),
            Command::Inspect(args) => inspect::exec(args, &context),
            Command::Run(args) => run::exec(args, &context),
            Command::Upgrade(args) => upgrade::exec(args, &context),
            Command::Dev(args) => dev::exec(args, &context),
            Command::Demo(args) => demo::exec(args, &context),
            Command::Keys(command) => keys::exec(command, &context),
            Command::Store(command) => store::exec(command, &context),
            Command::Serve(args) => serve::exec(args, &context),
            #[cfg(feature = "market")]
            Command::Trust(command) => trust::exec(command, &context),
            #[cfg(feature = "market")]
            Command::Attestation(args) => market::attestation(args, &context),
            #[cfg(feature = "market")]
            Command::Publish(args) => market::publish(args, &context),
            #[cfg(feature = "market")]
            Command::Install(args) => market::install(args, &context),
            #[cfg(feature = "market")]
            Command::Search(args) => market::search(args, &context),
        }
    }
}

/// What every command needs: where the registry is, how to print, how to confine.
#[derive(Debug, Clone)]
pub struct Context {
    /// Print JSON instead of text.
    pub json: bool,
    /// Whether plugins may start with degraded confinement.
    pub sandbox: SandboxMode,
    home: Option<PathBuf>,
    actor: String,
}

impl Context {
    fn new(global: &Global) -> Context {
        let actor = ["USER", "USERNAME", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_else(|| "operator".to_owned());
        Context {
            json: global.json,
            sandbox: if global.allow_unconfined {
                SandboxMode::AllowDegraded
            } else {
                SandboxMode::Enforce
            },
            home: global.home.clone(),
            actor,
        }
    }

    /// The `--home` given on the command line, if any.
    pub fn home_flag(&self) -> Option<&PathBuf> {
        self.home.as_ref()
    }

    /// The registry's home: `--home`, else `$PLUGBAY_HOME`, else the platform data folder.
    pub fn home(&self) -> Result<PathBuf> {
        if let Some(home) = &self.home {
            return Ok(home.clone());
        }
        if let Some(home) = std::env::var_os("PLUGBAY_HOME").filter(|home| !home.is_empty()) {
            return Ok(home.into());
        }
        dirs::data_dir()
            .map(|dir| dir.join("plugbay"))
            .ok_or_else(|| {
                anyhow!("cannot find the platform data folder for the registry; set `PLUGBAY_HOME` or pass `--home DIR`")
            })
    }

    /// Opens the registry, for a lookup: an error if there is none, which is never
    /// created by a command that only reads or changes what is registered.
    pub fn registry(&self) -> Result<Registry> {
        Ok(Registry::open_existing(self.home()?)?)
    }

    /// Opens the registry, creating it if needed: for `register` and `keys create`.
    pub fn create_registry(&self) -> Result<Registry> {
        Ok(Registry::open(self.home()?)?)
    }

    /// A host for `registry`'s plugins, with this command line's sandbox mode and
    /// the data store of the registry's home.
    pub fn host(&self, registry: &Registry) -> Result<Host> {
        // Registered plugins are untrusted until reviewed: inspect them in worker
        // processes, and run them where their review says (a spec's own isolation).
        Ok(Host::new()
            .with_data_dir(registry.data_dir())
            .with_store(registry.store()?)
            .with_sandbox(self.sandbox)
            .with_isolation(plugbay_host::Isolation::Process))
    }

    /// Who is acting, for the audit log: `$USER`, else `operator`.
    pub fn actor(&self) -> &str {
        &self.actor
    }
}

/// Sets up logging to stderr: `-v` picks the level, else `RUST_LOG`, else warnings.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

/// The error and its causes, `: `-separated (as `{:#}` prints them), leaving out a
/// cause whose text the message already includes.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

/// Whether the error is a closed stdout (`plugbay list | head -1`): a success.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes an error as one line of JSON on stderr, for `--json`:
/// `{"error": {"code": CODE, "message": MESSAGE}}`, with `code` `failed` (exit code
/// 1), `usage` (2) or `interrupted` (128 + the signal's number).
pub fn print_json_error(code: &str, message: &str) {
    let error = serde_json::json!({ "error": { "code": code, "message": message } });
    let _ = writeln!(io::stderr().lock(), "{error}");
}

/// Writes `value` as pretty JSON and a newline to stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Permissions as people read them: `process:data, fs:read:/x`, or `nothing`.
pub fn permission_list(permissions: &[Permission]) -> String {
    if permissions.is_empty() {
        return "nothing".to_owned();
    }
    permissions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A permission as written and, when its path starts with a placeholder, the path it
/// grants: `fs:read:${plugin_dir}/x.json (/srv/x/x.json)`. Reviewers see both.
pub fn permission_with_path(
    permission: &Permission,
    plugin_dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> String {
    match permission
        .fs_path()
        .filter(|path| path.placeholder().is_some())
    {
        Some(path) => format!(
            "{permission} ({})",
            path.resolve_in(plugin_dir, data_dir).display()
        ),
        None => permission.to_string(),
    }
}

/// [`permission_list`] with each placeholder path resolved beside it
/// ([`permission_with_path`]).
pub fn permission_list_with_paths(
    permissions: &[Permission],
    plugin_dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> String {
    if permissions.is_empty() {
        return "nothing".to_owned();
    }
    permissions
        .iter()
        .map(|permission| permission_with_path(permission, plugin_dir, data_dir))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `init, process, cleanup`.
pub fn hook_list(hooks: &[plugbay_host::Hook]) -> String {
    hooks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `12345678` → `12,345,678`.
pub fn thousands(number: u64) -> String {
    let digits = number.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// `1 record`, `2,000 records`.
pub fn counted(number: u64, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(number),
        if number == 1 { one } else { many }
    )
}

/// A duration as people read it: `850 µs`, `12.3 ms`, `1.52 s`.
pub fn human_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 0.001 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{:.0} µs", seconds * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_leaves_out_causes_already_in_the_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("invalid manifest x.json: {source}")]
        struct Outer {
            source: io::Error,
        }
        let inner = io::Error::other("missing field `name`");
        let err = anyhow::Error::new(Outer { source: inner }).context("registering x.json");
        assert_eq!(
            error_chain(&err),
            "registering x.json: invalid manifest x.json: missing field `name`"
        );
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow!("other")));
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(
            human_duration(std::time::Duration::from_millis(1520)),
            "1.52 s"
        );
        assert_eq!(
            human_duration(std::time::Duration::from_micros(12_300)),
            "12.3 ms"
        );
        assert_eq!(
            human_duration(std::time::Duration::from_micros(850)),
            "850 µs"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
