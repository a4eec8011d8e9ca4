#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, every test (the EC2 system's included, against
# the moto emulator), the benches in quick mode (so they cannot rot) and every fuzz target for a
# few seconds. Needs a Rust toolchain with rustfmt and clippy, python3, crates.io, PyPI and
# Debian's packages (cargo-fuzz, moto and Chromium are installed when missing).
#
# Every cargo command builds the workspace with all its features at once (the `ec2` feature
# compiles the AWS SDK: once, about 15 CPU-minutes and 10 GB of memory at its peak).
set -euo pipefail
cd "$(dirname "$0")/.."
# Incremental state is for edit-compile loops; a whole-suite run only pays its disk for it.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --all-features --no-deps --quiet
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian's chromium (status_page_in_headless_chromium loads the status page in it)"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
export BIGMACHINE_REQUIRE_CHROMIUM=1
echo "== cargo test (the EC2 tests install and start the moto emulator themselves)"
# This cargo test builds the examples; the EC2 tests use its ec2boot rather than build one.
BIGMACHINE_EXAMPLES_BUILT=1 cargo test --workspace --all-features
echo "== the #[service] compile-fail cases (without the ec2 feature: trybuild builds what the test has)"
cargo test --test compile_fail
echo "== cargo bench (quick mode: every bench, the comparison with its peers included)"
BIGMACHINE_BENCH_QUICK=1 cargo bench
echo "== fuzz (every target, ${BIGMACHINE_FUZZ_SECONDS:-10} s each)"
scripts/fuzz.sh "${BIGMACHINE_FUZZ_SECONDS:-10}"
