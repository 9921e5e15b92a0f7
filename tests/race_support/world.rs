//! The CA side of the race harness (tests/race.rs): the CA guest's state
//! directory on "mounted storage" with its hookscript and gated dependents
//! ([`CaWorld`]), the waiters (the real one, or the old bash loop), and a
//! watcher that times when the current generation's token comes into
//! place.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{now_us, Event};
use crate::common;
use crate::hook_support::{in_namespace, Layout};

const CA_BIN: &str = env!("CARGO_BIN_EXE_phoenix-ca");

/// The CA guest.
pub const CA_ID: &str = "103";
/// Gated dependents: a container whose bind mount sits on the storage
/// (its pre-start checks the mount, so it runs in the namespace) and a VM.
pub const DEPENDENTS: [&str; 2] = ["102", "1001"];
/// `guests.<id>.gate_timeout_secs` of the dependents.
pub const GATE_S: u64 = 10;
/// `ca.health_timeout_secs`: the bound of the dependents' one health check.
pub const HEALTH_S: u64 = 2;

/// A random number below `n`.
pub fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b) % n
}

/// A random delay of up to `max` ms.
pub fn rand_ms(max: u64) -> Duration {
    Duration::from_millis(rand_below(max + 1))
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

    /// The generation file.
    pub fn generation(&self) -> PathBuf {
        self.layout.state.join("ca.generation")
    }

    /// A waiter for the current generation, bounded by `bound_s`: the
    /// real `phoenix-ca wait` (poll-only as on NFS, or with inotify), or
    /// the old bash loop that takes any `ca.ready` there is.
    pub fn waiter(&self, bash: bool, poll_only: bool, bound_s: u64) -> Command {
        if bash {
            let mut c = Command::new("timeout");
            c.arg(bound_s.to_string())
                .args([
                    "sh",
                    "-c",
                    "while [ ! -f \"$1\" ]; do sleep 0.02; done",
                    "sh",
                ])
                .arg(self.ready())
                .stdin(Stdio::null());
            return c;
        }
        let mut args = vec!["wait".to_string(), "--no-health".into(), "--timeout".into()];
        args.push(bound_s.to_string());
        if poll_only {
            args.extend(["--no-inotify", "--interval", "20"].map(String::from));
        }
        self.ca(&args)
    }

    /// Whether the token in place carries the current generation (read
    /// here independently of the product's reader).
    fn token_fresh(&self) -> bool {
        let field = |p: PathBuf| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["generation"].as_str().map(String::from))
                .filter(|g| !g.is_empty())
        };
        let current = field(self.generation());
        current.is_some() && field(self.ready()) == current
    }

    /// Watch for the token of the current generation to come into
    /// place: reads back to back (0.2 ms apart), the start of the last
    /// that found none and the end of the first that found it. A token
    /// already in place at the first read is a harness error; none within
    /// a minute, a failure.
    pub fn watch_token(&self) -> Event {
        let mut after = None;
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < give_up {
            let began = now_us();
            if self.token_fresh() {
                let by = now_us();
                return match after {
                    Some(after) => Event::TokenInPlace { after, by },
                    None => Event::Failed("the token was in place before the publish".into()),
                };
            }
            after = Some(began);
            std::thread::sleep(Duration::from_micros(200));
        }
        Event::Failed("no token of the current generation within a minute".into())
    }
}
