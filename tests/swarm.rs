//! `phoenix-swarm ensure | status` against the fake `qm` and the fake
//! docker swarm (tests/fakes/docker), run as the real binary.
//!
//! What a real engine can be put in is tested against one, in
//! tests/swarm_real.rs: a fresh cluster, a dry run, a second run, a Down
//! twin, a member of another swarm, a stopped daemon, an autolocked
//! manager. These stay on the fake docker because a real engine cannot be
//! put in their state on demand: a manager in state `error` (and
//! `--force-new-cluster` from it), lost quorum with no leader, a join that
//! times out and completes later or stays pending for good, a join that
//! outlives `qm`'s own timeout. The rest concern the Proxmox side or the
//! process (an absent agent, a stopped VM, the lock, SIGTERM during the
//! agent wait), where no engine answers anyway.

mod common;
mod swarm_support;

use serde_json::json;
use swarm_support::{mutating, text, Lab, MANAGER, WORKER};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn both(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

fn calls_since(lab: &Lab, n: usize) -> Vec<(String, Vec<String>)> {
    lab.docker_calls().split_off(n)
}

#[test]
fn pending_or_error_manager_waits_and_force_new_cluster_is_opt_in() {
    let lab = Lab::new();
    assert_eq!(code(&lab.swarm(&["ensure"])), 0);
    lab.set_node(
        MANAGER,
        json!({"state": "error", "error": "manager stopped: raft store corrupt"}),
    );
    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(
        text(&o.stderr).contains("state error (manager stopped"),
        "{}",
        both(&o)
    );
    assert_eq!(mutating(&calls_since(&lab, before)), vec![]);

    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure", "--force-new-cluster"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let m = mutating(&calls_since(&lab, before));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].1.contains(&"--force-new-cluster".to_string()), "{m:?}");
    assert_eq!(lab.node(MANAGER)["state"], "active");

    lab.set_node(MANAGER, json!({"state": "locked"}));
    let o = lab.swarm(&["ensure", "--force-new-cluster"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(text(&o.stderr).contains("locked"), "{}", both(&o));
}

#[test]
fn lost_quorum_is_reported_and_forced_only_on_request() {
    let lab = Lab::new();
    assert_eq!(code(&lab.swarm(&["ensure"])), 0);
    lab.set_cluster_of(MANAGER, json!({"quorum": "lost"}));
    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(text(&o.stderr).contains("no leader"), "{}", both(&o));
    assert_eq!(mutating(&calls_since(&lab, before)), vec![]);

    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure", "--force-new-cluster"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let m = mutating(&calls_since(&lab, before));
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(
        m[0].1,
        [
            "swarm",
            "init",
            "--advertise-addr",
            "10.0.0.111",
            "--force-new-cluster"
        ]
    );
    // The same cluster, recovered: the worker is still a member.
    assert_eq!(lab.node(WORKER)["cluster"], lab.node(MANAGER)["cluster"]);
    let o = lab.swarm(&["ensure"]);
    assert!(text(&o.stdout).contains("no change"), "{}", both(&o));
}

#[test]
fn pending_worker_is_waited_for_and_never_rejoined() {
    // A join that times out goes on in the background: the worker is
    // pending for two reads, then active. One join, no second.
    let lab = Lab::with_swarm(json!({"state_timeout_secs": 5}));
    lab.set_node(
        WORKER,
        json!({"join": "timeout", "pending_reads_after_timeout": 2}),
    );
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let joins: Vec<_> = lab
        .docker_calls()
        .into_iter()
        .filter(|(g, a)| g == "1002" && a[1] == "join")
        .collect();
    assert_eq!(joins.len(), 1, "{joins:?}");
    assert_eq!(lab.node(WORKER)["cluster"], lab.node(MANAGER)["cluster"]);

    // Pending for good: waited for, reported (75), never joined.
    let lab = Lab::new();
    lab.set_node(WORKER, json!({"state": "pending", "pending_reads": -1}));
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(
        text(&o.stderr).contains("VM 1002 (drphoenix): not a swarm member after 2s: state pending"),
        "{}",
        both(&o)
    );
    let worker_changes: Vec<_> = mutating(&lab.docker_calls())
        .into_iter()
        .filter(|(g, _)| g == "1002")
        .collect();
    assert_eq!(worker_changes, vec![]);
}

#[test]
fn join_outliving_qm_timeout_is_read_again_not_retried() {
    // qm guest exec gives up after 1 s and prints {"pid": N}; the join
    // completes 2 s later in the guest.
    let lab = Lab::with_swarm(json!({"command_timeout_secs": 1, "state_timeout_secs": 8}));
    lab.set_node(WORKER, json!({"join": "slow:2"}));
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let joins: Vec<_> = lab
        .docker_calls()
        .into_iter()
        .filter(|(g, a)| g == "1002" && a[1] == "join")
        .collect();
    assert_eq!(joins.len(), 1, "{joins:?}");
    assert_eq!(lab.node(WORKER)["cluster"], lab.node(MANAGER)["cluster"]);
}

#[test]
fn absent_agent_or_stopped_vm_is_named() {
    let lab = Lab::new();
    lab.pve.agent_absent(&lab.vm_dir(WORKER));
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("VM 1002 (drphoenix): cannot run docker in it"),
        "{err}"
    );
    assert!(err.contains("QEMU guest agent is not running"), "{err}");

    let lab = Lab::new();
    lab.pve.set_status(&lab.vm_dir(MANAGER), "stopped");
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(
        text(&o.stderr).contains("VM 1001 is not running (status: stopped)"),
        "{}",
        both(&o)
    );
    assert!(lab.docker_calls().is_empty());
    let o = lab.swarm(&["status"]);
    assert_eq!(code(&o), 1, "{}", both(&o));
    assert!(text(&o.stdout).contains("unreachable"), "{}", both(&o));
}

#[test]
fn one_run_at_a_time() {
    let lab = Lab::new();
    let dir = lab.etc.path().join("lock");
    let _held = phoenix_hooks::lock::lock_at(&dir, "swarm", std::time::Duration::ZERO).unwrap();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(
        text(&o.stderr).contains("swarm is already running"),
        "{}",
        both(&o)
    );
    assert!(lab.docker_calls().is_empty());
}

#[test]
fn sigterm_ends_a_long_agent_wait_at_once() {
    // A cold VM whose agent does not answer, with the production bound of
    // two minutes: SIGTERM (systemctl stop) must not wait for it.
    let lab = Lab::with_swarm(json!({"agent_timeout_secs": 120}));
    lab.pve.agent_absent(&lab.vm_dir(MANAGER));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
        .args(["ensure", "--config"])
        .arg(&lab.config)
        .envs(lab.pve.env())
        .env_remove("PHOENIX_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has begun a 4 s backoff between agent pings.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 {
        if line.contains("retrying in 4s") {
            break;
        }
        line.clear();
    }
    assert!(line.contains("retrying in 4s"), "no 4 s backoff line");
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    // A sleep that ignored the stop would have lasted the whole 4 s.
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn each_ensure_writes_its_metrics_for_node_exporter() {
    let prom_dir = tempfile::tempdir().unwrap();
    let prom = prom_dir.path().join("phoenix-swarm.prom");
    let lab = Lab::with_swarm(serde_json::json!({"metrics_file": prom}));
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("\nphoenix_swarm_last_run_exit_code 0\n"),
        "{text}"
    );
    let success = text
        .lines()
        .find(|l| l.starts_with("phoenix_swarm_last_success_seconds "))
        .unwrap()
        .to_string();
    // A run that cannot reach the manager: its exit, the success kept.
    lab.pve.set_status(&lab.vm_dir(MANAGER), "stopped");
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("\nphoenix_swarm_last_run_exit_code 75\n"),
        "{text}"
    );
    assert!(text.contains(&format!("\n{success}\n")), "{text}");
    // A dry run records nothing.
    let before = std::fs::read(&prom).unwrap();
    let o = lab.swarm(&["ensure", "--dry-run"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert_eq!(std::fs::read(&prom).unwrap(), before);
}
