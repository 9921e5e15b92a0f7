//! `phoenix-swarm` in a simulated three-node Proxmox cluster: one shared
//! cluster tree (`/etc/pve`: `.vmlist`, `corosync.conf`,
//! `nodes/N/qemu-server/ID.conf`), the fake `qm`/`pvesh` run as a node
//! (FAKE_PVE_NODE), refusing guests not on it as Proxmox does, `pvesh`
//! proxying a call for another node to it (tests/fakes/pve.py). The
//! manager VM is on pve2, the worker on pve3.
//!
//! The worker's join token is a secret: it reaches the worker on stdin
//! (`qm guest exec --pass-stdin`), which the cluster API can take only
//! as `input-data` in pvesh's argv, so it is never sent across nodes
//! (src/proxmox.rs). The swarm is formed from the worker's node (the
//! manager reached through the API, the token read from its stdout);
//! from any other node the join is refused, naming the node to run on,
//! and once formed every node's run finds it in place.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fakes;
use serde_json::{json, Value};

const MANAGER: u32 = 1001;
const WORKER: u32 = 1002;

struct Cluster {
    /// The fake guests (PHOENIX_FAKE_PVE), shared by every node.
    state: tempfile::TempDir,
    /// `/etc/pve`, shared by every node.
    pve: PathBuf,
    /// `/etc/phoenix` (the same files on every node) and each node's
    /// toolkit.json and local lock directory.
    etc: tempfile::TempDir,
}

impl Cluster {
    fn new(places: &[(u32, &str)]) -> Cluster {
        let state = tempfile::tempdir().unwrap();
        let pve = state.path().join("etc-pve");
        for (id, host) in [(MANAGER, "portainer"), (WORKER, "drphoenix")] {
            let dir = state.path().join("qemu").join(id.to_string());
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            std::fs::write(dir.join("hostname"), host).unwrap();
            std::os::unix::fs::symlink(fakes().join("docker"), dir.join("bin/docker")).unwrap();
        }
        for node in ["pve1", "pve2", "pve3"] {
            std::fs::create_dir_all(pve.join("nodes").join(node).join("qemu-server")).unwrap();
        }
        std::fs::write(
            pve.join("corosync.conf"),
            "totem {\n  cluster_name: lab\n}\n",
        )
        .unwrap();
        std::fs::create_dir_all(pve.join("priv/lock")).unwrap();
        let etc = tempfile::tempdir().unwrap();
        let vms = json!({"vms": [
            {"vmid": MANAGER, "name": "Portainer", "swarm_role": "manager",
             "network_config": {"ip": "10.0.0.111/24", "gw": "10.0.0.1"}},
            {"vmid": WORKER, "name": "drphoenix", "swarm_role": "worker",
             "network_config": {"ip": "10.0.0.102/24"}, "node_labels": ["gpu=false"]}
        ]});
        std::fs::write(etc.path().join("phoenix_vm_configs.json"), vms.to_string()).unwrap();
        for node in ["pve1", "pve2", "pve3"] {
            let toolkit = json!({
                "phoenix_etc": etc.path(),
                "lock_dir": etc.path().join("lock").join(node),
                "state_dir": etc.path().join("state").join(node),
                "pve_dir": pve,
                "cluster": {"node_name": node},
                "swarm": {"agent_timeout_secs": 1, "state_timeout_secs": 2,
                          "command_timeout_secs": 10},
            });
            std::fs::write(
                etc.path().join(format!("toolkit-{node}.json")),
                toolkit.to_string(),
            )
            .unwrap();
        }
        let c = Cluster { state, pve, etc };
        for (id, node) in places {
            c.place(*id, node);
        }
        c
    }

    /// Put VM `id` on `node`: its config there, `.vmlist` saying so.
    fn place(&self, id: u32, node: &str) {
        for n in ["pve1", "pve2", "pve3"] {
            let _ = std::fs::remove_file(self.conf(n, id));
        }
        std::fs::write(self.conf(node, id), "agent: 1\n").unwrap();
        let mut ids = serde_json::Map::new();
        for n in ["pve1", "pve2", "pve3"] {
            for e in std::fs::read_dir(self.pve.join("nodes").join(n).join("qemu-server")).unwrap()
            {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let vmid = name.trim_end_matches(".conf").to_string();
                ids.insert(vmid, json!({"node": n, "type": "qemu", "version": 1}));
            }
        }
        std::fs::write(
            self.pve.join(".vmlist"),
            json!({"version": 2, "ids": ids}).to_string(),
        )
        .unwrap();
    }

    fn conf(&self, node: &str, id: u32) -> PathBuf {
        self.pve
            .join("nodes")
            .join(node)
            .join("qemu-server")
            .join(format!("{id}.conf"))
    }

    /// `phoenix-swarm ARGS` run on `node`.
    fn swarm(&self, node: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
            .args(args)
            .arg("--config")
            .arg(self.etc.path().join(format!("toolkit-{node}.json")))
            .env("PATH", common::path_with_fakes())
            .env("PHOENIX_FAKE_PVE", self.state.path())
            .env("FAKE_PVE_CLUSTER", &self.pve)
            .env("FAKE_PVE_NODE", node)
            .env_remove("PHOENIX_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    }

    fn docker_state(&self) -> Value {
        read_json(&self.state.path().join("docker/state.json"))
    }

    fn node(&self, id: u32) -> Value {
        self.docker_state()["nodes"][id.to_string()].clone()
    }

    /// Every call of the fake Proxmox tools: (tool, node, argv).
    fn calls(&self) -> Vec<(String, String, Vec<String>)> {
        jsonl(&self.state.path().join("calls.jsonl"))
            .into_iter()
            .map(|c| {
                (
                    c["tool"].as_str().unwrap().to_string(),
                    c["env"]["FAKE_PVE_NODE"]
                        .as_str()
                        .unwrap_or("pve")
                        .to_string(),
                    c["argv"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// Every join token of every swarm.
    fn tokens(&self) -> Vec<String> {
        let st = self.docker_state();
        let mut out = Vec::new();
        for c in st["clusters"].as_object().unwrap().values() {
            for t in c["tokens"].as_object().unwrap().values() {
                out.push(t.as_str().unwrap().to_string());
            }
        }
        out
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn both(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

#[test]
fn the_swarm_is_formed_once_across_nodes() {
    let lab = Cluster::new(&[(MANAGER, "pve2"), (WORKER, "pve3")]);

    // From pve1, which runs neither VM: the manager is made active through
    // the cluster API, the worker's join refused (its token would go in
    // argv), saying where to run.
    let o = lab.swarm("pve1", &["ensure"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(err.contains("VM 1002 runs on node pve3"), "{err}");
    assert!(err.contains("run phoenix-swarm on node pve3"), "{err}");
    assert_eq!(lab.node(MANAGER)["state"], "active");
    assert_ne!(lab.node(WORKER)["state"], "active");
    let calls = lab.calls();
    assert!(
        calls.iter().all(|(tool, _, _)| tool == "pvesh"),
        "qm on pve1 for another node's VM: {calls:?}"
    );
    // The manager's commands ran on pve2, the worker's reads on pve3.
    for (vm, node) in [(MANAGER, "pve2"), (WORKER, "pve3")] {
        let path = format!("/nodes/{node}/qemu/{vm}/agent/exec");
        assert!(
            calls
                .iter()
                .any(|(t, n, a)| t == "pvesh" && n == node && a.contains(&path)),
            "{path} not run on {node}: {calls:?}"
        );
    }

    // From the worker's node: the manager reached through the API, the
    // token read from its stdout and handed to the worker on qm's stdin.
    let o = lab.swarm("pve3", &["ensure"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(lab.node(WORKER)["state"], "active");
    assert_eq!(lab.node(WORKER)["cluster"], lab.node(MANAGER)["cluster"]);
    let joins: Vec<_> = lab
        .calls()
        .into_iter()
        .filter(|(t, n, a)| t == "qm" && n == "pve3" && a.contains(&"--pass-stdin".into()))
        .collect();
    assert_eq!(joins.len(), 1, "{joins:?}");

    // Formed once: every node's run now finds it in place, changing nothing.
    for node in ["pve1", "pve2", "pve3"] {
        let o = lab.swarm(node, &["ensure"]);
        assert_eq!(o.status.code(), Some(0), "{node}: {}", both(&o));
        assert!(
            text(&o.stdout).contains("no change"),
            "{node}: {}",
            both(&o)
        );
        let o = lab.swarm(node, &["status", "--json"]);
        assert_eq!(o.status.code(), Some(0), "{node}: {}", both(&o));
        // Every status says where each VM runs, whichever node asks.
        let st: Value = serde_json::from_slice(&o.stdout).unwrap();
        let nodes: Vec<&Value> = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["pve_node"])
            .collect();
        assert_eq!(nodes, [&json!("pve2"), &json!("pve3")], "{node}: {st}");
        let o = lab.swarm(node, &["status"]);
        assert!(text(&o.stdout).contains("@pve3"), "{node}: {}", both(&o));
    }
    let inits: Vec<Value> = jsonl(&lab.state.path().join("docker/calls.jsonl"))
        .into_iter()
        .filter(|c| c["argv"][0] == "swarm" && c["argv"][1] == "init")
        .collect();
    assert_eq!(inits.len(), 1, "{inits:?}");

    // No token ever reached a command line, on any node.
    let tokens = lab.tokens();
    assert!(!tokens.is_empty());
    for (tool, node, argv) in lab.calls() {
        for t in &tokens {
            assert!(
                !argv.join(" ").contains(t.as_str()),
                "a join token in {tool}'s argv on {node}"
            );
        }
    }
}

#[test]
fn a_migrated_manager_is_followed() {
    // Formed with both VMs on pve3; the manager migrates to pve1.
    let lab = Cluster::new(&[(MANAGER, "pve3"), (WORKER, "pve3")]);
    let o = lab.swarm("pve3", &["ensure"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let calls = lab.calls();
    let odd: Vec<_> = calls
        .iter()
        .filter(|(t, n, _)| t != "qm" || n != "pve3")
        .collect();
    assert!(odd.is_empty(), "{odd:?}");
    lab.place(MANAGER, "pve1");
    let o = lab.swarm("pve3", &["ensure"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(text(&o.stdout).contains("no change"), "{}", both(&o));
    let calls = lab.calls();
    assert!(
        calls.iter().any(|(t, n, a)| t == "pvesh"
            && n == "pve1"
            && a.contains(&"/nodes/pve1/qemu/1001/agent/exec".to_string())),
        "{calls:?}"
    );
}
