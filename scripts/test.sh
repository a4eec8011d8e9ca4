#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, every test, the benches in quick mode (so they
# cannot rot) and every fuzz target for a few seconds. Needs only a Rust toolchain with rustfmt
# and clippy, and crates.io (cargo-fuzz is installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --quiet
echo "== cargo test"
cargo test --workspace
echo "== cargo bench (quick mode: every bench, the comparison with its peers included)"
BIGMACHINE_BENCH_QUICK=1 cargo bench
echo "== fuzz (every target, ${BIGMACHINE_FUZZ_SECONDS:-10} s each)"
scripts/fuzz.sh "${BIGMACHINE_FUZZ_SECONDS:-10}"
