//! Concurrency: 50 simultaneous `phoenix-renew run` against the real
//! step-ca. Exactly one issues; without a wait the others exit 75 naming
//! the holder (or find the work done); with a wait all succeed, and still
//! only one certificate was issued.

mod common;
mod reliability_support;
mod renew_support;

use renew_support::{stderr, Bench};
use serde_json::json;

const RUNS: usize = 50;

/// Start `RUNS` runs at once; their outputs.
fn stampede(b: &Bench) -> Vec<std::process::Output> {
    let children: Vec<_> = (0..RUNS).map(|_| b.spawn(&["run"])).collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn fifty_simultaneous_renewals_issue_once() {
    let mut b = Bench::new();
    let ct = b.pve.add_ct(101);
    b.pve.guest_command(
        &ct,
        "systemctl",
        "#!/bin/sh\necho reload >> \"$FAKE_PVE/reloads.log\"\n",
    );
    let d = b.path("pve/ssl");
    let entry = json!([{"common_name": "web.test", "guest_id": 101, "guest_type": "lxc",
        "cert_path": d.join("web.crt"), "key_path": d.join("web.key"),
        "post_renewal": {"run": ["systemctl", "reload", "nginx"]}}]);
    b.write_manifest(&entry);
    let log = b.pve.dir.path().join("reloads.log");
    let reloads = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut violations = Vec::new();

    // No wait: one works, the others say who holds the lock.
    let outs = stampede(&b);
    let issued = outs
        .iter()
        .filter(|o| stderr(o).contains("web.test: issued serial"))
        .count();
    for o in &outs {
        match o.status.code() {
            Some(0) => {}
            Some(75) if stderr(o).contains("already running (pid ") => {}
            other => violations.push(format!("exit {other:?}: {}", stderr(o))),
        }
    }
    let busy = outs.iter().filter(|o| o.status.code() == Some(75)).count();
    if issued != 1 || reloads() != 1 {
        violations.push(format!("issued {issued} times, reloaded {}", reloads()));
    }

    // With a wait: everyone gets its turn; still one issue in all.
    b.set_renewal("lock_wait_secs", json!(120));
    std::fs::remove_file(d.join("web.crt")).unwrap();
    let outs = stampede(&b);
    let issued2 = outs
        .iter()
        .filter(|o| stderr(o).contains("web.test: issued serial"))
        .count();
    for o in &outs {
        if o.status.code() != Some(0) {
            violations.push(format!("waiting run: {}", stderr(o)));
        }
    }
    if issued2 != 1 || reloads() != 2 {
        violations.push(format!(
            "waiting: issued {issued2} times, reloads {}",
            reloads()
        ));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(busy > 0, "no run found the lock held: not simultaneous");
    reliability_support::figures(&[
        (
            "concurrency-renew-runs",
            "simultaneous `phoenix-renew run`, twice (no wait, then waiting)",
            (2 * RUNS).to_string(),
        ),
        (
            "concurrency-renew-violations",
            "certificates issued more than once, or a run that neither worked, waited nor named the holder",
            violations.len().to_string(),
        ),
    ]);
}
