//! Live upgrades in `plugbay serve`: batches sent to a plugin name follow its current
//! version; an upgrade (over REST, or in the registry by another process) switches it
//! at a batch boundary, start before stop, under load, without a failed request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::{call, client, Api};

/// Sends `count` records tagged with `client` to `path`; returns the records back.
fn send(api: &Api, path: &str, client: u64, from: u64, count: u64) -> super::Reply {
    let records: Vec<Value> = (from..from + count)
        .map(|i| json!({ "client": client, "i": i }))
        .collect();
    api.call(
        Method::POST,
        path,
        Some(&api.keys.execute),
        Some(Value::from(records)),
    )
}

fn audit(api: &Api, action: &str) -> Vec<String> {
    api.registry()
        .audit_log(None)
        .unwrap()
        .into_iter()
        .filter(|event| event.action == action)
        .map(|event| event.detail.unwrap_or_default())
        .collect()
}

#[test]
fn a_name_under_load_from_concurrent_clients_is_upgraded_without_a_failed_request() {
    const CLIENTS: u64 = 4;
    /// The clients send `CLIENTS × BATCHES` batches in all before the upgrade is asked
    /// for, and each sends at least `BATCHES` more after it has answered: so the load
    /// goes on across the switch however long the new version takes to start.
    const BATCHES: u64 = 15;
    /// A bound for a client whose upgrade never answers.
    const MAX_BATCHES: u64 = 5_000;
    const PER_BATCH: u64 = 5;
    let api = Api::start();
    let v1 = api.ready("sequencer");
    let v2 = api.ready("fixture-sequencer-next");
    // The first version enabled serves the name; enabling the next does not switch.
    let current = api.registry().current("sequencer").unwrap().unwrap();
    assert_eq!(current.id, v1);

    let sent = Arc::new(AtomicUsize::new(0));
    let upgraded = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_id| {
            let (base, key) = (api.base.clone(), api.keys.execute.clone());
            let (sent, upgraded) = (sent.clone(), upgraded.clone());
            std::thread::spawn(move || {
                let http = client();
                let mut replies = Vec::new();
                let mut after = 0;
                for batch in 0..MAX_BATCHES {
                    if after >= BATCHES {
                        break;
                    }
                    let records: Vec<Value> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
                        .map(|i| json!({ "client": client_id, "i": i }))
                        .collect();
                    let reply = call(
                        &http,
                        &base,
                        Method::POST,
                        "/plugins/sequencer/process",
                        Some(&key),
                        Some(Value::from(records).to_string().into_bytes()),
                    );
                    sent.fetch_add(1, Ordering::SeqCst);
                    if upgraded.load(Ordering::SeqCst) {
                        after += 1;
                    }
                    replies.push(reply);
                }
                replies
            })
        })
        .collect();
    while sent.load(Ordering::SeqCst) < (CLIENTS * BATCHES) as usize {
        std::thread::sleep(Duration::from_millis(2));
    }
    let upgrade = api.call(
        Method::POST,
        &format!("/plugins/{v2}/upgrade"),
        Some(&api.keys.write),
        None,
    );
    upgraded.store(true, Ordering::SeqCst);
    assert_eq!(upgrade.status, 200, "{upgrade:?}");
    assert_eq!(upgrade.body["from"], v1.as_str());
    assert_eq!(upgrade.body["to"], v2.as_str());
    assert_eq!(upgrade.body["changed"], true);
    let retired = upgrade.body["retired"].as_array().unwrap();
    assert_eq!(retired.len(), 1, "{upgrade:?}");
    assert_eq!(retired[0]["id"], v1.as_str());
    assert_eq!(retired[0]["state"], "unloaded");
    assert!(retired[0]["batches"].as_u64().unwrap() > 0);

    let mut seqs = Vec::new();
    let mut by_version: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (client_id, handle) in (0u64..).zip(clients) {
        let replies = handle.join().unwrap();
        assert!(replies.len() as u64 >= BATCHES, "{} batches", replies.len());
        for (batch, reply) in (0u64..).zip(&replies) {
            assert_eq!(reply.status, 200, "no failed request: {reply:?}");
            let records = reply.body.as_array().unwrap();
            assert_eq!(records.len() as u64, PER_BATCH);
            for (offset, record) in (0u64..).zip(records) {
                // Each client's own records, once each, in order.
                assert_eq!(record["client"], client_id);
                assert_eq!(record["i"], batch * PER_BATCH + offset);
                let seq = record["seq"].as_u64().unwrap();
                seqs.push(seq);
                by_version
                    .entry(record["by"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(seq);
            }
        }
    }
    // Every record numbered once: the count went on across the switch, none lost,
    // none counted twice.
    seqs.sort_unstable();
    let total = seqs.len() as u64;
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    // The old version cleaned up (and stored its count) before the new one's first batch.
    let old = &by_version[&v1];
    let new = &by_version[&v2];
    assert!(!old.is_empty() && !new.is_empty(), "{by_version:?}");
    assert!(old.iter().max() < new.iter().min(), "{by_version:?}");

    assert_eq!(api.registry().current("sequencer").unwrap().unwrap().id, v2);
    assert!(audit(&api, "upgrade").contains(&format!("current version of sequencer: {v1} → {v2}")));
}

#[test]
fn an_upgrade_over_rest_to_a_version_whose_init_fails_leaves_the_old_one_serving() {
    let api = Api::start();
    let v1 = api.ready("sequencer");
    let broken = api.ready("fixture-sequencer-broken");
    let first = send(&api, "/plugins/sequencer/process", 0, 0, 3);
    assert_eq!(first.status, 200, "{first:?}");
    let reply = api.call(
        Method::POST,
        &format!("/plugins/{broken}/upgrade"),
        Some(&api.keys.write),
        None,
    );
    reply.assert_error(500, "upgrade_failed");
    assert!(
        reply.message().starts_with(&format!(
            "cannot upgrade {v1} to {broken}: {broken} did not start, so {v1} stays current"
        )) && reply
            .message()
            .contains("sequencer@3.0.0 needs `shard` in its config"),
        "{reply:?}"
    );
    assert_eq!(api.registry().current("sequencer").unwrap().unwrap().id, v1);
    // The same instance serves on: its count goes on.
    let next = send(&api, "/plugins/sequencer/process", 0, 3, 1);
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body[0]["seq"], 3);
    assert_eq!(next.body[0]["by"], v1.as_str());
    let failures = audit(&api, "upgrade-failed");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(&format!("{v1} stays current")),
        "{failures:?}"
    );

    // Only an approved, enabled version can become current.
    let registry_reply = api.call(
        Method::PUT,
        &format!("/plugins/{broken}/disable"),
        Some(&api.keys.write),
        None,
    );
    assert_eq!(registry_reply.status, 200);
    api.call(
        Method::POST,
        &format!("/plugins/{broken}/upgrade"),
        Some(&api.keys.write),
        None,
    )
    .assert_error(409, "disabled");
    api.call(
        Method::POST,
        "/plugins/sequencer@9.9.9/upgrade",
        Some(&api.keys.write),
        None,
    )
    .assert_error(404, "not_found");
    api.call(
        Method::POST,
        "/plugins/unknown-name/process",
        Some(&api.keys.execute),
        Some(json!([{}])),
    )
    .assert_error(404, "not_found");
}

#[test]
fn an_upgrade_made_in_the_registry_is_followed_at_the_next_batch_and_undone_if_it_fails() {
    let api = Api::start();
    let v1 = api.ready("sequencer");
    let v2 = api.ready("fixture-sequencer-next");
    let broken = api.ready("fixture-sequencer-broken");
    assert_eq!(
        send(&api, "/plugins/sequencer/process", 0, 0, 2).status,
        200
    );

    // `plugbay upgrade sequencer@2.0.0`, as another process would do it.
    let switched = api.registry().upgrade(&v2, "operator").unwrap();
    assert_eq!(switched.from.as_deref(), Some(v1.as_str()));
    let reply = send(&api, "/plugins/sequencer/process", 0, 2, 2);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body[0]["by"], v2.as_str());
    assert_eq!(
        reply.body[0]["seq"], 2,
        "the old version's count carried over"
    );

    // A version that does not start: the server keeps the one it serves, and makes it
    // current again; the batch is served, not failed.
    api.registry().upgrade(&broken, "operator").unwrap();
    let reply = send(&api, "/plugins/sequencer/process", 0, 4, 1);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body[0]["by"], v2.as_str());
    assert_eq!(reply.body[0]["seq"], 4);
    assert_eq!(api.registry().current("sequencer").unwrap().unwrap().id, v2);
    let failures = audit(&api, "upgrade-failed");
    assert!(
        failures.iter().any(
            |detail| detail.starts_with(&format!("{broken} did not start"))
                && detail.ends_with(&format!("{v2} stays current"))
        ),
        "{failures:?}"
    );
}
