//! phoenix-mount: the generator's units pass `systemd-analyze verify`;
//! `apply` and `check` with bind and tmpfs volumes (there is no NFS server
//! here) inside a private mount namespace, never leaving a mount on the host.
//! A Phoenix VM volume object is a `mounts` entry as written; a guest that
//! waits for the CA without a mount for it is warned about (its
//! `/etc/systemd/system` and `/etc/fstab` are the test's, bound over the
//! host's in a private namespace).

mod common;
mod hook_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hook_support::{in_namespace, stderr, stdout, Layout};
use serde_json::json;

fn phoenix_mount(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phoenix-mount"));
    c.arg("--config").arg(config).env_remove("PHOENIX_CONFIG");
    c
}

fn write_config(dir: &Path, value: serde_json::Value) -> PathBuf {
    let p = dir.join("toolkit.json");
    std::fs::write(&p, value.to_string()).unwrap();
    p
}

/// `systemd-analyze verify` of every unit in `dir`, beside a stub of the
/// CA wait service the CA state mount orders before. Any output fails.
fn verify(dir: &Path) {
    std::fs::write(
        dir.join("phoenix-ca-wait.service"),
        "[Unit]\nDescription=stub\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .unwrap();
    let units: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .current_dir(dir)
        .output()
        .unwrap();
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success() && all.is_empty(), "verify: {all}");
}

/// Run the generator as systemd does (three directories under `dir`,
/// `generate` implied) with `config`; it must succeed. Its normal
/// directory.
fn run_generator(dir: &Path, config: &Path) -> PathBuf {
    let gen = dir.join("normal");
    std::fs::create_dir(&gen).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_phoenix-mount"))
        .arg(&gen)
        .arg(dir.join("early"))
        .arg(dir.join("late"))
        .env("PHOENIX_CONFIG", config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    gen
}

fn nfs_mounts() -> serde_json::Value {
    json!([
        {"type": "nfs", "server": "10.0.0.13", "path": "/quickOS/lxc-persistent-data/103/ssl",
         "mount_point": "/etc/step-ca/ssl"},
        {"type": "nfs", "server": "10.0.0.13", "path": "/quickOS/vm-persistent-data/1001",
         "mount_point": "/mnt/persistent", "options": "vers=4.2,nofail"},
        {"type": "bind", "path": "/srv/data", "mount_point": "/mnt/data dir"},
        {"type": "tmpfs", "mount_point": "/run/phoenix-scratch", "options": "size=16m,mode=0700"}
    ])
}

#[test]
fn generator_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), json!({"mounts": nfs_mounts()}));
    let gen = run_generator(dir.path(), &config);
    let ca = gen.join("etc-step\\x2dca-ssl.mount");
    let text = std::fs::read_to_string(&ca).unwrap();
    assert!(
        text.contains("Before=remote-fs.target phoenix-ca-wait.service\n"),
        "{text}"
    );
    assert!(text.contains("What=10.0.0.13:/quickOS/lxc-persistent-data/103/ssl\n"));
    assert!(text.contains("Options=ro,lookupcache=positive,"), "{text}");
    assert!(
        text.contains(&format!("SourcePath={}\n", config.display())),
        "{text}"
    );
    // Pulled in at boot: required unless nofail.
    assert_eq!(
        std::fs::read_link(gen.join("remote-fs.target.requires/etc-step\\x2dca-ssl.mount"))
            .unwrap(),
        Path::new("../etc-step\\x2dca-ssl.mount")
    );
    assert!(gen
        .join("remote-fs.target.wants/mnt-persistent.mount")
        .exists());
    let persistent = std::fs::read_to_string(gen.join("mnt-persistent.mount")).unwrap();
    assert!(persistent.contains("Options=rw,vers=4.2,nofail,lookupcache=positive\n"));
    assert!(!persistent.contains("phoenix-ca-wait"));
    assert!(gen.join("mnt-data\\x20dir.mount").exists());
    assert!(gen.join("run-phoenix\\x2dscratch.mount").exists());
    // The CA state at its default path: the shipped unit's own
    // RequiresMountsFor= covers it, no drop-in.
    assert!(!gen.join("phoenix-ca-wait.service.d").exists());
    verify(&gen);
}

#[test]
fn the_ca_wait_follows_the_configured_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        json!({"ca": {"guest_state_dir": "/srv/step-ca%1/ssl"}}),
    );
    let gen = run_generator(dir.path(), &config);
    let dropin = gen.join("phoenix-ca-wait.service.d/phoenix-ca-state.conf");
    let text = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        text.contains("RequiresMountsFor=/srv/step-ca%%1/ssl\n"),
        "{text}"
    );
    // It parses as systemd reads it, beside the unit.
    verify(&gen);
}

#[test]
fn generator_takes_a_vms_volumes_with_vmid() {
    let l = Layout::new(json!({}), json!({}));
    let gen = l.dir.path().join("gen");
    std::fs::create_dir(&gen).unwrap();
    let o = phoenix_mount(&l.config)
        .args(["--vmid", "1001", "generate"])
        .arg(&gen)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".mount"))
        .collect();
    assert_eq!(names, ["etc-step\\x2dca-ssl.mount"]);
    let text = std::fs::read_to_string(gen.join(&names[0])).unwrap();
    assert!(text.contains("Before=remote-fs.target phoenix-ca-wait.service"));
    assert!(text.contains(&format!(
        "SourcePath={}",
        l.etc.join("phoenix_vm_configs.json").display()
    )));
    verify(&gen);

    let o = phoenix_mount(&l.config)
        .args(["--vmid", "4242", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("VM 4242 is not in"), "{}", stderr(&o));
}

/// A layout with a read-only bind volume (the CA state) and a tmpfs.
struct Volumes {
    dir: tempfile::TempDir,
    src: PathBuf,
    ca_target: PathBuf,
    scratch: PathBuf,
    config: PathBuf,
}

fn volumes() -> Volumes {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("shared/ssl");
    let ca_target = dir.path().join("guest/etc/step-ca/ssl");
    let scratch = dir.path().join("guest/scratch");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ca.ready"), "").unwrap();
    let config = write_config(
        dir.path(),
        json!({
            "ca": {"guest_state_dir": ca_target},
            "mounts": [
                {"type": "bind", "path": src, "mount_point": ca_target},
                {"type": "tmpfs", "mount_point": scratch, "options": "size=1m"}
            ]
        }),
    );
    Volumes {
        dir,
        src,
        ca_target,
        scratch,
        config,
    }
}

/// Run `script` (sh) in a private namespace with the binary as `$M` and
/// the configuration as `$C`, after `binds`.
fn in_ns(v: &Volumes, binds: &[(&Path, &Path)], script: &str) -> Output {
    let mut sh = Command::new("sh");
    sh.args(["-c", script, "sh"])
        .env("M", env!("CARGO_BIN_EXE_phoenix-mount"))
        .env("C", &v.config)
        .env_remove("PHOENIX_CONFIG");
    in_namespace(binds, &sh)
}

fn assert_no_host_mount(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !table.contains(&dir.display().to_string()),
        "a mount leaked to the host: {table}"
    );
}

#[test]
fn apply_mounts_idempotently_and_check_agrees() {
    let v = volumes();
    let o = in_ns(
        &v,
        &[],
        r#"
        "$M" --config "$C" check; echo "check-before=$?"
        "$M" --config "$C" apply; echo "apply=$?"
        "$M" --config "$C" apply; echo "apply-again=$?"
        "$M" --config "$C" check; echo "check-after=$?"
        echo "json=$("$M" --config "$C" check --json | tr -d ' \n')"
        test -f "$(dirname "$C")/guest/etc/step-ca/ssl/ca.ready"; echo "visible=$?"
        touch "$(dirname "$C")/guest/etc/step-ca/ssl/x" 2>/dev/null; echo "writable=$?"
        "#,
    );
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(out.contains("check-before=1"), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "FAILED   bind {} on '{}' (ro): not mounted",
            v.src.display(),
            v.ca_target.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "FAILED   tmpfs tmpfs on '{}' (rw): not mounted",
            v.scratch.display()
        )),
        "{out}"
    );
    assert!(out.contains("apply=0"), "{out}\n{err}");
    assert!(out.contains("apply-again=0"), "{out}\n{err}");
    assert!(err.contains("already mounted"), "{err}");
    assert!(out.contains("check-after=0"), "{out}\n{err}");
    let json = out.lines().find_map(|l| l.strip_prefix("json=")).unwrap();
    let rows: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{json}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["ok"] == true && r["problem"].is_null()),
        "{json}"
    );
    assert_eq!(
        rows[0]["mount_point"],
        v.ca_target.display().to_string(),
        "{json}"
    );
    assert!(out.contains("visible=0"), "{out}");
    assert!(
        out.contains("writable=1"),
        "the CA state is mounted read-only: {out}"
    );
    assert_no_host_mount(v.dir.path());
}

#[test]
fn apply_refuses_a_mount_point_taken_by_another_source() {
    let v = volumes();
    let other = v.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::create_dir_all(&v.ca_target).unwrap();
    let o = in_ns(
        &v,
        &[(&other, &v.ca_target)],
        r#"
        "$M" --config "$C" apply; echo "apply=$?"
        "$M" --config "$C" check; echo "check=$?"
        "#,
    );
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(out.contains("apply=1"), "{out}\n{err}");
    assert!(
        err.contains(&format!("'{}' already has", v.ca_target.display()))
            && err.contains(&other.display().to_string())
            && err.contains(&format!("not {}", v.src.display())),
        "{err}"
    );
    // The other volume was still mounted; check names only the bad one.
    assert!(out.contains("check=1"), "{out}");
    assert!(
        out.contains(&format!(
            "ok       tmpfs tmpfs on '{}'",
            v.scratch.display()
        )),
        "{out}"
    );
    assert!(err.contains("not mounted as configured:"), "{err}");
    assert_no_host_mount(v.dir.path());
}

/// `apply` in a private mount namespace, SIGTERM sent to it once a mount
/// command whose arguments contain `hang_on` hangs (an NFS server that
/// does not answer). The `mount` it finds first in PATH is a stand-in that
/// writes what it was asked to the returned log, then hangs on `hang_on`
/// and runs the real `mount` for anything else.
fn apply_stopped_while_mounting(v: &Volumes, hang_on: &str) -> (Output, String) {
    let bin = v.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    common::write_executable(
        &bin.join("mount"),
        r#"#!/bin/sh
echo "$*" >>"$MOUNT_LOG"
case "$*" in *"$HANG_ON"*) touch "$MOUNT_LOG.hung"; exec sleep 60 ;; esac
PATH=${PATH#*:} exec mount "$@"
"#,
    );
    let log = v.dir.path().join("mount.log");
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        r#"
        PATH="$BIN:$PATH" "$M" --config "$C" apply & pid=$!
        i=0
        while [ ! -e "$MOUNT_LOG.hung" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
        kill -TERM $pid
        wait $pid; echo "apply=$?"
        "#,
        "sh",
    ])
    .env("M", env!("CARGO_BIN_EXE_phoenix-mount"))
    .env("C", &v.config)
    .env("BIN", &bin)
    .env("MOUNT_LOG", &log)
    .env("HANG_ON", hang_on)
    .env_remove("PHOENIX_CONFIG");
    let o = in_namespace(&[], &sh);
    let asked = std::fs::read_to_string(&log).unwrap_or_default();
    (o, asked)
}

/// SIGTERM while a mount command hangs: the command's process group is
/// ended, `apply` exits 143 as every binary does on SIGTERM, and the
/// volumes after it are not tried.
#[test]
fn apply_stopped_by_sigterm_exits_143_and_tries_no_further_volume() {
    let v = volumes();
    let (o, asked) = apply_stopped_while_mounting(&v, "");
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(out.contains("apply=143"), "{out}\n{err}");
    assert_eq!(
        asked.lines().count(),
        1,
        "only the first volume's mount was run: {asked}"
    );
    assert!(asked.contains(&v.src.display().to_string()), "{asked}");
    assert!(err.contains("stopped: we were asked to stop"), "{err}");
    assert!(!err.contains("volumes not mounted"), "{err}");
    assert_no_host_mount(v.dir.path());
}

/// The same when the mount stopped is the last one, after the others were
/// mounted: 143, not the 1 of a volume that failed.
#[test]
fn apply_stopped_at_its_last_volume_exits_143_too() {
    let v = volumes();
    let (o, asked) = apply_stopped_while_mounting(&v, "tmpfs");
    let out = stdout(&o);
    let err = stderr(&o);
    assert!(out.contains("apply=143"), "{out}\n{err}");
    assert_eq!(
        asked.lines().count(),
        2,
        "both volumes' mounts ran: {asked}"
    );
    assert!(
        err.contains(&format!(
            "bind {} on '{}' (ro): mounted",
            v.src.display(),
            v.ca_target.display()
        )),
        "{err}"
    );
    assert!(!err.contains("volumes not mounted"), "{err}");
    assert_no_host_mount(v.dir.path());
}

/// A Phoenix VM's volume object, as `phoenix_vm_configs.json` writes one
/// (with the `name` the seed gives it).
fn vm_volume(name: &str, path: &str, mount_point: &str) -> serde_json::Value {
    json!({"name": name, "type": "nfs", "server": "10.0.0.13",
           "path": path, "mount_point": mount_point})
}

#[test]
fn a_phoenix_vm_volume_object_is_a_mounts_entry_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        json!({"mounts": [
            vm_volume("ca-state", "/quickOS/lxc-persistent-data/103/ssl", "/etc/step-ca/ssl"),
            vm_volume("persistent", "/quickOS/vm-persistent-data/1001", "/mnt/persistent")
        ]}),
    );
    let gen = run_generator(dir.path(), &config);
    let text = std::fs::read_to_string(gen.join("mnt-persistent.mount")).unwrap();
    assert!(
        text.contains(
            "Description=Phoenix volume persistent: 10.0.0.13:/quickOS/vm-persistent-data/1001 \
             on /mnt/persistent\n"
        ),
        "{text}"
    );
    verify(&gen);
    let o = phoenix_mount(&config).arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("FAILED   persistent: nfs 10.0.0.13:/quickOS/vm-persistent-data/1001"),
        "{}",
        stdout(&o)
    );
    // Other keys are still refused, by name.
    let config = write_config(
        dir.path(),
        json!({"mounts": [{"nmae": "x", "type": "tmpfs", "mount_point": "/run/x"}]}),
    );
    let o = phoenix_mount(&config).arg("check").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nmae"), "{}", stderr(&o));
}

/// A stand-in for the guest's `/etc/systemd/system` with
/// phoenix-ca-wait.service enabled, and an fstab with the root only.
fn waiting_guest(dir: &Path) -> (PathBuf, PathBuf) {
    let systemd = dir.join("systemd-system");
    let wants = systemd.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/phoenix-ca-wait.service",
        wants.join("phoenix-ca-wait.service"),
    )
    .unwrap();
    let fstab = dir.join("fstab");
    std::fs::write(&fstab, "UUID=0a1b / ext4 errors=remount-ro 0 1\n").unwrap();
    (systemd, fstab)
}

/// `phoenix-mount ARGS` with `systemd` and `fstab` bound over the
/// guest's own.
fn in_guest(config: &Path, systemd: &Path, fstab: &Path, args: &[&str]) -> Output {
    let mut c = phoenix_mount(config);
    c.args(args);
    in_namespace(
        &[
            (systemd, Path::new("/etc/systemd/system")),
            (fstab, Path::new("/etc/fstab")),
        ],
        &c,
    )
}

#[test]
fn a_guest_that_waits_for_the_ca_without_a_ca_mount_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let (systemd, fstab) = waiting_guest(dir.path());
    let gen = dir.path().join("gen");
    std::fs::create_dir(&gen).unwrap();
    let only_persistent = write_config(
        dir.path(),
        json!({"mounts": [vm_volume("persistent", "/quickOS/vm-persistent-data/1001",
                                    "/mnt/persistent")]}),
    );
    let gen_arg = gen.to_str().unwrap();
    for args in [&["generate", gen_arg][..], &["check"][..]] {
        let o = in_guest(&only_persistent, &systemd, &fstab, args);
        let err = stderr(&o);
        assert!(
            err.contains(
                "warning: this guest waits for the CA at boot \
                 (/etc/systemd/system/multi-user.target.wants/phoenix-ca-wait.service exists) \
                 but no mount covers ca.guest_state_dir '/etc/step-ca/ssl'"
            ) && err.contains("ca.wait_timeout_secs, 300 s"),
            "{args:?}: {err}"
        );
    }
    // The generator still succeeds: a warning, not a failure.
    let o = in_guest(&only_persistent, &systemd, &fstab, &["generate", gen_arg]);
    assert!(o.status.success(), "{}", stderr(&o));

    // With the CA state mount configured: nothing to say.
    let dir2 = tempfile::tempdir().unwrap();
    let with_ca = write_config(
        dir2.path(),
        json!({"mounts": [vm_volume("ca", "/quickOS/lxc-persistent-data/103/ssl/public",
                                    "/etc/step-ca/ssl")]}),
    );
    let o = in_guest(&with_ca, &systemd, &fstab, &["check"]);
    assert!(!stderr(&o).contains("waits for the CA"), "{}", stderr(&o));
    // Nor in the guest's fstab.
    std::fs::write(
        &fstab,
        "UUID=0a1b / ext4 defaults 0 1\n10.0.0.13:/quickOS/lxc-persistent-data/103/ssl \
         /etc/step-ca/ssl nfs ro 0 0\n",
    )
    .unwrap();
    let o = in_guest(&only_persistent, &systemd, &fstab, &["check"]);
    assert!(!stderr(&o).contains("waits for the CA"), "{}", stderr(&o));

    // A guest (or the host) that does not wait for the CA: nothing either.
    let empty = dir.path().join("empty-systemd");
    std::fs::create_dir(&empty).unwrap();
    let o = in_guest(&only_persistent, &empty, &fstab, &["check"]);
    assert!(!stderr(&o).contains("waits for the CA"), "{}", stderr(&o));
}
