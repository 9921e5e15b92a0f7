//! Waiting, bounded, for something in the CA state directory to change.
//!
//! inotify wakes the waiter at once where the file system delivers events
//! (local file systems, the CA guest's own writes). A timer wakes it every
//! interval regardless, because inotify never sees a file written by
//! another NFS client, and on NFS a `stat()` of a new file can keep
//! answering ENOENT from the negative dentry cache: each wake-up reads the
//! token again with `open()` + `read()`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::signal;

/// Wakes a waiter when the watched directory changes, or when the
/// interval has passed.
pub struct DirWatch {
    dir: PathBuf,
    inotify: Option<Inotify>,
    watching: bool,
    wd: Option<WatchDescriptor>,
}

impl DirWatch {
    /// Watch `dir`; with `use_inotify` false, only the timer wakes.
    pub fn new(dir: &Path, use_inotify: bool) -> Self {
        let inotify = if use_inotify {
            match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
                Ok(i) => Some(i),
                Err(e) => {
                    log::debug!("inotify unavailable ({e}); polling only");
                    None
                }
            }
        } else {
            None
        };
        let mut watch = DirWatch {
            dir: dir.to_path_buf(),
            inotify,
            watching: false,
            wd: None,
        };
        watch.rewatch();
        watch
    }

    /// Whether inotify events are coming (otherwise only the timer wakes).
    pub fn uses_inotify(&self) -> bool {
        self.watching
    }

    /// (Re)add the watch. The directory may not exist yet (the mount is
    /// not up), or a file system may have been mounted over it since: adding
    /// the watch again picks up the inode the path names now.
    fn rewatch(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB;
        self.wd = inotify.add_watch(&self.dir, mask).ok();
        self.watching = self.wd.is_some();
    }

    /// Stop watching now, when what was awaited has come (the next
    /// [`Self::wait`] watches again). Closing an inotify instance waits
    /// for its marks' teardown, an SRCU grace period (`fsnotify_destroy_group`
    /// flushes the mark reaper): 5 to 20 ms here, paid by the process's exit
    /// and so by whatever systemd starts after it. A mark removed now is
    /// torn down by the kernel's reaper while the caller goes on (the
    /// health check), and the close at the end finds nothing left to wait
    /// for.
    pub fn suspend(&mut self) {
        if let (Some(inotify), Some(wd)) = (&self.inotify, self.wd.take()) {
            let _ = inotify.rm_watch(wd);
        }
        self.watching = false;
    }

    /// Sleep until an event in the directory, `max` passing, or a stop
    /// request (the signal self-pipe is polled too, so a signal that came
    /// just before the poll still ends it at once).
    pub fn wait(&mut self, max: Duration) {
        if !self.watching {
            self.rewatch();
        }
        let started = Instant::now();
        let inotify = self.inotify.as_ref().filter(|_| self.watching);
        let mut fds = Vec::with_capacity(2);
        if let Some(i) = inotify {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = signal::wake_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        loop {
            let rest = max.saturating_sub(started.elapsed());
            let ms = rest.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Err(Errno::EINTR) if signal::received().is_none() => continue,
                Err(e) if e != Errno::EINTR => {
                    log::debug!("poll failed ({e}); sleeping instead");
                    std::thread::sleep(rest);
                }
                _ => {}
            }
            break;
        }
        if let Some(i) = inotify {
            // Drain; what changed does not matter, the caller re-reads.
            while let Ok(events) = i.read_events() {
                if events.is_empty() {
                    break;
                }
            }
        }
        self.rewatch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_wakes_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(dir.path(), true);
        assert!(w.uses_inotify());
        let target = dir.path().join("ca.ready");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(target, "x").unwrap();
        });
        let started = Instant::now();
        w.wait(Duration::from_secs(20));
        writer.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn without_inotify_the_interval_bounds_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(dir.path(), false);
        assert!(!w.uses_inotify());
        let started = Instant::now();
        w.wait(Duration::from_millis(50));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn missing_directory_is_watched_once_it_appears() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ssl");
        let mut w = DirWatch::new(&dir, true);
        assert!(!w.uses_inotify());
        std::fs::create_dir(&dir).unwrap();
        w.wait(Duration::from_millis(1));
        assert!(w.uses_inotify());
    }
}
