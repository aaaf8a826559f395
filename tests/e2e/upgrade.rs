//! Live upgrades through the host library: a running handle, and one stage of a
//! running pipeline, replaced by another version of their plugin, start before stop,
//! with the plugin's state carried over through the data store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use plugbay_host::{Batch, Host, IoError, Isolation, Pipeline, State, UpgradeError};
use serde_json::{json, Value};

use crate::{example, fixture, host};

fn records(batch: &Batch) -> Vec<Value> {
    batch.records().unwrap()
}

fn numbered(from: u64, count: u64) -> Batch {
    let records: Vec<Value> = (from..from + count).map(|n| json!({ "n": n })).collect();
    Batch::from_records(&records).unwrap()
}

fn hosts() -> Vec<(Host, tempfile::TempDir)> {
    vec![host(), crate::isolation::process_host()]
}

#[test]
fn a_running_handle_is_upgraded_and_its_state_carried_over() {
    for (host, _dir) in hosts() {
        let mut plugin = host.start(example("sequencer")).unwrap();
        let first = records(&plugin.process(&numbered(0, 3)).unwrap());
        assert_eq!(first[2]["seq"], 2);
        assert_eq!(first[2]["by"], "sequencer@1.0.0");
        let old_pid = plugin.status().pid;

        let upgrade = host
            .upgrade(&mut plugin, fixture("sequencer-next"))
            .unwrap();
        assert_eq!(
            (upgrade.from.as_str(), upgrade.to.as_str()),
            ("sequencer@1.0.0", "sequencer@2.0.0")
        );
        assert!(
            upgrade.cleanup_error.is_none(),
            "{:?}",
            upgrade.cleanup_error
        );
        assert_eq!(upgrade.previous.batches, 1);
        assert_eq!(upgrade.previous.state, State::Unloaded);
        assert_eq!(plugin.id(), "sequencer@2.0.0");

        // The old version's count, stored at its cleanup, goes on in the new one.
        let next = records(&plugin.process(&numbered(3, 2)).unwrap());
        assert_eq!(next[0]["seq"], 3);
        assert_eq!(next[1]["seq"], 4);
        assert_eq!(next[1]["by"], "sequencer@2.0.0");
        if let Some(pid) = old_pid {
            assert_ne!(plugin.status().pid, Some(pid));
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}/exe")).exists(),
                "the old worker process exited"
            );
        }
        plugin.shutdown().unwrap();
    }
}

#[test]
fn an_upgrade_to_a_version_whose_init_fails_leaves_the_old_one_serving() {
    for (host, _dir) in hosts() {
        let mut plugin = host.start(example("sequencer")).unwrap();
        plugin.process(&numbered(0, 5)).unwrap();
        let err = host
            .upgrade(&mut plugin, fixture("sequencer-broken"))
            .unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(matches!(err, UpgradeError::Start { .. }), "{text}");
        assert!(
            text.starts_with(
                "cannot upgrade sequencer@1.0.0 to sequencer@3.0.0: sequencer@3.0.0 did not start, so sequencer@1.0.0 serves on"
            ) && text.contains("sequencer@3.0.0 needs `shard` in its config"),
            "{text}"
        );
        // Untouched: the same instance, its count where it was.
        assert_eq!(plugin.id(), "sequencer@1.0.0");
        assert_eq!(plugin.status().state, State::Running);
        let out = records(&plugin.process(&numbered(5, 1)).unwrap());
        assert_eq!(out[0]["seq"], 5);
        assert_eq!(out[0]["by"], "sequencer@1.0.0");
        plugin.shutdown().unwrap();
    }
}

#[test]
fn an_upgrade_to_another_plugin_is_refused() {
    let (host, _dir) = host();
    let mut plugin = host.start(example("sequencer")).unwrap();
    let err = host
        .upgrade(&mut plugin, example("data-processor"))
        .unwrap_err();
    assert!(matches!(err, UpgradeError::OtherPlugin { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("an upgrade replaces a plugin with another version of the same name"),
        "{err}"
    );
    assert_eq!(plugin.id(), "sequencer@1.0.0");
}

/// A gate the input waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// Feeds a three-stage pipeline (`noop` → `sequencer` → `data-processor`) while
/// another thread upgrades its middle stage twice (1.0.0 → 2.0.0 → 1.0.0); every
/// record must come out once, in order, numbered without a gap.
///
/// The input flows without a pause while the upgrades happen in time; it waits only
/// where going on would leave a version with no batch: at the middle of the input
/// for the first upgrade, and 20 batches before its end for the second. The second
/// upgrade waits for 40 more batches after the first, which the middle gate always
/// leaves room for (an upgrader that waited for more than the input lets through
/// would wait for ever).
fn middle_stage_upgraded_twice(isolation: Isolation) {
    const BATCHES: u64 = 300;
    const PER_BATCH: u64 = 20;
    const FIRST_BY: u64 = BATCHES / 2;
    const SECOND_BY: u64 = BATCHES - 20;
    let (host, _dir) = match isolation {
        Isolation::Thread => host(),
        Isolation::Process => crate::isolation::process_host(),
    };
    let stages = vec![
        host.start(fixture("noop")).unwrap(),
        host.start(example("sequencer")).unwrap(),
        host.start(example("data-processor")).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let switch = pipeline.switch();
    let delivered = Arc::new(AtomicU64::new(0));
    let gates = Arc::new([Gate::default(), Gate::default()]);

    let upgrader = std::thread::spawn({
        let (host, delivered, gates) = (host.clone(), delivered.clone(), gates.clone());
        move || {
            let wait_for = |batches: u64| {
                while delivered.load(Ordering::SeqCst) < batches {
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            wait_for(40);
            let first = switch.upgrade(&host, 1, fixture("sequencer-next")).unwrap();
            gates[0].open();
            // At most `FIRST_BY` batches were delivered before the first gate opened.
            wait_for(delivered.load(Ordering::SeqCst) + 40);
            let second = switch.upgrade(&host, 1, example("sequencer")).unwrap();
            gates[1].open();
            (first, second)
        }
    });
    let input = {
        let gates = gates.clone();
        (0..BATCHES).map(move |index| {
            match index {
                FIRST_BY => gates[0].wait(),
                SECOND_BY => gates[1].wait(),
                _ => {}
            }
            Ok::<_, IoError>(numbered(index * PER_BATCH, PER_BATCH))
        })
    };
    let mut out: Vec<Value> = Vec::new();
    let mut versions_by_batch = Vec::new();
    let report = pipeline
        .run(input, |batch| {
            let batch = records(&batch);
            versions_by_batch.push(batch[0]["by"].as_str().unwrap().to_owned());
            assert!(
                batch.iter().all(|record| record["by"] == batch[0]["by"]),
                "a batch is processed by one version"
            );
            out.extend(batch);
            delivered.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    let (first, second) = upgrader.join().unwrap();

    assert_eq!(report.batches, BATCHES);
    assert_eq!(out.len() as u64, BATCHES * PER_BATCH);
    for (expected, record) in (0u64..).zip(&out) {
        assert_eq!(record["n"], expected, "every record once, in order");
        assert_eq!(
            record["seq"], expected,
            "numbered without a gap across versions"
        );
        assert_eq!(record["processed"], true);
    }
    // Three runs of versions, in order, each switched at a batch boundary.
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for version in &versions_by_batch {
        match runs.last_mut() {
            Some((last, count)) if *last == version.as_str() => *count += 1,
            _ => runs.push((version, 1)),
        }
    }
    let order: Vec<&str> = runs.iter().map(|(version, _)| *version).collect();
    assert_eq!(
        order,
        ["sequencer@1.0.0", "sequencer@2.0.0", "sequencer@1.0.0"],
        "{runs:?}"
    );
    assert_eq!(
        (first.from.as_str(), first.to.as_str()),
        ("sequencer@1.0.0", "sequencer@2.0.0")
    );
    assert_eq!(first.previous.batches, runs[0].1 as u64);
    assert_eq!(second.previous.batches, runs[1].1 as u64);
    assert!(first.cleanup_error.is_none() && second.cleanup_error.is_none());
    // The report counts what every version of the stage did.
    assert_eq!(report.stages[1].batches, BATCHES);
    assert_eq!(report.stages[1].plugin, "sequencer@1.0.0");
    assert_eq!(pipeline.stages()[1].status().batches, runs[2].1 as u64);
    for stage in pipeline.into_stages() {
        stage.shutdown().unwrap();
    }
}

#[test]
fn a_pipeline_fed_continuously_keeps_every_record_through_two_upgrades_of_a_stage() {
    middle_stage_upgraded_twice(Isolation::Thread);
}

#[test]
fn a_pipeline_of_worker_processes_keeps_every_record_through_two_upgrades_of_a_stage() {
    middle_stage_upgraded_twice(Isolation::Process);
}

#[test]
fn a_stage_upgrade_whose_init_fails_leaves_the_stage_serving() {
    let (host, _dir) = host();
    let mut pipeline = Pipeline::new(vec![host.start(example("sequencer")).unwrap()]);
    let switch = pipeline.switch();
    let err = switch
        .upgrade(&host, 0, fixture("sequencer-broken"))
        .unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Start { to, .. } if to == "sequencer@3.0.0"),
        "{err}"
    );
    let err = switch
        .upgrade(&host, 3, fixture("sequencer-next"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot upgrade stage 3 to sequencer@2.0.0: the pipeline has 1 stages (0 to 0)"
    );
    let mut out = Vec::new();
    pipeline
        .run((0..3).map(|b| Ok(numbered(b * 2, 2))), |batch| {
            out.extend(records(&batch));
            Ok(())
        })
        .unwrap();
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|r| r["by"] == "sequencer@1.0.0"));
    assert_eq!(switch.stage_ids(), ["sequencer@1.0.0"]);

    // Between runs, an upgrade asked for from another thread waits for the next run,
    // and happens before its first batch.
    let next = host.start(fixture("sequencer-next")).unwrap();
    let waiting = std::thread::spawn({
        let switch = switch.clone();
        move || switch.replace(0, next)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "no run, no switch");
    let mut out = Vec::new();
    pipeline
        .run((3..4).map(|b| Ok(numbered(b * 2, 2))), |batch| {
            out.extend(records(&batch));
            Ok(())
        })
        .unwrap();
    let upgrade = waiting.join().unwrap().unwrap();
    assert_eq!(upgrade.to, "sequencer@2.0.0");
    assert_eq!(out[0]["by"], "sequencer@2.0.0");
    assert_eq!(out[0]["seq"], 6);
    assert_eq!(pipeline.stages()[0].id(), "sequencer@2.0.0");
}
