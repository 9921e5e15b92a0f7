//! The ordering proof: the real binaries raced against each other with
//! random delays (the arrival order is unknown, as at boot), many times,
//! with four invariants checked on every iteration (tests/race_support):
//!
//! 1. no waiter returns before the current generation is published, and
//!    every waiter returns within its bound;
//! 2. two renewals never overlap (each `step` call is timestamped by a
//!    wrapper on PATH);
//! 3. a reader polling the certificate files never sees a partial file or a
//!    certificate that is not its key's;
//! 4. nothing is issued before the CA is ready (published).
//!
//! Every iteration: the CA guest's pre-start (`phoenix-ca invalidate`: a new
//! generation, so the previous iteration's token is stale), a publish after
//! a random delay, three waiters (two with inotify, one poll-only) started
//! at random. Every 10th iteration also: three renewals, each gated like a
//! unit ordered after the CA (`phoenix-ca wait`, then `phoenix-renew run`),
//! started at random against ONE shared real step-ca, with a threshold that
//! makes every run renew, and a reader polling the files meanwhile.
//!
//! `PHOENIX_RACE_ITERATIONS` (default 200) sets the count. Prints
//! iterations, violations and the time taken.

mod common;
mod race_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use race_support::{check, now_us, Event, Tally};
use serde_json::json;

const CA_BIN: &str = env!("CARGO_BIN_EXE_phoenix-ca");
const RENEW_BIN: &str = env!("CARGO_BIN_EXE_phoenix-renew");
const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const WAIT_BOUND_S: u64 = 10;

fn rand_ms(max: u64) -> Duration {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    Duration::from_millis(u64::from_le_bytes(b) % (max + 1))
}

/// The shared renewal world: one real step-ca, a manifest of one
/// certificate, a `step` wrapper that timestamps each call.
struct Renewal {
    ca: common::TestCa,
    dir: tempfile::TempDir,
}

impl Renewal {
    fn new() -> Renewal {
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

    fn cert(&self) -> PathBuf {
        self.dir.path().join("certs/race.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("certs/race.key")
    }

    fn run(&self, log: &Path) -> i32 {
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
    fn read(&self, root: &phoenix_hooks::cert::Root) -> Option<Event> {
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

fn ok_read() -> Event {
    Event::Read {
        ok: true,
        what: String::new(),
    }
}

fn ca_cmd<S: AsRef<std::ffi::OsStr>>(state: &Path, config: &Path, args: &[S]) -> Command {
    let mut c = Command::new(CA_BIN);
    c.args(args)
        .arg("--state-dir")
        .arg(state)
        .env("PHOENIX_CONFIG", config)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn wait_args(poll_only: bool) -> Vec<String> {
    let mut a: Vec<String> = ["wait", "--no-health", "--timeout"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(WAIT_BOUND_S.to_string());
    if poll_only {
        a.extend(["--no-inotify", "--interval", "20"].map(String::from));
    }
    a
}

/// The step calls of one iteration as events: each run's work span, and
/// every successful issue or renewal.
fn step_events(log: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(pid), Some(from), Some(to), Some(rc)) = (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            continue;
        };
        let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
        out.push(Event::RenewWork {
            run: pid.to_string(),
            from,
            to,
        });
        let verb = f.get(4..6).map(|v| v.join(" ")).unwrap_or_default();
        if *rc == "0" && (verb == "ca certificate" || verb == "ca renew") {
            out.push(Event::Issued { at: from });
        }
    }
    out
}

fn iteration(
    i: usize,
    state: &Path,
    config: &Path,
    renewal: &Renewal,
    root: &phoenix_hooks::cert::Root,
) -> Tally {
    // CA guest pre-start: a new generation.
    let st = ca_cmd(state, config, &["invalidate"]).status().unwrap();
    assert!(st.success(), "invalidate failed");
    let events = Arc::new(Mutex::new(Vec::new()));
    let renewing = i.is_multiple_of(10);
    let step_log = renewal.dir.path().join(format!("steps-{i}.log"));
    let done = AtomicBool::new(false);
    let done = &done;
    std::thread::scope(|s| {
        for id in 0..3 {
            let events = events.clone();
            s.spawn(move || {
                std::thread::sleep(rand_ms(5));
                let started = now_us();
                let code = ca_cmd(state, config, &wait_args(id == 2))
                    .status()
                    .unwrap()
                    .code()
                    .unwrap_or(-1);
                events.lock().unwrap().push(Event::WaiterEnd {
                    id,
                    code,
                    at: now_us(),
                    started,
                    bound: WAIT_BOUND_S * 1_000_000,
                });
            });
        }
        {
            let events = events.clone();
            s.spawn(move || {
                std::thread::sleep(rand_ms(30));
                events.lock().unwrap().push(Event::PublishStart(now_us()));
                let st = ca_cmd(
                    state,
                    config,
                    &["publish", "--no-health", "--fingerprint", FP],
                )
                .status()
                .unwrap();
                assert!(st.success(), "publish failed");
            });
        }
        if renewing {
            let runs: Vec<_> = (0..3)
                .map(|_| {
                    let events = events.clone();
                    let step_log = &step_log;
                    s.spawn(move || {
                        std::thread::sleep(rand_ms(30));
                        // Ordered after the CA, as the units order it.
                        let gate = ca_cmd(state, config, &wait_args(false)).status().unwrap();
                        if !gate.success() {
                            return;
                        }
                        let code = renewal.run(step_log);
                        if code != 0 && code != 75 {
                            events.lock().unwrap().push(Event::Read {
                                ok: false,
                                what: format!("phoenix-renew run exited {code}"),
                            });
                        }
                    })
                })
                .collect();
            let events_r = events.clone();
            let reader = s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some(e) = renewal.read(root) {
                        events_r.lock().unwrap().push(e);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            for r in runs {
                r.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap();
        }
    });
    let mut ev = events.lock().unwrap().clone();
    ev.extend(step_events(&step_log));
    check(&ev)
}

#[test]
fn randomized_races_keep_every_invariant() {
    let n: usize = std::env::var("PHOENIX_RACE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ssl");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("toolkit.json");
    std::fs::write(&config, "{}").unwrap();
    let renewal = Renewal::new();
    let root = phoenix_hooks::cert::read_root(&renewal.ca.root_cert()).unwrap();
    let mut total = Tally::default();
    for i in 0..n {
        total.add(iteration(i, &state, &config, &renewal, &root));
    }
    let elapsed = t0.elapsed();
    let summary = format!(
        "iterations={n} violations={} waiters={} renew_step_calls={} issued={} reads={} time={:.1}s",
        total.violations.len(),
        total.waiters,
        total.renew_runs,
        total.issued,
        total.reads,
        elapsed.as_secs_f64()
    );
    println!("{summary}");
    // cargo test shows a passing test's output only with --nocapture:
    // scripts/test.sh prints this file after the run.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("race-summary.txt"),
        format!("{summary}\n"),
    );
    assert!(
        total.violations.is_empty(),
        "violations:\n{}",
        total.violations.join("\n")
    );
    // The harness exercised what it claims to: renewals really happened
    // and the reader really read.
    assert_eq!(total.waiters, 3 * n);
    if n >= 1 {
        assert!(
            total.issued >= n.div_ceil(10),
            "renewals did not happen: {}",
            total.issued
        );
        assert!(total.reads > 0);
    }
}
