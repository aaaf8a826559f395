//! What a plugin author meets: the errors that tell them what is wrong and what to
//! do, `plugbay new`, the persistent data store, and the round trip from a rebuild
//! to a new revision in the registry.

use plugbay_host::{CallError, Isolation, Permission, Policy, StartError};
use serde_json::json;

use crate::{example, host};

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
            text.contains(&format!(
                "; the sandbox denied it: the plugin requests `fs:read:${{plugin_dir}}/lookup.json` ({}), which was not granted; if its review withheld it, approve it again granting it (`plugbay review approve enricher@1.0.0 --grant …`)",
                std::path::absolute(&lookup).unwrap().display()
            )),
            "{isolation:?}: {text}"
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
