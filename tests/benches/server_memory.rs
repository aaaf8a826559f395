//! What `plugbay serve` holds in memory as it serves: resident memory against the
//! heap in use and what the C allocator keeps of freed blocks, every 10,000
//! requests up to 90,000, then after `malloc_trim(0)`. Not a criterion bench: it
//! measures the process once and prints a table (see [`plugbay_tests::memory`]).
//!
//! The server runs in this process with glibc's allocator defaults, as in the
//! `plugbay` binary. Four clients send a mix over keep-alive connections: `/health`, the plugin list,
//! one plugin, a batch of 10 records to `data-processor` (in a worker process) and
//! to `redactor` (on a worker thread of the server), an unknown id, a request
//! without a key, and a review body that is not an object.

mod common;

use plugbay_tests::memory::{Heap, Load};

fn main() {
    let total: usize = std::env::var("PLUGBAY_BENCH_REQUESTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(if common::quick() { 18_000 } else { 90_000 });
    let step = total / 9;
    let load = Load::start();
    let mut rows = vec![row("started", Heap::now())];
    load.run(1_000, 4);
    rows.push(row("1,000 requests (warm)", Heap::now()));
    for round in 1..=9 {
        load.run(step, 4);
        let served = 1_000 + round * step;
        rows.push(row(&format!("{} requests", thousands(served)), Heap::now()));
    }
    // The runtime's blocking threads (registry and plugin calls) end after 10 s
    // without work, and what each held with them.
    plugbay_tests::memory::settle();
    rows.push(row("12 s idle", Heap::now()));
    rows.push(row("then malloc_trim(0)", Heap::after_trim()));
    common::print_table(
        &format!("plugbay serve, memory as it serves ({})", common::machine()),
        &[
            "point",
            "resident",
            "anonymous",
            "files",
            "heap in use",
            "kept free by the allocator",
            "arenas",
            "threads",
        ],
        &rows,
    );
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

fn row(point: &str, heap: Heap) -> Vec<String> {
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64);
    vec![
        point.to_owned(),
        mib(heap.resident_kib * 1024),
        mib(heap.anonymous_kib * 1024),
        mib(heap.file_kib * 1024),
        mib(heap.in_use),
        mib(heap.kept_free),
        mib(heap.arenas),
        heap.threads.to_string(),
    ]
}
