#!/bin/sh
# ExecStartPre= of phoenix-renew.service in tests/nspawn_boot.rs, so in
# that unit's sandbox: what an action run with `pct exec` would inherit.
# lxc-attach enters a container's namespaces with setns() and execs the
# action there, keeping this process's no_new_privs flag, seccomp filters
# and capability bounding set; sudo and su in an action need
# no_new_privs off. Here the booted system's PID 1 stands for the
# container's init. Every line goes to the unit's journal, prefixed; the
# host checks them. Never fails the unit.
say() { echo "renew-sandbox: $*"; }
grep -E '^(NoNewPrivs|Seccomp|CapBnd):' /proc/self/status | tr -s '\t' ' ' | while IFS= read -r l; do say "$l"; done
if nsenter -t 1 -m -u -i -n -p -- /bin/true; then say "setns=ok"; else say "setns=failed"; fi
nsenter -t 1 -m -u -i -n -p -- grep '^NoNewPrivs:' /proc/self/status | tr -s '\t' ' ' | while IFS= read -r l; do say "attached $l"; done
# su to another user, as an action may (root to nobody needs no setuid
# bit, but PAM and setuid() do run).
if [ "$(su -s /bin/sh nobody -c 'id -u' 2>/dev/null)" = 65534 ]; then say "su=ok"; else say "su=failed"; fi
exit 0
