#!/bin/sh
# Boot 1 of tests/nspawn_boot.rs, run by phoenix-boot-setup.service once
# the boot has finished: what an operator does on a running host (README.md,
# "Install"), then a reboot. Everything it says goes to setup.log, which
# the host reads; whatever fails, the container powers off (the host bounds
# the boot too).
T=/var/lib/phoenix-boot-test
exec >"$T/setup.log" 2>&1
trap 'echo "setup: FAILED"; systemctl --no-block poweroff' EXIT
set -ex
# This unit is Type=exec: its own start job has ended, so the wait ends.
systemctl is-system-running --wait || true
dpkg -i "$T/phoenix-hooks.deb"
# The operator's configuration, over the shipped conffile.
install -m 0644 "$T/toolkit.json" /etc/phoenix/toolkit.json
# README.md, "Install", on the Proxmox host.
systemctl enable --now phoenix-renew.timer
systemctl enable phoenix-sync.target
# The test's own: the probe of boot 2, and no second setup.
systemctl enable phoenix-boot-probe.service
systemctl disable phoenix-boot-setup.service
systemctl is-enabled phoenix-sync.target phoenix-sync-boot.service phoenix-renew.timer || true
# Enabling started nothing of the sync.
systemctl show -p ActiveState phoenix-sync.target phoenix-swarm.service
set +x
trap - EXIT
echo "setup: ok"
systemctl --no-block reboot
