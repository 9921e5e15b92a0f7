#!/bin/sh
# Boot 2 of tests/nspawn_boot.rs, run by phoenix-boot-probe.service
# (Type=exec: its start job ends at once, so it holds neither the boot nor
# `is-system-running`): waits, bounded, until phoenix-sync.target is
# reached, records what the host checks, then powers off.
#   probe.txt   `systemctl show` of the manager and of each unit, "== NAME"
#               before each; the failed units; how long it waited
#   pid1.json   the manager's journal entries about the units (one
#               "Starting" per run: `systemctl show` keeps only the last)
#   units.log   the units' own journal, for the test's messages
T=/var/lib/phoenix-boot-test
UNITS="phoenix-sync-boot.service phoenix-swarm.service phoenix-renew-sync.service
phoenix-renew.service phoenix-deploy.service phoenix-sync.target phoenix-renew.timer"
PROPS=ActiveState,SubState,Result,ExecMainStatus,ExecMainStartTimestampMonotonic,ExecMainExitTimestampMonotonic,ActiveEnterTimestampMonotonic,UnitFileState,Persistent,LastTriggerUSec,NextElapseUSecRealtime,RandomizedDelayUSec
reached=no
i=0
while [ $i -lt 900 ]; do
  if [ "$(systemctl show -P ActiveState phoenix-sync.target)" = active ]; then
    reached=yes
    break
  fi
  sleep 0.1
  i=$((i + 1))
done
{
  echo "reached=$reached"
  echo "waited_ds=$i"
  echo "== manager"
  systemctl show -p FinishTimestampMonotonic -p UserspaceTimestampMonotonic -p SystemState
  for u in $UNITS; do
    echo "== $u"
    systemctl show -p "$PROPS" "$u"
  done
  echo "== failed"
  systemctl list-units --failed --plain --no-legend
} >"$T/probe.txt.tmp" 2>&1
journalctl --sync
match=
for u in $UNITS; do match="$match _PID=1 UNIT=$u +"; done
journalctl -b -o json ${match% +} >"$T/pid1.json" 2>&1
args=
for u in $UNITS; do args="$args -u $u"; done
journalctl -b -o short-monotonic $args >"$T/units.log" 2>&1
mv "$T/probe.txt.tmp" "$T/probe.txt"
sync
systemctl --no-block poweroff
