//! `phoenix-ca` end to end: the built binary against temp state
//! directories, an overlay file system standing in for NFS, and the real
//! step-ca on loopback.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test: the build's, or the one `PHOENIX_TEST_CA_BIN`
/// names (scripts/test.sh runs this file again against phoenix-ca linked
/// as it ships, a static PIE).
fn bin() -> PathBuf {
    std::env::var_os("PHOENIX_TEST_CA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_phoenix-ca")))
}
const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A state directory and an empty toolkit.json, so that no configuration
/// of the machine leaks in.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("ssl")).unwrap();
        fs::write(dir.path().join("toolkit.json"), "{}").unwrap();
        Env { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("ssl")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("--state-dir")
            .arg(self.state())
            .env("PHOENIX_CONFIG", self.dir.path().join("toolkit.json"))
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }

    fn publish_no_health(&self) {
        self.ok(&["publish", "--no-health", "--fingerprint", FP]);
    }

    /// A waiter in the background, its stderr lines on a channel.
    fn spawn(&self, args: &[&str]) -> Waiter {
        Waiter::start(self.cmd(args))
    }

    /// A `wait --no-health` that polls once a minute only (inotify
    /// aside), once it has said it found no token.
    fn spawn_minute_poll_wait(&self) -> Waiter {
        let mut w = self.spawn(&[
            "wait",
            "--no-health",
            "--timeout",
            "300",
            "--interval",
            "60000",
        ]);
        w.expect_line("no readiness token yet");
        w
    }

    fn generation(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(self.state().join("ca.generation")).unwrap()).unwrap();
        v["generation"].as_str().unwrap().to_string()
    }
}

struct Waiter {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Waiter {
    /// Start `cmd` with its stderr lines on a channel.
    fn start(mut cmd: Command) -> Waiter {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Waiter {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Block until a stderr line contains `needle` (bounded).
    fn expect_line(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no line with {needle:?}; saw {:#?}", self.seen);
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Exit code, bounded by `max`.
    fn finish(&mut self, max: Duration) -> i32 {
        let deadline = Instant::now() + max;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("waiter still running after {max:?}; saw {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pseudo-random delay in [lo, hi) ms: the scenario (a CA that comes up
/// at an unknown time), not a way to make a race pass.
fn random_delay(lo: u64, hi: u64) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(lo + nanos % (hi - lo))
}

#[test]
fn token_published_after_a_random_delay_ends_the_wait() {
    for _ in 0..3 {
        let env = Env::new();
        env.ok(&["invalidate"]);
        let mut w = env.spawn(&["wait", "--no-health", "--timeout", "30"]);
        w.expect_line("no readiness token yet");
        std::thread::sleep(random_delay(10, 400));
        assert!(
            w.running(),
            "waiter returned before the token was published"
        );
        env.publish_no_health();
        assert_eq!(w.finish(Duration::from_secs(10)), 0, "{:#?}", w.seen);
    }
}

#[test]
fn stale_generation_times_out_with_124_saying_so() {
    let env = Env::new();
    env.ok(&["invalidate"]);
    env.publish_no_health();
    let old = fs::read(env.state().join("ca.ready")).unwrap();
    env.ok(&["invalidate"]);
    assert!(
        !env.state().join("ca.ready").exists(),
        "invalidate left the old token"
    );
    // An earlier boot's token is back (a copy, a restore, a slow writer).
    fs::write(env.state().join("ca.ready"), &old).unwrap();
    let out = env.run(&["wait", "--no-health", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stale readiness token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalidate_while_waiting_keeps_the_waiter_until_the_next_publish() {
    let env = Env::new();
    env.ok(&["invalidate"]);
    let first = env.generation();
    env.publish_no_health();
    let old = fs::read(env.state().join("ca.ready")).unwrap();
    env.ok(&["invalidate"]);
    let mut w = env.spawn(&["wait", "--no-health", "--timeout", "30"]);
    w.expect_line("no readiness token yet");
    env.ok(&["invalidate"]);
    assert_ne!(env.generation(), first);
    fs::write(env.state().join("ca.ready"), &old).unwrap();
    w.expect_line("stale readiness token");
    assert!(w.running(), "waiter took a token of an old generation");
    env.publish_no_health();
    assert_eq!(w.finish(Duration::from_secs(10)), 0, "{:#?}", w.seen);
    let token: serde_json::Value =
        serde_json::from_slice(&fs::read(env.state().join("ca.ready")).unwrap()).unwrap();
    assert_eq!(token["generation"], env.generation());
}

#[test]
fn malformed_token_keeps_the_waiter_waiting_and_says_why() {
    let env = Env::new();
    env.ok(&["invalidate"]);
    let mut w = env.spawn(&["wait", "--no-health", "--timeout", "30"]);
    w.expect_line("no readiness token yet");
    fs::write(env.state().join("ca.ready"), "{\"generation\": \"trunc").unwrap();
    w.expect_line("unparseable");
    assert!(w.running());
    env.publish_no_health();
    assert_eq!(w.finish(Duration::from_secs(10)), 0, "{:#?}", w.seen);
}

#[test]
fn empty_legacy_token_needs_a_health_check() {
    let env = Env::new();
    fs::write(env.state().join("ca.ready"), "").unwrap();
    let out = env.run(&["wait", "--no-health", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(stderr(&out).contains("legacy"), "{}", stderr(&out));
}

/// A writer on "another machine": the state directory is an overlay whose
/// upper directory the test rewrites directly, so the waiter's inotify
/// watch on the merged directory never fires (as with NFS). Files are
/// rewritten in place: a new name in the upper directory would hide behind
/// the overlay's negative dentry, as on NFS without lookupcache=positive,
/// which phoenix-mount sets.
#[test]
fn a_remote_write_without_inotify_is_seen_by_polling() {
    let env = Env::new();
    let base = env.dir.path();
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(base.join(d)).unwrap();
    }
    let upper = base.join("upper");
    // The CA guest published for generation 1 earlier; the host has
    // invalidated since: the waiter starts on a stale token.
    let g1 = Env::new();
    g1.ok(&["invalidate"]);
    g1.publish_no_health();
    fs::copy(g1.state().join("ca.ready"), upper.join("ca.ready")).unwrap();
    g1.ok(&["invalidate"]);
    fs::copy(
        g1.state().join("ca.generation"),
        upper.join("ca.generation"),
    )
    .unwrap();
    // The fresh token, as the CA will write it.
    g1.publish_no_health();
    let fresh = fs::read(g1.state().join("ca.ready")).unwrap();

    let overlay = |args: &[&str]| -> Waiter {
        let script = format!(
            "mount -t overlay overlay -o lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work {b}/merged && exec \"$0\" \"$@\"",
            b = base.display()
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(bin())
            .args(args)
            .args(["--state-dir", &base.join("merged").display().to_string()])
            .env("PHOENIX_CONFIG", base.join("toolkit.json"))
            .stdin(Stdio::null());
        Waiter::start(c)
    };
    let rewrite_in_place = |path: &Path, data: &[u8]| {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    };

    let stale = fs::read(upper.join("ca.ready")).unwrap();

    // Control: a waiter polling once a minute. The remote writer puts the
    // fresh token in place and takes it back a second later, between the
    // waiter's first read and its last one at the deadline: only an inotify
    // wake-up could have seen it, and the waiter times out.
    let mut blind = overlay(&[
        "wait",
        "--no-health",
        "--timeout",
        "3",
        "--interval",
        "60000",
    ]);
    blind.expect_line("stale readiness token");
    rewrite_in_place(&upper.join("ca.ready"), &fresh);
    std::thread::sleep(Duration::from_secs(1));
    rewrite_in_place(&upper.join("ca.ready"), &stale);
    assert_eq!(
        blind.finish(Duration::from_secs(15)),
        124,
        "{:#?}",
        blind.seen
    );

    // With the default interval (250 ms) the same remote write is found.
    let mut w = overlay(&["wait", "--no-health", "--timeout", "30"]);
    w.expect_line("stale readiness token");
    rewrite_in_place(&upper.join("ca.ready"), &fresh);
    assert_eq!(w.finish(Duration::from_secs(10)), 0, "{:#?}", w.seen);
}

#[test]
fn a_late_real_ca_holds_publish_and_waiters_until_health_answers() {
    let mut ca = common::TestCa::init_only();
    let env = Env::new();
    env.ok(&["invalidate"]);
    let url = ca.url();
    let root = ca.root_cert().display().to_string();
    let mut publisher = env.spawn(&[
        "publish",
        "--ca-url",
        &url,
        "--root",
        &root,
        "--timeout",
        "60",
    ]);
    let mut waiter = env.spawn(&["wait", "--ca-url", &url, "--root", &root, "--timeout", "60"]);
    publisher.expect_line("not healthy yet");
    waiter.expect_line("no readiness token yet");
    assert!(publisher.running() && waiter.running());
    assert!(
        !env.state().join("ca.ready").exists(),
        "token published before /health answered"
    );
    ca.launch(None);
    assert_eq!(
        publisher.finish(Duration::from_secs(30)),
        0,
        "{:#?}",
        publisher.seen
    );
    assert_eq!(
        waiter.finish(Duration::from_secs(30)),
        0,
        "{:#?}",
        waiter.seen
    );
    let token: serde_json::Value =
        serde_json::from_slice(&fs::read(env.state().join("ca.ready")).unwrap()).unwrap();
    assert_eq!(
        token["fingerprint"],
        ca.fingerprint(),
        "not the real root's fingerprint"
    );
    assert_eq!(token["ca_url"], url);
    assert_eq!(
        fs::read_to_string(env.state().join("root_ca.fingerprint"))
            .unwrap()
            .trim(),
        ca.fingerprint()
    );
    // A fresh token but a CA that went away: not ready.
    ca.stop();
    let out = env.run(&["wait", "--ca-url", &url, "--root", &root, "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("unhealthy"), "{}", stderr(&out));
    let out = env.run(&["status", "--json", "--ca-url", &url, "--root", &root]);
    assert_eq!(out.status.code(), Some(1));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (st["token_fresh"].as_bool(), st["ready"].as_bool()),
        (Some(true), Some(false))
    );
}

#[test]
fn publish_without_any_fingerprint_source_is_a_config_error() {
    let env = Env::new();
    let out = env.run(&["publish", "--no-health"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no root fingerprint"),
        "{}",
        stderr(&out)
    );
    assert!(!env.state().join("ca.ready").exists());
}

#[test]
fn bad_configuration_exits_2_naming_file_key_and_position() {
    let env = Env::new();
    let cfg = env.dir.path().join("bad.json");
    fs::write(&cfg, "{\n  \"ca\": {\n    \"guest_idd\": 103\n  }\n}\n").unwrap();
    let out = env
        .cmd(&["status"])
        .env("PHOENIX_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&cfg.display().to_string())
            && err.contains("ca.guest_idd")
            && err.contains("line 3"),
        "{err}"
    );

    fs::write(&cfg, "{\"ca\": {\"wait_timeout_secs\": \"long\"}}").unwrap();
    let out = env
        .cmd(&["wait", "--no-health"])
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ca.wait_timeout_secs"),
        "{}",
        stderr(&out)
    );

    let out = env
        .cmd(&["status"])
        .args(["--config", "/nonexistent/toolkit.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/toolkit.json"),
        "{}",
        stderr(&out)
    );

    let out = env.run(&["wait", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_stops_a_wait_promptly() {
    let env = Env::new();
    let mut w = env.spawn_minute_poll_wait();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(w.finish(Duration::from_secs(5)), 143, "{:#?}", w.seen);
}

#[test]
fn a_publish_wakes_a_wait_long_before_its_poll_interval() {
    // The watch is made only after a first look found no token (and the
    // token looked at again before the waiter says what it waits for): a
    // publish after that is seen at once, not at the next poll a minute
    // later.
    let env = Env::new();
    env.ok(&["invalidate"]);
    let mut w = env.spawn_minute_poll_wait();
    env.publish_no_health();
    assert_eq!(w.finish(Duration::from_secs(20)), 0, "{:#?}", w.seen);
    assert!(
        w.seen.iter().any(|l| l.starts_with("CA ready after")),
        "{:#?}",
        w.seen
    );
}

#[test]
fn status_shows_a_fresh_token() {
    let env = Env::new();
    env.ok(&["invalidate"]);
    env.publish_no_health();
    let out = env.run(&["status", "--no-health", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["token"]["generation"], env.generation());
    assert_eq!(st["fingerprint"], FP);
    let out = env.run(&["status", "--no-health"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ready          yes"), "{text}");
}

#[test]
fn sigterm_during_publish_leaves_no_token_and_no_temp_file() {
    let env = Env::new();
    env.ok(&["invalidate"]);
    // Nothing listens there: publish waits for /health.
    let url = format!("https://127.0.0.1:{}", common::free_port());
    let root = env.state().join("phoenix_root_ca.crt");
    fs::write(&root, "not yet").unwrap();
    let mut p = env.spawn(&[
        "publish",
        "--ca-url",
        &url,
        "--fingerprint",
        FP,
        "--timeout",
        "300",
    ]);
    p.expect_line("not healthy yet");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(p.finish(Duration::from_secs(10)), 143, "{:#?}", p.seen);
    let names: Vec<String> = fs::read_dir(env.state())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "ca.ready" || n.starts_with(".phoenix-tmp")),
        "{names:?}"
    );
}

#[test]
fn under_systemd_lines_carry_journal_priorities() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    // stderr is the stream JOURNAL_STREAM names (its device and inode), as
    // under a unit whose output goes to the journal.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let status = env
        .cmd(&["wait", "--no-health", "--timeout", "1"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(124));
    let err = fs::read_to_string(&log).unwrap();
    assert!(
        err.lines().any(|l| l.starts_with("<6>waiting for the CA")),
        "{err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("<3>error: CA not ready")),
        "{err}"
    );
    // Plain on a terminal or in a task log.
    let out = env.run(&["wait", "--no-health", "--timeout", "1"]);
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.starts_with("error: CA not ready")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn health_trusts_only_the_given_root() {
    // The native /health check (no `step` process) pins the connection to
    // the root it is given: the real CA is healthy with its own root and
    // refused with another CA's.
    let a = common::TestCa::start(None);
    let b = common::TestCa::start(None);
    let env = Env::new();
    let status = |url: &str, root: &std::path::Path| {
        let out = env.run(&[
            "status",
            "--json",
            "--ca-url",
            url,
            "--root",
            &root.display().to_string(),
        ]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st
    };
    let good = status(&a.url(), &a.root_cert());
    assert_eq!(good["health"], "ok", "{good}");
    // By host name too (its certificate names localhost): a static
    // phoenix-ca (scripts/test.sh runs this file against one) resolves it
    // with the lookups it configures before the first one.
    let by_name = a.url().replace("127.0.0.1", "localhost");
    let good = status(&by_name, &a.root_cert());
    assert_eq!(good["health"], "ok", "{good}");
    let bad = status(&a.url(), &b.root_cert());
    let why = bad["health"].as_str().unwrap_or_default().to_string();
    assert_ne!(why, "ok", "{bad}");
    assert!(why.to_lowercase().contains("certificate"), "{why}");
}

#[test]
fn a_static_build_resolves_by_files_and_dns_whatever_nsswitch_lists() {
    // The release links phoenix-ca statically (scripts/build-release.sh;
    // scripts/test.sh runs this file against such a build): host names
    // through /etc/hosts and DNS whatever the hosts: line of nsswitch.conf
    // lists, configured before the first lookup (docs/hook.md). A dynamic
    // build follows nsswitch.conf. Here it names only a module no glibc
    // has, in a private mount namespace.
    let ca = common::TestCa::start(None);
    let env = Env::new();
    let nss = env.dir.path().join("nsswitch.conf");
    fs::write(&nss, "hosts: phoenix-no-such-module\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/nsswitch.conf && exec \"$0\" \"$@\"",
        nss.display()
    );
    let by_name = ca.url().replace("127.0.0.1", "localhost");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(bin())
        .args(["status", "--json", "--ca-url", &by_name, "--root"])
        .arg(ca.root_cert())
        .arg("--state-dir")
        .arg(env.state())
        .env("PHOENIX_CONFIG", env.dir.path().join("toolkit.json"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let st: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    let health = st["health"].as_str().unwrap_or_default();
    if common::is_static(&bin()) {
        assert_eq!(health, "ok", "static: {st}");
    } else {
        assert!(
            health.contains("cannot resolve 'localhost'"),
            "dynamic: {st}"
        );
    }
}

#[test]
fn bootstrap_trusts_the_root_the_token_names_once() {
    // `wait --bootstrap` without step: the root from the state directory,
    // checked against the token's fingerprint, into the trust directory,
    // the bundle rebuilt; a second boot writes and runs nothing.
    use std::os::unix::fs::PermissionsExt;
    let ca = common::TestCa::init_only();
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("ca-certificates");
    let log = dir.path().join("update.log");
    let update = dir.path().join("update-ca-certificates");
    common::write_executable(
        &update,
        &format!("#!/bin/sh\necho run >> '{}'\n", log.display()),
    );
    let update = update.display().to_string();
    let bootstrap = |fp: &str| {
        phoenix_hooks::ca::bootstrap_into(
            &ca.root_cert(),
            fp,
            &trust,
            &update,
            Duration::from_secs(10),
        )
    };
    bootstrap(&ca.fingerprint()).unwrap();
    let installed = trust.join(phoenix_hooks::ca::TRUST_FILE);
    let meta = fs::metadata(&installed).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(
        phoenix_hooks::ca::fingerprint_of(&installed).unwrap(),
        ca.fingerprint()
    );
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\n");
    bootstrap(&ca.fingerprint().to_uppercase()).unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\n", "ran again");
    // A root that is not the one the token names is not trusted.
    let e = bootstrap(&"ab".repeat(32)).unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\n");
}

#[test]
fn a_wait_tells_systemd_what_it_waits_for() {
    use std::os::unix::net::UnixDatagram;
    let env = Env::new();
    env.ok(&["invalidate"]);
    // The socket systemd hands a unit with NotifyAccess=main.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let out = env
        .cmd(&["wait", "--no-health", "--timeout", "1"])
        .env("NOTIFY_SOCKET", &sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf).expect("no STATUS= line");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        line.starts_with("STATUS=waiting for the CA: no readiness token yet"),
        "{line}"
    );
}
