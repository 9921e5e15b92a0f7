//! `phoenix-swarm` against a REAL Docker Swarm: Debian's dockerd, one per
//! VM in its own network and UTS namespace (tests/realswarm_support,
//! scripts/lib/realswarm.sh), reached through the fake `qm`. What an
//! operator would check: the cluster formed and labelled, a second run
//! that changes nothing, a Down twin tidied, a member of another swarm
//! refused (and moved with --repair), a manager whose daemon is stopped or
//! whose swarm is autolocked waited for and reported, never re-created.
//! (States a real engine cannot be put in stay on the fake docker, in
//! tests/swarm.rs.)

mod common;
mod realswarm_support;

use std::time::{Duration, Instant};

use realswarm_support::{mutating, text, GuestCall, RealSwarm};
use serde_json::{json, Value};

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn both(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

fn shown(calls: &[GuestCall]) -> Vec<String> {
    calls.iter().map(GuestCall::show).collect()
}

/// `docker node ls` rows of `hostname` on the manager.
fn entries(rs: &RealSwarm, hostname: &str) -> Vec<Value> {
    rs.nodes(rs.manager().id)
        .into_iter()
        .filter(|n| n["Hostname"] == hostname)
        .collect()
}

#[test]
fn fresh_cluster_is_formed_labelled_and_a_second_run_changes_nothing() {
    let rs = RealSwarm::start(&[1001, 1002, 1003]);
    rs.write_vm_configs(&[(1001, &[]), (1002, &[]), (1003, &["zone=b", "gpu=false"])]);
    let ip1 = rs.vm(1001).ip.clone();

    // A dry run reads the states and prints what it would run.
    let o = rs.swarm(&["ensure", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let out = text(&o.stdout);
    for line in [
        format!("would run on VM 1001 (vm1001): docker swarm init --advertise-addr {ip1}"),
        format!(
            "would run on VM 1003 (vm1003): docker swarm join --token <worker token from \
             VM 1001 (vm1001), on stdin> {ip1}:2377"
        ),
        "docker node update --label-add zone=b --label-add gpu=false \
         --label-add phoenix.vmid=1003 <node id of VM 1003 (vm1003)>"
            .into(),
        "docker node update --label-add phoenix.vmid=1001 <node id of VM 1001 (vm1001)>".into(),
        "docker node update --label-add phoenix.vmid=1002 <node id of VM 1002 (vm1002)>".into(),
        // init, two joins, a label update per node.
        "dry run: 6 command(s) would run".into(),
    ] {
        assert!(out.contains(&line), "no {line:?} in:\n{}", both(&o));
    }
    assert_eq!(shown(&mutating(&rs.guest_calls())), Vec::<String>::new());
    assert_eq!(rs.swarm_info(1001)["LocalNodeState"], "inactive");

    // The real run, at the highest verbosity (the token must not show).
    let o = rs.swarm(&["ensure", "-vv"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let out = text(&o.stdout);
    for line in [
        "VM 1001 (vm1001): initialised the swarm",
        "VM 1002 (vm1002): joined the swarm as a worker",
        "VM 1003 (vm1003): joined the swarm as a worker",
        "labelled node of VM 1003 (vm1003) with zone=b, gpu=false, phoenix.vmid=1003",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{}", both(&o));
    }

    // What the operator sees on the manager: every VM a Ready node under
    // its own hostname, the manager the leader, the labels set.
    let nodes = rs.nodes(1001);
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for vm in &rs.vms {
        let n = entries(&rs, &vm.hostname);
        assert_eq!(n.len(), 1, "{nodes:?}");
        assert_eq!(n[0]["Status"], "Ready", "{nodes:?}");
        let want = if vm.id == 1001 { "Leader" } else { "" };
        assert_eq!(n[0]["ManagerStatus"], want, "{nodes:?}");
    }
    // Every node carries its VMID (what phoenix-deploy places stacks by).
    assert_eq!(
        rs.node_labels(1001, "vm1003"),
        json!({"zone": "b", "gpu": "false", "phoenix.vmid": "1003"})
    );
    assert_eq!(
        rs.node_labels(1001, "vm1002"),
        json!({"phoenix.vmid": "1002"})
    );
    // The manager advertises its Phoenix address; the workers know it.
    let manager_addr = format!("{ip1}:2377");
    for id in [1002, 1003] {
        let info = rs.swarm_info(id);
        assert_eq!(info["LocalNodeState"], "active");
        assert_eq!(info["NodeAddr"], rs.vm(id).ip.as_str());
        assert_eq!(info["RemoteManagers"][0]["Addr"], manager_addr.as_str());
    }
    let inits: Vec<_> = rs
        .guest_calls()
        .into_iter()
        .filter(|c| c.is_mutating() && c.argv[..3] == ["docker", "swarm", "init"])
        .collect();
    assert_eq!(
        shown(&inits),
        [format!("1001: docker swarm init --advertise-addr {ip1}")]
    );

    // The worker token reached the workers on stdin only: never in the
    // host's argv (the fake qm records every argv and environment).
    let token = rs.docker_ok(1001, &["swarm", "join-token", "-q", "worker"]);
    let token = token.trim();
    let joins: Vec<_> = mutating(&rs.guest_calls())
        .into_iter()
        .filter(|c| c.docker().unwrap()[1] == "join")
        .collect();
    assert_eq!(joins.len(), 2, "{:?}", shown(&joins));
    assert!(joins.iter().all(|c| c.stdin_bytes > 0), "{joins:?}");
    for c in rs.pve.calls() {
        assert!(!c.to_string().contains(token), "token in a host argv: {c}");
    }
    assert!(!both(&o).contains(token));

    // Second run: reads only, says so.
    let before = rs.guest_calls().len();
    let o = rs.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(
        text(&o.stdout).contains("no change: swarm ") && text(&o.stdout).contains("has 3 node(s)"),
        "{}",
        both(&o)
    );
    let second = rs.guest_calls_since(before);
    assert!(!second.is_empty());
    assert_eq!(shown(&mutating(&second)), Vec::<String>::new());

    // Status agrees with the engine.
    let o = rs.swarm(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let cluster = rs.swarm_info(1001)["Cluster"]["ID"].clone();
    assert_eq!(st["cluster_id"], cluster, "{st}");
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["state"] == "active"), "{st}");
    assert_eq!(
        members[2]["labels"],
        json!({"zone": "b", "gpu": "false", "phoenix.vmid": "1003"})
    );
}

#[test]
fn a_down_twin_is_removed_once_down_and_nothing_else() {
    // 1003 is no Phoenix member: a machine that joined by hand and is off.
    let rs = RealSwarm::start(&[1001, 1002, 1003]);
    rs.write_vm_configs(&[(1001, &[]), (1002, &["gpu=false"])]);
    rs.ensure();
    let manager_addr = format!("{}:2377", rs.vm(1001).ip);
    let token = rs.docker_ok(1001, &["swarm", "join-token", "-q", "worker"]);
    rs.docker_ok(
        1003,
        &["swarm", "join", "--token", token.trim(), &manager_addr],
    );
    rs.docker_ok(1003, &["swarm", "leave", "--force"]);

    // The worker leaves its swarm by hand; phoenix-swarm rejoins it under
    // the same hostname and labels the new node.
    let old_id = rs.swarm_info(1002)["NodeID"].as_str().unwrap().to_string();
    rs.docker_ok(1002, &["swarm", "leave", "--force"]);
    let o = rs.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(
        text(&o.stdout).contains("VM 1002 (vm1002): joined the swarm as a worker"),
        "{}",
        both(&o)
    );
    let new_id = rs.swarm_info(1002)["NodeID"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(
        rs.node_labels(1001, &new_id),
        json!({"gpu": "false", "phoenix.vmid": "1002"})
    );
    assert_eq!(
        entries(&rs, "vm1002").len(),
        2,
        "the old entry is still listed"
    );

    // The old entry turns Down after the dispatcher's heartbeat grace.
    let down = |id: &str| {
        rs.nodes(1001)
            .iter()
            .any(|n| n["ID"] == id && n["Status"] == "Down")
    };
    let ghost = entries(&rs, "vm1003");
    assert_eq!(ghost.len(), 1);
    let ghost_id = ghost[0]["ID"].as_str().unwrap().to_string();
    rs.wait_for(
        "the old vm1002 and the vm1003 entries to show Down",
        Duration::from_secs(60),
        || down(&old_id) && down(&ghost_id),
    );

    let before = rs.guest_calls().len();
    let o = rs.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert_eq!(
        shown(&mutating(&rs.guest_calls_since(before))),
        [format!("1001: docker node rm {old_id}")]
    );
    assert!(
        text(&o.stdout).contains(&format!(
            "removed stale Down node {old_id} (hostname vm1002)"
        )),
        "{}",
        both(&o)
    );
    let ids: Vec<String> = rs
        .nodes(1001)
        .iter()
        .map(|n| n["ID"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(&old_id), "{ids:?}");
    assert!(ids.contains(&new_id), "{ids:?}");
    assert!(
        ids.contains(&ghost_id),
        "a Down node without a Ready twin stays: {ids:?}"
    );

    let o = rs.swarm(&["ensure"]);
    assert!(text(&o.stdout).contains("no change"), "{}", both(&o));
}

#[test]
fn a_member_of_another_swarm_is_refused_unless_repair() {
    let rs = RealSwarm::start(&[1001, 1002, 1003]);
    // 1003 runs a swarm of its own.
    let ip3 = rs.vm(1003).ip.clone();
    rs.docker_ok(1003, &["swarm", "init", "--advertise-addr", &ip3]);
    let foreign = rs.swarm_info(1003);

    let o = rs.swarm(&["ensure"]);
    assert_eq!(code(&o), 1, "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("VM 1003 (vm1003): is active in another swarm"),
        "{err}"
    );
    assert!(
        err.contains(&format!("managers {ip3}:2377")) && err.contains("--repair"),
        "{err}"
    );
    let on_1003: Vec<_> = mutating(&rs.guest_calls())
        .into_iter()
        .filter(|c| c.vmid == 1003)
        .collect();
    assert_eq!(shown(&on_1003), Vec::<String>::new());
    let after = rs.swarm_info(1003);
    assert_eq!(after["NodeID"], foreign["NodeID"]);
    assert_eq!(after["Cluster"]["ID"], foreign["Cluster"]["ID"]);
    // The rest went ahead: the manager and 1002 form the swarm.
    assert_eq!(rs.nodes(1001).len(), 2);
    assert_eq!(entries(&rs, "vm1002")[0]["Status"], "Ready");

    let before = rs.guest_calls().len();
    let o = rs.swarm(&["ensure", "--repair"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(
        text(&o.stdout).contains("VM 1003 (vm1003): left its other swarm (--repair)"),
        "{}",
        both(&o)
    );
    assert_eq!(
        shown(&mutating(&rs.guest_calls_since(before))),
        [
            "1003: docker swarm leave --force".to_string(),
            format!(
                "1003: sh -c {} phoenix-swarm-join {}:2377",
                rs.guest_calls_since(before)
                    .iter()
                    .find(|c| c.argv[0] == "sh")
                    .unwrap()
                    .argv[2],
                rs.vm(1001).ip
            ),
            // Its node is a new one: it gets its VMID label again.
            format!(
                "1001: docker node update --label-add phoenix.vmid=1003 {}",
                rs.swarm_info(1003)["NodeID"].as_str().unwrap()
            ),
        ]
    );
    let n = entries(&rs, "vm1003");
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["Status"], "Ready");
    assert_eq!(n[0]["ManagerStatus"], "", "joined as a worker");
    assert_eq!(rs.swarm_info(1003)["ControlAvailable"], false);
}

#[test]
fn a_manager_whose_daemon_is_stopped_is_waited_for_never_initialised() {
    let rs = RealSwarm::start(&[1001, 1002]);
    rs.write_toolkit(json!({"swarm": {"state_timeout_secs": 3}}));
    rs.stop_daemon(1001);
    let t = Instant::now();
    let o = rs.swarm(&["ensure"]);
    let took = t.elapsed();
    assert_eq!(code(&o), 75, "{}", both(&o));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains("VM 1001 (vm1001): swarm manager not ready after 3s"),
        "{err}"
    );
    assert!(err.contains("the docker daemon did not answer"), "{err}");
    assert!(err.contains("not initialising it"), "{err}");
    let calls = rs.guest_calls();
    assert!(calls.len() > 1, "the state was read again before giving up");
    assert!(
        calls
            .iter()
            .all(|c| c.vmid == 1001 && c.argv[..2] == ["docker", "info"]),
        "{:?}",
        shown(&calls)
    );

    // The daemon back: the swarm forms.
    rs.start_daemon(1001);
    rs.ensure();
    assert_eq!(rs.nodes(1001).len(), 2);
}

#[test]
fn an_autolocked_manager_after_a_restart_is_reported_never_unlocked_or_recreated() {
    let rs = RealSwarm::start(&[1001, 1002]);
    rs.ensure();
    let cluster = rs.swarm_info(1001)["Cluster"]["ID"].clone();
    rs.docker_ok(1001, &["swarm", "update", "--autolock=true"]);
    let key = rs.docker_ok(1001, &["swarm", "unlock-key", "-q"]);
    let key = key.trim();
    assert!(key.starts_with("SWMKEY-"), "{key}");
    rs.stop_daemon(1001);
    rs.start_daemon(1001);
    assert_eq!(rs.swarm_info(1001)["LocalNodeState"], "locked");

    rs.write_toolkit(json!({"swarm": {"state_timeout_secs": 3}}));
    let before = rs.guest_calls().len();
    for force in [false, true] {
        let args: &[&str] = if force {
            &["ensure", "--force-new-cluster"]
        } else {
            &["ensure"]
        };
        let t = Instant::now();
        let o = rs.swarm(args);
        let took = t.elapsed();
        assert_eq!(code(&o), 75, "{args:?}: {}", both(&o));
        assert!(took < Duration::from_secs(20), "took {took:?}");
        assert!(
            text(&o.stderr).contains(
                "VM 1001 (vm1001): swarm manager not ready after 3s: state locked \
                 (run docker swarm unlock with the unlock key)"
            ),
            "{args:?}: {}",
            both(&o)
        );
    }
    let calls = rs.guest_calls_since(before);
    assert_eq!(shown(&mutating(&calls)), Vec::<String>::new());
    assert!(
        calls.iter().all(|c| c.argv[..2] == ["docker", "info"]),
        "{:?}",
        shown(&calls)
    );
    // The operator unlocks it: the same swarm, nothing to do.
    assert_eq!(rs.swarm_info(1001)["LocalNodeState"], "locked");
    let o = rs.docker_stdin(1001, &["swarm", "unlock"], format!("{key}\n").as_bytes());
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(rs.swarm_info(1001)["Cluster"]["ID"], cluster);
    let o = rs.swarm(&["ensure"]);
    assert_eq!(code(&o), 0, "{}", both(&o));
    assert!(text(&o.stdout).contains("no change"), "{}", both(&o));
}
