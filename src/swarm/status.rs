//! `phoenix-swarm status`: each member's role, state, node id, cluster id,
//! labels and problems, read once (no waiting, no change, no lock).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::docker::{Docker, NodeEntry, NodeState};
use super::topology::{Member, Topology};
use crate::phoenix::GuestType;
use crate::proxmox::{Guest, Proxmox};

/// One member as seen now.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// VMID.
    pub vmid: u32,
    /// Name.
    pub name: String,
    /// `manager` / `worker` (as configured).
    pub role: &'static str,
    /// `LocalNodeState`, or `unreachable` / `unknown`.
    pub state: String,
    /// Node id.
    pub node_id: Option<String>,
    /// Cluster id: the manager's, for a member the manager lists.
    pub cluster_id: Option<String>,
    /// Labels of its node, as the manager has them.
    pub labels: BTreeMap<String, String>,
    /// What `ensure` would have to fix, or cannot.
    pub problems: Vec<String>,
    /// The Proxmox node the VM runs on (a cluster's `.vmlist`); none on a
    /// single host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pve_node: Option<String>,
}

/// The whole swarm as seen now.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmStatus {
    /// The manager's VMID.
    pub manager: u32,
    /// Its cluster id, if it is an active manager.
    pub cluster_id: Option<String>,
    /// Every member, the manager first.
    pub members: Vec<MemberStatus>,
}

impl SwarmStatus {
    /// Any member has a problem.
    pub fn has_problems(&self) -> bool {
        self.members.iter().any(|m| !m.problems.is_empty())
    }
}

fn short(id: &Option<String>) -> String {
    match id.as_deref() {
        Some(s) if !s.is_empty() => s.chars().take(12).collect(),
        _ => "-".into(),
    }
}

impl fmt::Display for SwarmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<6} {:<14} {:<8} {:<11} {:<12} {:<12} LABELS",
            "VMID", "NAME", "ROLE", "STATE", "NODE", "CLUSTER"
        )?;
        for m in &self.members {
            let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut name: String = m.name.chars().take(14).collect();
            if let Some(n) = &m.pve_node {
                name = format!("{name}@{n}");
            }
            writeln!(
                f,
                "{:<6} {:<14} {:<8} {:<11} {:<12} {:<12} {}",
                m.vmid,
                name,
                m.role,
                m.state,
                short(&m.node_id),
                short(&m.cluster_id),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                }
            )?;
            for p in &m.problems {
                writeln!(f, "       problem: {p}")?;
            }
        }
        Ok(())
    }
}

/// Read the state of every member once.
pub fn status(px: &Proxmox, topo: &Topology) -> SwarmStatus {
    let mut members: Vec<MemberStatus> = topo.all().map(blank).collect();
    // The manager first: the others are judged against its node list.
    let mut nodes: Option<Vec<NodeEntry>> = None;
    let mut cluster_id = None;
    let manager_docker = Docker::new(px, vm(&topo.manager), topo.manager.what());
    for (i, m) in topo.all().enumerate() {
        let st = &mut members[i];
        if let Err(e) = px.ensure_reachable(vm(m)) {
            st.state = "unreachable".into();
            st.problems.push(format!("{e:#}"));
            continue;
        }
        let info = match Docker::new(px, vm(m), m.what()).info() {
            Ok(info) => info,
            Err(e) => {
                st.problems.push(format!("{e:#}"));
                continue;
            }
        };
        st.state = info.state.to_string();
        st.node_id = Some(info.node_id.clone()).filter(|s| !s.is_empty());
        match info.state {
            NodeState::Active => {}
            NodeState::Error if !info.error.is_empty() => st
                .problems
                .push(format!("swarm state error: {}", info.error)),
            s => st.problems.push(format!("swarm state {s}")),
        }
        if i == 0 {
            if info.state == NodeState::Active && !info.control {
                st.problems.push("a worker, not a manager".into());
            }
            if info.state == NodeState::Active && info.control {
                cluster_id = info.cluster_id.clone();
                match manager_docker.node_ls() {
                    Ok(n) => nodes = Some(n),
                    Err(e) => st.problems.push(format!("{e:#}")),
                }
            }
            st.cluster_id = cluster_id.clone();
        } else if info.state == NodeState::Active {
            match &nodes {
                Some(n) if n.iter().any(|e| e.id == info.node_id) => {
                    st.cluster_id = cluster_id.clone()
                }
                Some(_) => st.problems.push("active in another swarm".into()),
                None => st
                    .problems
                    .push("the manager's swarm is not readable".into()),
            }
        }
        if st.cluster_id.is_some() {
            if let Some(id) = &st.node_id {
                match manager_docker.node_labels(id) {
                    Ok(l) => st.labels = l,
                    Err(e) => st.problems.push(format!("{e:#}")),
                }
            }
            for (k, v) in m.label_pairs() {
                if st.labels.get(&k) != Some(&v) {
                    st.problems.push(format!("label {k}={v} missing"));
                }
            }
        }
    }
    if let Some(nodes) = &nodes {
        let ready: Vec<&str> = nodes
            .iter()
            .filter(|n| n.is_ready())
            .map(|n| n.hostname.as_str())
            .collect();
        for n in nodes
            .iter()
            .filter(|n| n.is_down() && ready.contains(&n.hostname.as_str()))
        {
            members[0].problems.push(format!(
                "stale Down node {} (hostname {})",
                n.id, n.hostname
            ));
        }
    }
    SwarmStatus {
        manager: topo.manager.vmid,
        cluster_id,
        members,
    }
}

fn vm(m: &Member) -> Guest {
    Guest {
        kind: GuestType::Vm,
        id: m.vmid,
    }
}

fn blank(m: &Member) -> MemberStatus {
    MemberStatus {
        vmid: m.vmid,
        name: m.name.clone(),
        role: m.role_name(),
        state: "unknown".into(),
        node_id: None,
        cluster_id: None,
        labels: BTreeMap::new(),
        problems: Vec::new(),
        pve_node: None,
    }
}
