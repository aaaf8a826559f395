// The seed's manifest writes `hooks` as an object of handler names; the names are
// informational for a native plugin, and the hooks are kept in the order they run.
use plugbay_api::prelude::*;

#[derive(Default)]
#[plugbay_api::plugin(manifest = "manifests/hooks-object.json")]
struct DataProcessor;

impl Plugin for DataProcessor {
    type Input = String;
    type Output = String;

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        Ok(batch)
    }
}

fn main() {
    use plugbay_api::__private::Export;
    use plugbay_api::manifest::{Hook, Manifest};
    let manifest = Manifest::parse(DataProcessor::MANIFEST).unwrap();
    assert_eq!(manifest.hooks, [Hook::Init, Hook::Process, Hook::Cleanup]);
    assert!(DataProcessor::DECLARES_INIT && DataProcessor::DECLARES_CLEANUP);
}
