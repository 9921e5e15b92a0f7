#!/usr/bin/env bash
# A Phoenix boot on loopback, with the real binaries and a real step-ca:
# the host starts a new CA generation (the CA container's pre-start), a VM's
# phoenix-ca-wait starts before the CA is up and waits, the CA starts late,
# its ExecStartPost publishes the readiness token once /health answers, and
# only then does the VM's Docker start. Prints a timeline.
#
#   scripts/demo.sh            (no flags; installs what it needs; root for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/install.sh

ensure_packages curl:curl python3:python3
ensure_step
ensure_cargo
log "building (release)"
cargo build --release --quiet
BIN=$PWD/target/release

W=$(mktemp -d /tmp/phoenix-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

T0=$(date +%s%N)
say() { printf '%8s  %-8s %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))ms" "$1" "$2"; }
stream() { local who=$1 l; while IFS= read -r l; do say "$who" "$l"; done; }

# --- The CA container's state, as LXC 103 keeps it on shared storage ---------
SSL=$W/mnt/pve/quickOS/lxc-persistent-data/103/ssl
export STEPPATH=$W/ct103/steppath
mkdir -p "$SSL" "$W/ct103"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$W/ct103/password")
step ca init --name "Phoenix Demo CA" --dns 127.0.0.1 --address "127.0.0.1:$PORT" \
  --provisioner admin@thinkheads.ai --password-file "$W/ct103/password" \
  --provisioner-password-file "$W/ct103/password" > "$W/ct103/init.log" 2>&1
cp "$STEPPATH/certs/root_ca.crt" "$SSL/phoenix_root_ca.crt"
install -m 0600 "$W/ct103/password" "$SSL/provisioner_password.txt"
cat > "$W/toolkit.json" <<EOF
{
  "ca": { "url": "https://127.0.0.1:$PORT", "state_dir": "$SSL", "guest_state_dir": "$SSL" },
  "lock_dir": "$W/run/lock/phoenix",
  "state_dir": "$W/var/lib/phoenix"
}
EOF
export PHOENIX_CONFIG=$W/toolkit.json

echo
echo "Phoenix boot on loopback (CA at https://127.0.0.1:$PORT, state in $SSL)"
echo
say host "CT 103 pre-start: start a new CA generation"
"$BIN/phoenix-ca" invalidate --state-dir "$SSL" 2>&1 | stream host

say vm1001 "boot: phoenix-ca-wait.service starts; the CA is not up yet"
# (In a VM the unit adds --bootstrap, which installs the root into the
# system trust store: not done to the machine running this demo.)
( "$BIN/phoenix-ca" wait --state-dir "$SSL" --timeout 60 2>&1; \
  echo "phoenix-ca wait exited $?" ) | stream vm1001 &
WAITER=$!
PIDS+=("$WAITER")

sleep 2   # the CA container is still booting: the late CA of the scenario
say ct103 "step-ca.service starts"
step-ca "$STEPPATH/config/ca.json" --password-file "$W/ct103/password" > "$W/ct103/ca.log" 2>&1 &
PIDS+=("$!")
say ct103 "ExecStartPost: phoenix-ca publish (waits for /health)"
"$BIN/phoenix-ca" publish --state-dir "$SSL" 2>&1 | stream ct103

wait "$WAITER"
say vm1001 "docker.service starts (ordered after phoenix-ca-wait.service)"

echo
echo "phoenix-ca status:"
"$BIN/phoenix-ca" status --state-dir "$SSL" | sed 's/^/  /'
echo
say host "CT 103 restarts: its pre-start makes the old token stale at once"
"$BIN/phoenix-ca" invalidate --state-dir "$SSL" 2>&1 | stream host
"$BIN/phoenix-ca" wait --no-health --state-dir "$SSL" --timeout 1 2>&1 | stream vm1002 || \
  say vm1002 "exit $? (124: timed out) — a stale token is never trusted"
