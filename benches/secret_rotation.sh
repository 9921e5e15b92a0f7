#!/usr/bin/env bash
# Benchmark: rotating a certificate into the running tasks of a Swarm
# service with `phoenix-renew`'s `post_renewal.swarm_secrets` action, on a
# REAL two-node swarm (scripts/lib/realswarm.sh: manager VM 1001, worker
# VM 1002, each a Debian dockerd in its own namespaces, reached by the
# fake `qm` of tests/fakes) with a real step-ca on loopback.
#
#   bash benches/secret_rotation.sh [ROUNDS]     (root; default 5)
#
# Builds the release binaries (scripts/build-release.sh); PHOENIX_BIN_DIR
# names a directory of release binaries to use instead (a build of a
# clean checkout while the tree is being edited).
#
# The service `bench`: 2 replicas of busybox mounting the three secrets
# (cert, key, CA chain) at /run/secrets/bench_tls_*.pem, Docker's default
# update config (parallelism 1, monitor 5 s, stop-first) except
# `--stop-grace-period 1s`: busybox `sleep` as PID 1 ignores SIGTERM, so
# every task stop would otherwise wait the default 10 s before SIGKILL.
#
# Per round, interleaved:
#   ours   `phoenix-renew run --force` (release build). From the moment the
#          renewed certificate appears on disk (a poller watching the file's
#          inode: the key is renamed in first, the certificate last) to the
#          moment both running tasks read it at their target (`docker ps`
#          on each node + `docker exec ID cat TARGET`, compared with the
#          host file); also to UpdateStatus `completed`; the whole run's
#          wall time; the `qm` calls it made (calls.jsonl lines added).
#   floor  Swarm's own rolling update of the same service: `docker service
#          update --detach --no-resolve-image --force bench` (no registry
#          lookup, as ours), polled the same way: both tasks
#          new and readable, then UpdateStatus `completed`. Any rotation
#          pays this.
# Then once:
#   no-change  `post_pending` set in renew-state.json, `phoenix-renew run`:
#          the docker commands it ran through qm (reads, writes). Target:
#          at most one read per service, no write.
#   legacy the old bash chain (`docker secret rm X; docker secret create X
#          FILE; ...; docker service update --force S`, the Portainer entry
#          of the reference manifest) against a second service `legacy`
#          mounting unversioned secrets: its wall time, what qm reported,
#          and what its tasks read afterwards.
# Prints p50/max of each figure and the ratios ours/floor. Everything it
# starts (step-ca, the daemons, pollers) is stopped on exit, also on
# failure or Ctrl-C. A failed round prints the phoenix-renew log and is
# kept under /tmp/secret_rotation-failed.*.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
case $ROUNDS in '' | *[!0-9]* | 0) echo "usage: $0 [ROUNDS>0]" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "needs root (namespaces, dockerd)" >&2; exit 2; }
for t in jq python3 curl step step-ca; do
  command -v "$t" >/dev/null || { echo "need $t" >&2; exit 2; }
done

if [ -n "${PHOENIX_BIN_DIR:-}" ]; then
  BIN=$(cd "$PHOENIX_BIN_DIR" && pwd)
else
  bash scripts/build-release.sh
  BIN=$PWD/target/release
fi
FAKES=$PWD/tests/fakes
REALSWARM=$PWD/scripts/lib/realswarm.sh
DOCKER=/usr/bin/docker
MANAGER=1001 WORKER=1002
REPLICAS=2
BOUND_NS=$((240 * 1000000000)) # one round's bound

# Short path: the daemons' sockets live under it.
W=$(mktemp -d /tmp/rotbench.XXXXXX)
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  # This shell's own background jobs not yet waited for: step-ca, a
  # phoenix-renew run (its timing subshell first), the file watcher.
  for p in $(jobs -p); do
    pkill -TERM -P "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  bash "$REALSWARM" down "$W/swarm" >/dev/null 2>&1 ||
    echo "realswarm.sh down $W/swarm failed" >&2
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s%N; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- The swarm ---------------------------------------------------------------
export PHOENIX_FAKE_PVE=$W/pve
ETC=$W/etc
mkdir -p "$PHOENIX_FAKE_PVE" "$ETC" "$W/certs" "$W/steppath" "$W/ca" "$W/drop"
bash "$REALSWARM" up "$W/swarm" "$PHOENIX_FAKE_PVE" "$MANAGER" "$WORKER" >"$W/swarm.env"
var() { sed -n "s/^$1=//p" "$W/swarm.env"; }
declare -A SOCK IP
for vm in $MANAGER $WORKER; do
  SOCK[$vm]=$(var "VM_${vm}_SOCK")
  IP[$vm]=$(var "VM_${vm}_IP")
done
d() { local vm=$1; shift; timeout 60 "$DOCKER" -H "unix://${SOCK[$vm]}" "$@"; }

cat >"$ETC/phoenix_vm_configs.json" <<EOF
{"vms": [
  {"vmid": $MANAGER, "name": "vm$MANAGER", "swarm_role": "manager",
   "network_config": {"ip": "${IP[$MANAGER]}/24"}},
  {"vmid": $WORKER, "name": "vm$WORKER", "swarm_role": "worker",
   "network_config": {"ip": "${IP[$WORKER]}/24"}}]}
EOF

# --- The CA (as scripts/demo.sh starts one) ----------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$W/ca/password")
STEPPATH=$W/ca/steppath step ca init --name "Rotation Bench CA" --dns 127.0.0.1 \
  --address "127.0.0.1:$PORT" --provisioner admin --password-file "$W/ca/password" \
  --provisioner-password-file "$W/ca/password" >"$W/ca/init.log" 2>&1 ||
  { cat "$W/ca/init.log" >&2; fail "step ca init"; }
STEPPATH=$W/ca/steppath step-ca "$W/ca/steppath/config/ca.json" \
  --password-file "$W/ca/password" >"$W/ca/ca.log" 2>&1 &
CA_PID=$!
for _ in $(seq 100); do
  curl -sfk "https://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$CA_PID" 2>/dev/null || { cat "$W/ca/ca.log" >&2; fail "step-ca exited"; }
  sleep 0.1
done

cat >"$W/toolkit.json" <<EOF
{"phoenix_etc": "$ETC", "lock_dir": "$ETC/lock", "state_dir": "$ETC/state",
 "ca": {"url": "https://127.0.0.1:$PORT", "state_dir": "$W/ca",
        "root_cert": "$W/ca/steppath/certs/root_ca.crt", "provisioner": "admin",
        "provisioner_password_file": "$W/ca/password"},
 "renewal": {"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 60,
             "guest_drop_dir": "$W/drop"},
 "swarm": {"agent_timeout_secs": 10, "state_timeout_secs": 10,
           "command_timeout_secs": 60, "update_timeout_secs": 180}}
EOF
CERT=$W/certs/bench.crt
cat >"$ETC/certificate-manifest.json" <<EOF
[{"common_name": "bench.test", "guest_id": $MANAGER, "guest_type": "vm",
  "cert_path": "$CERT", "key_path": "$W/certs/bench.key", "include_ca": true,
  "post_renewal": {"swarm_secrets": {"cert": "bench_tls_cert.pem",
                                     "key": "bench_tls_key.pem",
                                     "ca": "bench_tls_ca.pem"},
                   "services": ["bench"]}}]
EOF
# The fake qm, timed: "START_NS END_NS" a call in qmtime.
mkdir -p "$W/qmwrap"
cat >"$W/qmwrap/qm" <<EOF
#!/bin/bash
s=\$(date +%s%N) rc=0
"$FAKES/qm" "\$@" || rc=\$?
echo "\$s \$(date +%s%N)" >>"$W/qmtime"
exit \$rc
EOF
chmod 0755 "$W/qmwrap/qm"
export PATH=$W/qmwrap:$FAKES:$PATH STEPPATH=$W/steppath PHOENIX_CONFIG=$W/toolkit.json
CALLS=$PHOENIX_FAKE_PVE/calls.jsonl

"$BIN/phoenix-swarm" ensure >"$W/ensure.log" 2>&1 || { cat "$W/ensure.log" >&2; fail "phoenix-swarm ensure"; }
# The CA's readiness token (its ExecStartPost=): phoenix-renew issues nothing before it.
"$BIN/phoenix-ca" publish --state-dir "$W/ca" >"$W/publish.log" 2>&1 ||
  { cat "$W/publish.log" >&2; fail "phoenix-ca publish"; }
# First issue: the secrets are made, the service does not exist yet.
"$BIN/phoenix-renew" run >"$W/first.log" 2>&1 || { cat "$W/first.log" >&2; fail "first phoenix-renew run"; }

# --- The services --------------------------------------------------------------
# create_service NAME SOURCE:TARGET...: 2 replicas, default update config,
# waits until both tasks run.
create_service() {
  local name=$1 s; shift
  local -a args=(service create --detach --no-resolve-image --name "$name"
    --replicas "$REPLICAS" --stop-grace-period 1s)
  for s in "$@"; do args+=(--secret "source=${s%%:*},target=${s#*:},mode=0400"); done
  d $MANAGER "${args[@]}" local/busybox:1 sleep 1000000 >/dev/null
  local end=$(($(now) + 60000000000))
  until [ "$(tasks "$name" | wc -l)" -eq "$REPLICAS" ]; do
    [ "$(now)" -lt "$end" ] || fail "service $name: $REPLICAS tasks not running after 60 s"
    sleep 0.2
  done
}
# "VM CONTAINER" of every running task of service $1.
tasks() {
  local vm
  for vm in $MANAGER $WORKER; do
    d $vm ps -q --filter "label=com.docker.swarm.service.name=$1" | sed "s/^/$vm /"
  done
}
version() { d $MANAGER secret ls --format '{{.Name}}' | grep "^$1-"; }
create_service bench \
  "$(version bench_tls_cert.pem):bench_tls_cert.pem" \
  "$(version bench_tls_key.pem):bench_tls_key.pem" \
  "$(version bench_tls_ca.pem):bench_tls_ca.pem"
TARGET=/run/secrets/bench_tls_cert.pem
nodes=$(tasks bench | cut -d' ' -f1 | sort -u | tr '\n' ' ')

# --- Measuring ---------------------------------------------------------------
# "STATE STARTEDAT" of bench's last update ("none" before any).
update_status() {
  d $MANAGER service inspect --format '{{json .UpdateStatus}}' bench |
    jq -r 'if . == null then "none" else "\(.State) \(.StartedAt)" end'
}
# all_new OLD_IDS SHA: exactly REPLICAS running tasks, none of OLD_IDS,
# each reading content of SHA at TARGET.
all_new() {
  local old=$1 want=$2 vm id got n=0
  while read -r vm id; do
    case " $old " in *" $id "*) return 1 ;; esac
    got=$(d "$vm" exec "$id" cat "$TARGET" 2>/dev/null | sha256sum) || return 1
    [ "$got" = "$want" ] || return 1
    n=$((n + 1))
  done < <(tasks bench)
  [ "$n" -eq "$REPLICAS" ]
}
# Poll until every task is new and reads WANT (from disk.t's time on, for
# ours) and the update after STARTED0 completed. Sets DELIVERED, COMPLETED
# (ns), and STARTED (the update's UpdateStatus.StartedAt). $1: the
# process to watch (ours) or "".
poll_rollout() {
  local watch=$1 old=$2 started0=$3 want=${4:-} st started
  local end=$(($(now) + BOUND_NS))
  DELIVERED='' COMPLETED='' RENEW_RC='' STARTED=''
  while :; do
    [ "$(now)" -lt "$end" ] || { POLL_ERR="not done after $((BOUND_NS / 1000000000)) s"; return 1; }
    if [ -n "$watch" ] && ! kill -0 "$watch" 2>/dev/null; then
      RENEW_RC=0
      wait "$watch" || RENEW_RC=$?
      watch=''
      [ "$RENEW_RC" -eq 0 ] || { POLL_ERR="phoenix-renew exited $RENEW_RC"; return 1; }
      # It waits for the update to complete: what is not seen soon is not coming.
      end=$(($(now) + 30000000000))
    fi
    if [ -z "$want" ] && [ -s "$W/disk.t" ]; then want=$(sha256sum <"$CERT"); fi
    if [ -n "$want" ] && [ -z "$DELIVERED" ] && all_new "$old" "$want"; then DELIVERED=$(now); fi
    if [ -z "$COMPLETED" ]; then
      read -r st started < <(update_status)
      [ "$st" = none ] || [ "$started" = "$started0" ] || STARTED=$started
      case $st in
        completed) [ "$started" != "$started0" ] && [ -n "$DELIVERED" ] && COMPLETED=$(now) ;;
        paused | rollback_*) POLL_ERR="update $st"; return 1 ;;
      esac
    fi
    [ -n "$DELIVERED" ] && [ -n "$COMPLETED" ] && return 0
    sleep 0.05
  done
}
# Background: wait for the certificate file's inode to change (the rename
# of the new one), then write "TIME_NS MTIME_NS" to disk.t.
watch_cert() {
  rm -f "$W/disk.t" "$W/disk.t.ready"
  python3 - "$CERT" "$W/disk.t" <<'PY' &
import os, sys, time
path, out = sys.argv[1], sys.argv[2]
ino, end = os.stat(path).st_ino, time.monotonic() + 300
open(out + ".ready", "w").close()
while time.monotonic() < end:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and st.st_ino != ino:
        t = time.time_ns()
        with open(out + ".tmp", "w") as f:
            f.write(f"{t} {st.st_mtime_ns}\n")
        os.rename(out + ".tmp", out)
        break
    time.sleep(0.001)
PY
  WATCHER=$!
  until [ -e "$W/disk.t.ready" ]; do sleep 0.01; done
}
calls() { [ -f "$CALLS" ] && wc -l <"$CALLS" || echo 0; }
# The docker argv (after `docker`) of every `qm guest exec` after line $1.
docker_calls() {
  tail -n +$(($1 + 1)) "$CALLS" | jq -r '
    select(.argv[0] == "guest" and .argv[1] == "exec") | .argv
    | .[(index("--") + 1):] | select(.[0] == "docker") | .[1:] | join(" ")'
}
guest_execs() { tail -n +$(($1 + 1)) "$CALLS" | jq -c 'select(.argv[0] == "guest" and .argv[1] == "exec")' | wc -l; }
is_write() { grep -Eq '^(secret (create|rm)|service (create|update|rm|rollback|scale)|config (create|rm))( |$)'; }
ms() { echo $((($2 - $1) / 1000000)); }
# "COUNT MS" of the qm calls that started in [$1, $2) (ns).
qm_time() {
  awk -v a="$1" -v b="$2" '$1 >= a && $1 < b {n++; t += $2 - $1} END {printf "%d %d\n", n, t / 1e6}' "$W/qmtime"
}
failed() { # ROUND WHAT LOG
  local keep
  keep=$(mktemp -d /tmp/secret_rotation-failed.XXXXXX)
  cp "$3" "$keep/" 2>/dev/null || true
  tail -n +1 "$3" >&2 || true
  d $MANAGER service ps --no-trunc bench >"$keep/service-ps.txt" 2>&1 || true
  d $MANAGER service inspect bench >"$keep/service-inspect.json" 2>&1 || true
  echo "round $1: $2 (log kept in $keep)" >&2
  FAILURES=$((FAILURES + 1))
  kill "$WATCHER" 2>/dev/null || true
  wait "$WATCHER" 2>/dev/null || true
}

echo "secret rotation on a real 2-node swarm: service bench, $REPLICAS replicas on nodes $nodes"
echo "update config: Docker's default (parallelism 1, monitor 5 s, stop-first), --stop-grace-period 1s"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %10s %10s %10s %10s %4s %4s %10s %10s %10s\n' round "ours upd" "ours dlv" "ours cpl" \
  "renew run" qm exec "floor upd" "floor dlv" "floor cpl"
OURS_D=() OURS_C=() RUN=() FLOOR_D=() FLOOR_C=() SKEW=() OURS_S=() FLOOR_S=() QM_N=() QM_MS=() FAILURES=0 ROUND1_CALLS=''
WATCHER=
for r in $(seq "$ROUNDS"); do
  # ours
  old=$(tasks bench | cut -d' ' -f2 | tr '\n' ' ')
  started0=$(update_status)
  started0=${started0#* }
  n0=$(calls)
  watch_cert
  rm -f "$W/wall"
  (
    t0=$(now) rc=0
    "$BIN/phoenix-renew" run --force >"$W/renew.$r.log" 2>&1 || rc=$?
    echo "$t0 $(now)" >"$W/wall"
    exit "$rc"
  ) &
  RENEW=$!
  if ! poll_rollout "$RENEW" "$old" "$started0"; then
    [ -n "$RENEW_RC" ] || wait "$RENEW" 2>/dev/null || true
    failed "$r" "ours: $POLL_ERR" "$W/renew.$r.log"
    continue
  fi
  rc=${RENEW_RC:-0}
  if [ -z "$RENEW_RC" ]; then wait "$RENEW" || rc=$?; fi
  read -r t0 t1 <"$W/wall"
  if [ "$rc" -ne 0 ]; then failed "$r" "phoenix-renew run --force exited $rc" "$W/renew.$r.log"; continue; fi
  read -r tdisk mtime <"$W/disk.t"
  wait "$WATCHER" 2>/dev/null || true
  OURS_D+=("$(ms "$tdisk" "$DELIVERED")") OURS_C+=("$(ms "$tdisk" "$COMPLETED")")
  RUN+=("$(ms "$t0" "$t1")") SKEW+=("$(((tdisk - mtime) / 1000000))")
  started_ns=$(date -d "$STARTED" +%s%N)
  OURS_S+=("$(ms "$tdisk" "$started_ns")")
  read -r n t < <(qm_time "$tdisk" "$started_ns")
  QM_N+=("$n") QM_MS+=("$t")
  qm=$(($(calls) - n0)) ex=$(guest_execs "$n0")
  [ -n "$ROUND1_CALLS" ] || ROUND1_CALLS=$(docker_calls "$n0" | awk '{print $1, $2}' | sort | uniq -c |
    awk '{printf "%s%s %s x%d", (NR > 1 ? ", " : ""), $2, $3, $1}')
  # floor
  old=$(tasks bench | cut -d' ' -f2 | tr '\n' ' ')
  started0=$(update_status)
  started0=${started0#* }
  want=$(sha256sum <"$CERT")
  t0=$(now)
  d $MANAGER service update --detach --no-resolve-image --force bench >/dev/null
  if ! poll_rollout "" "$old" "$started0" "$want"; then
    echo "floor: $POLL_ERR" >"$W/floor.$r.log"
    failed "$r" "floor: $POLL_ERR" "$W/floor.$r.log"
    continue
  fi
  FLOOR_D+=("$(ms "$t0" "$DELIVERED")") FLOOR_C+=("$(ms "$t0" "$COMPLETED")")
  FLOOR_S+=("$(ms "$t0" "$(date -d "$STARTED" +%s%N)")")
  printf '%-5s %7d ms %7d ms %7d ms %7d ms %4d %4d %7d ms %7d ms %7d ms\n' "$r" "${OURS_S[-1]}" \
    "${OURS_D[-1]}" "${OURS_C[-1]}" "${RUN[-1]}" "$qm" "$ex" "${FLOOR_S[-1]}" "${FLOOR_D[-1]}" "${FLOOR_C[-1]}"
done
[ "${#OURS_D[@]}" -gt 0 ] && [ "${#FLOOR_D[@]}" -gt 0 ] || fail "no round completed"

# p50 (lower median) and max of ms values, as "P50 MAX".
stats() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)], v[NR]}'; }
s() { awk -v v="$1" 'BEGIN {printf "%.2f s", v / 1000}'; }
read -r os_p os_m < <(stats "${OURS_S[@]}")
read -r fs_p fs_m < <(stats "${FLOOR_S[@]}")
read -r od_p od_m < <(stats "${OURS_D[@]}")
read -r qn_p _ < <(stats "${QM_N[@]}")
read -r qt_p qt_m < <(stats "${QM_MS[@]}")
read -r oc_p oc_m < <(stats "${OURS_C[@]}")
read -r run_p run_m < <(stats "${RUN[@]}")
read -r fd_p fd_m < <(stats "${FLOOR_D[@]}")
read -r fc_p fc_m < <(stats "${FLOOR_C[@]}")
read -r _ skew_m < <(stats "${SKEW[@]}")
echo "rounds: ${#OURS_D[@]} of $ROUNDS ours, ${#FLOOR_D[@]} of $ROUNDS floor, failed: $FAILURES"
echo "ours  update     (new cert on disk -> UpdateStatus.StartedAt):   p50 $(s "$os_p")  max $(s "$os_m")"
echo "ours  of which in sequential qm calls before the update:         p50 $(s "$qt_p")  max $(s "$qt_m") ($qn_p calls)"
echo "ours  delivery   (new cert on disk -> every task reads it):      p50 $(s "$od_p")  max $(s "$od_m")"
echo "ours  completion (new cert on disk -> UpdateStatus completed):   p50 $(s "$oc_p")  max $(s "$oc_m")"
echo "ours  phoenix-renew run --force (issue, install, rotate, clean): p50 $(s "$run_p")  max $(s "$run_m")"
echo "ours  docker commands of round 1 through qm: $ROUND1_CALLS"
echo "floor update     (service update --force -> StartedAt):          p50 $(s "$fs_p")  max $(s "$fs_m")"
echo "floor delivery   (service update --force -> every task new):     p50 $(s "$fd_p")  max $(s "$fd_m")"
echo "floor completion (service update --force -> completed, running): p50 $(s "$fc_p")  max $(s "$fc_m")"
awk -v a="$od_p" -v b="$fc_p" -v c="$oc_p" -v e="$fd_p" 'BEGIN {
  printf "ratio ours/floor (p50): delivery/completion %.2fx, delivery/delivery %.2fx, completion/completion %.2fx\n",
    a / b, a / e, c / b }'
echo "disk time: poller minus the file's mtime at most ${skew_m} ms"
echo "load average after the rounds: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- No-change run: the action pending, the same content -------------------------
STATE=$ETC/state/renew-state.json
jq '.certificates["bench.test"].post_pending = true' "$STATE" >"$STATE.new" && mv "$STATE.new" "$STATE"
n0=$(calls)
"$BIN/phoenix-renew" run >"$W/nochange.log" 2>&1 || { cat "$W/nochange.log" >&2; fail "no-change run"; }
docker_calls "$n0" >"$W/nochange.calls"
writes=0 reads=0
while IFS= read -r c; do
  if is_write <<<"$c"; then writes=$((writes + 1)); else reads=$((reads + 1)); fi
done <"$W/nochange.calls"
echo "no-change run (post_pending, same content): $reads read(s), $writes write(s): $(paste -sd';' "$W/nochange.calls")"
[ "$reads" -le 1 ] && [ "$writes" -eq 0 ] && met=met || met='NOT met'
echo "target (at most one read per service, no write): $met"

# --- The old bash chain, against a service mounting unversioned secrets ----------
for p in cert key ca; do
  printf 'old %s of legacy\n' "$p" | d $MANAGER secret create "legacy_tls_$p.pem" - >/dev/null
done
create_service legacy legacy_tls_cert.pem:legacy_tls_cert.pem \
  legacy_tls_key.pem:legacy_tls_key.pem legacy_tls_ca.pem:legacy_tls_ca.pem
cp "$CERT" "$W/drop/cert.pem"
cp "$W/certs/bench.key" "$W/drop/key.pem"
cp "$W/certs/ca.pem" "$W/drop/ca.pem"
chain="SECRET_CERT=\"legacy_tls_cert.pem\"; SECRET_KEY=\"legacy_tls_key.pem\"; SECRET_CA=\"legacy_tls_ca.pem\"; SERVICE_NAME=\"legacy\";"
chain+=" if docker secret inspect \$SECRET_CERT >/dev/null 2>&1; then docker secret rm \$SECRET_CERT; fi; docker secret create \$SECRET_CERT $W/drop/cert.pem;"
chain+=" if docker secret inspect \$SECRET_KEY >/dev/null 2>&1; then docker secret rm \$SECRET_KEY; fi; docker secret create \$SECRET_KEY $W/drop/key.pem;"
chain+=" if docker secret inspect \$SECRET_CA >/dev/null 2>&1; then docker secret rm \$SECRET_CA; fi; docker secret create \$SECRET_CA $W/drop/ca.pem;"
chain+=" if docker service inspect \$SERVICE_NAME >/dev/null 2>&1; then docker service update --force \$SERVICE_NAME; fi"
t0=$(now)
qrc=0
qm guest exec "$MANAGER" -- /bin/bash -c "$chain" >"$W/legacy.json" 2>"$W/legacy.err" || qrc=$?
t1=$(now)
grc=$(jq -r 'if has("exitcode") then .exitcode else "none (\(keys | join(",")))" end' "$W/legacy.json" 2>/dev/null || echo '?')
errs=$(jq -r '."err-data" // ""' "$W/legacy.json" 2>/dev/null | grep -c . || true)
new_n=0 old_n=0 tot=0
want_new=$(sha256sum <"$CERT") want_old=$(printf 'old cert of legacy\n' | sha256sum)
while read -r vm id; do
  got=$(d "$vm" exec "$id" cat /run/secrets/legacy_tls_cert.pem | sha256sum) || got=unreadable
  tot=$((tot + 1))
  if [ "$got" = "$want_new" ]; then new_n=$((new_n + 1)); fi
  if [ "$got" = "$want_old" ]; then old_n=$((old_n + 1)); fi
done < <(tasks legacy)
echo "legacy chain (secret rm/create x3, service update --force): $(s "$(ms "$t0" "$t1")") wall, qm exit $qrc, guest exit $grc, $errs error line(s)"
echo "legacy tasks afterwards: $old_n of $tot read the OLD certificate, $new_n the new one"
[ "$FAILURES" -eq 0 ] || fail "$FAILURES round(s) failed"
