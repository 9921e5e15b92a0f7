#!/usr/bin/env bash
# Build the release binaries as they ship, into target/release (or
# $CARGO_TARGET_DIR/release):
#
#   scripts/build-release.sh [CARGO_FLAGS...]     e.g. --locked
#
# phoenix-hook and phoenix-ca by `cargo rustc` with `-C
# target-feature=+crt-static`, static PIEs; the others by `cargo build
# --release`. phoenix-hook runs in the start of every guest, where the
# dynamic loader and libgcc_s were a third of its run; phoenix-ca's `wait`
# is the first step of every VM's boot chain, where a static process
# starts and exits sooner (BENCHMARKS.md, "phoenix-hook" and "reaction
# latency"), and it then runs in a VM whatever that VM's glibc. The flag
# applies to each binary's link alone; the library and its dependencies
# are the same build. Apart, not in one `cargo build`: the flag is part of
# the binary's fingerprint, so building it both ways would relink it
# every time.
set -euo pipefail
cd "$(dirname "$0")/.."

STATIC=(phoenix-hook phoenix-ca)
others=()
for f in src/bin/*.rs; do
  b=$(basename "$f" .rs)
  [[ " ${STATIC[*]} " == *" $b "* ]] || others+=(--bin "$b")
done
cargo build --release --quiet "$@" "${others[@]}"
# -z pack-relative-relocs: a static PIE relocates itself at start; the
# hook's 5,500 relative relocations take 1.3 KB as RELR (binutils 2.38,
# glibc 2.36) instead of 130 KB of RELA read at every start (0.5 MiB of
# RSS).
for b in "${STATIC[@]}"; do
  cargo rustc --release --quiet "$@" --bin "$b" -- -C target-feature=+crt-static \
    -C link-arg=-Wl,-z,pack-relative-relocs
done
