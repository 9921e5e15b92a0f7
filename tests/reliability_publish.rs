//! Crash consistency of the readiness token: `phoenix-ca publish` killed
//! with SIGKILL at random instants (200 kills; `PHOENIX_CRASH_RUNS=N`,
//! `PHOENIX_CRASH_SEED` to replay). After each kill `ca.ready` holds the
//! old token or a whole new one of the current generation, never a part,
//! and so does its copy in `public/`.

mod common;
mod reliability_support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phoenix_hooks::ca::token::{self, Verdict};
use reliability_support::{figures, Rng};
use serde_json::json;

const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn kill_9_publish_leaves_the_old_or_the_new_token() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("ca");
    std::fs::create_dir_all(&state).unwrap();
    let config = d.path().join("toolkit.json");
    std::fs::write(
        &config,
        json!({"lock_dir": d.path().join("lock"), "state_dir": d.path().join("state"),
               "ca": {"url": "https://127.0.0.1:1", "state_dir": state}})
        .to_string(),
    )
    .unwrap();
    let publish = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phoenix-ca"));
        c.arg("--config")
            .arg(&config)
            .args(["publish", "--no-health", "--fingerprint", FP, "--state-dir"])
            .arg(&state)
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let paths = phoenix_hooks::config::Config::default().ca.paths_in(&state);
    let public = phoenix_hooks::ca::public::paths(&paths);
    assert!(publish().status().unwrap().success());
    let t0 = Instant::now();
    assert!(publish().status().unwrap().success());
    let span = t0.elapsed().as_micros() as u64;

    let wanted = reliability_support::size("PHOENIX_CRASH_RUNS", 200);
    let mut rng = Rng::from_env();
    let (mut kills, mut old, mut new, mut attempt) = (0, 0, 0, 0);
    let mut violations = Vec::new();
    while kills < wanted && attempt < wanted * 5 {
        attempt += 1;
        let before = std::fs::read(&paths.ready).unwrap();
        let mut child = publish().spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        let _ = child.kill();
        if child.wait().unwrap().signal() == Some(9) {
            kills += 1;
        }
        let after = std::fs::read(&paths.ready).unwrap_or_default();
        if !token::check(&public).is_fresh() {
            violations.push(format!(
                "attempt {attempt}: public/: {:?}",
                token::check(&public)
            ));
        }
        match token::check(&paths) {
            Verdict::Fresh(t) if after == before => {
                assert_eq!(t.fingerprint, FP);
                old += 1
            }
            Verdict::Fresh(_) => new += 1,
            other => violations.push(format!(
                "attempt {attempt}: {other:?}: {:?}",
                String::from_utf8_lossy(&after)
            )),
        }
        // The next publish repairs whatever the kill left.
        if !publish().status().unwrap().success() {
            violations.push(format!("attempt {attempt}: the next publish failed"));
        }
    }
    eprintln!("{kills} kills in {attempt} attempts: old token {old}, new token {new}");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert_eq!(kills, wanted, "too few kills landed on a live publish");
    if reliability_support::default_sizes("PHOENIX_CRASH_RUNS") {
        figures(&[
            (
                "crash-publish-kills",
                "`phoenix-ca publish` killed with SIGKILL at a random instant",
                kills.to_string(),
            ),
            (
                "crash-publish-violations",
                "kills after which ca.ready (or public/ca.ready) was missing, partial or not of the current generation",
                violations.len().to_string(),
            ),
        ]);
    }
}
