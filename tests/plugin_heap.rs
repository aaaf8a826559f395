//! A plugin's heap is its own: what a plugin built with `#[plugbay::plugin]`
//! allocates comes from the allocator the attribute declares for its library, not
//! from the host process's C allocator, so that neither one's settings nor its
//! fragmentation reach the other. A plugin that opts out (`global_allocator = false`)
//! allocates from the host's. A test binary of its own, so that nothing else
//! allocates in this process while it counts the C allocator's blocks.

use std::sync::Mutex;

use plugbay_host::{Batch, Host};
use plugbay_tests::fixture_spec;
use plugbay_tests::memory::Heap;

/// What each batch asks the plugin to keep, in MiB.
const HELD_MIB: u64 = 64;

/// One test at a time: each counts the process's memory.
static COUNTING: Mutex<()> = Mutex::new(());

fn host() -> Host {
    Host::new().with_data_dir(std::env::temp_dir().join("plugbay-heap-test"))
}

/// How many bytes the host's C allocator counts as in use more after the plugin
/// `name`, on a worker thread, has allocated and kept [`HELD_MIB`] MiB.
fn host_heap_growth(name: &str) -> i128 {
    let mut plugin = host()
        .start(fixture_spec(name))
        .expect("the fixture starts");
    let batch = Batch::from_records(&[HELD_MIB]).expect("the batch serializes");
    // A first call: the worker's and the output's own allocations, made once.
    plugin
        .process(&Batch::from_records::<u64>(&[]).expect("the batch serializes"))
        .expect("the empty batch is processed");
    let before = Heap::now().in_use;
    drop(plugin.process(&batch).expect("the batch is processed"));
    let after = Heap::now().in_use;
    plugin.shutdown().expect("the fixture shuts down");
    i128::from(after) - i128::from(before)
}

#[test]
#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu")),
    ignore = "counts glibc's blocks (mallinfo2)"
)]
fn a_plugin_allocates_from_its_own_heap_unless_it_opts_out() {
    let _counting = COUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let held = i128::from(HELD_MIB << 20);
    let own = host_heap_growth("hoarder");
    assert!(
        own < held / 8,
        "a plugin with the SDK's allocator grew the host's heap by {own} bytes while it held {held}"
    );
    let shared = host_heap_growth("hoarder-system");
    assert!(
        shared >= held,
        "a plugin built with `global_allocator = false` grew the host's heap by only {shared} bytes while it held {held}: its memory should come from the host's C allocator"
    );
}

/// A library the host no longer runs (a version retired by an upgrade) stays mapped,
/// and nothing of it allocates again: its allocator must give back what the
/// instance held when the instance is dropped, not when it next allocates.
#[test]
#[cfg(target_os = "linux")]
fn a_dropped_instance_gives_its_memory_back_to_the_system() {
    let _counting = COUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let held = HELD_MIB << 10;
    let mut plugin = host()
        .start(fixture_spec("hoarder"))
        .expect("the fixture starts");
    let batch = Batch::from_records(&[HELD_MIB]).expect("the batch serializes");
    drop(plugin.process(&batch).expect("the batch is processed"));
    let holding = Heap::now().resident_kib;
    plugin.shutdown().expect("the fixture shuts down");
    let after = Heap::now().resident_kib;
    let returned = holding.saturating_sub(after);
    assert!(
        returned >= held * 3 / 4,
        "resident memory fell by {returned} KiB when the instance that held {held} KiB was dropped ({holding} KiB before, {after} KiB after)"
    );
}
