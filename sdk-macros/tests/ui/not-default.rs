use plugbay::prelude::*;
use plugbay_api as plugbay;

#[plugbay::plugin(manifest = "manifests/valid.json")]
struct Tagger;

impl Plugin for Tagger {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

fn main() {}
