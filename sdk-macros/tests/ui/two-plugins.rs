// A library exports one plugin: a second `#[plugbay::plugin]` in the same crate is
// an error that says so, not a clash of exported symbols.
use plugbay::prelude::*;
use plugbay_api as plugbay;

#[derive(Default)]
#[plugbay::plugin(manifest = "manifests/valid.json")]
struct Tagger;

impl Plugin for Tagger {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

mod other {
    use plugbay::prelude::*;
    use plugbay_api as plugbay;

    #[derive(Default)]
    #[plugbay::plugin(manifest = "manifests/valid.json")]
    pub struct Counter;

    impl Plugin for Counter {
        type Input = String;
        type Output = String;

        fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
            Ok(batch)
        }
    }
}

fn main() {}
