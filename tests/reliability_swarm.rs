//! Concurrency of `phoenix-swarm ensure`: 50 simultaneous runs on a fresh
//! pair (fake qm, fake docker). Without a lock wait one forms the swarm and
//! the others exit 75 naming the holder or find the work done; then 10
//! simultaneous runs with a wait all succeed. Either way, the fake docker's recorded calls show
//! each change made once: one `swarm init`, one join, one label update.

mod common;
mod reliability_support;
mod swarm_support;

use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use swarm_support::{mutating, text, Lab};

const RUNS: usize = 50;
/// Waiting runs go one after another (each reads both VMs through the
/// Python fakes, about 1.5 s): ten keep the suite within its CI budget.
const WAITING: usize = 10;

fn stampede(lab: &Lab, runs: usize) -> Vec<Output> {
    let children: Vec<_> = (0..runs)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_phoenix-swarm"))
                .arg("ensure")
                .arg("--config")
                .arg(&lab.config)
                .envs(lab.pve.env())
                .env_remove("PHOENIX_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// The changes recorded so far, by kind (`swarm init`, `swarm join`, ...).
fn changes(lab: &Lab) -> Vec<String> {
    mutating(&lab.docker_calls())
        .into_iter()
        .map(|(_, a)| a[..2].join(" "))
        .collect()
}

fn set_lock_wait(lab: &Lab, secs: u64) {
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&lab.config).unwrap()).unwrap();
    cfg["swarm"]["lock_wait_secs"] = json!(secs);
    std::fs::write(&lab.config, cfg.to_string()).unwrap();
}

#[test]
fn fifty_simultaneous_ensures_form_the_swarm_once() {
    let lab = Lab::new();
    let mut violations = Vec::new();
    // Each node's labels once: the manager's VMID, the worker's.
    let want = ["swarm init", "swarm join", "node update", "node update"];

    let outs = stampede(&lab, RUNS);
    for o in &outs {
        let err = text(&o.stderr);
        match o.status.code() {
            Some(0) => {}
            Some(75) if err.contains("already running (pid ") => {}
            other => violations.push(format!("exit {other:?}: {err}")),
        }
    }
    let busy = outs.iter().filter(|o| o.status.code() == Some(75)).count();
    if changes(&lab) != want {
        violations.push(format!("changes made: {:?}", changes(&lab)));
    }

    // Waiting runs on the formed swarm: all succeed, none changes a thing.
    set_lock_wait(&lab, 120);
    for o in stampede(&lab, WAITING) {
        if o.status.code() != Some(0) {
            violations.push(format!("waiting run: {}", text(&o.stderr)));
        }
    }
    if changes(&lab) != want {
        violations.push(format!("after waiting runs: {:?}", changes(&lab)));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(busy > 0, "no run found the lock held: not simultaneous");
    reliability_support::figures(&[
        (
            "concurrency-swarm-runs",
            "simultaneous `phoenix-swarm ensure`: 50 without a wait on a fresh pair, then 10 waiting on the formed swarm",
            (RUNS + WAITING).to_string(),
        ),
        (
            "concurrency-swarm-violations",
            "swarm changes (init, join, label) made more than once, or a run that neither worked, waited nor named the holder",
            violations.len().to_string(),
        ),
    ]);
}
