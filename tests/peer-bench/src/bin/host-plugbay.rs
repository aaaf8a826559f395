//! The smallest host of `data-processor` through Plugbay (the `plugbay-host` library
//! without its optional features): `host-plugbay thread` or `host-plugbay process`.
//! Prints its resident memory and its children's (see
//! `plugbay_peer_bench::footprint`); the bench reads it and this program's size.

use plugbay_host::Isolation;
use plugbay_peer_bench::{bench_host, footprint, Artifacts, Plugbay};

fn main() {
    plugbay_peer_bench::tune_allocator_if_asked();
    let isolation = match std::env::args().nth(1).as_deref() {
        Some("thread") => Isolation::Thread,
        Some("process") => Isolation::Process,
        other => {
            eprintln!("host-plugbay: give the isolation, `thread` or `process` (got {other:?})");
            std::process::exit(2);
        }
    };
    let artifacts = Artifacts::find().unwrap_or_else(|err| {
        eprintln!("host-plugbay: {err}");
        std::process::exit(1);
    });
    let host = bench_host(isolation, &artifacts);
    footprint(Plugbay::start(&host, &artifacts, "Plugbay"));
}
