use plugbay::prelude::*;
use plugbay_api as plugbay;

#[derive(Default)]
#[plugbay::plugin(manifest = "manifests/valid.json")]
struct Tagger<T> {
    tag: T,
}

impl<T: Default + Send + 'static> Plugin for Tagger<T> {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

fn main() {}
