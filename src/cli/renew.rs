//! `phoenix-renew`: issue and renew the manifest's certificates, and show
//! where they stand.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::exit::{err, Kind};
use crate::renew::{self, status, RunOptions};

const ABOUT: &str = "Issue and renew the certificates of the Phoenix manifest";

const LONG_ABOUT: &str = "\
Issue and renew the certificates of the Phoenix manifest.

For each certificate of certificate-manifest.json (toolkit.json
\"manifest\"), the current files are read and compared with the manifest:
a missing, unreadable, mismatched, expired or foreign certificate, or one
whose subject and SANs differ, is issued anew (step ca certificate); one
past renewal.threshold of its lifetime is renewed (step ca renew); others
are left alone. New files are verified, then installed atomically with the
manifest's owner (key 0600, or 0640 for a group; certificate 0644), and
the post-renewal action runs in the guest. One run at a time.

A manifest entry that fails its checks (unknown owner, bad SAN, a file
another entry claims...) is refused alone: the others are still renewed,
and the run exits 2 at its end. `status` shows it as a row too.

Exit status: 0 every selected certificate is valid and installed; 1 a
certificate failed, or is not valid and held back by the failure backoff;
2 usage or configuration error, unreadable manifest (nothing touched), or
a refused manifest entry; 75 the CA is unreachable or another run holds
the lock (retry later); 129/130/131/143 stopped by SIGHUP, SIGINT,
SIGQUIT, SIGTERM (no failure recorded).";

/// Command line of `phoenix-renew`.
#[derive(Debug, Parser)]
#[command(name = "phoenix-renew", version, about = ABOUT, long_about = LONG_ABOUT, term_width = 80)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Issue or renew what is due, install it, run post-renewal actions
    Run(Run),
    /// Show every certificate's expiry, next action and last result
    Status(Status),
}

#[derive(Debug, clap::Args)]
struct Run {
    /// Issue every selected certificate anew, ignoring the failure backoff
    #[arg(long)]
    force: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Only this certificate (common name); repeat for more
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct Status {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Also write node_exporter textfile metrics to FILE (atomically)
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
}

impl Args {
    /// Set up logging and signals, then run the subcommand.
    pub fn run(self) -> Result<()> {
        self.common.init("phoenix-renew");
        let config = self.common.load_config()?;
        match self.command {
            Command::Run(r) => renew::run(
                &config,
                &RunOptions {
                    force: r.force,
                    dry_run: r.dry_run,
                    only: r.only,
                },
            ),
            Command::Status(s) => {
                let rows = status::rows(&config)?;
                if let Some(path) = &s.prometheus {
                    status::write_prometheus(path, &rows).map_err(|e| {
                        err(
                            Kind::Failed,
                            format!("writing metrics '{}': {e:#}", path.display()),
                        )
                    })?;
                }
                if s.json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", status::table(&rows));
                }
                status::refused(&rows)
            }
        }
    }
}
