#!/usr/bin/env bash
# Benchmark: time from `phoenix-ca publish` (its exit: the token is in
# place) to the docker stand-in being active, in a real systemd --user
# manager (tests/sd_support), for the shipped phoenix-ca-wait.service, and
# for the same chain with `inotifywait` on the token's rename (the simplest
# inotify waiter, a oneshot) and with the bash 5-second loop as its
# ExecStart=. The manager's own part, from the wait unit active to docker
# active, is the floor of any waiter.
#
# Then the same chain with systemd as PID 1 of a booted Debian
# (tests/nspawn_boot.rs, systemd-nspawn): bookworm (systemd 252) and
# trixie (systemd 257), the units as the package ships them
# (`--bootstrap` included), each line prefixed with its release.
#
#   bash benches/sd_chain_latency.sh [RUNS] [BASH_RUNS]   (root)
#
# Prints p50/p99/max of each chain, the p50 of each step counted from the
# publish (the wait unit active, the waiter's exit, docker's ExecStart=
# process, docker active) and the ratios of the medians. The publish comes
# 50-300 ms after the wait started, at a random phase. The booted systems
# are debootstrapped once per machine (scripts/lib/nspawn-root.sh, about
# 80 s each, a Debian mirror needed the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/install.sh
ensure_packages inotifywait:inotify-tools debootstrap:debootstrap \
  systemd-nspawn:systemd-container
export PHOENIX_BENCH_RUNS=${1:-30} PHOENIX_BENCH_BASH_RUNS=${2:-10}
echo "systemd --user (tests/sd_support), $(systemctl --version | head -1):"
cargo test --release --quiet --test systemd -- --ignored --nocapture \
  bench_publish_to_docker_active 2>&1 | grep -E '^(phoenix-ca|inotifywait|bash|ratio)'
echo "systemd as PID 1 of a booted Debian (systemd-nspawn --boot):"
PHOENIX_BENCH_BASH_RUNS=$(((PHOENIX_BENCH_BASH_RUNS + 2) / 3)) \
  cargo test --release --quiet --test nspawn_boot -- --ignored --nocapture \
  bench_publish_to_docker_active_at_a_real_boot 2>&1 | grep -E '^(bookworm|trixie)'
