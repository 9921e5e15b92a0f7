//! `phoenix-ca`: the Step-CA readiness token (see `phoenix-ca --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{ca::Args, main_with};

fn main() -> ExitCode {
    let args = Args::parse();
    main_with(|| args.run())
}
