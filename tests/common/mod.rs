//! Support shared by the integration tests: the real step-ca on loopback,
//! the fake Proxmox tools on PATH, paths of the project and of `../shared`.
//! (Each test crate uses a part of it.)
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project root.
pub fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the project (tools, reference configs).
pub fn shared() -> PathBuf {
    project().join("../shared")
}

/// The public Phoenix files, `../shared/reference/phoenix-etc`: `None`
/// (and a line saying the test is skipped) on a machine without
/// `../shared`, where the README's commands must still pass. Under CI
/// (`CI` set), where `../shared` is always beside the clone, a missing
/// directory fails the test instead of skipping it.
#[allow(dead_code)]
pub fn reference_etc() -> Option<PathBuf> {
    let dir = shared().join("reference/phoenix-etc");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "'{}' is missing under CI",
        dir.display()
    );
    eprintln!(
        "skipped: '{}' is not beside this checkout (the public Phoenix files)",
        dir.display()
    );
    None
}

/// Write an executable script (mode 0755) at `path`, by a `sh` child:
/// this process never holds a descriptor open for writing on it. One
/// written here would be inherited by a child another test thread forks
/// meanwhile, and until that child's exec closes it, executing the script
/// fails with ETXTBSY, "Text file busy" (rust-lang/rust#114554; it failed
/// a CI run in tests/renew_deliver.rs).
pub fn write_executable(path: &Path, text: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("sh")
        .args(["-c", "cat >\"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("running sh");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "writing {}: {status}", path.display());
}

/// `tests/fakes`: fake `qm`, `pct` (and later `docker`).
pub fn fakes() -> PathBuf {
    project().join("tests/fakes")
}

/// PATH with the fakes first.
pub fn path_with_fakes() -> OsString {
    let mut p = OsString::from(fakes());
    p.push(":");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real step-ca started with `scripts/lib/run-test-ca.sh` (the
/// project's copy of the `../shared/tools` recipe), stopped when dropped.
/// Binds 127.0.0.1 only. Its directory is also a CA state directory with
/// a published readiness token (`phoenix-renew run` issues nothing
/// without one): a test pointing `ca.state_dir` at it has a ready CA.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub vars: HashMap<String, String>,
}

impl TestCa {
    /// Initialise and start a CA; `claims` as `STEP_CA_CLAIMS`.
    pub fn start(claims: Option<&str>) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut ca = TestCa {
            dir,
            port,
            vars: HashMap::new(),
        };
        ca.launch(claims);
        ca
    }

    /// Initialise the CA's files without starting it: returns the CA with
    /// `url()` known, so a test can start it late with [`TestCa::launch`].
    pub fn init_only() -> TestCa {
        let ca = TestCa::start(None);
        ca.stop();
        ca
    }

    /// Start (again) on the same port and directory.
    pub fn launch(&mut self, claims: Option<&str>) {
        let mut cmd = Command::new("bash");
        cmd.arg(project().join("scripts/lib/run-test-ca.sh"))
            .arg(self.dir.path())
            .arg(self.port.to_string());
        if let Some(c) = claims {
            cmd.env("STEP_CA_CLAIMS", c);
        }
        let out = cmd.output().expect("running run-test-ca.sh");
        assert!(
            out.status.success(),
            "run-test-ca.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.publish();
    }

    /// The CA guest's `ExecStartPost=`: the real `phoenix-ca publish`
    /// writes `ca.ready` (and `ca.generation`, `public/`) into the CA's
    /// directory, carrying its URL and root fingerprint.
    pub fn publish(&self) {
        let (url, fingerprint) = (self.url(), self.fingerprint());
        let args = ["publish", "--no-health", "--ca-url", &url];
        let out = self
            .phoenix_ca(&args)
            .args(["--fingerprint", &fingerprint])
            .output()
            .expect("running phoenix-ca publish");
        assert!(
            out.status.success(),
            "phoenix-ca publish for the test CA failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stop the server (files stay).
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(project().join("scripts/lib/run-test-ca.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }

    /// `phoenix-ca ARGS --state-dir DIR` for the CA's directory.
    pub fn phoenix_ca(&self, args: &[&str]) -> Command {
        let config = self.dir.path().join("publish.json");
        std::fs::write(&config, "{}").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-ca"));
        cmd.args(args)
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("--config")
            .arg(&config)
            .env_remove("JOURNAL_STREAM");
        cmd
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn root_cert(&self) -> PathBuf {
        self.dir.path().join("steppath/certs/root_ca.crt")
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    pub fn fingerprint(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("root_fingerprint"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn provisioner(&self) -> String {
        self.vars
            .get("PROVISIONER")
            .cloned()
            .unwrap_or_else(|| "admin".into())
    }

    /// toolkit.json's `ca` section for this CA, its directory as the
    /// state directory (it holds the published token).
    pub fn toolkit_ca(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(),
            "state_dir": self.dir.path(),
            "root_cert": self.root_cert(),
            "provisioner": self.provisioner(),
            "provisioner_password_file": self.password_file(),
        })
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        self.stop();
    }
}

/// State of the fake `qm`/`pct` (see tests/fakes/pve.py).
pub struct FakePve {
    pub dir: tempfile::TempDir,
}

impl FakePve {
    pub fn new() -> FakePve {
        FakePve {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn guest(&self, kind: &str, id: u32) -> PathBuf {
        let d = self.dir.path().join(kind).join(id.to_string());
        std::fs::create_dir_all(d.join("bin")).unwrap();
        d
    }

    /// A running VM with a running agent.
    pub fn add_vm(&self, id: u32) -> PathBuf {
        self.guest("qemu", id)
    }

    /// A running container.
    pub fn add_ct(&self, id: u32) -> PathBuf {
        self.guest("lxc", id)
    }

    pub fn set_status(&self, dir: &Path, status: &str) {
        std::fs::write(dir.join("status"), status).unwrap();
    }

    pub fn agent_absent(&self, vm_dir: &Path) {
        std::fs::write(vm_dir.join("agent"), "absent").unwrap();
    }

    /// Put an executable script into the guest's `bin/`.
    pub fn guest_command(&self, guest_dir: &Path, name: &str, script: &str) {
        write_executable(&guest_dir.join("bin").join(name), script);
    }

    /// Every recorded call, in order.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Environment for a child that should use the fakes.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), path_with_fakes()),
            ("PHOENIX_FAKE_PVE".into(), self.dir.path().into()),
        ]
    }
}

/// The chain benchmarks' summary of one chain (benches/sd_chain_latency.sh
/// reads it, in the user manager and in the booted systems alike): the
/// whole chain's p50, p99 and max, then the p50 of each leg counted from
/// the publish (the wait unit active, the waiter's exit, docker's
/// `ExecStart=` process, docker active: `legs[3]`, the whole chain). Both
/// lines start with `prefix`. Percentiles are nearest-rank. Returns the
/// chain's p50.
pub fn print_chain_summary(prefix: &str, legs: &[Vec<f64>; 4]) -> f64 {
    let sorted = |i: usize| {
        let mut v = legs[i].clone();
        v.sort_by(f64::total_cmp);
        v
    };
    let at = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let total = sorted(3);
    println!(
        "{prefix}: runs={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        total.len(),
        at(&total, 0.5),
        at(&total, 0.99),
        total[total.len() - 1]
    );
    println!(
        "{prefix}: p50 from the publish to: wait unit active {:.1}ms, waiter exited \
         {:.1}ms, docker ExecStart {:.1}ms, docker active {:.1}ms",
        at(&sorted(0), 0.5),
        at(&sorted(1), 0.5),
        at(&sorted(2), 0.5),
        at(&total, 0.5)
    );
    at(&total, 0.5)
}

/// Whether `bin` is linked statically (no program interpreter: the
/// release's phoenix-hook and phoenix-ca, scripts/build-release.sh), from
/// its program headers.
pub fn is_static(bin: &Path) -> bool {
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(bin)
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success(), "readelf -lW {}", bin.display());
    !String::from_utf8_lossy(&out.stdout).contains("INTERP")
}
