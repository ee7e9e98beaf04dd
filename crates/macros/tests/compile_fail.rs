//! Forms `#[traced]` refuses, each with its reason (see the `.stderr`
//! snapshots next to the cases), and expansions that must compile and run
//! under strict lints.

#[test]
fn refused_forms_and_strict_lints() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/pass/*.rs");
}
