#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, every test, and the benches in quick mode (so
# they cannot rot). Needs only a Rust toolchain with rustfmt and clippy, and crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --quiet
echo "== cargo test"
cargo test --workspace
echo "== cargo bench (quick mode: every bench, the comparison with its peers included)"
BIGMACHINE_BENCH_QUICK=1 cargo bench
