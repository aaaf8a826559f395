// The smallest plugin: a unit struct, the required manifest fields, and the facade
// crate used under its own name rather than renamed to `plugbay`.
use plugbay_api::prelude::*;

#[derive(Default)]
#[plugbay_api::plugin(manifest = "manifests/minimal.json")]
struct Tagger;

impl Plugin for Tagger {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

fn main() {
    use plugbay_api::__private::Export;
    let manifest = plugbay_api::manifest::Manifest::parse(Tagger::MANIFEST).unwrap();
    assert_eq!(manifest.id(), "tagger@1.0.0");
}
