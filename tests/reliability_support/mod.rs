//! Support of the reliability suite (tests/reliability_*.rs): the figures
//! each test checks against RELIABILITY.md (or writes there with
//! `PHOENIX_UPDATE_RELIABILITY=1`), a small seeded random source, the
//! cert/key pair invariant, and reaping what a killed run left running.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::project;

/// RELIABILITY.md at the project root.
pub fn report_path() -> PathBuf {
    project().join("RELIABILITY.md")
}

/// Check (or, with `PHOENIX_UPDATE_RELIABILITY=1`, write) the rows
/// `| id | what | value |` of RELIABILITY.md's table. Every figure is also
/// written to `target/reliability/<id>` so a run's numbers can be read.
pub fn figures(rows: &[(&str, &str, String)]) {
    let out = project().join("target/reliability");
    std::fs::create_dir_all(&out).unwrap();
    for (id, _, value) in rows {
        std::fs::write(out.join(id), format!("{value}\n")).unwrap();
    }
    // Tests of one binary run in parallel: one writer at a time.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(".lock"))
        .unwrap();
    File::lock(&lock).unwrap();
    let path = report_path();
    let text = std::fs::read_to_string(&path).expect("RELIABILITY.md");
    let update = std::env::var_os("PHOENIX_UPDATE_RELIABILITY").is_some_and(|v| v == "1");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut wrong = Vec::new();
    for (id, what, value) in rows {
        let want = format!("| {id} | {what} | {value} |");
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("| {id} |")));
        match at {
            Some(i) if lines[i] == want => {}
            Some(i) if update => lines[i] = want,
            None if update => {
                // Before the line that ends the table.
                let end = lines
                    .iter()
                    .position(|l| l.starts_with("<!-- end of figures"))
                    .expect("RELIABILITY.md lacks its end-of-figures marker");
                lines.insert(end, want);
            }
            Some(i) => wrong.push(format!("have: {}\nwant: {want}", lines[i])),
            None => wrong.push(format!("missing: {want}")),
        }
    }
    if update {
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
    assert!(
        wrong.is_empty(),
        "RELIABILITY.md does not say what this run measured (regenerate with \
         PHOENIX_UPDATE_RELIABILITY=1 cargo test --test reliability_...):\n{}",
        wrong.join("\n")
    );
}

/// True when the figure checks apply: a run with non-default sizes
/// (e.g. `PHOENIX_CRASH_RUNS=5000`) prints its figures instead.
pub fn default_sizes(var: &str) -> bool {
    std::env::var_os(var).is_none()
}

/// A run size: `var` from the environment, else `default`.
pub fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough to pick kill instants; the seed is printed so a
/// failing sequence can be replayed with `PHOENIX_CRASH_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("PHOENIX_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("PHOENIX_CRASH_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a cert/key pair on disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pair {
    /// Both files parse and the key matches the certificate.
    Matching { cert: Vec<u8>, key: Vec<u8> },
    /// Both parse but the key is not the certificate's.
    Mismatched { cert: Vec<u8>, key: Vec<u8> },
    /// Something is missing or does not parse: the reason.
    Broken(String),
}

/// Read and judge the pair at `crt`/`key` with the library's own parsers.
pub fn pair(crt: &Path, key: &Path, root: &phoenix_hooks::cert::Root) -> Pair {
    let (Ok(c), Ok(k)) = (std::fs::read(crt), std::fs::read(key)) else {
        return Pair::Broken("a file is missing".into());
    };
    let info = match phoenix_hooks::cert::parse_bundle(&c, root) {
        Ok(i) => i,
        Err(e) => return Pair::Broken(format!("certificate: {e:#}")),
    };
    if !info.chains_to_root {
        return Pair::Broken("certificate does not chain to the root".into());
    }
    match phoenix_hooks::cert::key_public_point(&k) {
        Ok(p) if p == info.public_key => Pair::Matching { cert: c, key: k },
        Ok(_) => Pair::Mismatched { cert: c, key: k },
        Err(e) => Pair::Broken(format!("key: {e:#}")),
    }
}

/// Make this process the reaper of its orphaned descendants, so that what
/// a killed run left running (step, a fake qm) can be found and ended,
/// as systemd ends a unit's whole cgroup.
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// SIGKILL and reap every child of this process except `keep`; repeat
/// until none is left (an orphan's own children come to us in turn).
pub fn reap_orphans(keep: &[u32]) -> usize {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    let me = std::process::id();
    let mut reaped = 0;
    loop {
        let mut kids = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{me}/task"))
            .unwrap()
            .flatten()
        {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        kids.retain(|p| !keep.contains(p));
        if kids.is_empty() {
            return reaped;
        }
        for pid in kids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid as i32), None);
            reaped += 1;
        }
    }
}

/// Hidden temp files (`.phoenix-tmp.*`) in `dir`.
pub fn temps_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(phoenix_hooks::fsutil::TEMP_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP server on 127.0.0.1 that accepts connections and never answers:
/// a CA wedged (or a firewall that black-holes) after the handshake.
pub struct Silent {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Silent {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A self-signed root certificate made by the real `step` (its key
/// unencrypted), as the reliability suites' stand-in for the CA's root.
pub fn step_root(name: &str, crt: &Path, key: &Path, steppath: &Path) {
    let out = std::process::Command::new("step")
        .args(["certificate", "create", name])
        .args([crt, key])
        .args(["--profile", "root-ca", "--no-password", "--insecure"])
        .env("STEPPATH", steppath)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
