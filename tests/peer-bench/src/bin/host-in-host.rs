//! The smallest host of the in-host way: the transform called directly. Prints its
//! resident memory (see `plugbay_peer_bench::footprint`); the bench reads it and this
//! program's size.

fn main() {
    plugbay_peer_bench::tune_allocator_if_asked();
    plugbay_peer_bench::footprint(plugbay_peer_bench::InHost::new());
}
