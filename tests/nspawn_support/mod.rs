//! A real Debian bookworm booted with systemd as PID 1 by `systemd-nspawn`,
//! for tests/nspawn_boot.rs: the cached root of
//! `scripts/lib/nspawn-root.sh`, a throwaway copy of it per test (removed
//! in `Drop`, also when the test fails), the project's Debian package
//! built the way tests/package.rs builds it (from the test build's
//! binaries: no second release build), bounded boots, and what the probe
//! inside recorded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::deb_support::run;
pub use crate::deb_support::{build_deb, project, text};

/// The cached bookworm root, made on first use (about 80 s) by
/// `scripts/lib/nspawn-root.sh`, which also gets the machine ready to boot
/// it. Panics saying why when this machine cannot: not root, no
/// debootstrap or systemd-nspawn, no Debian mirror reachable.
pub fn cached_root() -> PathBuf {
    cached_root_of("bookworm")
}

/// [`cached_root`] of Debian `suite` (bookworm or trixie).
pub fn cached_root_of(suite: &str) -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "booting Debian with systemd-nspawn needs root (debootstrap, mounts, \
         namespaces): run this test as root, e.g. through scripts/test.sh"
    );
    let out = Command::new("bash")
        .arg(project().join("scripts/lib/nspawn-root.sh"))
        .env("PHOENIX_NSPAWN_SUITE", suite)
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/lib/nspawn-root.sh");
    assert!(
        out.status.success(),
        "this machine cannot boot the test system: scripts/lib/nspawn-root.sh \
         failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    let root = PathBuf::from(text(&out.stdout).trim());
    assert!(
        root.join("lib/systemd/systemd").is_file(),
        "nspawn-root.sh printed '{}', which has no systemd",
        root.display()
    );
    root
}

/// A copy of the cached root that one test boots and changes; removed
/// when dropped, after ending any process still running in it.
pub struct Root {
    /// The root directory (inside `dir`).
    pub path: PathBuf,
    dir: PathBuf,
}

impl Root {
    /// `cp -a` of `cache` into a new directory under /var/tmp (the copy is
    /// about 250 MB; /tmp may be a small tmpfs elsewhere).
    pub fn copy_of(cache: &Path) -> Root {
        let dir = tempfile::Builder::new()
            .prefix("phoenix-nspawn-")
            .tempdir_in("/var/tmp")
            .unwrap()
            .keep();
        // From here on Drop removes it, whatever fails next.
        let root = Root {
            path: dir.join("root"),
            dir,
        };
        run(Command::new("cp").arg("-a").arg(cache).arg(&root.path));
        root
    }

    /// `rel` under the root (`rel` relative, or absolute as seen inside).
    pub fn at(&self, rel: &str) -> PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    /// Write a file inside the root, its directories made, with `mode`.
    pub fn put(&self, rel: &str, data: impl AsRef<[u8]>, mode: u32) {
        let p = self.at(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A symbolic link inside the root (`target` as seen inside).
    pub fn link(&self, rel: &str, target: &str) {
        let p = self.at(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.at(rel)).unwrap_or_default()
    }

    /// Boot the root until its systemd powers off or reboots, bounded by
    /// `bound` (`timeout` ends `systemd-nspawn`, and kills it 10 s later).
    /// `--keep-unit --register=no`: no systemd manager or machined on the
    /// host to register with (nspawn-root.sh).
    pub fn boot(&self, bound: Duration) -> Boot {
        self.boot_with(bound, &[], &[])
    }

    /// [`Root::boot`] with more options of `systemd-nspawn` (`--bind=`)
    /// and variables of its environment (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY`).
    pub fn boot_with(&self, bound: Duration, options: &[String], env: &[(&str, &str)]) -> Boot {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["--kill-after=10", &bound.as_secs().to_string()])
            .args(["systemd-nspawn", "--quiet", "--keep-unit", "--register=no"])
            .args(["--console=pipe", "--boot"])
            .args(options)
            .arg("-D")
            .arg(&self.path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("running timeout systemd-nspawn");
        Boot {
            code: out.status.code(),
            console: format!("{}{}", text(&out.stdout), text(&out.stderr)),
            took: started.elapsed(),
        }
    }

    /// The root's journal as the host reads it (`journalctl -D`), for the
    /// messages of a failed test.
    pub fn journal(&self, args: &[&str]) -> String {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.at("var/log/journal"))
            .args(["--no-pager", "-o", "short-monotonic"])
            .args(args)
            .output();
        match out {
            Ok(o) => format!("{}{}", text(&o.stdout), text(&o.stderr)),
            Err(e) => format!("(journalctl: {e})"),
        }
    }

    /// Processes whose root directory is this root: what a boot left.
    fn processes(&self) -> Vec<i32> {
        let Ok(me) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/root"))
                    .map(|m| m.dev() == me.dev() && m.ino() == me.ino())
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for _ in 0..50 {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // --one-file-system: never into a mount a boot might have left.
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.dir)
            .status();
    }
}

/// How a boot ended.
pub struct Boot {
    /// systemd-nspawn's exit status: 0 after a power-off, 133 after a
    /// reboot, 124 (from `timeout`) when the bound ended it.
    pub code: Option<i32>,
    /// The container's console (its systemd's status lines).
    pub console: String,
    pub took: Duration,
}

/// `systemctl show` blocks as the probe wrote them: "== NAME" then
/// `Key=value` lines, by name.
pub fn sections(probe: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in probe.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = name.to_string();
            all.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            all.entry(current.clone())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    all
}

/// One entry of the manager's journal (`journalctl -o json`).
#[derive(Debug)]
pub struct Entry {
    pub unit: String,
    pub message: String,
    pub message_id: String,
    /// Set on the entry that ends a job ("done", "failed", "dependency").
    pub job_result: String,
    /// µs, CLOCK_MONOTONIC (the host's: nspawn adds no time namespace).
    pub mono: u64,
    /// µs since the epoch, CLOCK_REALTIME.
    pub realtime: u64,
}

/// The journal's MESSAGE_ID of "Starting UNIT..." (SD_MESSAGE_UNIT_STARTING).
pub const UNIT_STARTING: &str = "7d4958e842da4a758f6c1cdc7b36dcc5";

pub fn entries(json_lines: &str) -> Vec<Entry> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Entry {
                unit: s("UNIT"),
                message: s("MESSAGE"),
                message_id: s("MESSAGE_ID"),
                job_result: s("JOB_RESULT"),
                mono: s("__MONOTONIC_TIMESTAMP").parse().unwrap_or(0),
                realtime: s("__REALTIME_TIMESTAMP").parse().unwrap_or(0),
            }
        })
        .collect()
}
