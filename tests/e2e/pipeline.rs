//! Pipelines stream batches through chained plugins, in order, and a failure names
//! its stage and returns the batch.

use plugbay_host::{Batch, IoError, Pipeline, PipelineError};
use serde_json::{json, Value};

use crate::{example, fixture, host};

fn input(batches: usize, per_batch: usize) -> impl Iterator<Item = Result<Batch, IoError>> + Send {
    (0..batches).map(move |b| {
        let records: Vec<Value> = (0..per_batch)
            .map(
                |r| json!({"id": (b * per_batch + r) % 7, "email": format!("user{r}@example.com")}),
            )
            .collect();
        Ok(Batch::from_records(&records).unwrap())
    })
}

#[test]
fn three_stages_run_in_order() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("redactor")).unwrap(),
        host.start(example("dedup").with_config(json!({"key": "id"})))
            .unwrap(),
        host.start(example("data-processor")).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let mut out: Vec<Value> = Vec::new();
    let report = pipeline
        .run(input(5, 4), |batch| {
            out.extend(batch.records::<Value>()?);
            Ok(())
        })
        .unwrap();
    assert_eq!(report.batches, 5);
    assert_eq!(report.stages.len(), 3);
    assert_eq!(report.stages[0].records_out, 20);
    let ids: Vec<u64> = out.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        vec![0, 1, 2, 3, 4, 5, 6],
        "dedup kept first sightings, in order"
    );
    assert!(out
        .iter()
        .all(|r| r["email"] == "[redacted]" && r["processed"] == true));
}

#[test]
fn a_failing_stage_is_named_and_its_batch_returned() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("data-processor")).unwrap(),
        host.start(fixture("faulty").with_config(json!({"panic": "process"})))
            .unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let err = pipeline.run(input(3, 2), |_| Ok(())).unwrap_err();
    match err {
        PipelineError::Stage {
            stage,
            index,
            batch,
            ..
        } => {
            assert_eq!((stage, index), (1, 0));
            let records: Vec<Value> = batch.records().unwrap();
            assert_eq!(
                records[0]["processed"], true,
                "the batch the stage was given"
            );
        }
        other => panic!("expected a stage error, got {other}"),
    }
}

#[test]
fn input_errors_stop_the_pipeline() {
    let (host, _dir) = host();
    let mut pipeline = Pipeline::new(vec![host.start(example("data-processor")).unwrap()]);
    let input = input(2, 1).chain(std::iter::once(Err::<Batch, IoError>("bad line 3".into())));
    let mut seen = 0;
    let err = pipeline
        .run(input, |_| {
            seen += 1;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::Input { index: 2, .. }),
        "{err}"
    );
    assert_eq!(seen, 2);
}

#[test]
fn a_hanging_stage_times_out_and_the_run_stops() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("data-processor")).unwrap(),
        host.start(
            fixture("faulty")
                .with_config(json!({"hang": "process"}))
                .with_timeout(std::time::Duration::from_millis(300)),
        )
        .unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let started = std::time::Instant::now();
    let err = pipeline.run(input(6, 2), |_| Ok(())).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the deadline holds in a pipeline"
    );
    match err {
        PipelineError::Stage {
            stage,
            index,
            error,
            ..
        } => {
            assert_eq!((stage, index), (1, 0));
            assert!(
                matches!(error, plugbay_host::CallError::Timeout { .. }),
                "{error}"
            );
        }
        other => panic!("expected a stage timeout, got {other}"),
    }
    let stages = pipeline.into_stages();
    assert!(matches!(
        stages[1].status().state,
        plugbay_host::State::Failed(_)
    ));
    assert_eq!(
        stages[0].status().state,
        plugbay_host::State::Running,
        "the other stage goes on"
    );
}

/// Runs `input(batches, 2)` through `pipeline` and returns the error and how many
/// batches reached the sink.
fn run_to_error(pipeline: &mut Pipeline, batches: usize) -> (PipelineError, usize) {
    let mut delivered = 0;
    let err = pipeline
        .run(input(batches, 2), |_| {
            delivered += 1;
            Ok(())
        })
        .unwrap_err();
    (err, delivered)
}

/// Runs `input(batches, 2)` through `pipeline`, which must fail in a stage; returns
/// the stage, the batch number, the error, the batch, and how many batches reached
/// the sink.
fn run_to_stage_error(
    pipeline: &mut Pipeline,
    batches: usize,
) -> (usize, u64, plugbay_host::CallError, Batch, usize) {
    match run_to_error(pipeline, batches) {
        (
            PipelineError::Stage {
                stage,
                index,
                error,
                batch,
            },
            delivered,
        ) => (stage, index, error, batch, delivered),
        (other, _) => panic!("expected a stage error, got {other}"),
    }
}

#[test]
fn a_stage_that_fails_mid_run_has_processed_exactly_the_batches_before() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("data-processor")).unwrap(),
        host.start(fixture("faulty").with_config(json!({"fail": "process", "after": 3})))
            .unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let (stage, index, error, batch, delivered) = run_to_stage_error(&mut pipeline, 8);
    assert_eq!((stage, index, delivered), (1, 3, 3));
    assert!(
        matches!(error, plugbay_host::CallError::Plugin { .. }),
        "{error}"
    );
    let records: Vec<Value> = batch.records().unwrap();
    assert_eq!(
        records[0]["id"], 6,
        "batch 3 (ids 6, 7), as the stage got it"
    );
    assert_eq!(records[0]["processed"], true);

    let stages = pipeline.into_stages();
    assert_eq!(
        stages[1].status().batches,
        3,
        "no batch after the failed one"
    );
    assert_eq!(
        stages[1].status().state,
        plugbay_host::State::Running,
        "a plugin error does not fail the instance"
    );
    assert!(stages[0].status().batches >= 4);
}

#[test]
fn a_panic_mid_run_fails_only_its_stage() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(fixture("faulty").with_config(json!({"panic": "process", "after": 2})))
            .unwrap(),
        host.start(example("data-processor")).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let (err, delivered) = run_to_error(&mut pipeline, 6);
    assert!(
        matches!(
            &err,
            PipelineError::Stage {
                stage: 0,
                index: 2,
                error: plugbay_host::CallError::Panicked { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(delivered, 2, "the batches before the panic are delivered");
    let mut stages = pipeline.into_stages();
    assert!(matches!(
        stages[0].status().state,
        plugbay_host::State::Failed(_)
    ));
    assert_eq!(stages[1].status().batches, 2);
    let output = stages[1]
        .process(&Batch::from_json(r#"[{"id": 1}]"#))
        .expect("the other stage still takes calls");
    assert_eq!(output.len(), Some(1));
}

#[test]
fn a_failing_sink_stops_the_run_and_the_stages_run_again() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("redactor")).unwrap(),
        host.start(example("data-processor")).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let mut delivered = 0;
    let err = pipeline
        .run(input(20, 2), |_| {
            if delivered == 2 {
                return Err("disk full".into());
            }
            delivered += 1;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&err, PipelineError::Output { index: 2, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "writing pipeline output failed at batch 2: disk full"
    );

    let report = pipeline.run(input(4, 3), |_| Ok(())).unwrap();
    assert_eq!(report.batches, 4);
    assert!(report.stages.iter().all(|stage| stage.batches == 4));
    assert_eq!(report.stages[1].records_out, 12);
}

#[test]
fn a_stage_that_may_not_process_fails_on_the_first_batch_and_keeps_it() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("data-processor")).unwrap(),
        host.start(example("redactor").with_grants(vec![])).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let (stage, index, error, batch, delivered) = run_to_stage_error(&mut pipeline, 3);
    assert_eq!((stage, index, delivered), (1, 0, 0));
    assert!(error.to_string().contains("process:data"), "{error}");
    let records: Vec<Value> = batch.records().unwrap();
    assert_eq!(records.len(), 2, "the first input batch, untouched");
    assert!(records[0].get("processed").is_none());
    assert_eq!(pipeline.stages()[0].status().batches, 0, "nothing ran");
}

#[test]
fn a_timeout_still_delivers_the_batches_before_it() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(
            fixture("faulty")
                .with_config(json!({"hang": "process", "after": 1}))
                .with_timeout(std::time::Duration::from_millis(300)),
        )
        .unwrap(),
        // Still busy with batch 0 when stage 0 misses its deadline on batch 1.
        host.start(fixture("faulty").with_config(json!({"slow": "process", "ms": 1000})))
            .unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let (stage, index, error, batch, delivered) = run_to_stage_error(&mut pipeline, 4);
    assert_eq!((stage, index, delivered), (0, 1, 1));
    assert!(
        matches!(error, plugbay_host::CallError::Timeout { .. }),
        "{error}"
    );
    assert_eq!(batch.len(), Some(2));
    let stages = pipeline.into_stages();
    assert!(matches!(
        stages[0].status().state,
        plugbay_host::State::Failed(_)
    ));
    assert_eq!(
        stages[0].status().batches,
        1,
        "a stage that hangs keeps the count of what it did"
    );
    assert_eq!(stages[1].status().state, plugbay_host::State::Running);
    assert_eq!(stages[1].status().batches, 1);
}

#[test]
fn a_late_return_fails_its_stage_even_while_the_sink_is_busy_and_is_not_counted() {
    let (host, _dir) = host();
    let stages = vec![host
        .start(
            fixture("faulty")
                .with_config(json!({"slow": "process", "ms": 400, "after": 3}))
                .with_timeout(std::time::Duration::from_millis(300)),
        )
        .unwrap()];
    let mut pipeline = Pipeline::new(stages);
    let mut delivered = 0;
    let err = pipeline
        .run(input(6, 1), |_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            delivered += 1;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PipelineError::Stage {
                stage: 0,
                index: 3,
                error: plugbay_host::CallError::Timeout { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(delivered, 3);
    let status = pipeline.stages()[0].status();
    assert!(matches!(status.state, plugbay_host::State::Failed(_)));
    assert_eq!(
        status.batches, 3,
        "batch 3 came back late: its output was dropped, and it is not counted"
    );
}

#[test]
fn a_run_stopped_early_leaves_slow_stages_whole() {
    let (host, _dir) = host();
    let stages = vec![host
        .start(fixture("faulty").with_config(json!({"slow": "process", "ms": 150})))
        .unwrap()];
    let mut pipeline = Pipeline::new(stages);
    // Batches wait in the stage's queue when the sink fails: none of them starts
    // after that, and the stage is not taken for a stage that hangs.
    for _ in 0..3 {
        let err = pipeline
            .run(input(6, 1), |_| Err("disk full".into()))
            .unwrap_err();
        assert!(
            matches!(err, PipelineError::Output { index: 0, .. }),
            "{err}"
        );
        assert_eq!(
            pipeline.stages()[0].status().state,
            plugbay_host::State::Running
        );
    }
    let report = pipeline.run(input(2, 1), |_| Ok(())).unwrap();
    assert_eq!(report.batches, 2);
}

#[test]
fn a_panic_in_the_sink_or_the_input_leaves_the_stages_usable() {
    let (host, _dir) = host();
    let stages = vec![
        host.start(example("redactor")).unwrap(),
        host.start(example("data-processor")).unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let sink_panics = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pipeline.run(input(4, 1), |_| panic!("the sink panics"))
    }));
    assert!(sink_panics.is_err(), "the sink's panic reaches the caller");
    let input_panics = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let failing = input(4, 1).enumerate().map(|(i, batch)| {
            assert!(i < 2, "the input panics at batch 2");
            batch
        });
        pipeline.run(failing, |_| Ok(()))
    }));
    assert!(
        input_panics.is_err(),
        "the input's panic reaches the caller"
    );

    let report = pipeline.run(input(3, 2), |_| Ok(())).unwrap();
    assert_eq!(report.batches, 3);
    let mut stages = pipeline.into_stages();
    let output = stages[1]
        .process(&Batch::from_json(r#"[{"id": 1}]"#))
        .unwrap();
    assert_eq!(output.len(), Some(1));
    for stage in stages {
        stage.shutdown().expect("each stage cleans up");
    }
}

#[test]
fn a_failed_run_does_not_wait_for_a_slow_input() {
    let (host, _dir) = host();
    let stages = vec![host
        .start(fixture("faulty").with_config(json!({"fail": "process"})))
        .unwrap()];
    let mut pipeline = Pipeline::new(stages);
    // One batch, then an input that takes 5 s to say it has no more (stdin from a
    // slow producer).
    let slow = input(1, 2).chain(std::iter::from_fn(|| {
        std::thread::sleep(std::time::Duration::from_secs(5));
        None
    }));
    let started = std::time::Instant::now();
    let err = pipeline.run(slow, |_| Ok(())).unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::Stage {
                stage: 0,
                index: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the failure is reported without waiting for the input ({:?})",
        started.elapsed()
    );
}

#[test]
fn a_panicking_sink_waits_for_the_stages_and_the_next_run_is_right() {
    let (host, _dir) = host();
    // The sink panics on batch 0 once the stage has had time to take batch 1, which
    // waits in its queue: a stage between calls would leave the run at once instead,
    // and a loaded machine can keep its thread off the core for a while.
    let sink_panics = |pipeline: &mut Pipeline| {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pipeline.run(input(3, 1), |_| {
                std::thread::sleep(std::time::Duration::from_millis(150));
                panic!("the sink panics")
            })
        }));
        assert!(run.is_err(), "the sink's panic reaches the caller");
    };

    // A stage that hangs on batch 1: the panic goes on once its deadline has passed
    // and it is failed, so the next run cannot wait on it.
    let mut hanging = Pipeline::new(vec![host
        .start(
            fixture("faulty")
                .with_config(json!({"hang": "process", "after": 1}))
                .with_timeout(std::time::Duration::from_millis(300)),
        )
        .unwrap()]);
    sink_panics(&mut hanging);
    let status = hanging.stages()[0].status();
    assert!(
        matches!(status.state, plugbay_host::State::Failed(_)),
        "{:?}",
        status.state
    );
    assert_eq!(status.batches, 1);
    let (stage, index, error, _, _) = run_to_stage_error(&mut hanging, 2);
    assert_eq!((stage, index), (0, 0));
    assert!(
        matches!(error, plugbay_host::CallError::Failed { .. }),
        "{error}"
    );

    // A stage that fails from batch 1 on: the next run gets its own answer, not
    // the one the panicked run left.
    let mut failing = Pipeline::new(vec![host
        .start(fixture("faulty").with_config(json!({"fail": "process", "after": 1})))
        .unwrap()]);
    sink_panics(&mut failing);
    assert_eq!(failing.stages()[0].status().batches, 1);
    let (stage, index, error, _, delivered) = run_to_stage_error(&mut failing, 3);
    assert_eq!((stage, index, delivered), (0, 0, 0));
    assert!(
        matches!(error, plugbay_host::CallError::Plugin { .. }),
        "{error}"
    );
}

#[test]
fn a_timeout_stops_the_stages_before_it_at_once() {
    let (host, _dir) = host();
    let ms = |ms| std::time::Duration::from_millis(ms);
    let stages = vec![
        host.start(fixture("faulty").with_config(json!({"slow": "process", "ms": 400})))
            .unwrap(),
        // Takes batch 1 at about 800 ms and misses its deadline at about 1.3 s.
        host.start(
            fixture("faulty")
                .with_config(json!({"hang": "process", "after": 1}))
                .with_timeout(ms(500)),
        )
        .unwrap(),
        // Delivers batch 0 at about 2.9 s: the run lasts until then.
        host.start(
            fixture("faulty")
                .with_config(json!({"slow": "process", "ms": 2500}))
                .with_timeout(ms(10_000)),
        )
        .unwrap(),
    ];
    let mut pipeline = Pipeline::new(stages);
    let (stage, index, _, _, delivered) = run_to_stage_error(&mut pipeline, 8);
    assert_eq!((stage, index, delivered), (1, 1, 1));
    // Stage 0 was on batch 3 (1.2–1.6 s) when stage 1 missed its deadline: it
    // finishes that batch and starts no other, though the run goes on to 2.9 s.
    assert_eq!(pipeline.stages()[0].status().batches, 4);
}
