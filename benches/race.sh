#!/usr/bin/env bash
# Benchmark-style run of the race harness (tests/race.rs): the real
# binaries raced ITERATIONS times (default 1000; CI runs 150) against a
# real step-ca, every invariant checked on every iteration; then each
# broken variant (the mutation self-test) for MUTANT_ITERATIONS
# iterations (default 50; CI runs 8), each caught by its invariants.
#
#   bash benches/race.sh [ITERATIONS] [MUTANT_ITERATIONS]   (root)
#
# Prints the harness's summary lines (iterations, violations per
# invariant, what was exercised, time); the real run must show 0
# violations, each mutant its invariants firing. Debug build, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PHOENIX_RACE_ITERATIONS=${1:-1000} PHOENIX_RACE_MUTANT_ITERATIONS=${2:-50}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
rc=0
# The summaries from this run's own output (target/tmp/race-*.txt is
# shared with any other cargo test of this checkout).
cargo test --quiet --test race -- --test-threads=1 --nocapture >"$log" 2>&1 || rc=$?
echo "== the real binaries ($PHOENIX_RACE_ITERATIONS iterations)"
# (cargo's --quiet progress dots can lead a line)
sed -n 's/^\.*\(variant=product .*\)/\1/p' "$log"
echo "== broken variants (at least $PHOENIX_RACE_MUTANT_ITERATIONS iterations each)"
sed -n 's/^\.*\(variant=\|  [a-z_]*: \)/\1/p' "$log" | grep -v '^variant=product' || true
echo "== whole run: $(($(date +%s) - start)) s, cargo test exit $rc"
if [ "$rc" != 0 ]; then
  grep -A4 'panicked at' "$log" | grep -v '^ *[0-9]*: \|^ *at ' | head -40 >&2
  exit "$rc"
fi
