//! `#[service]` refuses methods of the wrong shape with a clear message (see tests/ui/*.stderr).

#[test]
fn service_macro_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
