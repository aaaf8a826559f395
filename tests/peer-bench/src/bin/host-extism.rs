//! The smallest host of the transform as an Extism plugin. Prints its resident
//! memory (see `plugbay_peer_bench::footprint`); the bench reads it and this
//! program's size.

use plugbay_peer_bench::{footprint, Artifacts, Extism, ExtismSource};

fn main() {
    plugbay_peer_bench::tune_allocator_if_asked();
    let artifacts = Artifacts::find().unwrap_or_else(|err| {
        eprintln!("host-extism: {err}");
        std::process::exit(1);
    });
    let wasm = std::fs::read(&artifacts.wasm).unwrap_or_else(|err| {
        eprintln!(
            "host-extism: cannot read {}: {err}",
            artifacts.wasm.display()
        );
        std::process::exit(1);
    });
    footprint(Extism::start(ExtismSource::Wasm(&wasm)));
}
