//! `#[service]` refuses methods of the wrong shape with a clear message (see tests/ui/*.stderr).

/// trybuild compiles the cases with the features of this test; with `ec2` that means building
/// the AWS SDK once more for them, so the test suite runs this test on its own without it
/// (`cargo test --test compile_fail`, as `scripts/test.sh` does).
#[test]
#[cfg_attr(
    feature = "ec2",
    ignore = "run without the ec2 feature: `cargo test --test compile_fail`"
)]
fn service_macro_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
