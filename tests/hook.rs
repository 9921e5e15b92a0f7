//! phoenix-hook, run as Proxmox runs it (`phoenix-hook VMID PHASE`), against
//! a temporary Phoenix layout. "Mounted storage" is a bind mount in a
//! private mount namespace (`unshare -m`), never a mount on the host.

mod common;
mod hook_support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hook_support::{chmod, in_namespace, mode_of, stderr, Layout};
use serde_json::json;

fn layout() -> Layout {
    Layout::new(json!({}), json!({}))
}

fn generation(l: &Layout) -> Option<String> {
    let text = std::fs::read_to_string(l.state.join("ca.generation")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Some(v["generation"].as_str().unwrap().to_string())
}

#[test]
fn unknown_guest_exits_zero_at_once_in_every_phase() {
    let l = layout();
    for phase in ["pre-start", "post-start", "pre-stop", "post-stop"] {
        let o = l.run_unmounted("4242", phase);
        assert_eq!(o.status.code(), Some(0), "{phase}: {}", stderr(&o));
    }
    let o = l.run_unmounted("4242", "pre-start");
    let err = stderr(&o);
    assert!(
        err.contains("4242 pre-start: guest not in the Phoenix configs: nothing to do"),
        "{err}"
    );
}

#[test]
fn known_vm_and_container_without_mounts_start() {
    let l = layout();
    let o = l.run_unmounted("1001", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("VM 1001 (Portainer)"), "{}", stderr(&o));
    let o = l.run_unmounted("900", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("container 900 (Copy-Base)"));
}

#[test]
fn unknown_phase_warns_and_exits_zero() {
    let l = layout();
    let o = l.run_unmounted("101", "pre-migrate");
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("101 pre-migrate: warning: unknown phase 'pre-migrate'"),
        "{err}"
    );
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let bin = env!("CARGO_BIN_EXE_phoenix-hook");
    for args in [
        &[][..],
        &["103"][..],
        &["ct103", "pre-start"][..],
        &["103", "pre-start", "extra"][..],
        &["-5", "pre-start"][..],
    ] {
        let o = Command::new(bin).args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("Usage: phoenix-hook"), "{args:?}");
    }
}

#[test]
fn missing_bind_source_aborts_the_start_naming_guest_path_and_storage() {
    let l = layout();
    // The storage is mounted, but 101's log directory is not on it.
    let o = l.run_mounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let logs = l.logs().display().to_string();
    assert!(
        err.contains("101 pre-start: error: container 101 (Nginx-Phoenix)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "bind mount source '{logs}' does not exist on storage 'quickOS'"
        )),
        "{err}"
    );
    assert!(err.contains("refusing to start container 101"), "{err}");
}

#[test]
fn unmounted_storage_aborts_the_start_even_if_the_directory_exists() {
    let l = layout();
    std::fs::create_dir_all(l.logs()).unwrap();
    let o = l.run_unmounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("storage 'quickOS' is not mounted"), "{err}");
    assert!(err.contains(&l.storage.display().to_string()), "{err}");
    // Both of 101's sources are named, not only the first.
    assert_eq!(err.matches("is not mounted").count(), 2, "{err}");
}

#[test]
fn sources_on_mounted_storage_let_the_guest_start() {
    let l = layout();
    std::fs::create_dir_all(l.logs()).unwrap();
    let o = l.run_mounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("container 101 (Nginx-Phoenix) may start"));
    // A source outside the storage root only has to exist.
    let o = l.run_unmounted("104", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no storage mount to check"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir(l.dir.path().join("local/data")).unwrap();
    let o = l.run_unmounted("104", "pre-start");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("local/data' does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ca_pre_start_makes_a_new_generation_and_the_old_token_stays_stale() {
    let l = layout();
    // An earlier boot: generation g0 and its token.
    let fp = "ab".repeat(32);
    let o = l
        .phoenix_ca(&[
            "publish",
            "--no-health",
            "--fingerprint",
            &fp,
            "--ca-url",
            "https://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let g0 = generation(&l).unwrap();
    let old_token = std::fs::read(l.state.join("ca.ready")).unwrap();

    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let g1 = generation(&l).unwrap();
    assert_ne!(g0, g1);
    assert!(!l.state.join("ca.ready").exists(), "old token not removed");

    // The old token comes back (a copy, a late writer): a waiter keeps waiting.
    std::fs::write(l.state.join("ca.ready"), &old_token).unwrap();
    let o = l
        .phoenix_ca(&["wait", "--no-health", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stale readiness token"),
        "{}",
        stderr(&o)
    );

    // A waiter started now returns once the token of the new generation is there.
    let waiter = l
        .phoenix_ca(&["wait", "--no-health", "--timeout", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = l
        .phoenix_ca(&[
            "publish",
            "--no-health",
            "--fingerprint",
            &fp,
            "--ca-url",
            "https://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let w = waiter.wait_with_output().unwrap();
    assert_eq!(w.status.code(), Some(0), "{}", stderr(&w));
    assert_eq!(generation(&l).unwrap(), g1);
}

#[test]
fn ca_pre_start_refuses_an_unmounted_state_directory() {
    let l = layout();
    let o = l.run_unmounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("CA state directory"), "{}", stderr(&o));
    assert!(
        generation(&l).is_none(),
        "no new generation on a refused start"
    );
}

#[test]
fn open_secrets_are_tightened_and_reported() {
    let l = layout();
    let pw = l.state.join("provisioner_password.txt");
    std::fs::write(&pw, "secret").unwrap();
    chmod(&pw, 0o644);
    let secrets = l.state.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    chmod(&secrets, 0o755);
    std::fs::write(secrets.join("root_ca_key"), "k").unwrap();
    chmod(&secrets.join("root_ca_key"), 0o640);
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode_of(&pw), 0o600);
    assert_eq!(mode_of(&secrets), 0o700);
    assert_eq!(mode_of(&secrets.join("root_ca_key")), 0o600);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("CA secret '{}' was mode 0644", pw.display()))
            && err.contains("tightened to 0600"),
        "{err}"
    );
    assert!(
        !err.contains("secret\n"),
        "the secret itself never reaches the log"
    );
    assert!(generation(&l).is_some());
}

#[test]
fn open_secret_refuses_the_start_when_fixing_is_off() {
    let l = Layout::new(json!({"fix_permissions": false}), json!({}));
    let pw = l.state.join("ca_password.txt");
    std::fs::write(&pw, "secret").unwrap();
    chmod(&pw, 0o604);
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("'{}' is mode 0604", pw.display())),
        "{err}"
    );
    assert_eq!(mode_of(&pw), 0o604, "left as found");
    assert!(generation(&l).is_none());
}

#[test]
fn ca_post_start_wait_is_bounded() {
    // post_start_timeout_secs is 1, and no CA ever answers.
    let l = layout();
    let started = Instant::now();
    let o = l.run_unmounted("103", "post-start");
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr(&o).contains("103 post-start: error: CA not ready after 1s"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gated_guest_waits_bounded_then_refuses_to_start() {
    let l = Layout::new(
        json!({}),
        json!({"guests": {"102": {"gate_on_ca": true, "gate_timeout_secs": 1}}}),
    );
    let o = l.run_mounted("102", "pre-start");
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("refusing to start container 102 (Traefik-Internal): the CA is not ready"),
        "{err}"
    );
}

#[test]
fn post_start_returns_once_the_real_ca_is_ready_and_gates_open() {
    let ca = common::TestCa::start(None);
    let l = Layout::new(
        json!({"url": ca.url(), "post_start_timeout_secs": 60}),
        json!({"guests": {"102": {"gate_on_ca": true, "gate_timeout_secs": 30}}}),
    );
    std::fs::copy(ca.root_cert(), l.state.join("phoenix_root_ca.crt")).unwrap();
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let post_start = l
        .hook("103", "post-start")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CA guest's ExecStartPost= publishes once /health answers.
    let o = l
        .phoenix_ca(&[
            "publish",
            "--ca-url",
            &ca.url(),
            "--root",
            &ca.root_cert().to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p = post_start.wait_with_output().unwrap();
    assert_eq!(p.status.code(), Some(0), "{}", stderr(&p));
    assert!(stderr(&p).contains("CA ready after"), "{}", stderr(&p));

    let o = l.run_mounted("102", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("may start"));
}

#[test]
fn stop_phases_withdraw_the_token_and_never_fail() {
    let l = layout();
    std::fs::write(l.state.join("ca.ready"), "{}").unwrap();
    let o = l.run_unmounted("103", "pre-stop");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!l.state.join("ca.ready").exists());
    assert!(stderr(&o).contains("readiness token"), "{}", stderr(&o));
    let o = l.run_unmounted("103", "post-stop");
    assert_eq!(o.status.code(), Some(0), "idempotent: {}", stderr(&o));

    // A broken configuration: stop phases still exit 0, pre-start refuses (2).
    std::fs::write(&l.config, "{\"ca\": {\"guest_idd\": 1}}").unwrap();
    let o = l.run_unmounted("103", "post-stop");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("ca.guest_idd"), "{}", stderr(&o));
    let o = l.run_unmounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn lines_also_go_to_syslog_with_ident_and_prefix() {
    let l = layout();
    // A private /run whose syslog socket the test reads (/var/run -> /run).
    let run = tempfile::tempdir().unwrap();
    let sock = UnixDatagram::bind(run.path().join("syslog")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let o = in_namespace(
        &[(run.path(), Path::new("/run"))],
        &l.hook("4242", "pre-start"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("a syslog datagram");
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(line.contains("phoenix-hook["), "{line}");
    assert!(
        line.contains("4242 pre-start: guest not in the Phoenix configs"),
        "{line}"
    );
}

#[test]
fn snippet_runs_the_binary_and_refuses_a_start_without_it() {
    let l = layout();
    let snippet = common::project().join("hooks/phoenix-hook");
    let o = Command::new(&snippet)
        .args(["4242", "pre-start"])
        .env("PHOENIX_HOOK_BIN", env!("CARGO_BIN_EXE_phoenix-hook"))
        .env("PHOENIX_CONFIG", &l.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("4242 pre-start: guest not in the Phoenix configs"));
    let missing = l.dir.path().join("no-such-binary");
    let run = |phase: &str| {
        Command::new(&snippet)
            .args(["4242", phase])
            .env("PHOENIX_HOOK_BIN", &missing)
            .output()
            .unwrap()
    };
    let o = run("pre-start");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-binary"), "{}", stderr(&o));
    assert_eq!(run("post-stop").status.code(), Some(0));
}
