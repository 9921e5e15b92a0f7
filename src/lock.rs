//! One run at a time per job: an exclusive `flock` on
//! `<lock_dir>/<job>.lock` (local `/run/lock/phoenix` by default, never on
//! NFS), held by a guard that releases it when dropped.
//!
//! The holder writes its pid and start time into the lock file so that a
//! second run can say who it is waiting for. The kernel releases a `flock`
//! when its holder dies, so a crashed run never leaves a stale lock.
//!
//! The directory is the package's (`/usr/lib/tmpfiles.d/phoenix-hooks.conf`
//! creates it root-owned 0755 at boot). `/run/lock` is writable by every
//! user, so before root writes in it the directory is opened with
//! `O_NOFOLLOW | O_DIRECTORY` and judged on that descriptor: it must be
//! owned by root (or by the user running this) and writable by nobody
//! else, or another user could have put a symbolic link at `renew.lock`
//! for root to truncate. The lock file is then opened *in* that
//! descriptor (`openat`, `O_NOFOLLOW`) and must be a regular file. A
//! refusal is a configuration error (exit 2): it needs a person, and
//! retrying cannot fix it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;

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

/// Largest holder record read; a record is two short lines.
const RECORD_LIMIT: usize = 4096;

/// Read the holder recorded in a lock file (not following a symbolic
/// link, at most a few KiB; anything unreadable is "holder unknown").
pub fn holder(path: &Path) -> Holder {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
        .map_or_else(|| parse_holder(""), |f| holder_in(&f))
}

/// The holder recorded in the open lock file `file`.
fn holder_in(file: &File) -> Holder {
    let mut buf = vec![0u8; RECORD_LIMIT];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    parse_holder(&String::from_utf8_lossy(&buf[..n]))
}

fn parse_holder(text: &str) -> Holder {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    Holder {
        pid: field("pid=").and_then(|p| p.parse().ok()),
        since: field("since="),
    }
}

/// "uid N (name)" for messages.
fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Open the lock directory `dir` (creating it 0755 if missing) without
/// following a symbolic link, and refuse it unless it is a directory owned
/// by root or by this process's user and writable by no one else.
pub fn open_dir(dir: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
    };
    let opened = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fsutil::ensure_dir(dir, 0o755)?;
            log::info!("created lock directory '{}'", dir.display());
            open()
        }
        r => r,
    };
    let file = opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            let what = match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => "a symbolic link".to_string(),
                Ok(m) => format!("not a directory ({})", crate::guestdir::kind_name(m.mode())),
                Err(e) => format!("unusable: {e}"),
            };
            err(
                Kind::Config,
                format!(
                    "lock directory '{}' is {what}: refused, not followed (it must be a \
                     directory owned by root; remove it and run \
                     `systemd-tmpfiles --create phoenix-hooks.conf`)",
                    dir.display()
                ),
            )
        }
        _ => anyhow::Error::new(e).context(format!("opening lock directory '{}'", dir.display())),
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("fstat lock directory '{}'", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if (meta.uid() != 0 && meta.uid() != euid) || mode & 0o022 != 0 {
        let allowed = if euid == 0 {
            "root".to_string()
        } else {
            format!("root or {}", describe_uid(euid))
        };
        return Err(err(
            Kind::Config,
            format!(
                "lock directory '{}' is owned by {} with mode {mode:04o}: refused \
                 (it must be owned by {allowed} and writable by no one else, or another \
                 user can put a symbolic link where a lock file goes; remove it and run \
                 `systemd-tmpfiles --create phoenix-hooks.conf`)",
                dir.display(),
                describe_uid(meta.uid()),
            ),
        ));
    }
    Ok(file)
}

/// Open (creating it) the lock file `name` in the verified directory
/// `dir`: never through a symbolic link, only a regular file.
fn open_lock_file(dir: &File, path: &Path, name: &str) -> Result<File> {
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => err(
            Kind::Config,
            format!(
                "lock file '{}' is a symbolic link: refused, not followed (remove it)",
                path.display()
            ),
        ),
        e => anyhow::Error::new(io::Error::from(e))
            .context(format!("opening lock file '{}'", path.display())),
    })?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .with_context(|| format!("fstat lock file '{}'", path.display()))?;
    if !meta.is_file() {
        return Err(err(
            Kind::Config,
            format!(
                "lock file '{}' is {}, not a regular file: refused (remove it)",
                path.display(),
                crate::guestdir::kind_name(meta.mode())
            ),
        ));
    }
    Ok(file)
}

/// How long past its wait a run keeps trying while the holder's record
/// is empty (see [`lock_at`]).
const UNKNOWN_GRACE: Duration = Duration::from_secs(1);

/// Take the exclusive lock of `job` in `dir`, waiting at most `wait`.
/// Fails with [`Kind::TempFail`] (exit 75) naming the holder when the wait
/// runs out, and with [`Kind::Config`] (exit 2) when the directory or the
/// lock file is refused (see the module's documentation). The directory
/// is created (0755) if missing.
pub fn lock_at(dir: &Path, job: &str, wait: Duration) -> Result<LockGuard> {
    let name = format!("{job}.lock");
    let path = dir.join(&name);
    let file = open_lock_file(&open_dir(dir)?, &path, &name)?;
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
        if now >= deadline && (now >= deadline + UNKNOWN_GRACE || holder_in(&file).pid.is_some()) {
            return Err(err(
                Kind::TempFail,
                format!(
                    "{job} is already running ({}); lock '{}'",
                    holder_in(&file),
                    path.display()
                ),
            ));
        }
        // A line when the wait begins, then one every 10 s with the time left.
        if announced.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            log::info!(
                "waiting for {job} to finish ({}); {}s left",
                holder_in(&file),
                deadline.saturating_duration_since(Instant::now()).as_secs()
            );
            announced = Some(Instant::now());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    let record = format!("pid={}\nsince={since}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(record.as_bytes(), 0))
        .with_context(|| format!("recording holder in '{}'", path.display()))?;
    log::debug!("took lock '{}'", path.display());
    Ok(LockGuard { file, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;
    use std::os::unix::fs::PermissionsExt;

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
        let mode = std::fs::metadata(&nested).unwrap().mode() & 0o7777;
        assert_eq!(mode & 0o022, 0, "{mode:o}");
    }

    #[test]
    fn a_symlink_at_the_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let locks = dir.path().join("lock");
        std::fs::create_dir(&locks).unwrap();
        std::os::unix::fs::symlink(&target, locks.join("renew.lock")).unwrap();
        let e = lock_at(&locks, "renew", Duration::ZERO).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let msg = format!("{e:#}");
        assert!(
            msg.contains("renew.lock") && msg.contains("symbolic link"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn a_fifo_or_directory_at_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("renew.lock"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("swarm.lock")).unwrap();
        for (job, kind) in [("renew", "a FIFO"), ("swarm", "")] {
            let e = lock_at(dir.path(), job, Duration::ZERO).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(&format!("{job}.lock")), "{msg}");
            assert!(msg.contains(kind), "{msg}");
        }
    }

    #[test]
    fn a_lock_dir_writable_by_others_or_a_symlink_is_refused_naming_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("lock");
        std::fs::create_dir(&locks).unwrap();
        for mode in [0o775, 0o757, 0o1777] {
            std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = lock_at(&locks, "renew", Duration::ZERO).unwrap_err();
            assert_eq!(kind_of(&e), Kind::Config);
            let msg = e.to_string();
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains(&locks.display().to_string()), "{msg}");
            assert!(msg.contains("owned by uid"), "{msg}");
        }
        assert!(
            std::fs::read_dir(&locks).unwrap().next().is_none(),
            "a refused directory got a lock file"
        );
        let link = dir.path().join("link");
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&locks, &link).unwrap();
        let e = lock_at(&link, "renew", Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        lock_at(&locks, "renew", Duration::ZERO).unwrap();
    }

    #[test]
    fn a_lock_dir_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("lock");
        std::fs::create_dir(&locks).unwrap();
        std::os::unix::fs::chown(&locks, Some(65534), Some(65534)).unwrap();
        let e = lock_at(&locks, "swarm", Duration::ZERO).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}
