//! `phoenix-swarm`: make the Docker Swarm manager active and every member
//! VM a Ready node, from the Proxmox host; show where each VM stands.

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::swarm::{self, EnsureOptions};
use crate::{exit, retry};

const ABOUT: &str = "Bring the Docker Swarm up on the Phoenix VMs, idempotently";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
Bring the Docker Swarm up on the Phoenix VMs, idempotently.

Roles, addresses and labels come from phoenix_vm_configs.json (swarm_role,
network_config.ip, node_labels); toolkit.json's swarm section may set the
manager (manager_id), its address (advertise_addr) and the port (2377).
Every docker command runs in its VM through `qm guest exec`, once the VM
runs and its guest agent answers.

ensure: an inactive manager is initialised; a pending, erroring or locked
one, or one whose state cannot be read, is waited for and reported (exit
75), never re-created. Members join with a token passed on stdin; a member
of another swarm is left alone unless --repair. Stale Down twins of Ready
nodes are removed and missing labels added. A second run changes nothing.",
    exit: &[
        (exit::OK, ""),
        (exit::FAILED, "also a problem (status)"),
        (exit::CONFIG, ""),
        (
            exit::TEMPFAIL,
            "a VM or its swarm state not ready, or another run holds the lock",
        ),
        (
            exit::TIMEOUT,
            "the one failing step's command (qm, docker in a VM) ran past its \
             bound",
        ),
        (exit::STOPPED, ""),
    ],
};

/// Command line of `phoenix-swarm`.
#[derive(Debug, Parser)]
#[command(
    name = "phoenix-swarm",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    max_term_width = 80
)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the manager active and every member a Ready node, add labels
    Ensure(Ensure),
    /// Show each VM's role, state, node and cluster ids, labels, problems
    Status(Status),
}

#[derive(Debug, clap::Args)]
struct Ensure {
    /// Read the states, print the commands that would change them
    #[arg(long)]
    dry_run: bool,
    /// Allow `docker swarm init --force-new-cluster` on a manager in state
    /// error or without a leader (lost quorum)
    #[arg(long)]
    force_new_cluster: bool,
    /// Make a member of another swarm (or in state error) leave it and join
    #[arg(long)]
    repair: bool,
    /// After a temporary failure (exit 75: lock held, guest or CA not
    /// ready), run again with a backoff (5 s doubling to 60 s) for up to
    /// this long, e.g. `10min`; the sync's units use it [default: 0, once]
    #[arg(long, value_name = "DURATION", value_parser = retry::parse_bound, default_value = "0", hide_default_value = true)]
    retry_for: Duration,
}

#[derive(Debug, clap::Args)]
struct Status {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Set up logging and signals, then run the subcommand.
    pub fn run(self) -> Result<()> {
        self.common.init("phoenix-swarm");
        let config = self.common.load_config()?;
        match self.command {
            Command::Ensure(e) => {
                let opts = EnsureOptions {
                    dry_run: e.dry_run,
                    force_new_cluster: e.force_new_cluster,
                    repair: e.repair,
                };
                retry::temporary("phoenix-swarm ensure", e.retry_for, || {
                    swarm::ensure(&config, opts, &mut std::io::stdout().lock())
                })
            }
            Command::Status(s) => {
                let st = swarm::status(&config)?;
                super::print_status(
                    &st,
                    s.json,
                    st.has_problems().then_some("the swarm has problems"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_fits_80_columns() {
        let help = Args::command()
            .term_width(80)
            .render_long_help()
            .to_string();
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
    }
}
