//! The lifecycle: init, process, cleanup; and every way a plugin can misbehave,
//! each with its own error, after which the same host still runs the examples.

use std::time::{Duration, Instant};

use plugbay_host::{Batch, CallError, ErrorKind, Failure, PluginHandle, StartError, State};
use serde_json::{json, Value};

use crate::{example, fixture, host};

fn records(batch: &Batch) -> Vec<Value> {
    batch.records().unwrap()
}

/// The examples still work on `host` (after a misbehaving plugin).
fn examples_still_run(host: &plugbay_host::Host) {
    let mut plugin = host.start(example("data-processor")).unwrap();
    let output = plugin.process(&Batch::from_json(r#"[{"id": 1}]"#)).unwrap();
    assert_eq!(records(&output)[0]["processed"], json!(true));
    plugin.shutdown().unwrap();
}

#[test]
fn data_processor_marks_records_and_takes_config_from_init() {
    let (host, _dir) = host();
    let mut plugin = host.start(example("data-processor")).unwrap();
    assert_eq!(plugin.status().state, State::Initialized);
    let input = Batch::from_records(&[json!({"id": 1}), json!({"id": 2, "name": "b"})]).unwrap();
    let output = plugin.process(&input).unwrap();
    assert_eq!(output.len(), Some(2));
    let out = records(&output);
    assert_eq!(out[1]["name"], "b");
    assert_eq!(out[0]["processed"], true);
    // The seed's record: `processed: true` and an ISO 8601 `timestamp` in UTC.
    let timestamp = out[0]["timestamp"].as_str().unwrap();
    let stamped = humantime::parse_rfc3339(timestamp).unwrap();
    assert!(timestamp.ends_with('Z') && timestamp.len() == "2026-11-25T15:42:39.863Z".len());
    assert!(
        stamped > std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    );
    assert_eq!(plugin.status().state, State::Running);
    let status = plugin.shutdown().unwrap();
    assert_eq!(status.state, State::Unloaded);
    assert_eq!((status.batches, status.records_out), (1, 2));

    let mut custom = host
        .start(example("data-processor").with_config(json!({"field": "done"})))
        .unwrap();
    let out = records(&custom.process(&input).unwrap());
    assert_eq!(out[0]["done"], true);
    assert!(out[0].get("processed").is_none());
    assert!(
        out[0]["timestamp"].is_string(),
        "defaults stay for fields not given"
    );

    let mut millis = host
        .start(example("data-processor").with_config(
            json!({"timestamp_field": "processed_at", "timestamp_format": "epoch_millis"}),
        ))
        .unwrap();
    let out = records(&millis.process(&input).unwrap());
    assert!(out[0]["processed_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(out[0].get("timestamp").is_none());
}

#[test]
fn bad_input_is_the_plugins_error_and_the_instance_goes_on() {
    let (host, _dir) = host();
    let mut plugin = host.start(example("data-processor")).unwrap();
    let bad = Batch::from_json("[1, 2]");
    match plugin.process(&bad) {
        Err(CallError::Plugin { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::INVALID_INPUT, "{error}")
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
    assert_eq!(bad.as_bytes(), b"[1, 2]", "the caller keeps its batch");
    plugin.process(&Batch::from_json("[{}]")).unwrap();
}

#[test]
fn invalid_config_fails_init_with_the_field_named() {
    let (host, _dir) = host();
    let err = host
        .start(example("data-processor").with_config(json!({"feild": "x"})))
        .unwrap_err();
    assert!(matches!(err, StartError::Init { .. }), "{err}");
    assert!(err.to_string().contains("feild"), "{err}");
}

#[test]
fn a_panic_in_init_is_an_error_and_the_host_goes_on() {
    let (host, _dir) = host();
    let err = host
        .start(fixture("faulty").with_config(json!({"panic": "init"})))
        .unwrap_err();
    assert!(matches!(err, StartError::InitPanicked { .. }), "{err}");
    assert!(
        err.to_string().contains("deliberate panic in init"),
        "{err}"
    );
    examples_still_run(&host);
}

#[test]
fn a_panic_in_process_marks_the_instance_failed_and_keeps_the_input() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(fixture("faulty").with_config(json!({"panic": "process"})))
        .unwrap();
    let input = Batch::from_json(r#"[{"keep": "me"}]"#);
    match plugin.process(&input) {
        Err(CallError::Panicked { message, .. }) => {
            assert!(message.contains("deliberate panic in process"))
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert!(matches!(
        plugin.status().state,
        State::Failed(Failure::Panic(_))
    ));
    assert!(matches!(
        plugin.process(&input),
        Err(CallError::Failed { .. })
    ));
    assert_eq!(input.as_bytes(), br#"[{"keep": "me"}]"#);
    drop(plugin);
    examples_still_run(&host);
}

#[test]
fn a_panic_in_cleanup_is_an_error() {
    let (host, _dir) = host();
    let plugin = host
        .start(fixture("faulty").with_config(json!({"panic": "cleanup"})))
        .unwrap();
    let err = plugin.shutdown().unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Panicked {
                hook: plugbay_host::Hook::Cleanup,
                ..
            }
        ),
        "{err}"
    );
    examples_still_run(&host);
}

#[test]
fn a_plugin_error_leaves_the_instance_running() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(fixture("faulty").with_config(json!({"fail": "process"})))
        .unwrap();
    let err = plugin.process(&Batch::from_json("[]")).unwrap_err();
    assert!(matches!(err, CallError::Plugin { .. }), "{err}");
    assert!(
        err.to_string().contains("deliberate failure in process"),
        "{err}"
    );
    assert!(!matches!(plugin.status().state, State::Failed(_)));
}

#[test]
fn a_hang_times_out_at_once_and_the_host_goes_on() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(
            fixture("faulty")
                .with_config(json!({"hang": "process"}))
                .with_timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let started = Instant::now();
    let err = plugin.process(&Batch::from_json("[{}]")).unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the caller is answered at the deadline"
    );
    assert!(matches!(
        plugin.status().state,
        State::Failed(Failure::Timeout(_))
    ));
    assert!(matches!(
        plugin.process(&Batch::from_json("[]")),
        Err(CallError::Failed { .. })
    ));
    drop(plugin);
    examples_still_run(&host);
}

#[test]
fn a_hang_in_init_times_out() {
    let (host, _dir) = host();
    let err = host
        .start(
            fixture("faulty")
                .with_config(json!({"hang": "init"}))
                .with_timeout(Duration::from_millis(300)),
        )
        .unwrap_err();
    assert!(matches!(err, StartError::Timeout { .. }), "{err}");
    examples_still_run(&host);
}

#[test]
fn invalid_json_output_is_caught() {
    let (host, _dir) = host();
    let spec = plugbay_host::PluginSpec::new(
        plugbay_tests::library("fixture-raw-output"),
        plugbay_host::Manifest::parse(
            r#"{"name":"raw-output","version":"0.1.0","description":"returns invalid JSON","author":"Plugbay tests","main":"fixture_raw_output","hooks":["init","process","cleanup"],"permissions":["process:data"]}"#,
        )
        .unwrap(),
    );
    let mut plugin = host.start(spec).unwrap();
    let err = plugin.process(&Batch::from_json("[]")).unwrap_err();
    assert!(matches!(err, CallError::InvalidOutput { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("raw-output@0.1.0 returned invalid output"),
        "{err}"
    );
    drop(plugin);
    examples_still_run(&host);
}

#[test]
fn each_misbehaviour_has_its_own_error() {
    let (host, _dir) = host();
    let start = |config: Value| {
        host.start(
            fixture("faulty")
                .with_config(config)
                .with_timeout(Duration::from_millis(300)),
        )
    };
    let mut kinds = std::collections::BTreeSet::new();
    kinds.insert(format!(
        "{:?}",
        std::mem::discriminant(&start(json!({"panic": "init"})).unwrap_err())
    ));
    kinds.insert(format!(
        "{:?}",
        std::mem::discriminant(&start(json!({"hang": "init"})).unwrap_err())
    ));
    kinds.insert(format!(
        "{:?}",
        std::mem::discriminant(&start(json!({"fail": "init"})).unwrap_err())
    ));
    assert_eq!(kinds.len(), 3);
    let mut call_kinds = std::collections::BTreeSet::new();
    for config in [
        json!({"panic": "process"}),
        json!({"hang": "process"}),
        json!({"fail": "process"}),
    ] {
        let mut plugin: PluginHandle = start(config).unwrap();
        let err = plugin.process(&Batch::from_json("[]")).unwrap_err();
        call_kinds.insert(format!("{:?}", std::mem::discriminant(&err)));
    }
    assert_eq!(call_kinds.len(), 3);
}

#[test]
fn dedup_keeps_state_across_batches_and_reports_at_cleanup() {
    let (host, _dir) = host();
    let mut plugin = host
        .start(example("dedup").with_config(json!({"key": "id"})))
        .unwrap();
    let first = plugin
        .process(&Batch::from_json(r#"[{"id": 1}, {"id": 2}, {"id": 1}]"#))
        .unwrap();
    assert_eq!(first.len(), Some(2));
    let second = plugin
        .process(&Batch::from_json(r#"[{"id": 2}, {"id": 3}]"#))
        .unwrap();
    assert_eq!(records(&second), vec![json!({"id": 3})]);
    plugin.shutdown().unwrap();
    let stats: Value =
        serde_json::from_slice(&host.store().get("dedup/stats").unwrap().unwrap()).unwrap();
    assert_eq!(stats, json!({"kept": 3, "dropped": 2, "distinct": 3}));
}

#[test]
fn redactor_masks_emails_and_phones_anywhere() {
    let (host, _dir) = host();
    let mut plugin = host.start(example("redactor")).unwrap();
    let input = Batch::from_json(
        r#"[{"note": "mail ann@example.com or call +1 (555) 123-4567", "nested": {"list": ["bob@x.org"]}, "n": 5}]"#,
    );
    let out = records(&plugin.process(&input).unwrap());
    assert_eq!(out[0]["note"], "mail [redacted] or call [redacted]");
    assert_eq!(out[0]["nested"]["list"][0], "[redacted]");
    assert_eq!(out[0]["n"], 5);
}

fn raw_output_spec() -> plugbay_host::PluginSpec {
    plugbay_host::PluginSpec::new(
        plugbay_tests::library("fixture-raw-output"),
        plugbay_host::Manifest::parse(
            r#"{"name":"raw-output","version":"0.1.0","description":"returns invalid JSON","author":"Plugbay tests","main":"fixture_raw_output","hooks":["init","process","cleanup"],"permissions":["process:data"]}"#,
        )
        .unwrap(),
    )
}

/// The error for output the host refused, which names the plugin.
fn refused_output(plugin: &mut PluginHandle, batch: &Batch) -> String {
    let err = plugin.process(batch).unwrap_err();
    assert!(matches!(err, CallError::InvalidOutput { .. }), "{err}");
    let text = err.to_string();
    let plugin_id = plugin.id().to_owned();
    assert!(
        text.starts_with(&format!(
            "plugin {plugin_id} returned invalid output from process: "
        )),
        "{text}"
    );
    text
}

#[test]
fn output_is_validated_whatever_the_plugin_claims_about_it() {
    use crate::{forged_garbage, raw_output_request, with_forged_mark};
    let (host, _dir) = host();
    let mut plugin = host.start(raw_output_spec()).unwrap();
    let mut refused =
        |bytes: &[u8]| refused_output(&mut plugin, &Batch::from_json(raw_output_request(bytes)));
    // ABI 0.1's mark, forged around bytes that are not JSON.
    let text = refused(&forged_garbage());
    assert!(text.contains("at line 1 column"), "{text}");
    assert!(!text.contains("281"), "{text}");
    let text = refused(b"[{\"name\": \"\xff\"}]");
    assert!(text.contains("invalid unicode code point"), "{text}");
    let text = refused(b"[\"\\ud800\"]");
    assert!(text.contains("hex escape"), "{text}");
    let text = refused(b"");
    assert!(text.contains("no bytes") && text.contains("`[]`"), "{text}");
    let text = refused(b"[1] [2]");
    assert!(text.contains("trailing characters"), "{text}");
    // A mark claiming no records after two: the host counts two.
    let output = plugin
        .process(&Batch::from_json(raw_output_request(&with_forged_mark(
            b"[{\"a\": 1}, {\"a\": 2}]",
            0,
        ))))
        .unwrap();
    assert_eq!(output.len(), Some(2));
    assert!(!output.is_empty());
    assert_eq!(records(&output), vec![json!({"a": 1}), json!({"a": 2})]);
    assert_eq!(plugin.status().records_out, 2);
    // Refused output is an ordinary error: the instance goes on.
    assert_eq!(plugin.status().state, State::Running);
    plugin.shutdown().unwrap();
    examples_still_run(&host);
}

#[test]
fn an_sdk_plugin_cannot_pass_off_broken_json_as_raw_values() {
    let (host, _dir) = host();
    let mut plugin = host.start(fixture("raw-value")).unwrap();
    let output = plugin
        .process(
            &Batch::from_records(&[json!({"raw": "{\"a\": [1, 2]}"}), json!({"raw": "3"})])
                .unwrap(),
        )
        .unwrap();
    assert_eq!(output.len(), Some(2));
    assert_eq!(records(&output), vec![json!({"a": [1, 2]}), json!(3)]);
    // serde_json's `RawValue::from_string` lets these through, and writes them as they
    // are; serde_json's parser refuses them.
    for (raw, why) in [
        ("\"\\ud800\"", "hex escape"),
        ("1e400", "number out of range"),
    ] {
        let batch = Batch::from_records(&[json!({"raw": "1"}), json!({"raw": raw})]).unwrap();
        let text = refused_output(&mut plugin, &batch);
        assert!(text.contains(why), "{raw}: {text}");
    }
    // No records out are `[]`, never zero bytes.
    let output = plugin.process(&Batch::from_json("[]")).unwrap();
    assert_eq!(output.as_bytes(), b"[]");
    assert_eq!(output.len(), Some(0));
    plugin.shutdown().unwrap();
}
