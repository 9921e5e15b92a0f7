//! `phoenix-deploy status`: each stack a VM lists, where it should run,
//! when this host last deployed it, and how many of its services' tasks
//! run; a `problem:` line for a stack not deployed or a service short of
//! tasks (with docker's error of its last failed task). Reads once, waits
//! for nothing, changes nothing.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use super::plan::Plan;
use super::state;
use crate::config::Config;
use crate::swarm::docker::Docker;

/// One service of a stack.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// `<stack>_<service>`.
    pub name: String,
    /// Tasks running.
    pub running: u32,
    /// Tasks wanted.
    pub desired: u32,
    /// docker's error of its last failed task, when short of tasks.
    pub error: Option<String>,
}

/// One stack.
#[derive(Debug, Clone, Serialize)]
pub struct StackStatus {
    /// Its key in `docker_stacks`.
    pub key: String,
    /// Its name in the swarm.
    pub name: String,
    /// The VM whose node runs it.
    pub vmid: u32,
    /// That VM's name.
    pub vm_name: String,
    /// When this host last deployed it (RFC 3339), if ever.
    pub deployed_at: Option<String>,
    /// SHA-256 of the compose text then deployed.
    pub sha256: Option<String>,
    /// Its services in the swarm.
    pub services: Vec<ServiceStatus>,
    /// What is wrong, if anything.
    pub problems: Vec<String>,
    /// The Proxmox node that VM runs on (a cluster's `.vmlist`); none on
    /// a single host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pve_node: Option<String>,
}

/// Every stack.
#[derive(Debug, Clone, Serialize)]
pub struct DeployStatus {
    /// In plan order.
    pub stacks: Vec<StackStatus>,
}

impl DeployStatus {
    /// Anything wrong anywhere.
    pub fn has_problems(&self) -> bool {
        self.stacks.iter().any(|s| !s.problems.is_empty())
    }
}

/// Read the state of every stack of `plan` through the manager `d`.
pub fn read(config: &Config, d: &Docker, plan: &Plan) -> Result<DeployStatus> {
    let mut stacks = Vec::new();
    for s in &plan.stacks {
        let record = state::load(&config.state_dir, &s.key);
        let lines = d.stack_services(&s.name)?;
        let mut st = StackStatus {
            key: s.key.clone(),
            name: s.name.clone(),
            vmid: s.vm.vmid,
            vm_name: s.vm.name.clone(),
            deployed_at: record.as_ref().map(|r| {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(r.deployed_at))
                    .to_string()
            }),
            sha256: record.as_ref().map(|r| r.sha256.clone()),
            services: Vec::new(),
            problems: Vec::new(),
            pve_node: None,
        };
        if lines.is_empty() {
            st.problems.push(format!(
                "not in the swarm{}: run phoenix-deploy run",
                if record.is_some() {
                    " (removed since this host deployed it)"
                } else {
                    ""
                }
            ));
        }
        for l in &lines {
            let (running, desired) = l.counts().unwrap_or((0, 0));
            let mut error = None;
            if running < desired {
                let tasks = d.current_tasks(&l.name)?;
                error = tasks.iter().find(|t| t.is_failed()).map(|t| t.error_text());
                st.problems.push(format!(
                    "service {}: {running}/{desired} running{}",
                    l.name,
                    error
                        .as_ref()
                        .map(|e| format!("; last failed task: {e}"))
                        .unwrap_or_default()
                ));
            }
            st.services.push(ServiceStatus {
                name: l.name.clone(),
                running,
                desired,
                error,
            });
        }
        stacks.push(st);
    }
    Ok(DeployStatus { stacks })
}

impl std::fmt::Display for DeployStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<22} {:<22} {:<22} {:<9} DEPLOYED",
            "STACK", "NAME", "VM", "RUNNING"
        )?;
        for s in &self.stacks {
            let running: u32 = s.services.iter().map(|x| x.running).sum();
            let desired: u32 = s.services.iter().map(|x| x.desired).sum();
            writeln!(
                f,
                "{:<22} {:<22} {:<22} {:<9} {}",
                s.key,
                s.name,
                match &s.pve_node {
                    Some(n) => format!("{} ({})@{n}", s.vmid, s.vm_name),
                    None => format!("{} ({})", s.vmid, s.vm_name),
                },
                format!("{running}/{desired}"),
                s.deployed_at.as_deref().unwrap_or("never")
            )?;
            for p in &s.problems {
                writeln!(f, "  problem: {p}")?;
            }
        }
        Ok(())
    }
}
