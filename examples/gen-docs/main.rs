//! Generate the man pages and shell completions of every binary from its
//! clap definition: `cargo run --example gen-docs -- OUTDIR`. Not shipped;
//! scripts/build-deb.sh runs it to fill the package.

mod docs;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUTDIR");
        return ExitCode::from(2);
    };
    match docs::write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: writing under '{}': {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
