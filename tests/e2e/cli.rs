//! The `plugbay` binary, driven as an operator or a script would: every command with
//! and without `--json`, every fault with its own message and exit code, concurrent
//! processes, processes killed mid-write, and a large streamed run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plugbay_host::registry::{sha256_file, Registry, ReviewStatus};
use plugbay_host::Manifest;
use plugbay_tests::{abi_fixtures, example_manifest, library, plugbay_bin, workspace_root};
use serde_json::Value;

mod upgrade;

/// A registry home of its own, and the binary to drive it.
struct Plugbay {
    dir: tempfile::TempDir,
}

impl Plugbay {
    fn new() -> Plugbay {
        // Build the plugins first: the binary is built into the same folder.
        plugbay_tests::plugins_dir();
        plugbay_bin();
        Plugbay {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.command_without_home(&["--home", path(&self.home())]);
        command.args(args);
        command
    }

    /// A command on no registry but the one its arguments name.
    fn command_without_home(&self, args: &[&str]) -> Command {
        let mut command = Command::new(plugbay_bin());
        command
            .args(args)
            .current_dir(workspace_root())
            .env("USER", "tester")
            .env_remove("PLUGBAY_HOME")
            .env_remove("RUST_LOG")
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null());
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
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        output
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.output(args, stdin);
        assert!(
            output.status.success(),
            "plugbay {args:?} failed ({:?}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command with `--json` that must succeed; returns its parsed stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("plugbay {all:?} printed no JSON ({err}):\n{stdout}"))
    }

    /// Runs a command that must fail with `code`; returns its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        self.fails_with(args, None, code)
    }

    fn fails_with(&self, args: &[&str], stdin: Option<&str>, code: i32) -> String {
        let output = self.output(args, stdin);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "plugbay {args:?}: expected exit code {code}; stderr:\n{stderr}"
        );
        stderr
    }

    /// A copy of an example plugin (manifest, library, and its other files) in a
    /// folder of this test, so the test may swap the library.
    fn plugin(&self, name: &str) -> PathBuf {
        let folder = self.dir.path().join("plugins").join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let source = example_manifest(name);
        for file in std::fs::read_dir(source.parent().unwrap()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
            }
        }
        let lib = library(name);
        std::fs::copy(&lib, folder.join(lib.file_name().unwrap())).unwrap();
        folder
    }

    fn lib_of(&self, folder: &Path, name: &str) -> PathBuf {
        folder.join(library(name).file_name().unwrap())
    }

    fn registry(&self) -> Registry {
        Registry::open(self.home()).unwrap()
    }

    /// Registers, approves (all requested) and enables a copy of an example plugin.
    fn ready(&self, name: &str) -> (PathBuf, String) {
        let folder = self.plugin(name);
        let entry = self.json(&["register", folder.to_str().unwrap()]);
        let id = entry["id"].as_str().unwrap().to_owned();
        self.ok(&["review", "approve", &id]);
        self.ok(&["enable", &id]);
        (folder, id)
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn actions(events: &Value) -> Vec<&str> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect()
}

#[test]
fn every_registry_command_works_for_people() {
    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("enricher");
    let lib = plugbay.lib_of(&folder, "enricher");
    let sha = sha256_file(&lib).unwrap();
    let stored = plugbay
        .home()
        .join("libraries")
        .join(&sha)
        .join(lib.file_name().unwrap());

    assert_eq!(
        plugbay.ok(&["list"]),
        format!(
            "no plugins: there is no registry in {} yet; `plugbay register MANIFEST` creates it\n",
            plugbay.home().display()
        )
    );
    assert!(!plugbay.home().exists(), "listing creates no registry");
    assert_eq!(
        plugbay.ok(&["register", path(&folder)]),
        format!(
            "registered enricher@1.0.0 (pending review)\n  from      {}\n  stored    {}\n  \
             sha256    {sha}\n  \
             requests  process:data, fs:read:${{plugin_dir}}/lookup.json\n\
             next: plugbay review approve enricher@1.0.0\n",
            lib.display(),
            stored.display()
        )
    );
    assert_eq!(
        plugbay.ok(&["list"]),
        "ID              REVIEW   ENABLED  CURRENT  DESCRIPTION\n\
         enricher@1.0.0  pending  no                Adds fields to records from a lookup file shipped beside the plugin\n"
    );
    assert_eq!(
        plugbay.ok(&[
            "review",
            "approve",
            "enricher@1.0.0",
            "--grant",
            "process:data"
        ]),
        {
            // The reviewer sees where the placeholder path leads.
            let lookup = format!(
                "fs:read:${{plugin_dir}}/lookup.json ({})",
                folder.join("lookup.json").display()
            );
            let width = lookup.len();
            format!(
                "enricher@1.0.0 requests:\n  \
                 {:width$}  DECISION\n  \
                 {:width$}  granted\n  \
                 {lookup}  not granted\n\
                 approved enricher@1.0.0 by tester: granted process:data, isolation process (library sha256 {sha})\n\
                 next: plugbay enable enricher@1.0.0\n",
                "PERMISSION", "process:data"
            )
        }
    );
    assert_eq!(
        plugbay.ok(&["enable", "enricher@1.0.0"]),
        "enabled enricher@1.0.0 (granted process:data)\n"
    );
    let shown = plugbay.ok(&["show", "enricher@1.0.0"]);
    for line in [
        "id           enricher@1.0.0\n".to_owned(),
        format!("sha256       {sha} (unchanged since registration)\n"),
        format!("plugin dir   {}\n", folder.display()),
        format!(
            "requests     process:data, fs:read:${{plugin_dir}}/lookup.json ({})\n",
            folder.join("lookup.json").display()
        ),
        "granted      process:data\n".to_owned(),
        "isolation    process\n".to_owned(),
        "enabled      yes\n".to_owned(),
    ] {
        assert!(shown.contains(&line), "`show` lacks {line:?}:\n{shown}");
    }
    assert!(
        shown.contains("review       approved by tester at "),
        "{shown}"
    );
    let history: Vec<&str> = shown
        .lines()
        .skip_while(|line| *line != "history")
        .skip(2)
        .map(|line| line.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(history, ["register", "approve", "enable"]);
    assert_eq!(
        plugbay.ok(&["disable", "enricher@1.0.0"]),
        "disabled enricher@1.0.0\n"
    );
    assert_eq!(
        plugbay.ok(&[
            "review",
            "reject",
            "enricher@1.0.0",
            "--reason",
            "reads files"
        ]),
        "rejected enricher@1.0.0 by tester: reads files\n"
    );
    assert!(plugbay
        .ok(&["show", "enricher@1.0.0"])
        .contains("review       rejected by tester at "));
    assert_eq!(
        plugbay.ok(&["unregister", "enricher@1.0.0"]),
        "unregistered enricher@1.0.0\n"
    );
    assert!(plugbay.ok(&["list"]).starts_with("no plugins in "));
}

#[test]
fn every_registry_command_works_for_scripts() {
    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("dedup");
    let lib = plugbay.lib_of(&folder, "dedup");
    let sha = sha256_file(&lib).unwrap();

    assert_eq!(plugbay.json(&["list"]), serde_json::json!([]));
    let entry = plugbay.json(&["register", path(&folder.join("plugin.json"))]);
    assert_eq!(entry["id"], "dedup@1.0.0");
    assert_eq!(entry["sha256"], sha.as_str());
    assert_eq!(entry["source"], path(&lib));
    let stored = plugbay
        .home()
        .join("libraries")
        .join(&sha)
        .join(lib.file_name().unwrap());
    assert_eq!(entry["library"], path(&stored));
    assert_eq!(sha256_file(&stored).unwrap(), sha);
    assert_eq!(entry["enabled"], false);
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(
        entry["manifest"]["permissions"],
        serde_json::json!(["process:data", "write:data"])
    );

    let list = plugbay.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "dedup@1.0.0");

    let approved = plugbay.json(&[
        "review",
        "approve",
        "dedup@1.0.0",
        "--grant",
        "process:data",
        "--grant",
        "write:data",
        "--reviewer",
        "rita",
    ]);
    assert_eq!(approved["review"]["status"], "approved");
    assert_eq!(approved["review"]["reviewer"], "rita");
    assert_eq!(approved["review"]["reviewed_sha256"], sha.as_str());
    assert_eq!(
        approved["review"]["granted"],
        serde_json::json!(["process:data", "write:data"])
    );

    assert_eq!(plugbay.json(&["enable", "dedup@1.0.0"])["enabled"], true);
    let shown = plugbay.json(&["show", "dedup@1.0.0"]);
    assert_eq!(shown["id"], "dedup@1.0.0");
    assert_eq!(shown["library_sha256_now"], sha.as_str());
    assert_eq!(actions(&shown["audit"]), ["register", "approve", "enable"]);
    assert_eq!(shown["audit"][1]["actor"], "rita");
    assert_eq!(plugbay.json(&["disable", "dedup@1.0.0"])["enabled"], false);
    let rejected = plugbay.json(&["review", "reject", "dedup@1.0.0", "--reason", "no"]);
    assert_eq!(rejected["review"]["status"], "rejected");
    assert_eq!(rejected["review"]["reason"], "no");
    assert_eq!(
        plugbay.json(&["unregister", "dedup@1.0.0"])["id"],
        "dedup@1.0.0"
    );
    assert_eq!(plugbay.json(&["list"]), serde_json::json!([]));
}

#[test]
fn inspect_shows_the_embedded_manifest_and_the_confinement() {
    let plugbay = Plugbay::new();
    let lib = library("data-processor");
    let text = plugbay.ok(&["inspect", path(&lib)]);
    for line in [
        format!("library      {}\n", lib.display()),
        "plugin       data-processor@1.0.0\n".to_owned(),
        "plugbay-api  0.1.0 (this host: 0.1.0, compatible)\n".to_owned(),
        "hooks        init, process, cleanup\n".to_owned(),
        "requests     process:data\n".to_owned(),
        "confinement  full (landlock ABI 6, seccomp)\n".to_owned(),
    ] {
        assert!(text.contains(&line), "`inspect` lacks {line:?}:\n{text}");
    }
    let json = plugbay.json(&["inspect", path(&lib)]);
    assert_eq!(json["manifest"]["name"], "data-processor");
    assert_eq!(json["api_version"], "0.1.0");
    assert_eq!(json["host_api_version"], "0.1.0");
    assert_eq!(json["confinement"]["level"], "full");
    assert_eq!(json["sha256"], sha256_file(&lib).unwrap().as_str());

    assert_eq!(
        plugbay.fails(&["inspect", "/no/such/libplugin.so"], 1),
        "error: plugin library /no/such/libplugin.so does not exist; build the plugin (`cargo build`) or fix the path\n"
    );
    let other_api = &abi_fixtures().api_version;
    assert_eq!(
        plugbay.fails(&["inspect", path(other_api)], 1),
        format!(
            "error: {} was built against plugbay-api 0.9.0, which this host (plugbay-api 0.1.0) cannot load; rebuild it against plugbay-api 0.1.0\n",
            other_api.display()
        )
    );
}

#[test]
fn keys_are_created_shown_once_listed_and_revoked() {
    let plugbay = Plugbay::new();
    let output = plugbay.output(
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--scope",
            "plugins:read",
            "plugins:execute",
        ],
        None,
    );
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let token = token.trim_end();
    assert!(
        token.starts_with("pb_") && token.len() == 3 + 16 + 1 + 64,
        "{token}"
    );
    let note = String::from_utf8(output.stderr).unwrap();
    assert!(
        note.contains(
            "with scopes plugins:read, plugins:execute; the token below is shown only now"
        ),
        "{note}"
    );
    let key = plugbay.registry().authenticate(token).unwrap();
    assert_eq!(key.name, "ci");

    let created = plugbay.json(&[
        "keys",
        "create",
        "--name",
        "ops",
        "--scope",
        "plugins:write",
    ]);
    assert_eq!(created["key"]["name"], "ops");
    assert_eq!(
        created["key"]["scopes"],
        serde_json::json!(["plugins:write"])
    );
    assert!(created["token"].as_str().unwrap().starts_with("pb_"));

    let table = plugbay.ok(&["keys", "list"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(" ci ") && table.contains(" ops "), "{table}");
    assert!(!table.contains("pb_"), "tokens are never listed: {table}");
    let keys = plugbay.json(&["keys", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(keys[0].get("token").is_none());

    assert_eq!(
        plugbay.ok(&["keys", "revoke", "ci"]),
        format!("revoked API key {} (ci)\n", key.id)
    );
    let ops_id = created["key"]["id"].as_str().unwrap();
    let revoked = plugbay.json(&["keys", "revoke", ops_id]);
    assert!(revoked["revoked_at"].is_string());
    assert!(plugbay.registry().authenticate(token).is_err());

    assert_eq!(
        plugbay.fails(&["keys", "revoke", "nobody"], 1),
        "error: no API key `nobody`; `plugbay keys list` shows them\n"
    );
    plugbay.ok(&["keys", "create", "--name", "dup", "--scope", "plugins:read"]);
    assert_eq!(
        plugbay.fails(
            &["keys", "create", "--name", "dup", "--scope", "plugins:read"],
            1
        ),
        "error: an active API key is already named `dup`; revoke it or choose another name\n"
    );
    let usage = plugbay.fails(
        &["keys", "create", "--name", "x", "--scope", "plugins:all"],
        2,
    );
    assert!(
        usage.contains("unknown scope `plugins:all`; expected one of `plugins:read`"),
        "{usage}"
    );
}

#[test]
fn bad_manifests_libraries_and_ids_each_get_their_own_error() {
    let plugbay = Plugbay::new();
    let dir = plugbay.dir.path();
    let good = std::fs::read_to_string(example_manifest("data-processor")).unwrap();

    // Malformed JSON, an incomplete manifest, an unknown field: the validator's words.
    let cases = [
        (
            "malformed.json",
            good.replace("\"version\": \"1.0.0\",", "\"version\": \"1.0.0\""),
        ),
        (
            "incomplete.json",
            good.replace("\"version\": \"1.0.0\",", ""),
        ),
        (
            "unknown-field.json",
            good.replace(
                "\"version\": \"1.0.0\",",
                "\"version\": \"1.0.0\", \"licence\": \"MIT\",",
            ),
        ),
    ];
    for (file, text) in cases {
        let manifest = dir.join(file);
        std::fs::write(&manifest, &text).unwrap();
        let reason = Manifest::parse(&text).unwrap_err();
        assert_eq!(
            plugbay.fails(&["register", path(&manifest)], 1),
            format!("error: invalid manifest {}: {reason}\n", manifest.display())
        );
    }
    assert_eq!(
        plugbay.fails(&["register", path(&dir.join("absent.json"))], 1),
        format!(
            "error: cannot read manifest {}: No such file or directory (os error 2)\n",
            dir.join("absent.json").display()
        )
    );
    assert_eq!(
        plugbay.fails(&["register", path(dir)], 1),
        format!(
            "error: folder {} has no plugin.json; pass the plugin's manifest or the folder that holds it\n",
            dir.display()
        )
    );

    // A missing library: as the manifest's `main`, and as `--library`.
    let folder = dir.join("no-library");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("plugin.json"), &good).unwrap();
    assert_eq!(
        plugbay.fails(&["register", path(&folder)], 1),
        format!(
            "error: plugin library {} does not exist (the manifest's `main`, `data_processor`, in the manifest's folder), and cargo's target folder has none either; build the plugin (`cargo build --release`), or pass the built library with `--library PATH`\n",
            folder.join(library("data-processor").file_name().unwrap()).display()
        )
    );
    let absent = dir.join("libabsent.so");
    assert_eq!(
        plugbay.fails(&["register", path(&folder), "--library", path(&absent)], 1),
        format!(
            "error: plugin library {} does not exist; build the plugin (`cargo build`) or fix the path\n",
            absent.display()
        )
    );

    // A file that is not a library.
    let text_file = dir.join("libnotes.so");
    std::fs::write(&text_file, "these are notes, not code\n").unwrap();
    let stderr = plugbay.fails(
        &["register", path(&folder), "--library", path(&text_file)],
        1,
    );
    assert!(
        stderr.starts_with(&format!(
            "error: {} is not a loadable library: dlopen failed: ",
            text_file.display()
        )),
        "{stderr}"
    );

    // A library that embeds another manifest.
    let redactor = library("redactor");
    let stderr = plugbay.fails(
        &["register", path(&folder), "--library", path(&redactor)],
        1,
    );
    assert!(
        stderr.starts_with(&format!(
            "error: the manifest given for `data-processor@1.0.0` differs from the one built into library {}: \
             `name` is \"redactor\" in the library but \"data-processor\" in the manifest given; ",
            redactor.display()
        )),
        "{stderr}"
    );
    for field in ["description", "main", "config"] {
        assert!(
            stderr.contains(&format!("; `{field}` is ")),
            "{field}: {stderr}"
        );
    }
    assert!(
        stderr.ends_with(&format!(
            "; register the manifest the library was built with (`plugbay inspect {}` shows it), or rebuild the plugin\n",
            redactor.display()
        )),
        "{stderr}"
    );

    // A library built for another plugbay-api.
    let other_api = &abi_fixtures().api_version;
    let fixture_manifest = other_api
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("api-version/plugin/plugin.json");
    assert_eq!(
        plugbay.fails(
            &["register", path(&fixture_manifest), "--library", path(other_api)],
            1
        ),
        format!(
            "error: {} was built against plugbay-api 0.9.0, which this host (plugbay-api 0.1.0) cannot load; rebuild it against plugbay-api 0.1.0\n",
            other_api.display()
        )
    );

    // Nothing of all that reached the registry.
    assert_eq!(plugbay.json(&["list"]), serde_json::json!([]));
    assert!(plugbay.registry().audit_log(None).unwrap().is_empty());

    // Unknown and malformed ids, for every command that takes one.
    for command in [
        &["show"][..],
        &["enable"],
        &["disable"],
        &["unregister"],
        &["review", "approve"],
    ] {
        let mut args = command.to_vec();
        args.push("nope@1.0.0");
        assert_eq!(
            plugbay.fails(&args, 1),
            "error: no plugin `nope@1.0.0` in the registry; `plugbay list` shows the registered ids\n",
            "{command:?}"
        );
    }
    assert_eq!(
        plugbay.fails(&["review", "reject", "nope@1.0.0", "--reason", "x"], 1),
        "error: no plugin `nope@1.0.0` in the registry; `plugbay list` shows the registered ids\n"
    );
    assert_eq!(
        plugbay.fails_with(&["run", "nope@1.0.0"], Some("[]"), 1),
        "error: no plugin `nope@1.0.0` in the registry; `plugbay list` shows the registered ids\n"
    );
    assert_eq!(
        plugbay.fails(&["show", "nope"], 1),
        "error: no plugin `nope` in the registry; `plugbay list` shows the registered ids\n"
    );
    assert_eq!(
        plugbay.fails(&["show", "No_Pe"], 1),
        "error: invalid plugin id `No_Pe`: the name `No_Pe` contains `N`; use only `a-z`, `0-9` and `-`; ids look like `name@version`, e.g. `data-processor@1.0.0`\n"
    );
    assert_eq!(
        plugbay.fails_with(&["run", "nope"], Some("[]"), 1),
        "error: `nope` is neither a registered plugin nor a library file; `plugbay list` shows the registered ids\n"
    );
}

#[test]
fn the_review_gates_enabling_and_running() {
    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("data-processor");
    let lib = plugbay.lib_of(&folder, "data-processor");
    plugbay.ok(&["register", path(&folder)]);

    assert_eq!(
        plugbay.fails(&["register", path(&folder)], 1),
        "error: plugin `data-processor@1.0.0` is already registered; to register a rebuild of it as its next revision (reviewed again), add `--update`, or bump its version\n"
    );
    assert_eq!(
        plugbay.fails(&["enable", "data-processor@1.0.0"], 1),
        "error: plugin `data-processor@1.0.0` is pending, not approved; review it first with `plugbay review approve data-processor@1.0.0`\n"
    );
    assert_eq!(
        plugbay.fails_with(&["run", "data-processor@1.0.0"], Some("[]"), 1),
        "error: plugin `data-processor@1.0.0` is pending, not approved; review it first with `plugbay review approve data-processor@1.0.0`\n"
    );
    assert_eq!(
        plugbay.fails(&["review", "approve", "data-processor@1.0.0", "--grant", "read:data"], 1),
        "error: cannot grant `read:data` to `data-processor@1.0.0`: its manifest does not request it (it requests `process:data`)\n"
    );
    assert_eq!(
        plugbay.fails(
            &["review", "reject", "data-processor@1.0.0", "--reason", " "],
            1
        ),
        "error: rejecting `data-processor@1.0.0` needs a reason (`--reason TEXT`)\n"
    );
    plugbay.ok(&[
        "review",
        "reject",
        "data-processor@1.0.0",
        "--reason",
        "untested",
    ]);
    assert_eq!(
        plugbay.fails(&["enable", "data-processor@1.0.0"], 1),
        "error: plugin `data-processor@1.0.0` is rejected, not approved; review it first with `plugbay review approve data-processor@1.0.0`\n"
    );

    plugbay.ok(&["review", "approve", "data-processor@1.0.0"]);
    assert_eq!(
        plugbay.fails_with(&["run", "data-processor@1.0.0"], Some("[]"), 1),
        "error: plugin `data-processor@1.0.0` is disabled; enable it with `plugbay enable data-processor@1.0.0`\n"
    );
    plugbay.ok(&["enable", "data-processor@1.0.0"]);
    let out = plugbay.ok_with(&["run", "data-processor@1.0.0"], Some(r#"[{"id": 1}]"#));
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(records[0]["processed"], true);

    // The library it was registered from is rebuilt: the reviewed copy still runs.
    let approved = sha256_file(&lib).unwrap();
    std::fs::copy(library("redactor"), &lib).unwrap();
    let out = plugbay.ok_with(&["run", "data-processor@1.0.0"], Some(r#"[{"id": 2}]"#));
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(records[0]["processed"], true, "the reviewed library ran");

    // The stored copy itself is tampered with: it no longer runs, nor can be enabled.
    let stored = plugbay
        .home()
        .join("libraries")
        .join(&approved)
        .join(lib.file_name().unwrap());
    make_writable(&stored);
    std::fs::copy(library("redactor"), &stored).unwrap();
    let now = sha256_file(&stored).unwrap();
    assert_eq!(
        plugbay.fails_with(&["run", "data-processor@1.0.0"], Some("[]"), 1),
        format!(
            "error: plugin library {} has sha256 {now}, not the expected {approved}; it was not loaded (a library that changed since its review must be registered and reviewed again)\n",
            stored.display()
        )
    );
    plugbay.ok(&["disable", "data-processor@1.0.0"]);
    assert_eq!(
        plugbay.fails(&["enable", "data-processor@1.0.0"], 1),
        format!(
            "error: library {} of plugin `data-processor@1.0.0` changed since review (sha256 {approved} then, {now} now); it will not be loaded; unregister, register and review it again\n",
            stored.display()
        )
    );
    assert!(plugbay
        .ok(&["show", "data-processor@1.0.0"])
        .contains(&format!("(CHANGED since registration: now {now})")));
    assert_eq!(
        plugbay.json(&["show", "data-processor@1.0.0"])["library_sha256_now"],
        now.as_str()
    );
}

/// Makes a stored library and its folder writable again (the store keeps them
/// read-only), as an attacker with the home's owner's rights could.
fn make_writable(stored: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let folder = stored.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(stored, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let plugbay = Plugbay::new();
    for args in [
        &["frobnicate"][..],
        &[],
        &["review", "reject", "x@1.0.0"],
        &["review", "approve", "x@1.0.0", "--grant", "read:everything"],
        &["run"],
        &["run", "x@1.0.0", "--batch-size", "0"],
        &["keys", "create", "--name", "x"],
    ] {
        let stderr = plugbay.fails(args, 2);
        assert!(
            stderr.contains("Usage: plugbay")
                || stderr.contains("For more information, try '--help'."),
            "{args:?}: {stderr}"
        );
    }
    let help = plugbay.ok(&["--help"]);
    assert!(help.contains("Examples:\n  plugbay demo\n"), "{help}");
    assert!(
        help.contains("Exit codes: 0 ok, 1 error, 2 usage."),
        "{help}"
    );
    for command in [
        &["register"][..],
        &["list"],
        &["show"],
        &["enable"],
        &["disable"],
        &["unregister"],
        &["review", "approve"],
        &["review", "reject"],
        &["inspect"],
        &["run"],
        &["demo"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = plugbay.ok(&args);
        assert!(
            help.contains("Examples:\n  plugbay "),
            "{command:?} --help has no examples:\n{help}"
        );
    }
}

#[test]
fn run_chains_registered_plugins_and_libraries() {
    let plugbay = Plugbay::new();
    let (_, redactor) = plugbay.ready("redactor");
    let (_, dedup) = plugbay.ready("dedup");
    let input = r#"[{"id": 1, "email": "a@example.com"}, {"id": 2, "email": "b@example.com"},
                    {"id": 1, "email": "a@example.com"}]"#;

    let output = plugbay.output(
        &["run", &redactor, &dedup, path(&library("data-processor"))],
        Some(input),
    );
    assert!(output.status.success(), "{output:?}");
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["email"], "[redacted]");
    assert_eq!(records[1]["processed"], true);
    let summary = String::from_utf8(output.stderr).unwrap();
    assert!(
        summary.contains(": 3 in, 2 out, 1 batch\n"),
        "the summary is on stderr: {summary}"
    );
    for plugin in ["redactor@1.0.0", "dedup@1.0.0", "data-processor@1.0.0"] {
        assert!(
            summary
                .lines()
                .any(|line| line.trim_start().starts_with(plugin)
                    && line.contains("full (landlock ABI 6, seccomp)")
                    && line.ends_with("unloaded")),
            "{plugin} has no summary line: {summary}"
        );
    }

    // JSON Lines in, a file out, a config for one plugin, small batches, a JSON summary.
    let dir = plugbay.dir.path();
    let input_file = dir.join("in.jsonl");
    let lines: String = (0..10)
        .map(|i| format!("{{\"id\": {}}}\n", i % 7))
        .collect();
    std::fs::write(&input_file, lines).unwrap();
    let out_file = dir.join("out.json");
    let summary = plugbay.json(&[
        "run",
        &dedup,
        path(&library("data-processor")),
        "--input",
        path(&input_file),
        "--output",
        path(&out_file),
        "--batch-size",
        "3",
        "--config",
        r#"data-processor={"field": "seen"}"#,
    ]);
    assert_eq!(summary["records_in"], 10);
    assert_eq!(summary["records_out"], 7);
    assert_eq!(summary["batches"], 4);
    assert_eq!(summary["stages"][0]["plugin"], "dedup@1.0.0");
    assert_eq!(summary["stages"][0]["batches"], 4);
    assert_eq!(summary["stages"][1]["records_out"], 7);
    assert_eq!(summary["stages"][1]["state"], "unloaded");
    assert!(summary["records_per_second"].as_f64().unwrap() > 0.0);
    let written: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(written.len(), 7);
    assert!(written.iter().all(|record| record["seen"] == true));

    // Empty input, empty output.
    assert_eq!(plugbay.ok_with(&["run", &dedup], Some("")), "[]\n");
    assert_eq!(plugbay.ok_with(&["run", &dedup], Some(" [ ] ")), "[]\n");
}

#[test]
fn run_refuses_bad_input_and_faulty_plugins_with_clear_errors() {
    let plugbay = Plugbay::new();
    let (_, id) = plugbay.ready("data-processor");
    let run = |input: &str| plugbay.fails_with(&["run", &id], Some(input), 1);
    let started =
        "started data-processor@1.0.0 in a worker process: confinement full (landlock ABI 6, seccomp), granted process:data\n";

    assert_eq!(
        run("[{\"id\": 1}, {\"id\": ]"),
        format!(
            "{started}error: invalid JSON in input <stdin> at line 1, column 20: expected value\n"
        )
    );
    assert_eq!(
        run("[{\"id\": 1}"),
        format!("{started}error: invalid JSON in input <stdin> at line 1, column 10: EOF while parsing a list\n")
    );
    assert_eq!(
        run("42"),
        format!("{started}error: input <stdin> is not a JSON array or JSON Lines of objects: record 1 (input line 1) is a number; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line\n")
    );
    assert_eq!(
        run("{\"id\": 1}\n\"text\"\n"),
        format!("{started}error: input <stdin> is not a JSON array or JSON Lines of objects: record 2 (input line 2) is a string; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line\n")
    );
    // Records are objects in an array too: `[1, 2]` never reaches the plugin.
    assert_eq!(
        run("[1, 2]"),
        format!("{started}error: input <stdin> is not a JSON array or JSON Lines of objects: record 1 (input line 1) is a number; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line\n")
    );
    let missing = plugbay.dir.path().join("absent.json");
    assert_eq!(
        plugbay.fails(&["run", &id, "--input", path(&missing)], 1),
        format!(
            "error: cannot open input {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    let raw = library("fixture-raw-output");
    let output = plugbay.output(&["run", &id, path(&raw)], Some("[{\"id\": 1}]"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "nothing is written after a failed batch"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("error: batch 1 (record 1) failed in raw-output@0.1.0, stage 2 of 2; nothing after it was written: plugin raw-output@0.1.0 returned invalid output from process: "),
        "{stderr}"
    );
    let out_file = plugbay.dir.path().join("never.json");
    plugbay.fails_with(
        &["run", &id, "--output", path(&out_file)],
        Some("[{\"id\": 1}, oops]"),
        1,
    );
    assert!(!out_file.exists(), "a failed run leaves no output file");
    let config = plugbay.fails_with(&["run", &id, "--config", "{oops}"], Some("[]"), 1);
    assert!(
        config.starts_with("error: invalid `--config` value `{oops}`: key must be a string at line 1 column 2; give a JSON object, or NAME=JSON for one plugin"),
        "{config}"
    );
    assert_eq!(
        plugbay.fails_with(&["run", &id, "--config", "dedup={}"], Some("[]"), 1),
        "error: `--config dedup=…` names no plugin of this run; the plugins are data-processor@1.0.0\n"
    );
}

#[test]
fn a_closed_stdout_is_success() {
    let plugbay = Plugbay::new();
    plugbay.ready("data-processor");
    let records: String = (0..20_000).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let mut child = plugbay
        .command(&["run", "data-processor@1.0.0", "--batch-size", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(records.as_bytes());
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("error"));
}

#[test]
fn the_demo_walks_the_whole_lifecycle() {
    let plugbay = Plugbay::new();
    let output = plugbay
        .command_without_home(&["demo", "--records", "2000"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "1. register: ",
        "   registered    redactor@1.0.0",
        "   refused       enricher@1.0.0        enable before review: plugin `enricher@1.0.0` is pending, not approved",
        "   approved      enricher@1.0.0        granted process:data; withheld fs:read:${plugin_dir}/lookup.json",
        "   enabled       data-processor@1.0.0  may run",
        "   denied        enricher@1.0.0        landlock stopped the read, so init failed: plugin enricher@1.0.0 failed to initialize: ",
        "Permission denied",
        "   re-approved   enricher@1.0.0        granted process:data, fs:read:${plugin_dir}/lookup.json",
        "   initialized   dedup@1.0.0           confinement full (landlock ABI 6, seccomp), granted process:data, write:data",
        "   processed     2,000 records in ",
        ": 2,000 in, 1,800 out",
        "\"country_name\":\"France\"",
        "\"email\":\"[redacted]\"",
        "   cleaned up    data-processor@1.0.0  state unloaded",
        "   data store    dedup/stats = {\"distinct\":1800,\"dropped\":200,\"kept\":1800}",
        "   disabled      enricher@1.0.0        may not run",
        "   refused       redactor@1.0.0        run while disabled: plugin `redactor@1.0.0` is disabled",
        "   unregistered  data-processor@1.0.0  removed from the registry",
        "   registry      0 plugins left; the audit log holds ",
        "integrity ok",
        "done: every step of the lifecycle ran; removed the temporary registry ",
    ] {
        assert!(text.contains(expected), "the demo lacks {expected:?}:\n{text}");
    }
    let temporary = text
        .lines()
        .find_map(|line| line.strip_prefix("registry   "))
        .and_then(|line| line.strip_suffix(" (temporary, removed at the end)"))
        .unwrap();
    assert!(
        !Path::new(temporary).exists(),
        "{temporary} was not removed"
    );

    // With --json and a --home: the steps as data, the registry kept.
    let report = plugbay.json(&["demo", "--records", "500"]);
    assert_eq!(report["temporary"], false);
    assert_eq!(
        report["registry"],
        path(&plugbay.home().join("registry.db"))
    );
    let steps = report["steps"].as_array().unwrap();
    let count = |action: &str| steps.iter().filter(|s| s["action"] == action).count();
    for (action, times) in [
        ("registered", 4),
        ("approved", 4),
        ("enabled", 4),
        ("denied", 1),
        ("re-approved", 1),
        ("initialized", 4),
        ("processed", 1),
        ("cleaned up", 4),
        ("disabled", 4),
        ("refused", 2),
        ("unregistered", 4),
    ] {
        assert_eq!(count(action), times, "{action} in {steps:#?}");
    }
    let stages: Vec<&str> = steps
        .iter()
        .map(|s| s["stage_name"].as_str().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        stages,
        [
            "cleanup",
            "disable",
            "enable",
            "register",
            "review",
            "run",
            "sandbox",
            "unregister"
        ]
    );
    let registry = plugbay.registry();
    assert!(registry.list().unwrap().is_empty());
    assert!(registry.integrity_ok().unwrap());
    let events = registry.audit_log(None).unwrap();
    assert_eq!(
        events.iter().filter(|e| e.action == "unregister").count(),
        4
    );

    // Without the libraries, the demo says which command builds them.
    let empty = plugbay.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(
        plugbay.fails(&["demo", "--plugins", path(&empty)], 1),
        format!(
            "error: the example plugin library {} is missing; build the example plugins with `cargo build --release --workspace` in the repository's root (it puts them beside the plugbay binary), or pass their folder with `--plugins DIR`\n",
            empty.join(library("redactor").file_name().unwrap()).display()
        )
    );
}

/// Eight processes register the same four plugins and toggle them, all at once:
/// each registration succeeds exactly once, nothing is lost, the database is sound.
#[test]
fn concurrent_processes_lose_nothing() {
    let plugbay = Plugbay::new();
    let names = ["data-processor", "redactor", "dedup", "enricher"];
    let folders: Vec<PathBuf> = names.iter().map(|name| plugbay.plugin(name)).collect();
    // No database yet: the eight processes create it together.
    let results: Vec<(usize, Vec<(String, bool)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let folder = &folders[worker % names.len()];
                let plugbay = &plugbay;
                scope.spawn(move || {
                    let id = format!("{}@1.0.0", names[worker % names.len()]);
                    let mut done = Vec::new();
                    let output = plugbay.output(&["register", path(folder)], None);
                    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
                    assert!(
                        output.status.success()
                            || stderr
                                == format!("error: plugin `{id}` is already registered; to register a rebuild of it as its next revision (reviewed again), add `--update`, or bump its version\n"),
                        "worker {worker}: {stderr}"
                    );
                    done.push(("register".to_owned(), output.status.success()));
                    // Wait until the twin worker's registration is in too.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while plugbay.output(&["show", &id], None).status.code() != Some(0) {
                        assert!(Instant::now() < deadline, "{id} never appeared");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    for command in ["review approve", "enable", "disable", "enable", "disable"] {
                        let mut args: Vec<&str> = command.split(' ').collect();
                        args.push(&id);
                        let output = plugbay.output(&args, None);
                        assert!(
                            output.status.success(),
                            "worker {worker}: {command} {id}: {}",
                            String::from_utf8_lossy(&output.stderr)
                        );
                        done.push((args[args.len() - 2].to_owned(), true));
                    }
                    (worker, done)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let registry = plugbay.registry();
    assert!(registry.integrity_ok().unwrap());
    let entries = registry.list().unwrap();
    assert_eq!(entries.len(), 4);
    for entry in &entries {
        assert_eq!(entry.review.status, ReviewStatus::Approved);
        assert!(!entry.enabled, "every worker ended with `disable`");
    }
    let events = registry.audit_log(None).unwrap();
    let succeeded: usize = results
        .iter()
        .map(|(_, done)| done.iter().filter(|(_, ok)| *ok).count())
        .sum();
    assert_eq!(
        events.len(),
        succeeded,
        "one audit event per change, none lost"
    );
    for name in names {
        let id = format!("{name}@1.0.0");
        let registered = events
            .iter()
            .filter(|e| e.action == "register" && e.plugin_id.as_deref() == Some(&id))
            .count();
        assert_eq!(registered, 1, "{id} was registered exactly once");
    }
    assert_eq!(events.iter().filter(|e| e.action == "approve").count(), 8);
    assert_eq!(events.iter().filter(|e| e.action == "enable").count(), 16);
    assert_eq!(events.iter().filter(|e| e.action == "disable").count(), 16);
}

/// `register` killed with SIGKILL at a random moment, again and again: the registry
/// is always sound, holds the plugin whole or not at all, and keeps working.
#[test]
fn a_register_killed_midway_leaves_the_registry_whole() {
    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("data-processor");
    let register = || {
        plugbay
            .command(&["register", path(&folder)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long one registration takes, on a fresh registry, to aim the kills.
    let started = Instant::now();
    assert!(register().wait().unwrap().success());
    let span = started.elapsed().as_micros().max(1_000) as u64;
    std::fs::remove_dir_all(plugbay.home()).unwrap();

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let (mut killed, mut finished) = (0, 0);
    for _ in 0..20 {
        let mut child: Child = register();
        std::thread::sleep(Duration::from_micros(random(span * 12 / 10)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
        } else {
            killed += 1;
        }
        let mut registry = plugbay.registry();
        assert!(registry.integrity_ok().unwrap());
        let entries = registry.list().unwrap();
        assert!(entries.len() <= 1, "{entries:?}");
        let events = registry.audit_log(None).unwrap();
        let registers = events.iter().filter(|e| e.action == "register").count();
        let unregisters = events.iter().filter(|e| e.action == "unregister").count();
        assert_eq!(
            registers,
            unregisters + entries.len(),
            "an entry exists exactly when its registration was logged"
        );
        if let Some(entry) = entries.first() {
            assert_eq!(entry.id, "data-processor@1.0.0");
            assert_eq!(entry.review.status, ReviewStatus::Pending);
            assert_eq!(entry.sha256.len(), 64);
            // Start over, so the next kill lands on a registration again.
            registry.unregister(&entry.id, "test").unwrap();
        }
    }
    eprintln!("register: {span} µs; {killed} killed, {finished} finished");
    assert!(killed > 0, "no process was killed ({finished} finished)");
    let entry = plugbay.json(&["register", path(&folder)]);
    assert_eq!(entry["review"]["status"], "pending");
    assert_eq!(
        plugbay.json(&["list"]).as_array().unwrap().len(),
        1,
        "the registry works after the kills"
    );
    assert!(plugbay.registry().integrity_ok().unwrap());
}

/// Runs `records` generated JSON Lines records (each padded with `padding` bytes)
/// through data-processor into a file; returns the input's size, the process's peak
/// resident memory (VmHWM, sampled while it runs) and the output file.
fn streamed_run(plugbay: &Plugbay, records: usize, padding: usize) -> (u64, u64, PathBuf) {
    let dir = plugbay.dir.path();
    let input = dir.join(format!("in-{records}.jsonl"));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        let padding = "x".repeat(padding);
        for i in 0..records {
            writeln!(file, "{{\"id\": {i}, \"note\": \"{padding}\"}}").unwrap();
        }
    }
    let input_size = std::fs::metadata(&input).unwrap().len();
    let output = dir.join(format!("out-{records}.json"));
    let mut child = plugbay
        .command(&[
            "--json",
            "run",
            "data-processor@1.0.0",
            "--input",
            path(&input),
            "--output",
            path(&output),
            "--batch-size",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = child.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let summary: Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["records_in"], records);
    assert_eq!(summary["records_out"], records);
    assert_eq!(summary["batches"], records.div_ceil(1000));
    assert!(peak_kib > 0, "the child's memory was never sampled");
    std::fs::remove_file(&input).unwrap();
    (input_size, peak_kib * 1024, output)
}

/// 200,000 JSON Lines records through data-processor: every record comes out, and
/// the process's peak memory is the same as for a small input, far below the size
/// of the input or the output.
#[test]
fn a_large_input_streams_in_bounded_memory() {
    const RECORDS: usize = 200_000;
    let plugbay = Plugbay::new();
    plugbay.ready("data-processor");
    let (_, small_peak, _) = streamed_run(&plugbay, 2_000, 40);
    let (input_size, peak, output) = streamed_run(&plugbay, RECORDS, 40);

    let text = std::fs::read_to_string(&output).unwrap();
    assert!(text.len() as u64 > input_size);
    assert!(text.starts_with("[\n{\"id\":0,") && text.ends_with("}\n]\n"));
    assert_eq!(text.matches("\"processed\":true").count(), RECORDS);
    assert!(
        peak < small_peak + input_size / 4,
        "peak memory {peak} bytes for {input_size} bytes of input, {small_peak} bytes for \
         a hundredth of it: the input was not streamed"
    );
}

/// `plugbay serve` answers the seed's example registration request (with a local
/// entry point) and stops cleanly on SIGTERM.
#[test]
fn serve_answers_the_seeds_registration_request() {
    use std::io::{BufRead, BufReader};

    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("data-processor");
    let token = plugbay.ok(&[
        "keys",
        "create",
        "--name",
        "ops",
        "--scope",
        "plugins:read",
        "plugins:write",
    ]);
    let mut server = plugbay
        .command(&["--json", "serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let listening: Value = serde_json::from_str(&first_line).unwrap();
    let url = listening["listening"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let client = reqwest::blocking::Client::new();
    let health = client.get(format!("{url}/health")).send().unwrap();
    assert_eq!(health.status(), 200);
    let body = serde_json::json!({
        "name": "data-processor",
        "version": "1.0.0",
        "description": "A plugin for processing data",
        "entry_point": plugbay.lib_of(&folder, "data-processor"),
        "permissions": ["process:data"],
    });
    let response = client
        .post(format!("{url}/plugins/register"))
        .bearer_auth(token.trim())
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    let entry: Value = response.json().unwrap();
    assert_eq!(entry["id"], "data-processor@1.0.0");
    let listed = plugbay.json(&["list"]);
    assert_eq!(
        listed[0]["id"], "data-processor@1.0.0",
        "the CLI sees what the server registered"
    );

    let denied = client.get(format!("{url}/plugins")).send().unwrap();
    assert_eq!(denied.status(), 401);

    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
}

#[test]
fn an_interrupted_run_leaves_no_file_behind() {
    let plugbay = Plugbay::new();
    let dir = plugbay.dir.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("out.json");
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut child = plugbay
            .command(&[
                "run",
                path(&library("data-processor")),
                "--output",
                path(&out_file),
                "--batch-size",
                "1",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Two records, and the input stays open: the run waits for more.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"{\"id\": 1}\n{\"id\": 2}\n").unwrap();
        let started = std::time::Instant::now();
        let temporary = loop {
            let found = std::fs::read_dir(&dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .find(|name| name.starts_with(".plugbay-output"));
            if let Some(name) = found {
                break name;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the run never created its temporary output"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        let output = child.wait_with_output().unwrap();
        drop(stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "interrupted: {} was not written",
                out_file.display()
            )),
            "{signal}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(
            left.is_empty(),
            "{signal} left {left:?} (the temporary file was {temporary})"
        );
    }
}

#[test]
fn a_running_plugin_finds_no_registry_among_the_open_descriptors() {
    let plugbay = Plugbay::new();
    let manifest = plugbay_tests::fixture_manifest("fd-scanner");
    let lib = library("fixture-fd-scanner");
    plugbay.ok(&["register", path(&manifest), "--library", path(&lib)]);
    plugbay.ok(&["review", "approve", "fd-scanner@0.1.0"]);
    plugbay.ok(&["enable", "fd-scanner@0.1.0"]);
    // The scanner reads the first bytes of every descriptor number with `pread`, which
    // needs no path: it would find the registry's database if `run` held it open.
    let out = plugbay.ok_with(&["run", "fd-scanner@0.1.0"], Some("[{}]"));
    let found: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        found,
        Vec::<Value>::new(),
        "descriptors a plugin could rewrite"
    );
    // The scanner does find a database that is open, so an empty answer means something.
    let registry = plugbay.registry();
    let mut plugin = plugbay_host::Host::new()
        .start(
            registry
                .spec("fd-scanner@0.1.0")
                .unwrap()
                .with_isolation(plugbay_host::Isolation::Thread),
        )
        .unwrap();
    let found: Vec<Value> = plugin
        .process(&plugbay_host::Batch::from_json("[{}]"))
        .unwrap()
        .records()
        .unwrap();
    assert!(
        found
            .iter()
            .any(|fd| fd["kind"] == "sqlite database" && fd["writable"] == true),
        "{found:?}"
    );
}

#[test]
fn swapping_the_stored_library_during_200_runs_never_runs_unreviewed_code() {
    let plugbay = Plugbay::new();
    let folder = plugbay.plugin("data-processor");
    let lib = plugbay.lib_of(&folder, "data-processor");
    let reviewed = sha256_file(&lib).unwrap();
    plugbay.ok(&["register", path(&folder)]);
    plugbay.ok(&["review", "approve", "data-processor@1.0.0"]);
    plugbay.ok(&["enable", "data-processor@1.0.0"]);

    // An attacker with the home owner's rights swaps another library in and out of the
    // stored copy's place, as fast as it can, while the plugin is started again and
    // again: each start must load the reviewed library or refuse.
    let stored = plugbay
        .home()
        .join("libraries")
        .join(&reviewed)
        .join(lib.file_name().unwrap());
    make_writable(&stored);
    let good = stored.with_extension("good");
    let evil = stored.with_extension("evil");
    std::fs::copy(&stored, &good).unwrap();
    std::fs::copy(library("redactor"), &evil).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, stored) = (stop.clone(), stored.clone());
        std::thread::spawn(move || {
            let (incoming, mut swaps) = (stored.with_extension("incoming"), 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let from = if swaps % 2 == 0 { &evil } else { &good };
                std::fs::copy(from, &incoming).unwrap();
                std::fs::rename(&incoming, &stored).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let (mut ran, mut refused) = (0, 0);
    for run in 0..200 {
        let output = plugbay.output(&["run", "data-processor@1.0.0"], Some(r#"[{"id": 1}]"#));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stdout.contains("redactor") && !stderr.contains("redactor"),
            "run {run} loaded the unreviewed library:\n{stdout}\n{stderr}"
        );
        if output.status.success() {
            let records: Vec<Value> = serde_json::from_str(&stdout).unwrap();
            assert_eq!(records[0]["processed"], true, "run {run}");
            ran += 1;
        } else {
            assert!(
                stderr.contains(&format!("not the expected {reviewed}; it was not loaded")),
                "run {run} failed otherwise:\n{stderr}"
            );
            refused += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps >= 200, "only {swaps} swaps");
    assert!(
        ran > 0 && refused > 0,
        "{ran} runs, {refused} refusals: the swap did not race"
    );
}

#[test]
fn a_library_runs_in_a_worker_process_when_asked() {
    let plugbay = Plugbay::new();
    let lib = library("data-processor");
    let output = plugbay.output(
        &["run", path(&lib), "--isolation", "process"],
        Some(r#"[{"id": 1}]"#),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("started data-processor@1.0.0 in a worker process: confinement full"),
        "{stderr}"
    );
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(records[0]["processed"], true);
    let stderr = plugbay.fails_with(&["run", path(&lib), "--isolation", "proces"], Some("[]"), 2);
    assert!(
        stderr.contains("unknown isolation `proces`; expected `thread` or `process`"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_plugin_output_that_is_not_what_it_claims() {
    use crate::{forged_garbage, raw_output_request, with_forged_mark};
    let plugbay = Plugbay::new();
    let raw = library("fixture-raw-output");
    let refused = |library: &Path, input: &str, plugin: &str| -> String {
        let output = plugbay.output(&["run", path(library)], Some(input));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(output.stdout.is_empty(), "nothing is written: {stderr}");
        assert!(
            stderr.contains(&format!(
                "failed in {plugin}, stage 1 of 1; nothing after it was written: plugin {plugin} returned invalid output from process: "
            )),
            "{stderr}"
        );
        stderr
    };
    let stderr = refused(
        &raw,
        &raw_output_request(&forged_garbage()),
        "raw-output@0.1.0",
    );
    assert!(!stderr.contains("281"), "{stderr}");
    let stderr = refused(
        &raw,
        &raw_output_request(b"[{\"name\": \"\xff\"}]"),
        "raw-output@0.1.0",
    );
    assert!(stderr.contains("invalid unicode code point"), "{stderr}");
    let stderr = refused(&raw, &raw_output_request(b""), "raw-output@0.1.0");
    assert!(stderr.contains("no bytes"), "{stderr}");
    let stderr = refused(
        &library("fixture-raw-value"),
        r#"[{"raw": "\"\\ud800\""}]"#,
        "raw-value@0.1.0",
    );
    assert!(stderr.contains("hex escape"), "{stderr}");
    // A mark claiming no records after two: both are written, and counted.
    let two = raw_output_request(&with_forged_mark(b"[{\"a\": 1}, {\"a\": 2}]", 0));
    let output = plugbay.output(&["run", path(&raw)], Some(&two));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let records: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(records, serde_json::json!([{"a": 1}, {"a": 2}]));
    assert!(stderr.contains("1 in, 2 out"), "{stderr}");
}

#[test]
fn a_refused_record_is_named_by_its_number_and_input_line() {
    let plugbay = Plugbay::new();
    // The prober reads each record as a struct with a required `op`.
    let prober = library("fixture-prober");
    let (_, dp) = plugbay.ready("data-processor");
    let started = "started prober@0.1.0 on a worker thread: confinement full (landlock ABI 6, seccomp), granted process:data\n";
    let refused = |args: &[&str], input: &str| {
        let mut all = vec!["run", path(&prober)];
        all.extend_from_slice(args);
        plugbay.fails_with(&all, Some(input), 1)
    };
    // A pretty-printed array: the fifth record, in the second batch, starts on line 14.
    let records: Vec<String> = (1..=6)
        .map(|i| match i {
            5 => "  {\n    \"path\": \"/x\"\n  }".to_owned(),
            _ => format!("  {{\n    \"op\": \"none\",\n    \"i\": {i}\n  }}"),
        })
        .collect();
    let input = format!("[\n{}\n]\n", records.join(",\n"));
    assert_eq!(
        refused(&["--batch-size", "4"], &input),
        format!("{started}error: prober@0.1.0 refused record 5 (input line 18): missing field `op`; batch 2 (records 5 to 6) failed in stage 1 of 1; nothing after it was written\n")
    );
    // JSON Lines with blank lines.
    assert_eq!(
        refused(&[], "{\"op\": \"none\"}\n\n\n{\"op\": \"none\"}\n{\"op\": 7}\n"),
        format!("{started}error: prober@0.1.0 refused record 3 (input line 5): invalid type: integer `7`, expected a string; batch 1 (records 1 to 3) failed in stage 1 of 1; nothing after it was written\n")
    );
    // One object on one line is one record, and the error says the input was read so.
    assert_eq!(
        refused(&[], "{\"records\": [{\"op\": \"none\"}]}\n"),
        format!("{started}error: prober@0.1.0 refused record 1 (input line 1): missing field `op` (the input is one JSON object, read as one record); batch 1 (record 1) failed in stage 1 of 1; nothing after it was written\n")
    );
    // One object over several lines is not records at all: no plugin sees it.
    assert_eq!(
        refused(&[], "{\n  \"records\": [\n    {\"op\": \"none\"}\n  ]\n}\n"),
        format!("{started}error: input <stdin> is one JSON object over lines 1 to 5, not a list of records; give a JSON array of objects (`[{{...}}, ...]`) or one JSON object per line\n")
    );
    // A later stage reads what the one before made: its record is not the input's.
    let stderr = plugbay.fails_with(
        &["run", &dp, path(&prober)],
        Some("{\"x\": 1}\n{\"x\": 2}\n"),
        1,
    );
    assert!(
        stderr.ends_with("error: prober@0.1.0 refused record 1 of what data-processor@1.0.0 (stage 1 of 2) made of batch 1 (records 1 to 2): missing field `op`; nothing after it was written\n"),
        "{stderr}"
    );
    // An input that ends early is placed at its last character, never at column 0.
    for (input, place) in [
        (
            "[{\"op\": \"none\"},\n",
            "line 1, column 16: EOF while parsing a list",
        ),
        (
            "[\n  {\"op\":\n\n",
            "line 2, column 8: EOF while parsing a value",
        ),
        (
            "{\"op\": \"none\"}\n{\"op\":\n",
            "line 2, column 6: EOF while parsing a value",
        ),
    ] {
        assert_eq!(
            refused(&[], input),
            format!("{started}error: invalid JSON in input <stdin> at {place}\n"),
            "{input:?}"
        );
    }
}

#[test]
fn a_cleanup_that_fails_fails_the_run_and_leaves_no_output_file() {
    let plugbay = Plugbay::new();
    let faulty = library("fixture-faulty");
    let out_file = plugbay.dir.path().join("out.json");
    for (config, state) in [
        (r#"{"fail": "cleanup"}"#, "unloaded, cleanup failed"),
        (
            r#"{"hang": "cleanup"}"#,
            "failed (timeout: cleanup did not return within 2s)",
        ),
    ] {
        let args = ["run", path(&faulty), "--config", config];
        let mut with_output = args.to_vec();
        with_output.extend(["--output", path(&out_file)]);
        let stderr = plugbay.fails_with(&with_output, Some("[{\"id\": 1}]"), 1);
        assert!(
            !out_file.exists(),
            "{config}: the output appears only on success"
        );
        let left: Vec<_> = std::fs::read_dir(plugbay.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(".plugbay-output"))
            .collect();
        assert!(left.is_empty(), "{config}: {left:?}");
        let line = stderr
            .lines()
            .find(|line| line.trim_start().starts_with("faulty@0.1.0"))
            .unwrap();
        assert!(line.ends_with(state), "{config}: {line}");
        assert!(
            stderr.contains(&format!(
                "error: every record went through, but cleaning up faulty@0.1.0 failed, so {} was not written: plugin faulty@0.1.0 ",
                out_file.display()
            )),
            "{config}: {stderr}"
        );

        // On stdout the records are out already: the array is closed, the run fails.
        let mut json = vec!["--json"];
        json.extend_from_slice(&args);
        let output = plugbay.output(&json, Some("[{\"id\": 1}]"));
        assert_eq!(output.status.code(), Some(1), "{config}");
        let records: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(records, serde_json::json!([{"id": 1}]));
        let stderr = String::from_utf8(output.stderr).unwrap();
        let summary_start = stderr.find("{\n").unwrap();
        let mut lines = stderr[summary_start..].lines();
        let mut summary_text = String::new();
        for line in lines.by_ref() {
            summary_text.push_str(line);
            summary_text.push('\n');
            if line == "}" {
                break;
            }
        }
        let summary: Value = serde_json::from_str(&summary_text).unwrap();
        let stage = &summary["stages"][0];
        assert!(stage["cleanup_error"]
            .as_str()
            .unwrap()
            .starts_with("plugin faulty@0.1.0 "));
        assert_ne!(stage["state"], "running", "{config}: {stage}");
        let error: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(error["error"]["code"], "failed");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("every record went through, but cleaning up faulty@0.1.0 failed: "));
    }
}

#[cfg(unix)]
#[test]
fn output_files_are_created_as_the_umask_says_and_keep_an_existing_mode() {
    use std::os::unix::fs::PermissionsExt;
    let plugbay = Plugbay::new();
    let out_file = plugbay.dir.path().join("out.json");
    let run = |umask: &str| {
        let script = format!("umask {umask} && exec \"$0\" run \"$1\" --output \"$2\" 2>/dev/null");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .arg(plugbay_bin())
            .arg(library("data-processor"))
            .arg(&out_file)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"[{\"id\": 1}]")
            .unwrap();
        assert!(child.wait().unwrap().success());
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(run("022"), 0o644);
    std::fs::remove_file(&out_file).unwrap();
    assert_eq!(run("027"), 0o640);
    // Replacing a file keeps its mode, whatever the umask.
    std::fs::set_permissions(&out_file, std::fs::Permissions::from_mode(0o664)).unwrap();
    assert_eq!(run("077"), 0o664);
}

#[test]
fn lookups_never_create_a_registry() {
    let plugbay = Plugbay::new();
    let home = plugbay.dir.path().join("nowhere");
    let on = |args: &[&str]| {
        let mut all = vec!["--home", path(&home)];
        all.extend_from_slice(args);
        plugbay.command_without_home(&all).output().unwrap()
    };
    let no_registry = format!(
        "error: no registry in {} (it has no registry.db); `plugbay register` creates one there, or give another home with `--home DIR` or `PLUGBAY_HOME`\n",
        home.display()
    );
    for args in [
        &["run", "data-processor@1.0.0"][..],
        &["show", "data-processor@1.0.0"],
        &["enable", "data-processor@1.0.0"],
        &["disable", "data-processor@1.0.0"],
        &["unregister", "data-processor@1.0.0"],
        &["review", "approve", "data-processor@1.0.0"],
        &["review", "reject", "data-processor@1.0.0", "--reason", "no"],
        &["keys", "list"],
        &["keys", "revoke", "ops"],
    ] {
        let output = on(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            no_registry,
            "{args:?}"
        );
        assert!(!home.exists(), "{args:?} created {}", home.display());
    }
    let output = on(&["--json", "list"]);
    assert!(output.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).unwrap(),
        serde_json::json!([])
    );
    // The data store is read without being created either.
    assert!(on(&["store", "list"]).status.success());
    assert_eq!(on(&["store", "get", "dedup/stats"]).status.code(), Some(1));
    assert!(
        !home.exists(),
        "the store commands created {}",
        home.display()
    );
    let output = on(&["serve", "--addr", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with(&format!(
        "error: no registry to serve in {} (it has no registry.db); create an API key with `plugbay keys create",
        home.display()
    )));
    assert!(!home.exists());
    // Without `--home` the default home is looked up, and not created either.
    let default_home = plugbay.dir.path().join("data");
    let output = plugbay
        .command_without_home(&["show", "data-processor@1.0.0"])
        .env("XDG_DATA_HOME", &default_home)
        .env("HOME", plugbay.dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(!default_home.join("plugbay").exists());
    // What creates a registry still does.
    on(&["keys", "create", "--name", "ops", "--scope", "plugins:read"]);
    assert!(home.join("registry.db").is_file());
    let output = on(&["show", "data-processor@1.0.0"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: no plugin `data-processor@1.0.0` in the registry; `plugbay list` shows the registered ids\n"
    );
}

#[test]
fn with_json_errors_are_json_too() {
    let plugbay = Plugbay::new();
    let error = |args: &[&str], code: i32| -> Value {
        let stderr = plugbay.fails_with(args, Some("[]"), code);
        let line = stderr.lines().last().unwrap();
        serde_json::from_str(line).unwrap_or_else(|err| panic!("{args:?}: {err}: {stderr}"))
    };
    let failed = error(&["--json", "show", "nope@1.0.0"], 1);
    assert_eq!(failed["error"]["code"], "failed");
    assert!(failed["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("no registry in "));
    let failed = plugbay.fails_with(
        &["--json", "run", path(&library("data-processor"))],
        Some("[1]"),
        1,
    );
    assert_eq!(
        serde_json::from_str::<Value>(failed.trim()).unwrap(),
        serde_json::json!({"error": {"code": "failed", "message": "input <stdin> is not a JSON array or JSON Lines of objects: record 1 (input line 1) is a number; give a JSON array of objects (`[{...}, ...]`) or one JSON object per line"}})
    );
    for args in [
        &["--json", "frobnicate"][..],
        &["frobnicate", "--json"],
        &["--json", "run"],
    ] {
        let usage = error(args, 2);
        assert_eq!(usage["error"]["code"], "usage", "{args:?}");
        assert!(usage["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Usage: plugbay"));
    }
    // Without `--json`, people read text.
    assert!(plugbay
        .fails(&["show", "nope@1.0.0"], 1)
        .starts_with("error: no registry in "));
}
