//! The smallest host of the transform as a subprocess plugin over JSON-lines pipes.
//! Prints its resident memory and the plugin's (see `plugbay_peer_bench::footprint`);
//! the bench reads it and this program's size.

use plugbay_peer_bench::{footprint, Artifacts, Subprocess};

fn main() {
    plugbay_peer_bench::tune_allocator_if_asked();
    let artifacts = Artifacts::find().unwrap_or_else(|err| {
        eprintln!("host-subprocess: {err}");
        std::process::exit(1);
    });
    footprint(Subprocess::start(&artifacts.subprocess_plugin));
}
