//! `phoenix-renew`: issue and renew the manifest's certificates (see
//! `phoenix-renew --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{main_with, renew::Args};

fn main() -> ExitCode {
    let args = Args::parse();
    main_with(|| args.run())
}
