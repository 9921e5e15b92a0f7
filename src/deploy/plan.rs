//! Which stacks go where: `phoenix_stacks_config.json`'s `docker_stacks`,
//! each VM's `docker_stacks` in `phoenix_vm_configs.json`, and
//! `toolkit.json`'s `deploy` section, checked against one another before
//! anything is deployed. Every contradiction is a configuration error
//! (exit 2) naming the files and fields on both sides.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use crate::config::Config;
use crate::exit::{err, Kind};
use crate::phoenix::{read_stacks_config, read_vm_configs, StackEnvironment};
use crate::swarm::secrets::check_service_name;
use crate::swarm::topology::{Member, Topology, VMID_LABEL};

/// One stack to deploy.
#[derive(Debug, Clone)]
pub struct StackPlan {
    /// Its key in `docker_stacks`.
    pub key: String,
    /// Its name in the swarm (`deploy.stacks.<key>.name`, else the key).
    pub name: String,
    /// The VM whose node runs it.
    pub vm: Member,
    /// The compose file on the host.
    pub compose_path: PathBuf,
    /// The environment's settings.
    pub env: StackEnvironment,
    /// Where `env` is, for messages:
    /// `'<file>' docker_stacks.<key>.environments.<env>`.
    pub env_origin: String,
}

impl StackPlan {
    /// The placement constraint that pins its services to its VM's node.
    pub fn constraint(&self) -> String {
        format!("node.labels.{VMID_LABEL} == {}", self.vm.vmid)
    }

    /// The environment's `variables` as (name, value) pairs, in order.
    pub fn variables(&self) -> Vec<(String, String)> {
        self.env
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// `stack qdrant_service (VM 1002 (drphoenix))`, for messages.
    pub fn what(&self) -> String {
        format!("stack {} ({})", self.name, self.vm.what())
    }
}

/// Everything a run deploys.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The swarm manager, where every docker command runs.
    pub manager: Member,
    /// The stacks, in the order of the VMs and of their `docker_stacks`.
    pub stacks: Vec<StackPlan>,
}

/// A relative path with no `..`, no root and no prefix: it stays under
/// the directory it is joined to.
fn stays_under(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Build the plan; `only` restricts it to one stack (by key or name).
pub fn build(config: &Config, only: Option<&str>) -> Result<Plan> {
    let vm_path = config.vm_configs_path();
    let vms = read_vm_configs(&vm_path)?;
    let topo = Topology::build(&vms, &config.swarm, &vm_path)?;
    let stacks_path = config.stacks_config_path();
    let stacks = read_stacks_config(&stacks_path)?;
    let (vm_file, stacks_file) = (vm_path.display(), stacks_path.display());
    let deploy = &config.deploy;
    let config_err = |msg: String| err(Kind::Config, msg);

    for key in deploy.stacks.keys() {
        if !stacks.docker_stacks.contains_key(key) {
            return Err(config_err(format!(
                "deploy.stacks.{key}: no stack '{key}' in '{stacks_file}' docker_stacks"
            )));
        }
    }
    let members: Vec<&Member> = std::iter::once(&topo.manager)
        .chain(topo.others.iter())
        .collect();
    let mut listed: BTreeMap<&str, String> = BTreeMap::new();
    let mut plan = Vec::new();
    for (i, vm) in vms.vms.iter().enumerate() {
        let keys = vm.docker_stacks.as_deref().unwrap_or_default();
        if vm.is_template || keys.is_empty() {
            continue;
        }
        let Some(member) = members.iter().find(|m| m.vmid == vm.vmid) else {
            return Err(config_err(format!(
                "VM {} ({}) in '{vm_file}' lists stacks (vms[{i}].docker_stacks) but has no \
                 swarm_role: no swarm node of it can run them",
                vm.vmid, vm.name
            )));
        };
        for (j, key) in keys.iter().enumerate() {
            let field = format!("vms[{i}].docker_stacks[{j}]");
            let Some(def) = stacks.docker_stacks.get(key) else {
                return Err(config_err(format!(
                    "{} in '{vm_file}' lists stack '{key}' ({field}), which '{stacks_file}' \
                     does not define (docker_stacks has {})",
                    member.what(),
                    names(stacks.docker_stacks.keys())
                )));
            };
            if let Some(other) = listed.insert(key, member.what()) {
                return Err(config_err(format!(
                    "stack '{key}' is listed by {other} and by {} ({field} in '{vm_file}'): \
                     a stack is placed on one VM's node",
                    member.what()
                )));
            }
            let origin = format!("'{stacks_file}' docker_stacks.{key}");
            let env = def.environments.get(&deploy.environment).ok_or_else(|| {
                config_err(format!(
                    "{origin}.environments has no '{}' (deploy.environment; it has {})",
                    deploy.environment,
                    names(def.environments.keys())
                ))
            })?;
            if !stays_under(&def.compose_file_path) {
                return Err(config_err(format!(
                    "{origin}.compose_file_path '{}': must be relative to deploy.stacks_root, \
                     without '..'",
                    def.compose_file_path.display()
                )));
            }
            let env_origin = format!("{origin}.environments.{}", deploy.environment);
            for (k, f) in env.files.iter().enumerate() {
                if !stays_under(&f.source) {
                    return Err(config_err(format!(
                        "{env_origin}.files[{k}].source '{}': must be relative to \
                         deploy.stacks_root, without '..'",
                        f.source.display()
                    )));
                }
                if !f.destination_in_container.starts_with('/') {
                    return Err(config_err(format!(
                        "{env_origin}.files[{k}].destination_in_container '{}': must be an \
                         absolute path",
                        f.destination_in_container
                    )));
                }
            }
            let name = deploy
                .stacks
                .get(key)
                .and_then(|o| o.name.clone())
                .unwrap_or_else(|| key.clone());
            check_service_name(&name).map_err(|why| {
                config_err(format!(
                    "stack '{key}': its name in the swarm {why} (set deploy.stacks.{key}.name)"
                ))
            })?;
            plan.push(StackPlan {
                key: key.clone(),
                name,
                vm: (*member).clone(),
                compose_path: deploy.stacks_root.join(&def.compose_file_path),
                env: env.clone(),
                env_origin,
            });
        }
    }
    if let Some(only) = only {
        let known = names(plan.iter().map(|s| &s.key));
        plan.retain(|s| s.key == only || s.name == only);
        if plan.is_empty() {
            return Err(config_err(format!(
                "--only {only}: no such stack listed by a VM (listed: {known})"
            )));
        }
    }
    Ok(Plan {
        manager: topo.manager.clone(),
        stacks: plan,
    })
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    const VMS: &str = r#"{"vms": [
        {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
         "network_config": {"ip": "10.0.0.111/24"}, "docker_stacks": ["portainer_service"]},
        {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker",
         "docker_stacks": ["qdrant_service"]},
        {"vmid": 1003, "name": "plain", "docker_stacks": null}]}"#;
    const STACKS: &str = r#"{"docker_stacks": {
        "qdrant_service": {"compose_file_path": "persistent-storage/qdrant/docker-compose.yml",
            "environments": {"production": {"variables": [], "files": [],
               "services": {"qdrant": {"traefik_labels": ["traefik.enable=true"]}}}}},
        "portainer_service": {"compose_file_path": "portainer/docker-compose.yml",
            "nginx_proxy": {"hostname": "p"},
            "environments": {"production": {}}}}}"#;

    fn setup(vms: &str, stacks: &str, deploy: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("phoenix_vm_configs.json"), vms).unwrap();
        std::fs::write(dir.path().join("phoenix_stacks_config.json"), stacks).unwrap();
        let toolkit = dir.path().join("toolkit.json");
        std::fs::write(
            &toolkit,
            format!(
                r#"{{"phoenix_etc": "{}", "deploy": {deploy}}}"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let config = Config::load_file(&toolkit).unwrap();
        (dir, config)
    }

    #[test]
    fn stacks_go_to_the_vm_that_lists_them() {
        let (_d, c) = setup(VMS, STACKS, r#"{"stacks_root": "/srv/phoenix"}"#);
        let p = build(&c, None).unwrap();
        assert_eq!(p.manager.vmid, 1001);
        let keys: Vec<&str> = p.stacks.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["portainer_service", "qdrant_service"]);
        let q = &p.stacks[1];
        assert_eq!(q.vm.vmid, 1002);
        assert_eq!(q.constraint(), "node.labels.phoenix.vmid == 1002");
        assert_eq!(
            q.compose_path,
            Path::new("/srv/phoenix/persistent-storage/qdrant/docker-compose.yml")
        );
        assert_eq!(
            q.env.services["qdrant"].traefik_labels,
            ["traefik.enable=true"]
        );
        let only = build(&c, Some("qdrant_service")).unwrap();
        assert_eq!(only.stacks.len(), 1);
        let e = build(&c, Some("nope")).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(
            e.to_string().contains("portainer_service, qdrant_service"),
            "{e}"
        );
    }

    #[test]
    fn a_name_can_be_configured() {
        let (_d, c) = setup(
            VMS,
            STACKS,
            r#"{"stacks": {"portainer_service": {"name": "portainer"}}}"#,
        );
        let p = build(&c, Some("portainer")).unwrap();
        assert_eq!(p.stacks[0].name, "portainer");
        let (_d, c) = setup(VMS, STACKS, r#"{"stacks": {"nope": {"name": "x"}}}"#);
        let e = build(&c, None).unwrap_err();
        assert!(e.to_string().contains("deploy.stacks.nope"), "{e}");
    }

    #[test]
    fn contradictions_name_both_files() {
        let missing = VMS.replace("\"qdrant_service\"]", "\"qdrant\"]");
        let (d, c) = setup(&missing, STACKS, "{}");
        let e = build(&c, None).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let msg = e.to_string();
        assert!(msg.contains("VM 1002 (drphoenix)"), "{msg}");
        assert!(msg.contains("vms[1].docker_stacks[0]"), "{msg}");
        assert!(msg.contains("phoenix_vm_configs.json"), "{msg}");
        assert!(
            msg.contains(&format!(
                "'{}' does not define",
                d.path().join("phoenix_stacks_config.json").display()
            )),
            "{msg}"
        );
        let twice = VMS.replace("\"qdrant_service\"]", "\"portainer_service\"]");
        let (_d, c) = setup(&twice, STACKS, "{}");
        let e = build(&c, None).unwrap_err();
        assert!(e.to_string().contains("listed by VM 1001"), "{e}");
        let (_d, c) = setup(VMS, STACKS, r#"{"environment": "testing"}"#);
        let e = build(&c, None).unwrap_err();
        assert!(e.to_string().contains("has no 'testing'"), "{e}");
        let escape = STACKS.replace("portainer/docker-compose.yml", "../etc/x.yml");
        let (_d, c) = setup(VMS, &escape, "{}");
        let e = build(&c, None).unwrap_err();
        assert!(e.to_string().contains("without '..'"), "{e}");
        let no_role = VMS.replace(
            "\"docker_stacks\": null",
            "\"docker_stacks\": [\"qdrant_service\"]",
        );
        let (_d, c) = setup(&no_role, STACKS, "{}");
        let e = build(&c, None).unwrap_err();
        assert!(e.to_string().contains("has no swarm_role"), "{e}");
    }
}
