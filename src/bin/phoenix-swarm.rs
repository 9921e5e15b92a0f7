//! `phoenix-swarm`: bring the Docker Swarm up from the Proxmox host (see
//! `phoenix-swarm --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::{main_with, swarm::Args};

fn main() -> ExitCode {
    let args = Args::parse();
    main_with(|| args.run())
}
