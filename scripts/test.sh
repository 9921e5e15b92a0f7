#!/usr/bin/env bash
# Run every test of Phoenix hooks on a fresh Debian machine: installs what
# the tests need (Debian packages; the real step CLI and step-ca), checks
# formatting and lints, then runs unit and integration tests.
#
#   scripts/test.sh [cargo test args...]
#
# Needs root (apt-get, mount namespaces, a systemd user manager).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/install.sh

install_test_deps

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets "$@"
# The release links phoenix-hook statically (scripts/build-release.sh):
# its tests once more with the hook linked that way (a debug build, same
# flag; relinking the one binary takes seconds).
echo "== tests/hook.rs, phoenix-hook linked as it ships (static PIE)"
cargo rustc --quiet --bin phoenix-hook -- -C target-feature=+crt-static
mkdir -p target/static-bin
cp target/debug/phoenix-hook target/static-bin/phoenix-hook
PHOENIX_TEST_HOOK_BIN=$PWD/target/static-bin/phoenix-hook cargo test --test hook "$@"
# The same for phoenix-ca (tests/ca.rs), also a static PIE as released.
echo "== tests/ca.rs, phoenix-ca linked as it ships (static PIE)"
cargo rustc --quiet --bin phoenix-ca -- -C target-feature=+crt-static
cp target/debug/phoenix-ca target/static-bin/phoenix-ca
PHOENIX_TEST_CA_BIN=$PWD/target/static-bin/phoenix-ca cargo test --test ca "$@"
# The package as it ships: the release binaries of scripts/build-release.sh
# (static PIEs, the hook's ordered link), packaged, installed, purged and
# checked by lintian (tests/package.rs), as the test build's were above.
echo "== tests/package.rs, the release binaries (scripts/build-release.sh)"
bash scripts/build-release.sh --locked
PHOENIX_TEST_BIN_DIR=$PWD/target/release cargo test --test package "$@"
for summary in target/tmp/race-summary.txt target/tmp/race-mutants.txt; do
  if [ -f "$summary" ]; then
    echo "== race harness (tests/race.rs): ${summary##*/}"
    cat "$summary"
  fi
done
