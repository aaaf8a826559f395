//! The registry: register, review, enable, run, unregister, with a real SQLite file.

use std::path::PathBuf;

use plugbay_host::registry::{Registration, Registry, RegistryError, ReviewStatus, Scope};
use plugbay_host::{Batch, Host, Permission};
use plugbay_tests::{example_manifest, library};

/// A copy of an example plugin (manifest + library) in its own folder, so a test
/// can swap the library without touching the build.
fn plugin_copy(dir: &std::path::Path, name: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(example_manifest(name), folder.join("plugin.json")).unwrap();
    let lib = library(name);
    std::fs::copy(&lib, folder.join(lib.file_name().unwrap())).unwrap();
    folder
}

fn setup() -> (tempfile::TempDir, Registry, Host) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path().join("home")).unwrap();
    let host = Host::new()
        .with_data_dir(registry.data_dir())
        .with_worker_program(plugbay_tests::plugbay_bin());
    (dir, registry, host)
}

#[test]
fn the_whole_lifecycle() {
    let (dir, mut registry, host) = setup();
    let folder = plugin_copy(dir.path(), "data-processor");
    let entry = registry
        .register(
            &host,
            Registration::from_path(&folder, None).unwrap(),
            "alice",
        )
        .unwrap();
    assert_eq!(entry.id, "data-processor@1.0.0");
    assert_eq!(entry.review.status, ReviewStatus::Pending);
    assert!(!entry.enabled);
    assert_eq!(entry.sha256.len(), 64);

    let again = registry.register(
        &host,
        Registration::from_path(&folder, None).unwrap(),
        "alice",
    );
    assert!(
        matches!(again, Err(RegistryError::Conflict { .. })),
        "{again:?}"
    );

    let early = registry.enable(&entry.id, "alice");
    assert!(
        matches!(early, Err(RegistryError::NotApproved { .. })),
        "{early:?}"
    );
    assert!(registry.spec(&entry.id).is_err());

    let overreach = registry.approve(&entry.id, "bob", Some(vec!["read:data".parse().unwrap()]));
    assert!(
        matches!(overreach, Err(RegistryError::NotRequested { .. })),
        "{overreach:?}"
    );

    let approved = registry.approve(&entry.id, "bob", None).unwrap();
    assert_eq!(approved.review.status, ReviewStatus::Approved);
    assert_eq!(approved.review.reviewer.as_deref(), Some("bob"));
    assert_eq!(approved.review.granted, vec![Permission::ProcessData]);
    assert_eq!(
        approved.review.reviewed_sha256.as_deref(),
        Some(entry.sha256.as_str())
    );

    let disabled = registry.spec(&entry.id);
    assert!(
        matches!(disabled, Err(RegistryError::Disabled { .. })),
        "{disabled:?}"
    );
    registry.enable(&entry.id, "alice").unwrap();
    let mut plugin = host.start(registry.spec(&entry.id).unwrap()).unwrap();
    let out = plugin.process(&Batch::from_json(r#"[{"a": 1}]"#)).unwrap();
    assert_eq!(
        out.records::<serde_json::Value>().unwrap()[0]["processed"],
        true
    );
    plugin.shutdown().unwrap();

    registry.disable(&entry.id, "alice").unwrap();
    registry.unregister(&entry.id, "alice").unwrap();
    assert!(matches!(
        registry.get(&entry.id),
        Err(RegistryError::NotFound { .. })
    ));

    let actions: Vec<String> = registry
        .audit_log(Some(&entry.id))
        .unwrap()
        .into_iter()
        .map(|event| format!("{} {}", event.actor, event.action))
        .collect();
    assert_eq!(
        actions,
        [
            "alice register",
            "bob approve",
            "alice enable",
            "alice disable",
            "alice unregister"
        ]
    );
}

/// A copy of an example's library with bytes of its own appended (the dynamic loader
/// ignores them): a SHA-256 no other test loads, so this process has no sealed copy
/// of it yet and a load must read the file.
fn unique_library(folder: &std::path::Path, name: &str) -> PathBuf {
    use std::io::Write;
    let lib = folder.join(library(name).file_name().unwrap());
    let mut file = std::fs::OpenOptions::new().append(true).open(&lib).unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    write!(file, "unique {} {nanos}", std::process::id()).unwrap();
    lib
}

#[test]
fn the_reviewed_copy_runs_and_a_tampered_one_never_loads() {
    let (dir, mut registry, host) = setup();
    let folder = plugin_copy(dir.path(), "data-processor");
    let source = unique_library(&folder, "data-processor");
    let entry = registry
        .register(
            &host,
            Registration::from_path(&folder, None).unwrap(),
            "alice",
        )
        .unwrap();
    let id = entry.id;
    assert_eq!(entry.source.as_deref(), Some(source.as_path()));
    assert_eq!(
        entry.library,
        registry
            .libraries_dir()
            .join(&entry.sha256)
            .join("libdata_processor.so")
    );
    registry.approve(&id, "bob", None).unwrap();
    registry.enable(&id, "alice").unwrap();

    // The plugin is rebuilt where it was registered from: nothing registered changes.
    let rebuilt = folder.join("libdata_processor.so.new");
    std::fs::copy(library("redactor"), &rebuilt).unwrap();
    std::fs::rename(&rebuilt, &source).unwrap();
    let mut plugin = host.start(registry.spec(&id).unwrap()).unwrap();
    assert_eq!(plugin.status().sha256, entry.sha256);
    let out: Vec<serde_json::Value> = plugin
        .process(&plugbay_host::Batch::from_json(r#"[{"id": 1}]"#))
        .unwrap()
        .records()
        .unwrap();
    assert_eq!(out[0]["processed"], true);
    plugin.shutdown().unwrap();

    // The stored copy is replaced (a process that never loaded it refuses it: see the
    // CLI's tests); the registry refuses to enable it again.
    let stored = &entry.library;
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(stored), 0o444, "stored libraries are read-only");
    assert_eq!(mode(stored.parent().unwrap()), 0o555);
    std::fs::set_permissions(
        stored.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let evil = stored.with_extension("evil");
    std::fs::copy(library("redactor"), &evil).unwrap();
    std::fs::rename(&evil, stored).unwrap();
    // This process loaded the reviewed bytes once and keeps their sealed copy: it
    // runs them, never the file that replaced them.
    let mut plugin = host.start(registry.spec(&id).unwrap()).unwrap();
    assert_eq!(plugin.status().sha256, entry.sha256);
    let out: Vec<serde_json::Value> = plugin
        .process(&plugbay_host::Batch::from_json(r#"[{"id": 2}]"#))
        .unwrap()
        .records()
        .unwrap();
    assert_eq!(out[0]["processed"], true);
    plugin.shutdown().unwrap();
    let err = registry.enable(&id, "alice").unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::LibraryChanged {
                since: "review",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("changed since review"), "{err}");
}

#[test]
fn a_manifest_that_differs_from_the_built_in_one_in_any_field_is_refused() {
    let (dir, mut registry, host) = setup();
    let folder = plugin_copy(dir.path(), "data-processor");
    let manifest_path = folder.join("plugin.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    // What a reviewer would be shown, though the author never built it in.
    manifest["permissions"] = serde_json::json!(["process:data", "fs:read:/"]);
    manifest["config"]["field"] = serde_json::json!("reviewed");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let err = registry
        .register(
            &host,
            Registration::from_path(&folder, None).unwrap(),
            "alice",
        )
        .unwrap_err();
    let RegistryError::ManifestDiffers { differences, .. } = &err else {
        panic!("expected a manifest difference, got {err}");
    };
    let fields: Vec<&str> = differences.iter().map(|d| d.field).collect();
    assert_eq!(fields, ["permissions", "config"]);
    assert_eq!(differences[0].built_in, r#"["process:data"]"#);
    assert_eq!(differences[0].given, r#"["process:data","fs:read:/"]"#);
    let text = err.to_string();
    assert!(text.contains("`permissions` is [\"process:data\"] in the library but [\"process:data\",\"fs:read:/\"] in the manifest given; `config` is "), "{text}");
    assert!(registry.list().unwrap().is_empty(), "nothing registered");
    assert!(
        std::fs::read_dir(registry.libraries_dir())
            .map(|dir| dir
                .filter_map(Result::ok)
                .all(|entry| entry.file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(true),
        "nothing left in the store"
    );

    // The order of a list is not a difference.
    manifest["permissions"] = serde_json::json!(["process:data"]);
    manifest["config"]["field"] = serde_json::json!("processed");
    manifest["hooks"] = serde_json::json!(["cleanup", "process", "init"]);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    registry
        .register(
            &host,
            Registration::from_path(&folder, None).unwrap(),
            "alice",
        )
        .unwrap();
}

#[test]
fn rejected_plugins_cannot_be_enabled() {
    let (dir, mut registry, host) = setup();
    let folder = plugin_copy(dir.path(), "redactor");
    let id = registry
        .register(
            &host,
            Registration::from_path(&folder, None).unwrap(),
            "alice",
        )
        .unwrap()
        .id;
    assert!(matches!(
        registry.reject(&id, "bob", " "),
        Err(RegistryError::NoReason { .. })
    ));
    let rejected = registry.reject(&id, "bob", "masks too little").unwrap();
    assert_eq!(rejected.review.reason.as_deref(), Some("masks too little"));
    let err = registry.enable(&id, "alice").unwrap_err();
    assert!(
        err.to_string().contains("is rejected, not approved"),
        "{err}"
    );
}

#[test]
fn a_library_for_another_manifest_is_refused_at_registration() {
    let (dir, mut registry, host) = setup();
    let folder = plugin_copy(dir.path(), "data-processor");
    let err = registry
        .register(
            &host,
            Registration::from_path(&folder, Some(&library("redactor"))).unwrap(),
            "alice",
        )
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "`name` is \"redactor\" in the library but \"data-processor\" in the manifest given"
        ),
        "{err}"
    );
    assert!(
        registry.list().unwrap().is_empty(),
        "nothing half-registered"
    );
}

#[test]
fn a_permission_path_that_climbs_out_of_its_folder_is_refused_at_registration() {
    let (dir, registry, _host) = setup();
    let folder = plugin_copy(dir.path(), "data-processor");
    let manifest = folder.join("plugin.json");
    let with_permissions = |permissions: &str| {
        let text = std::fs::read_to_string(example_manifest("data-processor")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["permissions"] = serde_json::from_str(permissions).unwrap();
        std::fs::write(&manifest, json.to_string()).unwrap();
    };

    with_permissions(r#"["process:data", "fs:read:${plugin_dir}/../../../../.."]"#);
    let err = Registration::from_path(&folder, None).unwrap_err();
    assert!(
        err.to_string().contains(
            "permission `fs:read:${plugin_dir}/../../../../..` leaves `${plugin_dir}` through `..`"
        ),
        "{err}"
    );
    assert!(registry.list().unwrap().is_empty());

    // Inside the folder, `..` is folded away before anyone reviews it.
    with_permissions(r#"["process:data", "fs:read:${plugin_dir}/x/../lookup.json"]"#);
    let registration = Registration::from_path(&folder, None).unwrap();
    assert_eq!(
        registration.manifest.permissions[1].to_string(),
        "fs:read:${plugin_dir}/lookup.json"
    );
}

#[test]
fn unknown_and_malformed_ids_are_named() {
    let (_dir, mut registry, _host) = setup();
    let err = registry.enable("nope@1.0.0", "alice").unwrap_err();
    assert!(err.to_string().contains("no plugin `nope@1.0.0`"), "{err}");
    let err = registry.get("nope").unwrap_err();
    assert!(
        err.to_string().contains("invalid plugin id `nope`"),
        "{err}"
    );
}

#[test]
fn api_keys_are_hashed_scoped_and_revocable() {
    let (_dir, mut registry, _host) = setup();
    let (key, token) = registry
        .create_key("ci", &[Scope::Read, Scope::Execute], "alice")
        .unwrap();
    assert!(token.starts_with(&format!("pb_{}_", key.id)));
    let found = registry.authenticate(&token).unwrap();
    assert!(found.allows(Scope::Read) && !found.allows(Scope::Write));
    let stored: String = {
        let db = rusqlite_free_read(registry.path());
        db
    };
    assert!(!stored.contains(&token[20..]), "the secret is not stored");
    assert!(registry.authenticate("pb_nothex_x").is_err());
    let mut wrong = token.clone();
    wrong.replace_range(token.len() - 4.., "0000");
    assert!(registry
        .authenticate(&wrong)
        .unwrap_err()
        .to_string()
        .contains("unknown API key"));
    assert!(
        registry.create_key("ci", &[Scope::Read], "alice").is_err(),
        "names are unique among active keys"
    );
    registry.revoke_key("ci", "alice").unwrap();
    let err = registry.authenticate(&token).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

/// The database file's bytes, as text, to check what is stored.
fn rusqlite_free_read(path: &std::path::Path) -> String {
    let mut text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    let wal = path.with_extension("db-wal");
    if let Ok(bytes) = std::fs::read(wal) {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

#[test]
fn concurrent_writers_lose_nothing() {
    let (dir, registry, host) = setup();
    let home = registry.home().to_owned();
    drop(registry);
    let folder = plugin_copy(dir.path(), "data-processor");
    {
        let mut registry = Registry::open(&home).unwrap();
        let id = registry
            .register(
                &host,
                Registration::from_path(&folder, None).unwrap(),
                "setup",
            )
            .unwrap()
            .id;
        registry.approve(&id, "setup", None).unwrap();
    }
    let threads: Vec<_> = (0..8)
        .map(|worker| {
            let home = home.clone();
            std::thread::spawn(move || {
                let mut registry = Registry::open(&home).unwrap();
                for round in 0..10 {
                    let actor = format!("worker{worker}");
                    if round % 2 == 0 {
                        registry.enable("data-processor@1.0.0", &actor).unwrap();
                    } else {
                        registry.disable("data-processor@1.0.0", &actor).unwrap();
                    }
                    registry
                        .create_key(&format!("k{worker}-{round}"), &[Scope::Read], &actor)
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let registry = Registry::open(&home).unwrap();
    assert!(registry.integrity_ok().unwrap());
    assert_eq!(registry.list_keys().unwrap().len(), 80);
    let toggles = registry
        .audit_log(Some("data-processor@1.0.0"))
        .unwrap()
        .iter()
        .filter(|e| e.action == "enable" || e.action == "disable")
        .count();
    assert_eq!(toggles, 80);
}
