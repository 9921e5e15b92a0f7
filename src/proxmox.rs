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
//! - `pct exec` exits with the command's own status.
//! - Secrets reach the guest on stdin (`--pass-stdin 1` for `qm`), never in
//!   argv.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::exec::Cmd;
use crate::exit::{err, Kind};
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
    let res: QmExecResult = serde_json::from_str(stdout.trim()).map_err(|e| match quote {
        Stdout::Shown => anyhow::anyhow!(
            "{what}: qm guest exec printed no JSON result ({e}): {}",
            stdout.trim().chars().take(300).collect::<String>()
        ),
        // serde's message can quote a value ("invalid type: string
        // \"...\""): only the kind of the error and its place are told.
        Stdout::Secret => anyhow::anyhow!(
            "{what}: qm guest exec printed no JSON result ({:?} error at line {} column {}; \
             {} bytes, not shown: they may hold a secret)",
            e.classify(),
            e.line(),
            e.column(),
            stdout.len()
        ),
    })?;
    if !perl_bool(&res.exited) {
        return Err(match res.pid {
            Some(pid) => err(
                Kind::Timeout,
                format!("{what}: still running in the guest when qm's timeout ran out (pid {pid})"),
            ),
            None => anyhow::anyhow!("{what}: qm guest exec result says the command has not exited"),
        });
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
        stdout: res.out_data.unwrap_or_default(),
        stderr: res.err_data.unwrap_or_default(),
        out_truncated: perl_bool(&res.out_truncated),
        err_truncated: perl_bool(&res.err_truncated),
    };
    if out.out_truncated || out.err_truncated {
        log::warn!("{what}: the guest agent truncated the command's output");
    }
    Ok(out)
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
        let out = Cmd::new(self.tool(guest.kind))
            .args(["status", &guest.id.to_string()])
            .timeout(self.call_timeout)
            .run_ok()
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
        Cmd::new(&self.qm)
            .args(["guest", "cmd", &vmid.to_string(), "ping"])
            .timeout(self.call_timeout)
            .run_ok()
            .with_context(|| format!("VM {vmid}: the guest agent does not answer"))?;
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
    /// to 10 s) up to `bound`: a cold VM's agent can take ~100 s.
    pub fn wait_reachable(&self, guest: Guest, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        let mut delay = Duration::from_secs(1);
        loop {
            signal::check()?;
            match self.ensure_reachable(guest) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + delay >= deadline => {
                    // The kind must sit at the root of the chain for
                    // kind_of to find it (anyhow cannot downcast a
                    // context layer to its context type), so the cause is
                    // folded into the message.
                    return Err(err(
                        Kind::TempFail,
                        format!(
                            "{guest} not reachable after {}: {e:#}",
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
        if argv.is_empty() {
            return Err(err(Kind::Config, format!("{guest}: empty command")));
        }
        let what = format!("{guest}: `{}`", argv.join(" "));
        match guest.kind {
            GuestType::Lxc => {
                let mut cmd = Cmd::new(&self.pct)
                    .args(["exec", &guest.id.to_string(), "--"])
                    .args(argv)
                    .timeout(Duration::from_secs(self.guest_timeout) + self.call_timeout);
                if let Some(data) = stdin {
                    cmd = cmd.stdin(data);
                }
                let out = cmd.run().with_context(|| what.clone())?;
                let exitcode = match out.status.code() {
                    Some(c) => c,
                    None => {
                        return Err(anyhow::anyhow!(
                            "{what}: {}",
                            crate::exec::describe_status(out.status)
                        ))
                    }
                };
                Ok(GuestOutput {
                    exitcode,
                    stdout: out.stdout_str(),
                    stderr: out.stderr_str(),
                    ..GuestOutput::default()
                })
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
                let out = cmd.run().with_context(|| what.clone())?;
                if !out.status.success() {
                    return Err(anyhow::anyhow!("{what}: {}", cmd.failure_message(&out)));
                }
                parse_qm_exec_as(&out.stdout_str(), &what, quote)
            }
        }
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
    /// `failed to create file: DEST: ...` on stderr), so any stderr is
    /// taken as a failure.
    pub fn pct_push(&self, ctid: u32, src: &Path, dest: &str, mode: u32) -> Result<()> {
        let cmd = Cmd::new(&self.pct)
            .args(["push", &ctid.to_string()])
            .arg(src)
            .arg(dest)
            .args(["--perms", &format!("{mode:04o}")])
            .timeout(self.call_timeout);
        let out = cmd.run_ok()?;
        let stderr = out.stderr_str();
        if !stderr.trim().is_empty() {
            return Err(anyhow::anyhow!(
                "{cmd} exited 0 but its task failed: {}",
                stderr.trim().chars().take(2000).collect::<String>()
            ));
        }
        Ok(())
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
