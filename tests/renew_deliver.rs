//! `phoenix-renew run` delivering the new pair into the guest before its
//! post-renewal action, against a real step-ca and the fake `pct`/`qm`
//! (whose guests share this host's file system, so the drop directory,
//! `renewal.guest_drop_dir`, is a temp dir): a legacy `pct exec ... mv
//! /tmp/cert.pem ...` command finds its files; a VM gets its key over
//! `qm guest exec --pass-stdin`, never in argv or a log; a second run
//! delivers nothing; a stopped guest leaves delivery and action pending
//! (a warning, in status and metrics; a failure past
//! `renewal.pending_max_secs`), and the next run delivers and acts once the
//! guest is up; `pct push` that
//! fails in its task (exit 0, stderr) is a failure.

mod common;
mod renew_support;

use std::path::{Path, PathBuf};

use renew_support::{listing, mode_owner, stderr, systemctl_log, Bench, SYSTEMCTL};
use serde_json::{json, Value};

fn ok(o: &std::process::Output) {
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(o));
}

fn certs(b: &Bench) -> PathBuf {
    b.path("pve/ssl")
}

/// Where the container's legacy command moves its files ("/etc/nginx/ssl").
fn nginx_dir(b: &Bench) -> PathBuf {
    b.path("ct101/etc/nginx/ssl")
}

/// The container's entry: a legacy command as the reference manifest
/// writes them, against the test's drop directory.
fn legacy_ct_entry(b: &Bench) -> Value {
    let (drop, dest, d) = (b.drop_dir(), nginx_dir(b), certs(b));
    let (drop, dest) = (drop.display(), dest.display());
    json!({"common_name": "web.test.internal", "sans": ["*.test.internal"],
        "guest_id": 101, "guest_type": "lxc",
        "cert_path": d.join("101/web.crt"), "key_path": d.join("101/web.key"),
        "owner": "root:root", "include_ca": true,
        "post_renewal_command": format!(
            "pct exec 101 -- /bin/bash -c 'mkdir -p {dest} && mv {drop}/cert.pem {dest}/web.crt \
             && mv {drop}/key.pem {dest}/web.key && mv {drop}/ca.pem {dest}/ca.pem \
             && systemctl reload nginx'")})
}

/// The VM's entry: a structured action that asks for the files; the key
/// group-readable (0640).
fn vm_entry(b: &Bench) -> Value {
    let d = certs(b);
    json!({"common_name": "docker.test.internal", "sans": ["10.0.0.111"],
        "guest_id": 1001, "guest_type": "vm",
        "cert_path": d.join("1001/cert.pem"), "key_path": d.join("1001/key.pem"),
        "owner": "0:33", "include_ca": true,
        "post_renewal": {"run": ["systemctl", "restart", "docker"], "deliver": true}})
}

/// Every non-empty line of a PEM file.
fn pem_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// No recorded argv and no log text holds any line of these files.
fn assert_never_exposed(b: &Bench, files: &[PathBuf], log: &str) {
    for f in files {
        for line in pem_lines(f) {
            for call in b.pve.calls() {
                for arg in call["argv"].as_array().unwrap() {
                    assert!(
                        !arg.as_str().unwrap().contains(&line),
                        "{} line in argv: {call}",
                        f.display()
                    );
                }
            }
            assert!(!log.contains(&line), "{} line in the log", f.display());
        }
    }
}

#[test]
fn a_legacy_container_command_finds_the_delivered_files() {
    let b = Bench::new();
    let ct = b.pve.add_ct(101);
    b.pve.guest_command(&ct, "systemctl", SYSTEMCTL);
    b.write_manifest(&json!([legacy_ct_entry(&b)]));

    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(systemctl_log(&b), ["101 reload nginx"]);
    let (d, n) = (certs(&b), nginx_dir(&b));
    // What the command moved is exactly the installed pair and chain,
    // with the modes delivery gave them (mv keeps them).
    for (moved, installed, mode) in [
        ("web.key", "101/web.key", 0o600),
        ("web.crt", "101/web.crt", 0o644),
        ("ca.pem", "101/ca.pem", 0o644),
    ] {
        assert_eq!(
            std::fs::read(n.join(moved)).unwrap(),
            std::fs::read(d.join(installed)).unwrap(),
            "{moved}"
        );
        assert_eq!(mode_owner(&n.join(moved)).0, mode, "{moved}");
    }
    // The command took the files; no temp directory is left behind.
    assert!(
        listing(&b.drop_dir()).is_empty(),
        "{:?}",
        listing(&b.drop_dir())
    );

    // Pushed from our own private copies of the installed files (never
    // the guest's paths, which the guest can swap), into a temp directory
    // first, before the command; only paths in argv. The copies are gone.
    let calls = b.pve_calls();
    let push: Vec<&String> = calls.iter().filter(|c| c.starts_with("pct push")).collect();
    assert_eq!(push.len(), 3, "{calls:#?}");
    let tmp = format!("{}/.phoenix-renew.", b.drop_dir().display());
    let private = std::env::temp_dir().join("phoenix-deliver.");
    for (call, (name, perms)) in push.iter().zip([
        ("cert.pem", "0644"),
        ("key.pem", "0600"),
        ("ca.pem", "0644"),
    ]) {
        let argv: Vec<&str> = call.split(' ').collect();
        assert_eq!(argv[..3], ["pct", "push", "101"]);
        assert!(
            argv[3].starts_with(private.to_str().unwrap())
                && argv[3].ends_with(&format!("/{name}")),
            "{call}"
        );
        assert!(!Path::new(argv[3]).exists(), "{call}: copy left behind");
        assert!(
            argv[4].starts_with(&tmp) && argv[4].ends_with(&format!("/{name}")),
            "{call}"
        );
        assert_eq!(argv[5..], ["--perms", perms], "{call}");
    }
    let pos = |pred: &dyn Fn(&String) -> bool| calls.iter().position(pred).unwrap();
    assert!(
        pos(&|c| c.starts_with("pct push")) < pos(&|c| c.contains("/bin/bash -c")),
        "{calls:#?}"
    );
    assert_never_exposed(
        &b,
        &[d.join("101/web.key"), d.join("101/web.crt")],
        &stderr(&out),
    );

    // Second run: nothing to do, nothing delivered, nothing run.
    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(b.pve_calls(), calls, "the second run called the guest");
    assert_eq!(systemctl_log(&b).len(), 1);
    assert!(listing(&b.drop_dir()).is_empty());
}

#[test]
fn a_vm_gets_its_key_on_stdin_never_in_argv() {
    let b = Bench::new();
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    b.write_manifest(&json!([vm_entry(&b)]));

    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(systemctl_log(&b), ["1001 restart docker"]);
    let (d, drop) = (certs(&b), b.drop_dir());
    assert_eq!(listing(&drop), ["ca.pem", "cert.pem", "key.pem"]);
    for (name, installed, mode) in [
        ("key.pem", "1001/key.pem", 0o640),
        ("cert.pem", "1001/cert.pem", 0o644),
        ("ca.pem", "1001/ca.pem", 0o644),
    ] {
        assert_eq!(
            std::fs::read(drop.join(name)).unwrap(),
            std::fs::read(d.join(installed)).unwrap(),
            "{name}"
        );
        assert_eq!(mode_owner(&drop.join(name)).0, mode, "{name}");
    }

    // The key went on stdin of a qm guest exec --pass-stdin 1, after the
    // VM was found running with its agent, and before the action.
    let calls = b.pve.calls();
    let key_len = std::fs::metadata(d.join("1001/key.pem")).unwrap().len();
    let argv = |c: &Value| -> Vec<String> {
        c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let key_call = calls
        .iter()
        .position(|c| argv(c).iter().any(|a| a.ends_with("/key.pem")) && c["stdin_bytes"] != 0)
        .unwrap_or_else(|| panic!("no call carried the key on stdin: {calls:#?}"));
    let a = argv(&calls[key_call]);
    assert_eq!(a[..3], ["guest", "exec", "1001"], "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--pass-stdin", "1"]), "{a:?}");
    assert_eq!(calls[key_call]["stdin_bytes"].as_u64(), Some(key_len));
    let action = calls
        .iter()
        .position(|c| argv(c).iter().any(|a| a == "restart"))
        .unwrap();
    assert!(key_call < action, "{calls:#?}");
    assert_eq!(argv(&calls[0]), ["status", "1001"]);
    assert_eq!(argv(&calls[1]), ["guest", "cmd", "1001", "ping"]);
    assert_never_exposed(
        &b,
        &[d.join("1001/key.pem"), d.join("1001/cert.pem")],
        &stderr(&out),
    );

    // Second run: nothing.
    let n = calls.len();
    ok(&b.run(&["run"]));
    assert_eq!(b.pve.calls().len(), n, "the second run called the VM");
    assert_eq!(systemctl_log(&b).len(), 1);
}

#[test]
fn a_stopped_guest_waits_pending_and_the_next_run_delivers_and_acts() {
    let mut b = Bench::new();
    let ct = b.pve.add_ct(101);
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&ct, "systemctl", SYSTEMCTL);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    b.write_manifest(&json!([legacy_ct_entry(&b), vm_entry(&b)]));
    b.pve.set_status(&ct, "stopped");
    b.pve.set_status(&vm, "stopped");

    // Stopped on purpose: the run does not fail for it (a warning).
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (name, guest) in [
        ("web.test.internal", "CT 101"),
        ("docker.test.internal", "VM 1001"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with("warning:")
                && l.contains(name)
                && l.contains(&format!("{guest} is stopped"))
                && l.contains("delivery and the post-renewal action wait until it runs")),
            "no warning naming {name} and {guest}:\n{err}"
        );
    }
    // Shown as pending in status, its table, JSON and metrics.
    let prom = b.path("renew.prom");
    let st = b.run(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(st.status.code(), Some(0), "{}", stderr(&st));
    let rows: Value = serde_json::from_slice(&st.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["post_pending"], json!(true), "{r}");
        assert_eq!(r["waiting_for_guest"]["state"], json!("stopped"), "{r}");
    }
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics
            .contains("phoenix_cert_post_pending{name=\"web.test.internal\",guest=\"CT 101\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("phoenix_cert_waiting_for_guest_since_seconds{name=\"docker.test.internal\""),
        "{metrics}"
    );
    let table = b.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&table.stdout)
            .contains("pending: web.test.internal: CT 101 is stopped"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    // Waiting as long as renewal.pending_max_secs is a failure (0: at
    // once, what a stopped guest did before the bound existed).
    b.set_renewal("pending_max_secs", json!(0));
    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("as long as renewal.pending_max_secs allows")
            && err.contains("2 of 2 certificate(s) failed"),
        "{err}"
    );
    b.set_renewal("pending_max_secs", json!(3 * 86400));
    // No action ran, nothing reached the guests; the pairs are installed.
    assert!(systemctl_log(&b).is_empty());
    assert!(!nginx_dir(&b).exists());
    assert!(listing(&b.drop_dir()).is_empty());
    assert!(!b
        .pve_calls()
        .iter()
        .any(|c| c.starts_with("pct push") || c.contains("guest exec")));
    let d = certs(&b);
    let serials = [
        b.inspect(&d.join("101/web.crt")).serial,
        b.inspect(&d.join("1001/cert.pem")).serial,
    ];

    // The guests come up: the next run delivers and acts, without
    // reissuing.
    b.pve.set_status(&ct, "running");
    b.pve.set_status(&vm, "running");
    let out = b.run(&["run"]);
    ok(&out);
    assert!(
        stderr(&out).contains("post-renewal action left pending"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        systemctl_log(&b),
        ["101 reload nginx", "1001 restart docker"]
    );
    assert_eq!(
        std::fs::read(nginx_dir(&b).join("web.key")).unwrap(),
        std::fs::read(d.join("101/web.key")).unwrap()
    );
    assert_eq!(
        std::fs::read(b.drop_dir().join("key.pem")).unwrap(),
        std::fs::read(d.join("1001/key.pem")).unwrap()
    );
    assert_eq!(b.inspect(&d.join("101/web.crt")).serial, serials[0]);
    assert_eq!(b.inspect(&d.join("1001/cert.pem")).serial, serials[1]);

    // And then it is done: a third run changes and calls nothing.
    let n = b.pve.calls().len();
    ok(&b.run(&["run"]));
    assert_eq!(b.pve.calls().len(), n);
}

/// The fake `tool` (qm, pct) of `pve` as a wrapper in `dir`: it sets the
/// fake's state directory without touching this process's env.
fn fake_tool(pve: &common::FakePve, dir: &Path, tool: &str) -> String {
    let p = dir.join(tool);
    common::write_executable(
        &p,
        &format!(
            "#!/bin/sh\nPHOENIX_FAKE_PVE='{}' exec '{}' \"$@\"\n",
            pve.dir.path().display(),
            common::fakes().join(tool).display()
        ),
    );
    p.display().to_string()
}

/// `Proxmox::pct_push` against the fake `pct`, which fails as the real
/// one does: a stopped CT exits 255; a task error (source missing) is
/// printed on stderr with exit 0, and must still fail.
#[test]
fn pct_push_fails_on_a_stopped_ct_and_on_a_task_error() {
    use phoenix_hooks::proxmox::Proxmox;

    let pve = common::FakePve::new();
    let ct = pve.add_ct(101);
    let dir = tempfile::tempdir().unwrap();
    let px = Proxmox {
        pct: fake_tool(&pve, dir.path(), "pct"),
        ..Proxmox::default()
    };
    let src = dir.path().join("key.src");
    std::fs::write(&src, "k\n").unwrap();
    let dest = dir.path().join("key.pem");
    let dest_s = dest.display().to_string();

    px.pct_push(101, &src, &dest_s, 0o600).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"k\n");
    assert_eq!(mode_owner(&dest).0, 0o600);

    let e = px
        .pct_push(101, &dir.path().join("missing"), &dest_s, 0o600)
        .unwrap_err();
    assert!(e.to_string().contains("failed to open"), "{e}");
    assert!(e.to_string().contains("task failed"), "{e}");

    pve.set_status(&ct, "stopped");
    let e = format!("{:#}", px.pct_push(101, &src, &dest_s, 0o600).unwrap_err());
    assert!(e.contains("can only push files to a running CT"), "{e}");
}

/// A legacy `qm guest exec VMID -- ARGV` string runs through the typed
/// transport, with `renewal.command_timeout_secs` as qm's `--timeout` (not
/// qm's 30 s default), and one that outlives it fails as a timeout that
/// names its pid.
#[test]
fn a_legacy_qm_guest_exec_runs_typed_with_the_configured_timeout() {
    let mut b = Bench::new();
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    // Slow while the guest holds `slow`: a `docker service update` that
    // outlives the bound.
    b.pve.guest_command(
        &vm,
        "update",
        "#!/bin/sh\necho \"$*\" >> \"$FAKE_PVE/update.log\"\n\
         [ -e \"$FAKE_GUEST_DIR/slow\" ] && sleep 4\nexit 0\n",
    );
    let d = certs(&b);
    let entry = |command: &str| {
        json!({"common_name": "docker.test.internal", "sans": ["10.0.0.111"],
            "guest_id": 1001, "guest_type": "vm",
            "cert_path": d.join("1001/cert.pem"), "key_path": d.join("1001/key.pem"),
            "owner": "0:33", "include_ca": true,
            "post_renewal_command": command})
    };
    b.write_manifest(&json!([entry(
        "qm guest exec 1001 -- systemctl restart 'docker'"
    )]));
    let out = b.run(&["run"]);
    ok(&out);
    assert_eq!(systemctl_log(&b), ["1001 restart docker"]);
    let calls = b.pve_calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "qm guest exec 1001 --timeout 20 -- systemctl restart docker"),
        "{calls:#?}"
    );

    // Another certificate, a slow command, a 2 s bound.
    let b2 = {
        b.set_renewal("command_timeout_secs", json!(2));
        b
    };
    std::fs::write(vm.join("slow"), "").unwrap();
    let mut e2 = entry("qm guest exec 1001 -- update --force web_service");
    e2["common_name"] = json!("swarm.test.internal");
    e2["cert_path"] = json!(d.join("swarm/cert.pem"));
    e2["key_path"] = json!(d.join("swarm/key.pem"));
    b2.write_manifest(&json!([e2]));
    let started = std::time::Instant::now();
    let out = b2.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("still running after renewal.command_timeout_secs (2 s)")
            && err.contains("qm returned its pid")
            && err.contains("no later run starts it again while the guest agent says it runs"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(b2
        .pve_calls()
        .iter()
        .any(|c| c == "qm guest exec 1001 --timeout 2 -- update --force web_service"));
}

/// The pid of a legacy `qm guest exec` left running is kept under the
/// state directory: the command is not started again while the guest
/// agent says it runs, and is once it has ended.
#[test]
fn a_legacy_qm_command_left_running_is_not_started_again() {
    use phoenix_hooks::exit::{kind_of, Kind};
    use phoenix_hooks::phoenix::GuestType;
    use phoenix_hooks::proxmox::{Guest, Proxmox};
    use phoenix_hooks::renew::manifest::{Entry, PostAction};
    use phoenix_hooks::renew::post;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    let pve = common::FakePve::new();
    let vm = pve.add_vm(1002);
    pve.guest_command(
        &vm,
        "update",
        "#!/bin/sh\necho start >> \"$FAKE_PVE/update.log\"\n\
         [ -e \"$FAKE_GUEST_DIR/slow\" ] && sleep 3\necho end >> \"$FAKE_PVE/update.log\"\n",
    );
    std::fs::write(vm.join("slow"), "").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let px = Proxmox {
        qm: fake_tool(&pve, dir.path(), "qm"),
        ..Proxmox::default()
    };
    let manifest = dir.path().join("certificate-manifest.json");
    std::fs::write(&manifest, "[]").unwrap();
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = dir.path().join("state");
    let entry = Entry {
        index: 0,
        name: "swarm.test.internal".into(),
        guest: Guest {
            kind: GuestType::Vm,
            id: 1002,
        },
        sans: Vec::new(),
        wanted: Default::default(),
        cert_path: dir.path().join("cert.pem"),
        key_path: dir.path().join("key.pem"),
        uid: 0,
        gid: 0,
        key_mode: 0o600,
        include_ca: false,
        post: PostAction::Legacy("qm guest exec 1002 -- update --force web_service".into()),
        deliver: false,
        warnings: Vec::new(),
    };
    let bounds = post::Bounds {
        command: Duration::from_secs(1),
        update: Duration::from_secs(10),
    };
    let starts = || {
        std::fs::read_to_string(pve.dir.path().join("update.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "start")
            .count()
    };
    let execs = || {
        pve.calls()
            .iter()
            .filter(|c| c["argv"][1] == "exec")
            .count()
    };

    let e = post::run_in(&entry, &px, &manifest, bounds, Some(&state)).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Timeout, "{e:#}");
    assert!(
        format!("{e:#}").contains("no later run starts it again"),
        "{e:#}"
    );
    let kept: Vec<_> = std::fs::read_dir(state.join("post-running"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1);
    let record_mode = kept[0]
        .as_ref()
        .unwrap()
        .metadata()
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(record_mode & 0o777, 0o600, "the pid record is root's alone");

    // Asked again while it runs: not started, temporary.
    let e = post::run_in(&entry, &px, &manifest, bounds, Some(&state)).unwrap_err();
    assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
    assert!(format!("{e:#}").contains("not started again"), "{e:#}");
    assert_eq!((starts(), execs()), (1, 1));

    // Once it has ended, the next run runs it (quick now) and forgets it.
    // Ended as the fake agent tells it: its process gone or a zombie (the
    // "end" it logs comes a moment before).
    let record = std::fs::read(kept[0].as_ref().unwrap().path()).unwrap();
    let pid = serde_json::from_slice::<Value>(&record).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split(' ').nth(2) != Some("Z"))
    {
        assert!(Instant::now() < deadline, "the guest command never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(vm.join("slow")).unwrap();
    post::run_in(&entry, &px, &manifest, bounds, Some(&state)).unwrap();
    assert_eq!((starts(), execs()), (2, 2));
    assert_eq!(
        std::fs::read_dir(state.join("post-running"))
            .unwrap()
            .count(),
        0
    );
}
