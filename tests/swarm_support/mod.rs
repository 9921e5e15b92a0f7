//! A fake Phoenix swarm for the `phoenix-swarm` tests: VMs 1001 (manager)
//! and 1002 (worker) in the fake `qm` (tests/fakes/pve.py), each with the
//! fake `docker` (tests/fakes/docker) first on its PATH, the Phoenix VM
//! file and a toolkit.json with short bounds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::{fakes, FakePve};

pub const MANAGER: u32 = 1001;
pub const WORKER: u32 = 1002;

pub struct Lab {
    pub pve: FakePve,
    pub etc: tempfile::TempDir,
    pub config: PathBuf,
}

impl Lab {
    /// The Phoenix pair, nothing started yet (every daemon inactive).
    pub fn new() -> Lab {
        Lab::with_swarm(json!({}))
    }

    /// Like [`Lab::new`], with extra keys in toolkit.json's `swarm`.
    pub fn with_swarm(extra: Value) -> Lab {
        let pve = FakePve::new();
        for (id, host) in [(MANAGER, "portainer"), (WORKER, "drphoenix")] {
            let dir = pve.add_vm(id);
            std::fs::write(dir.join("hostname"), host).unwrap();
            std::os::unix::fs::symlink(fakes().join("docker"), dir.join("bin/docker")).unwrap();
        }
        let etc = tempfile::tempdir().unwrap();
        let vms = json!({"vms": [
            {"vmid": 9000, "name": "ubuntu-template", "is_template": true,
             "network_config": {"ip": "dhcp"}},
            {"vmid": MANAGER, "name": "Portainer", "swarm_role": "manager",
             "network_config": {"ip": "10.0.0.111/24", "gw": "10.0.0.1"}, "node_labels": null},
            {"vmid": WORKER, "name": "drphoenix", "swarm_role": "worker",
             "network_config": {"ip": "10.0.0.102/24"}, "node_labels": ["gpu=false"]}
        ]});
        std::fs::write(etc.path().join("phoenix_vm_configs.json"), vms.to_string()).unwrap();
        let mut swarm = json!({
            "agent_timeout_secs": 1, "state_timeout_secs": 2, "command_timeout_secs": 10
        });
        for (k, v) in extra.as_object().unwrap() {
            swarm[k] = v.clone();
        }
        let toolkit = json!({
            "phoenix_etc": etc.path(),
            "lock_dir": etc.path().join("lock"),
            "state_dir": etc.path().join("state"),
            "swarm": swarm,
        });
        let config = etc.path().join("toolkit.json");
        std::fs::write(&config, toolkit.to_string()).unwrap();
        Lab { pve, etc, config }
    }

    pub fn vm_dir(&self, id: u32) -> PathBuf {
        self.pve.dir.path().join("qemu").join(id.to_string())
    }

    /// Run `phoenix-swarm ARGS` against the lab.
    pub fn swarm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.pve.env())
            .env_remove("PHOENIX_CONFIG")
            .output()
            .unwrap()
    }

    /// Run the fake docker as if inside VM `id` (test set-up, outside
    /// `phoenix-swarm`).
    pub fn docker_as(&self, id: u32, args: &[&str]) -> Output {
        let out = Command::new(fakes().join("docker"))
            .args(args)
            .env("FAKE_GUEST_ID", id.to_string())
            .env("FAKE_GUEST_DIR", self.vm_dir(id))
            .env("FAKE_PVE", self.pve.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "set-up docker {args:?} in {id}: {}",
            text(&out.stderr)
        );
        out
    }

    fn state_path(&self) -> PathBuf {
        self.pve.dir.path().join("docker/state.json")
    }

    /// The fake docker's whole state.
    pub fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    /// The fake daemon state of VM `id`.
    pub fn node(&self, id: u32) -> Value {
        self.state()["nodes"][id.to_string()].clone()
    }

    /// Merge `patch` into VM `id`'s daemon state (creating it).
    pub fn set_node(&self, id: u32, patch: Value) {
        let mut st = if self.state_path().exists() {
            self.state()
        } else {
            json!({"nodes": {}, "clusters": {}})
        };
        let node = st["nodes"]
            .as_object_mut()
            .unwrap()
            .entry(id.to_string())
            .or_insert(json!({}));
        for (k, v) in patch.as_object().unwrap() {
            node[k] = v.clone();
        }
        std::fs::create_dir_all(self.state_path().parent().unwrap()).unwrap();
        std::fs::write(self.state_path(), st.to_string()).unwrap();
    }

    /// Merge `patch` into the cluster VM `id` is in.
    pub fn set_cluster_of(&self, id: u32, patch: Value) {
        let mut st = self.state();
        let cid = st["nodes"][id.to_string()]["cluster"]
            .as_str()
            .unwrap()
            .to_string();
        for (k, v) in patch.as_object().unwrap() {
            st["clusters"][&cid][k] = v.clone();
        }
        std::fs::write(self.state_path(), st.to_string()).unwrap();
    }

    /// The cluster VM `id` is in.
    pub fn cluster_of(&self, id: u32) -> Value {
        let st = self.state();
        let cid = st["nodes"][id.to_string()]["cluster"]
            .as_str()
            .unwrap_or("")
            .to_string();
        st["clusters"][cid].clone()
    }

    /// Every docker call made in a guest so far: (guest, argv).
    pub fn docker_calls(&self) -> Vec<(String, Vec<String>)> {
        read_jsonl(&self.pve.dir.path().join("docker/calls.jsonl"))
            .into_iter()
            .map(|v| {
                let argv = v["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                (v["guest"].as_str().unwrap().to_string(), argv)
            })
            .collect()
    }

    /// Every qm call made by the host, as recorded by the fake qm.
    pub fn qm_calls(&self) -> Vec<Value> {
        self.pve.calls()
    }

    /// Every token of every cluster (worker and manager).
    pub fn tokens(&self) -> Vec<String> {
        let st = self.state();
        let mut out = Vec::new();
        for c in st["clusters"].as_object().unwrap().values() {
            for t in c["tokens"].as_object().unwrap().values() {
                out.push(t.as_str().unwrap().to_string());
            }
        }
        out
    }
}

/// Calls that change a swarm.
pub fn mutating(calls: &[(String, Vec<String>)]) -> Vec<(String, Vec<String>)> {
    calls
        .iter()
        .filter(|(_, argv)| {
            let a: Vec<&str> = argv.iter().map(String::as_str).collect();
            matches!(
                a.as_slice(),
                ["swarm", "init", ..]
                    | ["swarm", "join", ..]
                    | ["swarm", "leave", ..]
                    | ["node", "rm", ..]
                    | ["node", "update", ..]
            ) || (a.starts_with(&["swarm", "join-token"]) && a.contains(&"--rotate"))
        })
        .cloned()
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
