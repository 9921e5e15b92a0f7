//! The renewal side of the race harness (tests/race.rs): one certificate
//! of a manifest renewed by the real `phoenix-renew` against the real
//! step-ca, its readiness gate reading the [`super::world::CaWorld`]'s
//! state directory; a `step` wrapper that timestamps every call; a reader
//! polling the pair as a service would; and the broken variants'
//! stand-ins ([`Variant`]).
//!
//! Keys change: a run asks for one of two SAN sets at random (a set that
//! differs from the certificate's is SAN drift: a new key is issued), or
//! forces a new key (`--force`); a run that asks for the same set renews
//! (same key, `--renew-now`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::world::{rand_below, rand_ms};
use super::{Event, Seen, Variant};
use crate::common;

const RENEW_BIN: &str = env!("CARGO_BIN_EXE_phoenix-renew");

/// How long one run (a unit's start job) goes on after exits 75.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// What one run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The subject alone as SAN.
    One,
    /// The subject and a second name.
    Two,
    /// The subject alone, and a new key whatever the files say.
    Rekey,
}

impl Ask {
    pub fn random() -> Ask {
        match rand_below(3) {
            0 => Ask::One,
            1 => Ask::Two,
            _ => Ask::Rekey,
        }
    }
}

/// The renewal world of one harness run.
pub struct Renewal {
    pub dir: tempfile::TempDir,
    variant: Variant,
    runs: AtomicUsize,
}

impl Renewal {
    /// The world, its readiness gate reading `ca_state` (the CA guest's
    /// state directory, host view).
    pub fn new(ca: &common::TestCa, ca_state: &Path, variant: Variant) -> Renewal {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let real_step = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v step"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for sub in ["bin", "etc", "pve/lxc/101/bin", "certs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let wrapper = d.join("bin/step");
        common::write_executable(
            &wrapper,
            &format!(
                "#!/bin/sh\n# race harness: timestamp every step call of a renewal run\n\
                 s=$(date +%s%6N)\n{} \"$@\"\nrc=$?\n\
                 echo \"$PPID $s $(date +%s%6N) $rc $1 $2\" >> \"$RACE_STEP_LOG\"\nexit $rc\n",
                real_step.trim()
            ),
        );
        let world = Renewal {
            dir,
            variant,
            runs: AtomicUsize::new(0),
        };
        for sans in [1, 2] {
            world.write_manifest(sans);
        }
        // The CA's current generation, unless the variant wants a CA
        // state without one (the gate's compatibility rule then applies).
        let generation = match variant {
            Variant::StaleWaiter => "no-such-generation",
            _ => "ca.generation",
        };
        let base = json!({
            "phoenix_etc": d.join("etc"), "state_dir": d.join("state"),
            "ca": {"url": ca.url(), "state_dir": ca_state, "generation_file": generation,
                   "root_cert": ca.root_cert(), "provisioner": ca.provisioner(),
                   "provisioner_password_file": ca.password_file()},
            // Every run renews or issues (--renew-now, --force);
            "renewal": {"lifetime": "1h", "threshold": "66%", "command_timeout_secs": 30,
                        // queue on the lock rather than give up: every run works.
                        "lock_wait_secs": 20}
        });
        std::fs::write(d.join("base.json"), base.to_string()).unwrap();
        world
    }

    /// The manifest asking for `sans` names. In the torn-install variant
    /// the product installs into `staging/`, and the post-renewal action
    /// copies the pair into `certs/` in place, certificate first.
    fn write_manifest(&self, sans: usize) {
        let d = self.dir.path();
        let names = ["race.test.internal", "alt.race.test.internal"];
        let mut entry = json!({"common_name": names[0], "sans": names[..sans],
                               "guest_id": 101, "guest_type": "lxc",
                               "cert_path": self.cert(), "key_path": self.key(),
                               "owner": "root:root"});
        if self.variant == Variant::TornInstall {
            let staged = |p: PathBuf| d.join("staging").join(p.file_name().unwrap());
            let (crt, key) = (staged(self.cert()), staged(self.key()));
            entry["cert_path"] = json!(crt);
            entry["key_path"] = json!(key);
            entry["post_renewal"] = json!({"run": [
                "sh", "-c", "cp \"$1\" \"$3\" && cp \"$2\" \"$4\"", "sh",
                crt, key, self.cert(), self.key()]});
        }
        std::fs::write(
            d.join(format!("etc/manifest-{sans}.json")),
            json!([entry]).to_string(),
        )
        .unwrap();
    }

    /// The certificate the reader reads (and services would).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("certs/race.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("certs/race.key")
    }

    /// A toolkit.json for one run: the manifest `ask` names, the shared
    /// lock directory (one of its own in the no-lock variant).
    fn config(&self, ask: Ask, n: usize) -> PathBuf {
        let d = self.dir.path();
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("base.json")).unwrap()).unwrap();
        let sans = if ask == Ask::Two { 2 } else { 1 };
        c["manifest"] = json!(d.join(format!("etc/manifest-{sans}.json")));
        c["lock_dir"] = json!(match self.variant {
            Variant::NoLock => d.join(format!("locks/{n}")),
            _ => d.join("lock"),
        });
        let path = d.join(format!("run-{n}.json"));
        std::fs::write(&path, c.to_string()).unwrap();
        path
    }

    /// One run as a unit makes it: `phoenix-renew run`, again after each
    /// exit 75 (the CA not ready yet), with a short pause, for
    /// [`RETRY_FOR`] (`--retry-for` does the same with longer pauses).
    /// The last exit code, and a [`Event::RenewRun`] per attempt.
    pub fn run(&self, ask: Ask, log: &Path) -> (i32, Vec<Event>) {
        let d = self.dir.path();
        let path = format!(
            "{}:{}:{}",
            d.join("bin").display(),
            common::fakes().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let deadline = Instant::now() + RETRY_FOR;
        let mut events = Vec::new();
        loop {
            let n = self.runs.fetch_add(1, Ordering::Relaxed);
            let mut cmd = Command::new(RENEW_BIN);
            cmd.arg("run")
                .arg("--config")
                .arg(self.config(ask, n))
                .env("PATH", &path)
                .env("PHOENIX_FAKE_PVE", d.join("pve"))
                .env("STEPPATH", d.join("steppath"))
                .env("RACE_STEP_LOG", log)
                .env_remove("PHOENIX_CONFIG")
                .env_remove("JOURNAL_STREAM")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd.arg(if ask == Ask::Rekey {
                "--force"
            } else {
                "--renew-now"
            });
            let child = cmd.spawn().unwrap();
            let pid = child.id().to_string();
            let out = child.wait_with_output().unwrap();
            let code = out.status.code().unwrap_or(-1);
            let stderr = String::from_utf8_lossy(&out.stderr);
            events.push(Event::RenewRun {
                pid,
                code,
                not_ready: stderr.contains("the CA is not ready"),
            });
            if code != 75 || Instant::now() >= deadline {
                if code != 0 {
                    let lines: Vec<&str> = stderr.lines().collect();
                    events.push(Event::Failed(format!(
                        "phoenix-renew run exited {code}: {}",
                        lines[lines.len().saturating_sub(3)..].join(" | ")
                    )));
                }
                return (code, events);
            }
            std::thread::sleep(Duration::from_millis(10) + rand_ms(20));
        }
    }

    /// The pair in place, as a service reloaded now would find it.
    pub fn settled(&self, root: &phoenix_hooks::cert::Root) -> Event {
        let pair = std::fs::read(self.key()).and_then(|k| Ok((k, std::fs::read(self.cert())?)));
        Event::Settled(match pair {
            Err(e) => Err(format!("no pair: {e}")),
            Ok((key, crt)) => match judge(&key, &crt, root) {
                Judged::Match => Ok(()),
                Judged::Mismatch => Err("a certificate that is not its key's".into()),
                Judged::Unreadable(what) => Err(what),
            },
        })
    }
}

/// The step calls of one log as events.
pub fn step_events(log: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(pid), Some(from), Some(to), Some(rc)) = (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            continue;
        };
        out.push(Event::StepCall {
            run: pid.to_string(),
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            rc: rc.parse().unwrap(),
            verb: f.get(4..6).map(|v| v.join(" ")).unwrap_or_default(),
        });
    }
    out
}

enum Judged {
    Match,
    Mismatch,
    Unreadable(String),
}

fn judge(key: &[u8], crt: &[u8], root: &phoenix_hooks::cert::Root) -> Judged {
    match (
        phoenix_hooks::cert::parse_bundle(crt, root),
        phoenix_hooks::cert::key_public_point(key),
    ) {
        (Ok(info), Ok(point)) if info.public_key == point => Judged::Match,
        (Ok(_), Ok(_)) => Judged::Mismatch,
        (c, k) => Judged::Unreadable(format!(
            "a partial or unreadable pair (cert: {:?}, key: {:?})",
            c.err().map(|e| e.to_string()),
            k.err().map(|e| e.to_string())
        )),
    }
}

/// A service's view of the pair, polled: key, certificate, key again (a
/// key that changed in between is a pair being installed: look again).
/// Looking only copies the bytes, so that the reader is as quick as a
/// service: every pair seen is judged afterwards ([`Reader::seen`]). A
/// torn pair is judged by what came next: whichever file changed when
/// the pair matched again was the one behind.
pub struct Reader<'a> {
    renewal: &'a Renewal,
    looks: usize,
    /// Each pair seen that differs from the one before (key,
    /// certificate), and when the look that found it began (µs).
    pairs: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

impl<'a> Reader<'a> {
    pub fn new(renewal: &'a Renewal) -> Reader<'a> {
        Reader {
            renewal,
            looks: 0,
            pairs: Vec::new(),
        }
    }

    /// One look (nothing when there is no pair yet).
    pub fn look(&mut self) {
        let at = super::now_us();
        let read = || -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
            let k1 = std::fs::read(self.renewal.key())?;
            let crt = std::fs::read(self.renewal.cert())?;
            let k2 = std::fs::read(self.renewal.key())?;
            Ok((k1 == k2).then_some((k1, crt)))
        };
        let Ok(Some((key, crt))) = read() else {
            return;
        };
        self.looks += 1;
        if self
            .pairs
            .last()
            .is_none_or(|(_, k, c)| *k != key || *c != crt)
        {
            self.pairs.push((at, key, crt));
        }
    }

    /// What the reader saw: how many looks ([`Event::Looks`]), and each
    /// pair judged ([`Event::Read`]).
    pub fn seen(self, root: &phoenix_hooks::cert::Root) -> Vec<Event> {
        let mut out = vec![Event::Looks(self.looks)];
        // The torn pairs since the last whole one: the first's time, the
        // last pair.
        let mut torn: Option<(u64, &[u8], &[u8])> = None;
        for (at, key, crt) in &self.pairs {
            match judge(key, crt, root) {
                Judged::Unreadable(what) => out.push(Event::Read(Seen::Partial(what))),
                Judged::Mismatch => {
                    let since = torn.map_or(*at, |t| t.0);
                    torn = Some((since, key, crt));
                }
                Judged::Match => {
                    let seen = match torn.take() {
                        None => Seen::Whole,
                        Some((since, k0, c0)) => {
                            let us = at - since;
                            match (k0 == key.as_slice(), c0 == crt.as_slice()) {
                                (true, false) => Seen::KeyAhead { us },
                                (false, true) => Seen::CertAhead { us },
                                _ => Seen::Inconclusive,
                            }
                        }
                    };
                    out.push(Event::Read(seen));
                }
            }
        }
        out
    }
}
