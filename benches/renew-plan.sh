#!/usr/bin/env bash
# Planning benchmark of phoenix-renew: N certificates (default 1000) made
# for the bench by step (a root, then N leaves with their P-256 keys), then
#   - one `phoenix-renew run` (cold: every key's public point derived);
#   - `phoenix-renew run --dry-run`: read the manifest, parse every bundle,
#     match every key (memo by key digest), compare SANs, decide; median
#     of 5 (the whole process, and the planning alone as the binary logs it);
#   - the baseline: `openssl x509 -checkend` once per file, as the bash did
#     (and that only checks expiry).
#
#   benches/renew-plan.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
cargo build --release --quiet --bin phoenix-renew
BIN=$PWD/target/release/phoenix-renew
# BENCH_DIR keeps the generated certificates between runs (making 1,000
# with step takes a minute or two on two cores).
if [ -n "${BENCH_DIR:-}" ]; then
  W=$BENCH_DIR
else
  W=$(mktemp -d)
  trap 'rm -rf "$W"' EXIT
fi
export STEPPATH=$W/steppath
mkdir -p "$W/etc" "$W/certs"

if [ ! -s "$W/certs/host$N.crt" ]; then
echo "making a root and $N certificates in $W (once per run of the bench)..." >&2
step certificate create "Bench Root" "$W/root.crt" "$W/root.key" --profile root-ca \
  --no-password --insecure >/dev/null 2>&1
# Each: a DNS name and an IPv4 address SAN, 24 h, signed by the root.
seq 1 "$N" | xargs -P 4 -I{} sh -c 'i=$1; w=$2
  step certificate create "host$i.bench.internal" "$w/certs/host$i.crt" "$w/certs/host$i.key" \
    --ca "$w/root.crt" --ca-key "$w/root.key" --san "host$i.bench.internal" \
    --san "10.1.$((i / 256)).$((i % 256))" --no-password --insecure --not-after 24h \
    >/dev/null 2>&1' _ {} "$W"
fi

python3 - "$W" "$N" <<'PY'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
entries = []
for i in range(1, n + 1):
    sans = [f"host{i}.bench.internal", f"10.1.{i // 256}.{i % 256}"]
    entries.append({"common_name": f"host{i}.bench.internal", "sans": sans,
                    "guest_id": 1001, "guest_type": "vm",
                    "cert_path": f"{w}/certs/host{i}.crt", "key_path": f"{w}/certs/host{i}.key",
                    "owner": "root:root"})
json.dump(entries, open(f"{w}/etc/certificate-manifest.json", "w"))
json.dump({"phoenix_etc": f"{w}/etc", "lock_dir": f"{w}/lock", "state_dir": f"{w}/state",
           "ca": {"url": "https://127.0.0.1:9", "root_cert": f"{w}/root.crt"}},
          open(f"{w}/toolkit.json", "w"))
PY

ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Sanity: every certificate is planned as "nothing" (all valid and ours).
"$BIN" --config "$W/toolkit.json" run --dry-run >"$W/plan.txt"
planned=$(tail -n +2 "$W/plan.txt" | wc -l)
nothing=$(tail -n +2 "$W/plan.txt" | awk '$4 == "nothing"' | wc -l)
[ "$planned" -eq "$N" ] && [ "$nothing" -eq "$N" ] || {
  echo "plan is wrong: $planned planned, $nothing nothing" >&2; grep -v nothing "$W/plan.txt" | head >&2; exit 1; }

# The first real run plans cold (every key's public point derived), then
# remembers the key match per key file digest; hourly runs plan warm.
rm -rf "$W/state" "$W/lock"
"$BIN" --config "$W/toolkit.json" -v run >/dev/null 2>"$W/log"
C_MS=$(sed -n 's/.*planned [0-9]* certificates in \([0-9.]*\)ms.*/\1/p' "$W/log")

whole=() inner=()
for _ in 1 2 3 4 5; do
  t0=$(date +%s%N)
  "$BIN" --config "$W/toolkit.json" -v run --dry-run >/dev/null 2>"$W/log"
  t1=$(date +%s%N)
  whole+=("$(ms "$t0" "$t1")")
  inner+=("$(sed -n 's/.*planned [0-9]* certificates in \([0-9.]*\)ms.*/\1/p' "$W/log" | cut -d. -f1)")
done
W_MS=$(printf '%s\n' "${whole[@]}" | median)
I_MS=$(printf '%s\n' "${inner[@]}" | median)

t0=$(date +%s%N)
for f in "$W"/certs/*.crt; do openssl x509 -checkend 86400 -noout -in "$f" >/dev/null || true; done
t1=$(date +%s%N)
O_MS=$(ms "$t0" "$t1")

echo "certificates:                          $N"
echo "phoenix-renew run --dry-run (process): ${W_MS} ms (median of 5)"
echo "  of which planning (warm):            ${I_MS} ms"
echo "planning, first run (cold: derive every key): ${C_MS} ms"
echo "openssl x509 -checkend per file:       ${O_MS} ms"
echo "ratio openssl / phoenix-renew:         $(awk -v a="$O_MS" -v b="$W_MS" 'BEGIN {printf "%.0fx", a / (b > 0 ? b : 1)}')"
