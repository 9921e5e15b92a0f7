//! `phoenix-renew`: issue and renew the manifest's certificates, and show
//! where they stand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::exit::{err, Kind};
use crate::renew::{self, status, RunOptions};
use crate::retry;

const ABOUT: &str = "Issue and renew the certificates of the Phoenix manifest";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
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
and the run exits 2 at its end. `status` shows it as a row too.",
    exit: &[
        (
            crate::exit::OK,
            "every selected certificate is valid, installed and not due",
        ),
        (
            crate::exit::FAILED,
            "a certificate (or its action) failed, or is held back by the \
             failure backoff",
        ),
        (
            crate::exit::CONFIG,
            "also an unreadable manifest (nothing touched), or a refused \
             manifest entry (the others renewed)",
        ),
        (
            crate::exit::TEMPFAIL,
            "the CA is unreachable or another run holds the lock",
        ),
        (crate::exit::STOPPED, "no failure recorded"),
    ],
};

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
    #[arg(long, conflicts_with = "renew_now")]
    force: bool,
    /// Renew every selected certificate that is valid now, keeping its key,
    /// as if past its threshold (others are issued or held back as usual)
    #[arg(long)]
    renew_now: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: also check the CA's /health and that it accepts the
    /// provisioner with its password file (`step ca token`), issuing nothing
    #[arg(long, requires = "dry_run")]
    check_ca: bool,
    /// Only this certificate (common name); repeat for more
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// After a temporary failure (exit 75: lock held, guest or CA not
    /// ready), run again with a backoff (5 s doubling to 60 s) for up to
    /// this long, e.g. `10min`; the sync's units use it [default: 0, once]
    #[arg(long, value_name = "DURATION", value_parser = retry::parse_bound, default_value = "0", hide_default_value = true)]
    retry_for: Duration,
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
            Command::Run(r) => {
                let opts = RunOptions {
                    urge: if r.force {
                        renew::plan::Urge::Force
                    } else if r.renew_now {
                        renew::plan::Urge::RenewNow
                    } else {
                        renew::plan::Urge::Due
                    },
                    dry_run: r.dry_run,
                    check_ca: r.check_ca,
                    only: r.only,
                };
                retry::temporary("phoenix-renew run", r.retry_for, || {
                    renew::run(&config, &opts)
                })
            }
            Command::Status(s) => {
                let report = status::report(&config)?;
                report.log_warnings();
                if let Some(path) = &s.prometheus {
                    status::write_prometheus(path, &report).map_err(|e| {
                        err(
                            Kind::Failed,
                            format!("writing metrics '{}': {e:#}", path.display()),
                        )
                    })?;
                }
                if s.json {
                    println!("{}", serde_json::to_string_pretty(&report.rows)?);
                } else {
                    print!("{}", status::report_table(&report));
                }
                status::verdict(&report, renew::now())
            }
        }
    }
}
