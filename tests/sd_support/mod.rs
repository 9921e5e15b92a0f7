//! A real `systemd --user` manager (plus its own journald) for tests, in a
//! private mount namespace, mirroring `../shared/tools/sd-harness.sh`:
//! [`Manager::up`] boots it, [`Manager::down`] (also on drop) stops what it
//! started, by pid, and removes its cgroups.
//!
//! Inside the namespace `/run/systemd` is a private tmpfs (the host's is
//! never touched), `/run/log` is bound to `BASE/runlog` so that the journal
//! can be read from outside, and the manager and journald sit in cgroups of
//! their own (`phoenix-test-<base>.slice/{journald,user@0.service}`), which
//! lets journald tag lines with `_SYSTEMD_USER_UNIT`. Needs root.
//!
//! [`stage_units`] copies the project's `units/` into the manager's unit
//! directory with the few rewrites a user manager needs; each is listed and
//! explained at [`REWRITES`].
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The namespace set-up run by `bash -c` under `unshare`, the steps of
/// sd-harness.sh plus one: `/run/systemd/inaccessible/`, the nodes PID 1
/// makes at boot, which a sandboxed unit's hidden paths are mounted from
/// (ProtectKernelLogs= hides /dev/kmsg with `chr`); the private
/// `/run/systemd` has none. It must run inside the new namespace, before
/// `exec systemd --user`, so it is the one piece that stays shell.
const INNER: &str = r#"
set -e; B="$1"; SL="$2"
mount -t tmpfs -o mode=755 tmpfs /run/systemd
mkdir -p /run/systemd/system
mkdir -m 755 /run/systemd/inaccessible; cd /run/systemd/inaccessible
mkdir -m 0 dir; : > reg; chmod 0 reg; mkfifo -m 0 fifo; mknod -m 0 chr c 0 0; mknod -m 0 blk b 0 0; cd /
mkdir -p /run/log; mount --bind "$B/runlog" /run/log
mkdir -p /var/log/journal; mount -t tmpfs tmpfs /var/log/journal
mount --bind "$B/console.log" /dev/console
for h in systemd unified; do mkdir -p /sys/fs/cgroup/$h/$SL/journald /sys/fs/cgroup/$h/$SL/user@0.service; done
( for h in systemd unified; do echo $BASHPID > /sys/fs/cgroup/$h/$SL/journald/cgroup.procs; done
  echo $BASHPID > "$B/journald.pid"; exec /lib/systemd/systemd-journald ) &
for i in $(seq 200); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
for h in systemd unified; do echo $$ > /sys/fs/cgroup/$h/$SL/user@0.service/cgroup.procs; done
echo $$ > "$B/manager.pid"
export XDG_RUNTIME_DIR="$B/run" XDG_CONFIG_HOME="$B/cfg" XDG_DATA_HOME="$B/data" XDG_STATE_HOME="$B/state"
exec /lib/systemd/systemd --user --log-target=journal
"#;

const HIERARCHIES: [&str; 2] = ["systemd", "unified"];

/// A running user manager.
pub struct Manager {
    /// BASE: run/, cfg/systemd/user, data/, state/, runlog/, and room for
    /// the test's own files. Under target/tmp, not /tmp: units with
    /// `PrivateTmp=yes` must still see the test's files.
    pub base: tempfile::TempDir,
    slice: String,
    child: Option<std::process::Child>,
    manager_pid: Option<i32>,
    journald_pid: Option<i32>,
    /// How long the boot took (fork to SystemState=running).
    pub boot: Duration,
}

fn cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

impl Manager {
    /// Boot a manager; panics with a clear message where the machine does
    /// not allow it (not root, no writable cgroup hierarchy).
    pub fn up() -> Manager {
        let base = tempfile::Builder::new()
            .prefix("sd")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let b = base.path().to_path_buf();
        let slice = format!(
            "phoenix-test-{}.slice",
            b.file_name().unwrap().to_string_lossy()
        );
        for h in HIERARCHIES {
            let probe = cgroup_root().join(h).join(&slice);
            if let Err(e) = std::fs::create_dir_all(&probe) {
                panic!(
                    "the systemd tests need root and a writable cgroup hierarchy \
                     ({}: {e}); run them as root on a machine with /sys/fs/cgroup/{{systemd,unified}}",
                    probe.display()
                );
            }
        }
        for d in ["run", "cfg/systemd/user", "data", "state", "runlog"] {
            std::fs::create_dir_all(b.join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(b.join("console.log"), "").unwrap();
        let log = std::fs::File::create(b.join("manager.log")).unwrap();
        let t0 = Instant::now();
        let child = Command::new("setsid")
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "/bin/bash",
                "-c",
            ])
            .arg(INNER)
            .arg("_")
            .arg(&b)
            .arg(&slice)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("setsid/unshare (util-linux) are needed");
        let mut m = Manager {
            base,
            slice,
            child: Some(child),
            manager_pid: None,
            journald_pid: None,
            boot: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut state = String::new();
        while Instant::now() < deadline {
            if b.join("run/systemd/private").exists() {
                state = m.show("", "SystemState");
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        m.boot = t0.elapsed();
        m.manager_pid = read_pid(&b.join("manager.pid"));
        m.journald_pid = read_pid(&b.join("journald.pid"));
        if state != "running" && state != "degraded" {
            let log = std::fs::read_to_string(b.join("manager.log")).unwrap_or_default();
            m.down();
            panic!("the user manager did not come up (state {state:?}):\n{log}");
        }
        m
    }

    /// BASE.
    pub fn path(&self) -> &Path {
        self.base.path()
    }

    /// The manager's unit directory.
    pub fn unit_dir(&self) -> PathBuf {
        self.path().join("cfg/systemd/user")
    }

    /// `systemctl --user ARGS` against this manager.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `systemctl --user ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) {
        let o = self.systemctl(args);
        assert!(
            o.status.success(),
            "systemctl --user {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// One property of a unit (`unit` empty: of the manager).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let mut args = vec!["show", "-p", prop, "--value"];
        if !unit.is_empty() {
            args.push(unit);
        }
        String::from_utf8_lossy(&self.systemctl(&args).stdout)
            .trim()
            .to_string()
    }

    /// A `...TimestampMonotonic` property, µs of CLOCK_MONOTONIC (0: never).
    pub fn mono(&self, unit: &str, prop: &str) -> u64 {
        self.show(unit, prop).parse().unwrap_or(0)
    }

    /// Wait (bounded) until `pred(ActiveState, Result)` holds.
    pub fn wait_state(&self, unit: &str, max: Duration, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + max;
        loop {
            let a = self.show(unit, "ActiveState");
            let r = self.show(unit, "Result");
            if pred(&a, &r) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unit}: still ActiveState={a} Result={r} after {max:?}\n{}",
                self.journal_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every journal entry so far, in journal order.
    pub fn journal(&self) -> Vec<Entry> {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.path().join("runlog/journal"))
            .args(["-o", "json", "--no-pager"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            // journald also reads the kernel's ring buffer: not ours.
            .filter(|v| v["_TRANSPORT"] != "kernel")
            .map(|v| Entry {
                mono: v["__MONOTONIC_TIMESTAMP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                // USER_UNIT: the manager's lines about a unit (their
                // _SYSTEMD_USER_UNIT is the manager's own init.scope).
                unit: v["USER_UNIT"]
                    .as_str()
                    .or(v["_SYSTEMD_USER_UNIT"].as_str())
                    .unwrap_or("")
                    .to_string(),
                from_manager: v["USER_UNIT"].is_string(),
                message: match &v["MESSAGE"] {
                    Value::String(s) => s.clone(),
                    Value::Array(bytes) => String::from_utf8_lossy(
                        &bytes
                            .iter()
                            .filter_map(|b| b.as_u64().map(|b| b as u8))
                            .collect::<Vec<u8>>(),
                    )
                    .into_owned(),
                    _ => String::new(),
                },
            })
            .collect()
    }

    /// The journal as "unit: message" lines, for failure messages.
    pub fn journal_text(&self) -> String {
        self.journal()
            .iter()
            .map(|e| format!("{} {}: {}", e.mono, e.unit, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stop the manager and journald (by pid), remove the cgroups.
    pub fn down(&mut self) {
        if let Some(pid) = self.manager_pid.take() {
            let _ = self.systemctl(&["exit"]);
            stop(pid);
        }
        if let Some(mut c) = self.child.take() {
            // The manager is this child (unshare and bash exec): reap it.
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.journald_pid.take() {
            stop(pid);
        }
        for h in HIERARCHIES {
            remove_tree(&cgroup_root().join(h).join(&self.slice));
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.down();
    }
}

/// One journal entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Reception time, µs of CLOCK_MONOTONIC.
    pub mono: u64,
    /// The user unit it is from or about.
    pub unit: String,
    /// Logged by the manager about the unit (Starting/Finished...), not by
    /// the unit's own processes.
    pub from_manager: bool,
    pub message: String,
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X'))),
        Err(_) => false,
    }
}

/// SIGTERM, up to 4 s, then SIGKILL: a process this harness started.
fn stop(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(4);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// rmdir a cgroup tree, children first (cgroup dirs only rmdir).
fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// CLOCK_MONOTONIC now, µs: the clock of the manager's `...Monotonic`
/// timestamps and of the journal.
pub fn mono_now() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

/// The rewrites [`stage_units`] makes, as (what, why). Nothing else of a
/// unit is changed.
pub const REWRITES: [(&str, &str); 6] = [
    (
        "/usr/bin/phoenix-* -> the built binaries",
        "the tests run what cargo built",
    ),
    (
        "/usr/bin/systemctl start -> /usr/bin/systemctl --user start",
        "inside a user manager a unit must talk to that manager",
    ),
    (
        "RequiresMountsFor=/etc/step-ca/ssl -> Requires= + After= the mount stand-in unit",
        "RequiresMountsFor= means exactly Requires= + After= on the path's mount unit, \
         and a user manager cannot start mount units",
    ),
    (
        "phoenix-ca wait --bootstrap -> phoenix-ca wait",
        "bootstrap installs the root into the machine's trust store",
    ),
    (
        "a drop-in zy-checkout.conf with BindPaths= of the checkout, only for a \
         checkout under /tmp or /var/tmp, in units with PrivateTmp=yes",
        "the unit's private /tmp would hide the built binaries, the fakes and the \
         test's directories under target/tmp; the sandbox itself stays as shipped",
    ),
    (
        "a drop-in zz-test.conf per unit (Environment=, test timings, BindPaths=)",
        "config, fakes on PATH and short RestartSec=/OnActiveSec= for a test; \
         BindPaths= of a fake under /tmp into a unit with PrivateTmp=yes",
    ),
];

/// The project sits where `PrivateTmp=` replaces the view (a checkout
/// under /tmp, as the README allows).
pub fn checkout_in_tmp() -> bool {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.starts_with("/tmp") || root.starts_with("/var/tmp")
}

/// Copy `units/` into the manager's unit directory with [`REWRITES`];
/// `mount_standin` names the unit standing in for the CA state mount.
/// Stubs (oneshot services that succeed, empty targets) are written for
/// the system-only units the project's units name.
pub fn stage_units(m: &Manager, units: &Path, bin_dir: &Path, mount_standin: &str) {
    let rewrite = |text: &str| {
        text.replace(
            "/usr/bin/phoenix-",
            &format!("{}/phoenix-", bin_dir.display()),
        )
        .replace(
            "/usr/bin/systemctl start ",
            "/usr/bin/systemctl --user start ",
        )
        .replace(
            "RequiresMountsFor=/etc/step-ca/ssl",
            &format!("Requires={mount_standin}\nAfter={mount_standin}"),
        )
        .replace("phoenix-ca wait --bootstrap", "phoenix-ca wait")
    };
    let dst = m.unit_dir();
    for entry in std::fs::read_dir(units).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if p.is_dir() {
            std::fs::create_dir_all(dst.join(&name)).unwrap();
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap().path();
                let text = std::fs::read_to_string(&f).unwrap();
                std::fs::write(dst.join(&name).join(f.file_name().unwrap()), rewrite(&text))
                    .unwrap();
            }
        } else {
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(dst.join(&name), rewrite(&text)).unwrap();
        }
    }
    // A checkout under /tmp: PrivateTmp=yes would hide the built binaries,
    // the fakes and the managers' directories (target/tmp, which the units
    // write). The sandbox stays; the checkout (and the binaries, wherever
    // cargo put them) is bound into its view.
    if checkout_in_tmp() {
        let project = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut binds = vec![project.clone()];
        let bins = std::fs::canonicalize(bin_dir).unwrap();
        if !bins.starts_with(&project) {
            binds.push(bins);
        }
        let binds: Vec<String> = binds.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "sd_support: the checkout is under /tmp or /var/tmp: {} bound into every \
             staged unit with PrivateTmp=yes",
            binds.join(" ")
        );
        for entry in std::fs::read_dir(&dst).unwrap() {
            let p = entry.unwrap().path();
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if text.lines().any(|l| l.trim() == "PrivateTmp=yes") {
                let d = dst.join(format!("{}.d", p.file_name().unwrap().to_string_lossy()));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(
                    d.join("zy-checkout.conf"),
                    format!("[Service]\nBindPaths={}\n", binds.join(" ")),
                )
                .unwrap();
            }
        }
    }
    for t in [
        "network-online.target",
        "remote-fs.target",
        "multi-user.target",
    ] {
        std::fs::write(dst.join(t), "[Unit]\nDescription=stub of a system target\n").unwrap();
    }
    std::fs::write(
        dst.join("pve-guests.service"),
        "[Unit]\nDescription=stub of pve-guests\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
    )
    .unwrap();
}

/// Add `zz-test.conf` to `unit` with `body` (a [Unit]/[Service]... text).
pub fn dropin(m: &Manager, unit: &str, body: &str) {
    let d = m.unit_dir().join(format!("{unit}.d"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("zz-test.conf"), body).unwrap();
}

/// Write a unit file of the test's own (a stand-in).
pub fn write_unit(m: &Manager, name: &str, body: &str) {
    std::fs::write(m.unit_dir().join(name), body).unwrap();
}
