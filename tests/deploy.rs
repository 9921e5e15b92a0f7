//! `phoenix-deploy` refusing what it cannot deploy, before it touches the
//! swarm: a stack a VM lists that the stacks file lacks, a compose file
//! missing or invalid. Each is exit 2 with the files, fields and line
//! named, and not one `qm` call (the fake Proxmox records every call).
//! What it does on a swarm is in tests/deploy_real.rs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::json;

use common::FakePve;

struct Lab {
    pve: FakePve,
    etc: tempfile::TempDir,
    root: tempfile::TempDir,
}

fn lab(vm_stacks: serde_json::Value, stacks: serde_json::Value) -> Lab {
    let lab = Lab {
        pve: FakePve::new(),
        etc: tempfile::tempdir().unwrap(),
        root: tempfile::tempdir().unwrap(),
    };
    lab.pve.add_vm(1001);
    let etc = lab.etc.path();
    std::fs::write(
        etc.join("phoenix_vm_configs.json"),
        json!({"vms": [{"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
                        "network_config": {"ip": "10.0.0.111/24"},
                        "docker_stacks": vm_stacks}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        etc.join("phoenix_stacks_config.json"),
        json!({ "docker_stacks": stacks }).to_string(),
    )
    .unwrap();
    std::fs::write(
        etc.join("toolkit.json"),
        json!({"phoenix_etc": etc, "lock_dir": etc.join("lock"), "state_dir": etc.join("state"),
               "deploy": {"stacks_root": lab.root.path()}})
        .to_string(),
    )
    .unwrap();
    lab
}

impl Lab {
    fn put(&self, rel: &str, content: &str) {
        let p = self.root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn deploy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_phoenix-deploy"))
            .args(args)
            .arg("--config")
            .arg(self.etc.path().join("toolkit.json"))
            .envs(self.pve.env())
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Exit 2, a message holding every one of `parts`, no `qm` call.
    fn refused(&self, o: &Output, parts: &[&str]) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for p in parts {
            assert!(err.contains(p), "no {p:?} in: {err}");
        }
        assert_eq!(self.pve.calls(), Vec::<serde_json::Value>::new());
    }
}

fn stack(path: &str) -> serde_json::Value {
    json!({"compose_file_path": path, "environments": {"production": {}}})
}

#[test]
fn a_stack_the_stacks_file_lacks_names_both_files() {
    let lab = lab(
        json!(["portainer_service", "qdrant_service"]),
        json!({"portainer_service": stack("p/docker-compose.yml")}),
    );
    let o = lab.deploy(&["run"]);
    let vm_file = lab.etc.path().join("phoenix_vm_configs.json");
    let stacks_file = lab.etc.path().join("phoenix_stacks_config.json");
    lab.refused(
        &o,
        &[
            "VM 1001 (Portainer)",
            &vm_file.display().to_string(),
            "lists stack 'qdrant_service' (vms[0].docker_stacks[1])",
            &format!("'{}' does not define", stacks_file.display()),
        ],
    );
    // status reads the same files: the same refusal.
    lab.refused(&lab.deploy(&["status"]), &["qdrant_service"]);
}

#[test]
fn a_compose_file_missing_or_invalid_is_named_with_its_line() {
    let lab = lab(
        json!(["qdrant_service"]),
        json!({"qdrant_service": stack("qdrant/docker-compose.yml")}),
    );
    let compose = lab.root.path().join("qdrant/docker-compose.yml");
    let o = lab.deploy(&["run"]);
    lab.refused(
        &o,
        &[
            "stack qdrant_service (VM 1001 (Portainer))",
            &format!("cannot read compose file '{}'", compose.display()),
        ],
    );
    // A tab where YAML wants spaces, on line 4.
    lab.put(
        "qdrant/docker-compose.yml",
        "services:\n  qdrant:\n    image: qdrant/qdrant:latest\n\tports: []\n",
    );
    let o = lab.deploy(&["run"]);
    lab.refused(
        &o,
        &[&format!("compose file '{}' line 4", compose.display())],
    );
    // Valid YAML, not a compose file.
    lab.put("qdrant/docker-compose.yml", "services: []\n");
    let o = lab.deploy(&["run", "--dry-run"]);
    lab.refused(&o, &[&compose.display().to_string(), "services"]);
    // A variable the stack does not set.
    lab.put(
        "qdrant/docker-compose.yml",
        "services:\n  qdrant:\n    image: qdrant/qdrant:${QDRANT_TAG}\n",
    );
    let o = lab.deploy(&["run"]);
    lab.refused(&o, &["services.qdrant.image", "QDRANT_TAG"]);
    assert!(!Path::new(&lab.etc.path().join("state/deploy")).exists());
}

#[test]
fn a_run_writes_its_metrics_for_node_exporter() {
    let lab = lab(
        json!(["qdrant_service"]),
        json!({"qdrant_service": stack("qdrant/docker-compose.yml")}),
    );
    let prom = lab.etc.path().join("textfile/phoenix-deploy.prom");
    let cfg_path = lab.etc.path().join("toolkit.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["deploy"]["metrics_file"] = json!(prom);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    // The compose file is missing: the run fails (2) and says so in the
    // metrics; no stack has converged yet.
    let o = lab.deploy(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("\nphoenix_deploy_last_run_exit_code 2\n"),
        "{text}"
    );
    assert!(
        !text.contains("phoenix_deploy_last_success_seconds "),
        "{text}"
    );
    assert!(
        !text.contains("phoenix_deploy_stack_converged_seconds{"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
}
