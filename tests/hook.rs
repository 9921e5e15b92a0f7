//! phoenix-hook, run as Proxmox runs it (`phoenix-hook VMID PHASE`), against
//! a temporary Phoenix layout. "Mounted storage" is a bind mount in a
//! private mount namespace (`unshare -m`), never a mount on the host, or
//! (for zfs and nfs) a mount table the test writes, read by the binary as
//! its own. `storage.cfg` and the guest configs are the tests' own, in
//! pve-storage's and Proxmox's formats.

mod common;
mod hook_support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hook_support::{chmod, hook_bin, in_namespace, mode_of, mount_line, stderr, Layout};
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
    let bin = hook_bin();
    for args in [
        &[][..],
        &["103"][..],
        &["ct103", "pre-start"][..],
        &["103", "pre-start", "extra"][..],
        &["-5", "pre-start"][..],
    ] {
        let o = Command::new(&bin).args(args).output().unwrap();
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

/// A layout whose CA is the real `ca`, named by host name (its certificate
/// names localhost: the hook resolves it, /etc/hosts here, also when
/// linked statically), its root in the state directory and the CA guest's
/// pre-start run (a new generation, the token stale).
fn layout_with_ca(
    ca: &common::TestCa,
    mut ca_extra: serde_json::Value,
    extra: serde_json::Value,
) -> Layout {
    ca_extra["url"] = json!(ca.url().replace("127.0.0.1", "localhost"));
    let l = Layout::new(ca_extra, extra);
    std::fs::copy(ca.root_cert(), l.state.join("phoenix_root_ca.crt")).unwrap();
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    l
}

/// The CA guest's `ExecStartPost=`: publish the token once /health answers.
fn publish(l: &Layout, ca: &common::TestCa) {
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
}

#[test]
fn post_start_returns_once_the_real_ca_is_ready_and_gates_open() {
    let ca = common::TestCa::start(None);
    let l = layout_with_ca(
        &ca,
        json!({"post_start_timeout_secs": 60}),
        json!({"guests": {"102": {"gate_on_ca": true, "gate_timeout_secs": 30}}}),
    );
    let post_start = l
        .hook("103", "post-start")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish(&l, &ca);
    let p = post_start.wait_with_output().unwrap();
    assert_eq!(p.status.code(), Some(0), "{}", stderr(&p));
    assert!(stderr(&p).contains("CA ready after"), "{}", stderr(&p));

    let o = l.run_mounted("102", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("may start"));
}

#[test]
fn a_static_hook_resolves_the_ca_by_files_and_dns_whatever_nsswitch_lists() {
    // The release links the hook statically (scripts/test.sh runs this
    // file against such a build): it configures the `hosts` lookups
    // (/etc/hosts, then DNS) before its first one, since a static glibc
    // cannot load the modules nsswitch.conf may name (docs/hook.md). Here
    // nsswitch.conf names only a module no glibc has, in a private mount
    // namespace: a gated guest's pre-start reaches the CA by name all the
    // same. A dynamic build follows nsswitch.conf and cannot resolve it.
    let ca = common::TestCa::start(None);
    let l = layout_with_ca(
        &ca,
        json!({}),
        json!({"guests": {"102": {"gate_on_ca": true, "gate_timeout_secs": 2}}}),
    );
    publish(&l, &ca);
    let nss = l.dir.path().join("nsswitch.conf");
    std::fs::write(&nss, "hosts: phoenix-no-such-module\n").unwrap();
    let o = in_namespace(
        &[
            (&l.storage, &l.storage),
            (&nss, Path::new("/etc/nsswitch.conf")),
        ],
        &l.hook("102", "pre-start"),
    );
    let err = stderr(&o);
    if common::is_static(&hook_bin()) {
        assert_eq!(o.status.code(), Some(0), "static: {err}");
        assert!(err.contains("may start"), "static: {err}");
    } else {
        assert_ne!(o.status.code(), Some(0), "dynamic: {err}");
        assert!(err.contains("cannot resolve 'localhost'"), "dynamic: {err}");
    }
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
    // A private /dev whose syslog socket, /dev/log, the test reads.
    let dev = tempfile::tempdir().unwrap();
    let sock = UnixDatagram::bind(dev.path().join("log")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let o = in_namespace(
        &[(dev.path(), Path::new("/dev"))],
        &l.hook("4242", "pre-start"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("a syslog datagram");
    let line = String::from_utf8_lossy(&buf[..n]);
    // LOG_DAEMON, LOG_INFO; the ident and the hook's pid, as syslog(3).
    assert!(line.starts_with("<30>phoenix-hook["), "{line}");
    assert!(
        line.contains("]: 4242 pre-start: guest not in the Phoenix configs"),
        "{line}"
    );
}

#[test]
fn snippet_runs_the_binary_and_refuses_a_start_without_it() {
    let l = layout();
    let snippet = common::project().join("hooks/phoenix-hook");
    let o = Command::new(&snippet)
        .args(["4242", "pre-start"])
        .env("PHOENIX_HOOK_BIN", hook_bin())
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

/// toolkit.json's storage, "quickOS", as a `dir` storage (`extra`: more
/// property lines), with the `local` storage before it, as a node has it.
fn dir_storage(l: &Layout, extra: &str) -> String {
    format!(
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n\
         # quickOS, on the host's own disk\n\
         dir: quickOS\n\tpath {}\n\tcontent images,rootdir\n{extra}\tshared 0\n",
        l.storage.display()
    )
}

#[test]
fn storage_cfg_dir_without_is_mountpoint_only_needs_the_directory() {
    let l = layout();
    l.storage_cfg(&dir_storage(&l, ""));
    std::fs::create_dir_all(l.logs()).unwrap();
    // Not a mount point, and that is right for a plain dir storage.
    let o = l.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "bind mount source '{}' exists on storage 'quickOS' (dir: a plain directory, \
             no is_mountpoint): exists",
            l.logs().display()
        )),
        "{err}"
    );
    std::fs::remove_dir(l.logs()).unwrap();
    let o = l.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "bind mount source '{}' does not exist on storage 'quickOS' (dir",
            l.logs().display()
        )),
        "{err}"
    );
}

#[test]
fn storage_cfg_dir_with_is_mountpoint_needs_the_mount() {
    let l = layout();
    l.storage_cfg(&dir_storage(&l, "\tis_mountpoint yes\n"));
    std::fs::create_dir_all(l.logs()).unwrap();
    let o = l.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let s = l.storage.display();
    assert!(
        err.contains(&format!(
            "storage 'quickOS' (dir: is_mountpoint '{s}') is not mounted: '{s}' is not a mount point"
        )),
        "{err}"
    );
    let o = l.run_mounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("may start"), "{}", stderr(&o));
}

fn nfs_storage(l: &Layout) -> String {
    format!(
        "nfs: quickOS\n\texport /quickOS\n\tpath {}\n\tserver 10.0.0.13\n\
         \tcontent images,rootdir\n\toptions vers=4.2\n\tprune-backups keep-all=1\n",
        l.storage.display()
    )
}

#[test]
fn storage_cfg_nfs_needs_its_export_mounted_there() {
    let l = layout();
    l.storage_cfg(&nfs_storage(&l));
    std::fs::create_dir_all(l.logs()).unwrap();
    let s = l.storage.display().to_string();
    // A local bind mount there is not the NFS export.
    let o = l.run_mounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "storage 'quickOS' (nfs: 10.0.0.13:/quickOS at '{s}') is not mounted: '{s}' has "
        )) && err.contains("mounted, not nfs"),
        "{err}"
    );
    // Another server's export.
    let root = mount_line(1, Path::new("/"), "ext4", "/dev/sda1");
    let table = root.clone() + &mount_line(40, &l.storage, "nfs4", "10.0.0.99:/quickOS");
    let o = l.run_with_table("101", "pre-start", &table);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("has nfs4 10.0.0.99:/quickOS mounted, not 10.0.0.13:/quickOS"),
        "{err}"
    );
    // The export itself: the container and the CA start.
    let table = root + &mount_line(40, &l.storage, "nfs4", "10.0.0.13:/quickOS");
    let o = l.run_with_table("101", "pre-start", &table);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("'{s}' is nfs4 10.0.0.13:/quickOS")),
        "{err}"
    );
    let o = l.run_with_table("103", "pre-start", &table);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(generation(&l).is_some());
}

#[test]
fn storage_cfg_zfspool_needs_a_mounted_dataset_of_its_pool() {
    let l = layout();
    l.storage_cfg(&format!(
        "zfspool: quickOS\n\tpool tank/pve\n\tcontent images,rootdir\n\tmountpoint {}\n\tsparse\n",
        l.storage.display()
    ));
    std::fs::create_dir_all(l.logs()).unwrap();
    let s = l.storage.display().to_string();
    let root = mount_line(1, Path::new("/"), "zfs", "rpool/ROOT/pve-1");
    let o = l.run_with_table("101", "pre-start", &root);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "storage 'quickOS' (zfspool: pool tank/pve at '{s}') is not mounted: no zfs \
             dataset of 'tank/pve' is mounted at '{s}' (the path is on zfs rpool/ROOT/pve-1 \
             mounted at '/')"
        )),
        "{err}"
    );
    // An ext4 disk mounted there is not the pool.
    let table = root.clone() + &mount_line(40, &l.storage, "ext4", "/dev/sdb1");
    let o = l.run_with_table("101", "pre-start", &table);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("on ext4 /dev/sdb1"), "{}", stderr(&o));
    let table = root + &mount_line(40, &l.storage, "zfs", "tank/pve");
    let o = l.run_with_table("101", "pre-start", &table);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("'{s}' is zfs dataset tank/pve")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_path_on_no_configured_storage_only_needs_to_exist_unless_required() {
    let l = layout();
    // storage.cfg knows only 'local': quickOS's directory is no storage.
    l.storage_cfg("dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n");
    std::fs::create_dir_all(l.logs()).unwrap();
    let o = l.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "exists (on no storage of '{}': no storage mount to check)",
            l.pve.join("storage.cfg").display()
        )),
        "{err}"
    );
    let l2 = Layout::new(json!({}), json!({"required_mounts": [l.storage]}));
    l2.storage_cfg("dir: local\n\tpath /var/lib/vz\n");
    std::fs::create_dir_all(l2.logs()).unwrap();
    // A required mount above other paths changes nothing for these.
    let o = l2.run_unmounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l3 = Layout::new(json!({}), json!({}));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&l3.config).unwrap()).unwrap();
    let mut cfg = cfg.as_object().unwrap().clone();
    cfg.insert("required_mounts".into(), json!([l3.storage]));
    std::fs::write(&l3.config, serde_json::to_string(&cfg).unwrap()).unwrap();
    l3.storage_cfg("dir: local\n\tpath /var/lib/vz\n");
    std::fs::create_dir_all(l3.logs()).unwrap();
    let o = l3.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "'{}' is not a mount point (toolkit.json required_mounts)",
            l3.storage.display()
        )),
        "{err}"
    );
    let o = l3.run_mounted("101", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn without_storage_cfg_the_storage_root_rule_says_so() {
    let l = layout();
    std::fs::create_dir_all(l.logs()).unwrap();
    let o = l.run_unmounted("101", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("no '{}'", l.pve.join("storage.cfg").display())),
        "{err}"
    );
}

#[test]
fn ca_pre_start_warns_about_onboot_guests_beside_or_before_it() {
    let l = layout();
    l.guest_conf(
        "lxc",
        103,
        "arch: amd64\nhostname: step-ca\nonboot: 1\nstartup: order=1,up=30\n\n\
         [before-upgrade]\nonboot: 0\n",
    );
    l.guest_conf("lxc", 101, "hostname: nginx\nonboot: 1\nstartup: order=1\n");
    l.guest_conf(
        "lxc",
        102,
        "hostname: traefik\nonboot: 0\nstartup: order=0\n",
    );
    l.guest_conf(
        "qemu-server",
        1001,
        "name: Portainer\nonboot: 1\nstartup: up=5,order=0\n",
    );
    l.guest_conf(
        "qemu-server",
        1002,
        "name: drphoenix\nonboot: 1\nstartup: order=2\n",
    );
    // Only a snapshot of 104 started at boot, long ago.
    l.guest_conf(
        "lxc",
        104,
        "hostname: data\n[snap1]\nonboot: 1\nstartup: order=0\n",
    );
    // A link in place of a config is not followed.
    let outside = l.dir.path().join("outside.conf");
    std::fs::write(&outside, "onboot: 1\nstartup: order=0\n").unwrap();
    std::os::unix::fs::symlink(&outside, l.pve.join("lxc/105.conf")).unwrap();

    let o = l.run_mounted("103", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "a warning only: {err}");
    assert!(generation(&l).is_some(), "the start went on");
    let line = err
        .lines()
        .find(|l| l.contains("onboot order:"))
        .unwrap_or_else(|| panic!("no onboot warning: {err}"));
    assert!(
        line.starts_with("103 pre-start: warning: onboot order: the CA CT 103 (order=1)"),
        "{line}"
    );
    assert!(
        line.contains("CT 101 (order=1) start(s) beside it"),
        "{line}"
    );
    assert!(line.contains("VM 1001 (order=0) before it"), "{line}");
    for quiet in ["102 (", "1002 (", "104 (", "105 ("] {
        assert!(!line.contains(quiet), "{quiet}: {line}");
    }
    assert!(
        err.contains("105.conf") && err.contains("skipped in the onboot order check"),
        "{err}"
    );

    // Orders fixed: the CA first and alone, nothing said.
    l.guest_conf("lxc", 101, "hostname: nginx\nonboot: 1\nstartup: order=2\n");
    l.guest_conf(
        "qemu-server",
        1001,
        "name: Portainer\nonboot: 1\nstartup: order=3\n",
    );
    std::fs::remove_file(l.pve.join("lxc/105.conf")).unwrap();
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("onboot order"), "{}", stderr(&o));
}

#[test]
fn ca_pre_start_warns_in_a_cluster_when_its_hookscript_is_node_local() {
    let l = layout();
    let ca = "arch: amd64\nhostname: step-ca\nhookscript: local:snippets/phoenix-hook\n\
              onboot: 1\nstartup: order=1\n\n[snap]\nhookscript: snip:snippets/phoenix-hook\n";
    l.guest_conf("lxc", 103, ca);
    let storage = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,snippets\n\n\
                   dir: snip\n\tpath /mnt/pve/snip\n\tcontent snippets\n\tshared 1\n\n\
                   dir: nodeonly\n\tpath /srv/snippets\n\tcontent snippets\n\n\
                   nfs: nas\n\tserver 10.0.0.13\n\texport /snippets\n\tpath /mnt/pve/nas\n\
                   \tcontent snippets\n";

    // A single host: nothing said, whatever the storage.
    let o = l.run_mounted("103", "pre-start");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("hookscript"), "{}", stderr(&o));

    // A cluster (corosync.conf): local storage is every node's own.
    std::fs::write(l.pve.join("corosync.conf"), "totem {\n}\n").unwrap();
    let o = l.run_mounted("103", "pre-start");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "a warning only: {err}");
    assert!(generation(&l).is_some(), "the start went on");
    let line = err
        .lines()
        .find(|l| l.contains("hookscript:"))
        .unwrap_or_else(|| panic!("no hookscript warning: {err}"));
    assert!(
        line.starts_with("103 pre-start: warning: hookscript: this node is in a cluster"),
        "{line}"
    );
    for part in [
        "local:snippets/phoenix-hook",
        "storage 'local' (dir, not shared)",
        "script 'local:snippets/phoenix-hook' does not exist",
        "pct set 103 --hookscript SHARED:snippets/phoenix-hook",
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }

    // A directory storage not marked shared, and one storage.cfg lacks.
    l.storage_cfg(storage);
    for (volid, why) in [
        (
            "nodeonly:snippets/phoenix-hook",
            "storage 'nodeonly' (dir, not shared)",
        ),
        (
            "gone:snippets/phoenix-hook",
            "storage 'gone' is not defined in",
        ),
    ] {
        l.guest_conf(
            "lxc",
            103,
            &ca.replacen("local:snippets/phoenix-hook", volid, 1),
        );
        let o = l.run_mounted("103", "pre-start");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).contains(why), "{why}: {}", stderr(&o));
    }

    // Shared: by its flag, or by its type (nfs). Nothing said.
    for volid in ["snip:snippets/phoenix-hook", "nas:snippets/phoenix-hook"] {
        l.guest_conf(
            "lxc",
            103,
            &ca.replacen("local:snippets/phoenix-hook", volid, 1),
        );
        let o = l.run_mounted("103", "pre-start");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            !stderr(&o).contains("hookscript:"),
            "{volid}: {}",
            stderr(&o)
        );
    }
}
