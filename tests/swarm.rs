//! `phoenix-swarm ensure | status` against the fake `qm` and the fake
//! docker swarm (tests/fakes/docker), run as the real binary.

mod common;
mod swarm_support;

use serde_json::{json, Value};
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
fn fresh_cluster_is_formed_labelled_and_a_second_run_changes_nothing() {
    let lab = Lab::new();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains("VM 1001 (Portainer): initialised the swarm"),
        "{out}"
    );
    assert!(
        out.contains("VM 1002 (drphoenix): joined the swarm as a worker"),
        "{out}"
    );
    assert!(
        out.contains("labelled node of VM 1002 (drphoenix) with gpu=false"),
        "{out}"
    );

    let m = lab.node(MANAGER);
    let w = lab.node(WORKER);
    assert_eq!(
        (m["state"].as_str(), w["state"].as_str()),
        (Some("active"), Some("active"))
    );
    assert_eq!(m["cluster"], w["cluster"]);
    let cluster = lab.cluster_of(MANAGER);
    assert_eq!(cluster["manager_addr"], "10.0.0.111:2377");
    let worker_entry = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["ID"] == w["node_id"])
        .unwrap()
        .clone();
    assert_eq!(worker_entry["Labels"], json!({"gpu": "false"}));
    let inits: Vec<_> = mutating(&lab.docker_calls())
        .into_iter()
        .filter(|(_, a)| a[1] == "init")
        .collect();
    assert_eq!(
        inits,
        vec![(
            "1001".to_string(),
            ["swarm", "init", "--advertise-addr", "10.0.0.111"]
                .map(String::from)
                .to_vec()
        )]
    );

    // Second run: reads only.
    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(text(&o.stdout).contains("no change"), "{}", both(&o));
    let second = calls_since(&lab, before);
    assert!(!second.is_empty());
    assert_eq!(mutating(&second), vec![], "second run changed something");

    // The token went to the worker on stdin only: never in the host's
    // argv (qm's recorded calls), never in our output. Inside the worker
    // it reaches `docker swarm join` (docker has no stdin option).
    let tokens = lab.tokens();
    assert_eq!(tokens.len(), 2);
    let joins: Vec<_> = lab
        .qm_calls()
        .into_iter()
        .filter(|c| c.to_string().contains("phoenix-swarm-join"))
        .collect();
    assert_eq!(joins.len(), 1, "one join");
    assert!(
        joins[0]["stdin_bytes"].as_u64().unwrap() > 0,
        "{}",
        joins[0]
    );
    assert!(
        joins[0].to_string().contains("--pass-stdin"),
        "{}",
        joins[0]
    );
    let guest_join: Vec<_> = lab
        .docker_calls()
        .into_iter()
        .filter(|(_, a)| a[1] == "join")
        .collect();
    assert_eq!(guest_join.len(), 1);
    assert!(
        tokens.iter().any(|t| guest_join[0].1.contains(t)),
        "the worker's docker got the token from stdin: {guest_join:?}"
    );
    for t in &tokens {
        for c in lab.qm_calls() {
            assert!(
                !c.to_string().contains(t.as_str()),
                "token in host argv: {c}"
            );
        }
        assert!(!both(&o).contains(t.as_str()));
    }

    // Status shows both, one cluster, the label, no problem.
    let o = lab.swarm(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["role"], "manager");
    assert_eq!(members[1]["state"], "active");
    assert_eq!(members[1]["cluster_id"], st["cluster_id"]);
    assert_eq!(members[1]["labels"], json!({"gpu": "false"}));
    assert_eq!(members[1]["node_id"], w["node_id"]);
    for t in &tokens {
        assert!(!both(&o).contains(t.as_str()));
    }
}

#[test]
fn a_first_run_never_prints_the_token_even_at_debug_level() {
    let lab = Lab::new();
    let o = lab.swarm(&["ensure", "-vv"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let tokens = lab.tokens();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert!(
            !both(&o).contains(t.as_str()),
            "token in output:\n{}",
            both(&o)
        );
    }
}

#[test]
fn manager_whose_docker_info_fails_is_not_initialised() {
    let lab = Lab::new();
    lab.set_node(MANAGER, json!({"daemon": "down"}));
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 75, "{}", both(&o));
    let err = text(&o.stderr);
    assert!(err.contains("VM 1001 (Portainer)"), "{err}");
    assert!(err.contains("Cannot connect to the Docker daemon"), "{err}");
    assert!(err.contains("not initialising"), "{err}");
    let calls = lab.docker_calls();
    assert!(calls.len() > 1, "the state was read again before giving up");
    assert!(
        calls.iter().all(|(g, a)| g == "1001" && a[0] == "info"),
        "{calls:?}"
    );
    assert_eq!(lab.node(MANAGER)["state"], "inactive");
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
fn worker_in_another_swarm_is_refused_unless_repair() {
    let lab = Lab::new();
    // VM 2001 (not Phoenix's) runs its own swarm; the worker joined it.
    let other = lab.pve.add_vm(2001);
    std::fs::write(other.join("hostname"), "elsewhere").unwrap();
    lab.docker_as(2001, &["swarm", "init", "--advertise-addr", "10.9.9.9"]);
    let t = text(
        &lab.docker_as(2001, &["swarm", "join-token", "-q", "worker"])
            .stdout,
    );
    lab.docker_as(
        WORKER,
        &["swarm", "join", "--token", t.trim(), "10.9.9.9:2377"],
    );
    let foreign = lab.node(WORKER)["cluster"].clone();

    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 1, "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("VM 1002 (drphoenix): is active in another swarm"),
        "{err}"
    );
    assert!(
        err.contains("10.9.9.9:2377") && err.contains("--repair"),
        "{err}"
    );
    let worker_changes: Vec<_> = mutating(&calls_since(&lab, before))
        .into_iter()
        .filter(|(g, _)| g == "1002")
        .collect();
    assert_eq!(worker_changes, vec![]);
    assert_eq!(lab.node(WORKER)["cluster"], foreign);
    // The manager's own part went ahead.
    assert_eq!(lab.node(MANAGER)["state"], "active");

    let o = lab.swarm(&["ensure", "--repair"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(
        text(&o.stdout).contains("left its other swarm (--repair)"),
        "{}",
        both(&o)
    );
    assert_eq!(lab.node(WORKER)["cluster"], lab.node(MANAGER)["cluster"]);
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
fn stale_down_twin_is_removed_and_nothing_else() {
    let lab = Lab::new();
    assert_eq!(code(&lab.swarm(&["ensure"])), 0);
    // A leave/join cycle by hand leaves a Down "drphoenix" beside the new
    // Ready one; a dead machine's Down entry has no Ready twin.
    let token = text(
        &lab.docker_as(MANAGER, &["swarm", "join-token", "-q", "worker"])
            .stdout,
    );
    let old_id = lab.node(WORKER)["node_id"].as_str().unwrap().to_string();
    lab.docker_as(WORKER, &["swarm", "leave", "--force"]);
    lab.docker_as(
        WORKER,
        &["swarm", "join", "--token", token.trim(), "10.0.0.111:2377"],
    );
    let ghost = lab.pve.add_vm(3001);
    std::fs::write(ghost.join("hostname"), "oldbox").unwrap();
    lab.docker_as(
        3001,
        &["swarm", "join", "--token", token.trim(), "10.0.0.111:2377"],
    );
    let ghost_id = lab.node(3001)["node_id"].as_str().unwrap().to_string();
    lab.docker_as(3001, &["swarm", "leave", "--force"]);

    let before = lab.docker_calls().len();
    let o = lab.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let m = mutating(&calls_since(&lab, before));
    assert_eq!(
        m,
        vec![
            (
                "1001".to_string(),
                vec!["node".into(), "rm".into(), old_id.clone()]
            ),
            (
                "1001".to_string(),
                ["node", "update", "--label-add", "gpu=false"]
                    .map(String::from)
                    .into_iter()
                    .chain([lab.node(WORKER)["node_id"].as_str().unwrap().to_string()])
                    .collect()
            )
        ]
    );
    let ids: Vec<String> = lab.cluster_of(MANAGER)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ID"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(&old_id));
    assert!(
        ids.contains(&ghost_id),
        "a Down node without a Ready twin stays"
    );
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
fn dry_run_prints_the_commands_and_changes_nothing() {
    let lab = Lab::new();
    let o = lab.swarm(&["ensure", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains(
            "would run on VM 1001 (Portainer): docker swarm init --advertise-addr 10.0.0.111"
        ),
        "{out}"
    );
    assert!(out.contains("would run on VM 1002 (drphoenix): docker swarm join --token <worker token from VM 1001 (Portainer), on stdin> 10.0.0.111:2377"), "{out}");
    assert!(
        out.contains("docker node update --label-add gpu=false <node id of VM 1002 (drphoenix)>"),
        "{out}"
    );
    assert_eq!(mutating(&lab.docker_calls()), vec![]);
    assert_eq!(lab.node(MANAGER)["state"], "inactive");
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
