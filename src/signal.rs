//! Stop requests (SIGINT, SIGTERM, SIGHUP, SIGQUIT): a flag that long
//! operations check, so that a stop request ends a wait promptly and never
//! in the middle of a file write.
//!
//! All four are handled alike. Left to their default action, SIGHUP (a
//! closed terminal or SSH session) and SIGQUIT would end us at once, and
//! the children the runner starts in their own process group (`step`,
//! `qm`) would go on running, orphaned: handled, the runner ends that
//! group and the binary exits 128+N.
//!
//! The handler records the signal number and writes a byte into a
//! self-pipe. A waiter that blocks in `poll()` includes the pipe's read end
//! ([`wake_fd`]), so a signal that arrives between its check of the flag and
//! the start of `poll()` still wakes it at once (a flag alone would be seen
//! only when the poll times out).

use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::exit::{err, Kind};

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn record(sig: nix::libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking,
        // so a full pipe (already woken) just fails.
        unsafe { nix::libc::write(fd, b"!".as_ptr().cast(), 1) };
    }
}

/// The read end of the self-pipe: readable once a stop was requested.
/// `None` before [`install`] (or if the pipe could not be made).
pub fn wake_fd() -> Option<BorrowedFd<'static>> {
    let fd = WAKE_READ.load(Ordering::SeqCst);
    // SAFETY: the pipe is created once and never closed.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The signals that ask us to stop.
pub const STOP_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Install the handlers for [`STOP_SIGNALS`]. Call once, early in `main`.
pub fn install() {
    if WAKE_READ.load(Ordering::SeqCst) < 0 {
        use nix::fcntl::OFlag;
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((r, w)) => {
                WAKE_WRITE.store(w.into_raw_fd(), Ordering::SeqCst);
                WAKE_READ.store(r.into_raw_fd(), Ordering::SeqCst);
            }
            Err(e) => log::warn!("cannot create the signal pipe: {e}"),
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(record),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in STOP_SIGNALS {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            log::warn!("cannot install a handler for {sig}: {e}");
        }
    }
}

/// The signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Sleep for `d`, or less if a stop is requested meanwhile (the self-pipe
/// wakes the poll). Long waits use this instead of `thread::sleep`, so
/// SIGTERM ends them at once; the caller then calls [`check`].
pub fn sleep(d: std::time::Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Some(fd) = wake_fd() else {
        std::thread::sleep(d);
        return;
    };
    let deadline = std::time::Instant::now() + d;
    loop {
        if received().is_some() {
            return;
        }
        let rest = deadline.saturating_duration_since(std::time::Instant::now());
        if rest.is_zero() {
            return;
        }
        let ms = rest.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return,
            // EINTR from an unrelated signal, or the pipe readable: loop
            // and look at the flag.
            _ => continue,
        }
    }
}

/// `Err` of kind [`Kind::Interrupted`] once a stop was requested.
pub fn check() -> anyhow::Result<()> {
    match received() {
        None => Ok(()),
        Some(sig) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("signal");
            Err(err(Kind::Interrupted(sig), format!("stopped by {name}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn sleep_without_a_stop_request_lasts_its_time() {
        install();
        let started = Instant::now();
        sleep(Duration::from_millis(60));
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(check().is_ok());
    }
}
