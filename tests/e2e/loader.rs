//! Each way a library can fail to load has its own error, naming the path.

use plugbay_host::{LoadError, PluginSpec, StartError};
use plugbay_tests::{abi_fixtures, library};

use crate::{example, host};

fn load_error(spec: PluginSpec) -> LoadError {
    let (host, _dir) = host();
    match host.start(spec) {
        Err(StartError::Load(err)) => err,
        Err(other) => panic!("expected a load error, got {other}"),
        Ok(_) => panic!("expected a load error, but the plugin started"),
    }
}

#[test]
fn a_missing_file_is_named() {
    let err =
        load_error(example("data-processor").with_library("/nonexistent/libdata_processor.so"));
    assert!(matches!(err, LoadError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/libdata_processor.so"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libfake.so");
    std::fs::write(&path, "not an ELF file").unwrap();
    let err = load_error(example("data-processor").with_library(&path));
    assert!(matches!(err, LoadError::NotALibrary { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("libfake.so is not a loadable library"),
        "{err}"
    );
}

#[test]
fn a_library_without_root_module_is_not_a_plugin() {
    let err = load_error(example("data-processor").with_library(library("fixture-not-a-plugin")));
    assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err}");
    assert!(err.to_string().contains("is not a Plugbay plugin"), "{err}");
}

#[test]
fn a_library_with_another_layout_is_refused_with_the_decisive_lines() {
    let err = load_error(example("data-processor").with_library(&abi_fixtures().layout));
    assert!(matches!(err, LoadError::LayoutMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("libabi_fixture_layout"), "{text}");
    assert!(text.len() < 1500, "the summary is short: {text}");
    assert!(
        text.contains(
            "`PluginMod.panic_unwind` is `u32` in the plugin but `bool` in this host (mismatched type)"
        ),
        "the type and its field are named: {text}"
    );
    let api = plugbay_api::abi::API_VERSION;
    assert!(
        text.contains(&format!(
            "both built against plugbay-api {api}, so that version's plugin ABI was changed without a version bump"
        )),
        "{text}"
    );
    assert!(
        !text.contains(&format!("rebuild it against plugbay-api {api}")),
        "no advice to rebuild against the version it was built against: {text}"
    );
}

#[test]
fn a_library_built_against_another_api_version_names_both_versions() {
    let err = load_error(example("data-processor").with_library(&abi_fixtures().api_version));
    assert!(matches!(err, LoadError::ApiVersion { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("0.9.0") && text.contains(plugbay_api::abi::API_VERSION),
        "{text}"
    );
}

#[test]
fn a_library_built_for_another_plugin_abi_names_both_abi_versions() {
    // Plugins of ABI 0.2.0 logged without a target and were not told the host's log
    // level (and those of 0.1.0 returned no bytes for `[]` and a mark after their
    // output): this host refuses them before it calls anything.
    let err = load_error(example("data-processor").with_library(&abi_fixtures().abi_version));
    assert!(matches!(err, LoadError::AbiVersion { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("plugin ABI 0.2.0")
            && text.contains(&format!("plugin ABI {}", plugbay_api::abi::ABI_VERSION))
            && text.contains("rebuild it against plugbay-api"),
        "{text}"
    );
}

#[test]
fn a_library_whose_embedded_manifest_differs_is_refused() {
    // The redactor's library given with data-processor's manifest.
    let err = load_error(example("data-processor").with_library(library("redactor")));
    assert!(
        matches!(err, LoadError::ManifestMismatch { field: "name", .. }),
        "{err}"
    );

    // A manifest that lists fewer permissions than the library embeds.
    let mut spec = example("dedup");
    spec.manifest
        .permissions
        .retain(|p| p.to_string() != "write:data");
    let err = load_error(spec);
    assert!(
        matches!(
            err,
            LoadError::ManifestMismatch {
                field: "permissions",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("write:data"), "{err}");
}

#[test]
fn inspect_reads_the_embedded_manifest() {
    let (host, _dir) = host();
    let inspection = host.inspect(library("data-processor")).unwrap();
    assert_eq!(inspection.manifest.id(), "data-processor@1.0.0");
    assert_eq!(
        inspection.api_version.to_string(),
        plugbay_api::abi::API_VERSION
    );
    assert_eq!(
        inspection.confinement.level,
        plugbay_host::ConfinementLevel::Full
    );
}

#[test]
fn a_plugin_built_before_process_into_is_refused_with_its_abi_version() {
    // ABI 0.4.0 added `PluginInstance::process_into` at the end of the instance's
    // vtable. abi_stable's layout check would refuse the shorter vtable of a plugin
    // built before it; the ABI version refuses it first, with advice to rebuild.
    let fixtures = abi_fixtures();
    let spec = PluginSpec::from_manifest_file(&fixtures.before_process_into_manifest)
        .unwrap()
        .with_library(&fixtures.before_process_into);
    let err = load_error(spec);
    assert!(matches!(err, LoadError::AbiVersion { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("plugin ABI 0.3.0")
            && text.contains("plugin ABI 0.4.0")
            && text.contains("rebuild it against plugbay-api"),
        "{text}"
    );
}
