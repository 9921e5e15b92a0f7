//! The typed guest transports against the fake `qm`/`pct`, whose output
//! shapes are those of the real tools (tests/fakes/pve.py).

mod common;

use common::FakePve;
use phoenix_hooks::exit::{kind_of, Kind};
use phoenix_hooks::phoenix::GuestType;
use phoenix_hooks::proxmox::{Guest, Proxmox, RunState};

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
    let _ = ct_dir;
}
