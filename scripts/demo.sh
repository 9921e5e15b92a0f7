#!/usr/bin/env bash
# A whole Phoenix boot on loopback, with the real binaries, a real step-ca
# and a real Docker Swarm: VMs 1001 and 1002 are two dockerd of Debian's
# docker.io, each in its own network and UTS namespace
# (scripts/lib/realswarm.sh). Proxmox (qm, pct) is the project's fake
# (tests/fakes): `qm guest exec ID -- docker ...` reaches that VM's
# daemon; the guests' systemctl is a recording stub. In order:
#   1. the CA container's pre-start hook starts a new CA generation;
#   2. a VM boots first: its phoenix-ca-wait waits for the CA;
#   3. the CA container starts late; its post-start hook waits, bounded;
#      step-ca's ExecStartPost publishes the readiness token once /health
#      answers; the hook and the VM's wait return; the VM's dockerd
#      starts, then the next VM's;
#   4. phoenix-sync.target: phoenix-swarm forms the swarm (manager, worker),
#      then phoenix-renew issues the certificates, installs them and runs
#      each post-renewal action in its guest (one becomes versioned Swarm
#      secrets), then phoenix-deploy deploys the stacks: Portainer (a
#      stand-in: busybox tagged portainer/portainer-ce:latest) on the
#      manager with those secrets, Qdrant on the worker;
#   5. time passes: the certificates are due, the timer's run renews them
#      and rotates the secrets into the running task; the next deployment
#      follows the new names;
#   6. a second run of all three changes nothing;
#   7. phoenix-renew, phoenix-swarm and phoenix-deploy status, docker node
#      ls and service ls.
#
#   scripts/demo.sh            (no flags; installs what it needs; root for
#                               apt-get, namespaces and the daemons)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/install.sh

ensure_packages curl:curl /usr/bin/python3:python3 unshare:util-linux
ensure_realswarm
ensure_step
ensure_cargo
log "building (release)"
bash scripts/build-release.sh
BIN=$PWD/target/release
FAKES=$PWD/tests/fakes

W=$(mktemp -d /tmp/phoenix-demo.XXXXXX)
PIDS=()
REALSWARM=$PWD/scripts/lib/realswarm.sh
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash "$REALSWARM" down "$W/swarm" || true
  rm -rf "$W"
}
trap cleanup EXIT

T0=$(date +%s%N)
say() { printf '%6s  %-7s %s\n' "$(( ($(date +%s%N) - T0) / 1000000000 )).$(( ($(date +%s%N) - T0) / 100000000 % 10 ))s" "$1" "$2"; }
stream() { local who=$1 l; while IFS= read -r l; do say "$who" "$l"; done; }
section() { printf '\n== %s\n' "$*"; }

# --- The world: storage, Phoenix files, fake guests --------------------------
STORAGE=$W/pve/quickOS                      # a Proxmox storage, /mnt/pve/quickOS
SSL=$STORAGE/lxc-persistent-data/103/ssl    # the CA container's state directory
ETC=$W/phoenix_etc
export PHOENIX_FAKE_PVE=$W/fakepve          # state of the fake qm/pct
export PATH=$FAKES:$PATH                    # fake qm, pct first
export STEPPATH=$W/ct103/steppath           # step-ca's own files (the CA guest)
mkdir -p "$SSL" "$ETC" "$W/ct103" "$W/host"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=https://127.0.0.1:$PORT

# The VMs' Docker: a real dockerd each, on a bridge of their own; the fake
# qm reaches them through qemu/ID/bin/docker. Powered off until they boot.
bash "$REALSWARM" up "$W/swarm" "$PHOENIX_FAKE_PVE" 1001:portainer 1002:drphoenix > "$W/swarm.env"
IP1=$(sed -n 's/^VM_1001_IP=//p' "$W/swarm.env")
IP2=$(sed -n 's/^VM_1002_IP=//p' "$W/swarm.env")
bash "$REALSWARM" stop "$W/swarm" 1001
bash "$REALSWARM" stop "$W/swarm" 1002

# The CA: a real step-ca, initialised once (as the CA container's first boot
# did). Claims allow the demo's 90 s certificates.
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$W/ct103/password")
step ca init --name "Phoenix Demo CA" --dns 127.0.0.1 --address "127.0.0.1:$PORT" \
  --provisioner admin@thinkheads.ai --password-file "$W/ct103/password" \
  --provisioner-password-file "$W/ct103/password" > "$W/ct103/init.log" 2>&1
python3 - "$STEPPATH/config/ca.json" <<'EOF'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["authority"]["claims"] = {"minTLSCertDuration": "30s", "defaultTLSCertDuration": "24h",
                            "maxTLSCertDuration": "24h"}
json.dump(c, open(p, "w"), indent=2)
EOF
cp "$STEPPATH/certs/root_ca.crt" "$SSL/phoenix_root_ca.crt"
install -m 0600 "$W/ct103/password" "$SSL/provisioner_password.txt"

# The Phoenix files: the CA container, two VMs (manager, worker), the
# certificate manifest (one certificate per VM, installed on shared storage).
cat > "$ETC/phoenix_lxc_configs.json" <<EOF
{"lxc_configs": {"103": {"name": "Step-CA", "unprivileged": true,
  "mount_points": [{"host_path": "$SSL", "container_path": "/etc/step-ca/ssl"}]}}}
EOF
cat > "$ETC/phoenix_vm_configs.json" <<EOF
{"vms": [
  {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
   "network_config": {"ip": "$IP1/24"}, "docker_stacks": ["portainer_service"]},
  {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker",
   "network_config": {"ip": "$IP2/24"}, "node_labels": ["gpu=false"],
   "docker_stacks": ["qdrant_service"]}]}
EOF
# The stacks: Phoenix's stacks file and compose files, on the storage.
cat > "$ETC/phoenix_stacks_config.json" <<'EOF'
{"docker_stacks": {
  "qdrant_service": {"description": "Qdrant vector database for RAG.",
    "compose_file_path": "persistent-storage/qdrant/docker-compose.yml",
    "environments": {"production": {"variables": [{"name": "QDRANT_PORT", "value": "6333"}],
      "files": [], "services": {"qdrant": {"traefik_labels": [
        "traefik.enable=true",
        "traefik.http.routers.qdrant.rule=Host(`qdrant.phoenix.demo`)"]}}}}},
  "portainer_service": {"description": "Portainer management UI.",
    "compose_file_path": "persistent-storage/portainer/docker-compose.yml",
    "environments": {"production": {"variables": [], "files": [],
      "services": {"portainer": {"traefik_labels": ["traefik.enable=true"]}}}}}}}
EOF
mkdir -p "$STORAGE/persistent-storage/qdrant" "$STORAGE/persistent-storage/portainer"
cat > "$STORAGE/persistent-storage/qdrant/docker-compose.yml" <<'EOF'
version: '3.8'
services:
  qdrant:
    image: qdrant/qdrant:latest
    command: ["sh", "-c", "echo listening on $$QDRANT_PORT; exec sleep 1000000"]
    stop_grace_period: 1s
    networks:
      - traefik-public
    deploy:
      replicas: 1
      placement:
        constraints: []
      labels: {}
networks:
  traefik-public:
    external: true
EOF
cat > "$STORAGE/persistent-storage/portainer/docker-compose.yml" <<'EOF'
services:
  portainer:
    image: portainer/portainer-ce:latest
    command: ["sleep", "1000000"]
    stop_grace_period: 1s
    networks:
      - traefik-public
    deploy:
      replicas: 1
      update_config:
        monitor: 1s
      placement:
        constraints:
          - node.role == manager
      labels: {}
    secrets:
      - portainer_admin_password
      - source: portainer_tls_ca.pem
        target: /certs/ca.pem
        mode: 0644
      - source: portainer_tls_cert.pem
        target: /certs/tls-cert.pem
        mode: 0644
      - source: portainer_tls_key.pem
        target: /certs/tls-key.pem
        mode: 0600
networks:
  traefik-public:
    external: true
secrets:
  portainer_admin_password:
    external: true
  portainer_tls_ca.pem:
    external: true
  portainer_tls_cert.pem:
    external: true
  portainer_tls_key.pem:
    external: true
EOF
( umask 077; head -c 18 /dev/urandom | base64 > "$W/host/portainer_admin_password" )
CERTS=$STORAGE/vm-certs
cat > "$ETC/certificate-manifest.json" <<EOF
[{"common_name": "portainer.phoenix.demo", "sans": ["$IP1"],
  "guest_id": 1001, "guest_type": "vm", "owner": "root:root", "include_ca": true,
  "cert_path": "$CERTS/1001/cert.pem", "key_path": "$CERTS/1001/key.pem",
  "post_renewal": {"run": ["systemctl", "restart", "docker"]}},
 {"common_name": "drphoenix.phoenix.demo", "sans": ["$IP2"],
  "guest_id": 1002, "guest_type": "vm", "owner": "root:root",
  "cert_path": "$CERTS/1002/cert.pem", "key_path": "$CERTS/1002/key.pem",
  "post_renewal": {"run": ["systemctl", "reload", "traefik"]}},
 {"common_name": "portainer-tls.phoenix.demo",
  "guest_id": 1001, "guest_type": "vm", "owner": "root:root", "include_ca": true,
  "cert_path": "$CERTS/1001/tls/cert.pem", "key_path": "$CERTS/1001/tls/key.pem",
  "post_renewal": {"swarm_secrets": {"cert": "portainer_tls_cert.pem",
                                     "key": "portainer_tls_key.pem",
                                     "ca": "portainer_tls_ca.pem"},
                   "services": ["portainer_service_portainer"]}}]
EOF
for id in 1001 1002; do
  g=$PHOENIX_FAKE_PVE/qemu/$id
  mkdir -p "$g/bin"
  # A recording systemctl: what the post-renewal actions did in the guest.
  printf '#!/bin/sh\necho "$FAKE_GUEST_ID systemctl $*" >> "$FAKE_PVE/systemctl.log"\n' > "$g/bin/systemctl"
  chmod 0755 "$g/bin/systemctl"
done

cat > "$W/toolkit.json" <<EOF
{
  "\$comment": "scripts/demo.sh: the Phoenix layout under $W",
  "phoenix_etc": "$ETC",
  "storage_root": "$W/pve",
  "lock_dir": "$W/run/lock/phoenix",
  "state_dir": "$W/var/lib/phoenix",
  "ca": {"url": "$URL", "state_dir": "$SSL", "guest_state_dir": "$SSL",
         "post_start_timeout_secs": 60, "wait_timeout_secs": 60},
  "renewal": {"lifetime": "90s", "threshold": "50s"},
  "swarm": {"agent_timeout_secs": 10, "state_timeout_secs": 10},
  "deploy": {"stacks_root": "$STORAGE", "converge_timeout_secs": 60,
             "networks": {"traefik-public": {"driver": "overlay", "attachable": true}},
             "secrets": {"portainer_admin_password": {"file": "$W/host/portainer_admin_password"}}}
}
EOF
export PHOENIX_CONFIG=$W/toolkit.json

# phoenix-hook checks that the CA state lives on a mounted storage: run it
# in a private mount namespace where $STORAGE is a mount point (a bind
# mount standing for the NFS storage; it vanishes with the namespace).
hook() {
  unshare --mount --propagation private -- \
    sh -c 'mount --bind "$1" "$1" && shift && exec "$@"' sh "$STORAGE" \
    "$BIN/phoenix-hook" "$@"
}

echo
echo "Phoenix boot on loopback: CA at $URL, everything under $W"

section "1-3. Boot: the CA container and a VM that comes up first"
say host "CT 103 pre-start (hookscript)"
hook 103 pre-start 2>&1 | stream host

say vm1001 "phoenix-ca-wait.service starts; the CA is not up yet"
# (In a VM the unit adds --bootstrap, which installs the root into the
# system trust store: not done to the machine running this demo.)
( "$BIN/phoenix-ca" wait 2>&1; echo "phoenix-ca wait exited $?" ) | stream vm1001 &
WAITER=$!; PIDS+=("$WAITER")

sleep 2   # the CA container is still booting: the late CA of the scenario
say host "CT 103 post-start (hookscript): Proxmox holds the next onboot guest"
( hook 103 post-start 2>&1; echo "post-start exited $?" ) | stream host &
POST=$!; PIDS+=("$POST")
sleep 1
say ct103 "step-ca.service starts"
step-ca "$STEPPATH/config/ca.json" --password-file "$W/ct103/password" > "$W/ct103/ca.log" 2>&1 &
PIDS+=("$!")
say ct103 "ExecStartPost: phoenix-ca publish (waits for /health)"
"$BIN/phoenix-ca" publish 2>&1 | stream ct103
wait "$WAITER" "$POST"
say vm1001 "docker.service starts (ordered after phoenix-ca-wait.service)"
bash "$REALSWARM" start "$W/swarm" 1001
say vm1001 "dockerd answers (hostname portainer, $IP1)"
say host "Proxmox starts the next onboot guest (VM 1002)"
bash "$REALSWARM" start "$W/swarm" 1002
say vm1002 "dockerd answers (hostname drphoenix, $IP2)"

# Images as Phoenix names them: the harness's busybox, tagged on each node
# (nothing is pulled).
for id in 1001 1002; do
  for image in portainer/portainer-ce:latest qdrant/qdrant:latest; do
    "$PHOENIX_FAKE_PVE/qemu/$id/bin/docker" image tag local/busybox:1 "$image"
  done
done

section "4. phoenix-sync.target: the swarm, then the certificates, then the stacks"
export STEPPATH=$W/host/steppath            # the host's step, not the CA's
say host "phoenix-swarm ensure"
"$BIN/phoenix-swarm" ensure 2>&1 | stream host
say host "phoenix-renew run"
"$BIN/phoenix-renew" run 2>&1 | stream host
ISSUED=$(date +%s)
stream guests < "$PHOENIX_FAKE_PVE/systemctl.log"
say host "phoenix-deploy run"
"$BIN/phoenix-deploy" run 2>&1 | stream host
DOCKER1=$PHOENIX_FAKE_PVE/qemu/1001/bin/docker
version() { "$DOCKER1" secret ls --filter "label=phoenix.secret=$1" --format '{{.Name}}'; }
task_cert() {  # the certificate the running portainer task reads
  local c
  for _ in $(seq 1 100); do
    c=$("$DOCKER1" ps -q --filter label=com.docker.swarm.service.name=portainer_service_portainer | head -1)
    [ -n "$c" ] && "$DOCKER1" exec "$c" cat /certs/tls-cert.pem 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
serial() {  # the serial of the certificate on stdin
  cat > "$W/seen.pem"
  step certificate inspect --format json "$W/seen.pem" | python3 -c 'import json,sys; print(json.load(sys.stdin)["serial_number"])'
}
say vm1001 "portainer_service_portainer reads $(version portainer_tls_cert.pem), serial $(task_cert | serial)"
say vm1002 "$("$DOCKER1" service ps --format '{{.Name}} on {{.Node}}: {{.CurrentState}}' qdrant_service_qdrant | head -1)"

section "5. Time passes: the 90 s certificates are due with 50 s left"
sleep $(( ISSUED + 41 - $(date +%s) > 0 ? ISSUED + 41 - $(date +%s) : 0 ))
say host "phoenix-renew.timer: phoenix-renew run"
: > "$PHOENIX_FAKE_PVE/systemctl.log"
"$BIN/phoenix-renew" run 2>&1 | stream host
stream guests < "$PHOENIX_FAKE_PVE/systemctl.log"
if task_cert | cmp -s - "$CERTS/1001/tls/cert.pem"; then
  say vm1001 "portainer's running task reads the renewed certificate, serial $(task_cert | serial)"
else
  say demo "UNEXPECTED: portainer's task does not read the renewed certificate"; exit 1
fi
say host "the next sync's phoenix-deploy run: the compose now names the new versions"
"$BIN/phoenix-deploy" run 2>&1 | stream host

section "6. A second run changes nothing"
: > "$PHOENIX_FAKE_PVE/systemctl.log"
"$BIN/phoenix-swarm" ensure 2>&1 | stream host
"$BIN/phoenix-renew" run 2>&1 | stream host
"$BIN/phoenix-deploy" run 2> "$W/deploy.err" | tee "$W/deploy.out" | stream host
if ! grep -qx "no change" "$W/deploy.out"; then
  stream host < "$W/deploy.err"; say demo "UNEXPECTED: the second deployment changed something"; exit 1
fi
if [ -s "$PHOENIX_FAKE_PVE/systemctl.log" ]; then
  stream "guests" < "$PHOENIX_FAKE_PVE/systemctl.log"
  say demo "UNEXPECTED: the second run acted in a guest"; exit 1
fi
say guests "no post-renewal action ran"

section "7. Status"
echo "\$ phoenix-ca status"
"$BIN/phoenix-ca" status | sed 's/^/  /'
echo "\$ phoenix-renew status"
"$BIN/phoenix-renew" status | sed 's/^/  /'
echo "\$ phoenix-swarm status"
"$BIN/phoenix-swarm" status | sed 's/^/  /'
echo "\$ phoenix-deploy status"
"$BIN/phoenix-deploy" status | sed 's/^/  /'
echo "\$ docker node ls   (in VM 1001: the real engine's view)"
"$PHOENIX_FAKE_PVE/qemu/1001/bin/docker" node ls | sed 's/^/  /'
echo "\$ docker service ls"
"$PHOENIX_FAKE_PVE/qemu/1001/bin/docker" service ls | sed 's/^/  /'
