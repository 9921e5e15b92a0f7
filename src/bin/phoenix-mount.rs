//! `phoenix-mount`: a guest mounts its volumes itself, and the systemd
//! generator writing their units (see `phoenix-mount --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{main_with, mount};

fn main() -> ExitCode {
    let args = mount::Args::parse_from(mount::generator_args(std::env::args_os().collect()));
    main_with(|| args.run())
}
