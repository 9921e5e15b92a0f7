//! A renewal test bench: a real step-ca, the fake `qm`/`pct`, a toolkit.json
//! and a manifest in a temp dir, and the `phoenix-renew` binary run against
//! them with a private STEPPATH.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use crate::common::{FakePve, TestCa};

/// One test's world.
pub struct Bench {
    pub ca: TestCa,
    pub pve: FakePve,
    pub dir: tempfile::TempDir,
    pub renewal: Value,
}

/// What `step certificate inspect` says of a certificate: serial and SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub serial: String,
    pub sans: Vec<String>,
}

impl Bench {
    pub fn new() -> Bench {
        Self::with_claims(None)
    }

    pub fn with_claims(claims: Option<&str>) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        // The fake guests run on this host: their drop directory (the
        // guests' /tmp) is a temp dir, never the host's /tmp.
        let drop = dir.path().join("guest-tmp");
        let b = Bench {
            ca: TestCa::start(claims),
            pve: FakePve::new(),
            dir,
            renewal: json!({"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 20,
                            "guest_drop_dir": drop}),
        };
        std::fs::create_dir_all(b.etc()).unwrap();
        std::fs::create_dir_all(b.drop_dir()).unwrap();
        b.write_config();
        b
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn etc(&self) -> PathBuf {
        self.path("etc")
    }

    /// `renewal.guest_drop_dir`, shared by the fake guests.
    pub fn drop_dir(&self) -> PathBuf {
        self.path("guest-tmp")
    }

    /// Set `renewal.KEY` and rewrite toolkit.json.
    pub fn set_renewal(&mut self, key: &str, value: Value) {
        self.renewal[key] = value;
        self.write_config();
    }

    pub fn write_config(&self) {
        let config = json!({
            "phoenix_etc": self.etc(),
            "lock_dir": self.path("lock"),
            "state_dir": self.path("state"),
            "ca": {
                "url": self.ca.url(),
                "state_dir": self.ca.dir.path(),
                "root_cert": self.ca.root_cert(),
                "provisioner": self.ca.provisioner(),
                "provisioner_password_file": self.ca.password_file(),
            },
            "renewal": self.renewal,
        });
        std::fs::write(
            self.path("toolkit.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    pub fn write_manifest(&self, entries: &Value) {
        std::fs::write(
            self.etc().join("certificate-manifest.json"),
            serde_json::to_vec_pretty(entries).unwrap(),
        )
        .unwrap();
    }

    /// A `step` first on PATH that logs every call's arguments to
    /// `step-calls.log` here and adds `issue_args` to every `step ca
    /// certificate`: a CA whose clock differs from ours (`--not-before
    /// 1h`: ahead; `-50m`: behind). The real `step` is the one on PATH.
    /// Returns the PATH to run with.
    pub fn skewed_step(&self, issue_args: &str) -> std::ffi::OsString {
        let path = crate::common::path_with_fakes();
        let real = std::env::split_paths(&path)
            .map(|d| d.join("step"))
            .find(|p| p.is_file())
            .expect("step on PATH");
        let bin = self.path("skewed-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let wrapper = bin.join("step");
        crate::common::write_executable(
            &wrapper,
            &format!(
                "#!/bin/sh\necho \"$*\" >> {log}\nif [ \"$1 $2\" = \"ca certificate\" ]; then\n\
                 shift 2; exec {real} ca certificate {issue_args} \"$@\"\nfi\nexec {real} \"$@\"\n",
                log = self.path("step-calls.log").display(),
                real = real.display()
            ),
        );
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        std::env::join_paths(dirs).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-renew"));
        cmd.arg("--config")
            .arg(self.path("toolkit.json"))
            .args(args);
        for (k, v) in self.pve.env() {
            cmd.env(k, v);
        }
        cmd.env("STEPPATH", self.path("steppath"))
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Serial and SANs (DNS then IP, as step lists them) of a certificate.
    pub fn inspect(&self, crt: &Path) -> Inspected {
        let out = Command::new("step")
            .args(["certificate", "inspect", "--format", "json"])
            .arg(crt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inspect {}: {}",
            crt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let san = &v["extensions"]["subject_alt_name"];
        let mut sans: Vec<String> = ["dns_names", "ip_addresses"]
            .iter()
            .flat_map(|k| san[k].as_array().cloned().unwrap_or_default())
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        sans.sort();
        Inspected {
            serial: v["serial_number"].as_str().unwrap().to_string(),
            sans,
        }
    }

    /// Guest commands the fakes ran, as "tool argv..." lines.
    pub fn pve_calls(&self) -> Vec<String> {
        self.pve
            .calls()
            .iter()
            .map(|c| {
                let argv: Vec<&str> = c["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                format!("{} {}", c["tool"].as_str().unwrap(), argv.join(" "))
            })
            .collect()
    }
}

/// `0o644`-style mode, uid, gid of a file.
/// A guest `systemctl` that logs "ID args" to `systemctl.log` in the fake
/// state and exits with the code in the guest's `systemctl.rc` (0 when
/// absent), saying "Job for nginx.service failed." when it fails.
pub const SYSTEMCTL: &str =
    "#!/bin/sh\necho \"$FAKE_GUEST_ID $*\" >> \"$FAKE_PVE/systemctl.log\"\n\
    rc=$(cat \"$FAKE_GUEST_DIR/systemctl.rc\" 2>/dev/null || echo 0)\n\
    [ \"$rc\" = 0 ] || echo \"Job for nginx.service failed.\" >&2\nexit \"$rc\"\n";

/// The lines the guests' `systemctl` logged, in order.
pub fn systemctl_log(b: &Bench) -> Vec<String> {
    std::fs::read_to_string(b.pve.dir.path().join("systemctl.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

pub fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Names of the files in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
