//! Stacks, their services and tasks, networks, inside the manager VM,
//! through the one docker layer ([`Docker`]): the commands
//! `phoenix-deploy` needs, and parsers of what they print.
//!
//! Facts relied on (docker/cli and moby 20.10, checked on the real engine
//! by tests/deploy_real.rs):
//! - `docker stack deploy -c - NAME` reads the compose file from stdin;
//!   the CLI interpolates `$VAR` from its own environment, so the text it
//!   gets has every literal `$` doubled. `--resolve-image never`: nothing
//!   is pulled or pinned by the manager (each node runs the image it has);
//!   `--prune`: a service dropped from the compose file goes.
//! - A redeploy of an unchanged service updates its spec version but
//!   replaces no task, and leaves `UpdateStatus` null.
//! - `docker service ps --filter _up-to-date=true S` lists only the tasks
//!   of the service's current spec (the filter docker/cli's own progress
//!   display uses to wait for convergence): old tasks of a changed service
//!   are not counted, kept ones of an unchanged service are.
//! - A task a node cannot start is `Rejected` with the daemon's error,
//!   quoted (`"No such image: portainer/portainer-ce:latest"`), and swarm
//!   tries again, for ever.

use anyhow::{Context, Result};
use serde::Deserialize;

use super::docker::{clip, json_lines, Docker};

/// The label docker stack deploy puts on everything of a stack.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// docker/cli's answer for an unknown network.
const ERR_NO_NETWORK: &str = "No such network";

/// One line of `docker service ls --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ServiceLine {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name (`<stack>_<service>`).
    #[serde(rename = "Name")]
    pub name: String,
    /// `replicated` or `global`.
    #[serde(rename = "Mode", default)]
    pub mode: String,
    /// `running/desired`, e.g. `1/1` (global: `2/2`; may carry
    /// `(max 1 per node)` after it).
    #[serde(rename = "Replicas", default)]
    pub replicas: String,
    /// Its image.
    #[serde(rename = "Image", default)]
    pub image: String,
}

impl ServiceLine {
    /// `(running, desired)` from `Replicas`.
    pub fn counts(&self) -> Option<(u32, u32)> {
        let first = self.replicas.split_whitespace().next()?;
        let (r, d) = first.split_once('/')?;
        Some((r.parse().ok()?, d.parse().ok()?))
    }
}

/// Parse `docker service ls --format '{{json .}}'`.
pub fn parse_service_ls(stdout: &str) -> Result<Vec<ServiceLine>> {
    json_lines(stdout, "docker service ls", "a service")
}

/// One line of `docker service ps --no-trunc --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TaskLine {
    /// Task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// `<service>.<slot>`.
    #[serde(rename = "Name")]
    pub name: String,
    /// Hostname of its node (empty before it is assigned).
    #[serde(rename = "Node", default)]
    pub node: String,
    /// `Running`, `Ready`, `Shutdown`, ...
    #[serde(rename = "DesiredState", default)]
    pub desired: String,
    /// `Running 5 seconds ago`, `Rejected 2 seconds ago`, ...
    #[serde(rename = "CurrentState", default)]
    pub current: String,
    /// The daemon's error, quoted.
    #[serde(rename = "Error", default)]
    pub error: String,
}

impl TaskLine {
    /// The state word of `CurrentState`, lowercase (`running`, `rejected`).
    pub fn state(&self) -> String {
        self.current
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    /// Running, and meant to.
    pub fn is_running(&self) -> bool {
        self.state() == "running" && self.desired.eq_ignore_ascii_case("running")
    }

    /// Ended in failure: rejected by its node or failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.state().as_str(), "rejected" | "failed")
    }

    /// The error without docker's quotes (`No such image: x`).
    pub fn error_text(&self) -> String {
        let e = self.error.trim();
        e.strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or(e)
            .replace("\\\"", "\"")
    }
}

/// Parse `docker service ps --format '{{json .}}'`.
pub fn parse_service_ps(stdout: &str) -> Result<Vec<TaskLine>> {
    json_lines(stdout, "docker service ps", "a task")
}

/// A network as `docker network inspect --format '{{json .}}'` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetworkInfo {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Its driver (`overlay`, `bridge`, ...).
    #[serde(rename = "Driver", default)]
    pub driver: String,
    /// `swarm` or `local`.
    #[serde(rename = "Scope", default)]
    pub scope: String,
    /// Standalone containers may attach.
    #[serde(rename = "Attachable", default)]
    pub attachable: bool,
}

impl Docker<'_> {
    /// `docker stack deploy --prune --resolve-image never -c - NAME`, the
    /// compose text on stdin.
    pub fn stack_deploy(&self, name: &str, compose: &str) -> Result<()> {
        let args = [
            "stack",
            "deploy",
            "--prune",
            "--resolve-image",
            "never",
            "-c",
            "-",
            name,
        ];
        let out = self.run(&args, Some(compose.as_bytes()))?;
        if out.exitcode != 0 {
            return Err(anyhow::anyhow!(
                "{}: `docker {}` exited with status {}: {}",
                self.what(),
                args.join(" "),
                out.exitcode,
                clip(out.stderr.trim())
            ));
        }
        Ok(())
    }

    /// The services of stack `name` (none when it is not deployed).
    pub fn stack_services(&self, name: &str) -> Result<Vec<ServiceLine>> {
        let filter = format!("label={STACK_LABEL}={name}");
        let out = self.run_ok(
            &[
                "service",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{json .}}",
            ],
            false,
        )?;
        parse_service_ls(&out.stdout)
            .with_context(|| format!("{}: services of stack {name}", self.what()))
    }

    /// The tasks of `service`'s current spec (`_up-to-date`), newest first.
    pub fn current_tasks(&self, service: &str) -> Result<Vec<TaskLine>> {
        let out = self.run_ok(
            &[
                "service",
                "ps",
                "--filter",
                "_up-to-date=true",
                "--no-trunc",
                "--format",
                "{{json .}}",
                service,
            ],
            false,
        )?;
        parse_service_ps(&out.stdout)
            .with_context(|| format!("{}: tasks of service {service}", self.what()))
    }

    /// `docker network inspect NAME`: `None` when there is no such network.
    pub fn network_inspect(&self, name: &str) -> Result<Option<NetworkInfo>> {
        let out = self.run(
            &["network", "inspect", "--format", "{{json .}}", name],
            None,
        )?;
        if out.exitcode != 0 {
            if out.stderr.contains(ERR_NO_NETWORK) {
                return Ok(None);
            }
            return Err(anyhow::anyhow!(
                "{}: `docker network inspect {name}` exited with status {}: {}",
                self.what(),
                out.exitcode,
                clip(&out.stderr)
            ));
        }
        serde_json::from_str(out.stdout.trim())
            .map(Some)
            .with_context(|| {
                format!(
                    "{}: docker network inspect {name} printed no network JSON: {}",
                    self.what(),
                    clip(&out.stdout)
                )
            })
    }

    /// `docker network create --driver D [--attachable] NAME`.
    pub fn network_create(&self, name: &str, driver: &str, attachable: bool) -> Result<()> {
        let mut args = vec!["network", "create", "--driver", driver];
        if attachable {
            args.push("--attachable");
        }
        args.push(name);
        self.run_ok(&args, false).map(|_| ())
    }

    /// `CreatedAt` of each secret in `names` (RFC 3339, sortable), in order.
    pub fn secret_created(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut args = vec!["secret", "inspect", "--format", "{{json .CreatedAt}}"];
        args.extend(names);
        let out = self.run_ok(&args, false)?;
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<String>(l.trim()).with_context(|| {
                    format!(
                        "{}: docker secret inspect printed no date: {}",
                        self.what(),
                        clip(l)
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ls_counts() {
        // Lines as docker.io 20.10 prints them.
        let s = parse_service_ls(
            "{\"ID\":\"02yccixjefre\",\"Image\":\"portainer/nothere:1\",\"Mode\":\"replicated\",\"Name\":\"st2_web\",\"Ports\":\"\",\"Replicas\":\"0/1\"}\n\
             {\"ID\":\"m96owl8lvpxj\",\"Image\":\"p:latest\",\"Mode\":\"global\",\"Name\":\"st_web\",\"Ports\":\"*:8000-\\u003e8000/tcp\",\"Replicas\":\"2/2 (max 1 per node)\"}\n",
        )
        .unwrap();
        assert_eq!(s[0].counts(), Some((0, 1)));
        assert_eq!(s[1].counts(), Some((2, 2)));
        assert!(parse_service_ls("Error: nope").is_err());
    }

    #[test]
    fn task_lines_give_state_and_unquoted_error() {
        let t = parse_service_ps(
            "{\"CurrentState\":\"Rejected 2 seconds ago\",\"DesiredState\":\"Ready\",\"Error\":\"\\\"No such image: portainer/nothere:1\\\"\",\"ID\":\"woxv8n\",\"Image\":\"portainer/nothere:1\",\"Name\":\"st2_web.1\",\"Node\":\"wrk\",\"Ports\":\"\"}\n\
             {\"CurrentState\":\"Running 5 seconds ago\",\"DesiredState\":\"Running\",\"Error\":\"\",\"ID\":\"n61dvv\",\"Image\":\"p\",\"Name\":\"st_web.1\",\"Node\":\"wrk\",\"Ports\":\"\"}\n",
        )
        .unwrap();
        assert!(t[0].is_failed() && !t[0].is_running());
        assert_eq!(t[0].error_text(), "No such image: portainer/nothere:1");
        assert!(t[1].is_running() && !t[1].is_failed());
    }
}
