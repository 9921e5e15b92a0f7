//! `phoenix-hook`: the Proxmox hookscript (see `phoenix-hook --help`).

use std::process::ExitCode;

use clap::Parser;
use phoenix_hooks::cli::hook::Args;

fn main() -> ExitCode {
    Args::parse().run()
}
