//! `phoenix-renew run` against a real step-ca and the fake `qm`/`pct`:
//! issue, idempotence, SAN drift, renewal, expiry, CA down, the CA's
//! readiness gate, guest command failures, the lock, a bad manifest, the
//! reference manifest.

mod common;
mod renew_support;

use std::path::{Path, PathBuf};

use renew_support::{listing, mode_owner, stderr, stdout, systemctl_log, Bench, SYSTEMCTL};
use serde_json::{json, Value};

fn certs(b: &Bench) -> PathBuf {
    b.path("pve/ssl")
}

/// Two certificates: a container's (DNS + wildcard + IPv4, group-readable
/// key, reload in the guest) and a VM's (IPv4 + IPv6, CA chain).
fn two_entries(b: &Bench) -> Value {
    let d = certs(b);
    json!([
        {"common_name": "web.test.internal", "sans": ["*.test.internal", "10.0.0.101", "web.test.internal"],
         "guest_id": 101, "guest_type": "lxc",
         "cert_path": d.join("101/web.crt"), "key_path": d.join("101/web.key"),
         "owner": "0:33", "post_renewal": {"run": ["systemctl", "reload", "nginx"]}},
        {"common_name": "docker.test.internal", "sans": ["10.0.0.111", "::1"],
         "guest_id": 1001, "guest_type": "vm",
         "cert_path": d.join("1001/cert.pem"), "key_path": d.join("1001/key.pem"),
         "owner": "root:root", "include_ca": true,
         "post_renewal": {"run": ["systemctl", "restart", "docker"]}}
    ])
}

fn setup_two() -> Bench {
    let b = Bench::new();
    let ct = b.pve.add_ct(101);
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&ct, "systemctl", SYSTEMCTL);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    b.write_manifest(&two_entries(&b));
    b
}

fn ok(o: &std::process::Output) {
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(o));
}

#[test]
fn issues_exact_sans_then_a_second_run_changes_nothing() {
    let b = setup_two();
    let out = b.run(&["run"]);
    ok(&out);
    let d = certs(&b);

    // The exact SAN sets, subject included, as step itself reads them.
    let web = b.inspect(&d.join("101/web.crt"));
    assert_eq!(
        web.sans,
        ["*.test.internal", "10.0.0.101", "web.test.internal"]
    );
    let docker = b.inspect(&d.join("1001/cert.pem"));
    assert_eq!(docker.sans, ["10.0.0.111", "::1", "docker.test.internal"]);

    // Owner and modes: a group-readable key for 0:33, never world-readable.
    assert_eq!(mode_owner(&d.join("101/web.key")), (0o640, 0, 33));
    assert_eq!(mode_owner(&d.join("101/web.crt")), (0o644, 0, 33));
    assert_eq!(mode_owner(&d.join("1001/key.pem")), (0o600, 0, 0));
    assert_eq!(mode_owner(&d.join("1001/ca.pem")), (0o644, 0, 0));
    let ca = std::fs::read_to_string(d.join("1001/ca.pem")).unwrap();
    let root = std::fs::read_to_string(b.ca.root_cert()).unwrap();
    assert!(ca.contains(root.trim()), "ca.pem lacks the root");
    assert_eq!(
        listing(&d.join("101")),
        ["web.crt", "web.key"],
        "temp files left behind"
    );

    // Post-renewal ran in each guest, the VM's after status and ping.
    assert_eq!(
        systemctl_log(&b),
        ["101 reload nginx", "1001 restart docker"]
    );
    let calls = b.pve_calls();
    let vm_calls: Vec<&String> = calls.iter().filter(|c| c.starts_with("qm")).collect();
    assert_eq!(vm_calls.len(), 3, "{calls:?}");
    assert_eq!(vm_calls[0], "qm status 1001");
    assert_eq!(vm_calls[1], "qm guest cmd 1001 ping");
    assert!(
        vm_calls[2].starts_with("qm guest exec 1001 --timeout 20 -- systemctl restart docker"),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"pct exec 101 -- systemctl reload nginx".to_string()),
        "{calls:?}"
    );

    // Second run: same serials, no post-renewal, no guest call at all.
    let key_before = std::fs::read(d.join("101/web.key")).unwrap();
    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(b.inspect(&d.join("101/web.crt")).serial, web.serial);
    assert_eq!(b.inspect(&d.join("1001/cert.pem")).serial, docker.serial);
    assert_eq!(std::fs::read(d.join("101/web.key")).unwrap(), key_before);
    assert_eq!(systemctl_log(&b).len(), 2);
    assert_eq!(
        b.pve_calls().len(),
        calls.len(),
        "second run called a guest"
    );

    // Status shows both as up to date, and metrics are written.
    let prom = b.path("metrics/renew.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let out = b.run(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    ok(&out);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["serial"].as_str(), Some(web.serial.as_str()));
    for r in rows.as_array().unwrap() {
        assert_eq!(r["next_action"], "nothing", "{r}");
        assert_eq!(r["last_result"], "unchanged", "{r}");
    }
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains(
            "phoenix_cert_renewal_failures{name=\"web.test.internal\",guest=\"CT 101\"} 0"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("phoenix_cert_not_after_seconds{name=\"docker.test.internal\""),
        "{metrics}"
    );
    // Another key put in place (the key match is remembered per key file
    // digest, never per path): seen, and repaired.
    std::fs::copy(d.join("1001/key.pem"), d.join("101/web.key")).unwrap();
    let out = b.run(&["run"]);
    ok(&out);
    assert!(
        stderr(&out).contains("web.test.internal: issuing (key does not match"),
        "{}",
        stderr(&out)
    );
    assert_ne!(b.inspect(&d.join("101/web.crt")).serial, web.serial);
    assert_eq!(b.inspect(&d.join("1001/cert.pem")).serial, docker.serial);

    let table = stdout(&b.run(&["status"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web.test.internal") && l.contains("CT 101")),
        "{table}"
    );
}

#[test]
fn san_drift_reissues_only_that_entry() {
    let b = setup_two();
    ok(&b.run(&["run"]));
    let d = certs(&b);
    let docker = b.inspect(&d.join("1001/cert.pem"));
    let web = b.inspect(&d.join("101/web.crt"));

    // Reordering SANs is no drift; adding one is.
    let mut m = two_entries(&b);
    m[0]["sans"] = json!(["web.test.internal", "10.0.0.101", "*.test.internal"]);
    b.write_manifest(&m);
    ok(&b.run(&["run"]));
    assert_eq!(b.inspect(&d.join("101/web.crt")).serial, web.serial);

    m[1]["sans"] = json!(["10.0.0.111", "::1", "10.0.0.112"]);
    b.write_manifest(&m);
    let out = b.run(&["run"]);
    ok(&out);
    assert!(stderr(&out).contains("SANs differ"), "{}", stderr(&out));
    let after = b.inspect(&d.join("1001/cert.pem"));
    assert_ne!(after.serial, docker.serial);
    assert_eq!(
        after.sans,
        ["10.0.0.111", "10.0.0.112", "::1", "docker.test.internal"]
    );
    assert_eq!(
        b.inspect(&d.join("101/web.crt")).serial,
        web.serial,
        "the other entry was touched"
    );
    assert_eq!(
        systemctl_log(&b),
        [
            "101 reload nginx",
            "1001 restart docker",
            "1001 restart docker"
        ]
    );
}

#[test]
fn past_the_threshold_renews_with_the_same_key_and_sans() {
    let b = setup_two();
    ok(&b.run(&["run", "--only", "web.test.internal"]));
    let d = certs(&b);
    // The same certificate 50 minutes into its hour: past 66 %.
    let (crt, key_path) = (d.join("101/web.crt"), d.join("101/web.key"));
    pair_by_our_intermediate(&b, &crt, &key_path, "-50m", "10m");
    let before = b.inspect(&crt);
    let key = std::fs::read(&key_path).unwrap();
    let dry = b.run(&["run", "--dry-run", "--only", "web.test.internal"]);
    ok(&dry);
    assert!(
        stdout(&dry).contains("renew") && stdout(&dry).contains("past the renewal threshold"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        b.inspect(&d.join("101/web.crt")).serial,
        before.serial,
        "--dry-run changed the certificate"
    );

    let out = b.run(&["run", "--only", "web.test.internal"]);
    ok(&out);
    let after = b.inspect(&d.join("101/web.crt"));
    assert_ne!(after.serial, before.serial);
    assert_eq!(after.sans, before.sans);
    assert_eq!(
        std::fs::read(d.join("101/web.key")).unwrap(),
        key,
        "renewal must keep the key"
    );
    assert_eq!(mode_owner(&d.join("101/web.key")), (0o640, 0, 33));
    assert!(stderr(&out).contains("renewed"), "{}", stderr(&out));
    assert_eq!(systemctl_log(&b), ["101 reload nginx", "101 reload nginx"]);
    assert!(!d.join("1001").exists(), "--only touched another entry");
}

#[test]
fn an_expired_certificate_is_issued_anew() {
    let b = setup_two();
    let d = certs(&b);
    std::fs::create_dir_all(d.join("101")).unwrap();
    // Signed by our intermediate, so only its expiry is wrong.
    let (crt, key) = (d.join("101/web.crt"), d.join("101/web.key"));
    pair_by_our_intermediate(&b, &crt, &key, "-2h", "-1h");
    let old = b.inspect(&crt);

    let out = b.run(&["run", "--only", "web.test.internal"]);
    ok(&out);
    assert!(
        stderr(&out).contains("issuing (expired)"),
        "{}",
        stderr(&out)
    );
    let new = b.inspect(&crt);
    assert_ne!(new.serial, old.serial);
    assert_eq!(new.sans, old.sans);
}

#[test]
fn ca_down_exits_75_and_leaves_files_untouched() {
    let mut b = setup_two();
    ok(&b.run(&["run"]));
    let d = certs(&b);
    let before = snapshot(&b);
    b.ca.stop();
    std::fs::remove_file(d.join("1001/cert.pem")).unwrap(); // and one to issue
    let before_vm_key = std::fs::read(d.join("1001/key.pem")).unwrap();

    // Everything due (--renew-now), and one to issue.
    let out = b.run(&["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    assert_eq!(snapshot(&b), before);
    assert_eq!(
        std::fs::read(d.join("1001/key.pem")).unwrap(),
        before_vm_key
    );
    assert!(!d.join("1001/cert.pem").exists());
    assert_eq!(listing(&d.join("101")), ["web.crt", "web.key"]);
    assert_eq!(listing(&d.join("1001")), ["ca.pem", "key.pem"]);
    assert_eq!(
        systemctl_log(&b).len(),
        2,
        "post-renewal ran with the CA down"
    );

    // The CA being down is no fault of the entries: no backoff.
    b.ca.launch(None);
    let out = b.run(&["run", "--renew-now"]);
    ok(&out);
    assert!(d.join("1001/cert.pem").exists());
    assert_ne!(snapshot(&b), before, "nothing renewed once the CA was back");
}

/// The readiness gate: with no token, or an earlier boot's, a run that has
/// something to issue or renew exits 75 saying so and touches nothing;
/// one with nothing due does not ask; the token of the current
/// generation lets it go on; an empty legacy token only with the CA
/// answering. (tests/race.rs races it against the CA's restarts.)
#[test]
fn before_the_ca_is_ready_nothing_is_issued_or_touched() {
    let b = setup_two();
    ok(&b.run(&["run"]));
    let d = certs(&b);
    let ready = b.ca.dir.path().join("ca.ready");
    let earlier_boot = std::fs::read(&ready).unwrap();
    let touched = |b: &Bench| {
        (
            snapshot(b),
            listing(&d.join("1001")),
            systemctl_log(b).len(),
            // The certificates' memory; the run's own record changes.
            serde_json::from_slice::<Value>(
                &std::fs::read(b.path("state/renew-state.json")).unwrap(),
            )
            .unwrap()["certificates"]
                .clone(),
        )
    };
    let before = touched(&b);
    // The CA container's pre-start: a new generation, its token gone.
    let out = b.ca.phoenix_ca(&["invalidate"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Everything due.
    let out = b.run(&["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the CA is not ready: no readiness token yet"),
        "{}",
        stderr(&out)
    );
    // An earlier boot's token put back by a late writer: stale.
    std::fs::write(&ready, &earlier_boot).unwrap();
    let out = b.run(&["run", "--force"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the CA is not ready: stale readiness token"),
        "{}",
        stderr(&out)
    );
    assert_eq!(touched(&b), before, "an unready CA's run touched something");
    // Nothing due: the run does not ask for the CA.
    ok(&b.run(&["run"]));
    // The CA publishes for its new generation: the run goes on.
    b.ca.publish();
    ok(&b.run(&["run", "--renew-now"]));
    assert_ne!(
        snapshot(&b),
        before.0,
        "nothing renewed once the CA was ready"
    );
    // The old bash managers' empty ca.ready: taken if the CA answers.
    std::fs::write(&ready, "").unwrap();
    let out = b.run(&["run", "--renew-now"]);
    ok(&out);
    assert!(stderr(&out).contains("accepting empty legacy readiness token"));
    b.ca.stop();
    let out = b.run(&["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the CA is not ready"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("CA unhealthy"), "{}", stderr(&out));
}

/// The container's pair, byte for byte.
fn snapshot(b: &Bench) -> Vec<Vec<u8>> {
    ["101/web.crt", "101/web.key"]
        .iter()
        .map(|f| std::fs::read(certs(b).join(f)).unwrap())
        .collect()
}

#[test]
fn guest_command_failures_fail_the_run_naming_the_entry() {
    let mut b = Bench::new();
    b.set_renewal("command_timeout_secs", json!(1));
    let ct = b.pve.add_ct(101);
    b.pve.add_vm(1001);
    b.pve.guest_command(&ct, "systemctl", SYSTEMCTL);
    let d = certs(&b);
    let entry = |name: &str, kind: &str, id: u32, post: Value| {
        let mut e = json!({"common_name": name, "guest_id": id, "guest_type": kind,
            "cert_path": d.join(format!("{name}.crt")), "key_path": d.join(format!("{name}.key"))});
        for (k, v) in post.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    b.write_manifest(&json!([
        entry(
            "exit1.test",
            "vm",
            1001,
            json!({"post_renewal": {"run": ["sh", "-c", "echo nope >&2; exit 1"]}})
        ),
        entry(
            "signal.test",
            "vm",
            1001,
            json!({"post_renewal": {"run": ["sh", "-c", "kill -9 $$"]}})
        ),
        entry(
            "timeout.test",
            "vm",
            1001,
            json!({"post_renewal": {"run": ["sleep", "5"]}})
        ),
        entry(
            "legacy.test",
            "vm",
            1001,
            json!({"post_renewal_command": "qm guest exec 1001 -- sh -c 'exit 3'"})
        ),
        entry(
            "good.test",
            "lxc",
            101,
            json!({"post_renewal": {"run": ["systemctl", "reload", "nginx"]}})
        ),
    ]));
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (name, why) in [
        ("exit1.test", "exited with status 1: nope"),
        ("signal.test", "signal 9"),
        ("timeout.test", "pid"),
        ("legacy.test", "exited with status 3"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(name) && l.contains(why)),
            "no line naming {name} with '{why}':\n{err}"
        );
    }
    assert!(err.contains("4 of 5 certificate(s) failed"), "{err}");
    assert!(err.contains("post_renewal_command is deprecated"), "{err}");
    // The good entry went through in spite of the others.
    assert_eq!(systemctl_log(&b), ["101 reload nginx"]);

    // The pairs were installed; their post-renewal actions stay pending
    // and are retried by the next run without reissuing.
    let serial = b.inspect(&d.join("exit1.test.crt")).serial;
    let out = b.run(&["run", "--only", "exit1.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("post-renewal action left pending"),
        "{}",
        stderr(&out)
    );
    assert_eq!(b.inspect(&d.join("exit1.test.crt")).serial, serial);
    let status: Value = serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    let row = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "exit1.test")
        .unwrap();
    // The action failed, twice; the certificate did not: it is not held
    // back (a backoff would defer its next renewal), the action is.
    assert_eq!(
        (
            row["last_result"].as_str(),
            row["failures"].as_u64(),
            row["post_pending"].as_bool()
        ),
        (Some("failed"), Some(0), Some(true))
    );
    assert!(
        row["last_error"].as_str().unwrap().contains("nope"),
        "{row}"
    );
    // ... so a third run tries the action again at once.
    let out = b.run(&["run", "--only", "exit1.test"]);
    assert!(
        stderr(&out).contains("post-renewal action left pending"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_run_reports_the_holder_or_waits() {
    let mut b = Bench::new();
    let ct = b.pve.add_ct(101);
    // The first run's post-renewal blocks until the test opens the gate.
    let gate = b.path("gate");
    b.pve.guest_command(
        &ct,
        "systemctl",
        &format!(
            "#!/bin/sh\ntouch \"$FAKE_PVE/entered\"\nwhile [ ! -e {} ]; do sleep 0.02; done\n",
            gate.display()
        ),
    );
    let d = certs(&b);
    b.write_manifest(
        &json!([{"common_name": "web.test", "guest_id": 101, "guest_type": "lxc",
        "cert_path": d.join("web.crt"), "key_path": d.join("web.key"),
        "post_renewal": {"run": ["systemctl", "reload", "nginx"]}}]),
    );
    let mut first = b.spawn(&["run"]);
    let entered = b.pve.dir.path().join("entered");
    let t0 = std::time::Instant::now();
    while !entered.exists() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "first run never reached its post-renewal"
        );
        assert!(first.try_wait().unwrap().is_none(), "first run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // No wait: exit 75 naming the holder.
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("already running (pid {}", first.id())),
        "{}",
        stderr(&out)
    );

    // With a wait: it runs after the first, and finds nothing to do.
    b.set_renewal("lock_wait_secs", json!(60));
    let second = b.spawn(&["run"]);
    std::fs::write(&gate, "").unwrap();
    assert!(first.wait().unwrap().success());
    let out = second.wait_with_output().unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("web.test: up to date"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_manifest_is_exit_2_naming_entry_and_value() {
    let b = setup_two();
    let mut m = two_entries(&b);
    m[1]["sans"] = json!(["10.0.0.111", "a.test,b.test"]);
    b.write_manifest(&m);
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("[1].sans[1]") && err.contains("'a.test,b.test'"),
        "{err}"
    );
    m[1]["sans"] = json!(["-bad.test"]);
    b.write_manifest(&m);
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The bad entry alone is refused: the other one is still issued.
    assert!(certs(&b).join("101/web.crt").exists(), "{}", stderr(&out));
    assert!(
        !certs(&b).join("1001").exists(),
        "a refused entry touched files"
    );
    let out = b.run(&["run", "--only", "nope.test"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_reference_manifest_loads_and_plans() {
    let Some(reference) = common::reference_etc() else {
        return;
    };
    let b = Bench::new();
    let config: Value =
        serde_json::from_slice(&std::fs::read(b.path("toolkit.json")).unwrap()).unwrap();
    let mut config = config;
    config["phoenix_etc"] = json!(reference);
    std::fs::write(b.path("toolkit.json"), config.to_string()).unwrap();
    let out = b.run(&["run", "--dry-run"]);
    ok(&out);
    let plan = stdout(&out);
    let rows: Vec<&str> = plan.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "{plan}");
    for name in [
        "nginx.internal.thinkheads.ai",
        "portainer-client.internal.thinkheads.ai",
        "nginx-gateway-client",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(name)
                && r.contains("issue")
                && r.contains("certificate missing")),
            "{plan}"
        );
    }
    assert!(rows.iter().any(|r| r.contains("VM 1001")), "{plan}");
    assert!(b.pve.calls().is_empty(), "--dry-run called a guest");
}

#[test]
fn a_large_manifest_is_planned_in_its_order() {
    // Planned over the CPUs in chunks (above 128 entries a thread): the
    // plan must still read as the manifest does.
    let b = Bench::new();
    let d = certs(&b);
    let n = 600;
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            json!({"common_name": format!("h{i:03}.test.internal"),
                   "sans": [format!("h{i:03}.test.internal")],
                   "guest_id": 1001, "guest_type": "vm",
                   "cert_path": d.join(format!("1001/h{i:03}.crt")),
                   "key_path": d.join(format!("1001/h{i:03}.key")),
                   "owner": "root:root"})
        })
        .collect();
    b.write_manifest(&json!(entries));
    let out = b.run(&["run", "--dry-run"]);
    ok(&out);
    let plan = stdout(&out);
    let names: Vec<&str> = plan
        .lines()
        .skip(1)
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    let wanted: Vec<String> = (0..n).map(|i| format!("h{i:03}.test.internal")).collect();
    assert_eq!(names, wanted, "{plan}");
    assert!(
        plan.lines()
            .skip(1)
            .all(|r| r.contains("certificate missing")),
        "{plan}"
    );
}

/// A configuration error step reports is the configuration's, not the
/// certificates': said once naming the key to fix (exit 2), the other
/// certificates not tried, no backoff recorded, and the next run after the
/// fix issues at once. Against the real step-ca: a wrong provisioner
/// password, then a lifetime above the CA's maximum.
#[test]
fn a_configuration_error_is_said_once_and_backs_nothing_off() {
    let mut b = setup_two();
    let password = b.ca.password_file();
    let good = std::fs::read(&password).unwrap();
    std::fs::write(&password, "not the password\n").unwrap();
    let out = b.run(&["run"]);
    let err = stderr(&out);
    std::fs::write(&password, &good).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ca.provisioner_password_file"), "{err}");
    assert!(
        err.contains("failed to decrypt JWK: invalid password"),
        "{err}"
    );
    assert!(
        err.contains("skipped: the configuration error above"),
        "{err}"
    );
    assert!(!err.contains("Provisioner:"), "progress line in: {err}");
    let state: Value =
        serde_json::from_slice(&std::fs::read(b.path("state/renew-state.json")).unwrap()).unwrap();
    for (name, st) in state["certificates"].as_object().unwrap() {
        assert_eq!(st["failures"].as_u64().unwrap_or(0), 0, "{name}: {st}");
        assert!(st["retry_after"].is_null(), "{name}: {st}");
    }

    b.set_renewal("lifetime", json!("9000h"));
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("renewal.lifetime is longer than the CA allows"),
        "{err}"
    );

    b.set_renewal("lifetime", json!("1h"));
    ok(&b.run(&["run"]));
    assert!(certs(&b).join("1001/cert.pem").exists());
}

/// A CA behind a proxy that answers with an error page (nginx's 502, HTML
/// where step expects JSON) or a CA's own 5xx: the CA is unavailable, not
/// the certificates at fault: exit 75, files untouched, no backoff.
#[test]
fn a_ca_that_answers_5xx_is_unavailable_not_a_failed_certificate() {
    let b = setup_two();
    // The proxy's certificate, for 127.0.0.1, from the real CA.
    let (crt, key) = (b.path("proxy.crt"), b.path("proxy.key"));
    let st = std::process::Command::new("step")
        .args(["ca", "certificate", "127.0.0.1"])
        .arg(&crt)
        .arg(&key)
        .args(["--san", "127.0.0.1", "--ca-url", &b.ca.url(), "--root"])
        .arg(b.ca.root_cert())
        .args([
            "--provisioner",
            &b.ca.provisioner(),
            "--provisioner-password-file",
        ])
        .arg(b.ca.password_file())
        .env("STEPPATH", b.path("steppath"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", stderr(&st));
    for (code, ctype, body) in [
        (
            "502",
            "text/html",
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        ),
        (
            "500",
            "application/json",
            r#"{"status":500,"message":"The certificate authority encountered an Internal Server Error. Please see the certificate authority logs for more info."}"#,
        ),
    ] {
        let port = common::free_port();
        let mut proxy = std::process::Command::new(common::fakes().join("https_error.py"))
            .arg(port.to_string())
            .arg(&crt)
            .arg(&key)
            .args([code, ctype, body])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        let config = b.path("toolkit.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        c["ca"]["url"] = json!(format!("https://127.0.0.1:{port}"));
        std::fs::write(&config, c.to_string()).unwrap();
        let out = b.run(&["run"]);
        proxy.kill().unwrap();
        proxy.wait().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(75), "{code}: {err}");
        assert!(err.contains("the CA is unavailable"), "{code}: {err}");
        assert!(!certs(&b).join("1001/cert.pem").exists());
        let state: Value = serde_json::from_slice(
            &std::fs::read(b.path("state/renew-state.json")).unwrap_or_else(|_| b"{}".to_vec()),
        )
        .unwrap();
        for (name, st) in state["certificates"].as_object().into_iter().flatten() {
            assert_eq!(
                st["failures"].as_u64().unwrap_or(0),
                0,
                "{code} {name}: {st}"
            );
        }
    }
}

/// Write a certificate for web.test.internal and its key to `crt` and
/// `key` (their contents: modes and owners stay), signed by the CA's own
/// intermediate with the validity asked (`step certificate create`
/// durations, relative to now): what the CA would have issued at another
/// time.
fn pair_by_our_intermediate(b: &Bench, crt: &Path, key: &Path, not_before: &str, not_after: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (c, k) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    let st = std::process::Command::new("step")
        .args(["certificate", "create", "web.test.internal"])
        .arg(&c)
        .arg(&k)
        .arg("--ca")
        .arg(b.ca.dir.path().join("steppath/certs/intermediate_ca.crt"))
        .arg("--ca-key")
        .arg(b.ca.dir.path().join("steppath/secrets/intermediate_ca_key"))
        .arg("--ca-password-file")
        .arg(b.ca.password_file())
        .args([
            "--san",
            "web.test.internal",
            "--san",
            "*.test.internal",
            "--san",
            "10.0.0.101",
        ])
        .args(["--not-before", not_before, "--not-after", not_after])
        .args(["--bundle", "--no-password", "--insecure"])
        .env("STEPPATH", b.path("steppath"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::write(crt, std::fs::read(&c).unwrap()).unwrap();
    std::fs::write(key, std::fs::read(&k).unwrap()).unwrap();
}

#[test]
fn a_new_pair_already_due_by_our_clock_is_refused_as_clock_skew() {
    let b = setup_two();
    let d = certs(&b);
    // The CA's clock 50 minutes behind ours: what it issues began 50
    // minutes ago by our clock, so a 1 h certificate (66 %: due after
    // 40 minutes) is due at once, though still valid for 10 minutes.
    let path = b.skewed_step("--not-before -50m");
    let out = b
        .command(&["run", "--only", "web.test.internal"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.contains("web.test.internal")
            && l.contains("the new certificate is already due by this host's clock")
            && l.contains("this host's clock is about")
            && l.contains("ahead of the CA's")),
        "{err}"
    );
    assert!(!d.join("101/web.crt").exists(), "a due pair was installed");
    assert_eq!(
        systemctl_log(&b),
        Vec::<String>::new(),
        "reloaded for nothing"
    );
    // The next run does not issue again at once: the backoff holds it,
    // and the run still fails (the certificate is missing).
    let out = b
        .command(&["run", "--only", "web.test.internal"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("next attempt after"), "{err}");
    // The clocks agree again: issued (after the backoff, --force now).
    ok(&b.run(&["run", "--only", "web.test.internal", "--force"]));
    assert!(d.join("101/web.crt").exists());
}

#[test]
fn a_renewal_too_short_for_the_threshold_is_installed_with_a_warning() {
    let mut b = setup_two();
    b.set_renewal("threshold", json!("20m"));
    ok(&b.run(&["run", "--only", "web.test.internal"]));
    let d = certs(&b);
    // A 15 minute certificate one minute before expiry (issued before
    // renewal.lifetime was raised, say): past its threshold, and a
    // renewal keeps its 15 minutes, so the renewed one is due at once.
    let (crt, key) = (d.join("101/web.crt"), d.join("101/web.key"));
    pair_by_our_intermediate(&b, &crt, &key, "-14m", "1m");
    let old = b.inspect(&crt);
    let out = b.run(&["run", "--only", "web.test.internal"]);
    let err = stderr(&out);
    ok(&out);
    let new = b.inspect(&crt);
    assert_ne!(new.serial, old.serial, "not renewed: {err}");
    assert!(
        err.lines().any(|l| l.contains("web.test.internal")
            && l.contains("too short for renewal.threshold")
            && l.contains("--force issues one of renewal.lifetime")),
        "{err}"
    );
    // As it says: --force gives one of renewal.lifetime, not due.
    ok(&b.run(&["run", "--only", "web.test.internal", "--force"]));
    let out = b.run(&["run", "--only", "web.test.internal"]);
    ok(&out);
    assert!(
        stderr(&out).contains("web.test.internal: up to date"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_threshold_without_room_is_refused_at_load() {
    let mut b = setup_two();
    b.set_renewal("threshold", json!("2h"));
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("renewal.threshold")
            && err.contains("due at once")
            && err.contains("at most 54m before expiry"),
        "{err}"
    );
    assert!(
        !certs(&b).join("101").exists(),
        "a refused configuration issued"
    );
}

#[test]
fn the_bash_managers_and_a_docker_reload_are_warned_of_on_every_run_and_in_status() {
    let mut b = setup_two();
    // The old setup's cron file and certificate manager, beside ours.
    let cron = b.path("cron.d/phoenix-cert-renewal");
    std::fs::create_dir_all(cron.parent().unwrap()).unwrap();
    std::fs::write(
        &cron,
        "0 * * * * root /usr/local/phoenix_hypervisor/bin/managers/certificate-renewal-manager.sh\n",
    )
    .unwrap();
    b.set_renewal("legacy_cron_file", json!(cron));
    let manager = b
        .etc()
        .parent()
        .unwrap()
        .join("bin/managers/certificate-renewal-manager.sh");
    std::fs::create_dir_all(manager.parent().unwrap()).unwrap();
    std::fs::write(&manager, "#!/bin/bash\n# renews every certificate\n").unwrap();
    // The VM's action reloads docker: its TLS files would not be read.
    let mut entries = two_entries(&b);
    entries[1]["post_renewal"] = json!({"run": ["systemctl", "reload", "docker"]});
    b.write_manifest(&entries);

    for args in [&["run"][..], &["run"][..], &["status"][..]] {
        let out = b.run(args);
        ok(&out);
        let err = stderr(&out);
        for (needle, what) in [
            (format!("rm {}", cron.display()), "the cron file"),
            (manager.display().to_string(), "the manager"),
            ("use `systemctl restart docker`".to_string(), "the reload"),
        ] {
            assert!(
                err.lines()
                    .any(|l| l.starts_with("warning:") && l.contains(&needle)),
                "{args:?}: {what} not warned of:\n{err}"
            );
        }
    }
    let status = b.run(&["status"]);
    assert!(
        stdout(&status)
            .contains("warning: docker.test.internal: the post-renewal action reloads docker"),
        "{}",
        stdout(&status)
    );
    // Retired as README says: no warning left.
    std::fs::remove_file(&cron).unwrap();
    std::fs::write(
        &manager,
        "#!/bin/sh\nexec systemctl start phoenix-renew.service\n",
    )
    .unwrap();
    entries[1]["post_renewal"] = json!({"run": ["systemctl", "restart", "docker"]});
    b.write_manifest(&entries);
    let out = b.run(&["run"]);
    ok(&out);
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));
}

#[test]
fn status_reports_without_the_ca_root_and_fails_on_a_bad_certificate() {
    let b = setup_two();
    ok(&b.run(&["run"]));
    let d = certs(&b);
    ok(&b.run(&["status"]));
    // The CA's storage gone: every row still shown with its expiry, the
    // next action unknown, the CA named; exit 75 (nothing is known bad).
    let root = b.ca.root_cert();
    let away = b.path("root.away");
    std::fs::rename(&root, &away).unwrap();
    let prom = b.path("status.prom");
    let out = b.run(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    for r in rows.as_array().unwrap() {
        assert_eq!(r["next_action"], json!("unknown"), "{r}");
        assert!(r["not_after"].as_i64().is_some(), "{r}");
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .contains("the CA's root cannot be read"));
    }
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("\nphoenix_renew_ca_root_readable 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("phoenix_cert_not_after_seconds{name=\"web.test.internal\""));
    let table = b.run(&["status"]);
    assert!(
        stdout(&table).contains("CA: the root certificate cannot be read"),
        "{}",
        stdout(&table)
    );
    // And an expired certificate beside it: exit 1, naming it.
    pair_by_our_intermediate(
        &b,
        &d.join("101/web.crt"),
        &d.join("101/web.key"),
        "-2h",
        "-1h",
    );
    let out = b.run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("web.test.internal: expired")
            && stderr(&out).contains("1 of 2 certificate(s) not good: web.test.internal"),
        "{}",
        stderr(&out)
    );
    std::fs::rename(&away, &root).unwrap();
}

#[test]
fn a_run_writes_its_metrics_and_counts_a_ca_outage() {
    let mut b = setup_two();
    let prom = b.path("textfile/phoenix-renew.prom");
    b.set_renewal("metrics_file", json!(prom));
    // No textfile directory (node_exporter not installed): nothing written.
    ok(&b.run(&["run"]));
    assert!(!prom.exists());
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    ok(&b.run(&["run"]));
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(mode_owner(&prom).0, 0o644);
    for line in [
        "phoenix_renew_last_run_exit_code 0\n",
        "phoenix_renew_ca_unavailable 0\n",
        "phoenix_cert_renewal_due{name=\"web.test.internal\",guest=\"CT 101\"} 0\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let success: Value = serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    // The CA down while something is due: the run exits 75 and says so in
    // the metrics, since when; no certificate's last success moves.
    b.ca.stop();
    let out = b.run(&["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("phoenix_renew_last_run_exit_code 75\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("phoenix_renew_ca_unavailable 1\n"),
        "{metrics}"
    );
    let since = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("phoenix_renew_ca_unavailable_since_seconds "))
            .map(String::from)
    };
    let first = since(&metrics).expect("no since");
    let out = b.run(&["run", "--renew-now"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(since(&std::fs::read_to_string(&prom).unwrap()), Some(first));
    let rows: Value = serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    for i in 0..2 {
        assert_eq!(
            rows[i]["last_success"], success[i]["last_success"],
            "{rows}"
        );
    }
    let table = b.run(&["status"]);
    assert!(
        stdout(&table).contains("CA unavailable to the runs since"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn check_ca_asks_the_ca_and_the_password_without_issuing() {
    let b = setup_two();
    let out = b.run(&["run", "--dry-run", "--check-ca"]);
    ok(&out);
    assert!(
        stderr(&out).contains("answers /health: ok"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("accepts provisioner 'admin' with the password file"),
        "{}",
        stderr(&out)
    );
    assert!(!certs(&b).join("101").exists(), "--check-ca issued");
    // A wrong password: the configuration error, named (exit 2).
    let wrong = b.path("wrong-password");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(b.path("toolkit.json")).unwrap()).unwrap();
    cfg["ca"]["provisioner_password_file"] = json!(wrong);
    std::fs::write(b.path("toolkit.json"), cfg.to_string()).unwrap();
    let out = b.run(&["run", "--dry-run", "--check-ca"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid password"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not the password"),
        "the password leaked"
    );
    // The CA down: 75.
    b.write_config();
    b.ca.stop();
    let out = b.run(&["run", "--dry-run", "--check-ca"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not healthy"), "{}", stderr(&out));
    assert!(!certs(&b).join("101").exists(), "--check-ca issued");
}
