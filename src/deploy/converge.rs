//! Waiting, bounded, until a deployed stack runs: every service has as
//! many tasks of its current spec running as it wants, no update is in
//! progress, and that has held for [`MONITOR`] (what docker/cli's own
//! progress display waits before "verify: Service converged", so a task
//! that dies right after starting is not taken for running).
//!
//! A task its node cannot start (no such image, a bind source missing) is
//! `Rejected`, and swarm tries again for ever: once a service has
//! [`FAILED_LIMIT`] failed tasks of its current spec and not all it wants
//! running, the wait ends with each such service and docker's own error,
//! rather than at the bound. An update paused or rolled back ends it too.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::exit::{err, Kind};
use crate::signal;
use crate::swarm::docker::Docker;

/// How long a converged stack must stay so.
pub const MONITOR: Duration = Duration::from_secs(5);
/// Failed tasks of a service's current spec that end the wait.
pub const FAILED_LIMIT: usize = 3;
/// Between two reads.
const POLL: Duration = Duration::from_secs(1);

/// Where one service stands.
enum Standing {
    Ready,
    Pending(String),
    Failed(String),
}

fn service(d: &Docker, full: &str, desired: u32) -> Result<Standing> {
    if let Some(u) = d.update_status(full)? {
        let msg = if u.message.is_empty() {
            String::new()
        } else {
            format!(": {}", u.message)
        };
        match u.state.as_str() {
            "paused" | "rollback_paused" => {
                return Ok(Standing::Failed(format!(
                    "service {full}: update {}{msg}",
                    u.state.replace('_', " ")
                )))
            }
            "rollback_completed" => {
                return Ok(Standing::Failed(format!(
                    "service {full}: rolled back{msg}"
                )))
            }
            "updating" | "rollback_started" => {
                return Ok(Standing::Pending(format!(
                    "service {full}: {}",
                    u.state.replace('_', " ")
                )))
            }
            _ => {}
        }
    }
    let tasks = d.current_tasks(full)?;
    let running = tasks.iter().filter(|t| t.is_running()).count() as u32;
    if running >= desired {
        return Ok(Standing::Ready);
    }
    let failed: Vec<_> = tasks.iter().filter(|t| t.is_failed()).collect();
    // `service ps` lists the newest task of a slot first.
    let last = failed.first().map(|t| {
        let node = if t.node.is_empty() {
            "no node".to_string()
        } else {
            format!("node {}", t.node)
        };
        format!("task {} on {node}: {}", t.name, t.error_text())
    });
    match last {
        Some(last) if failed.len() >= FAILED_LIMIT => Ok(Standing::Failed(format!(
            "service {full}: {running}/{desired} running, {} task(s) failed; the last, {last}",
            failed.len()
        ))),
        Some(last) => Ok(Standing::Pending(format!(
            "service {full}: {running}/{desired} running; {last}"
        ))),
        None => Ok(Standing::Pending(format!(
            "service {full}: {running}/{desired} running"
        ))),
    }
}

/// Wait until stack `stack` with the compose services `services` has
/// converged, at most `bound`. A failure names each service and docker's
/// error (exit 1); the bound passing names what was still pending (75).
pub fn wait(d: &Docker, stack: &str, services: &[String], bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    let mut since: Option<Instant> = None;
    loop {
        signal::check()?;
        let lines = d.stack_services(stack)?;
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        for s in services {
            let full = format!("{stack}_{s}");
            let Some(line) = lines.iter().find(|l| l.name == full) else {
                pending.push(format!("service {full} not created yet"));
                continue;
            };
            let desired = line.counts().map_or(1, |(_, d)| d);
            match service(d, &full, desired)? {
                Standing::Ready => {}
                Standing::Pending(p) => pending.push(p),
                Standing::Failed(f) => failed.push(f),
            }
        }
        if !failed.is_empty() {
            return Err(err(
                Kind::Failed,
                format!("stack {stack} does not run: {}", failed.join("; ")),
            ));
        }
        let now = Instant::now();
        if pending.is_empty() {
            let at = *since.get_or_insert(now);
            if now.duration_since(at) >= MONITOR {
                return Ok(());
            }
        } else {
            since = None;
        }
        if now >= deadline {
            return Err(err(
                Kind::TempFail,
                format!(
                    "stack {stack} did not converge within {} (deploy.converge_timeout_secs): {}",
                    humantime::format_duration(bound),
                    if pending.is_empty() {
                        "still within its monitor period".to_string()
                    } else {
                        pending.join("; ")
                    }
                ),
            ));
        }
        if !pending.is_empty() {
            log::debug!("stack {stack}: {}", pending.join("; "));
        }
        crate::notify::status(&format!(
            "stack {stack}: converging ({}s left): {}",
            deadline.saturating_duration_since(now).as_secs(),
            if pending.is_empty() {
                "within its monitor period".to_string()
            } else {
                pending.join("; ")
            }
        ));
        signal::sleep(
            POLL.min(deadline.saturating_duration_since(now))
                .max(Duration::from_millis(100)),
        );
    }
}
