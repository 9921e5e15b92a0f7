//! Crash consistency: `phoenix-renew run` killed with SIGKILL at random
//! instants against the real step-ca (200 kills; `PHOENIX_CRASH_RUNS=N`
//! for more, `PHOENIX_CRASH_SEED` to replay). After each kill the pair on
//! disk is the old or the new one (or, for a new key, the two-syscall
//! instant between the renames, see RELIABILITY.md), nothing half-written
//! is visible, and the next run repairs everything: matching pair, no temp
//! file, the post-renewal action run for the certificate in place.
//! Also `phoenix-ca publish` killed mid-way: the token is old or new.

mod common;
mod reliability_support;
mod renew_support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reliability_support::{figures, pair, reap_orphans, temps_in, Pair, Rng};
use renew_support::{stderr, Bench};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn renew(b: &Bench, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"));
    cmd.arg("--config").arg(config).args(args);
    cmd.envs(b.pve.env())
        .env("STEPPATH", b.path("steppath"))
        .env_remove("PHOENIX_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn kill_9_renew_at_random_instants_never_tears_a_pair() {
    let b = Bench::new();
    // After the CA started: its daemon must not become ours to reap.
    reliability_support::become_subreaper();
    let ct = b.pve.add_ct(101);
    let dir = b.path("pve/ssl/101");
    let (crt, key) = (dir.join("web.crt"), dir.join("web.key"));
    // The guest's reload records which certificate the service was given.
    b.pve.guest_command(
        &ct,
        "systemctl",
        &format!(
            "#!/bin/sh\nsha256sum < {} | cut -d' ' -f1 >> \"$FAKE_PVE/reloads.log\"\n",
            crt.display()
        ),
    );
    b.write_manifest(
        &json!([{"common_name": "web.test", "sans": ["web.test", "10.0.0.101"],
        "guest_id": 101, "guest_type": "lxc", "owner": "0:33", "include_ca": true,
        "cert_path": crt, "key_path": key,
        "post_renewal": {"run": ["systemctl", "reload", "nginx"]}}]),
    );
    // Renewal (same key) with --renew-now, a new key with --force.
    let clean = b.path("toolkit.json");
    let root = phoenix_hooks::cert::read_root(&b.ca.root_cert()).unwrap();
    let reloads = b.pve.dir.path().join("reloads.log");
    let last_reload = || {
        std::fs::read_to_string(&reloads)
            .unwrap_or_default()
            .lines()
            .last()
            .map(String::from)
    };

    let out = renew(&b, &clean, &["run"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The span kill instants are drawn from: a whole forced issue.
    let t0 = Instant::now();
    let out = renew(&b, &clean, &["run", "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let span = t0.elapsed().as_micros() as u64;

    let wanted = reliability_support::size("PHOENIX_CRASH_RUNS", 200);
    let mut rng = Rng::from_env();
    let (mut kills, mut finished, mut torn, mut old, mut new) = (0, 0, 0, 0, 0);
    let (mut temps_left, mut orphans) = (0, 0);
    let mut violations: Vec<String> = Vec::new();
    let mut attempt = 0;
    while kills < wanted && attempt < wanted * 3 {
        attempt += 1;
        let Pair::Matching {
            cert: old_cert,
            key: old_key,
        } = pair(&crt, &key, &root)
        else {
            panic!("the pair was not repaired before attempt {attempt}");
        };
        let args: &[&str] = if attempt % 2 == 0 {
            &["run", "--force"]
        } else {
            &["run", "--renew-now"]
        };
        let mut child = renew(&b, &clean, args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        orphans += reap_orphans(&[]);
        if status.signal() == Some(9) {
            kills += 1;
        } else {
            finished += 1;
        }

        let here = format!("attempt {attempt} ({})", args.join(" "));
        match pair(&crt, &key, &root) {
            Pair::Matching { cert, key: k } if cert == old_cert && k == old_key => old += 1,
            Pair::Matching { .. } => new += 1,
            // A new key renamed in, the certificate's rename not yet done.
            Pair::Mismatched { cert, key: k } if cert == old_cert && k != old_key => torn += 1,
            other => violations.push(format!("{here}: {other:?}")),
        }
        let key_mode = std::fs::metadata(&key).map(|m| m.mode() & 0o777);
        if key_mode.as_ref().map_or(true, |m| m & 0o007 != 0) {
            violations.push(format!("{here}: key mode {key_mode:?}"));
        }
        let state = std::fs::read(b.path("state/renew-state.json")).unwrap();
        if serde_json::from_slice::<Value>(&state).is_err() {
            violations.push(format!("{here}: renew-state.json does not parse"));
        }
        let mut visible = renew_support::listing(&dir);
        visible.retain(|n| !n.starts_with('.'));
        if visible != ["ca.pem", "web.crt", "web.key"] {
            violations.push(format!("{here}: files {visible:?}"));
        }
        temps_left += temps_in(&dir).len() + temps_in(&b.path("state")).len();

        // The next run repairs: a matching pair, no temp file, and the
        // service was last given the certificate now in place.
        let out = renew(&b, &clean, &["run"]).output().unwrap();
        if !out.status.success() {
            violations.push(format!("{here}: repair run failed: {}", stderr(&out)));
        }
        if !matches!(pair(&crt, &key, &root), Pair::Matching { .. }) {
            violations.push(format!("{here}: not repaired"));
        }
        let left = [temps_in(&dir), temps_in(&b.path("state"))].concat();
        if !left.is_empty() {
            violations.push(format!("{here}: temp files after repair: {left:?}"));
        }
        if last_reload() != Some(hex(&std::fs::read(&crt).unwrap())) {
            violations.push(format!(
                "{here}: the service never got the certificate in place"
            ));
        }
    }
    eprintln!(
        "{kills} kills ({finished} runs ended first): old pair {old}, new pair {new}, \
         new key beside old cert {torn}; {temps_left} temp files left by kills (all \
         removed by the next run); {orphans} orphaned children reaped"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert_eq!(kills, wanted, "too few kills landed on a live run");
    if reliability_support::default_sizes("PHOENIX_CRASH_RUNS") {
        figures(&[
            ("crash-renew-kills", "`phoenix-renew run` killed with SIGKILL at a random instant, each followed by a repair run (real step-ca)", kills.to_string()),
            ("crash-renew-violations", "kills after which a pair did not parse, a visible file was half-written, a key was world-readable, or the next run did not repair", violations.len().to_string()),
        ]);
    }
}
