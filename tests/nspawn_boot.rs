//! The sync at a real boot: Debian bookworm with systemd as PID 1
//! (`systemd-nspawn --boot`), the project's Debian package installed in it
//! with `dpkg -i`, the units enabled as README.md says, a reboot, and from
//! inside: the sync reached, each step succeeded, in order (swarm, then
//! renewal, then deployment), all of it after the boot finished; and the
//! hourly timer's catch-up after a long power-off fired once. In the
//! running phoenix-renew.service, what a `pct exec` action inherits
//! (lxc-attach: setns, then exec) leaves sudo and su working: no
//! no_new_privs flag, setns() into another init's namespaces allowed, su
//! to another user works. Then `dpkg --purge` in the root leaves no
//! enable link of a phoenix unit behind.
//!
//! Boot 1 (tests/nspawn_support/setup.sh, once the boot has finished):
//! `dpkg -i`, the operator's toolkit.json, `systemctl enable --now
//! phoenix-renew.timer`, `systemctl enable phoenix-sync.target`, reboot.
//! Between the boots the host sets the timer's stamp three days back: the
//! machine was off. Boot 2: tests/nspawn_support/probe.sh waits, bounded,
//! for phoenix-sync.target, records `systemctl show` of each unit and the
//! manager's journal about them, and powers off; the host reads that.
//!
//! The sync runs the real binaries against the project's fakes copied into
//! the root: `qm`/`pct` (tests/fakes/pve.py) with VMs 1001 (manager) and
//! 1002 (worker), each with the fake `docker` (tests/fakes/docker); a
//! drop-in puts them on the steps' PATH. The manifest is empty (the
//! renewal has nothing to issue: it needs only the CA's root certificate
//! in the CA state directory, made here with `step`), the stacks file
//! lists no stack (the deployment says "no change").
//!
//! The Debian root is made once per machine and cached
//! (scripts/lib/nspawn-root.sh, about 80 s); each run boots a copy of it,
//! removed when the test ends, failed or not. Needs root, debootstrap,
//! systemd-nspawn and, the first time, a Debian mirror: without them the
//! test fails saying which.

mod common;
mod deb_support;
mod nspawn_support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nspawn_support::{
    build_deb, cached_root, cached_root_of, entries, project, sections, text, Root,
};

/// Where the fakes live inside the root, and their state.
const FAKES: &str = "/usr/local/lib/phoenix-fakes";
const FAKE_PVE: &str = "/var/lib/phoenix-fake-pve";
/// The test's own files inside the root (the .deb, scripts, records).
const T: &str = "/var/lib/phoenix-boot-test";
/// The default `phoenix_etc` of toolkit.json.
const PHOENIX_ETC: &str = "/usr/local/phoenix_hypervisor/etc";
/// systemd's record of the timer's last trigger (Persistent=true).
const STAMP: &str = "/var/lib/systemd/timers/stamp-phoenix-renew.timer";
/// How long the machine was off between the boots.
const OFF_FOR: Duration = Duration::from_secs(3 * 24 * 3600);

/// The sync's steps, in their order.
const STEPS: [&str; 4] = [
    "phoenix-swarm.service",
    "phoenix-renew-sync.service",
    "phoenix-renew.service",
    "phoenix-deploy.service",
];

const VMS: [(u32, &str); 2] = [(1001, "portainer"), (1002, "drphoenix")];

/// A oneshot-like unit of the test that holds nothing: Type=exec, so its
/// start job ends as soon as the script runs (a start job still running
/// would keep the boot "starting", and phoenix-sync-boot.service waiting).
fn test_unit(what: &str, script: &str) -> String {
    format!(
        "[Unit]\nDescription=Phoenix boot test: {what}\n\n\
         [Service]\nType=exec\nExecStart={T}/{script}\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

/// Everything boot 1 needs, written from the host: the package, the
/// fakes and their guests, the Phoenix files, the CA's root, the scripts
/// and units of the test.
fn stage(root: &Root, deb: &Path) {
    let support = project().join("tests/nspawn_support");
    let fakes = project().join("tests/fakes");
    root.put(
        &format!("{T}/phoenix-hooks.deb"),
        std::fs::read(deb).unwrap(),
        0o644,
    );
    for script in ["setup.sh", "probe.sh"] {
        root.put(
            &format!("{T}/{script}"),
            std::fs::read(support.join(script)).unwrap(),
            0o755,
        );
    }
    root.put(
        &format!("{T}/toolkit.json"),
        serde_json::json!({
            "$comment": ["tests/nspawn_boot.rs: every path at its default;",
                         "short swarm bounds, so that a broken fake fails fast."],
            "swarm": {"agent_timeout_secs": 10, "state_timeout_secs": 10},
        })
        .to_string(),
        0o644,
    );

    // The fakes, and the steps' PATH and state through a drop-in each.
    for f in ["qm", "pct", "docker"] {
        root.put(
            &format!("{FAKES}/{f}"),
            std::fs::read(fakes.join(f)).unwrap(),
            0o755,
        );
    }
    for unit in ["phoenix-swarm", "phoenix-renew", "phoenix-deploy"] {
        root.put(
            &format!("/etc/systemd/system/{unit}.service.d/zz-phoenix-boot-test.conf"),
            format!(
                "# tests/nspawn_boot.rs: the fake Proxmox tools.\n[Service]\n\
                 Environment=PATH={FAKES}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
                 Environment=PHOENIX_FAKE_PVE={FAKE_PVE}\n"
            ),
            0o644,
        );
    }
    // The catch-up at once: systemd (252) adds RandomizedDelaySec= to a
    // persistent timer's catch-up too, so as shipped (10min) it fires
    // 0-10 min after the boot, which a test cannot wait for.
    // What an action of phoenix-renew.service inherits, recorded in its
    // journal by an ExecStartPre= in the unit's own sandbox.
    root.put(
        &format!("{T}/renew-sandbox.sh"),
        std::fs::read(support.join("renew-sandbox.sh")).unwrap(),
        0o755,
    );
    root.put(
        "/etc/systemd/system/phoenix-renew.service.d/zz-phoenix-boot-sandbox.conf",
        format!(
            "# tests/nspawn_boot.rs: what a pct exec action inherits.\n[Service]\n\
             ExecStartPre={T}/renew-sandbox.sh\n"
        ),
        0o644,
    );
    root.put(
        "/etc/systemd/system/phoenix-renew.timer.d/zz-phoenix-boot-test.conf",
        "# tests/nspawn_boot.rs: the catch-up without its random delay.\n\
         [Timer]\nRandomizedDelaySec=0\n",
        0o644,
    );
    let docker = std::fs::read(support.join("docker")).unwrap();
    for (id, host) in VMS {
        root.put(&format!("{FAKE_PVE}/qemu/{id}/hostname"), host, 0o644);
        root.put(&format!("{FAKE_PVE}/qemu/{id}/bin/docker"), &docker, 0o755);
    }

    // The Phoenix files: the two VMs of the swarm, no certificate, no stack.
    root.put(
        &format!("{PHOENIX_ETC}/phoenix_vm_configs.json"),
        serde_json::json!({"vms": [
            {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
             "network_config": {"ip": "10.0.0.111/24"}},
            {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker",
             "network_config": {"ip": "10.0.0.102/24"}}
        ]})
        .to_string(),
        0o644,
    );
    root.put(
        &format!("{PHOENIX_ETC}/certificate-manifest.json"),
        "[]\n",
        0o644,
    );
    root.put(
        &format!("{PHOENIX_ETC}/phoenix_stacks_config.json"),
        "{\"docker_stacks\": {}}\n",
        0o644,
    );
    // No CA state at all: with no certificate in the manifest the renewal
    // has nothing to ask the CA and succeeds (it once waited for a root).

    // The test's units: setup enabled for boot 1 (it enables the probe).
    root.put(
        "/etc/systemd/system/phoenix-boot-setup.service",
        test_unit("install and enable, then reboot", "setup.sh"),
        0o644,
    );
    root.put(
        "/etc/systemd/system/phoenix-boot-probe.service",
        test_unit("record the sync, then power off", "probe.sh"),
        0o644,
    );
    root.link(
        "/etc/systemd/system/multi-user.target.wants/phoenix-boot-setup.service",
        "/etc/systemd/system/phoenix-boot-setup.service",
    );
}

/// What the failing boot said: its console, the test's records, the
/// units' journal.
fn context(root: &Root, console: &str) -> String {
    format!(
        "--- console\n{console}\n--- setup.log\n{}\n--- probe.txt\n{}\n--- journal\n{}",
        root.read(&format!("{T}/setup.log")),
        root.read(&format!("{T}/probe.txt")),
        root.journal(&["-u", "phoenix-*", "-u", "phoenix-boot-*"]),
    )
}

#[test]
fn the_sync_runs_at_a_real_boot_after_it_in_order_and_the_timer_catches_up_once() {
    let started = Instant::now();
    let cache = cached_root();
    let cache_took = started.elapsed();
    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(work.path());
    let t = Instant::now();
    let root = Root::copy_of(&cache);
    let copy_took = t.elapsed();
    stage(&root, &deb);

    // --- Boot 1: install, enable as README says, reboot -----------------
    let b1 = root.boot(Duration::from_secs(120));
    let setup = root.read(&format!("{T}/setup.log"));
    assert!(
        b1.code == Some(133) && setup.contains("setup: ok"),
        "boot 1 (install, enable, reboot) did not end in a reboot (nspawn exit \
         {:?}, 133 is a reboot, 124 the bound):\n{}",
        b1.code,
        context(&root, &b1.console)
    );
    assert!(
        setup.contains("Setting up phoenix-hooks"),
        "dpkg -i:\n{setup}"
    );
    // Enabled as README says: the target's Also= enabled the boot starter;
    // the timer is wanted by timers.target; the target itself by nothing.
    let wants = |target: &str, unit: &str| {
        root.at(&format!("/etc/systemd/system/{target}.wants/{unit}"))
            .symlink_metadata()
            .is_ok()
    };
    assert!(
        wants("multi-user.target", "phoenix-sync-boot.service"),
        "{setup}"
    );
    assert!(wants("timers.target", "phoenix-renew.timer"), "{setup}");
    assert!(
        !wants("multi-user.target", "phoenix-sync.target"),
        "the boot must not want the sync itself:\n{setup}"
    );
    assert!(
        !setup.contains("ActiveState=active"),
        "enabling started the sync:\n{setup}"
    );

    // --- The power-off: the timer last fired three days ago -------------
    // `enable --now` started the timer, which made its stamp.
    let stamp = root.at(STAMP);
    let off_since = SystemTime::now() - OFF_FOR;
    std::fs::File::options()
        .write(true)
        .open(&stamp)
        .unwrap_or_else(|e| panic!("{STAMP} after `enable --now`: {e}\n{setup}"))
        .set_modified(off_since)
        .unwrap();
    let before_boot2 = SystemTime::now();

    // --- Boot 2: the sync, recorded from inside ------------------------
    let b2 = root.boot(Duration::from_secs(180));
    let probe = root.read(&format!("{T}/probe.txt"));
    let ctx = || context(&root, &b2.console);
    assert!(
        b2.code == Some(0) && probe.contains("reached=yes"),
        "boot 2 did not reach phoenix-sync.target and power off (nspawn exit \
         {:?}):\n{}",
        b2.code,
        ctx()
    );
    let show = sections(&probe);
    let prop = |unit: &str, key: &str| -> String {
        show.get(unit)
            .and_then(|s| s.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("{unit}: no {key} in probe.txt:\n{probe}"))
    };
    let mono = |unit: &str, key: &str| -> u64 {
        prop(unit, key)
            .parse()
            .unwrap_or_else(|_| panic!("{unit}: {key} is not a number:\n{probe}"))
    };

    // Each step ran in this boot and succeeded; the target was reached.
    for unit in STEPS.iter().chain(&["phoenix-sync-boot.service"]) {
        assert_eq!(
            (prop(unit, "Result"), prop(unit, "ExecMainStatus")),
            ("success".to_string(), "0".to_string()),
            "{unit}\n{}",
            ctx()
        );
        assert!(
            mono(unit, "ExecMainStartTimestampMonotonic") > 0
                && mono(unit, "ExecMainExitTimestampMonotonic")
                    >= mono(unit, "ExecMainStartTimestampMonotonic"),
            "{unit} did not run to its end:\n{}",
            ctx()
        );
    }
    assert_eq!(prop("phoenix-sync.target", "ActiveState"), "active");
    let failed = probe.split("== failed\n").nth(1).unwrap_or("").trim();
    assert!(failed.is_empty(), "failed units: {failed}\n{}", ctx());
    let log = root.read(&format!("{T}/units.log"));
    for said in [
        "initialised the swarm",
        "joined the swarm as a worker",
        "no change",
    ] {
        assert!(log.contains(said), "no '{said}' in:\n{log}");
    }

    // In order, each step ended before the next began, and the target
    // was reached after the last; the boot finished before the first.
    let finish = mono("manager", "FinishTimestampMonotonic");
    let start = |u: &str| mono(u, "ExecMainStartTimestampMonotonic");
    let end = |u: &str| mono(u, "ExecMainExitTimestampMonotonic");
    let order = [
        ("boot finished", finish, "swarm started", start(STEPS[0])),
        (
            "swarm ended",
            end(STEPS[0]),
            "renewal step started",
            start(STEPS[1]),
        ),
        (
            "renewal step started",
            start(STEPS[1]),
            "renewal started",
            start(STEPS[2]),
        ),
        (
            "renewal ended",
            end(STEPS[2]),
            "renewal step ended",
            end(STEPS[1]),
        ),
        (
            "renewal step ended",
            end(STEPS[1]),
            "deployment started",
            start(STEPS[3]),
        ),
        (
            "deployment ended",
            end(STEPS[3]),
            "sync reached",
            mono("phoenix-sync.target", "ActiveEnterTimestampMonotonic"),
        ),
        // The starter runs during the boot and waits for its end.
        (
            "sync starter started",
            start("phoenix-sync-boot.service"),
            "boot finished",
            finish,
        ),
        (
            "boot finished",
            finish,
            "sync starter ended",
            end("phoenix-sync-boot.service"),
        ),
    ];
    for (a, ta, b, tb) in order {
        assert!(ta <= tb, "{a} ({ta}) after {b} ({tb}):\n{probe}");
    }

    // The timer: persistent, so one catch-up run at boot for the three
    // days off, not one per missed hour; the sync's renewal is the other.
    assert_eq!(
        prop("phoenix-renew.timer", "Persistent"),
        "yes",
        "phoenix-renew.timer is not Persistent=true: a renewal missed while \
         the host was off is not caught up at boot"
    );
    let journal = root.read(&format!("{T}/pid1.json"));
    let starts: Vec<(u64, u64)> = entries(&journal)
        .iter()
        .filter(|e| e.unit == STEPS[2] && e.message_id == nspawn_support::UNIT_STARTING)
        .map(|e| (e.mono, e.realtime))
        .collect();
    // A boot that spans a full hour also meets the timer's hourly elapse
    // (OnCalendar=hourly, its random delay off here): a run starting in
    // the first seconds of an hour, after the first run, is that one, not
    // a second catch-up; it is left out, and said.
    let hourly = |(i, &(_, rt)): (usize, &(u64, u64))| i > 0 && (rt / 1_000_000) % 3600 < 5;
    let elapses = starts.iter().enumerate().filter(|r| hourly(*r)).count();
    if elapses > 0 {
        eprintln!("boot 2 spanned a full hour: {elapses} hourly run(s) left out of the count");
    }
    let runs: Vec<u64> = starts
        .iter()
        .enumerate()
        .filter(|r| !hourly(*r))
        .map(|(_, &(mono, _))| mono)
        .collect();
    let catch_ups: Vec<u64> = runs
        .iter()
        .copied()
        .filter(|&t| t < start(STEPS[1]))
        .collect();
    assert_eq!(
        (catch_ups.len(), runs.len()),
        (1, 2),
        "phoenix-renew.service should run once for the timer's catch-up, \
         then once for the sync (starts at {runs:?}, renewal step at {}):\n{probe}\n{journal}",
        start(STEPS[1])
    );
    // The timer's trigger (the catch-up) moved the stamp to now.
    let stamped = std::fs::metadata(&stamp).unwrap().modified().unwrap();
    assert!(
        stamped >= before_boot2 - Duration::from_secs(1),
        "{STAMP} not renewed by the catch-up"
    );
    // The catch-up and the swarm step never overlap: it ran before it, or
    // waited for it (the drop-in's After=).
    let catch_up_end = entries(&journal)
        .iter()
        .find(|e| e.unit == STEPS[2] && !e.job_result.is_empty() && e.mono >= catch_ups[0])
        .map(|e| (e.mono, e.job_result.clone()))
        .unwrap_or_else(|| panic!("no end of the catch-up's start job:\n{journal}"));
    assert_eq!(catch_up_end.1, "done", "the catch-up failed:\n{}", ctx());
    assert!(
        catch_up_end.0 <= start(STEPS[0]) || catch_ups[0] >= end(STEPS[0]),
        "the catch-up ({}..{}) overlapped the swarm step ({}..{})",
        catch_ups[0],
        catch_up_end.0,
        start(STEPS[0]),
        end(STEPS[0])
    );

    // What a `pct exec` action would inherit from phoenix-renew.service
    // (tests/nspawn_support/renew-sandbox.sh, run in its sandbox): no
    // no_new_privs (sudo and su would fail in every action), setns()
    // into another init's namespaces allowed (lxc-attach's first step),
    // and su to another user works after it.
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("renew-sandbox: ").map(|(_, s)| s))
        .collect();
    for want in [
        "NoNewPrivs: 0",
        "setns=ok",
        "su=ok",
        "attached NoNewPrivs: 0",
    ] {
        assert!(
            said.contains(&want),
            "phoenix-renew.service's sandbox: no '{want}' in {said:?}:\n{log}"
        );
    }
    let cap_bnd = said
        .iter()
        .find_map(|l| l.strip_prefix("CapBnd: "))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("no CapBnd in {said:?}"));
    // CAP_SETGID 6, CAP_SETUID 7, CAP_SYS_CHROOT 18, CAP_SYS_PTRACE 19,
    // CAP_SYS_ADMIN 21: what lxc-attach needs, and sudo or su after it.
    for (name, bit) in [
        ("CAP_SETGID", 6),
        ("CAP_SETUID", 7),
        ("CAP_SYS_CHROOT", 18),
        ("CAP_SYS_PTRACE", 19),
        ("CAP_SYS_ADMIN", 21),
    ] {
        assert!(
            cap_bnd & (1 << bit) != 0,
            "{name} not in CapBnd {cap_bnd:x}"
        );
    }

    // --- Purge: no enable link left ---------------------------------------
    // The operator's links (setup.sh: `systemctl enable ...`) go with the
    // package (its postrm: deb-systemd-helper purge). In the root, not
    // booted: no manager to stop anything.
    let purge = deb_support::run(
        std::process::Command::new("systemd-nspawn")
            .args(["--quiet", "--keep-unit", "--register=no", "-D"])
            .arg(&root.path)
            .args(["dpkg", "--purge", "phoenix-hooks"])
            .env("SYSTEMD_LOG_COLOR", "0"),
    );
    let purged = format!("{}{}", text(&purge.stdout), text(&purge.stderr));
    // run(): a find that fails (no such directory) finds nothing, and
    // must not pass for a clean purge.
    let links = deb_support::run(
        std::process::Command::new("find")
            .arg(root.at("/etc/systemd/system"))
            .args([
                "-type",
                "l",
                "-name",
                "phoenix-*",
                "!",
                "-name",
                "phoenix-boot-*",
            ]),
    );
    let left = text(&links.stdout);
    assert!(
        left.trim().is_empty(),
        "dpkg --purge left enable links:\n{left}\n{purged}"
    );
    assert!(!root.at("/usr/bin/phoenix-renew").exists(), "{purged}");

    // --- What the boot showed, and what it cost --------------------------
    let zero = mono("manager", "UserspaceTimestampMonotonic");
    let ms = |t: u64| format!("{:>7.1} ms", t.saturating_sub(zero) as f64 / 1000.0);
    eprintln!("boot 2, from systemd's start (CLOCK_MONOTONIC):");
    for (what, t) in [
        ("renewal catch-up started (timer)", catch_ups[0]),
        ("renewal catch-up ended", catch_up_end.0),
        ("sync starter started", start("phoenix-sync-boot.service")),
        ("boot finished", finish),
        ("sync starter ended", end("phoenix-sync-boot.service")),
        ("swarm started", start(STEPS[0])),
        ("swarm ended", end(STEPS[0])),
        ("renewal step started", start(STEPS[1])),
        ("renewal started", start(STEPS[2])),
        ("renewal ended", end(STEPS[2])),
        ("renewal step ended", end(STEPS[1])),
        ("deployment started", start(STEPS[3])),
        ("deployment ended", end(STEPS[3])),
        (
            "sync reached",
            mono("phoenix-sync.target", "ActiveEnterTimestampMonotonic"),
        ),
    ] {
        eprintln!("  {} {what}", ms(t));
    }
    eprintln!(
        "cached root {:.1?}, copy {:.1?}, boot 1 {:.1?}, boot 2 {:.1?}, whole test {:.1?}",
        cache_took,
        copy_took,
        b1.took,
        b2.took,
        started.elapsed()
    );
}

/// Where the chain benchmark's files are inside the root.
const BENCH: &str = "/var/lib/phoenix-chain-bench";

/// Benchmark (benches/sd_chain_latency.sh): from `phoenix-ca publish` to
/// the docker stand-in active, with systemd as PID 1 of a booted Debian:
/// bookworm (systemd 252) and trixie (systemd 257), as the user manager's
/// bench in tests/systemd.rs measures it (the same variants: the wait
/// unit as shipped, an `inotifywait` oneshot, the bash loop), the units
/// as the package ships them, `--bootstrap` included, the real step-ca on
/// loopback. Both boot with cgroup v2 alone (what both releases boot with
/// by default; this machine's host is hybrid). systemd 257 starts a
/// unit's process straight into its cgroup (glibc's `pidfd_spawn` with
/// `CLONE_INTO_CGROUP`); 252 forks, and the child writes its PID to
/// `cgroup.procs`, which waits for an RCU grace period on a kernel whose
/// cgroup mount lacks `favordynmods` (BENCHMARKS.md).
///
/// `PHOENIX_BENCH_SUITES` (default "bookworm trixie"),
/// `PHOENIX_BENCH_RUNS` (30), `PHOENIX_BENCH_BASH_RUNS` (3).
#[test]
#[ignore = "benchmark: benches/sd_chain_latency.sh"]
fn bench_publish_to_docker_active_at_a_real_boot() {
    let env_n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let runs = env_n("PHOENIX_BENCH_RUNS", 30);
    let bash_runs = env_n("PHOENIX_BENCH_BASH_RUNS", 3);
    let suites = std::env::var("PHOENIX_BENCH_SUITES").unwrap_or_else(|_| "bookworm trixie".into());
    let ca = common::TestCa::start(None);
    let ca_dir = format!("{BENCH}/ca");
    let host_dir = format!("{BENCH}/ca-host");
    let guest_dir = "/etc/step-ca/ssl";
    for suite in suites.split_whitespace() {
        let root = Root::copy_of(&cached_root_of(suite));
        let state = tempfile::tempdir_in("/var/tmp").unwrap();
        root.put(
            "/usr/bin/phoenix-ca",
            std::fs::read(env!("CARGO_BIN_EXE_phoenix-ca")).unwrap(),
            0o755,
        );
        let units = project().join("units");
        root.put(
            "/etc/systemd/system/phoenix-ca-wait.service",
            std::fs::read(units.join("phoenix-ca-wait.service")).unwrap(),
            0o644,
        );
        root.put(
            "/etc/systemd/system/docker.service.d/phoenix-ca-wait.conf",
            std::fs::read(units.join("docker.service.d/phoenix-ca-wait.conf")).unwrap(),
            0o644,
        );
        root.put(
            "/etc/systemd/system/docker.service",
            "[Unit]\nDescription=Docker stand-in (tests/nspawn_boot.rs)\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
            0o644,
        );
        root.put(
            "/etc/phoenix/toolkit.json",
            serde_json::json!({"ca": {
                "url": ca.url(),
                "root_cert": format!("{ca_dir}/steppath/certs/root_ca.crt"),
                "wait_timeout_secs": 60,
            }})
            .to_string(),
            0o644,
        );
        let inotify =
            format!("/usr/bin/inotifywait -qq -e moved_to --include 'ca\\.ready$' {guest_dir}");
        let bash = format!("/bin/sh -c 'while [ ! -f {guest_dir}/ca.ready ]; do sleep 5; done'");
        let variants = [
            ("phoenix-ca wait (unit as shipped)", None, runs),
            (
                "inotifywait -e moved_to --include ca.ready (a oneshot)",
                Some(inotify),
                runs,
            ),
            (
                "bash: while [ ! -f ca.ready ]; do sleep 5; done",
                Some(bash),
                bash_runs,
            ),
        ];
        root.put(
            &format!("{BENCH}/bench.json"),
            serde_json::json!({
                "host_dir": host_dir,
                "variants": variants.iter().map(|(name, exec, runs)| serde_json::json!(
                    {"name": name, "exec": exec, "runs": runs})).collect::<Vec<_>>(),
            })
            .to_string(),
            0o644,
        );
        root.put(
            &format!("{BENCH}/chain-bench.py"),
            std::fs::read(project().join("tests/nspawn_support/chain-bench.py")).unwrap(),
            0o755,
        );
        root.put(
            "/etc/systemd/system/phoenix-chain-bench.service",
            format!(
                "[Unit]\nDescription=Phoenix chain benchmark\nAfter=multi-user.target\n\n\
                 [Service]\nType=exec\nExecStart={BENCH}/chain-bench.py\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        );
        root.link(
            "/etc/systemd/system/multi-user.target.wants/phoenix-chain-bench.service",
            "/etc/systemd/system/phoenix-chain-bench.service",
        );
        // The CA's state directory: published to as the CA host does, and
        // the same directory mounted where the VM's wait looks.
        let state = state.path().display();
        let boot = root.boot_with(
            Duration::from_secs(600),
            &[
                format!("--bind={state}:{host_dir}"),
                format!("--bind={state}:{guest_dir}"),
                format!("--bind-ro={}:{ca_dir}", ca.dir.path().display()),
            ],
            &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")],
        );
        let result = root.read(&format!("{BENCH}/result.json"));
        let result: serde_json::Value = serde_json::from_str(&result).unwrap_or_else(|e| {
            panic!(
                "{suite}: no result ({e}); nspawn exit {:?}:\n{}\n--- journal\n{}",
                boot.code,
                boot.console,
                root.journal(&["-u", "phoenix-*", "-u", "docker.service"])
            )
        });
        assert!(
            result.get("error").is_none(),
            "{suite}: {}\n--- journal\n{}",
            result["error"].as_str().unwrap_or_default(),
            root.journal(&["-u", "phoenix-*", "-u", "docker.service"])
        );
        let systemd = result["systemd"].as_str().unwrap_or_default().to_string();
        let mut medians = Vec::new();
        for (name, _, _) in &variants {
            let rows: Vec<Vec<f64>> = serde_json::from_value(result[name].clone()).unwrap();
            let legs: [Vec<f64>; 4] = std::array::from_fn(|i| rows.iter().map(|r| r[i]).collect());
            medians.push(common::print_chain_summary(
                &format!("{suite} ({systemd}) {name}"),
                &legs,
            ));
        }
        println!(
            "{suite} ratio (ours p50 / inotifywait p50): {:.2}x; (bash p50 / ours p50): {:.1}x",
            medians[0] / medians[1],
            medians[2] / medians[0]
        );
    }
}
