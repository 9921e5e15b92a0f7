//! The worlds the race harness (tests/race.rs) runs the real binaries in:
//! the CA guest's state directory on "mounted storage" with its hookscript
//! and gated dependents ([`CaWorld`]), and the renewal of one certificate
//! against the real step-ca ([`Renewal`]).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Event;
use crate::common;
use crate::hook_support::{in_namespace, Layout};

const CA_BIN: &str = env!("CARGO_BIN_EXE_phoenix-ca");
const RENEW_BIN: &str = env!("CARGO_BIN_EXE_phoenix-renew");

/// The CA guest.
pub const CA_ID: &str = "103";
/// Gated dependents: a container whose bind mount sits on the storage
/// (its pre-start checks the mount, so it runs in the namespace) and a VM.
pub const DEPENDENTS: [&str; 2] = ["102", "1001"];
/// `guests.<id>.gate_timeout_secs` of the dependents.
pub const GATE_S: u64 = 10;
/// `ca.health_timeout_secs`: the bound of the dependents' one health check.
pub const HEALTH_S: u64 = 2;

/// A random delay of up to `max` ms.
pub fn rand_ms(max: u64) -> Duration {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    Duration::from_millis(u64::from_le_bytes(b) % (max + 1))
}

/// The CA as the hook's health check reaches it: a forwarder on 127.0.0.1
/// to the real step-ca that can be switched off (connections are then
/// closed at once, as by a CA still starting), so a fresh token with an
/// unhealthy CA can be raced too. The thread lives as long as the test.
pub struct Gate {
    up: Arc<AtomicBool>,
    pub url: String,
}

impl Gate {
    pub fn new(target: &str) -> Gate {
        let target = target.trim_start_matches("https://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let up2 = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Gate { up, url }
    }

    /// Let connections through to the CA, or close them.
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// The CA guest 103 and its dependents as the hookscript sees them
/// (tests/hook_support's layout): the state directory on storage
/// "quickOS", mounted only inside the private namespace each hook run gets;
/// toolkit.json's `ca.url` and root are the harness's real step-ca, so the
/// dependents' health check asks it.
pub struct CaWorld {
    pub layout: Layout,
    /// The real CA's root fingerprint: what every publish carries.
    pub fingerprint: String,
    /// `ca.url`: the real CA through [`Gate`].
    pub url: String,
    pub gate: Gate,
}

impl CaWorld {
    pub fn new(ca: &common::TestCa) -> CaWorld {
        let health_gate = Gate::new(&ca.url());
        let url = health_gate.url.clone();
        let gate = json!({"gate_on_ca": true, "gate_timeout_secs": GATE_S});
        let layout = Layout::new(
            json!({"url": url, "health_timeout_secs": HEALTH_S}),
            json!({"guests": {"102": gate, "1001": gate}}),
        );
        std::fs::copy(ca.root_cert(), layout.state.join("phoenix_root_ca.crt")).unwrap();
        let fingerprint = phoenix_hooks::ca::fingerprint_of(&ca.root_cert()).unwrap();
        assert_eq!(fingerprint, ca.fingerprint());
        CaWorld {
            layout,
            fingerprint,
            url,
            gate: health_gate,
        }
    }

    /// `phoenix-hook VMID PHASE`, in the namespace where the storage is
    /// mounted when the guest's checks look at it.
    pub fn hook(&self, vmid: &str, phase: &str) -> Output {
        let mut cmd = self.layout.hook(vmid, phase);
        cmd.env_remove("JOURNAL_STREAM");
        if vmid == "1001" {
            return cmd.output().unwrap();
        }
        let storage = &self.layout.storage;
        in_namespace(&[(storage, storage)], &cmd)
    }

    /// `phoenix-ca ARGS --state-dir STATE`, quiet.
    pub fn ca<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(CA_BIN);
        c.args(args)
            .arg("--state-dir")
            .arg(&self.layout.state)
            .env("PHOENIX_CONFIG", &self.layout.config)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// The CA guest's publish (its ExecStartPost=), with the real CA's URL
    /// and fingerprint; `/health` is not asked here (the dependents ask it).
    pub fn publish(&self) -> Command {
        self.ca(&[
            "publish",
            "--no-health",
            "--ca-url",
            &self.url,
            "--fingerprint",
            &self.fingerprint,
        ])
    }

    /// The readiness token file.
    pub fn ready(&self) -> PathBuf {
        self.layout.state.join("ca.ready")
    }
}

/// The shared renewal world: one real step-ca, a manifest of one
/// certificate, a `step` wrapper that timestamps each call.
pub struct Renewal {
    pub ca: common::TestCa,
    pub dir: tempfile::TempDir,
}

impl Renewal {
    pub fn new() -> Renewal {
        let ca = common::TestCa::start(None);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let real_step = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v step"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let wrapper = d.join("bin/step");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n# race harness: timestamp every step call of a renewal run\n\
                 s=$(date +%s%6N)\n{} \"$@\"\nrc=$?\n\
                 echo \"$PPID $s $(date +%s%6N) $rc $1 $2\" >> \"$RACE_STEP_LOG\"\nexit $rc\n",
                real_step.trim()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("pve")).unwrap();
        std::fs::write(
            d.join("etc/certificate-manifest.json"),
            json!([{"common_name": "race.test.internal", "sans": ["race.test.internal"],
                    "guest_id": 101, "guest_type": "lxc",
                    "cert_path": d.join("certs/race.crt"), "key_path": d.join("certs/race.key"),
                    "owner": "root:root"}])
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            d.join("toolkit.json"),
            json!({"phoenix_etc": d.join("etc"), "lock_dir": d.join("lock"),
                   "state_dir": d.join("state"),
                   "ca": {"url": ca.url(), "root_cert": ca.root_cert(),
                          "provisioner": ca.provisioner(),
                          "provisioner_password_file": ca.password_file()},
                   // Less than 2 h left of a 1 h certificate: every run renews;
                   "renewal": {"lifetime": "1h", "threshold": "2h", "command_timeout_secs": 30,
                               // Queue on the lock rather than give up: every run works.
                               "lock_wait_secs": 20}})
            .to_string(),
        )
        .unwrap();
        Renewal { ca, dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("certs/race.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("certs/race.key")
    }

    pub fn run(&self, log: &Path) -> i32 {
        let d = self.dir.path();
        let path = format!(
            "{}:{}:{}",
            d.join("bin").display(),
            common::fakes().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(RENEW_BIN)
            .args(["run", "--config"])
            .arg(d.join("toolkit.json"))
            .env("PATH", path)
            .env("PHOENIX_FAKE_PVE", d.join("pve"))
            .env("STEPPATH", d.join("steppath"))
            .env("RACE_STEP_LOG", log)
            .env_remove("PHOENIX_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
            .unwrap_or(-1)
    }

    /// One read as a service would do it: key, cert, key again (a change
    /// in between is a new pair being installed: read again later).
    pub fn read(&self, root: &phoenix_hooks::cert::Root) -> Option<Event> {
        let k1 = std::fs::read(self.key()).ok()?;
        let crt = std::fs::read(self.cert()).ok()?;
        let k2 = std::fs::read(self.key()).ok()?;
        if k1 != k2 {
            return None;
        }
        let what = match (
            phoenix_hooks::cert::parse_bundle(&crt, root),
            phoenix_hooks::cert::key_public_point(&k1),
        ) {
            (Ok(info), Ok(point)) if info.public_key == point => return Some(ok_read()),
            (Ok(_), Ok(_)) => "a certificate that does not match its key".to_string(),
            (c, k) => format!(
                "an unreadable pair (cert: {:?}, key: {:?})",
                c.err().map(|e| e.to_string()),
                k.err().map(|e| e.to_string())
            ),
        };
        Some(Event::Read { ok: false, what })
    }
}

pub fn ok_read() -> Event {
    Event::Read {
        ok: true,
        what: String::new(),
    }
}
