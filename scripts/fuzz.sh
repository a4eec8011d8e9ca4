#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS seconds each (default 10) on a stable toolchain,
# prints each target's executions, and fails if any input crashes one (the input is kept under
# fuzz/artifacts/<target>/: fix the bug, then add the input to fuzz/corpus/<target>/).
#
# Stable Rust has no sanitizers, so targets run with `-s none` (coverage-guided, with debug
# assertions); RUSTC_BOOTSTRAP=1 with `-s address` adds AddressSanitizer where wanted.
# New inputs the fuzzer finds go to a scratch corpus, so the checked-in seeds stay as they are.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# A failed toolchain probe can be cached; start from a clean probe.
rm -f target/.rustc_info.json

targets=$(cargo fuzz list)
echo "== building the fuzz targets"
cargo fuzz build -s none

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
total=0
failed=()
printf '%-22s %14s %8s\n' target executions seconds
for t in $targets; do
  mkdir -p "$scratch/$t" "corpus/$t"
  log="$scratch/$t.log"
  if cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=CRASHED
    failed+=("$t")
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  runs=${runs:-0}
  total=$((total + runs))
  printf '%-22s %14s %8s %s\n' "$t" "$runs" "$seconds" "$status"
  if [ "$status" != ok ]; then
    tail -n 40 "$log"
  fi
done
printf '%-22s %14s\n' total "$total"
if [ ${#failed[@]} -ne 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
