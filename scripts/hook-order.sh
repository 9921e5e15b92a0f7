#!/usr/bin/env bash
# Renew scripts/phoenix-hook.order: the functions phoenix-hook runs in a
# guest's start, which scripts/build-release.sh has the linker place
# together at the start of the hook's code.
#
#   scripts/hook-order.sh [RUNS]        (root: perf, a private mount namespace)
#
# The hook's code is 3.6 MB, and what one start runs of it (the hook's
# checks, serde_json, std's paths and formatting, glibc's start) is spread
# over it by the linker's default order: each 64 KiB it touches is a page
# fault, and Proxmox starts the hook at every phase of every guest. The
# functions are found by sampling (perf record, as fast as perf allows)
# RUNS rounds (default 1500) of the cases benches/hook.sh measures, and of
# a post-stop, which does nothing: a function too brief to be sampled once
# stays where the linker puts it (as does code perf names by its address
# alone, not a function). Written sorted by name, so that a renewal
# shows as the functions it adds and drops. Needs perf (Debian: linux-perf)
# and ../shared/reference (benches/hook-fixture.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1500}
command -v perf >/dev/null || { echo "need perf (Debian: linux-perf)" >&2; exit 2; }
. benches/hook-fixture.sh

bash scripts/build-release.sh
HOOK=$PWD/target/release/phoenix-hook
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
hook_fixture "$TMP"

hook_ns "$TMP" perf record --quiet --freq=max --output="$TMP/perf.data" -- sh -c '
  i=0
  while [ "$i" -lt "$1" ]; do
    "$2" 101 pre-start && "$2" 4242 pre-start && "$2" 101 post-stop || exit
    i=$((i + 1))
  done 2>/dev/null' sh "$RUNS" "$HOOK"
perf report --input="$TMP/perf.data" --comm=phoenix-hook --sort=sym --stdio --no-demangle \
  2>/dev/null | sed -n 's/^.*\[\.\] \(.*[^ ]\) *$/\1/p' | grep -v '^0x' | LC_ALL=C sort -u >"$TMP/order"
[ -s "$TMP/order" ] || { echo "perf sampled no function of phoenix-hook" >&2; exit 1; }
{
  echo "# Functions phoenix-hook runs in a guest's start, for LLD's"
  echo "# --symbol-ordering-file (scripts/build-release.sh). Made by"
  echo "# scripts/hook-order.sh: do not edit."
  cat "$TMP/order"
} >scripts/phoenix-hook.order
echo "scripts/phoenix-hook.order: $(wc -l <"$TMP/order") functions"
