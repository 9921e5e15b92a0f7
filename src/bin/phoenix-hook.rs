//! `phoenix-hook`: the Proxmox hookscript (see `phoenix-hook --help`).
//!
//! Proxmox runs it four times in the life of every guest, two of them in
//! the guest's start, and for most guests it has nothing to do: its start
//! and exit are most of its cost (BENCHMARKS.md, "phoenix-hook"). Two
//! things keep them short.
//!
//! - The release build links it statically, as a static PIE
//!   (`scripts/build-release.sh`): no dynamic loader, no `libgcc_s`, no
//!   symbol binding at start. A static glibc resolves host names only
//!   with the lookups built into it, so the hook reads `hosts` as
//!   `files dns` whatever `/etc/nsswitch.conf` says (a module such as
//!   `myhostname` or `mdns` is a shared object, which a static program
//!   can load only from the very glibc it was linked with).
//! - Its `main` is C's, not std's (`#![no_main]`). std's start finds the
//!   main thread's stack guard by reading `/proc/self/maps` and maps an
//!   alternate signal stack for its stack-overflow message: 15 page faults,
//!   0.15-0.25 ms of a 1.3 ms run. What else std's start and end do is done
//!   here: descriptors 0-2 opened on `/dev/null` when closed, SIGPIPE
//!   ignored, a panic made exit status 101, stdout flushed. A stack
//!   overflow (the hook does not recurse) is a plain SIGSEGV.
#![cfg_attr(not(test), no_main)]

// Built as a test harness (`cargo test --all-targets`) the bin gets
// libtest's `main`; it has no tests of its own.
#[cfg(not(test))]
mod start {
    use std::ffi::{c_char, c_int};
    use std::io::Write;
    use std::os::fd::RawFd;

    use nix::errno::Errno;
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::sys::stat::Mode;

    use phoenix_hooks::cli::hook;

    #[no_mangle]
    pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
        start_as_std();
        // Before the first name lookup, not here: glibc reads
        // nsswitch.conf to configure it, and most runs look nothing up.
        #[cfg(target_feature = "crt-static")]
        phoenix_hooks::ca::health::before_first_lookup(
            phoenix_hooks::ca::health::hosts_by_files_and_dns,
        );
        // argv: std reads it itself on glibc (from `.init_array`), as for any
        // Rust program.
        let status = std::panic::catch_unwind(|| hook::main(std::env::args_os())).unwrap_or(101);
        let _ = std::io::stdout().flush();
        c_int::from(status)
    }

    /// What std's runtime does before `main` (library/std/src/sys/pal/unix/mod.rs,
    /// `init`), but for the stack guard and its handler.
    fn start_as_std() {
        for fd in 0..=2 as RawFd {
            if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
                // The lowest free descriptor, so `fd` itself; the same as std,
                // which aborts when it cannot be had.
                match open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
                    Ok(got) if got == fd => {}
                    _ => std::process::abort(),
                }
            }
        }
        // SAFETY: ignoring a signal installs no handler; nothing else runs yet.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    }
}
