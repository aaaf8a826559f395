// A plugin that keeps its crate's own `#[global_allocator]`: with
// `global_allocator = false` the attribute declares none, so the two do not clash.
use plugbay::prelude::*;
use plugbay_api as plugbay;

#[global_allocator]
static ALLOCATOR: std::alloc::System = std::alloc::System;

#[derive(Default)]
#[plugbay::plugin(manifest = "manifests/minimal.json", global_allocator = false)]
struct Tagger;

impl Plugin for Tagger {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

fn main() {}
