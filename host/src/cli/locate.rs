//! Finding what cargo built and where a plugin's files are: the library of a plugin
//! folder in cargo's target folder (`register DIR`), and the folder of a plugin's
//! `plugin.json` from its library in that target folder (`run LIBRARY`), so that
//! `${plugin_dir}` is the plugin's own folder and not `target/release`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use plugbay_host::manifest::library_file_name;
use plugbay_host::{read_manifest, Manifest};

/// How many folders above a library the search for its manifest goes (cargo puts
/// libraries in `target/PROFILE/` or `target/TRIPLE/PROFILE/`).
const LEVELS_ABOVE_LIBRARY: usize = 4;

/// How deep below a cargo workspace's root plugin folders are looked for
/// (`plugin.json`, `my-plugin/plugin.json`, `plugins/my-plugin/plugin.json`).
const WORKSPACE_DEPTH: usize = 2;

/// Where cargo puts the library `file_name` of a plugin crate in `plugin_dir`: the
/// `release` and `debug` folders of `$CARGO_TARGET_DIR`, and of the `target` folder
/// of `plugin_dir` or of the nearest folder above it that has one.
pub fn cargo_candidates(plugin_dir: &Path, file_name: &str) -> Vec<PathBuf> {
    let mut target_dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        target_dirs.push(PathBuf::from(dir));
    }
    let absolute = std::path::absolute(plugin_dir).unwrap_or_else(|_| plugin_dir.to_owned());
    if let Some(target) = absolute
        .ancestors()
        .map(|dir| dir.join("target"))
        .find(|target| target.is_dir())
    {
        target_dirs.push(target);
    }
    target_dirs
        .iter()
        .flat_map(|target| ["release", "debug"].map(|profile| target.join(profile).join(file_name)))
        .collect()
}

/// The libraries cargo built for a plugin crate in `plugin_dir` whose library file
/// is `file_name` ([`cargo_candidates`] that exist), newest first.
pub fn cargo_outputs(plugin_dir: &Path, file_name: &str) -> Vec<PathBuf> {
    let mut found: Vec<(SystemTime, PathBuf)> = cargo_candidates(plugin_dir, file_name)
        .into_iter()
        .filter_map(|path| {
            let modified = path.metadata().ok()?.modified().ok()?;
            path.is_file().then_some((modified, path))
        })
        .collect();
    found.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    found.dedup_by(|a, b| a.1 == b.1);
    found.into_iter().map(|(_, path)| path).collect()
}

/// The file name cargo gives the library of a crate whose `main` is written with
/// `-` (`data-processor` → `libdata_processor.so`), when it differs from the one the
/// manifest's `main` gives.
pub fn cargo_file_name(manifest: &Manifest) -> Option<String> {
    let main = &manifest.main;
    (!main.contains(['.', '/', '\\']) && main.contains('-'))
        .then(|| library_file_name(&main.replace('-', "_")))
}

/// Where the manifest of the plugin `manifest` describes is, for a library built by
/// cargo: the folder above the library that holds a `plugin.json` of the same name
/// and version, or, when the library is in a cargo target folder, the folder of the
/// workspace (or one of its crates, two levels deep at most) that holds one.
///
/// `Ok(None)` when none is found; an error listing them when several are.
pub fn manifest_folder(library: &Path, manifest: &Manifest) -> Result<Option<PathBuf>, String> {
    let library = std::path::absolute(library).unwrap_or_else(|_| library.to_owned());
    let matches = |dir: &Path| {
        read_manifest(&dir.join("plugin.json"))
            .is_ok_and(|found| found.name == manifest.name && found.version == manifest.version)
    };
    for dir in library.ancestors().skip(1).take(LEVELS_ABOVE_LIBRARY) {
        if matches(dir) {
            return Ok(Some(dir.to_owned()));
        }
        let is_target = dir.join("CACHEDIR.TAG").is_file()
            || dir.file_name().is_some_and(|name| name == "target");
        if !is_target {
            continue;
        }
        let Some(root) = dir.parent() else {
            return Ok(None);
        };
        let mut found = Vec::new();
        collect_plugin_dirs(root, WORKSPACE_DEPTH, &matches, &mut found);
        found.sort();
        return match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(format!(
                "several folders of {} hold a plugin.json for {}: {}",
                root.display(),
                manifest.id(),
                found
                    .iter()
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    Ok(None)
}

fn collect_plugin_dirs(
    dir: &Path,
    depth: usize,
    matches: &impl Fn(&Path) -> bool,
    found: &mut Vec<PathBuf>,
) {
    if matches(dir) {
        found.push(dir.to_owned());
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let skipped = name
            .to_str()
            .is_none_or(|name| name.starts_with('.') || name == "target" || name == "node_modules");
        if !skipped && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            collect_plugin_dirs(&entry.path(), depth - 1, matches, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, version: &str, main: &str) -> String {
        format!(
            r#"{{"name": "{name}", "version": "{version}", "description": "d", "author": "a",
                "main": "{main}", "hooks": ["process"], "permissions": ["process:data"]}}"#
        )
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_library_in_a_target_folder_finds_its_crates_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("Cargo.toml"), "[workspace]\n");
        write(&root.join("target/CACHEDIR.TAG"), "");
        let library = root.join("target/release/libshouter.so");
        write(&library, "");
        write(
            &root.join("plugins/shouter/plugin.json"),
            &manifest("shouter", "0.1.0", "shouter"),
        );
        write(
            &root.join("plugins/other/plugin.json"),
            &manifest("other", "0.1.0", "other"),
        );
        let parsed = Manifest::parse(&manifest("shouter", "0.1.0", "shouter")).unwrap();
        assert_eq!(
            manifest_folder(&library, &parsed).unwrap(),
            Some(root.join("plugins/shouter"))
        );
        let newer = Manifest::parse(&manifest("shouter", "0.2.0", "shouter")).unwrap();
        assert_eq!(manifest_folder(&library, &newer).unwrap(), None);

        write(
            &root.join("shouter/plugin.json"),
            &manifest("shouter", "0.1.0", "shouter"),
        );
        let err = manifest_folder(&library, &parsed).unwrap_err();
        assert!(err.contains("several folders"), "{err}");

        // A library beside its manifest needs no search.
        let beside = root.join("plugins/shouter/libshouter.so");
        write(&beside, "");
        assert_eq!(
            manifest_folder(&beside, &parsed).unwrap(),
            Some(root.join("plugins/shouter"))
        );
    }

    #[test]
    fn cargo_outputs_are_found_newest_first_and_names_follow_cargo() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plugin = root.join("plugins/shouter");
        write(&plugin.join("plugin.json"), "{}");
        let debug = root.join("target/debug").join(library_file_name("shouter"));
        let release = root
            .join("target/release")
            .join(library_file_name("shouter"));
        write(&release, "");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&debug, "");
        assert_eq!(
            cargo_outputs(&plugin, &library_file_name("shouter")),
            [debug, release]
        );
        assert!(cargo_outputs(&plugin, &library_file_name("other")).is_empty());

        let hyphen =
            Manifest::parse(&manifest("data-processor", "1.0.0", "data-processor")).unwrap();
        assert_eq!(
            cargo_file_name(&hyphen),
            Some(library_file_name("data_processor"))
        );
        let underscore =
            Manifest::parse(&manifest("data-processor", "1.0.0", "data_processor")).unwrap();
        assert_eq!(cargo_file_name(&underscore), None);
    }
}
