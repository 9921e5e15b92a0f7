//! Docker Swarm from the Proxmox host: `phoenix-swarm ensure` makes the
//! manager VM active and every other member a Ready node, idempotently;
//! `phoenix-swarm status` shows where each VM stands.
//!
//! Every docker command runs inside its VM through the one `qm guest
//! exec` transport ([`crate::proxmox`]), after the VM runs and its guest
//! agent answers (bounded, with backoff: a cold VM's agent takes ~100 s).
//! Swarm secrets made from certificates are rotated by [`secrets`], run
//! by `phoenix-renew` as a post-renewal action.

pub mod docker;
pub mod ensure;
pub mod secrets;
pub mod service;
pub mod stack;
pub mod status;
pub mod topology;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;

use crate::cluster;
use crate::config::Config;
use crate::phoenix::read_vm_configs;
use crate::proxmox::Proxmox;

pub use ensure::{Bounds, EnsureOptions};
pub use status::SwarmStatus;
pub use topology::Topology;

/// The configured swarm: `phoenix_vm_configs.json` + `toolkit.json`.
pub fn topology(config: &Config) -> Result<Topology> {
    let path = config.vm_configs_path();
    let vms = read_vm_configs(&path)?;
    Topology::build(&vms, &config.swarm, &path)
}

/// The transport with the swarm's deadlines: `qm` for the VMs of this
/// node, the cluster API (`pvesh`) for those of other nodes of a cluster,
/// as pmxcfs's `.vmlist` places them ([`crate::proxmox`]).
pub fn proxmox(config: &Config) -> Result<Proxmox> {
    let px = Proxmox::with_command_timeout(config.swarm.command_timeout_secs);
    Ok(px.with_remote(elsewhere(&cluster::Cluster::load(config)?)))
}

/// The guests of the other nodes of a cluster: VMID -> node. None on a
/// single host (its `.vmlist`, when there is one, has only this node).
pub fn elsewhere(cluster: &cluster::Cluster) -> BTreeMap<u32, String> {
    let Some(list) = cluster.vmlist.as_ref().filter(|_| cluster.clustered) else {
        return BTreeMap::new();
    };
    list.ids
        .iter()
        .filter(|(_, e)| e.node != cluster.node)
        .filter_map(|(id, e)| Some((id.parse().ok()?, e.node.clone())))
        .collect()
}

/// `phoenix-swarm ensure`: one run at a time (the `swarm` lock; a dry run
/// changes nothing and takes no lock). Progress and changes go to `out`.
pub fn ensure(config: &Config, opts: EnsureOptions, out: &mut dyn Write) -> Result<()> {
    let topo = topology(config)?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(cluster::lock(
            config,
            "swarm",
            Duration::from_secs(config.swarm.lock_wait_secs),
        )?)
    };
    let dry_run = opts.dry_run;
    let started = std::time::Instant::now();
    let result = proxmox(config).and_then(|px| {
        let bounds = Bounds {
            agent: Duration::from_secs(config.swarm.agent_timeout_secs),
            state: Duration::from_secs(config.swarm.state_timeout_secs),
        };
        ensure::Run::new(&px, &topo, opts, bounds, out).ensure()
    });
    if !dry_run {
        // Under the lock still.
        crate::metrics::record(
            &config.state_dir,
            config.swarm.metrics_file.as_deref(),
            "swarm",
            &result,
            started.elapsed(),
            "",
        );
    }
    result
}

/// `phoenix-swarm status`: read once, change nothing.
pub fn status(config: &Config) -> Result<SwarmStatus> {
    let topo = topology(config)?;
    let mut st = status::status(&proxmox(config)?, &topo);
    let where_ = cluster::Cluster::load(config)?;
    if where_.clustered {
        for m in &mut st.members {
            m.pve_node = where_.node_of(m.vmid);
        }
    }
    Ok(st)
}
