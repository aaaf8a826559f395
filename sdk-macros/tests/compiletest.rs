//! What a plugin author sees when `#[plugbay::plugin]` refuses their code or their
//! `plugin.json`, pinned as trybuild UI tests (`tests/ui/*.stderr`), and plugins the
//! attribute must accept (`tests/pass`).
//!
//! Regenerate the expected output after a deliberate change to a message with
//! `TRYBUILD=overwrite cargo test -p plugbay-macros --test compiletest`, then read
//! every changed `.stderr` file.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/pass/*.rs");
}
