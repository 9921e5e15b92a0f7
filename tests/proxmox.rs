//! The typed guest transports against the fake `qm`/`pct`, whose output
//! shapes are those of the real tools (tests/fakes/pve.py).

mod common;

use common::FakePve;
use phoenix_hooks::exit::{kind_of, Kind};
use phoenix_hooks::phoenix::GuestType;
use phoenix_hooks::proxmox::{Finished, Guest, GuestOutput, Proxmox, RunState};
use std::time::{Duration, Instant};

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

// One test function: the fake's state directory is passed in the process
// environment, which parallel tests in one binary would share.
#[test]
fn transports_report_what_the_guest_did() {
    let pve = FakePve::new();
    std::env::set_var("PHOENIX_FAKE_PVE", pve.dir.path());
    let px = Proxmox {
        qm: common::fakes().join("qm").display().to_string(),
        pct: common::fakes().join("pct").display().to_string(),
        guest_timeout: 2,
        ..Proxmox::default()
    };
    let vm = Guest {
        kind: GuestType::Vm,
        id: 1001,
    };
    let ct = Guest {
        kind: GuestType::Lxc,
        id: 101,
    };
    let vm_dir = pve.add_vm(1001);
    let ct_dir = pve.add_ct(101);

    // Exit codes come through, from both transports.
    let out = px
        .exec(vm, &argv(&["sh", "-c", "echo out; exit 3"]), None)
        .unwrap();
    assert_eq!((out.exitcode, out.stdout.as_str()), (3, "out\n"));
    let out = px
        .exec(ct, &argv(&["sh", "-c", "echo out; exit 4"]), None)
        .unwrap();
    assert_eq!((out.exitcode, out.stdout.as_str()), (4, "out\n"));
    let e = px
        .exec_ok(vm, &argv(&["sh", "-c", "echo bad >&2; exit 1"]), None)
        .unwrap_err();
    assert!(
        e.to_string().contains("VM 1001") && e.to_string().contains("bad"),
        "{e}"
    );

    // A secret on stdin reaches the guest and never qm's argv.
    let out = px.exec(vm, &argv(&["cat"]), Some(b"s3cret-token")).unwrap();
    assert_eq!(out.stdout, "s3cret-token");
    let out = px.exec(ct, &argv(&["cat"]), Some(b"s3cret-token")).unwrap();
    assert_eq!(out.stdout, "s3cret-token");
    for call in pve.calls() {
        assert!(
            !call.to_string().contains("s3cret"),
            "secret in argv: {call}"
        );
    }

    // The guest command outlives qm's --timeout: a bare pid, a failure.
    let e = px.exec(vm, &argv(&["sleep", "5"]), None).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Timeout, "{e:#}");
    assert!(format!("{e:#}").contains("pid"), "{e:#}");

    // Killed by a signal in the guest: a failure, not exit code 0.
    let e = px
        .exec(vm, &argv(&["sh", "-c", "kill -9 $$"]), None)
        .unwrap_err();
    assert!(format!("{e:#}").contains("signal 9"), "{e:#}");

    // Stopped guests: status exits 0, the state says stopped.
    pve.set_status(&vm_dir, "stopped");
    assert_eq!(px.status(vm).unwrap(), RunState::Other("stopped".into()));
    let e = px.ensure_reachable(vm).unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    pve.set_status(&vm_dir, "running");

    // No agent: named, not hung.
    pve.agent_absent(&vm_dir);
    let e = px.ensure_reachable(vm).unwrap_err();
    assert!(
        format!("{e:#}").contains("QEMU guest agent is not running"),
        "{e:#}"
    );
    let e = px.exec(vm, &argv(&["true"]), None).unwrap_err();
    assert!(
        format!("{e:#}").contains("QEMU guest agent is not running"),
        "{e:#}"
    );

    // Unknown guest.
    let e = px
        .status(Guest {
            kind: GuestType::Vm,
            id: 999,
        })
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("999.conf' does not exist"),
        "{e:#}"
    );
    std::fs::remove_file(vm_dir.join("agent")).unwrap();

    // Non-ASCII output comes back as the guest printed it: qm encodes it
    // twice (to_json with utf8 => 1 over decode_base64's bytes), pct not.
    for g in [vm, ct] {
        let out = px
            .exec(
                g,
                &argv(&["sh", "-c", "printf 'é ✔\\n'; printf 'ü' >&2"]),
                None,
            )
            .unwrap();
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("é ✔\n", "ü"),
            "{g}"
        );
    }

    // No agent configured: final at once, with what to do, not retried for
    // the bound (two minutes here) and not 75.
    std::fs::write(vm_dir.join("agent"), "unconfigured").unwrap();
    let started = Instant::now();
    let e = px.wait_reachable(vm, Duration::from_secs(120)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "retried");
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("VM 1001 has no QEMU guest agent configured"),
        "{msg}"
    );
    assert!(msg.contains("qm set 1001 --agent 1"), "{msg}");
    let e = px.exec(vm, &argv(&["true"]), None).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    // ...whereas an agent that does not answer yet is temporary.
    std::fs::write(vm_dir.join("agent"), "absent").unwrap();
    let e = px.wait_reachable(vm, Duration::ZERO).unwrap_err();
    assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
    assert!(format!("{e:#}").contains("--agent 1"), "{e:#}");
    std::fs::remove_file(vm_dir.join("agent")).unwrap();

    // A command that outlives qm's --timeout is told apart, with its pid,
    // and its end can be asked for.
    let started = px
        .exec_or_pid(vm, &argv(&["sh", "-c", "sleep 3; echo done"]), None)
        .unwrap();
    let Finished::Running { pid } = started else {
        panic!("{started:?}")
    };
    assert_eq!(
        px.exec_status(1001, pid).unwrap(),
        Finished::Running { pid }
    );
    let out = wait_ended(&px, 1001, pid, Duration::from_secs(10));
    assert_eq!(out.stdout, "done\n");
    // Collected once: the agent forgets it.
    assert!(px.exec_status(1001, pid).is_err());

    // A stopped CT: pct exec's own refusal, not an exit code of the command.
    pve.set_status(&ct_dir, "stopped");
    let e = px.exec(ct, &argv(&["true"]), None).unwrap_err();
    assert!(format!("{e:#}").contains("CT 101 is not running"), "{e:#}");
    pve.set_status(&ct_dir, "running");

    // pct push: a held config lock is temporary; warnings are no failure.
    let src = pve.dir.path().join("src.pem");
    std::fs::write(&src, "data").unwrap();
    let dest = pve.dir.path().join("dest.pem");
    std::fs::write(ct_dir.join("lock"), "").unwrap();
    let e = px
        .pct_push(101, &src, dest.to_str().unwrap(), 0o600)
        .unwrap_err();
    assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
    assert!(
        format!("{e:#}").contains("pve-config-101.lock' - got timeout"),
        "{e:#}"
    );
    std::fs::remove_file(ct_dir.join("lock")).unwrap();
    std::fs::write(ct_dir.join("push_warnings"), "2").unwrap();
    px.pct_push(101, &src, dest.to_str().unwrap(), 0o600)
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"data");

    // Not a Proxmox node: no qm at all. Final at once.
    let none = Proxmox {
        qm: pve.dir.path().join("no-qm").display().to_string(),
        ..px.clone()
    };
    let e = none
        .wait_reachable(vm, Duration::from_secs(120))
        .unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    assert!(format!("{e:#}").contains("not a Proxmox VE node"), "{e:#}");
}

/// The end of the command of `pid` in VM `vmid`, asked with
/// `exec-status` until it has one (at most `bound`).
fn wait_ended(px: &Proxmox, vmid: u32, pid: i64, bound: Duration) -> GuestOutput {
    let deadline = Instant::now() + bound;
    loop {
        match px.exec_status(vmid, pid).unwrap() {
            Finished::Done(out) => return out,
            Finished::Running { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("VM {vmid}, pid {pid}: {other:?}"),
        }
    }
}

/// A fake tool of node `node` in the three-node cluster under `root`:
/// a wrapper setting the fake's environment (not this process's, which
/// the other test changes).
fn node_tool(bin: &std::path::Path, root: &std::path::Path, node: &str, tool: &str) -> String {
    let p = bin.join(format!("{tool}-{node}"));
    common::write_executable(
        &p,
        &format!(
            "#!/bin/sh\nPHOENIX_FAKE_PVE='{state}' FAKE_PVE_CLUSTER='{state}/etc-pve' \
             FAKE_PVE_NODE={node} FAKE_PVE_TOOL={tool} exec '{fake}' \"$@\"\n",
            state = root.display(),
            fake = common::fakes().join("pve.py").display()
        ),
    );
    p.display().to_string()
}

/// The guests of another node: a VM through `pvesh` (agent/exec, then
/// agent/exec-status), the same typed result as `qm guest exec`; stdin
/// never sent across nodes; a container of another node refused; a VM
/// that moved away temporary.
#[test]
fn vms_of_other_nodes_go_through_the_cluster_api() {
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let cluster = root.path().join("etc-pve");
    for (node, sub, id) in [
        ("pve1", "qemu-server", 1003),
        ("pve2", "qemu-server", 1001),
        ("pve3", "qemu-server", 1002),
        ("pve2", "lxc", 102),
    ] {
        let dir = cluster.join("nodes").join(node).join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{id}.conf")), "agent: 1\n").unwrap();
        let kind = if sub == "lxc" { "lxc" } else { "qemu" };
        std::fs::create_dir_all(root.path().join(kind).join(id.to_string()).join("bin")).unwrap();
    }
    let remote: std::collections::BTreeMap<u32, String> = [
        (1001, "pve2".to_string()),
        (1002, "pve3".to_string()),
        (102, "pve2".to_string()),
    ]
    .into_iter()
    .collect();
    let px = Proxmox {
        qm: node_tool(bin.path(), root.path(), "pve1", "qm"),
        pct: node_tool(bin.path(), root.path(), "pve1", "pct"),
        pvesh: node_tool(bin.path(), root.path(), "pve1", "pvesh"),
        guest_timeout: 3,
        ..Proxmox::default()
    }
    .with_remote(remote);
    let vm = |id| Guest {
        kind: GuestType::Vm,
        id,
    };
    let calls = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(root.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // The local VM through qm, the others through pvesh, proxied.
    assert_eq!(px.status(vm(1003)).unwrap(), RunState::Running);
    assert_eq!(px.status(vm(1001)).unwrap(), RunState::Running);
    px.ensure_reachable(vm(1002)).unwrap();
    let out = px
        .exec(
            vm(1001),
            &argv(&[
                "sh",
                "-c",
                "printf 'é ✔\\n'; echo -n oops >&2; exit 3",
                "--",
                "",
            ]),
            None,
        )
        .unwrap();
    assert_eq!(
        (out.exitcode, out.stdout.as_str(), out.stderr.as_str()),
        (3, "é ✔\n", "oops")
    );
    let tools: Vec<(String, String)> = calls()
        .iter()
        .map(|c| {
            (
                c["tool"].as_str().unwrap().to_string(),
                c["env"]["FAKE_PVE_NODE"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(tools.contains(&("qm".into(), "pve1".into())), "{tools:?}");
    assert!(
        tools.contains(&("pvesh".into(), "pve2".into())),
        "{tools:?}"
    );
    assert!(
        tools.contains(&("pvesh".into(), "pve3".into())),
        "{tools:?}"
    );
    assert!(
        !tools.contains(&("qm".into(), "pve2".into())),
        "qm for another node's VM: {tools:?}"
    );
    let exec = calls()
        .into_iter()
        .find(|c| c["argv"][1] == "/nodes/pve2/qemu/1001/agent/exec")
        .unwrap();
    assert_eq!(
        exec["argv"].as_array().unwrap()[..6],
        [
            "create",
            "/nodes/pve2/qemu/1001/agent/exec",
            "--output-format",
            "json",
            "--command",
            "sh"
        ]
    );

    // Killed by a signal, still running at the bound: as with qm.
    let e = px
        .exec(vm(1001), &argv(&["sh", "-c", "kill -9 $$"]), None)
        .unwrap_err();
    assert!(format!("{e:#}").contains("signal 9"), "{e:#}");
    let started = px
        .exec_or_pid(vm(1002), &argv(&["sh", "-c", "sleep 4; echo late"]), None)
        .unwrap();
    let Finished::Running { pid } = started else {
        panic!("{started:?}")
    };
    let out = wait_ended(&px, 1002, pid, Duration::from_secs(15));
    assert_eq!(out.stdout, "late\n");

    // Stdin (a secret) is never sent to another node: refused, named.
    let before = calls().len();
    let e = px
        .exec(vm(1002), &argv(&["cat"]), Some(b"s3cret-token"))
        .unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    let msg = format!("{e:#}");
    for part in ["VM 1002 runs on node pve3", "input-data", "on node pve3"] {
        assert!(msg.contains(part), "{msg}");
    }
    assert_eq!(calls().len(), before, "a call was made");
    // ...while the local VM gets it on qm's stdin.
    let out = px
        .exec(vm(1003), &argv(&["cat"]), Some(b"s3cret-token"))
        .unwrap();
    assert_eq!(out.stdout, "s3cret-token");
    for c in calls() {
        assert!(!c["argv"].to_string().contains("s3cret"), "{c}");
    }

    // A container of another node: no exec API, refused; its state read.
    let ct = Guest {
        kind: GuestType::Lxc,
        id: 102,
    };
    assert_eq!(px.status(ct).unwrap(), RunState::Running);
    let e = px.exec(ct, &argv(&["true"]), None).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    assert!(
        format!("{e:#}").contains("CT 102 runs on node pve2")
            && format!("{e:#}").contains("no exec API"),
        "{e:#}"
    );
    let e = px.pct_push(102, root.path(), "/tmp/x", 0o600).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");

    // The agent's own refusals come through the proxy, typed.
    std::fs::write(root.path().join("qemu/1001/agent"), "unconfigured").unwrap();
    let e = px.exec(vm(1001), &argv(&["true"]), None).unwrap_err();
    assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
    assert!(format!("{e:#}").contains("qm set 1001 --agent 1"), "{e:#}");
    std::fs::write(root.path().join("qemu/1001/agent"), "absent").unwrap();
    let e = px.wait_reachable(vm(1001), Duration::ZERO).unwrap_err();
    assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
    std::fs::remove_file(root.path().join("qemu/1001/agent")).unwrap();

    // The VM moved to pve3 since its node was read: temporary, named.
    std::fs::rename(
        cluster.join("nodes/pve2/qemu-server/1001.conf"),
        cluster.join("nodes/pve3/qemu-server/1001.conf"),
    )
    .unwrap();
    let e = px.exec(vm(1001), &argv(&["true"]), None).unwrap_err();
    assert_eq!(kind_of(&e), Kind::TempFail, "{e:#}");
    assert!(format!("{e:#}").contains("not on node pve2"), "{e:#}");
    // And qm of this node finds none of the others' guests, as Proxmox.
    let local_only = Proxmox {
        remote: Default::default(),
        ..px.clone()
    };
    let e = local_only.status(vm(1002)).unwrap_err();
    assert!(
        format!("{e:#}")
            .contains("Configuration file 'nodes/pve1/qemu-server/1002.conf' does not exist"),
        "{e:#}"
    );
}
