//! `phoenix-deploy`: deploy the Phoenix stacks on the swarm (see
//! `phoenix-deploy --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{deploy::Args, main_with};

fn main() -> ExitCode {
    let args = Args::parse();
    main_with(|| args.run())
}
