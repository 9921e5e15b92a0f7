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

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::exec::Cmd;
use crate::proxmox::{self, Proxmox};

use super::manifest::{self, Entry, PostAction};

/// Run the entry's post-renewal action.
pub fn run(entry: &Entry, px: &Proxmox, manifest_path: &Path, timeout: Duration) -> Result<()> {
    match &entry.post {
        PostAction::None => Ok(()),
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
        PostAction::Legacy(command) => legacy(entry, command, manifest_path, timeout),
    }
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
