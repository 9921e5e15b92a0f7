//! SIGINT/SIGTERM handling: a flag that long operations check, so that a
//! stop request ends a wait promptly and never in the middle of a file write.
//!
//! The handler only records the signal number. It is installed without
//! `SA_RESTART`, so a blocking `poll()` or `read()` returns `EINTR` and the
//! caller gets to look at the flag at once.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::exit::{err, Kind};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: nix::libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Install the handlers for SIGINT and SIGTERM. Call once, early in `main`.
pub fn install() {
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
