//! A newcomer's first plugin and first host, taken from the README as written: the
//! files it shows are built as their own project and run.

use std::process::Command;

use plugbay_tests::{profile_dir, workspace_root};

/// The README's code blocks that name a file (```` ```rust file=src/lib.rs ````).
fn readme_files() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut files = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(file) = line
            .strip_prefix("```")
            .and_then(|info| info.split_once(" file="))
            .map(|(_, f)| f)
        else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        files.push((file.trim().to_owned(), body.join("\n") + "\n"));
    }
    files
}

#[test]
fn the_readme_plugin_and_host_build_and_run() {
    let files = readme_files();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Cargo.toml",
            "plugin.json",
            "src/lib.rs",
            "host/Cargo.toml",
            "host/src/main.rs"
        ],
        "the README shows a plugin (3 files) and a host (2 files)"
    );
    let target = profile_dir().parent().unwrap().join("plugbay-abi-fixtures");
    let project = target.join("readme");
    let _ = std::fs::remove_dir_all(&project);
    let root = workspace_root();
    for (name, mut text) in files {
        text = text
            .replace(
                r#"plugbay = { package = "plugbay-api", version = "0.1" }"#,
                &format!(
                    r#"plugbay = {{ package = "plugbay-api", path = "{}" }}"#,
                    root.join("plugin-api").display()
                ),
            )
            .replace(
                r#"plugbay-host = { version = "0.1", default-features = false }"#,
                &format!(
                    r#"plugbay-host = {{ path = "{}", default-features = false }}"#,
                    root.join("host").display()
                ),
            );
        if name == "Cargo.toml" {
            assert!(
                text.contains("path = "),
                "the README's dependency line is the one the test rewrites"
            );
            text.push_str("\n[workspace]\nmembers = [\"host\"]\n");
        }
        let path = project.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let target_dir = target.join("target");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the README project builds:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let run = Command::new(target_dir.join("debug/my-host"))
        .arg(project.join("plugin.json"))
        .arg(
            target_dir
                .join("debug")
                .join(plugbay_api::manifest::library_file_name("shouter")),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the README host runs:\n{stderr}");
    assert_eq!(
        stdout.trim(),
        r#"[{"text":"HELLO","shouted":true},{"text":"PLUGINS","shouted":true}]"#
    );
    assert!(stderr.contains("confinement: full"), "{stderr}");
}
