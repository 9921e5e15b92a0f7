//! Issue 13, the lock directory and the CA state's least privilege.
//!
//! - Lock directory attacks against the real `phoenix-renew run` and
//!   `phoenix-swarm ensure`: a symbolic link at `renew.lock`/`swarm.lock`
//!   pointing at a root-only file, in a directory of root, of another
//!   user, group-writable, world-writable, itself a link; a FIFO. Each run
//!   exits 2 naming the directory (owner, mode) or the file, and the link's
//!   target keeps its content, mode and owner. Then an attacker process
//!   running as `nobody` races the runs to create the directory and plant
//!   the links while root creates it: root never writes through a link.
//! - The CA's public directory: `phoenix-ca publish` writes `public/`
//!   (token, generation, root certificate, fingerprint, no secret);
//!   `wait` and `status` pointed at it work (with the real step-ca's
//!   health check too); `invalidate` makes its token stale at once.
//! - `phoenix-hook` pre-start of a dependent container warns, naming the
//!   guest, the mount (mpN) and the files, when a bind mount exposes the
//!   CA's secrets; a mount of `public/` does not.

mod common;
mod hook_support;
mod reliability_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hook_support::Layout;
use reliability_support::{figures, step_root};
use serde_json::json;

const NOBODY: u32 = 65534;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A world for the lock attacks: toolkit.json, Phoenix files (one swarm
/// manager, an empty manifest), a CA root, a lock directory that does not
/// exist yet, and a root-only file an attacker wants truncated.
struct World {
    dir: tempfile::TempDir,
}

/// Content of the file the links point at.
const PRECIOUS: &str = "root's data: must never be truncated\n";

impl World {
    fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
        };
        // The attacker (nobody) must reach the lock directory's parent.
        chmod(w.dir.path(), 0o755);
        for d in ["etc", "ca", "pve", "locks"] {
            std::fs::create_dir_all(w.p(d)).unwrap();
        }
        // /run/lock: anyone may create a directory in it.
        chmod(&w.p("locks"), 0o1777);
        step_root(
            "Lock Test Root",
            &w.p("ca/root_ca.crt"),
            &w.p("root.key"),
            &w.p("steppath"),
        );
        w.write(
            "toolkit.json",
            &json!({"phoenix_etc": w.p("etc"), "lock_dir": w.lock_dir(),
                "state_dir": w.p("state"),
                "ca": {"url": "https://127.0.0.1:1", "state_dir": w.p("ca"),
                       "root_cert": "root_ca.crt"},
                "swarm": {"agent_timeout_secs": 1, "state_timeout_secs": 1,
                          "command_timeout_secs": 2}}),
        );
        w.write(
            "etc/phoenix_vm_configs.json",
            &json!({"vms": [{"vmid": 1001, "name": "mgr", "swarm_role": "manager",
                "network_config": {"ip": "10.0.0.111/24"}}]}),
        );
        w.write("etc/phoenix_lxc_configs.json", &json!({"lxc_configs": {}}));
        w.write("etc/certificate-manifest.json", &json!([]));
        std::fs::write(w.target(), PRECIOUS).unwrap();
        chmod(&w.target(), 0o600);
        w
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn lock_dir(&self) -> PathBuf {
        self.p("locks/phoenix")
    }

    fn target(&self) -> PathBuf {
        self.p("precious")
    }

    fn write(&self, rel: &str, v: &serde_json::Value) {
        std::fs::write(self.p(rel), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    fn command(&self, tool: Tool) -> Command {
        let (bin, arg) = match tool {
            Tool::Renew => (env!("CARGO_BIN_EXE_phoenix-renew"), "run"),
            Tool::Swarm => (env!("CARGO_BIN_EXE_phoenix-swarm"), "ensure"),
        };
        let mut c = Command::new(bin);
        c.arg(arg)
            .env("PHOENIX_CONFIG", self.p("toolkit.json"))
            .env("PATH", common::path_with_fakes())
            .env("PHOENIX_FAKE_PVE", self.p("pve"))
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, tool: Tool) -> Output {
        self.command(tool).output().unwrap()
    }

    /// The target as it must stay: content, mode, owner.
    fn target_state(&self) -> (String, u32, u32) {
        let t = self.target();
        let m = std::fs::metadata(&t).unwrap();
        (
            std::fs::read_to_string(&t).unwrap(),
            m.mode() & 0o7777,
            m.uid(),
        )
    }

    /// Remove the lock directory: renamed aside first, which a racing
    /// attacker cannot add to (it writes by the lock directory's name; a
    /// removal in place lost to it whenever it planted a link between the
    /// emptying and the rmdir), then removed under that name.
    fn reset(&self) {
        let aside = self.p("locks/phoenix.removed");
        match std::fs::rename(self.lock_dir(), &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("moving '{}' aside: {e}", self.lock_dir().display()),
        }
        let removed = match std::fs::symlink_metadata(&aside) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&aside),
            _ => std::fs::remove_file(&aside),
        };
        removed.unwrap_or_else(|e| panic!("removing '{}': {e}", aside.display()));
    }
}

#[derive(Debug, Clone, Copy)]
enum Tool {
    Renew,
    Swarm,
}

impl Tool {
    fn job(self) -> &'static str {
        match self {
            Tool::Renew => "renew",
            Tool::Swarm => "swarm",
        }
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn lchown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

/// One prepared attack: set the lock directory up, then the words the
/// refusal must contain.
struct Attack {
    name: &'static str,
    needs_root: bool,
    prepare: fn(&World, &str) -> Vec<String>,
}

fn attacks() -> Vec<Attack> {
    fn link_in(w: &World, dir: &Path, job: &str) {
        std::os::unix::fs::symlink(w.target(), dir.join(format!("{job}.lock"))).unwrap();
    }
    vec![
        Attack {
            name: "symlink at the lock file, root's directory",
            needs_root: false,
            prepare: |w, job| {
                std::fs::create_dir(w.lock_dir()).unwrap();
                link_in(w, &w.lock_dir(), job);
                vec![
                    format!(
                        "lock file '{}' is a symbolic link",
                        w.lock_dir().join(format!("{job}.lock")).display()
                    ),
                    "not followed".into(),
                ]
            },
        },
        Attack {
            name: "directory pre-created by another user, symlink inside",
            needs_root: true,
            prepare: |w, job| {
                std::fs::create_dir(w.lock_dir()).unwrap();
                chmod(&w.lock_dir(), 0o755);
                link_in(w, &w.lock_dir(), job);
                lchown(&w.lock_dir().join(format!("{job}.lock")), NOBODY);
                lchown(&w.lock_dir(), NOBODY);
                vec![
                    format!(
                        "lock directory '{}' is owned by uid {NOBODY}",
                        w.lock_dir().display()
                    ),
                    "with mode 0755".into(),
                ]
            },
        },
        Attack {
            name: "group-writable directory, symlink inside",
            needs_root: false,
            prepare: |w, job| {
                std::fs::create_dir(w.lock_dir()).unwrap();
                chmod(&w.lock_dir(), 0o775);
                link_in(w, &w.lock_dir(), job);
                vec![
                    format!("lock directory '{}'", w.lock_dir().display()),
                    "with mode 0775".into(),
                ]
            },
        },
        Attack {
            name: "world-writable sticky directory, symlink inside",
            needs_root: false,
            prepare: |w, job| {
                std::fs::create_dir(w.lock_dir()).unwrap();
                chmod(&w.lock_dir(), 0o1777);
                link_in(w, &w.lock_dir(), job);
                vec![
                    format!("lock directory '{}'", w.lock_dir().display()),
                    "with mode 1777".into(),
                ]
            },
        },
        Attack {
            name: "lock directory a symlink to another user's directory",
            needs_root: true,
            prepare: |w, job| {
                let evil = w.p("evil");
                if !evil.exists() {
                    std::fs::create_dir(&evil).unwrap();
                }
                let _ = std::fs::remove_file(evil.join(format!("{job}.lock")));
                link_in(w, &evil, job);
                lchown(&evil, NOBODY);
                std::os::unix::fs::symlink(&evil, w.lock_dir()).unwrap();
                vec![
                    format!(
                        "lock directory '{}' is a symbolic link",
                        w.lock_dir().display()
                    ),
                    "not followed".into(),
                ]
            },
        },
        Attack {
            name: "FIFO at the lock file",
            needs_root: false,
            prepare: |w, job| {
                std::fs::create_dir(w.lock_dir()).unwrap();
                nix::unistd::mkfifo(
                    &w.lock_dir().join(format!("{job}.lock")),
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )
                .unwrap();
                vec![
                    format!(
                        "lock file '{}' is a FIFO",
                        w.lock_dir().join(format!("{job}.lock")).display()
                    ),
                    "not a regular file".into(),
                ]
            },
        },
    ]
}

#[test]
fn lock_directory_attacks_are_refused_and_never_written_through() {
    let w = World::new();
    let before = w.target_state();
    let mut violations = Vec::new();
    let mut tried = 0;
    for attack in attacks() {
        if attack.needs_root && !is_root() {
            eprintln!("skipped (needs root): {}", attack.name);
            continue;
        }
        for tool in [Tool::Renew, Tool::Swarm] {
            w.reset();
            let words = (attack.prepare)(&w, tool.job());
            tried += 1;
            let out = w.run(tool);
            let said = stderr(&out);
            let case = format!("{tool:?}, {}", attack.name);
            if out.status.code() != Some(2) {
                violations.push(format!("{case}: exit {:?}: {said}", out.status.code()));
            }
            for word in &words {
                if !said.contains(word.as_str()) {
                    violations.push(format!("{case}: message lacks {word:?}: {said}"));
                }
            }
            if w.target_state() != before {
                violations.push(format!("{case}: target changed: {:?}", w.target_state()));
            }
        }
    }
    // The control: no attack, the directory is made root's 0755 and the
    // runs get past the lock (no refusal).
    for tool in [Tool::Renew, Tool::Swarm] {
        w.reset();
        let out = w.run(tool);
        let said = stderr(&out);
        if said.contains("refused") {
            violations.push(format!("{tool:?} without an attack refused: {said}"));
        }
        let m = std::fs::symlink_metadata(w.lock_dir()).unwrap();
        if !m.is_dir() || m.mode() & 0o7777 != 0o755 {
            violations.push(format!("{tool:?} made the lock dir {:o}", m.mode()));
        }
        let lock = std::fs::symlink_metadata(w.lock_dir().join(format!("{}.lock", tool.job())));
        if !lock.is_ok_and(|m| m.is_file()) {
            violations.push(format!("{tool:?} left no regular lock file"));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    if is_root() {
        figures(&[
            (
                "lock-attacks",
                "lock directory attacks on `phoenix-renew run` and `phoenix-swarm ensure`: a symbolic link at the lock file (in root's directory, in one of another user, group-writable, world-writable), the directory itself a link, a FIFO",
                tried.to_string(),
            ),
            (
                "lock-attack-violations",
                "attacks after which the link's target changed (content, mode, owner), the run did not exit 2, or the message did not name the directory (owner, mode) or the file",
                violations.len().to_string(),
            ),
        ]);
    }
}

/// An attacker running as `nobody`: creates the lock directory and plants
/// links at both lock files as fast as it can, until killed.
const ATTACKER: &str = r#"
import os, sys
d, target = sys.argv[1], sys.argv[2]
while True:
    try:
        os.mkdir(d, 0o755)
    except OSError:
        pass
    for job in ("renew", "swarm"):
        try:
            os.symlink(target, os.path.join(d, job + ".lock"))
        except OSError:
            pass
"#;

#[test]
fn a_racing_attacker_never_gets_root_to_write_through_a_link() {
    if !is_root() {
        eprintln!("skipped: the attacker runs as nobody, which needs root");
        return;
    }
    let w = World::new();
    let before = w.target_state();
    let mut attacker = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ])
        .args(["--clear-groups", "/usr/bin/python3", "-c", ATTACKER])
        .arg(w.lock_dir())
        .arg(w.target())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let runs = reliability_support::size("PHOENIX_LOCK_RACE_RUNS", 40);
    let (mut refused, mut passed) = (0, 0);
    let mut violations = Vec::new();
    for i in 0..runs {
        // Root removes the attacker's directory; who creates it next is
        // the race.
        w.reset();
        let tool = if i % 2 == 0 { Tool::Renew } else { Tool::Swarm };
        let out = w.run(tool);
        let said = stderr(&out);
        let lock_words = said.contains("refused");
        match out.status.code() {
            Some(2) if lock_words => refused += 1,
            _ if lock_words => violations.push(format!("run {i}: {tool:?}: {said}")),
            _ => passed += 1,
        }
        if w.target_state() != before {
            violations.push(format!("run {i}: target changed: {:?}", w.target_state()));
        }
    }
    // The attack was real: the attacker still ran, and won some races.
    assert!(
        attacker.try_wait().unwrap().is_none(),
        "the attacker died early"
    );
    assert!(
        refused > 0,
        "the attacker never created the directory first"
    );
    let _ = attacker.kill();
    let _ = attacker.wait();
    w.reset();
    eprintln!("{runs} runs against a racing attacker: {refused} refused, {passed} got the lock");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    if reliability_support::default_sizes("PHOENIX_LOCK_RACE_RUNS") {
        figures(&[
            (
                "lock-race-runs",
                "runs of `phoenix-renew run`/`phoenix-swarm ensure` while an attacker process (uid nobody) races to create the lock directory and plant links at the lock files",
                runs.to_string(),
            ),
            (
                "lock-race-violations",
                "runs after which the link's target changed, or a refusal that was not exit 2",
                violations.len().to_string(),
            ),
        ]);
    }
}

// ---------------------------------------------------------------------------
// The CA's public directory
// ---------------------------------------------------------------------------

/// A CA state directory with secrets, a root certificate and toolkit.json.
struct Ca {
    dir: tempfile::TempDir,
}

impl Ca {
    fn new(url: &str, root: Option<&Path>) -> Ca {
        let ca = Ca {
            dir: tempfile::tempdir().unwrap(),
        };
        let state = ca.state();
        std::fs::create_dir_all(state.join("secrets")).unwrap();
        std::fs::write(state.join("provisioner_password.txt"), "s3cret\n").unwrap();
        std::fs::write(state.join("secrets/root_ca_key"), "KEY\n").unwrap();
        match root {
            Some(r) => {
                std::fs::copy(r, state.join("phoenix_root_ca.crt")).unwrap();
            }
            None => step_root(
                "Public Test Root",
                &state.join("phoenix_root_ca.crt"),
                &ca.dir.path().join("root.key"),
                &ca.dir.path().join("steppath"),
            ),
        }
        std::fs::write(
            ca.dir.path().join("toolkit.json"),
            json!({"lock_dir": ca.dir.path().join("lock"), "state_dir": ca.dir.path().join("st"),
                   "ca": {"url": url, "state_dir": state, "guest_state_dir": state,
                          "health_timeout_secs": 5}})
            .to_string(),
        )
        .unwrap();
        ca
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("ssl")
    }

    fn public(&self) -> PathBuf {
        self.state().join("public")
    }

    fn cmd(&self, args: &[&str], state: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phoenix-ca"));
        c.args(args)
            .arg("--state-dir")
            .arg(state)
            .env("PHOENIX_CONFIG", self.dir.path().join("toolkit.json"))
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], state: &Path) -> Output {
        self.cmd(args, state).output().unwrap()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn publish_writes_public_and_a_waiter_on_it_sees_fresh_then_stale() {
    let ca = Ca::new("https://127.0.0.1:1", None);
    let (state, public) = (ca.state(), ca.public());
    let out = ca.run(&["invalidate"], &state);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!public.exists(), "invalidate made public/ (the CA guest's)");

    // A waiter on public/ before anything is published: it waits.
    let mut waiter = ca
        .cmd(&["wait", "--no-health", "--timeout", "30"], &public)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Under step-ca.service's umask, say 077: public/ is still 0755.
    let publish = ca.cmd(&["publish", "--no-health"], &state);
    let out = Command::new("sh")
        .args(["-c", "umask 077 && exec \"$@\"", "sh"])
        .arg(publish.get_program())
        .args(publish.get_args())
        .envs(publish.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&public).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "public/ is {mode:o}");
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = waiter.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "waiter on public/ still waiting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "waiter on public/ exited {st}");

    // Exactly the public part, each a regular file 0644, nothing secret.
    assert_eq!(
        names_in(&public),
        [
            "ca.generation",
            "ca.ready",
            "phoenix_root_ca.crt",
            "root_ca.fingerprint"
        ]
    );
    for n in names_in(&public) {
        let m = std::fs::symlink_metadata(public.join(&n)).unwrap();
        assert!(
            m.is_file() && m.mode() & 0o777 == 0o644,
            "{n}: {:o}",
            m.mode()
        );
    }
    assert_eq!(
        std::fs::read(public.join("phoenix_root_ca.crt")).unwrap(),
        std::fs::read(state.join("phoenix_root_ca.crt")).unwrap()
    );
    for n in ["ca.ready", "ca.generation", "root_ca.fingerprint"] {
        assert_eq!(
            std::fs::read(public.join(n)).unwrap(),
            std::fs::read(state.join(n)).unwrap(),
            "{n} differs from the state directory's"
        );
    }
    let fp = phoenix_hooks::ca::fingerprint_of(&state.join("phoenix_root_ca.crt")).unwrap();
    let token: serde_json::Value =
        serde_json::from_slice(&std::fs::read(public.join("ca.ready")).unwrap()).unwrap();
    assert_eq!(token["fingerprint"], fp);

    // status on public/: fresh, with the fingerprint.
    let out = ca.run(&["status", "--json", "--no-health"], &public);
    assert!(out.status.success(), "{}", stderr(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["token_fresh"], true);
    assert_eq!(st["fingerprint"], fp);

    // The host's pre-start (invalidate): the public token is stale at once.
    let out = ca.run(&["invalidate"], &state);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!public.join("ca.ready").exists());
    assert_eq!(
        std::fs::read(public.join("ca.generation")).unwrap(),
        std::fs::read(state.join("ca.generation")).unwrap()
    );
    let out = ca.run(&["wait", "--no-health", "--timeout", "1"], &public);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no readiness token yet"),
        "{}",
        stderr(&out)
    );
    // An old token copied back (a stale cache, a restored backup) is stale.
    std::fs::write(public.join("ca.ready"), token.to_string()).unwrap();
    let out = ca.run(&["wait", "--no-health", "--timeout", "1"], &public);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale"), "{}", stderr(&out));

    // The next publish (the CA up again) makes it fresh again.
    let out = ca.run(&["publish", "--no-health"], &state);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ca.run(&["wait", "--no-health", "--timeout", "5"], &public);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_root_that_does_not_match_the_fingerprint_is_not_copied() {
    let ca = Ca::new("https://127.0.0.1:1", None);
    let state = ca.state();
    let other = "ab".repeat(32);
    let out = ca.run(&["publish", "--no-health", "--fingerprint", &other], &state);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not copied to public/"),
        "{}",
        stderr(&out)
    );
    assert!(!ca.public().join("phoenix_root_ca.crt").exists());
    assert_eq!(
        std::fs::read_to_string(ca.public().join("root_ca.fingerprint")).unwrap(),
        format!("{other}\n")
    );
}

#[test]
fn a_symlinked_public_dir_fails_publish_and_invalidate_and_is_not_followed() {
    let ca = Ca::new("https://127.0.0.1:1", None);
    let state = ca.state();
    let elsewhere = ca.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, ca.public()).unwrap();
    for args in [&["publish", "--no-health"][..], &["invalidate"][..]] {
        let out = ca.run(args, &state);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is a symbolic link: not followed"),
            "{}",
            stderr(&out)
        );
        assert!(
            names_in(&elsewhere).is_empty(),
            "{args:?} wrote through the link"
        );
    }
    // publish writes public/ first: nothing says "ready".
    assert!(!state.join("ca.ready").exists());
}

#[test]
fn a_waiter_on_public_passes_the_real_ca_health_check() {
    let test_ca = common::TestCa::start(None);
    let ca = Ca::new(&test_ca.url(), Some(&test_ca.root_cert()));
    let (state, public) = (ca.state(), ca.public());
    assert!(ca.run(&["invalidate"], &state).status.success());
    let out = ca.run(&["publish", "--timeout", "30"], &state);
    assert!(out.status.success(), "{}", stderr(&out));
    // The health check pins public/'s copy of the root.
    let out = ca.run(&["wait", "--timeout", "30"], &public);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ca.run(&["status"], &public);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&test_ca.fingerprint()), "{text}");
    assert!(text.contains("health         ok"), "{text}");
}

// ---------------------------------------------------------------------------
// The hook's warning
// ---------------------------------------------------------------------------

#[test]
fn hook_warns_when_a_dependent_mounts_the_ca_secrets_and_not_for_public() {
    if !is_root() {
        eprintln!("skipped: the mounted-storage namespace needs root");
        return;
    }
    let l = Layout::new(json!({}), json!({}));
    std::fs::create_dir_all(l.logs()).unwrap();
    std::fs::create_dir_all(l.state.join("secrets")).unwrap();
    std::fs::create_dir_all(l.state.join("public")).unwrap();
    std::fs::write(l.state.join("provisioner_password.txt"), "pw").unwrap();
    std::fs::write(l.state.join("secrets/root_ca_key"), "k").unwrap();

    // Container 101 mounts its logs (mp0) and the whole state dir (mp1).
    let out = l.run_mounted("101", "pre-start");
    let said = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not a refusal: {said}"
    );
    let warning = said
        .lines()
        .find(|l| l.contains("exposes CA secrets"))
        .unwrap_or_else(|| panic!("no warning: {said}"));
    for word in [
        "container 101 (Nginx-Phoenix)",
        "bind mount mp1",
        &format!("'{}' -> '/etc/step-ca/ssl'", l.state.display()),
        "'/etc/step-ca/ssl/provisioner_password.txt'",
        "'/etc/step-ca/ssl/secrets'",
        &format!("'{}'", l.state.join("public").display()),
    ] {
        assert!(warning.contains(word), "warning lacks {word:?}: {warning}");
    }
    assert!(!warning.contains("mp0"), "{warning}");
    assert!(
        !warning.contains("ca_password.txt'"),
        "absent file listed: {warning}"
    );

    // The CA itself mounts its state: no warning.
    let out = l.run_mounted("103", "pre-start");
    assert!(
        !stderr(&out).contains("exposes CA secrets"),
        "{}",
        stderr(&out)
    );

    // Moved to public/: no warning, the start goes on.
    let path = l.etc.join("phoenix_lxc_configs.json");
    let mut lxc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    lxc["lxc_configs"]["101"]["mount_points"][1]["host_path"] = json!(l.state.join("public"));
    std::fs::write(&path, lxc.to_string()).unwrap();
    let out = l.run_mounted("101", "pre-start");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("exposes CA secrets"),
        "{}",
        stderr(&out)
    );

    // The CA stops: its token is withdrawn from the state dir and public/.
    let fp = "0123456789abcdef".repeat(4);
    let out = l
        .phoenix_ca(&["publish", "--no-health", "--fingerprint", &fp])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(l.state.join("public/ca.ready").exists());
    let out = l.run_unmounted("103", "post-stop");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!l.state.join("ca.ready").exists());
    assert!(!l.state.join("public/ca.ready").exists());
}
