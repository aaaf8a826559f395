//! Helpers shared by the end-to-end tests and the benchmarks: they build the example
//! and fixture plugins from the workspace (once per run) and find the libraries.
//!
//! `cargo test --workspace` does not build member cdylibs, so the tests do it
//! themselves with the cargo that runs them, into the same target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use plugbay_api::manifest::library_file_name;

pub mod memory;

/// The example plugins, by package name.
pub const EXAMPLES: &[&str] = &[
    "data-processor",
    "redactor",
    "dedup",
    "enricher",
    "sequencer",
];

/// The fixture plugins, by package name.
pub const FIXTURES: &[&str] = &[
    "fixture-faulty",
    "fixture-raw-output",
    "fixture-raw-services",
    "fixture-not-a-plugin",
    "fixture-prober",
    "fixture-noop",
    "fixture-fd-scanner",
    "fixture-ctor-abort",
    "fixture-crasher",
    "fixture-raw-value",
    "fixture-popular",
    "fixture-noop-next",
    "fixture-sequencer-next",
    "fixture-sequencer-broken",
    "fixture-hoarder",
    "fixture-hoarder-system",
];

/// What each thread of this process is doing, one line each (name, where it waits
/// in the kernel, its system call and the call's first arguments; Linux), for a
/// test that fails because something did not end in time.
pub fn thread_states() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "(no /proc/self/task here)".to_owned();
    };
    let read = |task: &Path, file: &str| {
        std::fs::read_to_string(task.join(file))
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    };
    let mut lines: Vec<String> = tasks
        .flatten()
        .map(|task| {
            let task = task.path();
            let syscall = read(&task, "syscall");
            let syscall: Vec<&str> = syscall.split_whitespace().take(4).collect();
            format!(
                "{} {}: {} (syscall {})",
                task.file_name().unwrap_or_default().to_string_lossy(),
                read(&task, "comm"),
                read(&task, "wchan"),
                syscall.join(" ")
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Starts, once per process, a watchdog that ends the process if it still runs
/// `after` from now, first writing the state of each of its threads to stderr
/// ([`thread_states`]): a test that waits for ever then fails its suite with where it
/// waits, instead of holding CI until its time limit.
pub fn watchdog(after: std::time::Duration) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let started = std::thread::Builder::new()
            .name("plugbay-tests-watchdog".to_owned())
            .spawn(move || {
                std::thread::sleep(after);
                // Straight to the descriptor: the test harness captures `eprintln!`.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "this test process still runs after {after:?}, so a test is taken for hung; its threads:\n{}",
                    thread_states()
                );
                std::process::abort();
            });
        if let Err(err) = started {
            panic!("cannot start the tests' watchdog: {err}");
        }
    });
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The profile directory the running test binary was built into (`target/debug`,
/// `target/release`, …), which respects `CARGO_TARGET_DIR`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let deps = exe.parent().expect("the test binary is in a folder");
    deps.parent()
        .expect("deps/ is in the profile folder")
        .to_owned()
}

fn cargo() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(workspace_root());
    command
}

fn profile_args(profile_dir: &Path) -> Vec<String> {
    let target_dir = profile_dir
        .parent()
        .expect("the profile folder is in the target folder");
    let mut args = vec!["--target-dir".to_owned(), target_dir.display().to_string()];
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => args.push("--release".to_owned()),
        Some(other) => args.extend(["--profile".to_owned(), other.to_owned()]),
        None => {}
    }
    args
}

fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo to build {what}: {err}"));
    assert!(
        output.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds every example and fixture plugin (once per process) and returns the folder
/// that holds their libraries.
pub fn plugins_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let mut command = cargo();
        command.arg("build").args(profile_args(&dir));
        for package in EXAMPLES.iter().chain(FIXTURES) {
            command.args(["-p", package]);
        }
        run(command, "the example and fixture plugins");
        dir
    })
}

/// Builds the `plugbay` binary (once per process), with the profile and target
/// folder of the running tests, and returns its path. It lands beside the plugin
/// libraries that [`plugins_dir`] builds, which is where `plugbay demo` looks.
pub fn plugbay_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let mut command = cargo();
        command
            .args(["build", "-p", "plugbay-host", "--bin", "plugbay"])
            .args(profile_args(&dir));
        run(command, "the plugbay binary");
        dir.join(format!("plugbay{}", std::env::consts::EXE_SUFFIX))
    })
}

/// A cargo command for a crate in `dir` (outside the workspace, too) that builds
/// with the running tests' profile into their target folder, so that it reuses what
/// they built: `cargo SUBCOMMAND --target-dir … [--release]`.
pub fn cargo_in(dir: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(dir)
        .arg(subcommand)
        .args(profile_args(&profile_dir()));
    command
}

/// The library of a plugin package (`data-processor` → `…/libdata_processor.so`).
pub fn library(package: &str) -> PathBuf {
    plugins_dir().join(library_file_name(&package.replace('-', "_")))
}

/// The `plugin.json` of an example plugin.
pub fn example_manifest(name: &str) -> PathBuf {
    workspace_root()
        .join("example-plugins")
        .join(name)
        .join("plugin.json")
}

/// The `plugin.json` of a fixture plugin.
pub fn fixture_manifest(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures")
        .join(name)
        .join("plugin.json")
}

/// A spec for an example plugin, with its library from this profile's build.
pub fn example_spec(name: &str) -> plugbay_host::PluginSpec {
    plugbay_host::PluginSpec::from_manifest_file(example_manifest(name))
        .expect("the example manifest is valid")
        .with_library(library(name))
}

/// A spec for a fixture plugin, with its library from this profile's build.
pub fn fixture_spec(name: &str) -> plugbay_host::PluginSpec {
    plugbay_host::PluginSpec::from_manifest_file(fixture_manifest(name))
        .expect("the fixture manifest is valid")
        .with_library(library(&format!("fixture-{name}")))
}

/// Plugins built against a modified copy of plugbay-api, outside the workspace (so
/// that cargo cannot unify them onto the real one).
pub struct AbiFixtures {
    /// Same plugbay-api version, but a field of the root module has another type.
    pub layout: PathBuf,
    /// Built against plugbay-api 0.9.0.
    pub api_version: PathBuf,
    /// Same plugbay-api version and layout, but plugin ABI 0.2.0: the ABI before log
    /// lines carried their target and plugins were told the host's log level.
    pub abi_version: PathBuf,
    /// Plugin ABI 0.3.0, before `PluginInstance::process_into` was added at the end of
    /// the instance's vtable: a plugin built then (an echo).
    pub before_process_into: PathBuf,
    /// Its `plugin.json`.
    pub before_process_into_manifest: PathBuf,
}

/// The doc comment that opens `PluginInstance::process_into` in plugin-api's abi.rs.
const PROCESS_INTO_DOCS: &str =
    "    /// [`process`](PluginInstance::process), writing the output into";
/// What follows the `PluginInstance` trait in abi.rs.
const AFTER_THE_INSTANCE_TRAIT: &str = "\n}\n\n/// An owned plugin instance.";
/// The SDK's implementation of `PluginInstance::process_into`.
const SDK_PROCESS_INTO: &str = "    fn process_into(
        &mut self,
        batch: RSlice<'_, u8>,
        output: &mut RVec<u8>,
    ) -> RResult<(), PluginError> {
        self.process_records(batch.as_slice(), output)
    }

";

/// plugin-api's sources as they were before `PluginInstance::process_into`: the
/// method taken out of the trait and out of the SDK's implementation.
fn without_process_into(text: String) -> String {
    if text.contains("pub trait PluginInstance") {
        let start = text
            .find(PROCESS_INTO_DOCS)
            .expect("abi.rs declares PluginInstance::process_into");
        let end = start
            + text[start..]
                .find(AFTER_THE_INSTANCE_TRAIT)
                .expect("the PluginInstance trait ends");
        let current = format!("ABI_VERSION: &str = \"{}\";", plugbay_api::abi::ABI_VERSION);
        let text = format!("{}{}", text[..start].trim_end(), &text[end..]);
        return text.replace(&current, "ABI_VERSION: &str = \"0.3.0\";");
    }
    if text.contains("PluginInstance for Adapter<P>") {
        assert!(
            text.contains(SDK_PROCESS_INTO),
            "sdk.rs implements PluginInstance::process_into"
        );
        return text.replace(SDK_PROCESS_INTO, "");
    }
    text
}

/// Builds the [`AbiFixtures`] (once per process).
pub fn abi_fixtures() -> &'static AbiFixtures {
    static BUILT: OnceLock<AbiFixtures> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let root = profile
            .parent()
            .expect("target folder")
            .join("plugbay-abi-fixtures");
        let target = root.join("target");
        let layout = write_abi_fixture(&root.join("layout"), "0.1.0", |text| {
            text.replace("pub panic_unwind: bool,", "pub panic_unwind: u32,")
                .replace(
                    "panic_unwind: cfg!(panic = \"unwind\"),",
                    "panic_unwind: 1,",
                )
        });
        let api_version = write_abi_fixture(&root.join("api-version"), "0.9.0", |text| text);
        let abi_version = write_abi_fixture(&root.join("abi-version"), "0.1.0", |text| {
            let current = format!("ABI_VERSION: &str = \"{}\";", plugbay_api::abi::ABI_VERSION);
            text.replace(&current, "ABI_VERSION: &str = \"0.2.0\";")
        });
        let before_process_into = write_abi_fixture(
            &root.join("before-process-into"),
            plugbay_api::abi::API_VERSION,
            without_process_into,
        );
        for dir in [&layout, &api_version, &abi_version, &before_process_into] {
            let mut command = cargo();
            command
                .arg("build")
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target);
            run(command, &format!("the ABI fixture in {}", dir.display()));
        }
        let lib = |variant: &str| {
            target
                .join("debug")
                .join(library_file_name(&format!("abi_fixture_{variant}")))
        };
        AbiFixtures {
            layout: lib("layout"),
            api_version: lib("api_version"),
            abi_version: lib("abi_version"),
            before_process_into: lib("before_process_into"),
            before_process_into_manifest: before_process_into.join("plugin/plugin.json"),
        }
    })
}

/// Writes a small workspace: a copy of plugbay-api at `version` (its sources passed
/// through `edit`) and a plugin built on it.
fn write_abi_fixture(dir: &Path, version: &str, edit: fn(String) -> String) -> PathBuf {
    let workspace = workspace_root();
    let variant = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
    // Each copy of plugbay-api sits in a folder named for its variant: cargo names a
    // workspace member's artifacts by its path relative to the workspace, so copies at
    // the same relative path would share (and reuse) one build in the shared target.
    let api_dir = format!("api-{variant}");
    let api_src = dir.join(&api_dir).join("src");
    let plugin_src = dir.join("plugin/src");
    std::fs::create_dir_all(&api_src).unwrap();
    std::fs::create_dir_all(&plugin_src).unwrap();
    for file in ["lib.rs", "abi.rs", "sdk.rs", "logging.rs"] {
        let text = std::fs::read_to_string(workspace.join("plugin-api/src").join(file)).unwrap();
        std::fs::write(api_src.join(file), edit(text)).unwrap();
    }
    let path = |relative: &str| workspace.join(relative).display().to_string();
    // The SDK's allocator, as plugbay-api itself depends on it.
    let api_toml = std::fs::read_to_string(workspace.join("plugin-api/Cargo.toml")).unwrap();
    let allocator = api_toml
        .lines()
        .filter(|line| line.starts_with("mimalloc = ") || line.starts_with("libmimalloc-sys = "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        allocator.contains("mimalloc"),
        "plugin-api/Cargo.toml depends on mimalloc"
    );
    let files = [
        (
            "Cargo.toml".to_owned(),
            format!("[workspace]\nresolver = \"2\"\nmembers = [\"{api_dir}\", \"plugin\"]\n"),
        ),
        (
            format!("{api_dir}/Cargo.toml"),
            format!(
                "[package]\nname = \"plugbay-api\"\nversion = \"{version}\"\nedition = \"2021\"\n\n\
                 [dependencies]\nabi_stable = \"0.11.3\"\nserde = \"1\"\nserde_json = \"1\"\n\
                 log = {{ version = \"0.4\", features = [\"std\"] }}\n\
                 tracing = {{ version = \"0.1\", default-features = false, features = [\"std\", \"log\"] }}\n\
                 {allocator}\n\
                 plugbay-macros = {{ path = \"{}\" }}\nplugbay-manifest = {{ path = \"{}\" }}\n",
                path("sdk-macros"),
                path("plugin-api/manifest")
            ),
        ),
        (
            "plugin/Cargo.toml".to_owned(),
            format!(
                "[package]\nname = \"abi-fixture-{variant}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                 [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nplugbay-api = {{ path = \"../{api_dir}\" }}\n"
            ),
        ),
        (
            "plugin/plugin.json".to_owned(),
            format!(
                r#"{{"name": "abi-fixture", "version": "0.1.0", "description": "built against another plugbay-api",
                    "author": "Plugbay tests", "main": "abi_fixture_{variant}", "hooks": ["process"],
                    "permissions": ["process:data"]}}"#
            ),
        ),
        (
            "plugin/src/lib.rs".to_owned(),
            "use plugbay_api::prelude::*;\n\n#[derive(Default)]\n#[plugbay_api::plugin]\npub struct Echo;\n\n\
             impl Plugin for Echo {\n    type Input = serde_json::Value;\n    type Output = serde_json::Value;\n\n    \
             fn process(&mut self, _: &Context, batch: Vec<Self::Input>) -> Result<Vec<Self::Output>, Error> {\n        \
             Ok(batch)\n    }\n}\n"
                .to_owned(),
        ),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let plugin_toml = dir.join("plugin/Cargo.toml");
    let mut text = std::fs::read_to_string(&plugin_toml).unwrap();
    text.push_str("serde_json = \"1\"\n");
    std::fs::write(plugin_toml, text).unwrap();
    let _ = std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock"));
    dir.to_owned()
}
