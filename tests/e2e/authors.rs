//! What a plugin author meets: the errors that tell them what is wrong and what to
//! do, `plugbay new`, the persistent data store, and the round trip from a rebuild
//! to a new revision in the registry.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use plugbay_host::manifest::library_file_name;
use plugbay_host::{CallError, Isolation, Permission, Policy, StartError};
use plugbay_tests::{
    cargo_in, example_manifest, fixture_manifest, library, plugbay_bin, profile_dir, workspace_root,
};
use serde_json::{json, Value};

use crate::{example, host};

/// The `plugbay` binary on a registry home of its own.
struct Cli {
    dir: tempfile::TempDir,
    /// `CARGO_TARGET_DIR` for the commands, if any.
    target_dir: Option<PathBuf>,
}

impl Cli {
    fn new() -> Cli {
        plugbay_tests::plugins_dir();
        plugbay_bin();
        Cli {
            dir: tempfile::tempdir().unwrap(),
            target_dir: None,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(plugbay_bin());
        command
            .arg("--home")
            .arg(self.home())
            .args(args)
            .current_dir(workspace_root())
            .env("USER", "tester")
            .env_remove("PLUGBAY_HOME")
            .env_remove("RUST_LOG")
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null());
        if let Some(target_dir) = &self.target_dir {
            command.env("CARGO_TARGET_DIR", target_dir);
        }
        command
    }

    fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.command(args);
        let Some(input) = stdin else {
            return command.output().unwrap();
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails before it reads its input closes the pipe first.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout and stderr.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> (String, String) {
        let output = self.output(args, stdin);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            output.status.success(),
            "plugbay {args:?} failed ({:?}):\n{stderr}",
            output.status
        );
        (String::from_utf8(output.stdout).unwrap(), stderr)
    }

    /// Runs a command that must fail with exit code 1; returns its stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.output(args, stdin);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "plugbay {args:?}: {stderr}");
        stderr
    }

    /// Registers a fixture plugin from its folder, with its built library.
    fn register_fixture(&self, name: &str) -> Value {
        let manifest = fixture_manifest(name);
        let lib = library(&format!("fixture-{name}"));
        let (stdout, _) = self.ok(
            &[
                "--json",
                "register",
                path(&manifest),
                "--library",
                path(&lib),
            ],
            None,
        );
        serde_json::from_str(&stdout).unwrap()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A denied read of a file the plugin requests but was not granted says which
/// permission was withheld and where it points, in both isolations.
#[test]
fn a_denied_access_that_a_withheld_grant_explains_says_so() {
    let (host, _dir) = host();
    let host = host.with_worker_program(plugbay_tests::plugbay_bin());
    for isolation in [Isolation::Thread, Isolation::Process] {
        let spec = example("enricher")
            .with_policy(Policy::Allow(vec![Permission::ProcessData]))
            .with_isolation(isolation);
        let lookup = spec.plugin_dir.join("lookup.json");
        let err = match host.start(spec) {
            Err(err) => err,
            Ok(_) => panic!("{isolation:?}: the enricher started without its lookup file"),
        };
        assert!(matches!(err, StartError::Init { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("Permission denied (os error 13)"), "{text}");
        assert!(
            text.contains("; this looks like the sandbox refusing an access: the plugin was granted `process:data`")
                && text.contains("requested but not granted: `fs:read:${plugin_dir}/lookup.json`"),
            "{isolation:?}: {text}"
        );
        assert!(
            lookup.is_file(),
            "the file is there: the sandbox refused it"
        );
    }
}

/// A plugin's errors read once each: no `invalid config: invalid config:`, no
/// `failed: ` before what a plugin said, no `ErrorKind(2)` in a `Debug` print.
#[test]
fn plugin_errors_print_their_kind_once_and_by_name() {
    let (host, _dir) = host();
    let err = host
        .start(example("data-processor").with_config(json!({"field": 3})))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("plugin data-processor@1.0.0 failed to initialize: invalid config: invalid type: integer `3`, expected a string"),
        "{text}"
    );
    assert_eq!(text.matches("invalid config").count(), 1, "{text}");

    let mut plugin = host.start(example("data-processor")).unwrap();
    let err = plugin
        .process(&plugbay_host::Batch::from_json("[1]"))
        .unwrap_err();
    assert!(matches!(err, CallError::Plugin { .. }), "{err}");
    let debug = format!("{err:?}");
    assert!(debug.contains("kind: ErrorKind::INVALID_INPUT"), "{debug}");
    assert!(!debug.contains("ErrorKind(2)"), "{debug}");
}

/// The CLI takes a bare name wherever it takes an id: the one registered version, else
/// the one enabled; otherwise it lists the versions and asks for the id.
#[test]
fn the_cli_resolves_a_bare_name_or_lists_the_versions() {
    let cli = Cli::new();
    cli.register_fixture("noop");
    let (shown, _) = cli.ok(&["--json", "show", "noop"], None);
    assert_eq!(
        serde_json::from_str::<Value>(&shown).unwrap()["id"],
        "noop@0.1.0"
    );
    cli.register_fixture("noop-next");
    let ambiguous = "error: plugin name `noop` is ambiguous: 2 versions are registered (noop@0.1.0, noop@0.2.0) and none is enabled; give the id (`name@version`) of the one you mean\n";
    for args in [
        &["show", "noop"][..],
        &["enable", "noop"],
        &["disable", "noop"],
        &["unregister", "noop"],
        &["review", "approve", "noop"],
        &["review", "reject", "noop", "--reason", "x"],
        &["run", "noop"],
    ] {
        assert_eq!(cli.fails(args, Some("[]")), ambiguous, "{args:?}");
    }
    cli.ok(&["review", "approve", "noop@0.2.0"], None);
    let (enabled, _) = cli.ok(&["enable", "noop@0.2.0"], None);
    assert_eq!(enabled, "enabled noop@0.2.0 (granted process:data)\n");
    let (out, _) = cli.ok(&["run", "noop"], Some(r#"[{"id": 1}]"#));
    let records: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(records, json!([{"id": 1, "version": "0.2.0"}]));
    let (disabled, _) = cli.ok(&["disable", "noop"], None);
    assert_eq!(disabled, "disabled noop@0.2.0\n");
    assert!(cli.fails(&["show", "noop"], None).contains("is ambiguous"));
    assert_eq!(
        cli.fails(&["show", "nothing-here"], None),
        "error: no plugin `nothing-here` in the registry; `plugbay list` shows the registered ids\n"
    );
}

/// A cargo workspace as an author has it: the plugin's crate with its plugin.json and
/// files in `plugins/NAME/`, its library in `target/release/`.
fn cargo_layout(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let crate_dir = root.join("plugins").join(name);
    std::fs::create_dir_all(&crate_dir).unwrap();
    for file in std::fs::read_dir(example_manifest(name).parent().unwrap()).unwrap() {
        let file = file.unwrap().path();
        if file.extension().is_some_and(|ext| ext == "json") {
            std::fs::copy(&file, crate_dir.join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"plugins/*\"]\n",
    )
    .unwrap();
    let release = root.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(
        root.join("target/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    let built = library(name);
    let lib = release.join(built.file_name().unwrap());
    std::fs::copy(&built, &lib).unwrap();
    (crate_dir, lib)
}

/// `plugbay run target/release/libX.so` gives the plugin its own folder as
/// `${plugin_dir}` (found through the workspace), not `target/release`; and
/// `plugbay register DIR` finds the library cargo built for it.
#[test]
fn run_and_register_find_what_cargo_built_and_where_the_plugin_lives() {
    let cli = Cli::new();
    let root = cli.dir.path().join("workspace");
    let (crate_dir, lib) = cargo_layout(&root, "enricher");
    let input = r#"[{"country": "FR"}]"#;

    // The enricher reads `${plugin_dir}/lookup.json` at init.
    let (out, _) = cli.ok(&["run", path(&lib)], Some(input));
    let records: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(records[0]["country_name"], "France", "{out}");

    // `--plugin-dir` says where it is instead.
    let elsewhere = cli.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join("lookup.json"),
        r#"{"FR": {"country_name": "Frankreich"}}"#,
    )
    .unwrap();
    let (out, _) = cli.ok(
        &[
            "run",
            path(&lib),
            "--plugin-dir",
            &format!("enricher={}", path(&elsewhere)),
        ],
        Some(input),
    );
    assert!(out.contains("Frankreich"), "{out}");
    let err = cli.fails(
        &["run", path(&lib), "--plugin-dir", "dedup=/tmp"],
        Some(input),
    );
    assert!(
        err.starts_with(
            "error: `--plugin-dir dedup=/tmp` names no plugin library file of this run"
        ),
        "{err}"
    );

    // Without a plugin.json of its own anywhere near, the library's folder, as before.
    let lonely = cli.dir.path().join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    let lonely_lib = lonely.join(lib.file_name().unwrap());
    std::fs::copy(&lib, &lonely_lib).unwrap();
    let err = cli.fails(&["run", path(&lonely_lib)], Some(input));
    assert!(
        err.contains(&format!(
            "{}: No such file or directory",
            lonely.join("lookup.json").display()
        )),
        "{err}"
    );

    // `register DIR`: the library is the newest one cargo built for the crate.
    let (_, stderr) = cli.ok(&["register", path(&crate_dir)], None);
    assert_eq!(
        stderr,
        format!(
            "using {}, the newest library cargo built for it\n",
            lib.display()
        )
    );
    let entry: Value =
        serde_json::from_str(&cli.ok(&["--json", "show", "enricher"], None).0).unwrap();
    assert_eq!(entry["source"], path(&lib));
    assert_eq!(entry["plugin_dir"], path(&crate_dir));

    // A crate built as an rlib is named as such.
    let (rlib_crate, rlib_lib) = cargo_layout(&cli.dir.path().join("rlib-workspace"), "dedup");
    std::fs::remove_file(&rlib_lib).unwrap();
    std::fs::write(rlib_lib.with_file_name("libdedup.rlib"), "").unwrap();
    let err = cli.fails(&["register", path(&rlib_crate)], None);
    assert_eq!(
        err,
        format!(
            "error: plugin library {} does not exist, but {} does: the crate is built as a Rust library (`rlib`), not a dynamic library; add `crate-type = [\"cdylib\"]` under `[lib]` in its Cargo.toml and build it again\n",
            rlib_lib.display(),
            rlib_lib.with_file_name("libdedup.rlib").display()
        )
    );
    let err = cli.fails(&["run", path(&rlib_lib)], Some("[]"));
    assert!(err.contains("is built as a Rust library (`rlib`)"), "{err}");
}

/// Replaces `from` with `to` in the file at `path`, which must contain it.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// Runs cargo on the crate in `dir`; returns whether it succeeded, and its output.
fn cargo(dir: &Path, subcommand: &str, args: &[&str]) -> (bool, String) {
    let output = cargo_in(dir, subcommand)
        .args(args)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `plugbay new` writes a crate that `cargo test` builds and runs through the host;
/// its library runs with `plugbay run`, registers from its folder, and a rebuild
/// registers with one command as its next revision, pending review, with what changed
/// shown to the reviewer. The same crate then shows the compile-time checks: a hook
/// implemented but not listed, `panic = "abort"`, a crate built as an `rlib`.
#[test]
fn a_new_plugin_builds_runs_registers_and_is_revised_after_a_rebuild() {
    let mut cli = Cli::new();
    let name = "e2e-new-plugin";
    let dir = cli.dir.path().join(name);
    let (out, _) = cli.ok(
        &[
            "new",
            name,
            "--dir",
            path(&dir),
            "--path",
            path(&workspace_root()),
        ],
        None,
    );
    assert!(
        out.starts_with(&format!("created plugin `{name}` in {}", dir.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("next: cd {} && cargo test\n", dir.display())),
        "{out}"
    );
    let again = cli.fails(&["new", name, "--dir", path(&dir)], None);
    assert!(again.contains("already exists and is not empty"), "{again}");
    // The workspace's lock file: the same versions it built, so nothing is fetched.
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    // One command builds the plugin and runs it through the host.
    let (ok, output) = cargo(&dir, "test", &["--offline"]);
    assert!(ok, "cargo test failed:\n{output}");
    assert!(output.contains("test tags_every_record ... ok"), "{output}");
    let lib = profile_dir().join(library_file_name("e2e_new_plugin"));
    let (out, _) = cli.ok(&["run", path(&lib)], Some(r#"[{"id": 1}]"#));
    let records: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(records, json!([{"id": 1, "tag": name}]));

    // Registered from its folder: the library is found in cargo's target folder.
    cli.target_dir = Some(profile_dir().parent().unwrap().to_owned());
    let (out, stderr) = cli.ok(&["register", path(&dir)], None);
    assert_eq!(
        stderr,
        format!(
            "using {}, the newest library cargo built for it\n",
            lib.display()
        )
    );
    assert!(
        out.starts_with(&format!("registered {name}@0.1.0 (pending review)")),
        "{out}"
    );
    cli.ok(&["review", "approve", name], None);
    cli.ok(&["enable", name], None);
    let (out, _) = cli.ok(&["run", name], Some(r#"[{"id": 1}]"#));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["tag"], name);
    let first: Value = serde_json::from_str(&cli.ok(&["--json", "show", name], None).0).unwrap();

    // A rebuild, with new code and a new permission: one command registers it as the
    // next revision, pending review and disabled, and says what changed.
    edit(
        &dir.join("src/lib.rs"),
        "Value::String(self.config.tag.clone())",
        "Value::String(format!(\"{}!\", self.config.tag))",
    );
    edit(
        &dir.join("plugin.json"),
        r#""permissions": ["process:data"]"#,
        r#""permissions": ["process:data", "read:data"]"#,
    );
    let (ok, output) = cargo(&dir, "build", &["--lib", "--offline"]);
    assert!(ok, "{output}");
    let taken = cli.fails(&["register", path(&dir)], None);
    assert!(taken.contains("is already registered; to register a rebuild of it as its next revision (reviewed again), add `--update`"), "{taken}");
    let (out, _) = cli.ok(&["register", path(&dir), "--update"], None);
    let second: Value = serde_json::from_str(&cli.ok(&["--json", "show", name], None).0).unwrap();
    let (old_sha, new_sha) = (
        first["sha256"].as_str().unwrap(),
        second["sha256"].as_str().unwrap(),
    );
    assert_ne!(old_sha, new_sha);
    let approved_at = first["review"]["reviewed_at"].as_str().unwrap();
    for line in [
        format!("registered {name}@0.1.0 revision 2 (pending review and disabled: an approval does not carry over to new code)\n"),
        format!("  changes since revision 1 (approved by tester at {approved_at}):\n"),
        format!("    library      sha256 {old_sha} → {new_sha}\n"),
        "    requests     + read:data\n".to_owned(),
        format!("next: plugbay review approve {name}@0.1.0\n"),
    ] {
        assert!(out.contains(&line), "{line:?} in:\n{out}");
    }
    assert_eq!(second["revision"], 2);
    assert_eq!(second["enabled"], false);
    assert_eq!(second["review"]["status"], "pending");
    assert_eq!(second["previous"]["revision"], 1);
    assert_eq!(second["previous"]["sha256"], old_sha);
    assert_eq!(second["previous"]["review"]["status"], "approved");
    let audit = second["audit"].as_array().unwrap();
    assert_eq!(audit.last().unwrap()["action"], "update");
    let refused = cli.fails(&["run", name], Some("[]"));
    assert!(
        refused.contains(&format!("plugin `{name}@0.1.0` is pending, not approved")),
        "{refused}"
    );
    let (shown, _) = cli.ok(&["show", name], None);
    assert!(
        shown.contains("revision     2\n") && shown.contains("\n  requests     + read:data\n"),
        "{shown}"
    );
    let (approval, _) = cli.ok(&["review", "approve", name], None);
    assert!(
        approval.contains("read:data (new in this revision)"),
        "{approval}"
    );
    cli.ok(&["enable", name], None);
    let (out, _) = cli.ok(&["run", name], Some(r#"[{"id": 1}]"#));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["tag"],
        format!("{name}!"),
        "the new code runs"
    );
    let (out, _) = cli.ok(&["register", path(&dir), "--update"], None);
    assert!(
        out.starts_with(&format!("{name}@0.1.0 is unchanged")),
        "{out}"
    );

    // `main` written with `-`: cargo's name for the library is found, with a warning.
    edit(
        &dir.join("plugin.json"),
        r#""main": "e2e_new_plugin""#,
        r#""main": "e2e-new-plugin""#,
    );
    let (ok, output) = cargo(&dir, "build", &["--lib", "--offline"]);
    assert!(ok, "{output}");
    let (out, stderr) = cli.ok(&["register", path(&dir), "--update"], None);
    assert!(
        stderr.starts_with(&format!("warning: `main` is `e2e-new-plugin`, but cargo turns `-` into `_` in library names: it builds {}, not {}", library_file_name("e2e_new_plugin"), library_file_name("e2e-new-plugin"))),
        "{stderr}"
    );
    assert!(out.contains("revision 3"), "{out}");

    // A hook the plugin implements but its manifest does not list: a warning at run time.
    edit(
        &dir.join("plugin.json"),
        r#""hooks": ["init", "process", "cleanup"]"#,
        r#""hooks": ["init", "process"]"#,
    );
    let (ok, output) = cargo(&dir, "build", &["--lib", "--offline"]);
    assert!(ok, "{output}");
    let (_, stderr) = cli.ok(&["run", path(&lib)], Some("[]"));
    assert!(
        stderr.contains("the plugin implements `Plugin::cleanup`, but its plugin.json does not list `cleanup` in `hooks`; add it"),
        "{stderr}"
    );

    // `panic = "abort"` and a crate built as an `rlib` do not compile.
    let (ok, output) = cargo(
        &dir,
        "rustc",
        &["--lib", "--offline", "--", "-C", "panic=abort"],
    );
    assert!(!ok, "{output}");
    assert!(
        output
            .contains("error: a plugin must be built with `panic = \"unwind\"` (cargo's default)"),
        "{output}"
    );
    edit(
        &dir.join("Cargo.toml"),
        r#"crate-type = ["cdylib"]"#,
        r#"crate-type = ["rlib"]"#,
    );
    let (ok, output) = cargo(&dir, "build", &["--lib", "--offline"]);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!("error: crate `{name}` is built as `rlib` only, which no host can load: a plugin is a dynamic library; add `crate-type = [\"cdylib\"]` under `[lib]` in {}", dir.join("Cargo.toml").display())),
        "{output}"
    );
}

/// Registers, approves (all requested, `isolation`) and enables an example plugin.
fn ready_example(cli: &Cli, name: &str, isolation: &str) {
    cli.ok(
        &[
            "register",
            path(example_manifest(name).parent().unwrap()),
            "--library",
            path(&library(name)),
        ],
        None,
    );
    cli.ok(&["review", "approve", name, "--isolation", isolation], None);
    cli.ok(&["enable", name], None);
}

/// What `store_put` writes during `plugbay run` stays in the home's `store.db`, for
/// the next run and for `plugbay store get|list|delete`; a library file's goes with its
/// data folder instead.
#[test]
fn the_data_store_persists_in_the_home_and_plugbay_store_reads_it() {
    let cli = Cli::new();
    let store_file = cli.home().join("store.db");
    let (out, _) = cli.ok(&["store", "list"], None);
    assert_eq!(
        out,
        format!(
            "no keys in the data store {}; plugins granted `write:data` add them with `store_put`\n",
            store_file.display()
        )
    );
    assert!(!store_file.exists(), "a lookup creates no store");
    let missing = cli.fails(&["store", "get", "dedup/stats"], None);
    assert_eq!(
        missing,
        format!(
            "error: no key `dedup/stats` in the data store {}; `plugbay store list` shows the keys\n",
            store_file.display()
        )
    );

    ready_example(&cli, "dedup", "process");
    let input = r#"[{"id": 1}, {"id": 1}, {"id": 2}]"#;
    cli.ok(&["run", "dedup"], Some(input));
    let (stats, _) = cli.ok(&["store", "get", "dedup/stats"], None);
    assert_eq!(
        stats, r#"{"distinct":2,"dropped":1,"kept":2}"#,
        "the value as written, no newline"
    );
    let (listed, _) = cli.ok(&["store", "list"], None);
    assert!(
        listed.starts_with("KEY          SIZE  UPDATED\ndedup/stats  35 B  "),
        "{listed}"
    );
    let (json, _) = cli.ok(&["--json", "store", "get", "dedup/stats"], None);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["value"], r#"{"distinct":2,"dropped":1,"kept":2}"#);
    assert_eq!(json["size"], 35);

    // A library file is a development build: its store is in its data folder (here
    // `--data-dir`), never the home's.
    let data = cli.dir.path().join("dev-data");
    cli.ok(
        &[
            "run",
            path(&library("dedup")),
            "--isolation",
            "thread",
            "--data-dir",
            path(&data),
        ],
        Some(r#"[{"id": 7}]"#),
    );
    let (stats, _) = cli.ok(&["store", "get", "dedup/stats"], None);
    assert_eq!(
        stats, r#"{"distinct":2,"dropped":1,"kept":2}"#,
        "the home's store is untouched"
    );
    let output = Command::new(plugbay_bin())
        .args(["--home", path(&data), "store", "get", "dedup/stats"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        r#"{"distinct":1,"dropped":0,"kept":1}"#
    );

    let (deleted, _) = cli.ok(&["store", "delete", "dedup/stats"], None);
    assert_eq!(deleted, "deleted dedup/stats\n");
    assert!(cli
        .fails(&["store", "delete", "dedup/stats"], None)
        .contains("no key `dedup/stats`"));
    let (listed, _) = cli.ok(&["--json", "store", "list"], None);
    assert_eq!(serde_json::from_str::<Value>(&listed).unwrap(), json!([]));
}

/// The store is served by a thread of the host from its own file: a plugin on a
/// worker thread of `plugbay run`, scanning every descriptor, finds the open store
/// once a plugin used it, and never the registry, which the run closed first.
#[test]
fn the_store_is_served_by_the_host_and_the_registry_stays_closed() {
    let cli = Cli::new();
    for name in ["faulty", "fd-scanner"] {
        cli.register_fixture(name);
        cli.ok(&["review", "approve", name, "--isolation", "thread"], None);
        cli.ok(&["enable", name], None);
    }
    let (out, _) = cli.ok(
        &[
            "run",
            "faulty",
            "fd-scanner",
            "--config",
            r#"faulty={"store": true}"#,
        ],
        Some("[{}]"),
    );
    let found: Vec<Value> = serde_json::from_str(&out).unwrap();
    let inode = |file: &str| {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(cli.home().join(file)).unwrap();
        (metadata.dev(), metadata.ino())
    };
    let open: Vec<(u64, u64)> = found
        .iter()
        .map(|fd| {
            (
                fd["device"].as_u64().unwrap(),
                fd["inode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        open.contains(&inode("store.db")),
        "the scan finds the open store, so it would find the registry: {found:?}"
    );
    assert!(
        !open.contains(&inode("registry.db")),
        "the registry is closed while plugins run: {found:?}"
    );
}

/// Registration reads the seed's `hooks` object; a misspelt grant gets a suggestion;
/// an approval that withholds `process:data` from a plugin that needs it is refused
/// at review, not discovered at its first batch.
#[test]
fn the_cli_reads_the_seeds_manifest_and_catches_review_mistakes() {
    let cli = Cli::new();
    let folder = cli.dir.path().join("data-processor");
    std::fs::create_dir_all(&folder).unwrap();
    let text = std::fs::read_to_string(example_manifest("data-processor")).unwrap();
    let seed = text.replace(
        r#""hooks": ["init", "process", "cleanup"]"#,
        r#""hooks": {"init": "onInit", "process": "onProcess", "cleanup": "onCleanup"}"#,
    );
    assert_ne!(seed, text);
    std::fs::write(folder.join("plugin.json"), seed).unwrap();
    let (out, _) = cli.ok(
        &[
            "--json",
            "register",
            path(&folder),
            "--library",
            path(&library("data-processor")),
        ],
        None,
    );
    let entry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        entry["manifest"]["hooks"],
        json!(["init", "process", "cleanup"])
    );

    let output = cli.output(
        &[
            "review",
            "approve",
            "data-processor",
            "--grant",
            "proces:data",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("unknown permission `proces:data`; did you mean `process:data`?"),
        "{stderr}"
    );

    ready_example(&cli, "dedup", "process");
    let refused = cli.fails(
        &["review", "approve", "dedup", "--grant", "write:data"],
        None,
    );
    assert_eq!(
        refused,
        "error: cannot approve `dedup@1.0.0` without `process:data`: it declares the `process` hook, and without `process:data` it could never receive a batch; grant `process:data` too, or reject the plugin\n"
    );
    let (shown, _) = cli.ok(&["--json", "show", "dedup"], None);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["review"]["granted"],
        json!(["process:data", "write:data"]),
        "the approval before stands"
    );
}
