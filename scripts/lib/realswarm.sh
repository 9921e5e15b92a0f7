#!/usr/bin/env bash
# realswarm.sh: a REAL multi-node Docker Swarm on one machine, for the
# tests (tests/realswarm_support) and the demo. Each "VM" is a dockerd of
# Debian's docker.io with its own network namespace (a veth on a bridge of
# this instance), its own UTS namespace (its hostname), and its own
# data-root, exec-root, pidfile and socket under BASE/vmID.
#
#   realswarm.sh up BASE PVEDIR VMID[:HOSTNAME]...
#       start one dockerd per VM (hostname default vmID), import the image
#       local/busybox:1 on each, and write PVEDIR/qemu/ID/bin/docker (the
#       fake qm runs a guest's commands with that bin/ first on PATH) so
#       `qm guest exec ID -- docker ...` reaches that VM's daemon (PVEDIR
#       "-": no wrappers). Prints KEY=VALUE lines: NET, BRIDGE, and per VM
#       VM_<id>_IP, VM_<id>_SOCK, VM_<id>_HOSTNAME.
#   realswarm.sh stop BASE VMID    stop that VM's dockerd, wait for it to exit
#   realswarm.sh start BASE VMID   start it again: same data-root, network
#                                  namespace and hostname
#   realswarm.sh down BASE         remove exactly what `up` made (daemons,
#                                  their processes, mounts under BASE,
#                                  namespaces, links); idempotent
#
# Needs root, docker.io, busybox-static, iproute2, util-linux. Traps (Debian
# bookworm, docker.io 20.10):
# - `ip netns exec` remounts /sys and hides the cgroup mounts ("Devices
#   cgroup isn't mounted"): dockerd is started with `nsenter --net=`.
# - `--storage-driver=vfs --iptables=false --bridge=none`: what works here.
# - Nothing can be pulled: the image is imported from busybox-static's
#   /bin/busybox on EVERY node (a task on a node without it is rejected).
# - A worker that left shows Down on the manager only after 10-20 s.
# - /usr/local/bin/docker may be another CLI: /usr/bin/docker is used.
# - dockerd leaves network-namespace bind mounts under its exec-root.
#
# Names are unique per instance: a slot N claimed under a lock in
# /run/phoenix-realswarm gives the subnet 10.(200+N/256).(N%256).0/24, the
# bridge rsbrN, namespaces rsN-VMID and veths rsNhI / rsNgI. The bridge has
# no address: the host's routes do not change.
set -euo pipefail

DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
SLOTS=/run/phoenix-realswarm
IMAGE=local/busybox:1

die() { printf 'realswarm: %s\n' "$*" >&2; exit 1; }
usage() {
  echo "usage: realswarm.sh up BASE PVEDIR VMID[:HOSTNAME]... | stop BASE VMID | start BASE VMID | down BASE" >&2
  exit 2
}

cmd=${1:-}; BASE=${2:-}
[ -n "$cmd" ] && [ -n "$BASE" ] || usage
[ "$(id -u)" -eq 0 ] || die "needs root (network and UTS namespaces, dockerd)"
case $BASE in /*) ;; *) BASE=$PWD/$BASE ;; esac
BASE=${BASE%/}
ENV=$BASE/realswarm.env

# Alive and not a zombie (PID 1 here may reap late).
alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

# Wait up to $1 tenths of a second for every pid in $2... to end.
wait_gone() {
  local n=$1 p any; shift
  while :; do
    any=0
    for p in "$@"; do alive "$p" && any=1; done
    [ $any = 0 ] && return 0
    [ "$n" -le 0 ] && return 1
    n=$((n - 1)); sleep 0.1
  done
}

# Every process whose argv names a path under $1 (dockerd, its containerd,
# containerd shims), every process in the cgroup of a container of a daemon
# under $1 (tasks: a shim that went leaves its task to PID 1), and their
# descendants.
procs_under() {
  local prefix=$1 f p
  local -a roots=() cids=()
  for f in $(grep -lsaF -- "$prefix" /proc/[0-9]*/cmdline); do
    grep -qsaF realswarm.sh "$f" && continue # this script: its argv names BASE
    p=${f#/proc/}; roots+=("${p%/cmdline}")
  done
  for f in "$prefix"vm*/data/containers/*/; do
    [ -d "$f" ] || continue
    f=${f%/}; cids+=("-e" "/docker/${f##*/}")
  done
  if ((${#cids[@]})); then
    for f in $(grep -lsF "${cids[@]}" /proc/[0-9]*/cgroup); do
      p=${f#/proc/}; roots+=("${p%/cgroup}")
    done
  fi
  ((${#roots[@]})) || return 0
  # Descendants, from the parent links of every process.
  local -A kids=()
  local stat ppid
  for f in /proc/[0-9]*/stat; do
    stat=$(<"$f") 2>/dev/null || continue
    p=${f#/proc/}; p=${p%/stat}
    stat=${stat##*) }; ppid=${stat#* }; ppid=${ppid%% *}
    kids[$ppid]="${kids[$ppid]:-} $p"
  done 2>/dev/null
  local -a queue=("${roots[@]}") out=()
  local -A seen=()
  while ((${#queue[@]})); do
    p=${queue[0]}; queue=("${queue[@]:1}")
    [ -n "${seen[$p]:-}" ] && continue
    seen[$p]=1; out+=("$p")
    # shellcheck disable=SC2206
    [ -n "${kids[$p]:-}" ] && queue+=(${kids[$p]})
  done
  echo "${out[@]}"
}

# TERM then KILL every process of a path prefix; $2 tenths of a second grace.
kill_under() {
  local prefix=$1 grace=$2 pids
  pids=$(procs_under "$prefix")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  # shellcheck disable=SC2086
  wait_gone "$grace" $pids && return 0
  # The first set too: a task whose shim went is no descendant any more
  # (and a task, PID 1 of its namespace, ignores TERM).
  pids="$pids $(procs_under "$prefix")"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  # shellcheck disable=SC2086
  wait_gone 50 $pids || die "processes under $prefix survive SIGKILL: $pids"
}

daemon_pid() { # VMID: the running dockerd's pid, or nothing
  local d=$BASE/vm$1 p
  for f in "$d/pid" "$d/launcher.pid"; do
    p=$(cat "$f" 2>/dev/null) || continue
    if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$d/sock"; then
      echo "$p"; return 0
    fi
  done
}

# Start VM $1's dockerd in its namespaces and wait until it answers.
launch() {
  local id=$1 d=$BASE/vm$1 NS HOSTNAME_ pid
  NS=$(cat "$d/netns"); HOSTNAME_=$(cat "$d/hostname")
  [ -z "$(daemon_pid "$id")" ] || die "the dockerd of VM $id is already running"
  rm -f "$d/pid"
  echo "--- $(date -u +%FT%TZ) realswarm: starting dockerd" >>"$d/log"
  # One process from setsid to dockerd (no option forks): $! is dockerd.
  setsid nsenter --net="/run/netns/$NS" -- unshare --uts -- \
    /bin/sh -c 'hostname "$1" && shift && exec "$@"' realswarm-vm "$HOSTNAME_" \
    "$DOCKERD" --config-file "$d/daemon.json" --data-root "$d/data" \
    --exec-root "$d/exec" --pidfile "$d/pid" -H "unix://$d/sock" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    >>"$d/log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$d/launcher.pid"
}

wait_ready() {
  local id=$1 d=$BASE/vm$1 pid n=600
  pid=$(cat "$d/launcher.pid")
  while ! "$DOCKER" -H "unix://$d/sock" version --format '{{.Server.Version}}' >/dev/null 2>&1; do
    if ! alive "$pid"; then
      die "the dockerd of VM $id exited while starting; the end of $d/log:
$(tail -n 8 "$d/log")"
    fi
    if [ $n -le 0 ]; then
      die "the dockerd of VM $id did not answer on $d/sock within 60 s; the end of $d/log:
$(tail -n 8 "$d/log")"
    fi
    n=$((n - 1)); sleep 0.1
  done
}

# Stop VM $1's dockerd: TERM, wait for it (and its containerd) to exit,
# KILL what is left.
halt() {
  local id=$1 d=$BASE/vm$1 pid
  pid=$(daemon_pid "$id")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone 300 "$pid" || true
  fi
  kill_under "$d/" 50
}

# A slot for this instance, claimed under the lock; a slot whose BASE has
# no env file any more is stale (its instance was removed) and reused.
claim_slot() {
  mkdir -p "$SLOTS"
  exec 9>"$SLOTS/lock"
  flock 9
  local n owner
  for ((n = 0; n < 50 * 256; n++)); do
    if [ -f "$SLOTS/$n" ]; then
      owner=$(cat "$SLOTS/$n")
      [ -f "$owner/realswarm.env" ] && continue
      # Stale: clear what its names may still hold.
      ip link del "rsbr$n" 2>/dev/null || true
      for ns in $(ip netns list | awk -v p="rs$n-" 'index($1, p) == 1 {print $1}'); do
        ip netns del "$ns" 2>/dev/null || true
      done
    fi
    echo "$BASE" >"$SLOTS/$n"
    SLOT=$n
    save_env
    flock -u 9; exec 9>&-
    return 0
  done
  die "no free slot in $SLOTS"
}

# What down needs, rewritten before each thing `up` makes.
save_env() {
  printf 'SLOT=%s\nNET=%s\nBRIDGE=%s\nVMS="%s"\nNAMESPACES="%s"\nVETHS="%s"\n' \
    "$SLOT" "${NET:-}" "${BRIDGE:-}" "${VMS:-}" "${NAMESPACES:-}" "${VETHS:-}" >"$ENV.tmp"
  mv "$ENV.tmp" "$ENV"
}

# The image's root: busybox-static with every applet linked.
make_image() {
  local r=$BASE/rootfs
  dpkg -s busybox-static >/dev/null 2>&1 && [ -x /bin/busybox ] ||
    die "busybox-static is not installed (the image needs its static /bin/busybox): apt-get install busybox-static"
  rm -rf "$r"; mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/usr/bin" "$r/var"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"
  done
  ln -sf ../../bin/env "$r/usr/bin/env"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
  tar -C "$r" -cf "$BASE/busybox.tar" .
  rm -rf "$r"
}

up() {
  local pvedir=${1:-}; shift || true
  [ -n "$pvedir" ] && [ $# -ge 1 ] || usage
  [ -x "$DOCKERD" ] && [ -x "$DOCKER" ] || die "docker.io is not installed ($DOCKERD, $DOCKER): apt-get install docker.io"
  [ ! -e "$ENV" ] || die "$BASE already holds a swarm (realswarm.sh down $BASE first)"
  # containerd's socket, BASE/vmID/exec/containerd/containerd.sock.ttrpc,
  # must fit a unix socket address (107 bytes).
  [ ${#BASE} -le 56 ] || die "BASE $BASE is too long for the daemons' unix sockets (56 characters at most)"
  mkdir -p "$BASE"
  make_image
  claim_slot
  # From here on, a failure removes what was made.
  trap 'rc=$?; [ $rc = 0 ] || down; exit $rc' EXIT
  local i=10 spec id host ns veth_h veth_g d ids=()
  NET=10.$((200 + SLOT / 256)).$((SLOT % 256)); BRIDGE=rsbr$SLOT
  save_env
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  for spec in "$@"; do
    id=${spec%%:*}; host=${spec#*:}; [ "$host" != "$spec" ] || host=vm$id
    case $id in ''|*[!0-9]*) die "not a VMID: $id" ;; esac
    i=$((i + 1)); ns=rs$SLOT-$id; veth_h=rs${SLOT}h$((i - 10)); veth_g=rs${SLOT}g$((i - 10))
    d=$BASE/vm$id
    [ ! -e "$d" ] || die "VMID $id given twice"
    mkdir -p "$d"
    echo "$ns" >"$d/netns"; echo "$host" >"$d/hostname"; echo "$NET.$i" >"$d/ip"
    ids+=("$id"); VMS="${ids[*]}"; NAMESPACES="${NAMESPACES:-} $ns"; VETHS="${VETHS:-} $veth_h"
    save_env
    ip netns add "$ns"
    ip link add "$veth_h" type veth peer name "$veth_g"
    ip link set "$veth_h" master "$BRIDGE" up
    ip link set "$veth_g" netns "$ns"
    ip -n "$ns" link set "$veth_g" name eth0
    ip -n "$ns" addr add "$NET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Its own config file: /etc/docker/daemon.json is the host's, not ours.
    # A short shutdown timeout: busybox tasks ignore SIGTERM as PID 1.
    echo '{"shutdown-timeout": 2}' >"$d/daemon.json"
    launch "$id"
  done
  for id in "${ids[@]}"; do wait_ready "$id"; done
  for id in "${ids[@]}"; do
    "$DOCKER" -H "unix://$BASE/vm$id/sock" import -c 'CMD ["sh"]' "$BASE/busybox.tar" "$IMAGE" >/dev/null ||
      die "importing $IMAGE into VM $id failed"
  done
  if [ "$pvedir" != - ]; then
    for id in "${ids[@]}"; do
      mkdir -p "$pvedir/qemu/$id/bin"
      printf '#!/bin/sh\n# realswarm.sh: this VM'"'"'s docker is the dockerd at %s\nexec %s -H unix://%s "$@"\n' \
        "$BASE/vm$id/sock" "$DOCKER" "$BASE/vm$id/sock" >"$pvedir/qemu/$id/bin/docker"
      chmod 0755 "$pvedir/qemu/$id/bin/docker"
    done
  fi
  echo "NET=$NET"; echo "BRIDGE=$BRIDGE"
  for id in "${ids[@]}"; do
    echo "VM_${id}_IP=$(cat "$BASE/vm$id/ip")"
    echo "VM_${id}_SOCK=$BASE/vm$id/sock"
    echo "VM_${id}_HOSTNAME=$(cat "$BASE/vm$id/hostname")"
  done
}

down() {
  [ -f "$ENV" ] || return 0
  local VMS="" NAMESPACES="" VETHS="" BRIDGE="" SLOT="" id ns v m pids=()
  # shellcheck disable=SC1090
  . "$ENV"
  # Every daemon at once: TERM, a short wait (a daemon with running tasks
  # waits out their stop grace period: not needed for a swarm that goes
  # away), then KILL whatever runs under BASE (containerd, shims, tasks).
  for id in $VMS; do
    v=$(daemon_pid "$id")
    [ -n "$v" ] && pids+=("$v") && { kill -TERM "$v" 2>/dev/null || true; }
  done
  ((${#pids[@]})) && { wait_gone 30 "${pids[@]}" || true; }
  kill_under "$BASE/" 10
  # The cgroups of killed tasks (runc removes them only on a clean stop).
  for m in "$BASE"/vm*/data/containers/*/; do
    [ -d "$m" ] || continue
    m=${m%/}
    for v in /sys/fs/cgroup/*/docker/"${m##*/}"; do
      [ -d "$v" ] && { rmdir "$v" 2>/dev/null || true; }
    done
  done
  awk -v b="$BASE/" 'index($2, b) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  for ns in $NAMESPACES; do ip netns del "$ns" 2>/dev/null || true; done
  for v in $VETHS; do ip link del "$v" 2>/dev/null || true; done
  [ -n "$BRIDGE" ] && { ip link del "$BRIDGE" 2>/dev/null || true; }
  if [ -n "$SLOT" ] && [ "$(cat "$SLOTS/$SLOT" 2>/dev/null)" = "$BASE" ]; then
    rm -f "$SLOTS/$SLOT"
  fi
  rm -f "$ENV"
}

vm_of() {
  local id=${1:-}
  [ -n "$id" ] || usage
  [ -f "$ENV" ] || die "no swarm under $BASE"
  [ -f "$BASE/vm$id/netns" ] || die "no VM $id under $BASE"
}

case $cmd in
  up) shift 2; up "$@" ;;
  down) down ;;
  stop) vm_of "${3:-}"; halt "$3" ;;
  start) vm_of "${3:-}"; launch "$3"; wait_ready "$3" ;;
  *) usage ;;
esac
