//! Command-line definitions of the binaries, kept in the library so that
//! man pages and completions can be generated from the same clap types.

pub mod ca;
pub mod deploy;
pub mod hook;
pub mod mount;
pub mod renew;
pub mod swarm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::{exit, logging, signal};

/// Options every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Configuration file [default: /etc/phoenix/toolkit.json if it exists;
    /// built-in Phoenix defaults otherwise]
    #[arg(long, global = true, env = "PHOENIX_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also log to syslog
    #[arg(long, global = true)]
    pub syslog: bool,
}

impl Common {
    /// Set up logging for the binary `ident` and the stop signals.
    pub fn init(&self, ident: &str) {
        let mut opts = logging::Options::new(ident);
        opts.verbosity = if self.quiet { -1 } else { self.verbose as i8 };
        opts.syslog = self.syslog;
        logging::init(&opts);
        signal::install();
    }

    /// Load the configuration this invocation names.
    pub fn load_config(&self) -> Result<Config> {
        Config::load(self.config.as_deref())
    }
}

/// Print a `status` (JSON with `--json`, else its table) and fail (exit 1)
/// with `problems` when it has any.
pub fn print_status<T: serde::Serialize + std::fmt::Display>(
    st: &T,
    json: bool,
    problems: Option<&str>,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(st)?);
    } else {
        print!("{st}");
    }
    match problems {
        Some(what) => Err(exit::err(exit::Kind::Failed, format!("{what} (see above)"))),
        None => Ok(()),
    }
}

/// Run `body` and map its result to the exit-code contract.
pub fn main_with(body: impl FnOnce() -> Result<()>) -> ExitCode {
    exit::finish(body())
}
