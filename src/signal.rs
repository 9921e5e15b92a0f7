//! SIGINT/SIGTERM handling: a flag that long operations check, so that a
//! stop request ends a wait promptly and never in the middle of a file write.
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

/// Install the handlers for SIGINT and SIGTERM. Call once, early in `main`.
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
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
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
