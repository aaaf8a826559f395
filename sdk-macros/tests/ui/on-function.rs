use plugbay_api as plugbay;

#[plugbay::plugin(manifest = "manifests/valid.json")]
fn tagger() {}

fn main() {}
