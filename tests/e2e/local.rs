//! Local plugins run on the calling thread, which they confine for good: the calls
//! behave like a worker's, the thread is confined, and a second confinement is refused.

use plugbay_host::local::LocalPlugin;
use plugbay_host::{Batch, CallError, Failure, StartError, State};
use serde_json::{json, Value};

use crate::{example, fixture, host};

/// Runs `body` on a fresh thread (which the local plugins confine) and returns its result.
fn on_own_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(body)
        .join()
        .expect("the plugin thread ran")
}

#[test]
fn a_local_plugin_processes_on_the_calling_thread_and_confines_it() {
    let (host, _dir) = host();
    let (records, denied, status) = on_own_thread(move || {
        let mut plugin: LocalPlugin = host.start_local(example("data-processor")).unwrap();
        let output = plugin
            .process(&Batch::from_json(r#"[{"id": 1}, {"id": 2}]"#))
            .unwrap();
        assert_eq!(output.len(), Some(2));
        let records: Vec<Value> = output.records().unwrap();
        let denied = std::fs::read_dir("/etc").is_err();
        (records, denied, plugin.shutdown().unwrap())
    });
    assert!(records.iter().all(|r| r["processed"] == true));
    assert!(denied, "the calling thread is confined");
    assert!(std::fs::read_dir("/etc").is_ok(), "other threads stay free");
    assert_eq!(status.state, State::Unloaded);
    assert_eq!((status.batches, status.records_out), (1, 2));
}

#[test]
fn a_thread_is_confined_once() {
    let (host, _dir) = host();
    let (first, second) = (fixture("noop"), example("data-processor"));
    let err = on_own_thread(move || {
        let _first = host.start_local(first).unwrap();
        host.start_local(second).unwrap_err()
    });
    assert!(
        matches!(&err, StartError::AlreadyConfined { running, .. } if running == "noop@0.1.0"),
        "{err}"
    );
    assert!(err.to_string().contains("start_local_all"), "{err}");
}

#[test]
fn local_plugins_started_together_share_the_thread() {
    let (host, _dir) = host();
    let ids = on_own_thread(move || {
        let mut stages = host
            .start_local_all(vec![
                example("redactor"),
                example("enricher"),
                example("data-processor"),
            ])
            .unwrap();
        let mut batch =
            Batch::from_records(&[json!({"email": "a@b.example", "country": "FR"})]).unwrap();
        for stage in &mut stages {
            batch = stage.process(&batch).unwrap();
        }
        let records: Vec<Value> = batch.records().unwrap();
        assert_eq!(records[0]["email"], "[redacted]");
        assert_eq!(records[0]["processed"], true);
        stages.iter().map(|s| s.id().to_owned()).collect::<Vec<_>>()
    });
    assert_eq!(
        ids,
        ["redactor@1.0.0", "enricher@1.0.0", "data-processor@1.0.0"]
    );
}

#[test]
fn a_local_panic_fails_the_instance_and_keeps_the_input() {
    let (host, _dir) = host();
    on_own_thread(move || {
        let mut plugin = host
            .start_local(fixture("faulty").with_config(json!({"panic": "process"})))
            .unwrap();
        let input = Batch::from_json(r#"[{"keep": "me"}]"#);
        assert!(matches!(
            plugin.process(&input),
            Err(CallError::Panicked { .. })
        ));
        assert!(matches!(
            plugin.status().state,
            State::Failed(Failure::Panic(_))
        ));
        assert!(matches!(
            plugin.process(&input),
            Err(CallError::Failed { .. })
        ));
        assert_eq!(input.as_bytes(), br#"[{"keep": "me"}]"#);
    });
}

#[test]
fn a_local_init_error_is_a_start_error() {
    let (host, _dir) = host();
    let err = on_own_thread(move || {
        host.start_local(example("data-processor").with_config(json!({"feild": "x"})))
            .unwrap_err()
    });
    assert!(matches!(err, StartError::Init { .. }), "{err}");
}

#[test]
fn empty_batches_come_back_as_empty_arrays() {
    let (host, _dir) = host();
    let mut worker = host.start(fixture("noop")).unwrap();
    for input in ["[]", " [ ] "] {
        let output = worker.process(&Batch::from_json(input)).unwrap();
        assert_eq!((output.as_bytes(), output.len()), (&b"[]"[..], Some(0)));
    }
    let spec = example("data-processor");
    let output = on_own_thread(move || {
        let mut plugin = host.start_local(spec).unwrap();
        plugin.process(&Batch::from_json("[]")).unwrap()
    });
    assert_eq!(output.as_bytes(), b"[]");
    assert!(output.is_empty());
}
