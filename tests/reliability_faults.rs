//! Faults of the tools the toolkit drives, one test each, against the real
//! binaries and the real step-ca: a CA that accepts and never answers, a
//! `qm` that hangs, a container command that fails, a full disk, and a
//! certificate (or a CA) whose clock is ahead. Each asserts what an
//! operator checks: the exit code, a message naming the thing, the old
//! files intact, nothing left running or half-written, and the next run.
//! The CA being down, an absent guest agent and a missing lock directory
//! are covered elsewhere (see RELIABILITY.md).

mod common;
mod reliability_support;
mod renew_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reliability_support::{figures, pair, temps_in, Pair, Silent};
use renew_support::{stderr, systemctl_log, Bench, SYSTEMCTL};
use serde_json::{json, Value};

/// Edit the bench's toolkit.json in place.
fn edit_config(b: &Bench, f: impl FnOnce(&mut Value)) {
    let path = b.path("toolkit.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// One certificate for guest `kind`/`id` under `certs/ID/`.
fn entry(b: &Bench, name: &str, kind: &str, id: u32, post: Option<&[&str]>) -> Value {
    let d = b.path(&format!("certs/{id}"));
    let mut e = json!({"common_name": name, "guest_id": id, "guest_type": kind,
        "cert_path": d.join(format!("{name}.crt")), "key_path": d.join(format!("{name}.key"))});
    if let Some(argv) = post {
        e["post_renewal"] = json!({ "run": argv });
    }
    e
}

fn files(b: &Bench, name: &str, id: u32) -> (PathBuf, PathBuf) {
    let d = b.path(&format!("certs/{id}"));
    (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
}

fn read2(p: &(PathBuf, PathBuf)) -> (Vec<u8>, Vec<u8>) {
    (std::fs::read(&p.0).unwrap(), std::fs::read(&p.1).unwrap())
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// Live processes whose command line mentions `needle` (zombies aside).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

#[test]
fn a_ca_that_never_answers_is_temporary_and_bounded() {
    let mut b = Bench::new();
    b.set_renewal("command_timeout_secs", json!(3));
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", "lxc", 101, None)]));
    ok(&b.run(&["run"]));
    let f = files(&b, "web.test", 101);
    let before = read2(&f);

    let silent = Silent::start();
    edit_config(&b, |c| c["ca"]["url"] = json!(silent.url()));
    let t0 = Instant::now();
    let out = b.run(&["run", "--force"]);
    let took = t0.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("web.test") && l.contains("the CA did not answer in time")),
        "{err}"
    );
    assert!(err.contains("retry later"), "{err}");
    // The deadline (3 s) plus the runner's overhead, not step's own.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(read2(&f), before, "the old pair changed");
    assert_eq!(temps_in(&b.path("certs/101")), Vec::<String>::new());
    let left = processes_mentioning(&b.path("certs").display().to_string());
    assert!(left.is_empty(), "left running: {left:?}");
    // The CA being unreachable does not count against the certificate.
    let status: Value = serde_json::from_slice(&b.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status[0]["failures"], json!(0), "{status}");

    // A guest waiting for that CA: unhealthy, 124 at its bound.
    let state = tempfile::tempdir().unwrap();
    let ca = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phoenix-ca"));
        c.args(args)
            .arg("--state-dir")
            .arg(state.path())
            .args(["--ca-url", &silent.url()])
            .env("PHOENIX_CONFIG", b.path("toolkit.json"))
            .stdin(Stdio::null());
        c
    };
    let fp = "0123456789abcdef".repeat(4);
    let out = ca(&["publish", "--no-health", "--fingerprint", &fp])
        .output()
        .unwrap();
    ok(&out);
    let t0 = Instant::now();
    let out = ca(&["wait", "--timeout", "3"])
        .arg("--root")
        .arg(b.ca.root_cert())
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("unhealthy"), "{err}");
    assert!(took < Duration::from_secs(8), "wait took {took:?}");
    figures(&[(
        "faults-ca-silent",
        "CA accepting and never answering: `phoenix-renew run` exits 75 at `renewal.command_timeout_secs`, pair untouched, no temp file, no `step` left; `phoenix-ca wait` says unhealthy, 124 at its bound (violations)",
        "0".into(),
    )]);
}

#[test]
fn a_hanging_qm_is_killed_at_the_deadline_and_the_action_retried() {
    let mut b = Bench::new();
    b.set_renewal("command_timeout_secs", json!(2));
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    b.write_manifest(&json!([entry(
        &b,
        "app.test",
        "vm",
        1001,
        Some(&["systemctl", "reload", "nginx"])
    )]));
    std::fs::write(vm.join("hang"), "guest exec").unwrap();
    let t0 = Instant::now();
    let out = b.run(&["run"]);
    let took = t0.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.contains("app.test")
            && l.contains("`qm guest exec 1001 --timeout 2 -- systemctl reload nginx` timed out")),
        "{err}"
    );
    // guest timeout + call timeout, both the configured 2 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let pid = std::fs::read_to_string(vm.join("hang.pid")).unwrap();
    let pid = pid.trim();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the hanging qm (pid {pid}) is still there"
    );
    assert!(systemctl_log(&b).is_empty());
    let f = files(&b, "app.test", 1001);
    let root = phoenix_hooks::cert::read_root(&b.ca.root_cert()).unwrap();
    assert!(matches!(pair(&f.0, &f.1, &root), Pair::Matching { .. }));
    let serial = b.inspect(&f.0).serial;

    // qm answers again: the pending action runs, nothing is reissued.
    std::fs::remove_file(vm.join("hang")).unwrap();
    let out = b.run(&["run"]);
    ok(&out);
    assert!(
        stderr(&out).contains("post-renewal action left pending"),
        "{}",
        stderr(&out)
    );
    assert_eq!(systemctl_log(&b), ["1001 reload nginx"]);
    assert_eq!(b.inspect(&f.0).serial, serial);
    figures(&[(
        "faults-qm-hang",
        "`qm guest exec` hanging: killed at guest + call timeout (both `renewal.command_timeout_secs`), named, exit 1, its process gone, the action run by the next run without reissuing (violations)",
        "0".into(),
    )]);
}

#[test]
fn a_failing_container_command_fails_its_entry_only() {
    let b = Bench::new();
    let bad = b.pve.add_ct(101);
    let good = b.pve.add_ct(102);
    for ct in [&bad, &good] {
        b.pve.guest_command(ct, "systemctl", SYSTEMCTL);
    }
    std::fs::write(bad.join("systemctl.rc"), "1").unwrap();
    let reload: &[&str] = &["systemctl", "reload", "nginx"];
    b.write_manifest(&json!([
        entry(&b, "bad.test", "lxc", 101, Some(reload)),
        entry(&b, "good.test", "lxc", 102, Some(reload)),
    ]));
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.contains("bad.test")
            && l.contains("CT 101")
            && l.contains("exited with status 1: Job for nginx.service failed.")),
        "{err}"
    );
    assert!(
        err.contains("1 of 2 certificate(s) failed: bad.test"),
        "{err}"
    );
    assert_eq!(systemctl_log(&b), ["101 reload nginx", "102 reload nginx"]);
    let f = files(&b, "bad.test", 101);
    let serial = b.inspect(&f.0).serial;

    // Still failing: retried, not reissued; then fixed: done.
    let out = b.run(&["run", "--only", "bad.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::write(bad.join("systemctl.rc"), "0").unwrap();
    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(
        systemctl_log(&b),
        [
            "101 reload nginx",
            "102 reload nginx",
            "101 reload nginx",
            "101 reload nginx"
        ]
    );
    assert_eq!(b.inspect(&f.0).serial, serial);
    figures(&[(
        "faults-pct-fail",
        "container post-renewal command exiting 1: that entry fails named, the other is reloaded, exit 1, the next run retries without reissuing (violations)",
        "0".into(),
    )]);
}

#[test]
fn a_full_disk_keeps_the_old_pair_and_the_next_run_succeeds() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", "lxc", 101, None)]));
    ok(&b.run(&["run"]));
    let f = files(&b, "web.test", 101);
    let before = read2(&f);
    // In a private mount namespace: the certificate directory on a 64 KiB
    // tmpfs, filled; a forced run; a snapshot; space freed; a run; a
    // snapshot. The snapshots are what the test judges.
    let script = r#"set -e
cp -a "$D/." "$OUT/orig"
mount -t tmpfs -o size=64k,mode=755 phoenix-full "$D"
cp -a "$OUT/orig/." "$D/"
dd if=/dev/zero of="$D/fill" bs=1k 2>/dev/null || true
set +e
"$RENEW" --config "$CFG" run --force 2> "$OUT/err1"; echo $? > "$OUT/rc1"
set -e
rm "$D/fill"
cp -a "$D/." "$OUT/snap1"
set +e
"$RENEW" --config "$CFG" run --force 2> "$OUT/err2"; echo $? > "$OUT/rc2"
set -e
cp -a "$D/." "$OUT/snap2"
"#;
    let out_dir = b.path("out");
    for d in ["orig", "snap1", "snap2"] {
        std::fs::create_dir_all(out_dir.join(d)).unwrap();
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .envs(b.pve.env())
        .env("STEPPATH", b.path("steppath"))
        .env_remove("PHOENIX_CONFIG")
        .env("D", b.path("certs/101"))
        .env("OUT", &out_dir)
        .env("CFG", b.path("toolkit.json"))
        .env("RENEW", env!("CARGO_BIN_EXE_phoenix-renew"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&out);
    let read = |n: &str| std::fs::read_to_string(out_dir.join(n)).unwrap();
    let err1 = read("err1");
    assert_eq!(read("rc1").trim(), "1", "{err1}");
    assert!(
        err1.lines().any(|l| l.contains("web.test")
            && l.to_lowercase().contains("no space left on device")),
        "{err1}"
    );
    let snap1 = out_dir.join("snap1");
    let at = |d: &Path| (d.join("web.test.crt"), d.join("web.test.key"));
    assert_eq!(read2(&at(&snap1)), before, "the old pair changed");
    let root = phoenix_hooks::cert::read_root(&b.ca.root_cert()).unwrap();
    let (c, k) = at(&snap1);
    assert!(matches!(pair(&c, &k, &root), Pair::Matching { .. }));
    assert_eq!(temps_in(&snap1), Vec::<String>::new());
    // Space again: the next run issues a new pair.
    let snap2 = out_dir.join("snap2");
    assert_eq!(read("rc2").trim(), "0", "{}", read("err2"));
    let (c, k) = at(&snap2);
    let Pair::Matching { cert, .. } = pair(&c, &k, &root) else {
        panic!("no matching pair after space was freed");
    };
    assert_ne!(cert, before.0);
    assert_eq!(temps_in(&snap2), Vec::<String>::new());
    // The mount was private to the namespace: the host's files are the
    // first run's.
    assert_eq!(read2(&f), before);
    figures(&[(
        "faults-disk-full",
        "certificate directory full (64 KiB tmpfs): the entry fails naming ENOSPC, the old pair stays byte-identical and matching, no temp file; after freeing space the next run installs a new pair (violations)",
        "0".into(),
    )]);
}

/// Issue a certificate valid from an hour from now, as a CA (or host)
/// with a skewed clock would leave it, with the real CA.
fn future_pair(b: &Bench, name: &str, crt: &Path, key: &Path) {
    let out = Command::new("step")
        .args(["ca", "certificate", "--san", name, "--provisioner"])
        .arg(b.ca.provisioner())
        .arg("--provisioner-password-file")
        .arg(b.ca.password_file())
        .args(["--not-before", "1h", "--not-after", "3h", "--ca-url"])
        .arg(b.ca.url())
        .arg("--root")
        .arg(b.ca.root_cert())
        .arg("--force")
        .arg(name)
        .arg(crt)
        .arg(key)
        .env("STEPPATH", b.path("steppath"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&out);
}

#[test]
fn a_certificate_not_valid_yet_is_reissued_once_and_a_ca_ahead_is_not_looped_on() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", "lxc", 101, None)]));
    let f = files(&b, "web.test", 101);
    std::fs::create_dir_all(f.0.parent().unwrap()).unwrap();
    future_pair(&b, "web.test", &f.0, &f.1);
    let future = read2(&f);

    // Our clock is right, the certificate is not: issue one valid now.
    let out = b.run(&["run"]);
    let err = stderr(&out);
    ok(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("web.test") && l.contains("issuing (not valid yet (valid from")),
        "{err}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let root = phoenix_hooks::cert::read_root(&b.ca.root_cert()).unwrap();
    let info = phoenix_hooks::cert::parse_bundle(&std::fs::read(&f.0).unwrap(), &root).unwrap();
    assert!(info.not_before <= now, "still not valid yet");
    let out = b.run(&["run"]);
    ok(&out);
    assert!(
        stderr(&out).contains("web.test: up to date"),
        "{}",
        stderr(&out)
    );

    // The CA's clock runs an hour ahead: every certificate it issues is
    // not valid yet. A `step` on PATH adds `--not-before 1h` to issues.
    let path = b.skewed_step("--not-before 1h");
    future_pair(&b, "web.test", &f.0, &f.1);
    let future2 = read2(&f);
    assert_ne!(future2, future);
    let skewed = |args: &[&str]| b.command(args).env("PATH", &path).output().unwrap();
    let out = skewed(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.contains("web.test")
            && l.contains("the new certificate is not valid until")
            && l.contains("the CA's clock is ahead of this host's")),
        "{err}"
    );
    assert_eq!(
        read2(&f),
        future2,
        "a not-yet-valid pair replaced the old one"
    );
    assert_eq!(temps_in(f.0.parent().unwrap()), Vec::<String>::new());
    let calls = std::fs::read_to_string(b.path("step-calls.log")).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    // The second run does not issue again: the backoff defers it, saying
    // why, and exits 1 (the certificate installed is not valid: not good).
    let out = skewed(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().any(|l| l.contains("web.test")
            && l.contains("not valid yet")
            && l.contains("next attempt after")),
        "{err}"
    );
    let calls = std::fs::read_to_string(b.path("step-calls.log")).unwrap();
    assert_eq!(calls.lines().count(), 1, "issued again: {calls}");
    figures(&[(
        "faults-clock-skew",
        "certificate not valid yet: reissued once, then up to date; CA clock 1 h ahead: the new pair refused (old stays), exit 1 naming the skew, the next run deferred by the backoff, not reissued (violations)",
        "0".into(),
    )]);
}
