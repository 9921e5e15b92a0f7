//! Swarm secrets made from certificates, on a REAL two-node swarm
//! (tests/realswarm_support) with the real step-ca: `phoenix-renew`
//! issues a certificate, and its `post_renewal.swarm_secrets` action must
//! leave every running task of the service reading the new files. Beside
//! it, the old bash chain (`docker secret rm; docker secret create; ...;
//! docker service update --force`) is run on the same swarm to show what
//! it does there: it reports success and the containers keep the old
//! certificate.

mod common;
mod realswarm_support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::TestCa;
use realswarm_support::{text, RealSwarm, IMAGE};

const MANAGER: u32 = 1001;
const WORKER: u32 = 1002;

/// The service's command: runs while the certificate it mounts matches
/// `/pin/cert` (when that exists), else exits 1 at once: a new task that
/// cannot start, on demand.
const SERVICE_CMD: &str = "if [ -e /pin/cert ] && ! cmp -s /pin/cert /certs/tls-cert.pem; \
     then echo 'certificate not the pinned one' >&2; exit 1; fi; exec sleep 1000000";

struct World {
    swarm: RealSwarm,
    /// Serves for the whole test; stopped when dropped.
    _ca: TestCa,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let swarm = RealSwarm::start(&[MANAGER, WORKER]);
    swarm.ensure();
    let ca = TestCa::start(None);
    let dir = tempfile::tempdir().unwrap();
    for d in ["guest-tmp", "certs", "pin", "steppath"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    swarm.write_toolkit(json!({
        "ca": ca.toolkit_ca(),
        "renewal": {"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 60,
                    "guest_drop_dir": dir.path().join("guest-tmp")},
        "swarm": {"update_timeout_secs": 90},
    }));
    World {
        swarm,
        _ca: ca,
        dir,
    }
}

impl World {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A manifest entry for VM 1001 whose files live in `certs/NAME.*`.
    fn entry(&self, name: &str, post: Value) -> Value {
        let mut e = json!({
            "common_name": name,
            "guest_id": MANAGER,
            "guest_type": "vm",
            "cert_path": self.path(&format!("certs/{name}.crt")),
            "key_path": self.path(&format!("certs/{name}.key")),
            "include_ca": true,
        });
        for (k, v) in post.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    }

    fn write_manifest(&self, entries: &[Value]) {
        std::fs::write(
            self.swarm.etc.path().join("certificate-manifest.json"),
            serde_json::to_vec_pretty(entries).unwrap(),
        )
        .unwrap();
    }

    fn renew(&self, args: &[&str]) -> Output {
        let o = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"))
            .args(args)
            .arg("--config")
            .arg(&self.swarm.config)
            .envs(self.swarm.pve.env())
            .env("STEPPATH", self.path("steppath"))
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "phoenix-renew {}: {}\n{}{}",
            args.join(" "),
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        o
    }

    fn file(&self, name: &str, part: &str) -> Vec<u8> {
        let p = match part {
            "cert" => format!("certs/{name}.crt"),
            "key" => format!("certs/{name}.key"),
            _ => "certs/ca.pem".to_string(),
        };
        std::fs::read(self.path(&p)).unwrap()
    }

    /// A service of 2 replicas mounting `secrets` (source, target) and
    /// running [`SERVICE_CMD`]; waits until both tasks run.
    fn create_service(&self, name: &str, secrets: &[(&str, &str)]) {
        let mut args: Vec<String> = [
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            "2",
            "--stop-grace-period",
            "1s",
            "--update-monitor",
            "2s",
            "--mount",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!(
            "type=bind,source={},target=/pin",
            self.path("pin").display()
        ));
        for (source, target) in secrets {
            args.push("--secret".into());
            args.push(format!("source={source},target={target},mode=0400"));
        }
        args.extend([IMAGE.into(), "sh".into(), "-c".into(), SERVICE_CMD.into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.swarm.docker_ok(MANAGER, &argv);
        self.wait_running(name);
    }

    fn wait_running(&self, service: &str) {
        self.swarm.wait_for(
            &format!("2 running tasks of {service}"),
            Duration::from_secs(60),
            || self.containers(service).len() == 2,
        );
    }

    /// (VM, container id) of every running task of `service`.
    fn containers(&self, service: &str) -> Vec<(u32, String)> {
        let filter = format!("label=com.docker.swarm.service.name={service}");
        [MANAGER, WORKER]
            .iter()
            .flat_map(|&vm| {
                self.swarm
                    .docker_ok(vm, &["ps", "-q", "--filter", &filter])
                    .lines()
                    .map(|id| (vm, id.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// What every running task of `service` reads at `path`.
    fn read_in_tasks(&self, service: &str, path: &str) -> Vec<Vec<u8>> {
        self.containers(service)
            .iter()
            .map(|(vm, id)| {
                let o = self.swarm.docker(*vm, &["exec", id, "cat", path]);
                assert!(
                    o.status.success(),
                    "cat {path} in {id}: {}",
                    text(&o.stderr)
                );
                o.stdout
            })
            .collect()
    }

    /// Names of the swarm's secrets, sorted.
    fn secret_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .swarm
            .docker_ok(MANAGER, &["secret", "ls", "--format", "{{.Name}}"])
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    /// The secrets `service` mounts: (secret name, target).
    fn mounted(&self, service: &str) -> Vec<(String, String)> {
        let out = self.swarm.docker_ok(
            MANAGER,
            &[
                "service",
                "inspect",
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}",
                service,
            ],
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut refs: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["SecretName"].as_str().unwrap().to_string(),
                    r["File"]["Name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        refs.sort();
        refs
    }

    /// Every line of `bytes` that is not a PEM armour line.
    fn secret_lines(bytes: &[u8]) -> Vec<String> {
        text(bytes)
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(String::from)
            .collect()
    }

    /// No line of the key in any argv the fake qm recorded, nor in `outputs`.
    fn assert_key_never_shown(&self, name: &str, outputs: &[&Output]) {
        let key = self.file(name, "key");
        let lines = Self::secret_lines(&key);
        assert!(!lines.is_empty());
        for call in self.swarm.pve.calls() {
            let argv = call["argv"].to_string();
            for l in &lines {
                assert!(!argv.contains(l.as_str()), "a key line in argv: {argv}");
            }
        }
        for o in outputs {
            let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
            for l in &lines {
                assert!(!all.contains(l.as_str()), "a key line in the output");
            }
        }
    }
}

/// `PREFIX_tls_PART.pem-` and 12 hex digits.
fn is_version(name: &str, prefix: &str) -> bool {
    let Some((logical, digest)) = name.rsplit_once('-') else {
        return false;
    };
    ["cert", "key", "ca"]
        .iter()
        .any(|p| logical == format!("{prefix}_tls_{p}.pem"))
        && digest.len() == 12
        && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

fn swarm_post(prefix: &str, service: &str) -> Value {
    json!({"post_renewal": {
        "swarm_secrets": {"cert": format!("{prefix}_tls_cert.pem"),
                          "key": format!("{prefix}_tls_key.pem"),
                          "ca": format!("{prefix}_tls_ca.pem")},
        "services": [service]}})
}

/// The Phoenix manifest's Portainer chain, with our names and drop dir.
fn legacy_chain(prefix: &str, service: &str, drop: &str) -> String {
    format!(
        "qm guest exec {MANAGER} -- /bin/bash -c 'SECRET_CERT=\"{prefix}_tls_cert.pem\"; \
         SECRET_KEY=\"{prefix}_tls_key.pem\"; SECRET_CA=\"{prefix}_tls_ca.pem\"; \
         SERVICE_NAME=\"{service}\"; \
         if docker secret inspect $SECRET_CERT >/dev/null 2>&1; then docker secret rm $SECRET_CERT; fi; \
         docker secret create $SECRET_CERT {drop}/cert.pem; \
         if docker secret inspect $SECRET_KEY >/dev/null 2>&1; then docker secret rm $SECRET_KEY; fi; \
         docker secret create $SECRET_KEY {drop}/key.pem; \
         if docker secret inspect $SECRET_CA >/dev/null 2>&1; then docker secret rm $SECRET_CA; fi; \
         docker secret create $SECRET_CA {drop}/ca.pem; \
         if docker service inspect $SERVICE_NAME >/dev/null 2>&1; then docker service update --force $SERVICE_NAME; fi'"
    )
}

/// The state the bash left: unversioned secrets with old content, and a
/// running service mounting them.
fn legacy_state(w: &World, prefix: &str, service: &str) {
    for part in ["cert", "key", "ca"] {
        let name = format!("{prefix}_tls_{part}.pem");
        let o = w.swarm.docker_stdin(
            MANAGER,
            &["secret", "create", &name, "-"],
            format!("old {part} of {prefix}\n").as_bytes(),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    w.create_service(
        service,
        &[
            (&format!("{prefix}_tls_cert.pem"), "/certs/tls-cert.pem"),
            (&format!("{prefix}_tls_key.pem"), "/certs/tls-key.pem"),
            (&format!("{prefix}_tls_ca.pem"), "/certs/ca.pem"),
        ],
    );
}

#[test]
fn secrets_in_use_are_rotated_into_running_tasks_where_the_legacy_chain_fails_quietly() {
    let w = world();
    legacy_state(&w, "portainer", "portainer");
    legacy_state(&w, "legacy", "legacy");
    let drop = w.path("guest-tmp").display().to_string();
    w.write_manifest(&[
        w.entry("portainer.test", swarm_post("portainer", "portainer")),
        w.entry(
            "legacy.test",
            json!({"post_renewal_command": legacy_chain("legacy", "legacy", &drop)}),
        ),
    ]);

    let run = w.renew(&["run", "-vv"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    // The plan names the legacy chain and its structured equivalent.
    let err = text(&run.stderr);
    assert!(
        err.contains(
            "legacy.test: post_renewal_command removes and recreates Docker secrets in place"
        ),
        "{err}"
    );
    assert!(
        err.contains(r#""swarm_secrets": {"cert": "legacy_tls_cert.pem", "key": "legacy_tls_key.pem", "ca": "legacy_tls_ca.pem"}, "services": ["legacy"]"#),
        "{err}"
    );

    // Every running task of the rotated service reads the new files, at
    // the targets the bash gave them.
    for (part, path) in [
        ("cert", "/certs/tls-cert.pem"),
        ("key", "/certs/tls-key.pem"),
        ("ca", "/certs/ca.pem"),
    ] {
        let want = w.file("portainer.test", part);
        let seen = w.read_in_tasks("portainer", path);
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter().all(|s| *s == want),
            "{part} in portainer's tasks is not the new one"
        );
    }
    let mounted = w.mounted("portainer");
    let targets: Vec<&str> = mounted.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        targets,
        ["/certs/ca.pem", "/certs/tls-cert.pem", "/certs/tls-key.pem"]
    );
    for (name, _) in &mounted {
        assert!(
            is_version(name, "portainer"),
            "{name} is not a versioned name"
        );
    }
    // The old unversioned secrets are gone; one version of each name left.
    let names = w.secret_names();
    let portainer: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("portainer_"))
        .collect();
    assert_eq!(portainer.len(), 3, "{names:?}");
    assert!(
        !names.contains(&"portainer_tls_cert.pem".to_string()),
        "{names:?}"
    );

    // The legacy chain "succeeded" and changed nothing in the service.
    for (part, path) in [
        ("cert", "/certs/tls-cert.pem"),
        ("key", "/certs/tls-key.pem"),
    ] {
        let old = format!("old {part} of legacy\n").into_bytes();
        let seen = w.read_in_tasks("legacy", path);
        assert!(
            !seen.is_empty() && seen.iter().all(|s| *s == old),
            "legacy {part} changed"
        );
    }
    assert!(
        names.contains(&"legacy_tls_cert.pem".to_string()),
        "{names:?}"
    );

    // Status shows the warning; no key line in any argv or output.
    let status = w.renew(&["status"]);
    assert!(
        text(&status.stdout).contains("warning: legacy.test: post_renewal_command removes"),
        "{}",
        text(&status.stdout)
    );
    w.assert_key_never_shown("portainer.test", &[&run, &status]);
    // The bytes went on stdin of `qm guest exec --pass-stdin`.
    let creates: Vec<_> = w
        .swarm
        .guest_calls()
        .into_iter()
        .filter(|c| {
            c.argv
                .windows(2)
                .any(|p| p[0] == "secret" && p[1] == "create")
                && c.argv.last().map(String::as_str) == Some("-")
        })
        .collect();
    assert_eq!(creates.len(), 3, "{creates:?}");
    assert!(creates.iter().all(|c| c.stdin_bytes > 0));
}

/// The versions of `prefix`'s three secrets, sorted.
fn versions(w: &World, prefix: &str) -> Vec<String> {
    w.secret_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}_")))
        .collect()
}

fn state_file(w: &World) -> PathBuf {
    w.swarm.etc.path().join("state/renew-state.json")
}

#[test]
fn three_rotations_in_a_row_then_nothing_to_do() {
    let w = world();
    w.write_manifest(&[w.entry("web.test", swarm_post("web", "web"))]);

    // No service yet: the secrets are made, a warning, no failure.
    let first = w.renew(&["run"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("service web does not exist (yet)"),
        "{}",
        text(&first.stderr)
    );
    let v0 = versions(&w, "web");
    assert_eq!(v0.len(), 3, "{v0:?}");
    assert!(v0.iter().all(|n| is_version(n, "web")), "{v0:?}");
    let current = |part: &str, vs: &[String]| {
        vs.iter()
            .find(|n| n.starts_with(&format!("web_tls_{part}.pem-")))
            .unwrap()
            .clone()
    };
    w.create_service(
        "web",
        &[
            (&current("cert", &v0), "/certs/tls-cert.pem"),
            (&current("key", &v0), "/certs/tls-key.pem"),
            (&current("ca", &v0), "/certs/ca.pem"),
        ],
    );

    let mut seen = vec![v0];
    for round in 1..=3 {
        let o = w.renew(&["run", "--force"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "round {round}: {}",
            text(&o.stderr)
        );
        let vs = versions(&w, "web");
        assert_eq!(
            vs.len(),
            3,
            "round {round}: one version of each name: {vs:?}"
        );
        assert_ne!(
            current("cert", &vs),
            current("cert", seen.last().unwrap()),
            "round {round}: a new certificate is a new secret"
        );
        let mounted: Vec<String> = w.mounted("web").into_iter().map(|(n, _)| n).collect();
        let mut want = vs.clone();
        want.sort();
        let mut got = mounted.clone();
        got.sort();
        assert_eq!(
            got, want,
            "round {round}: the service mounts the current versions"
        );
        for (part, path) in [
            ("cert", "/certs/tls-cert.pem"),
            ("key", "/certs/tls-key.pem"),
        ] {
            let new = w.file("web.test", part);
            let read = w.read_in_tasks("web", path);
            assert_eq!(read.len(), 2);
            assert!(
                read.iter().all(|r| *r == new),
                "round {round}: {part} not rotated"
            );
        }
        seen.push(vs);
    }

    // Nothing due: no call into the swarm at all.
    let n = w.swarm.guest_calls().len();
    let idle = w.renew(&["run"]);
    assert_eq!(idle.status.code(), Some(0));
    assert_eq!(w.swarm.guest_calls_since(n), vec![]);

    // The action again with the same content (a pending action after a
    // crash, say): one read, no write.
    let mut st: Value = serde_json::from_slice(&std::fs::read(state_file(&w)).unwrap()).unwrap();
    st["certificates"]["web.test"]["post_pending"] = json!(true);
    std::fs::write(state_file(&w), st.to_string()).unwrap();
    let again = w.renew(&["run"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    let calls: Vec<Vec<String>> = w
        .swarm
        .guest_calls_since(n)
        .into_iter()
        .filter_map(|c| c.docker())
        .collect();
    assert_eq!(
        calls,
        vec![["secret", "ls", "--format", "{{json .}}"]
            .map(String::from)
            .to_vec()]
    );
}

#[test]
fn an_update_whose_tasks_cannot_start_is_rolled_back_and_retried() {
    let w = world();
    legacy_state(&w, "app", "app");
    let old_cert = b"old cert of app\n".to_vec();
    // The running tasks read the pinned content; a task with any other
    // certificate exits at once.
    std::fs::write(w.path("pin/cert"), &old_cert).unwrap();
    w.write_manifest(&[w.entry("app.test", swarm_post("app", "app"))]);

    let o = w.renew(&["run"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("service app: the update onto the new secrets paused"),
        "{err}"
    );
    assert!(err.contains("rolled back to the old ones"), "{err}");
    assert!(err.contains("old secret versions kept"), "{err}");
    // Back on the old secrets, which are all still there.
    w.swarm.wait_for(
        "app's tasks back on the old certificate",
        Duration::from_secs(60),
        || {
            let read = w.read_in_tasks("app", "/certs/tls-cert.pem");
            read.len() == 2 && read.iter().all(|r| *r == old_cert)
        },
    );
    let names = versions(&w, "app");
    for legacy in ["app_tls_cert.pem", "app_tls_key.pem", "app_tls_ca.pem"] {
        assert!(
            names.contains(&legacy.to_string()),
            "{legacy} was removed: {names:?}"
        );
    }
    let status = w.renew(&["status", "--json"]);
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["last_result"], "failed", "{rows}");

    // The cause goes away: the next run (nothing due, the action pending)
    // rotates.
    std::fs::remove_file(w.path("pin/cert")).unwrap();
    let o = w.renew(&["run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let new = w.file("app.test", "cert");
    let read = w.read_in_tasks("app", "/certs/tls-cert.pem");
    assert!(read.len() == 2 && read.iter().all(|r| *r == new));
    let names = versions(&w, "app");
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| is_version(n, "app")), "{names:?}");
}

#[test]
fn a_name_docker_would_refuse_stops_the_plan_naming_entry_and_field() {
    // No swarm needed: the manifest is refused before anything runs.
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path();
    std::fs::write(
        etc.join("phoenix_vm_configs.json"),
        r#"{"vms": [{"vmid": 1001, "name": "p", "swarm_role": "manager",
            "network_config": {"ip": "10.0.0.111/24"}}]}"#,
    )
    .unwrap();
    let entry = json!([{"common_name": "p.test", "guest_id": 1001, "guest_type": "vm",
        "cert_path": etc.join("p.crt"), "key_path": etc.join("p.key"),
        "post_renewal": {"swarm_secrets": {"cert": "p cert"}, "services": ["p"]}}]);
    std::fs::write(etc.join("certificate-manifest.json"), entry.to_string()).unwrap();
    std::fs::write(
        etc.join("toolkit.json"),
        json!({"phoenix_etc": etc, "lock_dir": etc.join("lock"), "state_dir": etc.join("state")})
            .to_string(),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"))
        .args(["run", "--config"])
        .arg(etc.join("toolkit.json"))
        .env_remove("PHOENIX_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("[0].post_renewal.swarm_secrets.cert ('p.test')"),
        "{err}"
    );
    assert!(err.contains("'p cert' has ' '"), "{err}");
    assert!(!etc.join("state").exists(), "nothing written");
}
