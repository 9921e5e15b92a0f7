#!/usr/bin/env bash
# nspawn-root.sh: the Debian root that tests/nspawn_boot.rs boots with
# systemd as PID 1 (systemd-nspawn -b), made once per machine and cached;
# the test boots a copy, so the cache stays as debootstrap left it.
#
#   nspawn-root.sh [CACHE]    make CACHE if needed (default
#                             /var/cache/phoenix-hooks/nspawn-$SUITE),
#                             get this machine ready to boot it, print its path
#
# $PHOENIX_NSPAWN_SUITE: bookworm (the default: the tests) or trixie (the
# chain benchmark also boots Debian 13, whose systemd starts a unit's
# processes straight into its cgroup: BENCHMARKS.md).
#
# The root: `debootstrap --variant=minbase` with what the boot needs:
# systemd and systemd-sysv (PID 1), dbus (systemctl inside talks to the
# manager over it), python3 (the project's fake qm, pct and docker; the
# benchmark's driver), ca-certificates (what `phoenix-ca wait --bootstrap`
# trusts the root with), inotify-tools (the benchmark's floor). About
# 80 s and 250 MB, once. Built under a lock (concurrent test runs wait for
# one build) in CACHE.partial, renamed to CACHE when complete: an
# interrupted build is never booted. CACHE/.phoenix-nspawn-root names what
# it was built with; a change to that list below builds it again.
#
# The machine (facts found here): PID 1 may not be systemd, so the boot
# uses `systemd-nspawn --keep-unit --register=no` (no machined to register
# with); and /run/systemd/nspawn must be a tmpfs ("Attempted to remove disk
# file system" otherwise): mounted here if it is not one.
#
# Needs root, debootstrap and systemd-container (install_test_deps in
# scripts/lib/install.sh installs them), and a reachable Debian mirror:
# $PHOENIX_NSPAWN_MIRROR, else the first one of apt's sources, else
# deb.debian.org. Exit 1 with the reason.
set -euo pipefail

SUITE=${PHOENIX_NSPAWN_SUITE:-bookworm}
PACKAGES=systemd,systemd-sysv,dbus,python3,ca-certificates,inotify-tools
STAMP=.phoenix-nspawn-root

die() { printf 'nspawn-root: %s\n' "$*" >&2; exit 1; }

case $SUITE in
  bookworm | trixie) ;;
  *) die "PHOENIX_NSPAWN_SUITE='$SUITE': bookworm or trixie" ;;
esac

CACHE=${1:-/var/cache/phoenix-hooks/nspawn-$SUITE}
CACHE=${CACHE%/}
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, systemd-nspawn, mounts)"
for cmd in debootstrap:debootstrap systemd-nspawn:systemd-container; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 ||
    die "no ${cmd%%:*}: apt-get install ${cmd#*:} (scripts/test.sh does)"
done

want="suite=$SUITE variant=minbase include=$PACKAGES"

complete() { [ -x "$CACHE/lib/systemd/systemd" ] && [ "$(cat "$CACHE/$STAMP" 2>/dev/null)" = "$want" ]; }

mirror() {
  local m=${PHOENIX_NSPAWN_MIRROR:-}
  [ -z "$m" ] || { echo "$m"; return; }
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
    grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
    awk '$3 ~ /^(bookworm|trixie|stable)$/ {print $2}' | head -1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build() {
  local partial=$CACHE.partial m
  rm -rf --one-file-system "$partial"
  m=$(mirror)
  printf 'nspawn-root: debootstrap %s from %s into %s (once, ~80 s)\n' "$SUITE" "$m" "$CACHE" >&2
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$partial" "$m" \
    >"$CACHE.log" 2>&1; then
    tail -n 20 "$CACHE.log" >&2
    [ -f "$partial/debootstrap/debootstrap.log" ] && tail -n 20 "$partial/debootstrap/debootstrap.log" >&2
    die "debootstrap of $SUITE from $m failed (is the mirror reachable?); full log: $CACHE.log"
  fi
  # The downloaded .debs are not needed to boot: every copy would carry them.
  find "$partial/var/cache/apt/archives" -name '*.deb' -delete
  echo "$want" >"$partial/$STAMP"
  rm -rf --one-file-system "$CACHE"
  mv "$partial" "$CACHE"
}

mkdir -p "${CACHE%/*}"
exec 9>"$CACHE.lock"
flock 9
complete || build
complete || die "'$CACHE' is not a complete root after the build"
flock -u 9

mkdir -p /run/systemd/nspawn
if [ "$(stat -f -c %T /run/systemd/nspawn)" != tmpfs ]; then
  mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn ||
    die "cannot mount a tmpfs on /run/systemd/nspawn (systemd-nspawn needs one)"
fi
echo "$CACHE"
