//! Instructions per call, for `valgrind --tool=callgrind`, which counts them whatever
//! else the machine runs (figures from a shared, busy machine drift by more than the
//! effects of small changes). Not a criterion bench: it runs a fixed number of calls
//! in functions of their own, to be measured with callgrind's `--toggle-collect`:
//!
//! ```text
//! cargo bench -p plugbay-tests --bench instructions --no-run
//! valgrind --tool=callgrind --toggle-collect='instructions::measured_*' \
//!     target/release/deps/instructions-HASH [one]
//! callgrind_annotate --inclusive=yes callgrind.out.PID
//! ```
//!
//! With `one`, the batch is one record (`[{"id":1}]`); without, it is empty. Each
//! `measured_*` function makes [`CALLS`] calls: the instructions callgrind
//! counts in it, divided by [`CALLS`], are one call's. Under valgrind the plugin
//! starts with whatever confinement the kernel gives a program valgrind runs
//! (`SandboxMode::AllowDegraded`): confinement costs nothing per call.

mod common;

use std::hint::black_box;

use plugbay_host::local::LocalPlugin;
use plugbay_host::sandbox::SandboxMode;
use plugbay_host::{Batch, PluginHandle};

use common::{fixture, LocalThread};

/// Calls per measured function.
const CALLS: u64 = 10_000;

/// Direct calls on the calling thread.
#[inline(never)]
fn measured_direct(plugin: &mut LocalPlugin, batch: &Batch) {
    for _ in 0..CALLS {
        black_box(plugin.process(black_box(batch)).expect("noop processes"));
    }
}

/// Round trips to a worker thread: the caller's side (the worker's instructions are
/// its thread's, outside this function).
#[inline(never)]
fn measured_worker(plugin: &mut PluginHandle, batch: &Batch) {
    for _ in 0..CALLS {
        black_box(plugin.process(black_box(batch)).expect("noop processes"));
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--bench") {
        // Run by `cargo bench`: nothing to time here.
        println!("instructions: run this program under valgrind --tool=callgrind (see its docs)");
        return;
    }
    let host = common::host().with_sandbox(SandboxMode::AllowDegraded);
    // `one`: a batch of one record; anything else (or nothing): an empty batch.
    let batch = match std::env::args().nth(1).as_deref() {
        Some("one") => Batch::from_json(r#"[{"id":1}]"#),
        _ => Batch::from_json("[]"),
    };
    {
        let local = LocalThread::start(host.clone(), vec![fixture("noop")]);
        let direct = batch.clone();
        local.run(move |plugins| {
            // Warm: the first calls fault in code and buffers.
            plugins[0].process(&direct).expect("noop processes");
            measured_direct(&mut plugins[0], &direct)
        });
        let mut plugin = host.start(fixture("noop")).expect("noop starts");
        plugin.process(&batch).expect("noop processes");
        measured_worker(&mut plugin, &batch);
        plugin.shutdown().expect("noop shuts down");
    }
    println!("{CALLS} calls per measured function");
}
