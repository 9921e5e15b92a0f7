#!/usr/bin/env bash
# The project's copy of ../shared/tools/run-test-ca.sh, so the tests run without ../shared.
# run-test-ca.sh — throwaway smallstep CA on loopback for integration tests.
#
#   run-test-ca.sh DIR PORT        init (once) + start step-ca on 127.0.0.1:PORT,
#                                  wait for /health, print KEY=VALUE lines
#   run-test-ca.sh stop DIR        stop the CA started from DIR
#
# Layout under DIR:  steppath/ (CA STEPPATH: certs/, secrets/, config/ca.json, db/)
#   password          CA key + provisioner password (random, 0600)
#   root_fingerprint  SHA-256 fingerprint of the root certificate (hex)
#   ca.pid, ca.log    server pid and log
# stdout (only when /health answers): CA_URL, ROOT_CERT, FINGERPRINT,
#   FINGERPRINT_FILE, PROVISIONER, PASSWORD_FILE, PROVISIONER_PASSWORD_FILE,
#   CA_STEPPATH, PID, LOG
# Env: STEP_BIN_DIR (dir with step/step-ca, default: from PATH),
#   STEP_CA_PROVISIONER (default admin), STEP_CA_NAME (default "Test CA"),
#   STEP_CA_WAIT (seconds, default 30),
#   STEP_CA_CLAIMS (optional JSON object inserted as authority.claims, e.g.
#     '{"minTLSCertDuration":"1m","defaultTLSCertDuration":"5m"}').
# Idempotent: an initialised DIR is reused; a CA already running from DIR and
# answering /health is reported, not restarted. Binds 127.0.0.1 only.
set -euo pipefail

log() { printf '[run-test-ca] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }


alive() { [ -f "$1/ca.pid" ] && kill -0 "$(cat "$1/ca.pid")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
  DIR="${2:?usage: run-test-ca.sh stop DIR}"
  if alive "$DIR"; then
    pid=$(cat "$DIR/ca.pid"); kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    log "stopped step-ca pid $pid"
  else
    log "no running step-ca for $DIR"
  fi
  rm -f "$DIR/ca.pid"
  exit 0
fi

if [ -n "${STEP_BIN_DIR:-}" ]; then PATH="$STEP_BIN_DIR:$PATH"; fi
command -v step >/dev/null || die "step not found (set STEP_BIN_DIR or PATH)"
command -v step-ca >/dev/null || die "step-ca not found (set STEP_BIN_DIR or PATH)"
command -v curl >/dev/null || die "curl not found"

DIR="${1:?usage: run-test-ca.sh DIR PORT | stop DIR}"
PORT="${2:?usage: run-test-ca.sh DIR PORT | stop DIR}"
case "$PORT" in ''|*[!0-9]*) die "PORT must be a number";; esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "PORT out of range"
PROV="${STEP_CA_PROVISIONER:-admin}"
NAME="${STEP_CA_NAME:-Test CA}"
WAIT="${STEP_CA_WAIT:-30}"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export STEPPATH="$DIR/steppath"
PW="$DIR/password"
CFG="$STEPPATH/config/ca.json"
ROOT="$STEPPATH/certs/root_ca.crt"
URL="https://127.0.0.1:$PORT"

if [ ! -s "$CFG" ]; then
  rm -rf "$STEPPATH"
  umask 077
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PW"
  umask 022
  log "initialising CA in $STEPPATH"
  step ca init --name "$NAME" --dns "127.0.0.1,localhost" \
    --address "127.0.0.1:$PORT" --provisioner "$PROV" \
    --password-file "$PW" --provisioner-password-file "$PW" >"$DIR/init.log" 2>&1 \
    || { cat "$DIR/init.log" >&2; die "step ca init failed"; }
  if [ -n "${STEP_CA_CLAIMS:-}" ]; then
    # ca.json is written with tab indentation: "authority": {
    sed -i "0,/^\t\"authority\": {\$/s//\t\"authority\": {\n\t\t\"claims\": ${STEP_CA_CLAIMS//\//\\/},/" "$CFG"
    grep -q '"claims"' "$CFG" || die "could not insert STEP_CA_CLAIMS into $CFG"
  fi
else
  # Reused DIR: make sure the address matches the requested port.
  grep -q "\"address\": \"127.0.0.1:$PORT\"" "$CFG" \
    || die "$CFG exists with another address; use a fresh DIR or the original port"
fi
step certificate fingerprint "$ROOT" >"$DIR/root_fingerprint"
FP=$(cat "$DIR/root_fingerprint")

health() { curl -sk --max-time 2 "$URL/health" 2>/dev/null | grep -q '"ok"'; }

if alive "$DIR" && health; then
  log "step-ca already running (pid $(cat "$DIR/ca.pid"))"
else
  if health; then die "something else already answers on $URL"; fi
  log "starting step-ca on 127.0.0.1:$PORT"
  setsid step-ca "$CFG" --password-file "$PW" >>"$DIR/ca.log" 2>&1 </dev/null &
  echo $! >"$DIR/ca.pid"
  t0=$(date +%s%N)
  deadline=$(( $(date +%s) + WAIT ))
  until health; do
    if ! alive "$DIR"; then tail -n 20 "$DIR/ca.log" >&2; die "step-ca exited"; fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 "$DIR/ca.log" >&2; die "no /health within ${WAIT}s"; }
    sleep 0.05
  done
  log "healthy after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
fi

cat <<EOF
CA_URL=$URL
ROOT_CERT=$ROOT
FINGERPRINT=$FP
FINGERPRINT_FILE=$DIR/root_fingerprint
PROVISIONER=$PROV
PASSWORD_FILE=$PW
PROVISIONER_PASSWORD_FILE=$PW
CA_STEPPATH=$STEPPATH
PID=$(cat "$DIR/ca.pid")
LOG=$DIR/ca.log
EOF
