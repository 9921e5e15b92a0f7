//! The post-renewal action, run only when a certificate changed.
//!
//! - Structured `"post_renewal": {"run": [ARGV]}`: inside the guest through
//!   the typed transport (`pct exec`, or `qm guest exec` after `qm status`
//!   says running and the agent answers a ping).
//! - Legacy `post_renewal_command` strings: the operator's own commands,
//!   run with `sh -c` on the host as root, so only from a manifest owned
//!   by root and writable by nobody else; deprecated (warned every run). One
//!   that starts with `qm guest exec` has its JSON checked the same way as
//!   the typed transport's (`qm` itself exits 0 whatever the command did).
//! - `"post_renewal": {"swarm_secrets": {...}, "services": [...]}`: the
//!   new files become versioned Swarm secrets on the manager VM, rolled
//!   into the services ([`crate::swarm::secrets`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::exec::Cmd;
use crate::guestdir;
use crate::phoenix::GuestType;
use crate::proxmox::{self, Guest, Proxmox};
use crate::swarm::docker::Docker;
use crate::swarm::secrets::{self, Material, Part, Rotation};

use super::manifest::{self, Entry, PostAction};

/// Bounds of the post-renewal actions.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A legacy command on the host.
    pub command: Duration,
    /// A service update that rotates secrets.
    pub update: Duration,
}

/// Run the entry's post-renewal action.
pub fn run(entry: &Entry, px: &Proxmox, manifest_path: &Path, bounds: Bounds) -> Result<()> {
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
        PostAction::Legacy(command) => legacy(entry, command, manifest_path, bounds.command),
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

fn legacy(entry: &Entry, command: &str, manifest_path: &Path, timeout: Duration) -> Result<()> {
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
