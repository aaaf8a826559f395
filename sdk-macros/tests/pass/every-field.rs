// A plugin with fields, every manifest field set, the attribute above `derive`, and
// names in scope that the generated code must not pick up by mistake.
use plugbay::prelude::*;
use plugbay_api as plugbay;

#[allow(dead_code)]
struct Export;
#[allow(dead_code)]
struct LibHeader;
#[allow(dead_code)]
mod core {}

#[plugbay::plugin(manifest = "manifests/every-field.json")]
#[derive(Default)]
pub struct DataProcessor {
    field: String,
    records: u64,
}

impl Plugin for DataProcessor {
    type Input = String;
    type Output = String;

    fn init(&mut self, ctx: &Context) -> Result<(), Error> {
        self.field = ctx.config_field("field")?.unwrap_or_default();
        Ok(())
    }

    fn process(&mut self, _ctx: &Context, batch: Vec<String>) -> Result<Vec<String>, Error> {
        self.records += batch.len() as u64;
        Ok(batch)
    }
}

fn main() {
    use plugbay::manifest::{Manifest, Permission};
    let manifest =
        Manifest::parse(<DataProcessor as plugbay::__private::Export>::MANIFEST).unwrap();
    assert_eq!(manifest.id(), "data-processor@1.2.3-beta.1");
    assert_eq!(manifest.timeout_ms, Some(5000));
    assert!(manifest.permissions.contains(&Permission::NetConnect(443)));
}
