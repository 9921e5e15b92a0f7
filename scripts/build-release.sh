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
#
# phoenix-hook also gets its own link: fat LTO, and the functions a guest's
# start runs (scripts/phoenix-hook.order, made by scripts/hook-order.sh)
# placed together at the start of its code, where they are mapped in 8
# page faults instead of 27 (BENCHMARKS.md, "phoenix-hook"). The order
# file is LLD's (--symbol-ordering-file), the linker rustc uses for
# x86_64-unknown-linux-gnu since Rust 1.90; elsewhere it is left out.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
ORDER=$PWD/scripts/phoenix-hook.order
for b in "${STATIC[@]}"; do
  own=()
  if [ "$b" = phoenix-hook ]; then
    own=(-C lto=fat)
    vv=$(rustc -vV)
    minor=$(sed -n 's/^release: 1\.\([0-9]*\)\..*/\1/p' <<<"$vv")
    if [[ $vv == *$'\nhost: x86_64-unknown-linux-gnu\n'* ]] && [ "${minor:-0}" -ge 90 ]; then
      # Given to the linker as a copy named by its content: cargo relinks
      # when its flags change, never for a file a flag names, so a renewed
      # order is a new flag.
      sum=$(sha256sum "$ORDER" | cut -c1-16)
      mkdir -p "$TARGET_DIR"
      copy=$(cd "$TARGET_DIR" && pwd)/phoenix-hook-$sum.order
      [ -f "$copy" ] || cp "$ORDER" "$copy"
      own+=(-C "link-arg=-Wl,--symbol-ordering-file=$copy"
        -C link-arg=-Wl,--no-warn-symbol-ordering)
    else
      echo "build-release: not linked by rust-lld: $ORDER left out" >&2
      ORDER=
    fi
  fi
  cargo rustc --release --quiet "$@" --bin "$b" -- -C target-feature=+crt-static \
    -C link-arg=-Wl,-z,pack-relative-relocs "${own[@]}"
done
# An order naming functions the hook no longer has (renamed, or a new
# toolchain's mangling) only stops helping: say so when most are gone.
if [ -n "$ORDER" ]; then
  total=$(sed '/^#/d' "$ORDER" | sort -u | wc -l)
  found=$(nm --defined-only "$TARGET_DIR/release/phoenix-hook" | awk '{print $NF}' | sort -u |
    comm -12 - <(sed '/^#/d' "$ORDER" | sort -u) | wc -l)
  if [ $((found * 10)) -lt $((total * 9)) ]; then
    echo "build-release: phoenix-hook has $found of the $total functions of" \
      "scripts/phoenix-hook.order: run scripts/hook-order.sh to renew it" >&2
  fi
fi
