use plugbay_api as plugbay;

#[derive(Default)]
#[plugbay::plugin(manifest = "manifests/valid.json")]
enum Tagger {
    #[default]
    On,
    Off,
}

fn main() {}
