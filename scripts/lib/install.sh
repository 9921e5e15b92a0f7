# Installing what the demo and the tests need on a fresh Debian machine.
# Sourced by scripts/test.sh and scripts/demo.sh.

log() { printf '[phoenix] %s\n' "$*" >&2; }

apt_install() {
  ((${#@})) || return 0
  [ "$(id -u)" -eq 0 ] || { log "need root to apt-get install $*"; return 1; }
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian packages by the command they provide.
ensure_packages() {
  local missing=() cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  apt_install "${missing[@]}"
}

# The real Docker Swarm of scripts/lib/realswarm.sh: Debian's docker.io (by
# its files: another docker CLI may be on PATH), busybox-static (its static
# /bin/busybox is the image; the dynamic busybox package has the same
# path), iproute2 and util-linux (nsenter, unshare, flock). docker.io's
# postinst may start docker.service: harmless, the harness runs its own
# daemons.
ensure_realswarm() {
  local missing=()
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  for cmd in nsenter unshare flock; do
    command -v "$cmd" >/dev/null 2>&1 || { missing+=(util-linux); break; }
  done
  apt_install "${missing[@]}"
}

# The real smallstep step CLI and step-ca: from PATH, else built from
# Debian's sources by scripts/lib/install-step.sh (the project's copy of
# the recipe; ../shared is not needed).
ensure_step() {
  if command -v step >/dev/null 2>&1 && command -v step-ca >/dev/null 2>&1; then
    return 0
  fi
  local installer
  installer="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/install-step.sh"
  log "step/step-ca not on PATH: building them with $installer (1-2 minutes, once)"
  bash "$installer"
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  log "cargo not found: install Rust (https://rustup.rs), then run this again"
  return 1
}

install_test_deps() {
  ensure_packages /usr/bin/python3:python3 curl:curl jq:jq unshare:util-linux \
    systemd-analyze:systemd bash:bash
  # tests/nspawn_boot.rs: a real Debian boot (scripts/lib/nspawn-root.sh).
  ensure_packages debootstrap:debootstrap systemd-nspawn:systemd-container
  # tests/package.rs: the .deb's Depends (dpkg-shlibdeps) and lintian.
  ensure_packages lintian:lintian dpkg-shlibdeps:dpkg-dev
  ensure_realswarm
  ensure_step
  ensure_cargo
}
