#!/usr/bin/env bash
# Benchmark of phoenix-hook against the bash + jq it replaces.
#
#   bash benches/hook.sh [RUNS]        (root: needs a private mount namespace)
#
# Two cases, each run RUNS times (default 300) by phoenix-hook, in turn with
# the floor, and RUNS/10 times by a bash + jq script doing the checks it
# did (not the exposure one) on the same JSON:
#   unknown    pre-start of a guest the Phoenix configs do not know
#   dependent  pre-start of container 101 (three bind mounts on storage
#              "quickOS"): storage mounted? every source present? does a
#              mount expose the CA's secrets (it does: a warning)?
# The node is benches/hook-fixture.sh's: the reference Phoenix JSON, the
# storage a mount point in a private mount namespace (nothing is mounted
# on the host).
# Prints the median wall time and the peak RSS (the largest process of the
# run's tree, from wait4) of each, and the ratios, beside the floor of an
# empty C program measured in turn with each case. phoenix-hook is built as
# it ships (scripts/build-release.sh: a static PIE). Targets: 1.0 ms, 3 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
. benches/hook-fixture.sh
command -v jq >/dev/null || { echo "need jq" >&2; exit 2; }

bash scripts/build-release.sh   # phoenix-hook as it ships: a static PIE
HOOK=$PWD/target/release/phoenix-hook

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
hook_fixture "$TMP"

# The baseline: what a careful bash hookscript does for these two cases.
cat >"$TMP/hook.sh" <<'BASH'
#!/usr/bin/env bash
set -euo pipefail
vmid=$1 phase=$2
conf=$PHOENIX_CONFIG
etc=$(jq -r '.phoenix_etc' "$conf")
root=$(jq -r '.storage_root // "/mnt/pve"' "$conf")
[ "$phase" = pre-start ] || exit 0
mapfile -t paths < <(jq -r --arg id "$vmid" \
  '.lxc_configs[$id].mount_points[]?.host_path' "$etc/phoenix_lxc_configs.json")
if [ "${#paths[@]}" -eq 0 ]; then
  name=$(jq -r --argjson id "$vmid" '.vms[] | select(.vmid == $id) | .name' \
    "$etc/phoenix_vm_configs.json")
  [ -n "$name" ] || { echo "$vmid $phase: guest not in the Phoenix configs" >&2; exit 0; }
  exit 0
fi
rc=0
for p in "${paths[@]}"; do
  case $p in
    "$root"/*)
      s=${p#"$root"/}; s=${s%%/*}
      mountpoint -q "$root/$s" || { echo "$vmid $phase: $p: storage $s not mounted" >&2; rc=1; continue; }
      ;;
  esac
  [ -e "$p" ] || { echo "$vmid $phase: $p does not exist" >&2; rc=1; }
done
[ $rc -eq 0 ] && echo "$vmid $phase: may start" >&2
exit $rc
BASH
chmod +x "$TMP/hook.sh"

# The measurer is a tiny C program: a child's peak RSS (wait4's ru_maxrss)
# includes what it inherited at fork, so the launcher must be smaller than
# what it measures (a Python launcher would report its own ~14 MiB).
#   measure RUNS CMD [ARG...] [-- CMD [ARG...]]...
# runs the commands in turn, RUNS rounds (so a floor given beside a case is
# measured at the same moments, not before it), and prints per command its
# median wall time in ms and peak RSS in MiB, a line each.
cat >"$TMP/measure.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#define MAXCMD 8
static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
int main(int argc, char **argv) {
  int runs = atoi(argv[1]), n = 0;
  char **cmd[MAXCMD];
  cmd[n++] = argv + 2;
  for (int i = 2; i < argc; i++)
    if (strcmp(argv[i], "--") == 0) {
      argv[i] = NULL;
      if (n == MAXCMD) return 2;
      cmd[n++] = argv + i + 1;
    }
  double *t = malloc(sizeof(double) * runs * n);
  long peak[MAXCMD] = {0};
  for (int i = 0; i < runs; i++)
    for (int c = 0; c < n; c++) {
      struct timespec a, b;
      struct rusage ru;
      int status;
      clock_gettime(CLOCK_MONOTONIC, &a);
      pid_t pid = fork();
      if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1); dup2(null, 2);
        execv(cmd[c][0], cmd[c]);
        _exit(127);
      }
      wait4(pid, &status, 0, &ru);
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s exited %d\n", cmd[c][0], WEXITSTATUS(status));
        return 1;
      }
      t[c * runs + i] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
      if (ru.ru_maxrss > peak[c]) peak[c] = ru.ru_maxrss;
    }
  for (int c = 0; c < n; c++) {
    qsort(t + c * runs, runs, sizeof(double), cmp);
    printf("%.2f %.1f\n", t[c * runs + runs / 2], peak[c] / 1024.0);
  }
  return 0;
}
C
cc -O2 -o "$TMP/measure" "$TMP/measure.c"
# The floor: a C program that does nothing, linked the default way
# (dynamically, against libc): what fork, exec and exit cost here, now.
printf 'int main(void) { return 0; }\n' >"$TMP/nothing.c"
cc -O2 -o "$TMP/nothing" "$TMP/nothing.c"

# Both implementations must agree on the outcome before they are timed.
hook_ns "$TMP" bash -c '
  set -e
  for id in 101 4242; do "$2" $id pre-start 2>/dev/null; "$3" $id pre-start 2>/dev/null; done
  printf "runs per case: %s, each in turn with the floor (fork + exec + exit of an empty C program)\n" "$5"
  printf "%-10s %20s %20s %9s %9s %16s\n" case phoenix-hook "bash + jq" speed-up "RSS ratio" "floor, / floor"
  met=yes
  for c in unknown:4242 dependent:101; do
    { read -r ht hr; read -r ft fr; } < <("$4" "$5" "$2" "${c#*:}" pre-start -- "$6")
    read -r bt br < <("$4" "$((($5 + 9) / 10))" "$3" "${c#*:}" pre-start)
    awk -v c="${c%%:*}" -v ht="$ht" -v hr="$hr" -v bt="$bt" -v br="$br" -v ft="$ft" "BEGIN {
      printf \"%-10s %8.2f ms %5.1f MiB %8.2f ms %5.1f MiB %8.1fx %8.1fx %7.2f ms %5.2fx\\n\",
        c, ht, hr, bt, br, bt / ht, br / hr, ft, ht / ft }"
    awk -v ht="$ht" -v hr="$hr" "BEGIN { exit !(ht <= 1.0 && hr <= 3.0) }" || met=no
  done
  echo "target (<= 1.0 ms median, <= 3 MiB peak RSS): $met"
' sh - "$HOOK" "$TMP/hook.sh" "$TMP/measure" "$RUNS" "$TMP/nothing"
