//! `phoenix-renew` on a simulated three-node Proxmox cluster (see
//! tests/cluster_support): the timers of all nodes fired together, round
//! after round (every certificate renewed exactly once a round, by its
//! guest's node); a migration between two runs; a node that dies holding a
//! certificate's cluster lock (the lock expires, the next node proceeds);
//! a node without quorum (a read-only lock directory: 75, nothing renewed);
//! `status` naming each certificate's node; the swarm's cluster-wide lock.

mod cluster_support;
mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::{backdate, cert_name, stderr, stdout, Cluster, Kind};
use serde_json::Value;

const NODES: [&str; 3] = ["pve1", "pve2", "pve3"];

/// Two guests a node (a container and a VM), each certificate issued by
/// its node's first run.
fn three_nodes() -> Cluster {
    let mut c = Cluster::new(&NODES);
    for (i, node) in NODES.iter().enumerate() {
        let base = (i as u32 + 1) * 100;
        c.place(base + 1, Kind::Lxc, node);
        c.place(base * 10 + 1, Kind::Qemu, node);
    }
    c.write_manifest();
    for node in NODES {
        let out = c.run(node, &["run"]);
        assert_eq!(out.status.code(), Some(0), "{node}: {}", stderr(&out));
    }
    for (id, serial) in c.serials() {
        assert!(serial.is_some(), "{} not issued", cert_name(id));
    }
    c
}

/// "NAME: renewed serial ..." and "NAME: issued serial ..." lines.
fn changed(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(": renewed serial ") || l.contains(": issued serial "))
        .filter_map(|l| {
            let name = l.split(": ").find(|p| p.ends_with(".test.internal"))?;
            Some(
                name.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn timers_of_all_nodes_together_renew_every_certificate_once_by_its_node() {
    let c = three_nodes();
    let owner: BTreeMap<String, String> = c
        .guests
        .iter()
        .map(|(id, (_, node))| (cert_name(*id), node.clone()))
        .collect();
    for round in 0..10 {
        let before = c.serials();
        let actions_before = c.actions().len();
        // All three timers at once.
        let children: Vec<_> = NODES
            .iter()
            .map(|n| (n.to_string(), c.spawn(n, &["run", "--renew-now"])))
            .collect();
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (node, child) in children {
            let out = child.wait_with_output().unwrap();
            let log = stderr(&out);
            assert_eq!(out.status.code(), Some(0), "round {round}, {node}:\n{log}");
            for name in changed(&log) {
                by.entry(name).or_default().push(node.clone());
            }
            // Every other node's certificate is skipped, naming its node.
            for (name, o) in owner.iter().filter(|(_, o)| **o != node) {
                assert!(
                    log.contains(&format!("{name}: skipped: "))
                        && log.contains(&format!("runs on node '{o}'")),
                    "round {round}, {node} did not skip {name}:\n{log}"
                );
            }
        }
        // Each certificate renewed exactly once, by its guest's node.
        let expected: BTreeMap<String, Vec<String>> = owner
            .iter()
            .map(|(n, o)| (n.clone(), vec![o.clone()]))
            .collect();
        assert_eq!(by, expected, "round {round}");
        let after = c.serials();
        for (id, s) in &after {
            assert_ne!(
                s,
                &before[id],
                "round {round}: {} not renewed",
                cert_name(*id)
            );
        }
        // Its post-renewal action ran once, on its guest's node.
        let mut acted: Vec<(u32, String)> = c.actions()[actions_before..].to_vec();
        acted.sort();
        let mut want: Vec<(u32, String)> = c
            .guests
            .iter()
            .map(|(id, (_, n))| (*id, n.clone()))
            .collect();
        want.sort();
        assert_eq!(acted, want, "round {round}");
        assert!(c.locks().is_empty(), "locks left: {:?}", c.locks());
    }
}

#[test]
fn a_migrated_guest_is_handled_by_its_new_node() {
    let mut c = three_nodes();
    let before = c.serials();
    // CT 101 moves from pve1 to pve2 (the guest itself is the same).
    c.place(101, Kind::Lxc, "pve2");
    let actions = c.actions().len();
    let out = c.run("pve1", &["run", "--renew-now"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("g101.test.internal: skipped: CT 101 runs on node 'pve2'"),
        "{log}"
    );
    assert_eq!(c.serial(101), before[&101], "pve1 renewed a guest it lost");
    assert_ne!(c.serial(1001), before[&1001], "pve1's VM not renewed");
    let out = c.run("pve2", &["run", "--renew-now"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        changed(&log),
        [cert_name(101), cert_name(201), cert_name(2001)]
    );
    assert_ne!(
        c.serial(101),
        before[&101],
        "pve2 did not renew its new guest"
    );
    let acted: Vec<_> = c.actions()[actions..]
        .iter()
        .filter(|(id, _)| *id == 101)
        .cloned()
        .collect();
    assert_eq!(acted, [(101, "pve2".to_string())]);

    // `status` names each certificate's node, JSON and table.
    let out = c.run("pve3", &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows
        .as_array()
        .or_else(|| rows["certificates"].as_array())
        .unwrap();
    let nodes: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(nodes[&cert_name(101)], "pve2");
    assert_eq!(nodes[&cert_name(3001)], "pve3");
    let out = c.run("pve1", &["status"]);
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().contains(" NODE "), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("g101.test.internal"))
        .unwrap();
    assert!(line.contains(" pve2 "), "{table}");

    // A guest on no node: a failure naming it, the others still renewed.
    c.destroy(1001);
    let out = c.run("pve1", &["run", "--renew-now"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("g1001.test.internal: VM 1001 is on no node of the cluster"),
        "{log}"
    );
    let out = c.run("pve1", &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("VM 1001 is on no node"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_node_that_dies_holding_a_lock_leaves_it_to_expire_then_the_next_proceeds() {
    let mut c = three_nodes();
    let before = c.serials();
    // CT 101's reload hangs: pve1 holds its certificate's lock meanwhile.
    let ct = c.pve.dir.path().join("lxc/101");
    c.pve.guest_command(
        &ct,
        "systemctl",
        "#!/bin/sh\ntouch \"$FAKE_GUEST_DIR/reloading\"\nexec sleep 600\n",
    );
    let mut cmd = c.command("pve1", &["run", "--renew-now", "--only", &cert_name(101)]);
    cmd.process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut pve1 = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while !ct.join("reloading").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "pve1 never got to the reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held: Vec<String> = c.locks();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].starts_with("phoenix-renew-g101.test.internal-"),
        "{held:?}"
    );
    // The node dies (its process group, the guest call included).
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pve1.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    pve1.wait().unwrap();
    assert_eq!(c.locks(), held, "the dead node's lock went away by itself");
    let renewed_by_pve1 = c.serial(101);
    assert_ne!(renewed_by_pve1, before[&101], "pve1 installed before dying");

    // HA brings CT 101 up on pve2; its reload works there.
    c.pve.guest_command(&ct, "systemctl", "#!/bin/sh\nexit 0\n");
    c.place(101, Kind::Lxc, "pve2");
    c.write_config("pve2", 1);
    // Within 120 s of the last refresh the lock keeps pve2 off: skipped,
    // not a failure, nothing changed.
    let out = c.run("pve2", &["run", "--renew-now", "--only", &cert_name(101)]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("g101.test.internal: skipped: cluster lock"),
        "{log}"
    );
    assert!(log.contains("is held"), "{log}");
    assert_eq!(c.serial(101), renewed_by_pve1);
    // 121 s without a refresh, as pmxcfs would count it: expired, taken
    // over, and the pending action run by the new node.
    let lock = c.lock_dir().join(&held[0]);
    backdate(&lock, 121);
    let actions = c.actions().len();
    let out = c.run("pve2", &["run", "--renew-now", "--only", &cert_name(101)]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("expired"), "{log}");
    assert_ne!(c.serial(101), renewed_by_pve1, "pve2 did not proceed");
    assert_eq!(c.actions()[actions..], [(101, "pve2".to_string())]);
    assert!(c.locks().is_empty(), "{:?}", c.locks());
}

#[test]
fn a_node_without_quorum_renews_nothing() {
    let c = three_nodes();
    let before = c.serials();
    let actions = c.actions().len();
    // pmxcfs without quorum refuses every write: here the lock directory
    // is bound read-only in a private mount namespace (EROFS for root).
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" || exit 99; \
             shift; exec \"$@\"",
        )
        .arg("sh")
        .arg(c.lock_dir())
        .arg(env!("CARGO_BIN_EXE_phoenix-renew"))
        .arg("--config")
        .arg(c.config_path("pve1"))
        .args(["run", "--renew-now"]);
    c.node_env(&mut cmd, "pve1");
    let out = cmd.output().unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{log}");
    assert!(log.contains("no quorum: "), "{log}");
    assert_eq!(c.serials(), before, "a certificate changed without quorum");
    assert_eq!(c.actions().len(), actions, "a guest was acted on");
    // Quorum back: the node renews its own again.
    let out = c.run("pve1", &["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(c.serial(101), before[&101]);
}

#[test]
fn the_swarm_runs_on_one_node_at_a_time_cluster_wide() {
    let mut c = Cluster::new(&NODES);
    c.place(1001, Kind::Qemu, "pve1");
    c.place(1002, Kind::Qemu, "pve2");
    let vms = serde_json::json!({"vms": [
        {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
         "network_config": {"ip": "10.0.0.111/24"}},
        {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker",
         "network_config": {"ip": "10.0.0.102/24"}}
    ]});
    std::fs::write(c.etc().join("phoenix_vm_configs.json"), vms.to_string()).unwrap();
    // pve2 runs the swarm (its lock directory in /etc/pve/priv/lock):
    // pve3 is kept off, at once (swarm.lock_wait_secs 0), naming the lock.
    std::fs::create_dir(c.lock_dir().join("phoenix-swarm")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"));
    c.node_env(&mut cmd, "pve3");
    let out = cmd
        .arg("--config")
        .arg(c.config_path("pve3"))
        .arg("ensure")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{log}");
    assert!(log.contains("priv/lock/phoenix-swarm' is held"), "{log}");
    assert!(
        c.pve.calls().is_empty(),
        "a VM was asked: {:?}",
        c.pve.calls()
    );
    assert_eq!(
        c.locks(),
        ["phoenix-swarm"],
        "the holder's lock was touched"
    );
}
