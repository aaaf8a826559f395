use plugbay_api as plugbay;

#[derive(Default)]
#[plugbay::plugin(manifest = "manifests/valid.json")]
struct Tagger;

fn main() {}
