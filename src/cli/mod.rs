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

/// Every binary's name and its long description, in the README's order.
pub const BINARIES: [(&str, &LongAbout); 6] = [
    ("phoenix-hook", &hook::LONG_ABOUT),
    ("phoenix-mount", &mount::LONG_ABOUT),
    ("phoenix-ca", &ca::LONG_ABOUT),
    ("phoenix-renew", &renew::LONG_ABOUT),
    ("phoenix-swarm", &swarm::LONG_ABOUT),
    ("phoenix-deploy", &deploy::LONG_ABOUT),
];

/// A binary's long description and the exit statuses it can end with: the
/// one source of its `--help` (the text, then "Exit status:") and of its
/// man page (DESCRIPTION, EXIT STATUS). `#[command(long_about = ...)]`
/// takes it as it is.
#[derive(Debug, Clone, Copy)]
pub struct LongAbout {
    /// What the binary does, wrapped at 76 columns.
    pub text: &'static str,
    /// Every status it can exit with, in the contract's order.
    pub exit: &'static [exit::Documented],
}

/// Width of `--help` (`term_width`/`max_term_width` of every binary).
const HELP_WIDTH: usize = 80;

impl LongAbout {
    /// The "Exit status:" block of `--help`: one status a line (wrapped,
    /// continued under its meaning), a code too long for its column alone
    /// on its line.
    pub fn exit_status_help(&self) -> String {
        const INDENT: usize = 8;
        let mut out = String::from("Exit status:");
        for doc in self.exit {
            let code = doc.0.codes;
            out.push_str("\n  ");
            out.push_str(code);
            let mut col = 2 + code.len();
            if col + 1 > INDENT {
                out.push('\n');
                col = 0;
            }
            out.push_str(&" ".repeat(INDENT - col));
            col = INDENT;
            for (i, word) in exit::describe(doc).split(' ').enumerate() {
                if i > 0 && col + 1 + word.len() > HELP_WIDTH {
                    out.push('\n');
                    out.push_str(&" ".repeat(INDENT));
                    col = INDENT;
                } else if i > 0 {
                    out.push(' ');
                    col += 1;
                }
                out.push_str(word);
                col += word.len();
            }
        }
        out
    }
}

impl From<LongAbout> for clap::builder::StyledStr {
    fn from(about: LongAbout) -> Self {
        format!("{}\n\n{}", about.text, about.exit_status_help()).into()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_help_wraps_under_the_meaning() {
        let about = LongAbout {
            text: "Do it.",
            exit: &[
                (exit::OK, ""),
                (
                    exit::FAILED,
                    "a word a word a word a word a word a word a word a word a word a word",
                ),
                (exit::STOPPED, ""),
            ],
        };
        let help = about.exit_status_help();
        assert_eq!(
            help,
            "Exit status:\n  0     ok\n  1     failed: a word a word a word a word a word a word a word a \
             word a word a\n        word\n  129/130/131/143\n        stopped by \
             SIGHUP/SIGINT/SIGQUIT/SIGTERM (128 + the signal's number)"
        );
        assert!(help.lines().all(|l| l.len() <= HELP_WIDTH), "{help}");
        let styled: clap::builder::StyledStr = about.into();
        assert!(styled
            .to_string()
            .starts_with("Do it.\n\nExit status:\n  0"));
    }
}
