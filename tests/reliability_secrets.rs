//! Secrets never leak: renewal and swarm runs at the highest verbosity,
//! with the fakes recording every argv and environment they were given.
//! The provisioner password, every private key's base64 body and every
//! swarm join token are looked for in all of it, in the binaries' output
//! and in every file the runs wrote beside the keys. Keys on disk are
//! never world-readable, and group-readable only when the manifest names
//! a group.

mod common;
mod reliability_support;
mod renew_support;
mod swarm_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use renew_support::{stderr, stdout, Bench};
use serde_json::{json, Value};

/// Every line of `text` that carries one of `secrets`.
fn leaks(what: &str, text: &str, secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .map(|s| format!("{what} carries '{}...'", &s[..s.len().min(12)]))
        .collect()
}

/// The base64 body lines of a PEM key (the key itself, line by line).
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(String::from)
        .collect()
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn renewal_leaks_no_key_and_no_password() {
    let b = Bench::new();
    let ct = b.pve.add_ct(101);
    let vm = b.pve.add_vm(1001);
    for g in [&ct, &vm] {
        b.pve.guest_command(g, "systemctl", "#!/bin/sh\nexit 0\n");
    }
    let d = b.path("pve/ssl");
    b.write_manifest(&json!([
        {"common_name": "web.test", "sans": ["web.test"], "guest_id": 101, "guest_type": "lxc",
         "owner": "0:33", "cert_path": d.join("101/web.crt"), "key_path": d.join("101/web.key"),
         "post_renewal": {"run": ["systemctl", "reload", "nginx"]}},
        {"common_name": "vm.test", "sans": ["10.0.0.111"], "guest_id": 1001, "guest_type": "vm",
         "cert_path": d.join("1001/cert.pem"), "key_path": d.join("1001/key.pem"), "include_ca": true,
         "post_renewal": {"run": ["systemctl", "restart", "docker"]}}
    ]));
    let mut output = String::new();
    let mut keys = Vec::new();
    // Issue, renew (everything due), then issue anew (new keys).
    for args in [
        vec!["run"],
        vec!["run", "--renew-now"],
        vec!["run", "--force"],
    ] {
        let mut a = vec!["-v", "-v"];
        a.extend(args);
        let out = b.run(&a);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        output.push_str(&stdout(&out));
        output.push_str(&stderr(&out));
        for k in ["101/web.key", "1001/key.pem"] {
            keys.extend(key_lines(&std::fs::read_to_string(d.join(k)).unwrap()));
        }
    }
    let out = b.run(&["status", "--json"]);
    output.push_str(&stdout(&out));
    let password = std::fs::read_to_string(b.ca.password_file()).unwrap();
    let mut secrets = vec![password.trim().to_string()];
    secrets.extend(keys);
    assert!(secrets.len() > 4, "no key lines found");
    // A debug line: the runs spoke at their most verbose.
    assert!(output.contains("planned 2 certificates in"), "{output}");

    let calls = std::fs::read_to_string(b.pve.dir.path().join("calls.jsonl")).unwrap();
    let recorded: Vec<Value> = calls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        recorded.iter().all(|c| c["env"].is_object()),
        "a fake did not record its environment"
    );
    let mut found = leaks("qm/pct argv or environment", &calls, &secrets);
    found.extend(leaks("phoenix-renew output", &output, &secrets));
    // Every file the runs wrote, but the keys themselves.
    for f in files(b.dir.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".key") || name == "key.pem" || f.starts_with(b.path("steppath")) {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        found.extend(leaks(&f.display().to_string(), &text, &secrets));
    }
    // Keys: 0640 where the manifest names group 33, 0600 elsewhere.
    for (k, mode) in [("101/web.key", 0o640), ("1001/key.pem", 0o600)] {
        let m = std::fs::metadata(d.join(k)).unwrap().mode() & 0o777;
        if m != mode {
            found.push(format!("{k} has mode {m:o}, not {mode:o}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    reliability_support::figures(&[(
        "secrets-renew-scanned",
        "fake qm/pct calls (argv + environment) scanned for the password and every key line, renewal at -vv",
        recorded.len().to_string(),
    )]);
}

#[test]
fn swarm_leaks_no_join_token() {
    let lab = swarm_support::Lab::new();
    let mut output = String::new();
    for _ in 0..2 {
        let o = lab.swarm(&["ensure", "-v", "-v"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            swarm_support::text(&o.stderr)
        );
        output.push_str(&swarm_support::text(&o.stdout));
        output.push_str(&swarm_support::text(&o.stderr));
    }
    let tokens = lab.tokens();
    assert!(!tokens.is_empty(), "the fake swarm has no token");
    let qm = std::fs::read_to_string(lab.pve.dir.path().join("calls.jsonl")).unwrap();
    let mut found = leaks("qm argv or environment", &qm, &tokens);
    found.extend(leaks("phoenix-swarm output", &output, &tokens));
    // Inside the worker, `docker swarm join --token T` is docker's only
    // interface: the token is on that argv in the guest, never elsewhere.
    let docker = std::fs::read_to_string(lab.pve.dir.path().join("docker/calls.jsonl")).unwrap();
    let mut joins = 0;
    for line in docker.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let argv: Vec<&str> = v["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if argv.starts_with(&["swarm", "join"]) {
            joins += 1;
            found.extend(leaks(
                "the guest's docker environment",
                &v["env"].to_string(),
                &tokens,
            ));
        } else {
            found.extend(leaks(&format!("docker {}", argv.join(" ")), line, &tokens));
        }
    }
    assert_eq!(joins, 1, "{docker}");
    assert!(found.is_empty(), "{}", found.join("\n"));
    reliability_support::figures(&[(
        "secrets-swarm-scanned",
        "fake qm and docker calls (argv + environment) scanned for every join token, two `ensure -vv` runs",
        (qm.lines().count() + docker.lines().count()).to_string(),
    )]);
}
