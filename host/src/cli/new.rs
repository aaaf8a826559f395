//! `plugbay new NAME [--dir DIR] [--path PLUGBAY] [--published]`
//!
//! Writes a plugin crate that builds and runs with one command (`cargo test`): a
//! `cdylib` crate that unwinds on panic, its `plugin.json`, the plugin, and a test
//! that runs the built library through the host, as `plugbay run` would.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use plugbay_host::manifest::library_file_name;

use super::Context;

/// Create a plugin crate.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  plugbay new shouter
  plugbay new shouter --dir plugins/shouter
  plugbay new shouter --path ~/src/plugbay

Writes Cargo.toml (a `cdylib` crate built with `panic = \"unwind\"`, its own cargo
workspace), plugin.json, src/lib.rs (a plugin that tags every record, with `init`,
`process` and `cleanup`), tests/plugin.rs (runs the built library through the host)
and .gitignore. Then `cargo test` builds the plugin and runs it.

The plugbay crates are path dependencies on the plugbay repository the `plugbay`
binary was built in (or `--path`), else the published version.")]
pub struct Args {
    /// The plugin's name: `a-z`, `0-9` and `-`, starting with a letter; the crate's too
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write the crate [default: ./NAME]; must not exist or be empty
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A plugbay repository: depend on its `plugin-api` and `host` by path
    /// [default: the repository this binary was built in, if it was]
    #[arg(long, value_name = "PLUGBAY", conflicts_with = "published")]
    pub path: Option<PathBuf>,
    /// Depend on the published plugbay crates even when this binary was built in a
    /// repository
    #[arg(long)]
    pub published: bool,
}

/// How the generated crate refers to the plugbay crates.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Path dependencies on a plugbay repository.
    Checkout(PathBuf),
    /// The published crates, `MAJOR.MINOR`.
    Published(String),
}

impl Source {
    /// The dependency's table for the crate in `folder` of the repository.
    fn dependency(&self, package: &str, folder: &str, extra: &str) -> String {
        match self {
            Source::Checkout(root) => format!(
                "{{ package = \"{package}\", path = {}{extra} }}",
                toml_string(&root.join(folder).to_string_lossy())
            ),
            Source::Published(version) => {
                format!("{{ package = \"{package}\", version = \"{version}\"{extra} }}")
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Checkout(root) => format!("by path from {}", root.display()),
            Source::Published(version) => format!("version {version} from crates.io"),
        }
    }
}

/// Creates the crate and prints what to do next.
pub fn exec(args: Args, context: &Context) -> Result<()> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty; choose another folder with `--dir DIR`",
            dir.display()
        );
    }
    let source = source(&args)?;
    let lib_name = args.name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(&args.name, &source)),
        (
            "plugin.json",
            plugin_json(&args.name, &lib_name, context.actor()),
        ),
        ("src/lib.rs", lib_rs(&args.name)),
        ("tests/plugin.rs", test_rs(&args.name, &lib_name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create folder {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if context.json {
        return super::print_json(&serde_json::json!({
            "name": args.name,
            "dir": dir,
            "files": files.iter().map(|(file, _)| *file).collect::<Vec<_>>(),
            "plugbay": match &source {
                Source::Checkout(root) => serde_json::json!({"path": root}),
                Source::Published(version) => serde_json::json!({"version": version}),
            },
        }));
    }
    let library = format!("target/release/{}", library_file_name(&lib_name));
    let mut out = std::io::stdout().lock();
    writeln!(out, "created plugin `{}` in {}", args.name, dir.display())?;
    writeln!(
        out,
        "  Cargo.toml       a cdylib crate built with panic = \"unwind\"; plugbay crates {}",
        source.describe()
    )?;
    writeln!(
        out,
        "  plugin.json      its manifest, checked when the plugin compiles"
    )?;
    writeln!(
        out,
        "  src/lib.rs       the plugin: tags every record with its config's `tag`"
    )?;
    writeln!(
        out,
        "  tests/plugin.rs  runs the built library through the host"
    )?;
    writeln!(out, "next: cd {} && cargo test", dir.display())?;
    writeln!(
        out,
        "then: cargo build --release && echo '[{{\"id\": 1}}]' | plugbay run {library}"
    )?;
    Ok(())
}

/// A plugin name that is also a crate name: the manifest's `a-z`, `0-9` and `-`,
/// starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "invalid plugin name `{name}`; a name is 1 to 64 characters of `a-z`, `0-9` and `-`, starting with a letter and not ending with `-` (e.g. `shouter`, `csv-cleaner`)"
        );
    }
    Ok(())
}

/// Where the plugbay crates come from: `--path`, else the repository this binary was
/// built in, else the published version.
fn source(args: &Args) -> Result<Source> {
    let published = || Source::Published(published_version());
    if args.published {
        return Ok(published());
    }
    if let Some(path) = &args.path {
        let root = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if !is_checkout(&root) {
            bail!(
                "{} is not a plugbay repository (it has no plugin-api/Cargo.toml and host/Cargo.toml); give the folder of a plugbay clone with `--path`, or leave it out",
                root.display()
            );
        }
        return Ok(Source::Checkout(root));
    }
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .map_err(|err| anyhow!("cannot find the plugbay binary's own path: {err}"))?;
    Ok(exe
        .ancestors()
        .skip(1)
        .take(4)
        .find(|dir| is_checkout(dir))
        .map(|root| Source::Checkout(root.to_owned()))
        .unwrap_or_else(published))
}

fn is_checkout(dir: &Path) -> bool {
    let declares = |file: &str, package: &str| {
        std::fs::read_to_string(dir.join(file))
            .is_ok_and(|text| text.contains(&format!("name = \"{package}\"")))
    };
    declares("plugin-api/Cargo.toml", "plugbay-api") && declares("host/Cargo.toml", "plugbay-host")
}

/// `text` as a TOML string: a literal string when it can be one, else a basic string.
fn toml_string(text: &str) -> String {
    if !text.contains(['\'', '\n', '\r']) {
        return format!("'{text}'");
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn cargo_toml(name: &str, source: &Source) -> String {
    let api = source.dependency("plugbay-api", "plugin-api", "");
    let host = source.dependency("plugbay-host", "host", ", default-features = false");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# A plugin is a dynamic library that a Plugbay host loads.
[lib]
crate-type = ["cdylib"]

[dependencies]
plugbay = {api}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
# The host, for the test that runs the built plugin as `plugbay run` does.
plugbay-host = {host}

# A panic in a plugin must unwind, so that it becomes an error for the host (a
# plugin built with `panic = "abort"` does not compile). Unwinding is cargo's
# default; these say so where a copied profile could say otherwise.
[profile.dev]
panic = "unwind"

[profile.release]
panic = "unwind"

# The plugin is its own workspace; remove this to make it a member of an enclosing
# one (whose profiles then apply).
[workspace]
"#
    )
}

fn plugin_json(name: &str, lib_name: &str, author: &str) -> String {
    let string = |text: &str| serde_json::Value::from(text).to_string();
    format!(
        r#"{{
  "name": {name},
  "version": "0.1.0",
  "description": {description},
  "author": {author},
  "main": {main},
  "hooks": ["init", "process", "cleanup"],
  "permissions": ["process:data"],
  "api_version": "^{api}",
  "config": {{ "tag": {name} }}
}}
"#,
        name = string(name),
        description = string(&format!("Tags every record with `tag` ({name} by default)")),
        author = string(author),
        main = string(lib_name),
        api = published_version(),
    )
}

/// `MAJOR.MINOR` of this plugbay: the published crates the generated one depends on.
fn published_version() -> String {
    semver::Version::parse(env!("CARGO_PKG_VERSION"))
        .map(|version| format!("{}.{}", version.major, version.minor))
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned())
}

fn lib_rs(name: &str) -> String {
    let type_name: String = name
        .split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!(
        r#"//! `{name}`: a Plugbay plugin. It adds `"tag": TAG` to every record, TAG being its
//! config's `tag` (plugin.json sets the default), and reports how many records it
//! tagged when it is cleaned up.

use plugbay::prelude::*;
use serde::Deserialize;
use serde_json::{{Map, Value}};

/// The plugin: its config, and what it saw.
#[derive(Default)]
#[plugbay::plugin]
pub struct {type_name} {{
    config: Config,
    tagged: u64,
}}

/// The config `init` receives: plugin.json's `config`, with the host's on top.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {{
    tag: String,
}}

impl Plugin for {type_name} {{
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {{
        self.config = ctx.config()?;
        Ok(())
    }}

    fn process(
        &mut self,
        _ctx: &Context,
        mut batch: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, Error> {{
        for record in &mut batch {{
            record.insert("tag".to_owned(), Value::String(self.config.tag.clone()));
        }}
        self.tagged += batch.len() as u64;
        Ok(batch)
    }}

    fn cleanup(&mut self, ctx: &Context) -> Result<(), Error> {{
        ctx.info(format_args!("tagged {{}} records", self.tagged));
        Ok(())
    }}
}}
"#
    )
}

fn test_rs(name: &str, lib_name: &str) -> String {
    format!(
        r##"//! Runs the plugin as `plugbay run` does: the library cargo builds for this crate,
//! loaded and confined by the host, fed a batch through the plugin ABI.

use std::path::{{Path, PathBuf}};
use std::process::Command;

use plugbay_host::{{Batch, Host, PluginSpec, SandboxMode}};
use serde_json::{{json, Value}};

/// Builds the plugin's library (cargo builds no `cdylib` for a test of its own) with
/// the profile and into the target folder of this test, and returns its path
/// (`target/debug/lib{lib_name}.so` on Linux).
fn library() -> PathBuf {{
    let test = std::env::current_exe().expect("the test has a path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("the test is in the profile's deps folder");
    let target = profile.parent().expect("the profile is in the target folder");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--lib", "--target-dir"])
        .arg(target);
    match profile.file_name().and_then(|name| name.to_str()) {{
        Some("debug") | None => {{}}
        Some("release") => {{
            cargo.arg("--release");
        }}
        Some(other) => {{
            cargo.args(["--profile", other]);
        }}
    }}
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cargo build --lib failed");
    profile.join(plugbay_host::manifest::library_file_name("{lib_name}"))
}}

#[test]
fn tags_every_record() {{
    // Full confinement needs Linux with landlock ABI 6 and seccomp; elsewhere the
    // plugin runs with what the kernel offers, and the status says so.
    let host = Host::new().with_sandbox(SandboxMode::AllowDegraded);
    let spec = PluginSpec::from_manifest_file(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.json"))
        .expect("plugin.json is valid")
        .with_library(library());
    let mut plugin = host.start(spec).expect("the plugin starts");
    eprintln!("confinement: {{}}", plugin.status().confinement);

    let output = plugin
        .process(&Batch::from_json(r#"[{{"id": 1}}, {{"id": 2}}]"#))
        .expect("the plugin processes a batch");
    let records: Value = serde_json::from_slice(output.as_bytes()).expect("the output is JSON");
    assert_eq!(
        records,
        json!([{{"id": 1, "tag": "{name}"}}, {{"id": 2, "tag": "{name}"}}])
    );
    plugin.shutdown().expect("cleanup succeeds");
}}
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plugin_and_crate_names() {
        for name in ["shouter", "csv-cleaner", "a1"] {
            check_name(name).unwrap();
        }
        for name in ["", "Shouter", "1st", "-x", "x-", "snake_case", "a b"] {
            let err = check_name(name).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid plugin name `{name}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn generated_files_are_valid() {
        let manifest =
            plugbay_host::Manifest::parse(&plugin_json("csv-cleaner", "csv_cleaner", "ann"))
                .unwrap();
        assert_eq!(manifest.id(), "csv-cleaner@0.1.0");
        assert_eq!(
            manifest.library_file_name(),
            library_file_name("csv_cleaner")
        );
        assert!(lib_rs("csv-cleaner").contains("pub struct CsvCleaner {"));
        let toml = cargo_toml("csv-cleaner", &Source::Checkout(PathBuf::from("/src/it's")));
        assert!(
            toml.contains(
                r#"plugbay = { package = "plugbay-api", path = "/src/it's/plugin-api" }"#
            ),
            "{toml}"
        );
        let toml = cargo_toml("csv-cleaner", &Source::Published("0.1".to_owned()));
        assert!(
            toml.contains(r#"plugbay-host = { package = "plugbay-host", version = "0.1", default-features = false }"#),
            "{toml}"
        );
    }
}
