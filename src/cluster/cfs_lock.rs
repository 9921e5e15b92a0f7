//! The cluster-wide lock Proxmox itself uses: a directory
//! `<pve_dir>/priv/lock/<name>` on pmxcfs.
//!
//! The protocol is pve-cluster's (`src/PVE/Cluster.pm` `$cfs_lock`, and
//! "File Locking" in `src/README`):
//!
//! - take: `mkdir`, atomic cluster-wide; it succeeds for one caller only.
//!   While it fails with EEXIST, `utime(0, 0)` on the directory (a "cfs
//!   unlock request") and try again until the wait runs out.
//! - expiry: pmxcfs answers an unlock request by removing the directory
//!   when the lock is older than `CFS_LOCK_TIMEOUT`, 120 s
//!   (`src/pmxcfs/memdb.c` `memdb_lock_expired`; the request is sent in
//!   `src/pmxcfs/cfs-plug-memdb.c` `cfs_plug_memdb_utimens`, answered in
//!   `src/pmxcfs/dcdb.c`). The age is not the directory's mtime: each node
//!   counts from the local time it first saw this version of the lock
//!   (clocks of nodes drift), so a holder that dies leaves a lock that
//!   expires 120 s after its last refresh, whatever the clocks say.
//! - refresh: `utime(0, now)` by the node that made the lock (pmxcfs
//!   refuses an older mtime or another writer, `memdb_mtime`); it changes
//!   the lock's version and so restarts its 120 s. `cfs_lock` itself does
//!   not refresh (it aborts its code after 60 s); a holder here refreshes
//!   every [`REFRESH_EVERY`] from a thread, so a certificate's issuance or
//!   the swarm's convergence may take longer than 120 s.
//! - release: `rmdir`.
//! - no quorum: pmxcfs refuses every write with EACCES
//!   (`src/pmxcfs/dcdb.c` `dcdb_send_fuse_message`), and shows the tree
//!   read-only (0555 directories, `cfs-plug-memdb.c` `tree_entry_stat`).
//!   A `mkdir` refused with EACCES, EROFS or EPERM is "no quorum" (exit
//!   75), as `cfs_lock` says "no quorum!" when it got no lock.
//!
//! Which of the two expiries applies is decided by the file system under
//! the lock directory. On pmxcfs (a FUSE file system) pmxcfs expires the
//! lock, and only an unlock request is sent. On any other file system (the
//! tests' stand-in for `/etc/pve`, a plain directory) nothing would ever
//! expire a dead holder's lock, and `utime(0, 0)` would only set its mtime
//! to 1970; there the mtime *is* the last refresh (this holder writes it,
//! on one clock), and a lock whose mtime is more than 120 s old is taken
//! over: renamed aside (atomic: of two waiters only one gets it), checked
//! still stale, removed, then `mkdir` again.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::exit::{err, Kind};
use crate::signal;

/// pmxcfs's lock lifetime without a refresh: `CFS_LOCK_TIMEOUT`
/// (pve-cluster `src/pmxcfs/memdb.c`), hard-coded there, so not a setting.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a holder refreshes its lock: four chances within
/// [`LOCK_TIMEOUT`].
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Longest pause between two attempts while waiting (`cfs_lock` sleeps up
/// to a second between them).
const MAX_POLL: Duration = Duration::from_millis(500);

/// How the lock directory expires locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// pmxcfs does it, on an unlock request.
    Pmxcfs,
    /// A plain directory: the waiter takes over a lock whose mtime is
    /// older than [`LOCK_TIMEOUT`].
    Mtime,
}

impl Expiry {
    /// The expiry of the file system `lock_dir` is on.
    pub fn of(lock_dir: &Path) -> Expiry {
        match nix::sys::statfs::statfs(lock_dir) {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC => Expiry::Pmxcfs,
            _ => Expiry::Mtime,
        }
    }
}

/// A held cluster lock. Dropping it stops the refresh and removes the
/// directory (unless the lock was lost meanwhile: then it is another
/// holder's, and stays).
#[derive(Debug)]
pub struct CfsLock {
    path: PathBuf,
    name: String,
    expiry: Expiry,
    /// The directory's identity when taken (a plain directory: to tell
    /// ours from a successor's).
    ino: Identity,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    refresher: Option<JoinHandle<()>>,
}

impl CfsLock {
    /// The lock directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock's name (`phoenix-swarm`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// False once a refresh found the lock gone or another's (it expired
    /// while this process could not refresh it: stopped, or the node lost
    /// quorum): another node may be doing the same work now.
    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// `Err` (exit 75) naming the lock when it is no longer held.
    pub fn check(&self) -> Result<()> {
        if self.held() {
            return Ok(());
        }
        Err(err(
            Kind::TempFail,
            format!(
                "cluster lock '{}' was lost (expired: not refreshed for {} s)",
                self.path.display(),
                LOCK_TIMEOUT.as_secs()
            ),
        ))
    }
}

impl Drop for CfsLock {
    fn drop(&mut self) {
        {
            let (stopped, cv) = &*self.stop;
            *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if !self.held() || !is_ours(&self.path, self.expiry, self.ino) {
            log::warn!(
                "cluster lock '{}' was lost before its release: left to its new holder",
                self.path.display()
            );
            return;
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => log::debug!("released cluster lock '{}'", self.path.display()),
            Err(e) => log::warn!(
                "releasing cluster lock '{}': {e} (it expires {} s after its last refresh)",
                self.path.display(),
                LOCK_TIMEOUT.as_secs()
            ),
        }
    }
}

/// A directory's inode and birth time: a successor's lock made after ours
/// was removed may get the same inode number, not the same birth.
pub type Identity = (u64, Option<SystemTime>);

fn identity(path: &Path) -> io::Result<Identity> {
    let m = std::fs::symlink_metadata(path)?;
    if !m.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    Ok((m.ino(), m.created().ok()))
}

/// Whether the directory at `path` is still the one taken (`ino`). On
/// pmxcfs the name is enough: pmxcfs itself refuses another writer's
/// refresh (`memdb_mtime`).
fn is_ours(path: &Path, expiry: Expiry, ino: Identity) -> bool {
    match expiry {
        Expiry::Pmxcfs => true,
        Expiry::Mtime => identity(path).is_ok_and(|i| i == ino),
    }
}

/// A lock name as `cfs_lock` takes it: one path component.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            Kind::Config,
            format!("'{}' is not a cluster lock name", name.escape_debug()),
        ))
    }
}

/// How a "no quorum" error begins.
pub const NO_QUORUM: &str = "no quorum: ";

/// What a lock held past the wait says.
const HELD: &str = "is held (by another node, or another run)";

/// Whether `e` says the node has no quorum (nothing can be locked).
pub fn is_no_quorum(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string().starts_with(NO_QUORUM))
}

/// Whether `e` says the lock is held by another past the wait (and
/// nothing worse).
pub fn is_held(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string().contains(HELD))
}

fn no_quorum(path: &Path, e: Errno) -> anyhow::Error {
    err(
        Kind::TempFail,
        format!(
            "{NO_QUORUM}cannot create the cluster lock '{}': {} (pmxcfs refuses writes \
             while this node is not part of the quorate cluster; `pvecm status` says why)",
            path.display(),
            io::Error::from(e)
        ),
    )
}

fn seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Take the cluster lock `name` in `lock_dir` (`<pve_dir>/priv/lock`),
/// waiting at most `wait` for its holder. Fails with [`Kind::TempFail`]
/// (exit 75) when the wait runs out, or without quorum ("no quorum: ...").
pub fn acquire(lock_dir: &Path, name: &str, wait: Duration) -> Result<CfsLock> {
    acquire_with(lock_dir, name, wait, REFRESH_EVERY)
}

/// [`acquire`] with the refresh interval given (tests).
pub fn acquire_with(
    lock_dir: &Path,
    name: &str,
    wait: Duration,
    refresh: Duration,
) -> Result<CfsLock> {
    check_name(name)?;
    let path = lock_dir.join(name);
    // `cfs_lock`: `mkdir $lockdir`, then "pve cluster filesystem not
    // online" unless it is a directory.
    match nix::unistd::mkdir(lock_dir, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e @ (Errno::EACCES | Errno::EROFS | Errno::EPERM)) if !lock_dir.is_dir() => {
            return Err(no_quorum(lock_dir, e))
        }
        Err(_) => {}
    }
    if !lock_dir.is_dir() {
        return Err(err(
            Kind::TempFail,
            format!(
                "pve cluster filesystem not online: no lock directory '{}'",
                lock_dir.display()
            ),
        ));
    }
    let expiry = Expiry::of(lock_dir);
    let deadline = Instant::now() + wait;
    let mut poll = Duration::from_millis(20);
    let mut announced: Option<Instant> = None;
    loop {
        match nix::unistd::mkdir(&path, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
            Ok(()) => break,
            Err(Errno::EEXIST) => {}
            Err(e @ (Errno::EACCES | Errno::EROFS | Errno::EPERM)) => {
                return Err(no_quorum(&path, e))
            }
            Err(Errno::ENOENT) => {
                return Err(err(
                    Kind::TempFail,
                    format!(
                        "pve cluster filesystem not online: lock directory '{}' went away",
                        lock_dir.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("creating cluster lock '{}'", path.display()))
            }
        }
        match expiry {
            // The cfs unlock request: pmxcfs removes the lock if it has
            // not been refreshed for 120 s. Its error is of no interest
            // (`cfs_lock` ignores it too).
            Expiry::Pmxcfs => {
                let zero = TimeSpec::new(0, 0);
                let _ = utimensat(None, &path, &zero, &zero, UtimensatFlags::NoFollowSymlink);
            }
            Expiry::Mtime => {
                if take_over_if_stale(lock_dir, &path, name)? {
                    continue;
                }
            }
        }
        signal::check()?;
        let now = Instant::now();
        if now >= deadline {
            return Err(err(
                Kind::TempFail,
                format!(
                    "cluster lock '{}' {HELD}; waited {} s; \
                     a holder that died leaves it to expire {} s after its last refresh",
                    path.display(),
                    wait.as_secs(),
                    LOCK_TIMEOUT.as_secs()
                ),
            ));
        }
        if announced.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            log::info!(
                "trying to acquire cluster lock '{name}' ...; {}s left",
                deadline.saturating_duration_since(now).as_secs()
            );
            announced = Some(now);
        }
        thread::sleep(poll.min(deadline.saturating_duration_since(now)));
        poll = (poll * 2).min(MAX_POLL);
    }
    let ino =
        identity(&path).with_context(|| format!("reading cluster lock '{}'", path.display()))?;
    log::debug!("took cluster lock '{}'", path.display());
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let refresher = {
        let (path, lost, stop) = (path.clone(), lost.clone(), stop.clone());
        thread::Builder::new()
            .name(format!("cfs-lock-{name}"))
            .spawn(move || refresh_loop(&path, expiry, ino, &lost, &stop, refresh))
            .context("starting the cluster lock's refresh")?
    };
    Ok(CfsLock {
        path,
        name: name.to_string(),
        expiry,
        ino,
        lost,
        stop,
        refresher: Some(refresher),
    })
}

/// Refresh the lock every `every` until told to stop; a failed refresh
/// marks it lost (and ends the loop: the lock is another's now).
fn refresh_loop(
    path: &Path,
    expiry: Expiry,
    ino: Identity,
    lost: &AtomicBool,
    stop: &(Mutex<bool>, Condvar),
    every: Duration,
) {
    let (stopped, cv) = stop;
    let mut guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (g, _) = cv
            .wait_timeout_while(guard, every, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        guard = g;
        if *guard {
            return;
        }
        if let Err(why) = refresh(path, expiry, ino) {
            log::error!(
                "cluster lock '{}' lost: {why}; another node may take it",
                path.display()
            );
            lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// One refresh: `utime(0, now)` (pve-cluster `src/README`, "it is
/// possible to update an existing lock using utime 0, time()").
pub fn refresh(path: &Path, expiry: Expiry, ino: Identity) -> std::result::Result<(), String> {
    if !is_ours(path, expiry, ino) {
        return Err("it was taken over (expired)".into());
    }
    let now = TimeSpec::new(seconds(SystemTime::now()), 0);
    utimensat(
        None,
        path,
        &TimeSpec::new(0, 0),
        &now,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io::Error::from(e).to_string())?;
    log::debug!("refreshed cluster lock '{}'", path.display());
    Ok(())
}

/// On a plain directory: if the lock at `path` was last refreshed more
/// than [`LOCK_TIMEOUT`] ago, remove it and return true (try `mkdir`
/// again at once). Of several waiters, the one whose `rename` moves the
/// stale directory aside removes it; the others find it gone.
fn take_over_if_stale(lock_dir: &Path, path: &Path, name: &str) -> Result<bool> {
    let age = |p: &Path| -> Option<Duration> {
        let m = std::fs::symlink_metadata(p).ok()?;
        let mtime = UNIX_EPOCH + Duration::from_secs(m.mtime().max(0) as u64);
        SystemTime::now().duration_since(mtime).ok()
    };
    match age(path) {
        Some(a) if a > LOCK_TIMEOUT => {}
        _ => return Ok(false),
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let aside = lock_dir.join(format!(".{name}.expired.{}.{nanos}", std::process::id()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        // Another waiter moved it first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing expired cluster lock '{}'", path.display()))
        }
    }
    match age(&aside) {
        Some(a) if a > LOCK_TIMEOUT => {
            log::warn!(
                "cluster lock '{}' expired: not refreshed for {} s (more than {} s; its holder \
                 died or hangs): taken over",
                path.display(),
                a.as_secs(),
                LOCK_TIMEOUT.as_secs()
            );
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                log::warn!("removing expired lock '{}': {e}", aside.display());
            }
        }
        _ => {
            // A new holder's lock was moved (it was made between our look
            // and the rename): put it back unless a third took the name.
            let back = nix::fcntl::renameat2(
                None,
                &aside,
                None,
                path,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            );
            if back.is_err() {
                log::warn!(
                    "cluster lock '{}' changed hands while expiring; its holder loses it",
                    path.display()
                );
                let _ = std::fs::remove_dir(&aside);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    fn backdate(path: &Path, secs: u64) {
        let t = TimeSpec::new(seconds(SystemTime::now()) - secs as i64, 0);
        utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    #[test]
    fn mkdir_excludes_and_rmdir_releases() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("priv/lock");
        std::fs::create_dir_all(d.path().join("priv")).unwrap();
        let a = acquire(&dir, "phoenix-swarm", Duration::ZERO).unwrap();
        assert!(dir.join("phoenix-swarm").is_dir());
        assert_eq!(Expiry::of(&dir), Expiry::Mtime);
        let e = acquire(&dir, "phoenix-swarm", Duration::from_millis(100)).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!(is_held(&e) && !is_no_quorum(&e), "{e}");
        // Another name is another lock.
        let _b = acquire(&dir, "phoenix-deploy", Duration::ZERO).unwrap();
        drop(a);
        assert!(!dir.join("phoenix-swarm").exists());
        acquire(&dir, "phoenix-swarm", Duration::ZERO).unwrap();
    }

    #[test]
    fn a_stale_lock_is_taken_over_a_fresh_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x");
        std::fs::create_dir(&path).unwrap();
        backdate(&path, 100);
        assert!(acquire(d.path(), "x", Duration::ZERO).is_err());
        backdate(&path, 121);
        let l = acquire(d.path(), "x", Duration::ZERO).unwrap();
        assert!(l.held());
        // Nothing left aside.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn the_holder_refreshes_and_notices_a_loss() {
        let d = tempfile::tempdir().unwrap();
        let l = acquire_with(d.path(), "x", Duration::ZERO, Duration::from_millis(30)).unwrap();
        backdate(l.path(), 200);
        let t0 = Instant::now();
        while std::fs::metadata(l.path()).unwrap().mtime() < seconds(SystemTime::now()) - 5 {
            assert!(t0.elapsed() < Duration::from_secs(5), "never refreshed");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(l.held());
        // Taken over by another: the next refresh sees it.
        std::fs::remove_dir(l.path()).unwrap();
        std::fs::create_dir(l.path()).unwrap();
        while l.held() {
            assert!(t0.elapsed() < Duration::from_secs(5), "loss not noticed");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(l.check().is_err());
        let path = l.path().to_path_buf();
        drop(l);
        // The successor's lock stays.
        assert!(path.is_dir());
    }

    #[test]
    fn a_read_only_lock_directory_is_no_quorum() {
        let e = no_quorum(Path::new("/etc/pve/priv/lock/x"), Errno::EROFS);
        assert!(is_no_quorum(&e) && !is_held(&e), "{e}");
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!(e.to_string().contains("Read-only file system"), "{e}");
    }

    #[test]
    fn names_are_one_component() {
        for bad in ["", "a/b", "..", ".x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("phoenix-renew-web.example.org-0123abcd").unwrap();
    }
}
