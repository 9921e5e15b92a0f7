//! One run at a time per job: an exclusive `flock` on
//! `<lock_dir>/<job>.lock` (local `/run/lock/phoenix` by default, never on
//! NFS), held by a guard that releases it when dropped.
//!
//! The holder writes its pid and start time into the lock file so that a
//! second run can say who it is waiting for. The kernel releases a `flock`
//! when its holder dies, so a crashed run never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::exit::{err, Kind};
use crate::{fsutil, signal};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Leave the file (removing it would race with a waiter that has it
        // open); clear the holder so a reader does not see a dead pid.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Who holds a lock, as its holder wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id of the holder.
    pub pid: Option<u32>,
    /// When it took the lock (RFC 3339).
    pub since: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pid, &self.since) {
            (Some(pid), Some(since)) => write!(f, "pid {pid}, since {since}"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            _ => write!(f, "holder unknown"),
        }
    }
}

/// Read the holder recorded in a lock file.
pub fn holder(path: &Path) -> Holder {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    Holder {
        pid: field("pid=").and_then(|p| p.parse().ok()),
        since: field("since="),
    }
}

/// How long past its wait a run keeps trying while the holder's record
/// is empty (see [`lock_at`]).
const UNKNOWN_GRACE: Duration = Duration::from_secs(1);

/// Take the exclusive lock of `job` in `dir`, waiting at most `wait`.
/// Fails with [`Kind::TempFail`] (exit 75) naming the holder when the wait
/// runs out. The directory is created (0755) if missing.
pub fn lock_at(dir: &Path, job: &str, wait: Duration) -> Result<LockGuard> {
    fsutil::ensure_dir(dir, 0o755)?;
    let path = dir.join(format!("{job}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening lock file '{}'", path.display()))?;
    let deadline = Instant::now() + wait;
    let mut announced: Option<Instant> = None;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking '{}'", path.display()))
            }
        }
        signal::check()?;
        // An empty record is a holder between its flock and writing its
        // pid, or one releasing: transient. Try again briefly rather than
        // report "holder unknown" (or refuse a lock about to be free).
        let now = Instant::now();
        if now >= deadline && (now >= deadline + UNKNOWN_GRACE || holder(&path).pid.is_some()) {
            return Err(err(
                Kind::TempFail,
                format!(
                    "{job} is already running ({}); lock '{}'",
                    holder(&path),
                    path.display()
                ),
            ));
        }
        // A line when the wait begins, then one every 10 s with the time left.
        if announced.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            log::info!(
                "waiting for {job} to finish ({}); {}s left",
                holder(&path),
                deadline.saturating_duration_since(Instant::now()).as_secs()
            );
            announced = Some(Instant::now());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    let record = format!("pid={}\nsince={since}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(record.as_bytes()))
        .with_context(|| format!("recording holder in '{}'", path.display()))?;
    log::debug!("took lock '{}'", path.display());
    Ok(LockGuard { file, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    #[test]
    fn second_holder_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_at(dir.path(), "renew", Duration::ZERO).unwrap();
        let h = holder(first.path());
        assert_eq!(h.pid, Some(std::process::id()));
        assert!(h.since.is_some());
        let e = lock_at(dir.path(), "renew", Duration::from_millis(50)).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        lock_at(dir.path(), "renew", Duration::ZERO).unwrap();
    }

    #[test]
    fn a_holder_without_a_record_is_waited_for_briefly_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("renew.lock");
        let raw = File::create(&path).unwrap();
        raw.lock().unwrap();
        let t0 = Instant::now();
        let e = lock_at(dir.path(), "renew", Duration::ZERO).unwrap_err();
        assert!(t0.elapsed() >= UNKNOWN_GRACE);
        assert!(e.to_string().contains("holder unknown"), "{e}");
    }

    #[test]
    fn other_jobs_do_not_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let _a = lock_at(dir.path(), "renew", Duration::ZERO).unwrap();
        let _b = lock_at(dir.path(), "swarm", Duration::ZERO).unwrap();
    }

    #[test]
    fn missing_lock_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("run/lock/phoenix");
        let g = lock_at(&nested, "renew", Duration::ZERO).unwrap();
        assert!(g.path().starts_with(&nested));
    }
}
