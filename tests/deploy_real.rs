//! `phoenix-deploy` on a REAL two-node swarm (tests/realswarm_support):
//! stacks placed on the node of the VM that lists them, the Portainer
//! stack with its certificate secrets (made by `phoenix-renew` from the
//! real step-ca), a host-file secret and its overlay network, the redeploy
//! a rotation needs, a second run that deploys nothing, and a task whose
//! image the node lacks. What is asserted is what an operator would look
//! at: where the tasks run, what the containers read, which docker
//! commands reached the manager, the exit status and the message.
//!
//! Images Phoenix names (`portainer/portainer-ce:latest`,
//! `qdrant/qdrant:latest`) are the harness's busybox image tagged with
//! those names on every node: nothing is pulled.

mod common;
mod realswarm_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::TestCa;
use realswarm_support::{text, RealSwarm, IMAGE};

const MANAGER: u32 = 1001;
const WORKER: u32 = 1002;

/// A Qdrant-shaped stack: list-form environment, `constraints: []`,
/// an external overlay network, a `$$` the container's shell must see.
const QDRANT: &str = r#"version: '3.8'
services:
  qdrant:
    image: qdrant/qdrant:latest
    command: ["sh", "-c", "echo \"port=$$API_PORT\"; exec sleep 1000000"]
    stop_grace_period: 1s
    environment:
      - QDRANT__LOG_LEVEL=INFO
    networks:
      - traefik-public
    deploy:
      replicas: 1
      placement:
        constraints: []
      labels: {}

networks:
  traefik-public:
    external: true
"#;

/// A Portainer-shaped stack (no `version`, long-form secrets with
/// absolute targets, a manager constraint, an ingress port).
const PORTAINER: &str = r#"services:
  portainer:
    image: portainer/portainer-ce:latest
    command: ["sh", "-c", "exec sleep 1000000"]
    stop_grace_period: 1s
    ports:
      - target: 9443
        published: 19443
        protocol: tcp
        mode: ingress
    networks:
      - traefik-public
    deploy:
      replicas: 1
      update_config:
        monitor: 2s
      placement:
        constraints:
          - node.role == manager
      labels: {}
    secrets:
      - portainer_admin_password
      - source: portainer_tls_ca.pem
        target: /certs/ca.pem
        mode: 0644
      - source: portainer_tls_cert.pem
        target: /certs/tls-cert.pem
        mode: 0644
      - source: portainer_tls_key.pem
        target: /certs/tls-key.pem
        mode: 0600

networks:
  traefik-public:
    external: true

secrets:
  portainer_admin_password:
    external: true
  portainer_tls_ca.pem:
    external: true
  portainer_tls_cert.pem:
    external: true
  portainer_tls_key.pem:
    external: true
"#;

struct World {
    swarm: RealSwarm,
    /// `deploy.stacks_root`.
    root: tempfile::TempDir,
}

/// A formed two-node swarm whose VMs list `stacks` (manager, worker),
/// the images Phoenix names tagged on every node.
fn world(manager_stacks: &[&str], worker_stacks: &[&str]) -> World {
    let swarm = RealSwarm::start(&[MANAGER, WORKER]);
    swarm.write_vm_configs_with_stacks(&[
        (MANAGER, &[], manager_stacks),
        (WORKER, &["gpu=false"], worker_stacks),
    ]);
    swarm.ensure();
    for vm in [MANAGER, WORKER] {
        for name in ["portainer/portainer-ce:latest", "qdrant/qdrant:latest"] {
            swarm.docker_ok(vm, &["image", "tag", IMAGE, name]);
        }
    }
    let root = tempfile::tempdir().unwrap();
    World { swarm, root }
}

impl World {
    fn put(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    fn write_stacks(&self, stacks: Value) {
        std::fs::write(
            self.swarm.etc.path().join("phoenix_stacks_config.json"),
            serde_json::to_vec_pretty(&json!({ "docker_stacks": stacks })).unwrap(),
        )
        .unwrap();
    }

    fn deploy(&self, args: &[&str]) -> Output {
        let o = self.swarm.deploy(args);
        eprintln!(
            "phoenix-deploy {}: {}\n{}{}",
            args.join(" "),
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        o
    }

    /// `docker stack deploy` calls that reached a VM since call `n`.
    fn stack_deploys_since(&self, n: usize) -> Vec<String> {
        self.swarm
            .guest_calls_since(n)
            .iter()
            .filter(|c| {
                c.argv
                    .iter()
                    .take(3)
                    .eq(["docker", "stack", "deploy"].iter())
            })
            .map(|c| c.argv.join(" "))
            .collect()
    }

    /// Hostnames of the nodes running `service`'s tasks.
    fn nodes_running(&self, service: &str) -> Vec<String> {
        self.swarm
            .docker_ok(
                MANAGER,
                &[
                    "service",
                    "ps",
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Node}} {{.CurrentState}}",
                    service,
                ],
            )
            .lines()
            .filter(|l| l.contains("Running"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    }

    /// (VM, container id) of the running task of `service`.
    fn container(&self, service: &str) -> (u32, String) {
        let filter = format!("label=com.docker.swarm.service.name={service}");
        let found: Vec<(u32, String)> = [MANAGER, WORKER]
            .iter()
            .flat_map(|&vm| {
                self.swarm
                    .docker_ok(vm, &["ps", "-q", "--filter", &filter])
                    .lines()
                    .map(|id| (vm, id.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(found.len(), 1, "one running task of {service}: {found:?}");
        found.into_iter().next().unwrap()
    }

    /// Run `sh -c script` in the running task of `service`.
    fn in_task(&self, service: &str, script: &str) -> String {
        let (vm, id) = self.container(service);
        self.swarm.docker_ok(vm, &["exec", &id, "sh", "-c", script])
    }

    fn service_spec(&self, service: &str) -> Value {
        let out = self.swarm.docker_ok(
            MANAGER,
            &["service", "inspect", "--format", "{{json .Spec}}", service],
        );
        serde_json::from_str(&out).unwrap()
    }
}

fn qdrant_stack(compose_path: &str) -> Value {
    json!({
        "description": "Qdrant vector database for RAG.",
        "compose_file_path": compose_path,
        "environments": {
            "production": {
                "variables": [
                    {"name": "API_PORT", "value": "6333"},
                    {"name": "DATABASE_PASS", "value": "s3cr$t-pass"}
                ],
                "files": [
                    {"source": "persistent-storage/qdrant/configs/prod.env",
                     "destination_in_container": "/app/.env"}
                ],
                "services": {"qdrant": {"traefik_labels": [
                    "traefik.enable=true",
                    "traefik.http.routers.qdrant.rule=Host(`qdrant.internal.test`)"
                ]}}
            },
            "testing": {"variables": [{"name": "API_PORT", "value": "6334"}]}
        }
    })
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status\n{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn a_stack_runs_on_the_node_of_its_vm_and_a_second_run_deploys_nothing() {
    let w = world(&[], &["qdrant_service"]);
    w.put("persistent-storage/qdrant/docker-compose.yml", QDRANT);
    w.put(
        "persistent-storage/qdrant/configs/prod.env",
        "QDRANT_MODE=prod\n",
    );
    w.write_stacks(json!({
        "qdrant_service": qdrant_stack("persistent-storage/qdrant/docker-compose.yml")
    }));
    w.swarm.write_toolkit(json!({"deploy": {
        "stacks_root": w.root.path(),
        "networks": {"traefik-public": {"driver": "overlay", "attachable": true}},
        "converge_timeout_secs": 90,
    }}));

    let before = w.swarm.guest_calls().len();
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    assert!(
        text(&o.stdout).contains("created network traefik-public (overlay)"),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).contains("stack qdrant_service (VM 1002 (vm1002)): deployed"));
    let deploys = w.stack_deploys_since(before);
    assert_eq!(
        deploys,
        ["docker stack deploy --prune --resolve-image never -c - qdrant_service"]
    );
    // Every docker command ran on the manager, the compose on stdin.
    assert!(w
        .swarm
        .guest_calls_since(before)
        .iter()
        .all(|c| c.vmid == MANAGER));

    // On the worker's node, and only there: the label phoenix-swarm set.
    assert_eq!(w.nodes_running("qdrant_service_qdrant"), ["vm1002"]);
    let spec = w.service_spec("qdrant_service_qdrant");
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Constraints"],
        json!(["node.labels.phoenix.vmid == 1002"])
    );
    assert_eq!(spec["Labels"]["traefik.enable"], "true");
    assert_eq!(
        spec["Labels"]["traefik.http.routers.qdrant.rule"],
        "Host(`qdrant.internal.test`)"
    );
    // Variables in the environment, `$` kept literal; the file mounted.
    let seen = w.in_task(
        "qdrant_service_qdrant",
        "echo \"$API_PORT|$DATABASE_PASS|$QDRANT__LOG_LEVEL\"; cat /app/.env",
    );
    assert_eq!(seen, "6333|s3cr$t-pass|INFO\nQDRANT_MODE=prod\n");
    let net = w.swarm.docker_ok(
        MANAGER,
        &[
            "network",
            "inspect",
            "--format",
            "{{.Driver}} {{.Attachable}}",
            "traefik-public",
        ],
    );
    assert_eq!(net.trim(), "overlay true");

    // Nothing changed: no deploy, no write.
    let before = w.swarm.guest_calls().len();
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    assert!(text(&o.stdout).contains("current, not deployed again"));
    assert!(text(&o.stdout).contains("no change"));
    let calls = w.swarm.guest_calls_since(before);
    assert!(
        calls.iter().all(|c| !c.is_mutating()),
        "a second run changed something: {:?}",
        calls.iter().map(|c| c.show()).collect::<Vec<_>>()
    );

    let st = w.swarm.deploy(&["status"]);
    assert_exit(&st, 0);
    let line = text(&st.stdout)
        .lines()
        .find(|l| l.starts_with("qdrant_service"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains("1002 (vm1002)") && line.contains("1/1"),
        "{line}"
    );

    // A file that changes is a new secret version: redeployed, the old
    // version removed once no service uses it.
    w.put(
        "persistent-storage/qdrant/configs/prod.env",
        "QDRANT_MODE=prod2\n",
    );
    let dry = w.deploy(&["run", "--dry-run"]);
    assert_exit(&dry, 0);
    let shown = text(&dry.stdout);
    assert!(
        shown.contains("would deploy (its compose or a secret changed)"),
        "{shown}"
    );
    assert!(shown.contains("-    name: qdrant_service.env-"), "{shown}");
    assert!(!shown.contains("s3cr$$t-pass") && shown.contains("<redacted DATABASE_PASS>"));
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    assert!(text(&o.stdout).contains("removed old swarm secret qdrant_service.env-"));
    assert_eq!(
        w.in_task("qdrant_service_qdrant", "cat /app/.env"),
        "QDRANT_MODE=prod2\n"
    );

    // The stack removed by hand is deployed again.
    w.swarm
        .docker_ok(MANAGER, &["stack", "rm", "qdrant_service"]);
    w.swarm
        .wait_for("the stack's service gone", Duration::from_secs(30), || {
            w.swarm
                .docker_ok(MANAGER, &["service", "ls", "-q"])
                .trim()
                .is_empty()
        });
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    assert_eq!(w.nodes_running("qdrant_service_qdrant"), ["vm1002"]);
}

#[test]
fn an_image_the_node_lacks_fails_naming_service_and_docker_error() {
    let w = world(&["broken"], &[]);
    w.put(
        "broken/docker-compose.yml",
        "version: '3.8'\nservices:\n  web:\n    image: phoenix/not-here:1\n    command: [\"sleep\", \"1000\"]\n",
    );
    w.write_stacks(json!({
        "broken": {"compose_file_path": "broken/docker-compose.yml",
                   "environments": {"production": {}}}
    }));
    w.swarm.write_toolkit(json!({"deploy": {
        "stacks_root": w.root.path(),
        "converge_timeout_secs": 120,
    }}));
    let started = std::time::Instant::now();
    let o = w.deploy(&["run"]);
    let took = started.elapsed();
    assert_exit(&o, 1);
    let err = text(&o.stderr);
    assert!(err.contains("service broken_web"), "{err}");
    assert!(err.contains("No such image: phoenix/not-here:1"), "{err}");
    assert!(err.contains("node vm1001"), "{err}");
    // It gave up on the failing tasks, not at the bound.
    assert!(took < Duration::from_secs(120), "took {took:?}");
    // Nothing recorded: the next run tries again.
    assert!(!w.swarm.etc.path().join("state/deploy/broken.json").exists());
    let st = w.swarm.deploy(&["status", "--json"]);
    assert_exit(&st, 1);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["stacks"][0]["services"][0]["running"], 0);
    assert!(v["stacks"][0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("No such image"));
}

/// The Portainer stack after `phoenix-renew` made its certificate
/// secrets: deployed with the current versions; after a renewal rotated
/// them into the service, deployed again with the new names (its compose
/// changed) without the old versions coming back.
#[test]
fn portainer_runs_with_its_certificate_secrets_and_follows_a_rotation() {
    let w = world(&["portainer_service"], &[]);
    let ca = TestCa::start(None);
    let dir = tempfile::tempdir().unwrap();
    for d in ["guest-tmp", "certs", "steppath"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let password = dir.path().join("portainer_admin_password");
    std::fs::write(&password, "admin-pass-1").unwrap();
    w.put("portainer/docker-compose.yml", PORTAINER);
    w.write_stacks(json!({
        "portainer_service": {"compose_file_path": "portainer/docker-compose.yml",
            "nginx_proxy": {"hostname": "portainer.internal.test"},
            "environments": {"production": {"variables": [], "files": [],
                "services": {"portainer": {"traefik_labels": ["traefik.enable=true"]}}}}}
    }));
    w.swarm.write_toolkit(json!({
        "ca": ca.toolkit_ca(),
        "renewal": {"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 60,
                    "guest_drop_dir": dir.path().join("guest-tmp")},
        "swarm": {"update_timeout_secs": 90},
        "deploy": {
            "stacks_root": w.root.path(),
            "networks": {"traefik-public": {}},
            "secrets": {"portainer_admin_password": {"file": password}},
            "converge_timeout_secs": 90,
        },
    }));
    let certs = dir.path().join("certs");
    std::fs::write(
        w.swarm.etc.path().join("certificate-manifest.json"),
        serde_json::to_vec_pretty(&json!([{
            "common_name": "portainer.internal.test",
            "guest_id": MANAGER,
            "guest_type": "vm",
            "cert_path": certs.join("portainer.crt"),
            "key_path": certs.join("portainer.key"),
            "include_ca": true,
            "post_renewal": {
                "swarm_secrets": {"cert": "portainer_tls_cert.pem",
                                  "key": "portainer_tls_key.pem",
                                  "ca": "portainer_tls_ca.pem"},
                "services": ["portainer_service_portainer"]
            }
        }]))
        .unwrap(),
    )
    .unwrap();
    let renew = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"))
            .args(args)
            .arg("--config")
            .arg(&w.swarm.config)
            .envs(w.swarm.pve.env())
            .env("STEPPATH", dir.path().join("steppath"))
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!("phoenix-renew: {}\n{}", o.status, text(&o.stderr));
        assert_exit(&o, 0);
    };
    let cert_file = |p: &Path| std::fs::read_to_string(p).unwrap();

    // The sync's order: certificates (secrets made, no service yet), then
    // the deployment.
    renew(&["run"]);
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    let svc = "portainer_service_portainer";
    assert_eq!(w.nodes_running(svc), ["vm1001"]);
    assert_eq!(
        w.in_task(svc, "cat /certs/tls-cert.pem"),
        cert_file(&certs.join("portainer.crt"))
    );
    assert_eq!(
        w.in_task(svc, "cat /run/secrets/portainer_admin_password"),
        "admin-pass-1"
    );
    let mode = w.in_task(svc, "stat -c %a /certs/tls-key.pem");
    assert_eq!(mode.trim(), "600");
    // The password went on stdin, never in an argv.
    for c in w.swarm.guest_calls() {
        assert!(!c.argv.join(" ").contains("admin-pass-1"), "{}", c.show());
    }
    assert!(!text(&o.stdout).contains("admin-pass-1") && !text(&o.stderr).contains("admin-pass-1"));

    // A renewal rotates the secrets into the running service...
    renew(&["run", "--force"]);
    let new_cert = cert_file(&certs.join("portainer.crt"));
    assert_eq!(w.in_task(svc, "cat /certs/tls-cert.pem"), new_cert);
    // ...so the stack's compose now names other versions: deployed again,
    // and the task keeps the new certificate.
    let before = w.swarm.guest_calls().len();
    let o = w.deploy(&["run"]);
    assert_exit(&o, 0);
    assert!(text(&o.stdout).contains("deployed"), "{}", text(&o.stdout));
    assert_eq!(w.stack_deploys_since(before).len(), 1);
    assert_eq!(w.in_task(svc, "cat /certs/tls-cert.pem"), new_cert);
    let mounted: Vec<String> = w.service_spec(svc)["TaskTemplate"]["ContainerSpec"]["Secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["SecretName"].as_str().unwrap().to_string())
        .collect();
    let names = w
        .swarm
        .docker_ok(MANAGER, &["secret", "ls", "--format", "{{.Name}}"]);
    for m in &mounted {
        assert!(
            names.lines().any(|n| n == m),
            "{m} mounted but not in {names}"
        );
    }
    // One version of each certificate secret left: the current one.
    for logical in [
        "portainer_tls_cert.pem",
        "portainer_tls_key.pem",
        "portainer_tls_ca.pem",
    ] {
        let n = names.lines().filter(|n| n.starts_with(logical)).count();
        assert_eq!(n, 1, "versions of {logical}: {names}");
    }
    // And a run after that deploys nothing.
    let before = w.swarm.guest_calls().len();
    assert_exit(&w.deploy(&["run"]), 0);
    assert!(w.stack_deploys_since(before).is_empty());
}
