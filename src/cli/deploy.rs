//! `phoenix-deploy`: deploy the Phoenix stacks on the Docker Swarm from
//! the Proxmox host, once the swarm and the certificates are up; show
//! where each stack stands.

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::deploy::{self, RunOptions};
use crate::{exit, retry};

const ABOUT: &str = "Deploy the Phoenix stacks on the Docker Swarm, after the certificates";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
Deploy the Phoenix stacks on the Docker Swarm, after the certificates.

Which stacks: each VM's docker_stacks in phoenix_vm_configs.json, defined
in phoenix_stacks_config.json (compose_file_path under deploy.stacks_root;
the environment deploy.environment, default production). Each compose file
is rendered: the environment's variables into every service's environment,
its traefik_labels into deploy.labels, its files as secrets, a placement
constraint on the node of the VM that lists the stack (node label
phoenix.vmid, set by phoenix-swarm), and secrets the toolkit versions
(certificates, deploy.secrets) under their current names. Networks in
deploy.networks and secrets in deploy.secrets (a host file's bytes, on
stdin) are made first.

run: a stack whose rendered compose changed since this host last deployed
it, or that has gone from the swarm, is deployed on the manager with
`docker stack deploy -c -` (the compose on stdin), then waited for, up to
deploy.converge_timeout_secs, until every service runs; a task that fails
is reported with docker's error. An unchanged stack is not deployed again.
One run at a time (lock `deploy`).",
    exit: &[
        (exit::OK, ""),
        (
            exit::FAILED,
            "a stack does not run (run), or a problem (status)",
        ),
        (
            exit::CONFIG,
            "also a compose error (the file and line named)",
        ),
        (
            exit::TEMPFAIL,
            "the manager not reachable or not an active manager, a stack \
             still converging at the bound, another run holds the lock",
        ),
        (
            exit::TIMEOUT,
            "the one failing stack's command (qm, docker in a VM) ran past \
             its bound",
        ),
        (exit::STOPPED, ""),
    ],
};

/// Command line of `phoenix-deploy`.
#[derive(Debug, Parser)]
#[command(
    name = "phoenix-deploy",
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
    /// Deploy every stack whose compose or secrets changed, wait until it runs
    Run(Run),
    /// Show each stack's VM, services running, last deployment, problems
    Status(Status),
}

#[derive(Debug, clap::Args)]
struct Run {
    /// Print each rendered compose, its diff against the last deployment
    /// and the commands; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Only this stack (its key in docker_stacks, or its name)
    #[arg(long, value_name = "STACK")]
    only: Option<String>,
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
        self.common.init("phoenix-deploy");
        let config = self.common.load_config()?;
        match self.command {
            Command::Run(r) => {
                let opts = RunOptions {
                    dry_run: r.dry_run,
                    only: r.only,
                };
                retry::temporary("phoenix-deploy run", r.retry_for, || {
                    deploy::run(&config, &opts, &mut std::io::stdout().lock())
                })
            }
            Command::Status(s) => {
                let st = deploy::status(&config)?;
                super::print_status(
                    &st,
                    s.json,
                    st.has_problems().then_some("a stack has problems"),
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
