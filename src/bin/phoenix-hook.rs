//! `phoenix-hook`: the Proxmox hookscript (see `phoenix-hook --help`).

use std::process::ExitCode;

use phoenix_hooks::cli::hook;

fn main() -> ExitCode {
    match hook::parse_args(std::env::args_os()) {
        Ok(args) => args.run(),
        Err(code) => code,
    }
}
