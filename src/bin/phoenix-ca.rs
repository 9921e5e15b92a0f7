//! `phoenix-ca`: the Step-CA readiness token (see `phoenix-ca --help`).
//!
//! The release links it statically, as a static PIE
//! (`scripts/build-release.sh`): its `wait` is the first step of every
//! VM's boot chain, and a static program starts and exits with less to
//! map and unmap (BENCHMARKS.md, "reaction latency"); it also runs in a
//! VM whatever that VM's glibc. Host names are then looked up in
//! `/etc/hosts` and DNS only ([`hosts_by_files_and_dns`]).
//!
//! [`hosts_by_files_and_dns`]: phoenix_hooks::ca::health::hosts_by_files_and_dns

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{ca::Args, main_with};

fn main() -> ExitCode {
    #[cfg(target_feature = "crt-static")]
    phoenix_hooks::ca::health::before_first_lookup(
        phoenix_hooks::ca::health::hosts_by_files_and_dns,
    );
    let args = Args::parse();
    main_with(|| args.run())
}
