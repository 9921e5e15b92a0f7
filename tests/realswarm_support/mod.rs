//! A REAL Docker Swarm for the integration tests: one Debian `dockerd` per
//! "VM", each in its own network and UTS namespace, started by
//! `scripts/lib/realswarm.sh`, reached from the fake `qm`
//! (tests/fakes/pve.py) through a `bin/docker` wrapper in the fake guest,
//! so `phoenix-swarm` and `phoenix-renew` run unchanged against it. The
//! Phoenix files (`phoenix_vm_configs.json`, `toolkit.json`) describe the
//! started VMs: the first is the manager, the others workers.
//!
//! Dropping a [`RealSwarm`] (also when a test panics) runs
//! `realswarm.sh down`: daemons, their processes, mounts, namespaces and
//! links go. At most [`AT_ONCE`] swarms run at a time in a test binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{project, FakePve};

/// Swarms alive at once in one test binary (tests run in threads; two
/// cores). `PHOENIX_REALSWARM_AT_ONCE` overrides it.
pub const AT_ONCE: usize = 2;

/// The docker CLI of Debian's docker.io (another one may sit in
/// /usr/local/bin).
pub const DOCKER: &str = "/usr/bin/docker";

/// The image every node has, imported from busybox-static.
pub const IMAGE: &str = "local/busybox:1";

/// Bound of one docker command run by a test.
const DOCKER_TIMEOUT_SECS: u32 = 60;

/// Bound of one run of a Phoenix binary.
const BINARY_TIMEOUT_SECS: u32 = 300;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A place among the swarms allowed at once; freed when dropped.
struct Turn;

impl Turn {
    fn take() -> Turn {
        let limit = std::env::var("PHOENIX_REALSWARM_AT_ONCE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(AT_ONCE);
        // A test that panicked holding the lock poisons it; the count
        // stays right (Turn's Drop ran), so go on.
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= limit {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// One VM of a [`RealSwarm`].
#[derive(Debug, Clone)]
pub struct RealVm {
    /// VMID.
    pub id: u32,
    /// Its address on the harness bridge (no prefix length).
    pub ip: String,
    /// Its UTS hostname: the node's hostname in `docker node ls`.
    pub hostname: String,
    /// Its dockerd's socket.
    pub sock: PathBuf,
}

/// A `qm guest exec` the fake qm recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCall {
    /// VMID.
    pub vmid: u32,
    /// The guest command (after `--`).
    pub argv: Vec<String>,
    /// Bytes passed on stdin (`--pass-stdin 1`).
    pub stdin_bytes: u64,
}

impl GuestCall {
    /// The docker arguments this call ran (after `docker`): the join
    /// script of `phoenix-swarm` counts as `swarm join --token <stdin>
    /// ADDR`. `None` for other commands.
    pub fn docker(&self) -> Option<Vec<String>> {
        let a: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["docker", rest @ ..] => Some(rest.iter().map(|s| s.to_string()).collect()),
            ["sh", "-c", _, "phoenix-swarm-join", addr] => Some(
                ["swarm", "join", "--token", "<stdin>", addr]
                    .map(String::from)
                    .to_vec(),
            ),
            _ => None,
        }
    }

    /// The call changes a swarm: init, join, leave, unlock, `node rm`,
    /// `node update`, `node promote/demote`, `swarm update`, a token
    /// rotation; a stack deployed or removed; a service, secret, config or
    /// network created, updated, rolled back or removed.
    pub fn is_mutating(&self) -> bool {
        let Some(d) = self.docker() else {
            return false;
        };
        let a: Vec<&str> = d.iter().map(String::as_str).collect();
        matches!(
            a.as_slice(),
            ["swarm", "init" | "join" | "leave" | "unlock" | "update", ..]
                | ["node", "rm" | "update" | "promote" | "demote", ..]
                | ["stack", "deploy" | "rm", ..]
                | [
                    "service",
                    "create" | "update" | "rollback" | "rm" | "scale",
                    ..
                ]
                | ["secret" | "config" | "network", "create" | "rm", ..]
        ) || (a.starts_with(&["swarm", "join-token"]) && a.contains(&"--rotate"))
    }

    /// `VMID: docker ARGS` for messages.
    pub fn show(&self) -> String {
        format!("{}: {}", self.vmid, self.argv.join(" "))
    }
}

/// The mutating calls among `calls`.
pub fn mutating(calls: &[GuestCall]) -> Vec<GuestCall> {
    calls.iter().filter(|c| c.is_mutating()).cloned().collect()
}

/// A real swarm's VMs, the fake Proxmox that reaches them and the Phoenix
/// files that describe them. Nothing is joined yet: every daemon is
/// `inactive` until a test (or [`RealSwarm::ensure`]) forms the swarm.
pub struct RealSwarm {
    /// The fake `qm`'s state (`pve.calls()`, more guests with
    /// `pve.add_vm`).
    pub pve: FakePve,
    /// The harness's directory: one `vmID/` per daemon (data, log, sock).
    pub base: TempDir,
    /// `phoenix_etc` (the Phoenix files, the lock directory).
    pub etc: TempDir,
    /// `toolkit.json`.
    pub config: PathBuf,
    /// The started VMs, in the order given (the first is the manager).
    pub vms: Vec<RealVm>,
    /// Dropped last: after `down`.
    _turn: Turn,
}

fn script() -> PathBuf {
    project().join("scripts/lib/realswarm.sh")
}

/// Text of a byte buffer (stdout, stderr).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl RealSwarm {
    /// Start one dockerd per id (hostnames `vm<id>`); panics with the
    /// reason (the end of the daemon's log) if one cannot start.
    pub fn start(ids: &[u32]) -> RealSwarm {
        let named: Vec<(u32, String)> = ids.iter().map(|&id| (id, format!("vm{id}"))).collect();
        let named: Vec<(u32, &str)> = named.iter().map(|(id, h)| (*id, h.as_str())).collect();
        RealSwarm::start_named(&named)
    }

    /// Like [`RealSwarm::start`], with the given hostnames.
    pub fn start_named(vms: &[(u32, &str)]) -> RealSwarm {
        assert!(!vms.is_empty(), "a swarm needs a VM");
        assert!(
            nix::unistd::geteuid().is_root(),
            "a real swarm needs root (network and UTS namespaces, dockerd)"
        );
        let turn = Turn::take();
        // Short paths: the daemons' unix sockets live under it.
        let base = tempfile::Builder::new()
            .prefix("rsw")
            .tempdir_in("/tmp")
            .unwrap();
        let pve = FakePve::new();
        let etc = tempfile::tempdir().unwrap();
        let config = etc.path().join("toolkit.json");
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("up")
            .arg(base.path())
            .arg(pve.dir.path());
        for (id, host) in vms {
            cmd.arg(format!("{id}:{host}"));
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("running realswarm.sh");
        // From here on Drop takes it down, even if what follows panics.
        let mut swarm = RealSwarm {
            pve,
            base,
            etc,
            config,
            vms: Vec::new(),
            _turn: turn,
        };
        assert!(
            out.status.success(),
            "realswarm.sh up failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let vars: Vec<(String, String)> = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = |k: String| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("realswarm.sh up printed no {k}"))
        };
        swarm.vms = vms
            .iter()
            .map(|(id, _)| RealVm {
                id: *id,
                ip: var(format!("VM_{id}_IP")),
                hostname: var(format!("VM_{id}_HOSTNAME")),
                sock: PathBuf::from(var(format!("VM_{id}_SOCK"))),
            })
            .collect();
        let members: Vec<(u32, &[&str])> = swarm.vms.iter().map(|v| (v.id, &[][..])).collect();
        swarm.write_vm_configs(&members);
        swarm.write_toolkit(json!({}));
        swarm
    }

    /// The VM `id`.
    pub fn vm(&self, id: u32) -> &RealVm {
        self.vms
            .iter()
            .find(|v| v.id == id)
            .unwrap_or_else(|| panic!("no VM {id} in this swarm"))
    }

    /// The manager: the first VM.
    pub fn manager(&self) -> &RealVm {
        &self.vms[0]
    }

    /// The fake guest directory of VM `id` (`qemu/ID`).
    pub fn vm_dir(&self, id: u32) -> PathBuf {
        self.pve.dir.path().join("qemu").join(id.to_string())
    }

    fn docker_cmd(&self, id: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(DOCKER_TIMEOUT_SECS.to_string())
            .arg(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.vm(id).sock.display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        cmd
    }

    /// `docker ARGS` on VM `id`'s daemon, directly (not through qm).
    pub fn docker(&self, id: u32, args: &[&str]) -> Output {
        self.docker_cmd(id, args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like [`RealSwarm::docker`]; asserts success, returns stdout.
    pub fn docker_ok(&self, id: u32, args: &[&str]) -> String {
        let o = self.docker(id, args);
        assert!(
            o.status.success(),
            "docker {} on VM {id}: {}\n{}",
            args.join(" "),
            o.status,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Like [`RealSwarm::docker`], with `stdin` (`docker secret create
    /// NAME -`, `docker stack deploy -c -`).
    pub fn docker_stdin(&self, id: u32, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .docker_cmd(id, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `docker info --format '{{json .Swarm}}'` of VM `id`.
    pub fn swarm_info(&self, id: u32) -> Value {
        serde_json::from_str(&self.docker_ok(id, &["info", "--format", "{{json .Swarm}}"])).unwrap()
    }

    /// `docker node ls` on VM `id` (a manager), one JSON object a node.
    pub fn nodes(&self, id: u32) -> Vec<Value> {
        self.docker_ok(id, &["node", "ls", "--format", "{{json .}}"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The labels of node `node` (id or hostname), read on manager `id`.
    pub fn node_labels(&self, id: u32, node: &str) -> Value {
        serde_json::from_str(&self.docker_ok(
            id,
            &["node", "inspect", "--format", "{{json .Spec.Labels}}", node],
        ))
        .unwrap()
    }

    fn harness(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(script())
            .arg(args[0])
            .arg(self.base.path())
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "realswarm.sh {}: {}\n{}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
    }

    /// Stop VM `id`'s dockerd and wait for it to exit (the VM and its
    /// guest agent stay up: `docker` there cannot connect).
    pub fn stop_daemon(&self, id: u32) {
        self.harness(&["stop", &id.to_string()]);
    }

    /// Start VM `id`'s dockerd again (same data, namespaces, hostname) and
    /// wait until it answers.
    pub fn start_daemon(&self, id: u32) {
        self.harness(&["start", &id.to_string()]);
    }

    /// Poll `f` every 200 ms until it holds; panics naming `what` after
    /// `bound`.
    pub fn wait_for(&self, what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + bound;
        loop {
            if f() {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out after {bound:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Write `phoenix_vm_configs.json`: `members` in order, the first
    /// the manager, with their node labels; every VM's `network_config.ip`
    /// is its harness address /24 (the manager's is the advertise address).
    /// A started VM left out is no Phoenix member.
    pub fn write_vm_configs(&self, members: &[(u32, &[&str])]) {
        let with: Vec<(u32, &[&str], &[&str])> =
            members.iter().map(|(id, l)| (*id, *l, &[][..])).collect();
        self.write_vm_configs_with_stacks(&with);
    }

    /// Like [`RealSwarm::write_vm_configs`], each member with its
    /// `docker_stacks` too.
    pub fn write_vm_configs_with_stacks(&self, members: &[(u32, &[&str], &[&str])]) {
        let vms: Vec<Value> = members
            .iter()
            .enumerate()
            .map(|(i, (id, labels, stacks))| {
                let vm = self.vm(*id);
                json!({
                    "vmid": id,
                    "name": vm.hostname,
                    "swarm_role": if i == 0 { "manager" } else { "worker" },
                    "network_config": {"ip": format!("{}/24", vm.ip)},
                    "node_labels": if labels.is_empty() { Value::Null } else { json!(labels) },
                    "docker_stacks": if stacks.is_empty() { Value::Null } else { json!(stacks) },
                })
            })
            .collect();
        std::fs::write(
            self.etc.path().join("phoenix_vm_configs.json"),
            json!({ "vms": vms }).to_string(),
        )
        .unwrap();
    }

    /// Write `toolkit.json`: `phoenix_etc`, `lock_dir`, `state_dir` in
    /// `etc`, swarm bounds for tests (agent 5 s, state 10 s, command
    /// 30 s), with `extra` merged in (objects key by key).
    pub fn write_toolkit(&self, extra: Value) {
        let etc = self.etc.path();
        let mut toolkit = json!({
            "phoenix_etc": etc,
            "lock_dir": etc.join("lock"),
            "state_dir": etc.join("state"),
            "swarm": {"agent_timeout_secs": 5, "state_timeout_secs": 10, "command_timeout_secs": 30},
        });
        merge(&mut toolkit, extra);
        std::fs::write(&self.config, toolkit.to_string()).unwrap();
    }

    /// Run a Phoenix binary (`env!("CARGO_BIN_EXE_...")`) with ARGS,
    /// `--config` and the fake Proxmox on PATH.
    pub fn run(&self, exe: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["--kill-after=5", &BINARY_TIMEOUT_SECS.to_string(), exe])
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.pve.env())
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `phoenix-swarm ARGS`.
    pub fn swarm(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_phoenix-swarm"), args)
    }

    /// `phoenix-renew ARGS`.
    pub fn renew(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_phoenix-renew"), args)
    }

    /// `phoenix-deploy ARGS`.
    pub fn deploy(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_phoenix-deploy"), args)
    }

    /// Form the swarm: `phoenix-swarm ensure`, which must succeed.
    pub fn ensure(&self) -> Output {
        let o = self.swarm(&["ensure"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "phoenix-swarm ensure:\n{}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        o
    }

    /// Every `qm guest exec` recorded so far, in order.
    pub fn guest_calls(&self) -> Vec<GuestCall> {
        self.pve
            .calls()
            .into_iter()
            .filter_map(|c| {
                let argv: Vec<String> = c["argv"]
                    .as_array()?
                    .iter()
                    .map(|a| a.as_str().unwrap_or_default().to_string())
                    .collect();
                if argv.len() < 3 || argv[0] != "guest" || argv[1] != "exec" {
                    return None;
                }
                let dash = argv.iter().position(|a| a == "--")?;
                Some(GuestCall {
                    vmid: argv[2].parse().ok()?,
                    argv: argv[dash + 1..].to_vec(),
                    stdin_bytes: c["stdin_bytes"].as_u64().unwrap_or(0),
                })
            })
            .collect()
    }

    /// The guest calls after the first `n` (`n` = an earlier
    /// `guest_calls().len()`).
    pub fn guest_calls_since(&self, n: usize) -> Vec<GuestCall> {
        self.guest_calls().split_off(n)
    }
}

impl Drop for RealSwarm {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(self.base.path())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "realswarm.sh down {}: {}\n{}",
                self.base.path().display(),
                o.status,
                text(&o.stderr)
            ),
            Err(e) => eprintln!("realswarm.sh down: {e}"),
        }
    }
}

/// Merge `extra` into `into`: objects key by key, anything else replaced.
fn merge(into: &mut Value, extra: Value) {
    match (into, extra) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
