//! The post-renewal action, run only when a certificate changed.
//!
//! - Structured `"post_renewal": {"run": [ARGV]}`: inside the guest through
//!   the typed transport (`pct exec`, or `qm guest exec` after `qm status`
//!   says running and the agent answers a ping).
//! - Legacy `post_renewal_command` strings: the operator's own commands,
//!   only from a manifest owned by root and writable by nobody else;
//!   deprecated (warned every run). One that is a lone `qm guest exec VMID
//!   -- ARGV` ([`legacy::qm_guest_exec`]) runs through the typed transport
//!   with `renewal.command_timeout_secs` (not qm's 30 s default). One it
//!   outlives is not started again while it may still run: qm prints `{"pid":
//!   N}` and leaves it running (qemu-server src/PVE/CLI/qm.pm `exec`), so
//!   the pid is kept under the state directory ([`run_in`]) and the guest
//!   agent is asked (`qm guest exec-status`) before it is started again.
//!   Any other string runs with `sh -c` on the host as root; one that
//!   starts with `qm guest exec` has its JSON checked the same way as the
//!   typed transport's (`qm` itself exits 0 whatever the command did).
//! - `"post_renewal": {"swarm_secrets": {...}, "services": [...]}`: the
//!   new files become versioned Swarm secrets on the manager VM, rolled
//!   into the services ([`crate::swarm::secrets`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::exec::Cmd;
use crate::exit::{err, kind_of, Kind};
use crate::guestdir;
use crate::phoenix::GuestType;
use crate::proxmox::{self, Finished, Guest, Proxmox};
use crate::swarm::docker::Docker;
use crate::swarm::secrets::{self, Material, Part, Rotation};

use super::legacy::{self, QmGuestExec};
use super::manifest::{self, Entry, PostAction};

/// Bounds of the post-renewal actions.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A legacy command on the host.
    pub command: Duration,
    /// A service update that rotates secrets.
    pub update: Duration,
}

/// Run the entry's post-renewal action, keeping the pid of a legacy `qm
/// guest exec` command that outlived its bound under `state_dir`
/// (`<state_dir>/post-running/`), so that no later run starts it again
/// while the guest agent says it runs (without `state_dir`, nothing is
/// kept).
pub fn run_in(
    entry: &Entry,
    px: &Proxmox,
    manifest_path: &Path,
    bounds: Bounds,
    state_dir: Option<&Path>,
) -> Result<()> {
    match &entry.post {
        PostAction::None => Ok(()),
        PostAction::SwarmSecrets(rot) => swarm_secrets(entry, rot, px, bounds.update),
        PostAction::Guest(argv) => {
            px.ensure_reachable(entry.guest)?;
            let out = px.exec_ok(entry.guest, argv, None)?;
            if out.out_truncated || out.err_truncated {
                log::warn!(
                    "{}: post-renewal output was truncated by the guest agent",
                    entry.name
                );
            }
            log::info!(
                "{}: post-renewal `{}` in {} ok",
                entry.name,
                argv.join(" "),
                entry.guest
            );
            Ok(())
        }
        PostAction::Legacy(command) => {
            legacy(entry, command, px, manifest_path, bounds.command, state_dir)
        }
    }
}

fn swarm_secrets(entry: &Entry, rot: &Rotation, px: &Proxmox, bound: Duration) -> Result<()> {
    let material = rot
        .secrets
        .iter()
        .map(|s| {
            let path = match s.part {
                Part::Cert => entry.cert_path.clone(),
                Part::Key => entry.key_path.clone(),
                Part::Ca => entry.ca_path(),
            };
            // The guest's directory: through descriptors, no link
            // followed (a link to a host file never becomes a secret).
            let bytes =
                guestdir::read_file(&path, secrets::SECRET_MAX_BYTES).with_context(|| {
                    format!("reading '{}' for swarm secret {}", path.display(), s.name)
                })?;
            Ok(Material::new(s.clone(), bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let manager = Guest {
        kind: GuestType::Vm,
        id: rot.manager,
    };
    px.ensure_reachable(manager)?;
    let d = Docker::new(px, manager, format!("swarm manager {manager}"));
    let report = secrets::rotate(&d, &entry.name, &material, &rot.services, bound)?;
    if report.unchanged() {
        log::info!("{}: swarm secrets already current in {manager}", entry.name);
    } else {
        log::info!(
            "{}: swarm secrets rotated in {manager}: {} created, {} service(s) rolled, {} old removed",
            entry.name,
            report.created.len(),
            report.updated.len(),
            report.removed.len()
        );
    }
    Ok(())
}

fn legacy(
    entry: &Entry,
    command: &str,
    px: &Proxmox,
    manifest_path: &Path,
    timeout: Duration,
    state_dir: Option<&Path>,
) -> Result<()> {
    log::warn!(
        "{}: post_renewal_command is deprecated; use \"post_renewal\": {{\"run\": [...]}}, run in the guest",
        entry.name
    );
    manifest::trusted_for_commands(manifest_path).map_err(|why| {
        anyhow!(
            "refusing to run post_renewal_command from manifest '{}': {why}",
            manifest_path.display()
        )
    })?;
    if let Some(q) = legacy::qm_guest_exec(command) {
        return legacy_qm(entry, &q, px, timeout, state_dir);
    }
    if command.trim_start().starts_with("qm guest exec") {
        log::warn!(
            "{}: post_renewal_command is more than one plain `qm guest exec` (shell operators, \
             expansions or other options): it runs with sh -c, under qm's own --timeout (30 s \
             unless it sets one), not renewal.command_timeout_secs; use \"post_renewal\": \
             {{\"run\": [...]}}",
            entry.name
        );
    }
    let cmd = Cmd::new("sh").args(["-c", command]).timeout(timeout);
    let out = cmd.run()?;
    if !out.status.success() {
        return Err(anyhow!(
            "post_renewal_command: {}",
            cmd.failure_message(&out)
        ));
    }
    if command.trim_start().starts_with("qm guest exec") {
        let what = format!("{}: post_renewal_command", entry.name);
        let res = proxmox::parse_qm_exec(&out.stdout_str(), &what)?;
        if res.exitcode != 0 {
            return Err(anyhow!(
                "{what}: the guest command exited with status {}: {}",
                res.exitcode,
                res.stderr.trim().chars().take(2000).collect::<String>()
            ));
        }
    }
    log::info!("{}: post_renewal_command ok", entry.name);
    Ok(())
}

/// A legacy `qm guest exec VMID -- ARGV`, through the typed transport with
/// `timeout` as qm's `--timeout`. One still running when it ran out is a
/// timeout failure, remembered ([`Running`]) so that it is not started
/// again while the guest agent says it runs.
fn legacy_qm(
    entry: &Entry,
    q: &QmGuestExec,
    px: &Proxmox,
    timeout: Duration,
    state_dir: Option<&Path>,
) -> Result<()> {
    let vm = Guest {
        kind: GuestType::Vm,
        id: q.vmid,
    };
    let what = format!(
        "{}: post_renewal_command `{}` in {vm}",
        entry.name,
        q.argv.join(" ")
    );
    let secs = timeout.as_secs().max(1);
    if let Some(t) = &q.timeout {
        log::debug!(
            "{what}: its --timeout {t} is replaced by renewal.command_timeout_secs ({secs} s)"
        );
    }
    let running = Running::new(q, state_dir);
    if let Some(earlier) = running.load() {
        match px.exec_status(q.vmid, earlier.pid) {
            Ok(Finished::Running { pid }) => {
                return Err(err(
                    Kind::TempFail,
                    format!(
                        "{what}: not started again: the one an earlier run started at {} still \
                         runs in the guest (pid {pid}; it outlived renewal.command_timeout_secs \
                         then); a later run asks the guest agent again",
                        time(earlier.started)
                    ),
                ));
            }
            Ok(Finished::Done(out)) => {
                let line = format!(
                    "{what}: the one an earlier run started at {} (pid {}) has ended, with \
                     status {}{}",
                    time(earlier.started),
                    earlier.pid,
                    out.exitcode,
                    tail(&out.stderr)
                );
                if out.exitcode == 0 {
                    log::info!("{line}; running it for this run");
                } else {
                    log::warn!("{line}; running it again");
                }
                running.clear();
            }
            Err(e) if kind_of(&e) == Kind::Config => return Err(e),
            // The agent no longer knows the pid: the VM or its agent
            // restarted, or its end was already collected.
            Err(e) if proxmox::is_unknown_pid(&e) => {
                log::info!(
                    "{what}: the guest agent no longer knows pid {} of an earlier run ({e:#}); \
                     taken as ended",
                    earlier.pid
                );
                running.clear();
            }
            Err(e) => {
                return Err(e).context(format!(
                    "{what}: cannot tell whether pid {} (started by an earlier run at {}) \
                     still runs, so it is not started again",
                    earlier.pid,
                    time(earlier.started)
                ));
            }
        }
    }
    px.ensure_reachable(vm)?;
    let px = Proxmox {
        guest_timeout: secs,
        ..px.clone()
    };
    match px.exec_or_pid(vm, &q.argv, None)? {
        Finished::Done(out) => {
            if out.exitcode != 0 {
                return Err(anyhow!(
                    "{what}: exited with status {}{}",
                    out.exitcode,
                    tail(if out.stderr.trim().is_empty() {
                        &out.stdout
                    } else {
                        &out.stderr
                    })
                ));
            }
            log::info!("{}: post_renewal_command ok (in {vm})", entry.name);
            Ok(())
        }
        Finished::Running { pid } => {
            let next = match running.save(pid, &entry.name) {
                Ok(true) => "no later run starts it again while the guest agent says it runs",
                Ok(false) => {
                    "nothing keeps its pid (no state directory), so a later run may start it again"
                }
                Err(e) => {
                    log::error!("{what}: cannot record pid {pid}: {e:#}");
                    "its pid could not be kept, so a later run may start it again"
                }
            };
            Err(err(
                Kind::Timeout,
                format!(
                    "{what}: still running after renewal.command_timeout_secs ({secs} s); qm \
                     returned its pid {pid} and it goes on running in the guest: {next} \
                     (`qm guest exec-status {} {pid}` tells its end)",
                    q.vmid
                ),
            ))
        }
    }
}

/// ": TEXT" with the last 2000 characters of `text`, or nothing.
fn tail(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return String::new();
    }
    let skip = t.chars().count().saturating_sub(2000);
    format!(": {}", t.chars().skip(skip).collect::<String>())
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A command left running in a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Started {
    vmid: u32,
    pid: i64,
    argv: Vec<String>,
    /// Unix seconds.
    started: u64,
    /// The manifest entry that ran it.
    entry: String,
}

/// Where a legacy `qm guest exec` left running is remembered: a file
/// under the state directory named by its VM and argv (two entries
/// running the same command share it).
struct Running<'a> {
    q: &'a QmGuestExec,
    file: Option<PathBuf>,
}

impl<'a> Running<'a> {
    fn new(q: &'a QmGuestExec, state_dir: Option<&Path>) -> Running<'a> {
        let digest = crate::digest::sha256_hex(q.argv.join("\0").as_bytes());
        let key = format!("{}-{}", q.vmid, &digest[..16]);
        let file = state_dir.map(|d| d.join("post-running").join(format!("{key}.json")));
        Running { q, file }
    }

    fn load(&self) -> Option<Started> {
        let file = self.file.as_ref()?;
        let bytes = match crate::fsutil::read_limited(file, 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("cannot read '{}': {e}", file.display());
                return None;
            }
        };
        match serde_json::from_slice::<Started>(&bytes) {
            Ok(s) if s.vmid == self.q.vmid && s.argv == self.q.argv => Some(s),
            Ok(_) => None,
            Err(e) => {
                log::warn!("ignoring '{}': {e}", file.display());
                None
            }
        }
    }

    /// Keep `pid`; `false` when there is nowhere to keep it.
    fn save(&self, pid: i64, entry: &str) -> Result<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let started = Started {
            vmid: self.q.vmid,
            pid,
            argv: self.q.argv.clone(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            entry: entry.to_string(),
        };
        if let Some(dir) = file.parent() {
            crate::fsutil::ensure_dir(dir, 0o700)?;
        }
        crate::fsutil::write_atomic(
            file,
            &serde_json::to_vec_pretty(&started)?,
            crate::fsutil::FileOptions::mode(0o600),
        )?;
        Ok(true)
    }

    fn clear(&self) {
        if let Some(file) = &self.file {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove '{}': {e}", file.display());
                }
            }
        }
    }
}
