//! Typed transports into guests: `pct exec` for containers and
//! `qm guest exec` for VMs, with the traps of each handled in one place.
//!
//! - `qm status` / `pct status` exit 0 for a stopped guest: the state is
//!   read from their output (`status: running`).
//! - `qm guest exec` exits 0 whatever the guest command did. Its stdout is
//!   JSON (`exited` is 1/0, not true/false); a missing `exitcode`, a
//!   `signal`, or a bare `{"pid": N}` (printed when its `--timeout` runs
//!   out, with `timeout reached, returning pid` on stderr) are failures.
//!   stdout and stderr are read apart, so a warning never spoils the JSON.
//! - `qm` prints that JSON with `to_json(..., utf8 => 1)` (qemu-server
//!   src/PVE/CLI/qm.pm, `$print_agent_result`) after `decode_base64` of
//!   the agent's `out-data` (src/PVE/QemuServer/Agent.pm,
//!   `qemu_exec_status`): the guest's bytes are taken as characters and
//!   encoded once more, so "é" arrives as "Ã©". [`parse_qm_exec`] undoes
//!   it ([`undo_double_utf8`]).
//! - `pct exec` exits with the command's own status.
//! - Secrets reach the guest on stdin (`--pass-stdin 1` for `qm`), never in
//!   argv.
//!
//! Proxmox's own messages that say whether to try again (checked in that
//! order by qemu-server src/PVE/QemuServer/Agent.pm
//! `assert_agent_available`, for `qm guest cmd|exec|exec-status`):
//!
//! - "No QEMU guest agent configured" (the VM's config has no `agent:`
//!   line): final, [`Kind::Config`], never retried: the message says to
//!   enable the agent in the VM's options (`qm set ID --agent 1`).
//! - "VM ID is not running", "QEMU guest agent is not running" (a VM
//!   still booting, or `agent: 0`, which gives QEMU no agent channel:
//!   src/PVE/QemuServer.pm adds `qga0` only when enabled): temporary.
//! - `qm`/`pct` missing (spawning it fails with ENOENT): not a Proxmox VE
//!   node; final ([`Kind::Config`]).
//! - "can't lock file '/run/lock/lxc/pve-config-ID.lock' - got timeout"
//!   (pve-common src/PVE/Tools.pm `lock_file_full`, after 10 s:
//!   pve-guest-common src/PVE/AbstractConfig.pm `lock_config`; `pct push`
//!   takes it, pve-container src/PVE/CLI/pct.pm): another task holds the
//!   guest's config; temporary ([`Kind::TempFail`]).
//! - "Task finished with N warning(s)!" (pve-common
//!   src/PVE/RESTEnvironment.pm, the sync task's `TASK WARNINGS: N`) on
//!   stderr, exit 0: the task succeeded; not a failure.
//!
//! A Perl `die` exits with `$!` when it is set, else 255, so the exit code
//! of a failed `qm`/`pct` says nothing: the message is what is read.
//!
//! # Guests on other nodes of a cluster
//!
//! `qm`, `pct` and their `guest exec` reach only the guests of the node
//! they run on: for any other, `PVE::AbstractConfig::load_config` dies
//! "Configuration file 'nodes/NODE/qemu-server/ID.conf' does not exist"
//! (pve-guest-common src/PVE/AbstractConfig.pm). A VM whose VMID is in
//! [`Proxmox::remote`] (VMID -> node, the guests of *other* nodes) is
//! reached through the cluster API instead, with `pvesh` (pve-manager
//! PVE/CLI/pvesh.pm), which proxies a call for another node to that
//! node (`proxyto => 'node'`: `ssh root@NODE pvesh --noproxy ...`):
//!
//! - `pvesh create /nodes/NODE/qemu/ID/agent/exec --command PROG
//!   --command ARG ... --output-format json` prints `{"pid":N}` at once
//!   (qemu-server src/PVE/API2/Qemu/Agent.pm `exec`: no wait, no
//!   timeout);
//! - `pvesh get /nodes/NODE/qemu/ID/agent/exec-status --pid N
//!   --output-format json` prints `{"exited":0}` while it runs, then the
//!   same object `qm guest exec` prints (`exited` 1/0, `exitcode` or
//!   `signal`, `out-data`/`err-data` decoded from base64 and encoded once
//!   more by `to_json(..., utf8 => 1)`: pve-common src/PVE/CLIFormatter.pm
//!   `print_api_result`), polled here until it ends or the command's
//!   bound runs out ([`Finished::Running`], as qm's `--timeout`);
//! - `status/current` (`qmpstatus`, as `qm status` prints it) and
//!   `agent/ping` stand in for `qm status` and `qm guest cmd ID ping`.
//!
//! Stdin is where this toolkit puts what must never reach a command line
//! (a join token, a key, a compose file with its variables). The API
//! takes it as `input-data` (at most 64 KiB), and pvesh takes parameters
//! only in its argv: it has no `param_mapping` (pve-common
//! src/PVE/CLIHandler.pm: only an interactive password or a CLI's own
//! file mapping are read otherwise), and a proxied call puts every
//! parameter on the `ssh ... pvesh --noproxy` command line on both nodes
//! (and in its "proxy handler failed: command '...'" message). So a
//! command with stdin is never sent to another node: it fails, naming
//! the VM and its node, and saying to run the command on that node
//! ([`Kind::Config`]). Containers have no exec API (`pct exec`/`pct push`
//! exist only on the container's node): an action in a container of
//! another node fails the same way; its state is still read
//! (`/nodes/NODE/lxc/ID/status/current`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::exec::{Cmd, Output};
use crate::exit::{err, kind_of, Kind};
use crate::phoenix::GuestType;
use crate::signal;

/// `qm guest exec --pass-stdin` refuses more than this.
pub const QM_STDIN_LIMIT: usize = 1024 * 1024;

/// How the host reaches guests.
#[derive(Debug, Clone)]
pub struct Proxmox {
    /// `qm` program.
    pub qm: String,
    /// `pct` program.
    pub pct: String,
    /// `pvesh` program: the VMs of other nodes.
    pub pvesh: String,
    /// The guests of *other* nodes of the cluster: VMID -> the node they
    /// run on. Every other guest is taken as this node's (`qm`/`pct`).
    pub remote: BTreeMap<u32, String>,
    /// Seconds the guest command may run (`qm guest exec --timeout`).
    pub guest_timeout: u64,
    /// Deadline of `qm`/`pct` calls that do not run a guest command.
    pub call_timeout: Duration,
}

impl Default for Proxmox {
    fn default() -> Self {
        Proxmox {
            qm: "qm".into(),
            pct: "pct".into(),
            pvesh: "pvesh".into(),
            remote: BTreeMap::new(),
            guest_timeout: 60,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// A guest: its type and VMID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// lxc or vm.
    pub kind: GuestType,
    /// VMID.
    pub id: u32,
}

impl std::fmt::Display for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            GuestType::Lxc => write!(f, "CT {}", self.id),
            GuestType::Vm => write!(f, "VM {}", self.id),
        }
    }
}

/// What a command run in a guest left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutput {
    /// The command's exit code.
    pub exitcode: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// The guest agent cut stdout.
    pub out_truncated: bool,
    /// The guest agent cut stderr.
    pub err_truncated: bool,
}

/// The JSON `qm guest exec` prints: a finished command, or `{"pid": N}`.
#[derive(Debug, Clone, Deserialize)]
struct QmExecResult {
    #[serde(default)]
    pid: Option<i64>,
    #[serde(default)]
    exited: Option<serde_json::Value>,
    #[serde(default)]
    exitcode: Option<i64>,
    #[serde(default)]
    signal: Option<i64>,
    #[serde(rename = "out-data", default)]
    out_data: Option<String>,
    #[serde(rename = "err-data", default)]
    err_data: Option<String>,
    #[serde(rename = "out-truncated", default)]
    out_truncated: Option<serde_json::Value>,
    #[serde(rename = "err-truncated", default)]
    err_truncated: Option<serde_json::Value>,
}

/// A Perl boolean as `qm` prints it: 1/0 (also accept true/false).
fn perl_bool(v: &Option<serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        Some(serde_json::Value::String(s)) => s == "1" || s == "true",
        _ => false,
    }
}

/// Turn the stdout of `qm guest exec` into a [`GuestOutput`], or the reason
/// it is not one. `what` names the guest and command for messages.
pub fn parse_qm_exec(stdout: &str, what: &str) -> Result<GuestOutput> {
    parse_qm_exec_as(stdout, what, Stdout::Shown)
}

/// Whether a message may quote what a guest command printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Quoted when it helps (a reply that is no JSON, a failure with an
    /// empty stderr).
    Shown,
    /// A secret (`docker swarm join-token -q`): never quoted, not even in
    /// part. The JSON `qm` prints carries the guest's stdout, so a reply
    /// that does not parse is not quoted either; its shape is told instead.
    Secret,
}

/// [`parse_qm_exec`], with `stdout` quoted in messages or not.
pub fn parse_qm_exec_as(stdout: &str, what: &str, quote: Stdout) -> Result<GuestOutput> {
    match parse_qm_reply(stdout, what, quote)? {
        Finished::Done(out) => Ok(out),
        Finished::Running { pid } => Err(still_running(what, pid)),
    }
}

/// The error for a command `qm` gave up waiting for: [`Kind::Timeout`].
fn still_running(what: &str, pid: i64) -> anyhow::Error {
    err(
        Kind::Timeout,
        format!("{what}: still running in the guest when qm's timeout ran out (pid {pid})"),
    )
}

/// What `qm guest exec` (or `exec-status`) said of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It ended, with this.
    Done(GuestOutput),
    /// It was still running in the guest when qm's `--timeout` ran out
    /// (`{"pid": N}`), or when `exec-status` was asked (`{"exited": 0}`):
    /// it goes on running there.
    Running {
        /// Its pid in the guest, for `qm guest exec-status`.
        pid: i64,
    },
}

/// The JSON of `qm guest exec` / `qm guest exec-status`: a finished
/// command, or one still running (`pid`, when `exec` printed it).
fn parse_qm_reply(stdout: &str, what: &str, quote: Stdout) -> Result<Finished> {
    qm_finished(qm_json(stdout, what, quote)?, what)
}

/// The JSON `qm guest exec` / `qm guest exec-status` printed.
fn qm_json(stdout: &str, what: &str, quote: Stdout) -> Result<QmExecResult> {
    parse_json(
        stdout,
        &format!("{what}: qm guest exec printed no JSON result"),
        quote,
    )
}

/// `text` as JSON; when it is none, an error that begins with `head`
/// and quotes `text` only when `quote` allows it.
fn parse_json<T: DeserializeOwned>(text: &str, head: &str, quote: Stdout) -> Result<T> {
    serde_json::from_str(text.trim()).map_err(|e| match quote {
        Stdout::Shown => anyhow::anyhow!(
            "{head} ({e}): {}",
            text.trim().chars().take(300).collect::<String>()
        ),
        // serde's message can quote a value ("invalid type: string
        // \"...\""): only the kind of the error and its place are told.
        Stdout::Secret => anyhow::anyhow!(
            "{head} ({:?} error at line {} column {}; {} bytes, not shown: they may hold a \
             secret)",
            e.classify(),
            e.line(),
            e.column(),
            text.len()
        ),
    })
}

/// A command's result as `qm guest exec` gives it: finished, or still
/// running (`pid`).
fn qm_finished(res: QmExecResult, what: &str) -> Result<Finished> {
    if !perl_bool(&res.exited) {
        return match res.pid {
            Some(pid) => Ok(Finished::Running { pid }),
            None => Err(anyhow::anyhow!(
                "{what}: qm guest exec result says the command has not exited"
            )),
        };
    }
    if let Some(sig) = res.signal {
        return Err(anyhow::anyhow!(
            "{what}: killed by signal {sig} in the guest"
        ));
    }
    let Some(code) = res.exitcode else {
        return Err(anyhow::anyhow!(
            "{what}: qm guest exec result has no exitcode; taken as a failure"
        ));
    };
    let out = GuestOutput {
        exitcode: i32::try_from(code).unwrap_or(i32::MAX),
        stdout: undo_double_utf8(res.out_data.unwrap_or_default()),
        stderr: undo_double_utf8(res.err_data.unwrap_or_default()),
        out_truncated: perl_bool(&res.out_truncated),
        err_truncated: perl_bool(&res.err_truncated),
    };
    if out.out_truncated || out.err_truncated {
        log::warn!("{what}: the guest agent truncated the command's output");
    }
    Ok(Finished::Done(out))
}

/// The result `qm guest exec-status` / the API's `exec-status` gives for
/// the command of `pid`: `{"exited": 0}` (no pid) while it runs.
fn status_finished(res: QmExecResult, pid: i64, what: &str) -> Result<Finished> {
    if !perl_bool(&res.exited) && res.pid.is_none() {
        return Ok(Finished::Running { pid });
    }
    qm_finished(res, what)
}

/// The guest's output as it printed it. `qm` base64-decodes the agent's
/// `out-data` into a byte string and prints it with `to_json(..., utf8 =>
/// 1)` (qemu-server src/PVE/QemuServer/Agent.pm `qemu_exec_status`,
/// src/PVE/CLI/qm.pm `$print_agent_result`): every byte becomes a
/// character U+0000..U+00FF, encoded in UTF-8 once more, so the guest's
/// "é" (C3 A9) arrives as "Ã©" and "✔" as "â\u{9c}\u{94}". Text made only of
/// such characters is turned back into those bytes and read as UTF-8.
/// When they are no UTF-8 (a guest printing Latin-1, or a `qm` that
/// encodes once), the text is kept as it came: nothing is lost either way,
/// and a character above U+00FF proves it was encoded once.
pub fn undo_double_utf8(text: String) -> String {
    if text.is_ascii() || text.chars().any(|c| u32::from(c) > 0xff) {
        return text;
    }
    let bytes: Vec<u8> = text.chars().map(|c| u32::from(c) as u8).collect();
    String::from_utf8(bytes).unwrap_or(text)
}

/// Proxmox's message (a line of `stderr`) that says what kind of failure
/// a `qm`/`pct` call is, as an error naming `guest` and quoting `detail`
/// (the failed command and its output); `None` for any other.
fn classify(stderr: &str, guest: Guest, detail: &str) -> Option<anyhow::Error> {
    for line in stderr.lines().map(str::trim) {
        if line == NO_AGENT_CONFIGURED {
            return Some(err(
                Kind::Config,
                format!(
                    "{guest} has no QEMU guest agent configured, so nothing can be run in it: \
                     enable the agent in the VM's options (`qm set {id} --agent 1`, or \
                     Options > QEMU Guest Agent in the web interface; it takes effect when \
                     Proxmox next starts the VM) and run qemu-guest-agent in the guest; not \
                     retried ({detail})",
                    id = guest.id
                ),
            ));
        }
        if is_lock_timeout(line) {
            return Some(err(
                Kind::TempFail,
                format!(
                    "{guest}: its configuration is locked by another Proxmox task (the lock \
                     was not free in time); retry later ({detail})"
                ),
            ));
        }
        if line == AGENT_NOT_RUNNING {
            return Some(err(
                Kind::TempFail,
                format!(
                    "{guest}: its QEMU guest agent does not answer (still booting?); retry \
                     later ({detail})"
                ),
            ));
        }
    }
    None
}

/// qemu-server src/PVE/QemuServer/Agent.pm `assert_agent_available`.
const NO_AGENT_CONFIGURED: &str = "No QEMU guest agent configured";
/// The same, when the agent does not answer `guest-ping`.
const AGENT_NOT_RUNNING: &str = "QEMU guest agent is not running";

/// pve-common src/PVE/Tools.pm `lock_file_full`: "can't lock file
/// 'FILE' - got timeout".
fn is_lock_timeout(line: &str) -> bool {
    line.starts_with("can't lock file '") && line.ends_with("' - got timeout")
}

/// A line of a sync task's stderr that is no failure: "Task finished with
/// N warning(s)!" (pve-common src/PVE/RESTEnvironment.pm), and the lock's
/// "trying to acquire lock..." / " OK" (src/PVE/Tools.pm) when it was
/// free in time.
fn is_task_noise(line: &str) -> bool {
    let line = line.trim();
    let warnings = line
        .strip_prefix("Task finished with ")
        .and_then(|l| l.strip_suffix(" warning(s)!"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    warnings || line == "trying to acquire lock..." || line == "OK" || line.is_empty()
}

/// Run a `qm`/`pct` call. A tool that is not there (ENOENT) means this is
/// no Proxmox VE node: final, [`Kind::Config`].
fn run_tool(cmd: &Cmd) -> Result<Output> {
    cmd.run().map_err(|e| {
        let missing = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        });
        if missing {
            err(
                Kind::Config,
                format!(
                    "cannot run {cmd}: {e:#}; this host is not a Proxmox VE node (qm and pct \
                     come with qemu-server and pve-container), or they are not on PATH; not \
                     retried"
                ),
            )
        } else {
            e
        }
    })
}

/// A `qm`/`pct` call about `guest` that exited non-zero: typed when
/// Proxmox's message says what kind of failure it is.
fn call_failed(cmd: &Cmd, out: &Output, guest: Guest) -> anyhow::Error {
    let detail = cmd.failure_message(out);
    classify(&out.stderr_str(), guest, &detail).unwrap_or_else(|| anyhow::anyhow!("{detail}"))
}

/// What the guest agent says of a pid it does not know (qemu-ga
/// `guest-exec-status`: "Invalid parameter 'pid'", prefixed by qemu-server
/// src/PVE/QemuServer/Agent.pm `check_agent_error`).
const UNKNOWN_PID: &str = "Agent error: Invalid parameter 'pid'";

/// `e`, from [`Proxmox::exec_status`], says the guest agent does not know
/// the pid: the VM or its agent restarted, or the command's end was
/// already collected. Any other failure leaves it unknown whether the
/// command still runs.
pub fn is_unknown_pid(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains(UNKNOWN_PID)
}

/// Run state of a guest, as `qm status`/`pct status` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// `status: running`.
    Running,
    /// Anything else (`stopped`, `paused`...).
    Other(String),
}

impl Proxmox {
    /// The transport with guest commands bounded by `secs`. The same bound
    /// caps every other call (`qm status`, the agent ping, at most the
    /// default 30 s): a status call that hangs longer than a guest command
    /// may run is stuck.
    pub fn with_command_timeout(secs: u64) -> Proxmox {
        let default = Proxmox::default();
        Proxmox {
            guest_timeout: secs,
            call_timeout: Duration::from_secs(secs).min(default.call_timeout),
            ..default
        }
    }

    fn tool(&self, kind: GuestType) -> &str {
        match kind {
            GuestType::Lxc => &self.pct,
            GuestType::Vm => &self.qm,
        }
    }

    /// `qm status ID` / `pct status ID`: it exits 0 for a stopped guest
    /// too, so the answer is read from `status: ...`.
    pub fn status(&self, guest: Guest) -> Result<RunState> {
        if let Some(node) = self.node_of(guest) {
            return self.remote_status(guest, node);
        }
        let cmd = Cmd::new(self.tool(guest.kind))
            .args(["status", &guest.id.to_string()])
            .timeout(self.call_timeout);
        let out = run_tool(&cmd)
            .and_then(|out| match out.status.success() {
                true => Ok(out),
                false => Err(call_failed(&cmd, &out, guest)),
            })
            .with_context(|| format!("reading the state of {guest}"))?;
        let text = out.stdout_str();
        let state = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("status:"))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| anyhow::anyhow!("{guest}: unexpected status output: {}", text.trim()))?;
        Ok(if state == "running" {
            RunState::Running
        } else {
            RunState::Other(state)
        })
    }

    /// `qm guest cmd ID ping`: the VM's guest agent answers.
    pub fn agent_ping(&self, vmid: u32) -> Result<()> {
        let vm = Guest {
            kind: GuestType::Vm,
            id: vmid,
        };
        if let Some(node) = self.node_of(vm) {
            self.pvesh::<serde_json::Value>(
                Pvesh::Create,
                vm,
                node,
                "agent/ping",
                &[],
                Stdout::Shown,
            )
            .with_context(|| format!("VM {vmid}: the guest agent does not answer"))?;
            return Ok(());
        }
        let cmd = Cmd::new(&self.qm)
            .args(["guest", "cmd", &vmid.to_string(), "ping"])
            .timeout(self.call_timeout);
        let out = run_tool(&cmd)?;
        if !out.status.success() {
            return Err(call_failed(&cmd, &out, vm))
                .with_context(|| format!("VM {vmid}: the guest agent does not answer"));
        }
        Ok(())
    }

    /// The guest must be running and, for a VM, its agent answer.
    pub fn ensure_reachable(&self, guest: Guest) -> Result<()> {
        match self.status(guest)? {
            RunState::Running => {}
            RunState::Other(s) => {
                return Err(anyhow::anyhow!("{guest} is not running (status: {s})"));
            }
        }
        if guest.kind == GuestType::Vm {
            self.agent_ping(guest.id)?;
        }
        Ok(())
    }

    /// Like [`Self::ensure_reachable`], retried with backoff (1 s doubling
    /// to 10 s) up to `bound`: a cold VM's agent can take ~100 s. A final
    /// failure ([`Kind::Config`]: no agent configured, no `qm` on this
    /// host) ends it at once: no waiting can mend it.
    pub fn wait_reachable(&self, guest: Guest, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        let mut delay = Duration::from_secs(1);
        loop {
            signal::check()?;
            match self.ensure_reachable(guest) {
                Ok(()) => return Ok(()),
                Err(e) if kind_of(&e) == Kind::Config => return Err(e),
                Err(e) if Instant::now() + delay >= deadline => {
                    // The kind must sit at the root of the chain for
                    // kind_of to find it (anyhow cannot downcast a
                    // context layer to its context type), so the cause is
                    // folded into the message.
                    let hint = if format!("{e:#}").contains(AGENT_NOT_RUNNING) {
                        format!(
                            " (is qemu-guest-agent installed and started in the guest, and the \
                             agent enabled in the VM's options: `qm set {} --agent 1`?)",
                            guest.id
                        )
                    } else {
                        String::new()
                    };
                    return Err(err(
                        Kind::TempFail,
                        format!(
                            "{guest} not reachable after {}: {e:#}{hint}",
                            humantime::format_duration(bound)
                        ),
                    ));
                }
                Err(e) => log::info!(
                    "{guest} not reachable yet ({e:#}); retrying in {}s ({}s left)",
                    delay.as_secs(),
                    deadline.saturating_duration_since(Instant::now()).as_secs()
                ),
            }
            signal::sleep(delay);
            // At most 10 s between tries: the journal hears of the wait
            // that often.
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Run `argv` in the guest; `stdin` (a secret, say) goes on stdin.
    /// A non-zero exit code is returned, not an error; a result that
    /// cannot be trusted (no exitcode, a signal, a bare pid) is an error.
    pub fn exec(&self, guest: Guest, argv: &[String], stdin: Option<&[u8]>) -> Result<GuestOutput> {
        self.exec_as(guest, argv, stdin, Stdout::Shown)
    }

    /// [`Self::exec`] with the command's stdout shown in messages or
    /// never ([`Stdout::Secret`]).
    pub fn exec_as(
        &self,
        guest: Guest,
        argv: &[String],
        stdin: Option<&[u8]>,
        quote: Stdout,
    ) -> Result<GuestOutput> {
        let what = format!("{guest}: `{}`", argv.join(" "));
        match self.exec_or_pid_as(guest, argv, stdin, quote)? {
            Finished::Done(out) => Ok(out),
            Finished::Running { pid } => Err(still_running(&what, pid)),
        }
    }

    /// [`Self::exec`], with a command still running in a VM when qm's
    /// `--timeout` (the `guest_timeout`) ran out told apart: it goes on
    /// running there, and its end can be asked for with
    /// [`Self::exec_status`]; a caller must not start it again meanwhile.
    pub fn exec_or_pid(
        &self,
        guest: Guest,
        argv: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<Finished> {
        self.exec_or_pid_as(guest, argv, stdin, Stdout::Shown)
    }

    fn exec_or_pid_as(
        &self,
        guest: Guest,
        argv: &[String],
        stdin: Option<&[u8]>,
        quote: Stdout,
    ) -> Result<Finished> {
        if argv.is_empty() {
            return Err(err(Kind::Config, format!("{guest}: empty command")));
        }
        let what = format!("{guest}: `{}`", argv.join(" "));
        if let Some(node) = self.node_of(guest) {
            return self.remote_exec(guest, node, argv, stdin, quote);
        }
        match guest.kind {
            GuestType::Lxc => {
                let mut cmd = Cmd::new(&self.pct)
                    .args(["exec", &guest.id.to_string(), "--"])
                    .args(argv)
                    .timeout(Duration::from_secs(self.guest_timeout) + self.call_timeout);
                if let Some(data) = stdin {
                    cmd = cmd.stdin(data);
                }
                let out = run_tool(&cmd).with_context(|| what.clone())?;
                let exitcode = match out.status.code() {
                    Some(c) => c,
                    None => {
                        return Err(anyhow::anyhow!(
                            "{what}: {}",
                            crate::exec::describe_status(out.status)
                        ))
                    }
                };
                let stderr = out.stderr_str();
                if exitcode != 0 {
                    // pct's own refusals, when they are all it printed
                    // (the guest command's stderr comes through too):
                    // pve-container src/PVE/CLI/pct.pm `exec`.
                    let only = stderr.trim();
                    if only == format!("container '{}' not running!", guest.id) {
                        return Err(anyhow::anyhow!("{guest} is not running ({only})"));
                    }
                    if !only.contains('\n') {
                        if let Some(e) = classify(only, guest, &cmd.failure_message(&out)) {
                            return Err(e);
                        }
                    }
                }
                Ok(Finished::Done(GuestOutput {
                    exitcode,
                    stdout: out.stdout_str(),
                    stderr,
                    ..GuestOutput::default()
                }))
            }
            GuestType::Vm => {
                let mut cmd = Cmd::new(&self.qm)
                    .args(["guest", "exec", &guest.id.to_string()])
                    .args(["--timeout", &self.guest_timeout.to_string()]);
                if let Some(data) = stdin {
                    if data.len() > QM_STDIN_LIMIT {
                        return Err(anyhow::anyhow!(
                            "{what}: stdin larger than qm's 1 MiB limit"
                        ));
                    }
                    cmd = cmd.args(["--pass-stdin", "1"]).stdin(data);
                }
                let mut cmd = cmd
                    .arg("--")
                    .args(argv)
                    .timeout(Duration::from_secs(self.guest_timeout) + self.call_timeout);
                if quote == Stdout::Secret {
                    cmd = cmd.secret_stdout();
                }
                let out = run_tool(&cmd).with_context(|| what.clone())?;
                if !out.status.success() {
                    return Err(call_failed(&cmd, &out, guest)).context(what);
                }
                parse_qm_reply(&out.stdout_str(), &what, quote)
            }
        }
    }

    /// `qm guest exec-status VMID PID`: the end of a command that
    /// [`Self::exec_or_pid`] left running, or [`Finished::Running`]
    /// while it runs. A pid the agent does not know (the VM or its agent
    /// restarted, or the result was already collected: "Agent error:
    /// Invalid parameter 'pid'") is an error that [`is_unknown_pid`]
    /// tells apart.
    pub fn exec_status(&self, vmid: u32, pid: i64) -> Result<Finished> {
        let vm = Guest {
            kind: GuestType::Vm,
            id: vmid,
        };
        let what = format!("{vm}: pid {pid}");
        if let Some(node) = self.node_of(vm) {
            return self.remote_exec_status(vm, node, pid, &what, Stdout::Shown);
        }
        let cmd = Cmd::new(&self.qm)
            .args(["guest", "exec-status", &vmid.to_string(), &pid.to_string()])
            .timeout(self.call_timeout);
        let out = run_tool(&cmd).with_context(|| what.clone())?;
        if !out.status.success() {
            return Err(call_failed(&cmd, &out, vm)).context(what);
        }
        status_finished(
            qm_json(&out.stdout_str(), &what, Stdout::Shown)?,
            pid,
            &what,
        )
    }

    /// [`Self::exec`], requiring exit code 0.
    pub fn exec_ok(
        &self,
        guest: Guest,
        argv: &[String],
        stdin: Option<&[u8]>,
    ) -> Result<GuestOutput> {
        let out = self.exec(guest, argv, stdin)?;
        if out.exitcode != 0 {
            let detail = if out.stderr.trim().is_empty() {
                out.stdout.trim()
            } else {
                out.stderr.trim()
            };
            return Err(anyhow::anyhow!(
                "{guest}: `{}` exited with status {}{}{}",
                argv.join(" "),
                out.exitcode,
                if detail.is_empty() { "" } else { ": " },
                detail.chars().take(2000).collect::<String>()
            ));
        }
        Ok(out)
    }

    /// `pct push ID SRC DEST --perms MODE`: copy the host file `src` into
    /// a running container as `dest`, created with `mode` (the content
    /// never reaches argv). `pct push` runs the copy as a task and exits
    /// 0 even when the task fails (`failed to open SRC for reading`,
    /// `failed to create file: DEST: ...` on stderr), so stderr is taken
    /// as a failure, except the lines of a task that succeeded: "Task
    /// finished with N warning(s)!" (the warnings themselves come on
    /// stdout, the task's output: logged) and the config lock's "trying
    /// to acquire lock..." / " OK". A config lock held past its 10 s
    /// ("can't lock file '/run/lock/lxc/pve-config-ID.lock' - got
    /// timeout") is temporary ([`Kind::TempFail`]).
    pub fn pct_push(&self, ctid: u32, src: &Path, dest: &str, mode: u32) -> Result<()> {
        let ct = Guest {
            kind: GuestType::Lxc,
            id: ctid,
        };
        if let Some(node) = self.node_of(ct) {
            return Err(container_elsewhere(
                ct,
                node,
                &format!("`pct push` to {dest}"),
            ));
        }
        let cmd = Cmd::new(&self.pct)
            .args(["push", &ctid.to_string()])
            .arg(src)
            .arg(dest)
            .args(["--perms", &format!("{mode:04o}")])
            .timeout(self.call_timeout);
        let out = run_tool(&cmd)?;
        if !out.status.success() {
            return Err(call_failed(&cmd, &out, ct));
        }
        let stderr = out.stderr_str();
        if let Some(e) = classify(&stderr, ct, &cmd.failure_message(&out)) {
            return Err(e);
        }
        let failure: Vec<&str> = stderr.lines().filter(|l| !is_task_noise(l)).collect();
        if !failure.is_empty() {
            return Err(anyhow::anyhow!(
                "{cmd} exited 0 but its task failed: {}",
                failure
                    .join("\n")
                    .trim()
                    .chars()
                    .take(2000)
                    .collect::<String>()
            ));
        }
        if stderr
            .lines()
            .any(|l| l.trim().starts_with("Task finished with "))
        {
            let said = out.stdout_str();
            log::warn!(
                "{cmd}: the copy finished with warnings: {}",
                said.trim().chars().take(2000).collect::<String>()
            );
        }
        Ok(())
    }
}

/// The two `pvesh` commands the transport uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pvesh {
    /// `pvesh get` (HTTP GET).
    Get,
    /// `pvesh create` (HTTP POST).
    Create,
}

/// What pvesh prints before the remote node's message when it proxied a
/// call (pve-manager PVE/CLI/pvesh.pm `proxy_handler`, `errmsg`).
const PROXY_FAILED: &str = "proxy handler failed: ";

/// `stderr` of a `pvesh` call, with the proxy's prefix taken off each
/// line: the remote node's message as it printed it.
fn unproxied(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| l.trim().strip_prefix(PROXY_FAILED).unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The name this process was started as (`phoenix-swarm`), for messages
/// that say to run it elsewhere.
fn program() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "this command".into())
}

/// The error for an action in a container of another node.
fn container_elsewhere(ct: Guest, node: &str, action: &str) -> anyhow::Error {
    err(
        Kind::Config,
        format!(
            "{ct} runs on node {node}, not on this one: containers have no exec API (`pct exec` \
             and `pct push` reach only the containers of their own node), so {action} cannot be \
             done from here; run {prog} on node {node}; not retried",
            prog = program()
        ),
    )
}

/// The error for a command with stdin for a VM of another node.
fn stdin_elsewhere(vm: Guest, node: &str) -> anyhow::Error {
    err(
        Kind::Config,
        format!(
            "{vm} runs on node {node}, not on this one: what this command hands it on stdin \
             (a secret: a join token, a key, a compose file with its variables) is not sent \
             across nodes, because the cluster API takes it as `input-data`, which pvesh reads \
             only from its command line and proxies to {node} on the ssh command line; run \
             {prog} on node {node}, where `qm guest exec --pass-stdin` hands it to the guest \
             agent without argv; not retried",
            prog = program()
        ),
    )
}

impl Proxmox {
    /// The transport reaching the guests of `remote` (VMID -> node: the
    /// guests of other nodes) through the cluster API.
    pub fn with_remote(self, remote: BTreeMap<u32, String>) -> Proxmox {
        Proxmox { remote, ..self }
    }

    /// The node `guest` runs on when it is another one than this.
    pub fn node_of(&self, guest: Guest) -> Option<&str> {
        self.remote.get(&guest.id).map(String::as_str)
    }

    /// `pvesh get|create /nodes/NODE/{qemu|lxc}/ID/ENDPOINT --output-format
    /// json PARAMS...`: the JSON it printed, or the failure typed as
    /// [`classify`] types qm's (the proxy's prefix taken off). A guest
    /// whose config is not on `node` moved since the location was read:
    /// temporary.
    fn pvesh<T: DeserializeOwned>(
        &self,
        method: Pvesh,
        guest: Guest,
        node: &str,
        endpoint: &str,
        params: &[(&str, &str)],
        quote: Stdout,
    ) -> Result<T> {
        let kind = match guest.kind {
            GuestType::Lxc => "lxc",
            GuestType::Vm => "qemu",
        };
        let path = format!("/nodes/{node}/{kind}/{}/{endpoint}", guest.id);
        let mut cmd = Cmd::new(&self.pvesh)
            .arg(match method {
                Pvesh::Get => "get",
                Pvesh::Create => "create",
            })
            .arg(&path)
            .args(["--output-format", "json"]);
        for (k, v) in params {
            cmd = cmd.arg(format!("--{k}")).arg(v);
        }
        let mut cmd = cmd.timeout(self.call_timeout);
        if quote == Stdout::Secret {
            cmd = cmd.secret_stdout();
        }
        let out = run_tool(&cmd).map_err(|e| {
            if kind_of(&e) == Kind::Config {
                err(
                    Kind::Config,
                    format!(
                        "{e:#} (pvesh comes with pve-manager: {guest} runs on node {node}, \
                         reached through the cluster API)"
                    ),
                )
            } else {
                e
            }
        })?;
        if !out.status.success() {
            let stderr = unproxied(&out.stderr_str());
            let detail = cmd.failure_message(&out);
            if let Some(e) = classify(&stderr, guest, &detail) {
                return Err(e);
            }
            let sub = match guest.kind {
                GuestType::Lxc => "lxc",
                GuestType::Vm => "qemu-server",
            };
            let missing = format!(
                "Configuration file 'nodes/{node}/{sub}/{}.conf' does not exist",
                guest.id
            );
            if stderr.lines().any(|l| l.trim() == missing) {
                return Err(err(
                    Kind::TempFail,
                    format!(
                        "{guest} is not on node {node} (any more): it moved since its node was \
                         read; the next run reads it again ({detail})"
                    ),
                ));
            }
            return Err(anyhow::anyhow!("{detail}"));
        }
        parse_json(&out.stdout_str(), &format!("{cmd}: printed no JSON"), quote)
    }

    /// `status/current` of a guest of another node: `qmpstatus` (what
    /// `qm status` prints), else `status`.
    fn remote_status(&self, guest: Guest, node: &str) -> Result<RunState> {
        let v: serde_json::Value = self
            .pvesh(
                Pvesh::Get,
                guest,
                node,
                "status/current",
                &[],
                Stdout::Shown,
            )
            .with_context(|| format!("reading the state of {guest} on node {node}"))?;
        let state = ["qmpstatus", "status"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
            .ok_or_else(|| anyhow::anyhow!("{guest} on node {node}: unexpected status: {v}"))?;
        Ok(if state == "running" {
            RunState::Running
        } else {
            RunState::Other(state.to_string())
        })
    }

    /// `agent/exec` on the VM's node, then `agent/exec-status` until the
    /// command ends or `guest_timeout` runs out ([`Finished::Running`]).
    fn remote_exec(
        &self,
        guest: Guest,
        node: &str,
        argv: &[String],
        stdin: Option<&[u8]>,
        quote: Stdout,
    ) -> Result<Finished> {
        if guest.kind == GuestType::Lxc {
            return Err(container_elsewhere(
                guest,
                node,
                &format!("`{}`", argv.join(" ")),
            ));
        }
        if stdin.is_some() {
            return Err(stdin_elsewhere(guest, node));
        }
        let what = format!("{guest} on node {node}: `{}`", argv.join(" "));
        let started = Instant::now();
        let params: Vec<(&str, &str)> = argv.iter().map(|a| ("command", a.as_str())).collect();
        let v: serde_json::Value = self
            .pvesh(
                Pvesh::Create,
                guest,
                node,
                "agent/exec",
                &params,
                Stdout::Shown,
            )
            .with_context(|| what.clone())?;
        let pid = v
            .get("pid")
            .and_then(|p| p.as_i64())
            .ok_or_else(|| anyhow::anyhow!("{what}: agent/exec returned no pid: {v}"))?;
        let deadline = started + Duration::from_secs(self.guest_timeout);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.remote_exec_status(guest, node, pid, &what, quote)? {
                Finished::Running { .. } if Instant::now() + delay < deadline => {}
                done => return Ok(done),
            }
            signal::check()?;
            signal::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// One `agent/exec-status --pid PID` on the VM's node.
    fn remote_exec_status(
        &self,
        vm: Guest,
        node: &str,
        pid: i64,
        what: &str,
        quote: Stdout,
    ) -> Result<Finished> {
        let res: QmExecResult = self
            .pvesh(
                Pvesh::Get,
                vm,
                node,
                "agent/exec-status",
                &[("pid", &pid.to_string())],
                quote,
            )
            .with_context(|| what.to_string())?;
        status_finished(res, pid, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_bound_caps_every_call() {
        let px = Proxmox::with_command_timeout(3);
        assert_eq!(
            (px.guest_timeout, px.call_timeout),
            (3, Duration::from_secs(3))
        );
        let px = Proxmox::with_command_timeout(120);
        assert_eq!(px.call_timeout, Duration::from_secs(30));
    }
    use crate::exit::kind_of;

    #[test]
    fn finished_command_parses() {
        let out = parse_qm_exec(
            "{\n   \"exitcode\" : 3,\n   \"exited\" : 1,\n   \"out-data\" : \"ok\\n\"\n}\n",
            "VM 1: x",
        )
        .unwrap();
        assert_eq!(out.exitcode, 3);
        assert_eq!(out.stdout, "ok\n");
    }

    #[test]
    fn bare_pid_is_a_timeout() {
        let e = parse_qm_exec("{\n   \"pid\" : 4242\n}\n", "VM 1: x").unwrap_err();
        assert_eq!(kind_of(&e), Kind::Timeout);
        assert!(e.to_string().contains("pid 4242"), "{e}");
    }

    #[test]
    fn missing_exitcode_or_signal_fail() {
        let e = parse_qm_exec("{\"exited\": 1}", "VM 1: x").unwrap_err();
        assert!(e.to_string().contains("no exitcode"), "{e}");
        let e = parse_qm_exec("{\"exited\": 1, \"signal\": 9}", "VM 1: x").unwrap_err();
        assert!(e.to_string().contains("signal 9"), "{e}");
        let e = parse_qm_exec("timeout reached\n", "VM 1: x").unwrap_err();
        assert!(e.to_string().contains("no JSON"), "{e}");
    }

    #[test]
    fn a_secret_reply_that_does_not_parse_is_not_quoted() {
        let reply = "{\n   \"exitcode\" : 0,\n   \"out-data\" : \"SWMTKN-1-abc-topsecret\n";
        let e = parse_qm_exec(reply, "VM 1: x").unwrap_err();
        assert!(e.to_string().contains("topsecret"), "{e}");
        let e = parse_qm_exec_as(reply, "VM 1: x", Stdout::Secret).unwrap_err();
        assert!(e.to_string().contains("no JSON result"), "{e}");
        assert!(!e.to_string().contains("topsecret"), "{e}");
        for reply in [
            "SWMTKN-1-abc-topsecret",
            r#"{"exited": 1, "exitcode": "SWMTKN-1-abc-topsecret"}"#,
        ] {
            let e = parse_qm_exec_as(reply, "VM 1: x", Stdout::Secret).unwrap_err();
            assert!(!format!("{e:#}").contains("topsecret"), "{e:#}");
        }
    }

    #[test]
    fn truncation_is_reported() {
        let out = parse_qm_exec(
            "{\"exited\": 1, \"exitcode\": 0, \"out-truncated\": 1}",
            "VM 1: x",
        )
        .unwrap();
        assert!(out.out_truncated);
    }

    #[test]
    fn unreachable_guest_is_a_temporary_failure() {
        let px = Proxmox {
            qm: "false".into(),
            ..Proxmox::default()
        };
        let vm = Guest {
            kind: GuestType::Vm,
            id: 7,
        };
        let e = px.wait_reachable(vm, Duration::ZERO).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
        assert!(e.to_string().contains("VM 7 not reachable"), "{e}");
        assert!(e.to_string().contains("exited with status 1"), "{e}");
    }

    /// An executable shell script `body` named `name` in `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn double_encoded_output_is_decoded() {
        // What qm prints for a guest that printed "é ✔\n": each byte a
        // character, encoded again (to_json with utf8 => 1).
        let guest_bytes = "é ✔\n".as_bytes();
        let twice: String = guest_bytes.iter().map(|&b| char::from(b)).collect();
        let reply = serde_json::json!({"exited": 1, "exitcode": 0, "out-data": twice,
            "err-data": twice});
        let out = parse_qm_exec(&reply.to_string(), "VM 1: x").unwrap();
        assert_eq!(out.stdout, "é ✔\n");
        assert_eq!(out.stderr, "é ✔\n");
        // Encoded once (a character above U+00FF), ASCII, or Latin-1 bytes
        // that are no UTF-8: kept as they came.
        for kept in ["é ✔", "plain", "caf\u{e9}"] {
            assert_eq!(undo_double_utf8(kept.to_string()), kept);
        }
    }

    #[test]
    fn proxmox_messages_are_typed() {
        let vm = Guest {
            kind: GuestType::Vm,
            id: 1001,
        };
        let e = classify("No QEMU guest agent configured\n", vm, "`qm ...`").unwrap();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(
            e.to_string()
                .contains("VM 1001 has no QEMU guest agent configured"),
            "{e}"
        );
        assert!(e.to_string().contains("qm set 1001 --agent 1"), "{e}");
        let e = classify("QEMU guest agent is not running\n", vm, "x").unwrap();
        assert_eq!(kind_of(&e), Kind::TempFail);
        let lock = "trying to acquire lock...\n\
                    can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\n";
        let e = classify(lock, vm, "x").unwrap();
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!(classify("VM 1001 is not running\n", vm, "x").is_none());
        assert!(is_task_noise("Task finished with 2 warning(s)!"));
        assert!(is_task_noise(" OK"));
        assert!(!is_task_noise("failed to open /x for reading"));
        assert!(!is_task_noise("Task finished with many warning(s)!"));
    }

    #[test]
    fn only_an_unknown_pid_is_taken_as_collected() {
        let unknown = anyhow::anyhow!(
            "`qm guest exec-status 1001 42` exited with status 255: Agent error: Invalid \
             parameter 'pid'"
        );
        assert!(is_unknown_pid(&unknown.context("VM 1001: pid 42")));
        let proxied = anyhow::anyhow!("proxy handler failed: Agent error: Invalid parameter 'pid'");
        assert!(is_unknown_pid(&proxied));
        for other in [
            "Agent error: can't get exec status for '42'",
            "VM 1001 qmp command 'guest-exec-status' failed - got timeout",
        ] {
            assert!(!is_unknown_pid(&anyhow::anyhow!("{other}")), "{other}");
        }
    }

    #[test]
    fn a_missing_qm_is_final_at_once() {
        let px = Proxmox {
            qm: "/nonexistent/phoenix/qm".into(),
            ..Proxmox::default()
        };
        let vm = Guest {
            kind: GuestType::Vm,
            id: 7,
        };
        let started = Instant::now();
        let e = px.wait_reachable(vm, Duration::from_secs(120)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
        assert!(format!("{e:#}").contains("not a Proxmox VE node"), "{e:#}");
        let e = px.exec(vm, &["true".to_string()], None).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    }

    #[test]
    fn an_unconfigured_agent_is_final_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let qm = script(
            dir.path(),
            "qm",
            "case \"$1\" in status) echo 'status: running';; \
             *) echo 'No QEMU guest agent configured' >&2; exit 255;; esac\n",
        );
        let px = Proxmox {
            qm,
            ..Proxmox::default()
        };
        let vm = Guest {
            kind: GuestType::Vm,
            id: 1001,
        };
        let started = Instant::now();
        let e = px.wait_reachable(vm, Duration::from_secs(120)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
        assert!(format!("{e:#}").contains("qm set 1001 --agent 1"), "{e:#}");
    }

    #[test]
    fn pct_push_with_warnings_succeeds_and_a_held_lock_is_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let pct = script(
            dir.path(),
            "pct",
            "echo 'WARN: something odd'\necho 'Task finished with 1 warning(s)!' >&2\n",
        );
        let px = Proxmox {
            pct,
            ..Proxmox::default()
        };
        px.pct_push(101, Path::new("/etc/hostname"), "/tmp/x", 0o600)
            .unwrap();
        let pct = script(
            dir.path(),
            "pct2",
            "echo 'trying to acquire lock...' >&2\n\
             echo \"can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\" >&2\n\
             exit 255\n",
        );
        let px = Proxmox {
            pct,
            ..Proxmox::default()
        };
        let e = px
            .pct_push(101, Path::new("/etc/hostname"), "/tmp/x", 0o600)
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
        assert!(format!("{e:#}").contains("got timeout"), "{e:#}");
    }

    #[test]
    fn pct_push_that_exits_0_with_a_task_error_fails() {
        // `pct push` prints its task's error and still exits 0.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pct = dir.path().join("pct");
        std::fs::write(
            &pct,
            "#!/bin/sh\necho \"failed to open $3 for reading\" >&2\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&pct, std::fs::Permissions::from_mode(0o755)).unwrap();
        let px = Proxmox {
            pct: pct.to_string_lossy().into_owned(),
            ..Proxmox::default()
        };
        let e = px
            .pct_push(101, Path::new("/nope/key.pem"), "/tmp/x/key.pem", 0o600)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("failed to open /nope/key.pem for reading"),
            "{msg}"
        );
        assert!(
            msg.contains("push 101 /nope/key.pem /tmp/x/key.pem --perms 0600"),
            "{msg}"
        );
    }
}
