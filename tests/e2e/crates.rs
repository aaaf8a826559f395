//! Plugins built on popular crates (rayon, log, tracing, rusqlite, ureq, jiff), as
//! their authors intend, in both isolations: each works with the grant the docs
//! name (`docs/popular-crates.md`) and fails loudly without it, with an error that
//! names the permission; a thread pool's global state never carries one instance's
//! grants to another.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use plugbay_host::{Batch, CallError, Host, Permission, PluginHandle, PluginSpec, StartError};
use serde_json::{json, Value};

use crate::fixture;

/// A host of each isolation, with its name.
fn hosts() -> Vec<(&'static str, Host, tempfile::TempDir)> {
    let (thread, thread_dir) = crate::host();
    let (process, process_dir) = crate::isolation::process_host();
    vec![
        ("thread", thread, thread_dir),
        ("process", process, process_dir),
    ]
}

/// The popular-crates fixture, its manifest requesting `extra` too, granted
/// `granted` (everything it requests if `None`).
fn popular(extra: &[String], granted: Option<&[&str]>) -> PluginSpec {
    let mut spec = fixture("popular");
    for permission in extra {
        spec.manifest
            .permissions
            .push(permission.parse::<Permission>().unwrap());
    }
    match granted {
        Some(granted) => spec.with_grants(granted.iter().map(|p| p.parse().unwrap()).collect()),
        None => spec,
    }
}

fn ask(plugin: &mut PluginHandle, record: Value) -> Result<Value, CallError> {
    let out: Vec<Value> = plugin
        .process(&Batch::from_records(&[record]).unwrap())?
        .records()
        .unwrap();
    Ok(out.into_iter().next().unwrap())
}

#[test]
fn a_global_thread_pool_does_not_carry_grants_to_another_instance() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    let grant = format!("fs:read:{}", secret_dir.path().display());
    let read = json!({"op": "read", "path": secret.display().to_string(), "pool": "global"});
    for (isolation, host, _dir) in hosts() {
        // The first instance may read the secret: rayon's global pool starts inside
        // its confinement, on its first `par_iter`.
        let mut granted = host
            .start(popular(std::slice::from_ref(&grant), None))
            .unwrap();
        assert_eq!(
            ask(&mut granted, read.clone()).unwrap()["bytes"],
            6,
            "{isolation}"
        );
        // A second instance of the same library, granted only `process:data`, uses
        // the global pool too: on a worker thread it has a copy of the library (and
        // of its statics) of its own, in a worker process a process of its own.
        let mut narrow = host
            .start(popular(
                std::slice::from_ref(&grant),
                Some(&["process:data"]),
            ))
            .unwrap();
        let err = ask(&mut narrow, read.clone()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Permission denied")
                && text.contains(&format!(
                    "requested but not granted: `fs:write:${{data_dir}}`, `sys:dns`, `{grant}`"
                )),
            "{isolation}: {text}"
        );
        // Stopped, the first leaves its pool behind, which still cannot serve the
        // second, and the first copy still reads for an instance granted as it was.
        granted.shutdown().unwrap();
        assert!(ask(&mut narrow, read.clone()).is_err(), "{isolation}");
        let mut again = host
            .start(popular(std::slice::from_ref(&grant), None))
            .unwrap();
        assert_eq!(
            ask(&mut again, read.clone()).unwrap()["bytes"],
            6,
            "{isolation}"
        );
    }
}

/// The kernel names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
fn threads_a_plugin_leaves_running_are_counted_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    // Grants of this test alone, so that the instance loads a copy whose global pool
    // it starts itself.
    let grant = format!("fs:read:{}", dir.path().display());
    let read = |pool: &str| json!({"op": "read", "path": dir.path().join("file").display().to_string(), "pool": pool});
    let (host, _data) = crate::host();
    let mut global = host
        .start(popular(std::slice::from_ref(&grant), None))
        .unwrap();
    ask(&mut global, read("global")).unwrap();
    assert_eq!(global.status().threads_left, None, "counted when it stops");
    let status = global.shutdown().unwrap();
    let left = status.threads_left.expect("this kernel can tell");
    assert!(left >= 1, "rayon's global pool stays: {left}");
    assert!(
        thread_names().iter().any(|name| name == "left:popular"),
        "{:?}",
        thread_names()
    );

    // An instance that owns its pool and drops it in `cleanup` leaves nothing.
    let mut owned = host
        .start(popular(std::slice::from_ref(&grant), None).with_config(json!({"pool": 2})))
        .unwrap();
    ask(&mut owned, read("own")).unwrap();
    assert_eq!(owned.shutdown().unwrap().threads_left, Some(0));

    // A worker process's threads end with it.
    let (host, _data) = crate::isolation::process_host();
    let mut global = host.start(popular(&[grant], None)).unwrap();
    ask(&mut global, read("global")).unwrap();
    assert_eq!(global.shutdown().unwrap().threads_left, Some(0));
}

#[test]
fn time_zones_come_from_the_system_data_every_plugin_may_read() {
    for (isolation, host, _dir) in hosts() {
        let mut plugin = host.start(popular(&[], Some(&["process:data"]))).unwrap();
        for (zone, offset) in [("America/New_York", -4 * 3600), ("Europe/Paris", 2 * 3600)] {
            let answer = ask(&mut plugin, json!({"op": "zone", "name": zone})).unwrap();
            assert_eq!(answer["offset_seconds"], offset, "{isolation} {zone}");
        }
        // A zone the data does not have is an error, not UTC.
        let err = ask(
            &mut plugin,
            json!({"op": "zone", "name": "Mars/Olympus_Mons"}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("Mars/Olympus_Mons"),
            "{isolation}: {err}"
        );
    }
}

#[test]
fn host_names_resolve_with_sys_dns_and_fail_naming_it_without() {
    let localhost = json!({"op": "resolve", "host": "localhost"});
    for (isolation, host, _dir) in hosts() {
        let mut resolving = host
            .start(popular(&[], Some(&["process:data", "sys:dns"])))
            .unwrap();
        let answer = ask(&mut resolving, localhost.clone()).unwrap();
        assert!(
            answer["addresses"]
                .as_array()
                .unwrap()
                .contains(&json!("127.0.0.1")),
            "{isolation}: {answer}"
        );
        let mut blind = host.start(popular(&[], Some(&["process:data"]))).unwrap();
        let text = ask(&mut blind, localhost.clone()).unwrap_err().to_string();
        assert!(
            text.contains("resolving localhost")
                && text.contains(
                    "name resolution needs `sys:dns` (it requested it, but it was not granted)"
                ),
            "{isolation}: {text}"
        );
    }
}

/// An HTTP server on loopback that answers every request with `body`; its port.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn an_http_client_needs_net_connect_and_sys_dns() {
    let port = http_server("hello from the host");
    let connect = format!("net:connect:{port}");
    let get = json!({"op": "http", "url": format!("http://localhost:{port}/")});
    for (isolation, host, _dir) in hosts() {
        let extra = [connect.clone()];
        let mut granted = host
            .start(popular(
                &extra,
                Some(&["process:data", "sys:dns", &connect]),
            ))
            .unwrap();
        let answer = ask(&mut granted, get.clone()).unwrap();
        assert_eq!(answer["body"], "hello from the host", "{isolation}");

        let mut no_port = host
            .start(popular(&extra, Some(&["process:data", "sys:dns"])))
            .unwrap();
        let text = ask(&mut no_port, get.clone()).unwrap_err().to_string();
        assert!(
            text.contains(&format!(
                "requested but not granted: `fs:write:${{data_dir}}`, `{connect}`"
            )),
            "{isolation}: {text}"
        );

        let mut no_names = host
            .start(popular(&extra, Some(&["process:data", &connect])))
            .unwrap();
        let text = ask(&mut no_names, get.clone()).unwrap_err().to_string();
        assert!(
            text.contains("name resolution needs `sys:dns`"),
            "{isolation}: {text}"
        );
    }
}

#[test]
fn an_embedded_database_works_with_its_grant_and_fails_naming_it_without() {
    let database = json!({"database": true});
    for (isolation, host, dir) in hosts() {
        let mut plugin = host
            .start(popular(&[], None).with_config(database.clone()))
            .unwrap();
        for rows in [1, 2] {
            let answer = ask(&mut plugin, json!({"op": "sqlite", "value": "v"})).unwrap();
            assert_eq!(answer["rows"], rows, "{isolation}");
        }
        plugin.shutdown().unwrap();
        let data = match isolation {
            "thread" => dir.path().to_owned(),
            _ => dir.path().join("data"),
        };
        assert!(
            data.join("popular/0.1.0/popular.sqlite").is_file(),
            "{isolation}: ${{data_dir}} is per name and version"
        );

        let err = host
            .start(popular(&[], Some(&["process:data", "sys:dns"])).with_config(database.clone()))
            .unwrap_err();
        assert!(matches!(err, StartError::Init { .. }), "{isolation}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("unable to open database file")
                && text.contains("this looks like the sandbox refusing an access")
                && text.contains("requested but not granted: `fs:write:${data_dir}`"),
            "{isolation}: {text}"
        );
    }
}

/// Runs `plugbay run` on the fixture's library with `args` and `input`; its output.
fn run_library(args: &[&str], input: &str) -> std::process::Output {
    plugbay_tests::plugins_dir();
    let mut child = Command::new(plugbay_tests::plugbay_bin())
        .args(args)
        .arg(plugbay_tests::library("fixture-popular"))
        .env_remove("RUST_LOG")
        .env_remove("PLUGBAY_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn log_and_tracing_macros_reach_the_host_log_tagged_and_filtered() {
    let input = r#"[{"op": "log", "message": "hello"}]"#;
    for isolation in ["thread", "process"] {
        let home = tempfile::tempdir().unwrap();
        let home = home.path().display().to_string();
        let stderr = |verbosity: &str| {
            let output = run_library(
                &["--home", &home, verbosity, "run", "--isolation", isolation],
                input,
            );
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{isolation}: {stderr}");
            stderr
        };
        let info = stderr("-v");
        for line in [
            "log says hello",
            "tracing says text=hello",
            "ctx error says hello",
            "a thread says hello",
        ] {
            let found = info.lines().find(|l| l.contains(line));
            let found = found.unwrap_or_else(|| panic!("{isolation}: no `{line}` in:\n{info}"));
            assert!(
                found.contains("plugin=\"popular@0.1.0\""),
                "{isolation}: {found}"
            );
        }
        assert!(
            info.lines()
                .any(|l| l.contains("log says hello") && l.contains("module=\"fixture_popular\"")),
            "{isolation}: {info}"
        );
        for line in ["log debug says", "ctx debug says"] {
            assert!(
                !info.contains(line),
                "{isolation}: `{line}` at info:\n{info}"
            );
        }
        let debug = stderr("-vv");
        for line in ["log debug says hello", "ctx debug says hello"] {
            assert!(
                debug.contains(line),
                "{isolation}: no `{line}` in:\n{debug}"
            );
        }
    }
}

#[test]
fn a_direct_run_of_a_library_keeps_its_data_out_of_the_registry_home() {
    let home = tempfile::tempdir().unwrap();
    let input = r#"[{"op": "sqlite", "value": "dev"}]"#;
    let database = ["--config", r#"{"database": true}"#];
    let home_arg = home.path().display().to_string();
    let output = run_library(
        &[&["--home", &home_arg, "run"][..], &database[..]].concat(),
        input,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !home.path().join("data").exists(),
        "a development run wrote into the registry's home"
    );
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().display().to_string();
    let args = [
        &["--home", &home_arg, "run", "--data-dir", &data_arg][..],
        &database[..],
    ]
    .concat();
    for rows in [1, 2] {
        let output = run_library(&args, input);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let out: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            out[0]["rows"], rows,
            "--data-dir keeps the data between runs"
        );
    }
    assert!(data.path().join("popular/0.1.0/popular.sqlite").is_file());
}

#[test]
fn the_docs_examples_are_the_fixtures_code() {
    let root = plugbay_tests::workspace_root();
    let docs = std::fs::read_to_string(root.join("docs/popular-crates.md")).unwrap();
    let mut lines = docs.lines();
    let mut excerpts = 0;
    while let Some(line) = lines.next() {
        let Some(file) = line
            .strip_prefix("```rust excerpt=")
            .map(|file| file.trim().to_owned())
        else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let source = std::fs::read_to_string(root.join(Path::new(&file))).unwrap();
        assert!(
            source.contains(&body.join("\n")),
            "docs/popular-crates.md quotes {file} as it is not:\n{}",
            body.join("\n")
        );
        excerpts += 1;
    }
    assert!(
        excerpts >= 5,
        "a tested example per crate family: {excerpts}"
    );
}
