#!/usr/bin/env bash
# Build the release binaries as they ship, into target/release (or
# $CARGO_TARGET_DIR/release):
#
#   scripts/build-release.sh [CARGO_FLAGS...]     e.g. --locked
#
# Every binary but phoenix-hook by `cargo build --release`; phoenix-hook by
# `cargo rustc` with `-C target-feature=+crt-static`, a static PIE: it runs
# in the start of every guest, where the dynamic loader and libgcc_s were a
# third of its run (BENCHMARKS.md, "phoenix-hook"; the flag applies to that
# binary's link alone, the library and its dependencies are the same build).
# Apart, not in one `cargo build`: the flag is part of the binary's
# fingerprint, so building it both ways would relink it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

others=()
for f in src/bin/*.rs; do
  b=$(basename "$f" .rs)
  [ "$b" = phoenix-hook ] || others+=(--bin "$b")
done
cargo build --release --quiet "$@" "${others[@]}"
cargo rustc --release --quiet "$@" --bin phoenix-hook -- -C target-feature=+crt-static
