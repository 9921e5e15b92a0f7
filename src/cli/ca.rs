//! `phoenix-ca`: wait for, publish, invalidate and show the Step-CA
//! readiness token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::ca::{self, Health, PublishOptions, WaitOptions};
use crate::config::{CaPaths, Config};
use crate::exit::{self, err, Kind};

const ABOUT: &str = "Wait for, publish or invalidate the Step-CA readiness token";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
Wait for, publish or invalidate the Step-CA readiness token.

The CA state directory holds ca.generation (written by the Proxmox host
when the CA container starts) and ca.ready (written by the CA once its
/health answers). A waiter trusts ca.ready only if it carries the current
generation, so a token left by an earlier boot is never taken as fresh.

The state directory defaults to ca.state_dir (host view) on a Proxmox node
and to ca.guest_state_dir (/etc/step-ca/ssl) elsewhere. publish also copies
the public part (ca.ready, ca.generation, the root certificate and its
fingerprint, no secret) into public/ inside it, and invalidate keeps that
copy's generation current: dependents mount public/ and wait on it with the
same commands.",
    exit: &[
        (exit::OK, ""),
        (exit::FAILED, "also the CA not ready (status)"),
        (exit::CONFIG, ""),
        (
            exit::TIMEOUT,
            "the bound (--timeout) passed, saying what was missing (wait, \
             publish), or update-ca-certificates ran past its own (wait \
             --bootstrap)",
        ),
        (exit::STOPPED, ""),
    ],
};

/// Command line of `phoenix-ca`.
#[derive(Debug, Parser)]
#[command(name = "phoenix-ca", version, about = ABOUT, long_about = LONG_ABOUT, term_width = 80)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a new generation: the current ca.ready becomes stale (host, CA pre-start)
    Invalidate(Dir),
    /// Wait for the CA's /health, then write ca.ready (CA guest, ExecStartPost=)
    Publish(Publish),
    /// Wait, bounded, for a fresh ca.ready and a healthy CA (guests)
    Wait(Wait),
    /// Show generation, token, fingerprint and health; exit 1 if not ready
    Status(Status),
}

#[derive(Debug, clap::Args)]
struct Dir {
    /// CA state directory [default: see above]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CaArgs {
    /// CA URL [default: ca.url]
    #[arg(long, value_name = "URL")]
    ca_url: Option<String>,
    /// Root certificate for the health check [default: ca.root_cert in the state dir]
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,
    /// Bound in seconds [default: ca.wait_timeout_secs, 300]
    #[arg(long, value_name = "S")]
    timeout: Option<u64>,
    /// Do not check /health
    #[arg(long)]
    no_health: bool,
}

#[derive(Debug, clap::Args)]
struct Publish {
    #[command(flatten)]
    dir: Dir,
    #[command(flatten)]
    ca: CaArgs,
    /// Root fingerprint (64 hex digits) [default: the fingerprint file, else computed from --root]
    #[arg(long, value_name = "HEX")]
    fingerprint: Option<String>,
}

#[derive(Debug, clap::Args)]
struct Wait {
    #[command(flatten)]
    dir: Dir,
    #[command(flatten)]
    ca: CaArgs,
    /// Poll interval in milliseconds (inotify wakes earlier where it works)
    #[arg(long, value_name = "MS", default_value_t = 250)]
    interval: u64,
    /// Poll only, never use inotify
    #[arg(long)]
    no_inotify: bool,
    /// Then trust the CA system-wide: its root from the state directory,
    /// checked against the token's fingerprint, into
    /// /usr/local/share/ca-certificates, then update-ca-certificates
    #[arg(long)]
    bootstrap: bool,
}

#[derive(Debug, clap::Args)]
struct Status {
    #[command(flatten)]
    dir: Dir,
    /// CA URL [default: ca.url]
    #[arg(long, value_name = "URL")]
    ca_url: Option<String>,
    /// Root certificate for the health check [default: ca.root_cert in the state dir]
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,
    /// Do not check /health
    #[arg(long)]
    no_health: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Set up logging and signals, then run the subcommand.
    pub fn run(self) -> Result<()> {
        self.common.init("phoenix-ca");
        let config = self.common.load_config()?;
        match self.command {
            Command::Invalidate(d) => {
                let paths = paths(&config, &d);
                ca::invalidate(&paths).map(|_| ())
            }
            Command::Publish(p) => publish(&config, p),
            Command::Wait(w) => wait(&config, w),
            Command::Status(s) => status(&config, s),
        }
    }
}

fn paths(config: &Config, dir: &Dir) -> CaPaths {
    let dir = dir
        .state_dir
        .clone()
        .unwrap_or_else(|| ca::default_state_dir(config));
    config.ca.paths_in(&dir)
}

fn health(config: &Config, paths: &CaPaths, url: Option<&str>, root: Option<&PathBuf>) -> Health {
    Health {
        url: url.unwrap_or(&config.ca.url).to_string(),
        root: root.cloned().unwrap_or_else(|| paths.root_cert.clone()),
        timeout: Duration::from_secs(config.ca.health_timeout_secs),
    }
}

fn publish(config: &Config, p: Publish) -> Result<()> {
    let paths = paths(config, &p.dir);
    let h = health(config, &paths, p.ca.ca_url.as_deref(), p.ca.root.as_ref());
    if !p.ca.no_health && !h.root.exists() {
        return Err(err(
            Kind::Config,
            format!(
                "root certificate '{}' not found: the health check needs it (--root, or --no-health)",
                h.root.display()
            ),
        ));
    }
    let opts = PublishOptions {
        ca_url: h.url.clone(),
        root: h.root.clone(),
        fingerprint: p.fingerprint,
        health: !p.ca.no_health,
        timeout: Duration::from_secs(p.ca.timeout.unwrap_or(config.ca.wait_timeout_secs)),
        health_timeout: h.timeout,
    };
    ca::publish(&paths, &opts).map(|_| ())
}

fn wait(config: &Config, w: Wait) -> Result<()> {
    let paths = paths(config, &w.dir);
    let h = health(config, &paths, w.ca.ca_url.as_deref(), w.ca.root.as_ref());
    if w.interval == 0 {
        return Err(err(Kind::Config, "--interval must be at least 1 ms"));
    }
    let opts = WaitOptions {
        timeout: Duration::from_secs(w.ca.timeout.unwrap_or(config.ca.wait_timeout_secs)),
        interval: Duration::from_millis(w.interval),
        health: (!w.ca.no_health).then(|| h.clone()),
        inotify: !w.no_inotify,
    };
    let ready = ca::wait_ready(&paths, &opts)?;
    if w.bootstrap {
        let fingerprint = match ready.token {
            Some(t) => t.fingerprint,
            None => ca::read_fingerprint_file(&paths.fingerprint)?.ok_or_else(|| {
                err(
                    Kind::Failed,
                    format!(
                        "legacy token carries no fingerprint and '{}' is missing: cannot bootstrap",
                        paths.fingerprint.display()
                    ),
                )
            })?,
        };
        ca::bootstrap(&h.root, &fingerprint, Duration::from_secs(60))?;
    }
    // phoenix-ca-wait.service is Type=notify: Docker may start now.
    crate::notify::ready(if w.bootstrap {
        "CA ready, its root trusted"
    } else {
        "CA ready"
    });
    Ok(())
}

fn status(config: &Config, s: Status) -> Result<()> {
    let paths = paths(config, &s.dir);
    let h = health(config, &paths, s.ca_url.as_deref(), s.root.as_ref());
    let st = ca::status(&paths, (!s.no_health).then_some(&h));
    if s.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{st}");
    }
    if st.ready {
        Ok(())
    } else {
        Err(err(
            Kind::Failed,
            format!("CA not ready: {}", st.token_state),
        ))
    }
}
