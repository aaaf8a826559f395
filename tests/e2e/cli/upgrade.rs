//! `plugbay upgrade` and `plugbay dev`: the current version of a name, and the
//! author's loop that reloads a rebuilt library without restarting anything.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use plugbay_tests::{fixture_manifest, library};
use serde_json::Value;

use super::{path, Plugbay};

/// Registers, approves and enables a fixture version of a plugin; returns its id.
fn ready_fixture(plugbay: &Plugbay, fixture: &str) -> String {
    let folder = fixture_manifest(fixture);
    let lib = library(&format!("fixture-{fixture}"));
    let entry = plugbay.json(&[
        "register",
        path(folder.parent().unwrap()),
        "--library",
        path(&lib),
    ]);
    let id = entry["id"].as_str().unwrap().to_owned();
    plugbay.ok(&["review", "approve", &id]);
    plugbay.ok(&["enable", &id]);
    id
}

#[test]
fn upgrade_makes_an_approved_enabled_version_current_and_is_audited() {
    let plugbay = Plugbay::new();
    let (_, v1) = plugbay.ready("sequencer");
    let v2 = ready_fixture(&plugbay, "sequencer-next");
    assert_eq!(
        plugbay.registry().current("sequencer").unwrap().unwrap().id,
        v1,
        "the first version enabled is current"
    );
    assert_eq!(
        plugbay.ok(&["upgrade", &v2]),
        format!("{v2} is the current version of sequencer (was {v1}); a `plugbay serve` on this registry switches at the name's next batch\n")
    );
    // `list` and `show` say which version is current, in text and in JSON.
    let listed = plugbay.json(&["list"]);
    let current: Vec<(&str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["id"].as_str().unwrap(), entry["current"] == true))
        .collect();
    assert_eq!(current, [(v1.as_str(), false), (v2.as_str(), true)]);
    let table = plugbay.ok(&["list"]);
    let column = table.lines().next().unwrap().find("CURRENT").unwrap();
    let current_cell = |id: &str| {
        let row = table.lines().find(|line| line.starts_with(id)).unwrap();
        row[column..].starts_with("yes")
    };
    assert!(current_cell(&v2) && !current_cell(&v1), "{table}");
    let shown = plugbay.ok(&["show", &v1]);
    assert!(
        shown.contains(&format!(
            "current      no: the current version is {v2} (`plugbay upgrade {v1}` makes this one current)"
        )),
        "{shown}"
    );
    assert!(
        plugbay
            .ok(&["show", &v2])
            .contains("current      yes: batches sent to its name reach it"),
        "the current version says so"
    );
    let again = plugbay.json(&["upgrade", &v2]);
    assert_eq!(again["changed"], false);
    assert_eq!(again["from"], v2.as_str());
    // Back to the version before: an upgrade in either direction.
    let back = plugbay.json(&["upgrade", &v1]);
    assert_eq!(
        (back["from"].as_str(), back["to"].as_str()),
        (Some(v2.as_str()), Some(v1.as_str()))
    );

    let stderr = plugbay.fails(&["upgrade", "sequencer"], 1);
    assert!(
        stderr.contains("give the version to make current, as `sequencer@VERSION`"),
        "{stderr}"
    );
    plugbay.ok(&["disable", &v2]);
    let stderr = plugbay.fails(&["upgrade", &v2], 1);
    assert!(
        stderr.contains(&format!(
            "plugin `{v2}` is disabled; enable it with `plugbay enable {v2}`"
        )),
        "{stderr}"
    );
    let shown = plugbay.json(&["show", &v1]);
    let details: Vec<&str> = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "upgrade")
        .map(|event| event["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        [format!("current version of sequencer: {v2} → {v1}")]
    );
}

/// A running `plugbay dev` with its output lines arriving on channels.
struct Dev {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen_stderr: String,
}

impl Dev {
    fn spawn(plugbay: &Plugbay, args: &[&str], stdin: bool) -> Dev {
        let mut command = plugbay.command_without_home(&["dev"]);
        command
            .args(args)
            .args(["--poll", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().unwrap();
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        Dev {
            stdout: lines(Box::new(child.stdout.take().unwrap())),
            stderr: lines(Box::new(child.stderr.take().unwrap())),
            child,
            seen_stderr: String::new(),
        }
    }

    /// The next JSON value on stdout (an array over several lines, or one line).
    fn next_json(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stdout.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no output from plugbay dev; stderr so far:\n{}",
                    self.drain_stderr()
                )
            });
            text.push_str(&line);
            text.push('\n');
            if let Ok(value) = serde_json::from_str(&text) {
                return value;
            }
        }
    }

    /// Waits for a line on stderr containing `needle`; returns it.
    fn stderr_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no `{needle}` from plugbay dev; stderr:\n{}",
                    self.seen_stderr
                )
            });
            self.seen_stderr.push_str(&line);
            self.seen_stderr.push('\n');
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn drain_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen_stderr.push_str(&line);
            self.seen_stderr.push('\n');
        }
        self.seen_stderr.clone()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "Rebuilds" the library at `at`: its file gets the bytes of `package`'s build.
fn rebuild(at: &Path, package: &str) {
    // Written beside it and renamed into place, as a linker's output lands.
    let next = at.with_extension("next");
    std::fs::copy(library(package), &next).unwrap();
    std::fs::rename(&next, at).unwrap();
}

#[test]
fn dev_runs_the_input_again_through_each_rebuild_and_keeps_the_old_build_when_one_fails() {
    let plugbay = Plugbay::new();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libsequencer.so");
    std::fs::copy(library("sequencer"), &lib).unwrap();
    let input = dir.path().join("records.json");
    std::fs::write(&input, r#"[{"name": "a"}, {"name": "b"}, {"name": "c"}]"#).unwrap();
    let mut dev = Dev::spawn(&plugbay, &[path(&lib), "--input", path(&input)], false);

    let first = dev.next_json();
    assert_eq!(first[2]["seq"], 2, "{first}");
    assert_eq!(first[0]["by"], "sequencer@1.0.0");
    dev.stderr_line("watching");

    rebuild(&lib, "fixture-sequencer-next");
    let line = dev.stderr_line("reloaded");
    assert!(
        line.contains("reloaded sequencer@1.0.0 → sequencer@2.0.0"),
        "{line}"
    );
    let second = dev.next_json();
    // The same records, through the new build, which took the count over.
    assert_eq!(second[0]["name"], "a");
    assert_eq!(second[0]["seq"], 3, "{second}");
    assert_eq!(second[0]["by"], "sequencer@2.0.0");

    rebuild(&lib, "fixture-sequencer-broken");
    let line = dev.stderr_line("error");
    assert!(
        line.contains("cannot upgrade sequencer@2.0.0 to sequencer@3.0.0: sequencer@3.0.0 did not start, so sequencer@2.0.0 serves on")
            && line.contains("needs `shard` in its config"),
        "{line}"
    );
    // A fix: the build before, rebuilt.
    rebuild(&lib, "fixture-sequencer-next");
    dev.stderr_line("reloaded sequencer@2.0.0 → sequencer@2.0.0");
    let third = dev.next_json();
    assert_eq!(third[0]["seq"], 6, "{third}");
}

#[test]
fn dev_streams_stdin_and_a_rebuild_takes_over_at_the_next_batch() {
    let plugbay = Plugbay::new();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libsequencer.so");
    std::fs::copy(library("sequencer"), &lib).unwrap();
    let mut dev = Dev::spawn(&plugbay, &[path(&lib), "--isolation", "process"], true);
    let mut stdin = dev.child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"name": "a"}}"#).unwrap();
    let first = dev.next_json();
    assert_eq!(
        (first["seq"].as_u64(), first["by"].as_str()),
        (Some(0), Some("sequencer@1.0.0"))
    );

    rebuild(&lib, "fixture-sequencer-next");
    dev.stderr_line("reloaded sequencer@1.0.0 → sequencer@2.0.0");
    writeln!(stdin, r#"{{"name": "b"}}"#).unwrap();
    let second = dev.next_json();
    assert_eq!(
        (second["seq"].as_u64(), second["by"].as_str()),
        (Some(1), Some("sequencer@2.0.0"))
    );
    drop(stdin);
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", dev.drain_stderr());
}
