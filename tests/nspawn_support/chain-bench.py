#!/usr/bin/python3
"""The chain benchmark of tests/nspawn_boot.rs, inside the booted Debian.

Run by phoenix-chain-bench.service once the boot has finished. For each
variant of the wait (bench.json: its name, the ExecStart= that replaces
the shipped one, or none, and its number of runs), RUNS times: stop
docker.service and phoenix-ca-wait.service, make the CA's token stale
(`phoenix-ca invalidate`), start docker.service (a `systemctl start` job
that waits, off the CPU, for the chain), wait until the wait unit is
activating, 50-300 ms later publish a new token (`phoenix-ca publish`),
and note the time. From the manager's own timestamps (CLOCK_MONOTONIC,
the host's: nspawn makes no time namespace): the wait unit active, the
waiter's exit, docker's ExecStart= process, docker active. Writes
result.json, then powers off; whatever fails is written to result.json
as "error" and powers off too.
"""

import json
import os
import random
import subprocess
import sys
import time
import traceback

B = "/var/lib/phoenix-chain-bench"
WAIT = "phoenix-ca-wait.service"
DOCKER = "docker.service"
DROPIN = "/run/systemd/system/phoenix-ca-wait.service.d/zz-chain-bench.conf"
ENV = dict(os.environ, PHOENIX_CONFIG="/etc/phoenix/toolkit.json")


def run(*argv):
    out = subprocess.run(argv, capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise RuntimeError(f"{argv}: exit {out.returncode}: {out.stdout}{out.stderr}")
    return out.stdout


def show(unit, prop):
    return run("systemctl", "show", "-P", prop, unit).strip()


def until(what, check, bound=10.0):
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {bound} s")
        time.sleep(0.005)


def one_run(host_dir, oneshot):
    run("systemctl", "stop", DOCKER, WAIT)
    run("/usr/bin/phoenix-ca", "invalidate", "--state-dir", host_dir)
    if oneshot:
        # The bash loop and inotifywait know no generation: the old token
        # goes (inotifywait then waits for the new one's rename).
        try:
            os.unlink(os.path.join(host_dir, "ca.ready"))
        except FileNotFoundError:
            pass
    job = subprocess.Popen(["systemctl", "start", DOCKER])
    until("the wait unit activating", lambda: show(WAIT, "ActiveState") == "activating")
    time.sleep(random.uniform(0.05, 0.3))
    run("/usr/bin/phoenix-ca", "publish", "--state-dir", host_dir)
    published = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    if job.wait(timeout=30) != 0:
        raise RuntimeError(f"systemctl start {DOCKER}: exit {job.returncode}")
    until("the waiter's exit", lambda: show(WAIT, "SubState") == "exited")
    stamps = [
        int(show(WAIT, "ActiveEnterTimestampMonotonic")),
        int(show(WAIT, "ExecMainExitTimestampMonotonic")),
        int(show(DOCKER, "ExecMainStartTimestampMonotonic")),
        int(show(DOCKER, "ActiveEnterTimestampMonotonic")),
    ]
    return [(t - published) / 1000.0 for t in stamps]


def main():
    bench = json.load(open(f"{B}/bench.json"))
    results = {"systemd": run("systemctl", "--version").splitlines()[0]}
    for v in bench["variants"]:
        os.makedirs(os.path.dirname(DROPIN), exist_ok=True)
        if v["exec"]:
            with open(DROPIN, "w") as f:
                f.write(f"[Service]\nType=oneshot\nExecStart=\nExecStart={v['exec']}\n")
        elif os.path.exists(DROPIN):
            os.unlink(DROPIN)
        run("systemctl", "daemon-reload")
        # Not counted: the first wait trusts the CA's root (the VM's first
        # boot: update-ca-certificates); every later one finds it trusted.
        one_run(bench["host_dir"], bool(v["exec"]))
        results[v["name"]] = [
            one_run(bench["host_dir"], bool(v["exec"])) for _ in range(v["runs"])
        ]
    return results


if __name__ == "__main__":
    try:
        out = main()
    except Exception:
        out = {"error": traceback.format_exc()}
    with open(f"{B}/result.json.tmp", "w") as f:
        json.dump(out, f)
    os.rename(f"{B}/result.json.tmp", f"{B}/result.json")
    subprocess.run(["systemctl", "--no-block", "poweroff"])
    sys.exit(0)
