//! Run semantics under faults, against the real binaries: a join token in
//! a reply that does not parse, stop requests (SIGHUP, SIGQUIT, SIGTERM)
//! while `step` or `qm` runs, a backoff stored while the clock was ahead,
//! manifest entries that claim one file, and bad manifest entries beside
//! good ones. The fault is a process of the test (a silent CA, a hanging
//! or garbling `qm`, a guest `docker` that misbehaves) or a state file it
//! wrote; each test asserts the exit code, what the messages name, what
//! the state file records and that nothing is left running.

mod common;
mod reliability_support;
mod renew_support;
mod swarm_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::fakes;
use reliability_support::{figures, Silent};
use renew_support::{stderr, stdout, systemctl_log, Bench, SYSTEMCTL};
use serde_json::{json, Value};
use swarm_support::{text, Lab, MANAGER};

fn write_script(path: &Path, body: &str) {
    common::write_executable(path, body);
}

/// Live processes (zombies aside) whose environment holds `marker`
/// (`KEY=VALUE`): every child a run started inherits it. (pid, comm).
fn processes_with_env(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}

/// Poll (bounded) until `ready` says so; panics naming `what` otherwise.
fn wait_for(what: &str, bound: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not seen in {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Send `sig` to the run and collect it; the run must end within `bound`.
fn stop(mut child: Child, sig: nix::sys::signal::Signal, bound: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    wait_for("the run ending", bound, || {
        child.try_wait().unwrap().is_some()
    });
    let took = t0.elapsed();
    (child.wait_with_output().unwrap(), took)
}

fn state_of(b: &Bench, name: &str) -> Value {
    let path = b.path("state/renew-state.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["certificates"][name].clone()
}

fn edit_config(b: &Bench, f: impl FnOnce(&mut Value)) {
    let path = b.path("toolkit.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

fn entry(b: &Bench, name: &str, kind: &str, id: u32) -> Value {
    let d = b.path(&format!("certs/{id}"));
    json!({"common_name": name, "guest_id": id, "guest_type": kind,
        "cert_path": d.join(format!("{name}.crt")), "key_path": d.join(format!("{name}.key"))})
}

fn crt(b: &Bench, name: &str, id: u32) -> PathBuf {
    b.path(&format!("certs/{id}/{name}.crt"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------- tokens

/// A token of moby's shape whose secret part the test looks for.
const PLANTED: &str =
    "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-plantedsecretpart0123456789";

/// How the join-token reply goes wrong.
#[derive(Debug, Clone, Copy)]
enum Garble {
    /// `qm` prints a warning line before the JSON.
    QmPrefix,
    /// `qm` prints the JSON cut short (its closing brace lost).
    QmTruncated,
    /// `qm` fails quoting the agent's reply, as Perl's JSON decoder does
    /// (`... (before "...")`), exit 255.
    QmDecodeError,
    /// The guest's docker prints the token and a warning line (exit 0).
    TokenWithJunk,
    /// The guest's docker fails echoing the token on stderr.
    TokenOnStderr,
    /// The guest's docker prints a token and exits 1 with stderr empty.
    TokenOnStdoutExit1,
}

/// `phoenix-swarm ensure -vv` on a fresh lab whose manager's join-token
/// reply is garbled as `how`. Returns the run and every token the run
/// could have seen.
fn ensure_with(how: Garble) -> (Output, Vec<String>) {
    let lab = Lab::new();
    let bin = lab.pve.dir.path().join("host-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real_qm = fakes().join("qm");
    let real_docker = fakes().join("docker");
    let qm_garble = match how {
        Garble::QmPrefix => Some(r#"printf 'WARNING: guest agent slow to answer\n%s\n' "$out""#),
        Garble::QmTruncated => Some(r#"printf '%s' "${out%\}}""#),
        Garble::QmDecodeError => Some(
            r#"flat=$(printf '%s' "$out" | tr -d '\n')
echo "malformed JSON string, neither tag, array, object, number, string or atom, at character offset 0 (before \"$flat\") at /usr/share/perl5/PVE/CLI/qm.pm line 812." >&2
exit 255"#,
        ),
        _ => None,
    };
    if let Some(garble) = qm_garble {
        // A qm that garbles only the reply to join-token.
        write_script(
            &bin.join("qm"),
            &format!(
                "#!/bin/sh\ncase \"$*\" in\n*join-token*)\n  out=$('{}' \"$@\")\n  {garble}\n  ;;\n*) exec '{}' \"$@\" ;;\nesac\n",
                real_qm.display(),
                real_qm.display()
            ),
        );
    }
    let guest = match how {
        Garble::TokenWithJunk => Some(format!(
            "echo '{PLANTED}'; echo 'WARNING: No swap limit support'"
        )),
        Garble::TokenOnStderr => Some(format!(
            "echo 'Error response from daemon: rotating {PLANTED} failed' >&2; exit 1"
        )),
        Garble::TokenOnStdoutExit1 => Some(format!("echo '{PLANTED}'; exit 1")),
        _ => None,
    };
    if let Some(body) = guest {
        let docker = lab.vm_dir(MANAGER).join("bin/docker");
        std::fs::remove_file(&docker).unwrap();
        write_script(
            &docker,
            &format!(
                "#!/bin/sh\ncase \"$*\" in\n*join-token*) {body} ;;\n*) exec '{}' \"$@\" ;;\nesac\n",
                real_docker.display()
            ),
        );
    }
    let mut path = std::ffi::OsString::from(&bin);
    path.push(":");
    path.push(common::path_with_fakes());
    let out = Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
        .args(["ensure", "-vv", "--config"])
        .arg(&lab.config)
        .envs(lab.pve.env())
        .env("PATH", path)
        .env_remove("PHOENIX_CONFIG")
        .output()
        .unwrap();
    let mut tokens = lab.tokens();
    tokens.push(PLANTED.to_string());
    (out, tokens)
}

#[test]
fn a_join_token_never_reaches_a_message() {
    let cases = [
        Garble::QmPrefix,
        Garble::QmTruncated,
        Garble::QmDecodeError,
        Garble::TokenWithJunk,
        Garble::TokenOnStderr,
        Garble::TokenOnStdoutExit1,
    ];
    let mut leaks = Vec::new();
    for how in cases {
        let (out, tokens) = ensure_with(how);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_ne!(out.status.code(), Some(0), "{how:?}: {all}");
        // Named by the error itself, not only by the -vv trace of argv.
        assert!(
            all.lines()
                .any(|l| l.contains("join-token -q worker") && !l.contains("running `")),
            "{how:?}: the failing step is not named: {all}"
        );
        for t in &tokens {
            // The secret part: the last '-'-separated field.
            let secret = t.rsplit('-').next().unwrap();
            if all.contains(secret) {
                leaks.push(format!("{how:?}: {secret} in\n{all}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    figures(&[(
        "runs-token-replies",
        "garbled replies to `docker swarm join-token -q worker` (qm: a warning line first, the JSON cut short, a decode error quoting the reply, exit 255; guest: token plus a warning line, token on stderr, token on stdout with exit 1), each a failed `phoenix-swarm ensure -vv` naming the step; any part of a token's secret in its stdout or stderr (leaks)",
        format!("{} cases, {} leaks", cases.len(), leaks.len()),
    )]);
}

// --------------------------------------------------------------- signals

use nix::sys::signal::Signal;

const STOPS: [(Signal, i32); 3] = [
    (Signal::SIGHUP, 129),
    (Signal::SIGQUIT, 131),
    (Signal::SIGTERM, 143),
];

/// The pid of the `qm` that hangs in `vm` (the fake writes `hang.pid`),
/// once it is there and alive.
fn hanging_qm(vm: &Path) -> u32 {
    let mut pid = 0;
    wait_for("qm hanging", Duration::from_secs(20), || {
        pid = std::fs::read_to_string(vm.join("hang.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid != 0 && alive(pid)
    });
    pid
}

/// Whether a certificate's state after a stop request counts nothing
/// against it (no failure, no backoff) and has `post_pending` as given.
fn nothing_recorded(st: &Value, post_pending: bool) -> bool {
    st["failures"] == json!(0)
        && st["retry_after"].is_null()
        && st["last_result"] != json!("failed")
        && st["post_pending"] == json!(post_pending)
}

#[test]
fn a_stop_request_while_step_waits_ends_it_and_records_no_failure() {
    let mut b = Bench::new();
    b.set_renewal("command_timeout_secs", json!(30));
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", "lxc", 101)]));
    let silent = Silent::start();
    edit_config(&b, |c| c["ca"]["url"] = json!(silent.url()));
    // Every process the run starts inherits this.
    let marker = format!("STEPPATH={}", b.path("steppath").display());
    let mut violations = Vec::new();
    for (sig, code) in STOPS {
        let child = b.spawn(&["run"]);
        wait_for(
            "step waiting for the silent CA",
            Duration::from_secs(15),
            || {
                processes_with_env(&marker)
                    .iter()
                    .any(|(_, comm)| comm == "step")
            },
        );
        let (out, took) = stop(child, sig, Duration::from_secs(10));
        let err = stderr(&out);
        if out.status.code() != Some(code) {
            violations.push(format!("{sig}: exit {:?}: {err}", out.status.code()));
        }
        assert!(took < Duration::from_secs(5), "{sig}: took {took:?}");
        let left = processes_with_env(&marker);
        if !left.is_empty() {
            violations.push(format!("{sig}: left running: {left:?}"));
        }
        let st = state_of(&b, "web.test");
        if !nothing_recorded(&st, false) {
            violations.push(format!("{sig}: state records a failure: {st}"));
        }
        assert!(err.contains("web.test: stopped"), "{sig}: {err}");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // Nothing held back: the next run (the CA back) issues at once.
    edit_config(&b, |c| c["ca"]["url"] = json!(b.ca.url()));
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(crt(&b, "web.test", 101).exists());
    figures(&[(
        "runs-stop-step",
        "SIGHUP, SIGQUIT, SIGTERM to `phoenix-renew run` while `step` waits on a silent CA: exit 129/131/143 within 5 s, no process of the run left, no failure or backoff recorded, the next run issues at once (violations)",
        violations.len().to_string(),
    )]);
}

#[test]
fn a_stop_request_while_qm_hangs_ends_it_and_leaves_the_action_pending() {
    let mut b = Bench::new();
    b.set_renewal("command_timeout_secs", json!(30));
    let vm = b.pve.add_vm(1001);
    b.pve.guest_command(&vm, "systemctl", SYSTEMCTL);
    let mut e = entry(&b, "app.test", "vm", 1001);
    e["post_renewal"] = json!({"run": ["systemctl", "reload", "nginx"]});
    b.write_manifest(&json!([e]));
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(systemctl_log(&b), ["1001 reload nginx"]);

    std::fs::write(vm.join("hang"), "guest exec").unwrap();
    let marker = format!("PHOENIX_FAKE_PVE={}", b.pve.dir.path().display());
    let mut violations = Vec::new();
    for (sig, code) in STOPS {
        let _ = std::fs::remove_file(vm.join("hang.pid"));
        // --force: a new pair is installed, then its action hangs in qm.
        let child = b.spawn(&["run", "--force"]);
        let pid = hanging_qm(&vm);
        let (out, took) = stop(child, sig, Duration::from_secs(10));
        let err = stderr(&out);
        if out.status.code() != Some(code) {
            violations.push(format!("{sig}: exit {:?}: {err}", out.status.code()));
        }
        assert!(took < Duration::from_secs(5), "{sig}: took {took:?}");
        if alive(pid) {
            violations.push(format!("{sig}: the hanging qm (pid {pid}) is still there"));
        }
        let left = processes_with_env(&marker);
        if !left.is_empty() {
            violations.push(format!("{sig}: left running: {left:?}"));
        }
        let st = state_of(&b, "app.test");
        // The pair changed and its action did not run: pending, and
        // nothing counted against the certificate.
        if !nothing_recorded(&st, true) {
            violations.push(format!("{sig}: state: {st}"));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // qm answers again: the pending action runs, nothing is reissued.
    std::fs::remove_file(vm.join("hang")).unwrap();
    let serial = b.inspect(&crt(&b, "app.test", 1001)).serial;
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("post-renewal action left pending"),
        "{}",
        stderr(&out)
    );
    assert_eq!(b.inspect(&crt(&b, "app.test", 1001)).serial, serial);
    assert_eq!(
        systemctl_log(&b),
        ["1001 reload nginx", "1001 reload nginx"]
    );
    figures(&[(
        "runs-stop-qm",
        "SIGHUP, SIGQUIT, SIGTERM to `phoenix-renew run --force` while the new pair's post-renewal `qm guest exec` hangs: exit 129/131/143 within 5 s, the hanging `qm` gone, no failure or backoff recorded, the action pending and run by the next run without reissuing (violations)",
        violations.len().to_string(),
    )]);
}

#[test]
fn a_stop_request_while_swarm_ensure_waits_on_qm_ends_it() {
    let lab = Lab::new();
    let vm = lab.vm_dir(MANAGER);
    std::fs::write(vm.join("hang"), "guest exec").unwrap();
    let marker = format!("PHOENIX_FAKE_PVE={}", lab.pve.dir.path().display());
    let mut violations = Vec::new();
    for (sig, code) in STOPS {
        let _ = std::fs::remove_file(vm.join("hang.pid"));
        let child = Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
            .args(["ensure", "--config"])
            .arg(&lab.config)
            .envs(lab.pve.env())
            .env_remove("PHOENIX_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = hanging_qm(&vm);
        let (out, took) = stop(child, sig, Duration::from_secs(10));
        if out.status.code() != Some(code) {
            violations.push(format!(
                "{sig}: exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            ));
        }
        assert!(took < Duration::from_secs(5), "{sig}: took {took:?}");
        let left = processes_with_env(&marker);
        if alive(pid) || !left.is_empty() {
            violations.push(format!("{sig}: left running: {pid} {left:?}"));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    figures(&[(
        "runs-stop-swarm",
        "SIGHUP, SIGQUIT, SIGTERM to `phoenix-swarm ensure` while its `qm guest exec` hangs: exit 129/131/143 within 5 s, the hanging `qm` gone (violations)",
        violations.len().to_string(),
    )]);
}

// --------------------------------------------------------------- backoff

#[test]
fn a_backoff_stored_with_the_clock_ahead_is_capped_and_a_held_back_missing_certificate_fails() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.pve.add_ct(102);
    b.write_manifest(&json!([
        entry(&b, "due.test", "lxc", 101),
        entry(&b, "gone.test", "lxc", 102)
    ]));
    let out = b.run(&["run", "--only", "due.test"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Both failed while the clock said ten years later.
    let t = now();
    let years = t + 10 * 365 * 86400;
    let failed = json!({"failures": 1, "last_result": "failed", "last_attempt": years,
        "last_error": "boom", "retry_after": years + 300});
    std::fs::write(
        b.path("state/renew-state.json"),
        json!({"certificates": {"due.test": failed, "gone.test": failed}}).to_string(),
    )
    .unwrap();

    // Every valid certificate due (--renew-now).
    let out = b.run(&["run", "--renew-now"]);
    let err = stderr(&out);
    // Both held back, both named: the missing one and the one past its
    // threshold (exit 0 means every certificate is good and not due).
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("held back by the failure backoff")
                && l.contains("gone.test")
                && l.contains("due.test")),
        "{err}"
    );
    assert!(err.contains("capped to"), "{err}");
    let cap = 6 * 3600;
    for name in ["due.test", "gone.test"] {
        let st = state_of(&b, name);
        let after = st["retry_after"].as_i64().unwrap();
        assert!(
            after <= now() + cap && after >= t + cap,
            "{name}: retry_after {after} not capped to now + 6 h: {st}"
        );
    }
    // status shows both, and fails: one missing, both failed last time.
    let status = b.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    assert!(
        stderr(&status).contains("2 of 2 certificate(s) not good: due.test, gone.test"),
        "{}",
        stderr(&status)
    );
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[1]["next_action"], json!("deferred"), "{rows}");
    // --force still issues at once.
    let out = b.run(&["run", "--force", "--only", "gone.test"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    figures(&[(
        "runs-backoff-clock",
        "a backoff stored while the clock was ten years ahead: capped to now + 6 h on read (and stored so); the run exits 1 naming both certificates it holds back, the missing one and the one due (violations)",
        "0".into(),
    )]);
}

// -------------------------------------------------------------- manifest

#[test]
fn entries_claiming_one_file_are_refused_naming_both() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.pve.add_vm(1001);
    let d = b.path("certs/101");
    let mut a = entry(&b, "a.test", "lxc", 101);
    a["include_ca"] = json!(true);
    // Its key is the ca.pem that include_ca writes beside its cert.
    let mut own = entry(&b, "own.test", "vm", 1001);
    own["include_ca"] = json!(true);
    own["key_path"] = json!(b.path("certs/1001/ca.pem"));
    // On a.test's pair.
    let mut twin = entry(&b, "twin.test", "lxc", 101);
    twin["cert_path"] = a["cert_path"].clone();
    twin["key_path"] = a["key_path"].clone();
    // Its key where a.test's ca.pem goes.
    let mut on_ca = entry(&b, "onca.test", "lxc", 101);
    on_ca["key_path"] = json!(d.join("ca.pem"));
    b.write_manifest(&json!([a, own, twin, on_ca]));

    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "[1].key_path ('own.test'): '",
        "[2].cert_path ('twin.test'): '",
        "is the cert_path of entry [0] ('a.test')",
        "[3].key_path ('onca.test'): '",
        "is the ca.pem (include_ca, beside cert_path) of entry [0] ('a.test')",
        "3 of 4 refused by the manifest check",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    let serial = b.inspect(&crt(&b, "a.test", 101)).serial;
    assert!(!b.path("certs/1001").exists());
    // a.test is not reissued by the next run: nobody else writes its files.
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a.test: up to date"),
        "{}",
        stderr(&out)
    );
    assert_eq!(b.inspect(&crt(&b, "a.test", 101)).serial, serial);
    figures(&[(
        "runs-manifest-collisions",
        "manifest entries on one file (a key at its own include_ca ca.pem, two entries on one pair, a key at another entry's ca.pem): each later entry refused naming both entries and fields, exit 2, the first entry issued once and not reissued by the next run (violations)",
        "0".into(),
    )]);
}

#[test]
fn a_bad_entry_fails_alone_and_the_others_are_renewed() {
    let b = Bench::new();
    for id in [101, 102] {
        b.pve.add_ct(id);
    }
    let mut owner = entry(&b, "owner.test", "lxc", 102);
    owner["owner"] = json!("no-such-user-here");
    let mut san = entry(&b, "san.test", "lxc", 102);
    san["sans"] = json!(["-evil"]);
    let mut secret = entry(&b, "secret.test", "lxc", 102);
    secret["post_renewal"] = json!({"swarm_secrets": {"cert": "bad name"}});
    let mut shape = entry(&b, "shape.test", "lxc", 102);
    shape["guest_id"] = json!("102;reboot");
    b.write_manifest(&json!([
        entry(&b, "first.test", "lxc", 101),
        owner,
        san,
        secret,
        shape,
        entry(&b, "last.test", "lxc", 101),
    ]));

    let out = b.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "[1].owner ('owner.test')",
        "[2].sans[0] ('san.test')",
        "[3].post_renewal.swarm_secrets.cert ('secret.test')",
        "[4].guest_id ('shape.test')",
        "4 of 6 refused by the manifest check (fix the manifest): owner.test, san.test, secret.test, shape.test",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    for good in ["first.test", "last.test"] {
        assert!(crt(&b, good, 101).exists(), "{good}: {err}");
    }
    assert!(
        !b.path("certs/102").exists(),
        "a refused entry touched files"
    );

    // Status: every row, the refused ones with their error; exit 2.
    let status = b.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(2), "{}", stderr(&status));
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    let got: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["next_action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("first.test", "nothing"),
        ("owner.test", "refused"),
        ("san.test", "refused"),
        ("secret.test", "refused"),
        ("shape.test", "refused"),
        ("last.test", "nothing"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    assert!(
        rows[1]["error"].as_str().unwrap().contains("[1].owner"),
        "{rows}"
    );
    let table = b.run(&["status"]);
    assert!(
        stdout(&table).contains("refused: owner.test: "),
        "{}",
        stdout(&table)
    );
    // --only a good one: exit 0, the refused ones only warned about.
    let out = b.run(&["run", "--only", "first.test"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not selected, and refused"),
        "{}",
        stderr(&out)
    );
    // A manifest that does not parse still stops everything.
    std::fs::write(b.etc().join("certificate-manifest.json"), "[{").unwrap();
    let out = b.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    figures(&[(
        "runs-bad-entries",
        "a manifest with an unknown owner, a SAN starting with '-', a secret name Docker refuses and a guest_id of the wrong type between two good entries: the good ones issued, the four named and refused, exit 2 at the end; `status` shows all six rows (violations)",
        "0".into(),
    )]);
}
