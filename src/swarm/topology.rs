//! Who is what in the swarm: roles, addresses and labels from
//! `phoenix_vm_configs.json`, with `toolkit.json`'s `swarm` section on top.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;

use crate::config::SwarmConfig;
use crate::exit::{err, Kind};
use crate::phoenix::{SwarmRole, VmConfigs};

/// The node label every member gets, its VMID: what `phoenix-deploy`
/// places a VM's stacks by (`node.labels.phoenix.vmid == 1002`).
pub const VMID_LABEL: &str = "phoenix.vmid";

/// One VM of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// VMID.
    pub vmid: u32,
    /// Its name in the Phoenix file.
    pub name: String,
    /// Manager or worker.
    pub role: SwarmRole,
    /// Its static address, if any.
    pub addr: Option<IpAddr>,
    /// `key=value` node labels, checked: `node_labels`, then
    /// [`VMID_LABEL`].
    pub labels: Vec<String>,
}

impl Member {
    /// `VM 1002 (drphoenix)`.
    pub fn what(&self) -> String {
        format!("VM {} ({})", self.vmid, self.name)
    }

    /// `manager` / `worker`.
    pub fn role_name(&self) -> &'static str {
        match self.role {
            SwarmRole::Manager => "manager",
            SwarmRole::Worker => "worker",
        }
    }

    /// `(key, value)` of each label (`key` alone means an empty value, as
    /// `docker node update --label-add key` does).
    pub fn label_pairs(&self) -> Vec<(String, String)> {
        self.labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

/// The swarm as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The manager that initialises the swarm.
    pub manager: Member,
    /// Every other member (workers, and managers that join it).
    pub others: Vec<Member>,
    /// Address the manager advertises; workers join `advertise:port`.
    pub advertise: String,
    /// Swarm port.
    pub port: u16,
}

impl Topology {
    /// Build from the VM file (read from `path`) and the `swarm` section.
    /// A contradiction is a [`Kind::Config`] error naming the file or key.
    pub fn build(vms: &VmConfigs, swarm: &SwarmConfig, path: &Path) -> Result<Topology> {
        let file = path.display();
        let mut members = Vec::new();
        for (i, vm) in vms.vms.iter().enumerate() {
            let Some(role) = vm.swarm_role else { continue };
            if vm.is_template {
                continue;
            }
            let mut labels = vm.node_labels.clone().unwrap_or_default();
            for (j, l) in labels.iter().enumerate() {
                let why = match check_label(l) {
                    Err(why) => why,
                    Ok(()) if l.split('=').next() == Some(VMID_LABEL) => format!(
                        "{l:?}: the label {VMID_LABEL} is the toolkit's (the node's VMID, \
                         which phoenix-deploy places stacks by)"
                    ),
                    Ok(()) => continue,
                };
                return Err(err(
                    Kind::Config,
                    format!("VM configuration '{file}': vms[{i}].node_labels[{j}]: {why}"),
                ));
            }
            labels.push(format!("{VMID_LABEL}={}", vm.vmid));
            members.push(Member {
                vmid: vm.vmid,
                name: vm.name.clone(),
                role,
                addr: vm.network_config.as_ref().and_then(|n| n.address()),
                labels,
            });
        }
        let manager_at = match swarm.manager_id {
            Some(id) => members.iter().position(|m| m.vmid == id).ok_or_else(|| {
                err(
                    Kind::Config,
                    format!(
                        "swarm.manager_id {id}: no VM with that id and a swarm_role in '{file}'"
                    ),
                )
            })?,
            None => {
                let managers: Vec<usize> = members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.role == SwarmRole::Manager)
                    .map(|(i, _)| i)
                    .collect();
                match managers.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(err(
                            Kind::Config,
                            format!("no VM in '{file}' has swarm_role \"manager\""),
                        ))
                    }
                    many => {
                        let ids: Vec<String> =
                            many.iter().map(|&i| members[i].vmid.to_string()).collect();
                        return Err(err(
                            Kind::Config,
                            format!(
                                "several VMs in '{file}' have swarm_role \"manager\" ({}): set swarm.manager_id",
                                ids.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let mut manager = members.remove(manager_at);
        if manager.role == SwarmRole::Worker {
            return Err(err(
                Kind::Config,
                format!(
                    "swarm.manager_id {}: that VM has swarm_role \"worker\" in '{file}'",
                    manager.vmid
                ),
            ));
        }
        manager.role = SwarmRole::Manager;
        let advertise = match (&swarm.advertise_addr, manager.addr) {
            (Some(a), _) => {
                let a = a.trim();
                if a.is_empty() || a.starts_with('-') || a.contains(char::is_whitespace) {
                    return Err(err(
                        Kind::Config,
                        format!("swarm.advertise_addr {a:?}: not an address"),
                    ));
                }
                a.to_string()
            }
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err(err(
                    Kind::Config,
                    format!(
                        "{}: no static network_config.ip in '{file}' to advertise: set swarm.advertise_addr",
                        manager.what()
                    ),
                ))
            }
        };
        if swarm.port == 0 {
            return Err(err(Kind::Config, "swarm.port: must be 1-65535"));
        }
        Ok(Topology {
            manager,
            others: members,
            advertise,
            port: swarm.port,
        })
    }

    /// Where members join: `advertise:port` (`[v6]:port` for IPv6).
    pub fn remote(&self) -> String {
        match self.advertise.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.advertise, self.port),
        }
    }

    /// `swarm init` arguments (after `docker`).
    pub fn init_args(&self, force_new_cluster: bool) -> Vec<String> {
        let mut args = vec![
            "swarm".to_string(),
            "init".into(),
            "--advertise-addr".into(),
        ];
        if self.port == 2377 {
            args.push(self.advertise.clone());
        } else {
            args.push(self.remote());
            args.push("--listen-addr".into());
            args.push(format!("0.0.0.0:{}", self.port));
        }
        if force_new_cluster {
            args.push("--force-new-cluster".into());
        }
        args
    }

    /// Every member, the manager first.
    pub fn all(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.manager).chain(self.others.iter())
    }
}

/// A label as `docker node update --label-add` takes it, and safe as one
/// argv word: `key` or `key=value`, the key not empty and no flag.
fn check_label(l: &str) -> std::result::Result<(), String> {
    let key = l.split_once('=').map_or(l, |(k, _)| k);
    if key.is_empty() {
        return Err(format!("{l:?}: a label needs a key (key=value)"));
    }
    if key.starts_with('-') || key.contains(char::is_whitespace) {
        return Err(format!("{l:?}: not a label key"));
    }
    if l.contains(['\n', '\0']) {
        return Err(format!("{l:?}: a label is one line"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    fn vms(json: &str) -> VmConfigs {
        serde_json::from_str(json).unwrap()
    }

    const PHOENIX: &str = r#"{"vms": [
        {"vmid": 9000, "name": "tpl", "is_template": true, "swarm_role": "manager"},
        {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
         "network_config": {"ip": "10.0.0.111/24"}, "node_labels": null},
        {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker",
         "network_config": {"ip": "10.0.0.102/24"}, "node_labels": ["gpu=false"]},
        {"vmid": 1003, "name": "plain"}]}"#;

    #[test]
    fn roles_addresses_and_labels() {
        let t =
            Topology::build(&vms(PHOENIX), &SwarmConfig::default(), Path::new("v.json")).unwrap();
        assert_eq!(t.manager.vmid, 1001);
        assert_eq!(t.advertise, "10.0.0.111");
        assert_eq!(t.remote(), "10.0.0.111:2377");
        assert_eq!(t.others.len(), 1);
        assert_eq!(
            t.others[0].label_pairs(),
            vec![
                ("gpu".into(), "false".into()),
                ("phoenix.vmid".into(), "1002".into())
            ]
        );
        assert_eq!(t.manager.labels, ["phoenix.vmid=1001"]);
        assert_eq!(
            t.init_args(false),
            ["swarm", "init", "--advertise-addr", "10.0.0.111"]
        );
    }

    #[test]
    fn toolkit_overrides_manager_address_and_port() {
        let sc = SwarmConfig {
            advertise_addr: Some("192.168.1.5".into()),
            port: 2400,
            ..SwarmConfig::default()
        };
        let t = Topology::build(&vms(PHOENIX), &sc, Path::new("v.json")).unwrap();
        assert_eq!(t.remote(), "192.168.1.5:2400");
        assert_eq!(
            t.init_args(true),
            [
                "swarm",
                "init",
                "--advertise-addr",
                "192.168.1.5:2400",
                "--listen-addr",
                "0.0.0.0:2400",
                "--force-new-cluster"
            ]
        );
        let sc = SwarmConfig {
            manager_id: Some(1002),
            ..SwarmConfig::default()
        };
        let e = Topology::build(&vms(PHOENIX), &sc, Path::new("v.json")).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("worker"), "{e}");
    }

    #[test]
    fn contradictions_are_config_errors() {
        let two = r#"{"vms": [{"vmid": 1, "name": "a", "swarm_role": "manager", "network_config": {"ip": "10.0.0.1/24"}},
                              {"vmid": 2, "name": "b", "swarm_role": "manager"}]}"#;
        let e =
            Topology::build(&vms(two), &SwarmConfig::default(), Path::new("v.json")).unwrap_err();
        assert!(e.to_string().contains("swarm.manager_id"), "{e}");
        let dhcp = r#"{"vms": [{"vmid": 1, "name": "a", "swarm_role": "manager", "network_config": {"ip": "dhcp"}}]}"#;
        let e =
            Topology::build(&vms(dhcp), &SwarmConfig::default(), Path::new("v.json")).unwrap_err();
        assert!(e.to_string().contains("swarm.advertise_addr"), "{e}");
        let bad = r#"{"vms": [{"vmid": 1, "name": "a", "swarm_role": "manager", "network_config": {"ip": "10.0.0.1/24"},
                               "node_labels": ["=x"]}]}"#;
        let e =
            Topology::build(&vms(bad), &SwarmConfig::default(), Path::new("v.json")).unwrap_err();
        assert!(e.to_string().contains("vms[0].node_labels[0]"), "{e}");
        let ours = r#"{"vms": [{"vmid": 1, "name": "a", "swarm_role": "manager", "network_config": {"ip": "10.0.0.1/24"},
                                "node_labels": ["phoenix.vmid=2"]}]}"#;
        let e =
            Topology::build(&vms(ours), &SwarmConfig::default(), Path::new("v.json")).unwrap_err();
        assert!(e.to_string().contains("is the toolkit's"), "{e}");
        let none = r#"{"vms": [{"vmid": 1, "name": "a"}]}"#;
        let e =
            Topology::build(&vms(none), &SwarmConfig::default(), Path::new("v.json")).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
    }
}
