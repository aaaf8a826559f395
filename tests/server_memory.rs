//! The server does not leak: the heap in use stays the same however many requests
//! it serves (a test binary of its own, so that nothing else allocates in this
//! process while it counts). Resident memory may grow meanwhile, as the allocator
//! keeps freed blocks for reuse and each of the runtime's threads holds some state
//! while it lives; `benches/server_memory.rs` shows how much.

use plugbay_tests::memory::{settle, Heap, Load};

#[test]
fn the_heap_in_use_does_not_grow_with_the_requests_served() {
    let load = Load::start();
    // Warm up: every path, plugin instance, pooled connection and cache exists.
    let statuses = load.run(2_000, 4);
    assert_eq!(statuses, [200, 200, 200, 200, 200, 404, 401, 400]);
    // Both measures are taken when the runtime's idle threads have ended, so that
    // they count the same threads.
    settle();
    let before = Heap::now();
    load.run(8_000, 4);
    settle();
    let after = Heap::now();
    // A leak of 32 bytes a request would be 256 KiB here.
    let grown = after.in_use.saturating_sub(before.in_use);
    assert!(
        grown < 256 << 10,
        "the heap in use grew by {grown} bytes over 8,000 requests: {before:?} then {after:?}"
    );
}
