//! The sync's systemd units: `systemd-analyze verify` finds nothing to
//! say (any output fails), and the dependency design holds: within
//! phoenix-sync.target the renewal requires the swarm and the deployment
//! requires the renewal; the hourly renewal (phoenix-renew.service)
//! requires neither.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const OURS: &[&str] = &[
    "phoenix-swarm.service",
    "phoenix-renew-sync.service",
    "phoenix-deploy.service",
    "phoenix-sync.target",
];

fn units() -> PathBuf {
    common::project().join("units")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(units().join(name)).unwrap()
}

/// `Key=` values of a unit file (all occurrences, split on spaces).
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

fn stub_exec(root: &Path, unit_text: &str) {
    use std::os::unix::fs::PermissionsExt;
    for cmd in values(unit_text, "ExecStart")
        .into_iter()
        .filter(|w| w.starts_with('/'))
    {
        let p = root.join(cmd.trim_start_matches('/'));
        if p.exists() {
            continue;
        }
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn units_verify_cleanly() {
    // An alternate root: the distribution's units (sysinit.target...),
    // ours in /etc/systemd/system, and stand-ins for the programs they
    // run, which are not installed on a build machine.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(st.success());
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(etc.join("phoenix-renew.service.d")).unwrap();
    let mut names: Vec<String> = OURS.iter().map(|s| s.to_string()).collect();
    for name in OURS {
        let text = read(name);
        stub_exec(r, &text);
        std::fs::write(etc.join(name), text).unwrap();
    }
    std::fs::copy(
        units().join("phoenix-renew.service.d/phoenix-sync.conf"),
        etc.join("phoenix-renew.service.d/phoenix-sync.conf"),
    )
    .unwrap();
    // phoenix-renew.service comes from the renewal work; a stand-in when
    // this tree does not have it yet.
    let renew = units().join("phoenix-renew.service");
    let renew_text = if renew.exists() {
        std::fs::read_to_string(&renew).unwrap()
    } else {
        "[Unit]\nDescription=stand-in\n[Service]\nType=oneshot\nExecStart=/usr/bin/phoenix-renew run\n".into()
    };
    stub_exec(r, &renew_text);
    std::fs::write(etc.join("phoenix-renew.service"), renew_text).unwrap();
    names.push("phoenix-renew.service".into());

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .args(&names)
        .current_dir(&etc)
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn renewal_requires_the_swarm_only_within_the_sync() {
    let sync = read("phoenix-sync.target");
    let wants = values(&sync, "Wants");
    assert!(wants.contains(&"phoenix-swarm.service".into()), "{wants:?}");
    assert!(
        wants.contains(&"phoenix-renew-sync.service".into()),
        "{wants:?}"
    );

    let step = read("phoenix-renew-sync.service");
    assert_eq!(values(&step, "Requires"), ["phoenix-swarm.service"]);
    assert_eq!(values(&step, "After"), ["phoenix-swarm.service"]);
    assert!(
        values(&step, "ExecStart").contains(&"phoenix-renew.service".into()),
        "the sync's renewal is phoenix-renew.service itself"
    );

    // What the timer starts may be ordered after the swarm, never bound
    // to it.
    let dropin = read("phoenix-renew.service.d/phoenix-sync.conf");
    assert_eq!(values(&dropin, "After"), ["phoenix-swarm.service"]);
    for key in ["Requires", "Requisite", "BindsTo", "Wants", "PartOf"] {
        assert!(values(&dropin, key).is_empty(), "{key}= in the drop-in");
    }
    let renew = units().join("phoenix-renew.service");
    if renew.exists() {
        let text = std::fs::read_to_string(renew).unwrap();
        for key in ["Requires", "Requisite", "BindsTo"] {
            assert!(
                !values(&text, key)
                    .iter()
                    .any(|v| v == "phoenix-swarm.service"),
                "phoenix-renew.service must not {key}= the swarm"
            );
        }
    }

    let swarm = read("phoenix-swarm.service");
    assert_eq!(values(&swarm, "Type"), ["oneshot"]);
    // No Restart=: systemd fails the start job at the first exit, so a
    // restart is not waited for by the sync (tests/systemd.rs shows it).
    assert!(values(&swarm, "Restart").is_empty());
    assert!(values(&swarm, "ExecStart").contains(&"ensure".into()));
}

/// The `--retry-for` bound of a unit's ExecStart, if any.
fn retry_for(unit: &str) -> Option<std::time::Duration> {
    let exec = values(unit, "ExecStart");
    let i = exec.iter().position(|w| w == "--retry-for")?;
    humantime::parse_duration(&exec[i + 1]).ok()
}

#[test]
fn every_sync_step_retries_a_temporary_failure_within_its_start_job() {
    // One exit 75 must not fail a step (systemd would fail the start job
    // and skip the rest of the sync): each tool runs again inside it, and
    // the start job outlasts that bound.
    for name in [
        "phoenix-swarm.service",
        "phoenix-renew.service",
        "phoenix-deploy.service",
    ] {
        let unit = read(name);
        let bound = retry_for(&unit).unwrap_or_else(|| panic!("{name}: no --retry-for"));
        let timeout =
            humantime::parse_duration(&values(&unit, "TimeoutStartSec").concat()).unwrap();
        assert!(
            timeout >= bound + std::time::Duration::from_secs(5 * 60),
            "{name}: TimeoutStartSec {timeout:?} for --retry-for {bound:?}"
        );
    }
    // The sync's renewal step waits for phoenix-renew.service's start job,
    // which holds the retries.
    let step = read("phoenix-renew-sync.service");
    let step_timeout =
        humantime::parse_duration(&values(&step, "TimeoutStartSec").concat()).unwrap();
    let renew_timeout = humantime::parse_duration(
        &values(&read("phoenix-renew.service"), "TimeoutStartSec").concat(),
    )
    .unwrap();
    assert!(step_timeout >= renew_timeout);
}

#[test]
fn the_sync_does_not_hold_the_boot() {
    let sync = read("phoenix-sync.target");
    // What wants it is not ordered after it.
    assert_eq!(values(&sync, "DefaultDependencies"), ["no"]);
    assert_eq!(values(&sync, "Conflicts"), ["shutdown.target"]);
    assert_eq!(values(&sync, "Before"), ["shutdown.target"]);
    assert!(values(&sync, "WantedBy").is_empty());
    assert_eq!(values(&sync, "Also"), ["phoenix-sync-boot.service"]);
    // Its starter's own job ends at once (Type=exec) and queues the sync
    // only after the boot finished.
    let boot = read("phoenix-sync-boot.service");
    assert_eq!(values(&boot, "Type"), ["exec"]);
    assert_eq!(values(&boot, "WantedBy"), ["multi-user.target"]);
    let exec = values(&boot, "ExecStart").join(" ");
    assert!(
        exec.contains("is-system-running --wait")
            && exec.contains("start --no-block phoenix-sync.target"),
        "{exec}"
    );
    assert!(values(&boot, "After").is_empty() && values(&boot, "Before").is_empty());
}

#[test]
fn deployment_requires_the_renewal_step_within_the_sync() {
    let sync = read("phoenix-sync.target");
    let steps = [
        "phoenix-swarm.service",
        "phoenix-renew-sync.service",
        "phoenix-deploy.service",
    ];
    // The target waits for every step (a target is reached whatever its
    // Wants= did; After= makes it reached only once they ended).
    assert_eq!(values(&sync, "Wants"), steps);
    assert_eq!(values(&sync, "After"), steps);

    let deploy = read("phoenix-deploy.service");
    assert_eq!(values(&deploy, "Requires"), ["phoenix-renew-sync.service"]);
    assert_eq!(
        values(&deploy, "After"),
        ["phoenix-renew-sync.service", "phoenix-renew.service"]
    );
    assert_eq!(values(&deploy, "PartOf"), ["phoenix-sync.target"]);
    assert_eq!(values(&deploy, "Type"), ["oneshot"]);
    assert_eq!(
        values(&deploy, "ExecStart"),
        ["/usr/bin/phoenix-deploy", "run", "--retry-for", "10min"]
    );
    // No Restart=, as the swarm step: a restart is not waited for.
    assert!(values(&deploy, "Restart").is_empty());
    // Pulled in by the target, not by an [Install] of its own.
    assert!(values(&deploy, "WantedBy").is_empty());

    // The start job outlasts the tool's own bounds for a few stacks: it
    // ends first and says what is still converging.
    let timeout = values(&deploy, "TimeoutStartSec");
    let timeout = humantime::parse_duration(&timeout.concat()).unwrap();
    let d = phoenix_hooks::config::Config::default();
    let stacks = 5;
    assert!(
        timeout.as_secs()
            >= stacks * d.deploy.converge_timeout_secs + d.swarm.agent_timeout_secs + 600,
        "TimeoutStartSec={timeout:?}"
    );

    // Nothing the timer runs and no earlier step depends on the deployment.
    for unit in [
        "phoenix-swarm.service",
        "phoenix-renew-sync.service",
        "phoenix-renew.service",
        "phoenix-renew.service.d/phoenix-sync.conf",
    ] {
        let text = read(unit);
        assert!(
            !text.contains("phoenix-deploy"),
            "{unit} names the deployment"
        );
    }
}
