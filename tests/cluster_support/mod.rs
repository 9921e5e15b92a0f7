//! A simulated Proxmox cluster in one test: a shared `/etc/pve` (a temp
//! dir standing in for pmxcfs: `.vmlist`, `corosync.conf`,
//! `nodes/<node>/{lxc,qemu-server}/<id>.conf`, `priv/lock/`), the fake
//! `qm`/`pct` run as each node (`FAKE_PVE_NODE`, with the shared tree as
//! `FAKE_PVE_CLUSTER`: a guest is only found on the node whose directory
//! holds its config, as Proxmox's `load_config` finds it), a real step-ca,
//! and per node its own toolkit.json (`cluster.node_name`, its own lock
//! and state directories, the shared manifest and certificate storage).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use crate::common::{FakePve, TestCa};

/// A guest's type as `.vmlist` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lxc,
    Qemu,
}

impl Kind {
    fn vmlist(self) -> &'static str {
        match self {
            Kind::Lxc => "lxc",
            Kind::Qemu => "qemu",
        }
    }
    fn conf_dir(self) -> &'static str {
        match self {
            Kind::Lxc => "lxc",
            Kind::Qemu => "qemu-server",
        }
    }
}

/// The cluster.
pub struct Cluster {
    pub ca: TestCa,
    pub pve: FakePve,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<String>,
    /// VMID -> (type, node).
    pub guests: BTreeMap<u32, (Kind, String)>,
    version: u64,
}

impl Cluster {
    /// `nodes` sharing one `/etc/pve`, one CA, one certificate storage.
    pub fn new(nodes: &[&str]) -> Cluster {
        let c = Cluster {
            ca: TestCa::start(None),
            pve: FakePve::new(),
            dir: tempfile::tempdir().unwrap(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            guests: BTreeMap::new(),
            version: 0,
        };
        std::fs::create_dir_all(c.pve_dir().join("priv/lock")).unwrap();
        std::fs::write(c.pve_dir().join("corosync.conf"), "totem {\n}\n").unwrap();
        for n in &c.nodes {
            for k in [Kind::Lxc, Kind::Qemu] {
                std::fs::create_dir_all(c.pve_dir().join("nodes").join(n).join(k.conf_dir()))
                    .unwrap();
            }
            c.write_config(n, 10);
        }
        std::fs::create_dir_all(c.etc()).unwrap();
        std::fs::create_dir_all(c.path("guest-tmp")).unwrap();
        c
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The shared `/etc/pve`.
    pub fn pve_dir(&self) -> PathBuf {
        self.path("pve")
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.pve_dir().join("priv/lock")
    }

    pub fn etc(&self) -> PathBuf {
        self.path("etc")
    }

    /// Shared storage: where the certificates live.
    pub fn certs(&self) -> PathBuf {
        self.path("storage/ssl")
    }

    /// A node's own toolkit.json, its cluster lock wait in seconds.
    pub fn write_config(&self, node: &str, lock_wait: u64) {
        let config = json!({
            "phoenix_etc": self.etc(),
            "lock_dir": self.path(&format!("{node}/lock")),
            "state_dir": self.path(&format!("{node}/state")),
            "pve_dir": self.pve_dir(),
            "ca": self.ca.toolkit_ca(),
            "renewal": {"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 20,
                        "guest_drop_dir": self.path("guest-tmp")},
            "cluster": {"node_name": node, "lock_wait_secs": lock_wait},
        });
        std::fs::write(
            self.config_path(node),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    pub fn config_path(&self, node: &str) -> PathBuf {
        self.path(&format!("{node}.toolkit.json"))
    }

    /// Put guest `id` on `node` (creating it, or migrating it): its config
    /// under `nodes/<node>/`, and `.vmlist` as pmxcfs prints it, replaced
    /// atomically (a run reading it at that moment sees either list).
    pub fn place(&mut self, id: u32, kind: Kind, node: &str) {
        if let Some((k, old)) = self.guests.get(&id) {
            let _ = std::fs::remove_file(self.conf(*k, old, id));
        } else {
            let d = match kind {
                Kind::Lxc => self.pve.add_ct(id),
                Kind::Qemu => self.pve.add_vm(id),
            };
            self.pve
                .guest_command(&d, "systemctl", "#!/bin/sh\nexit 0\n");
        }
        std::fs::write(self.conf(kind, node, id), "memory: 512\n").unwrap();
        self.guests.insert(id, (kind, node.to_string()));
        self.write_vmlist();
    }

    /// Take guest `id` off every node (destroyed).
    pub fn destroy(&mut self, id: u32) {
        if let Some((k, node)) = self.guests.remove(&id) {
            let _ = std::fs::remove_file(self.conf(k, &node, id));
        }
        self.write_vmlist();
    }

    fn conf(&self, kind: Kind, node: &str, id: u32) -> PathBuf {
        self.pve_dir()
            .join("nodes")
            .join(node)
            .join(kind.conf_dir())
            .join(format!("{id}.conf"))
    }

    /// pve-cluster src/pmxcfs/status.c `cfs_create_vmlist_msg`, byte for byte.
    fn write_vmlist(&mut self) {
        self.version += 1;
        let mut text = format!("{{\n\"version\": {},\n\"ids\": {{\n", self.version);
        let lines: Vec<String> = self
            .guests
            .iter()
            .map(|(id, (k, node))| {
                format!(
                    "\"{id}\": {{ \"node\": \"{node}\", \"type\": \"{}\", \"version\": {} }}",
                    k.vmlist(),
                    self.version
                )
            })
            .collect();
        text.push_str(&lines.join(",\n"));
        text.push_str("}\n\n}\n");
        let tmp = self.pve_dir().join(".vmlist.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.pve_dir().join(".vmlist")).unwrap();
    }

    /// One certificate per guest: `g<id>.test.internal`, reloading a
    /// service in its guest after a change.
    pub fn write_manifest(&self) {
        let entries: Vec<Value> = self
            .guests
            .iter()
            .map(|(id, (k, _))| {
                let d = self.certs().join(id.to_string());
                json!({
                    "common_name": cert_name(*id),
                    "sans": [cert_name(*id)],
                    "guest_id": id,
                    "guest_type": if *k == Kind::Lxc { "lxc" } else { "vm" },
                    "cert_path": d.join("cert.pem"),
                    "key_path": d.join("key.pem"),
                    "post_renewal": {"run": ["systemctl", "reload", "nginx"]},
                })
            })
            .collect();
        std::fs::write(
            self.etc().join("certificate-manifest.json"),
            serde_json::to_vec_pretty(&entries).unwrap(),
        )
        .unwrap();
    }

    /// `phoenix-renew ARGS` as `node` runs it.
    pub fn command(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"));
        self.node_env(&mut cmd, node);
        cmd.arg("--config").arg(self.config_path(node)).args(args);
        cmd
    }

    /// The environment of `node`: the fakes as that node.
    pub fn node_env(&self, cmd: &mut Command, node: &str) {
        for (k, v) in self.pve.env() {
            cmd.env(k, v);
        }
        cmd.env("FAKE_PVE_NODE", node)
            .env("FAKE_PVE_CLUSTER", self.pve_dir())
            .env("STEPPATH", self.path(&format!("{node}/steppath")))
            .env_remove("PHOENIX_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
    }

    pub fn run(&self, node: &str, args: &[&str]) -> Output {
        self.command(node, args).output().unwrap()
    }

    pub fn spawn(&self, node: &str, args: &[&str]) -> Child {
        self.command(node, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The serial of guest `id`'s certificate, as step reads it.
    pub fn serial(&self, id: u32) -> Option<String> {
        let crt = self.certs().join(id.to_string()).join("cert.pem");
        if !crt.exists() {
            return None;
        }
        let out = Command::new("step")
            .args(["certificate", "inspect", "--format", "json"])
            .arg(&crt)
            .output()
            .unwrap();
        assert!(out.status.success(), "inspect {}", crt.display());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v["serial_number"].as_str().unwrap().to_string())
    }

    /// Every serial, by VMID.
    pub fn serials(&self) -> BTreeMap<u32, Option<String>> {
        self.guests
            .keys()
            .map(|id| (*id, self.serial(*id)))
            .collect()
    }

    /// The post-renewal actions run so far: (VMID, node that ran it), one
    /// per `pct exec`/`qm guest exec` of `systemctl`, in order.
    pub fn actions(&self) -> Vec<(u32, String)> {
        self.pve
            .calls()
            .iter()
            .filter_map(|c| {
                let argv: Vec<&str> = c["argv"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let is_exec = matches!(argv.as_slice(), ["exec", _, ..] | ["guest", "exec", ..]);
                if !is_exec || !argv.contains(&"systemctl") {
                    return None;
                }
                let id = argv.iter().find_map(|a| a.parse::<u32>().ok())?;
                let node = c["env"]["FAKE_PVE_NODE"].as_str()?.to_string();
                Some((id, node))
            })
            .collect()
    }

    /// The cluster locks present (names), leftovers set aside included.
    pub fn locks(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lock_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Guest `id`'s certificate name.
pub fn cert_name(id: u32) -> String {
    format!("g{id}.test.internal")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Set a directory's mtime `secs` in the past (what pmxcfs's own clock of
/// the lock's age would say after that long without a refresh).
pub fn backdate(path: &Path, secs: u64) {
    let out = Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{}", now() - secs as i64))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "touch: {}", stderr(&out));
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
