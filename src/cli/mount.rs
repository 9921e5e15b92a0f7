//! `phoenix-mount`: a guest mounts its volumes itself (the pull model).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use super::Common;
use crate::config::{self, Config};
use crate::exit::{self, err, Kind};
use crate::mount::{self, ApplyOptions};

const ABOUT: &str = "Mount the shared CA state directory and other volumes in a guest";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
Mount the shared CA state directory and other volumes in a guest.

Volumes come from toolkit.json \"mounts\", or with --vmid N from that VM's
\"volumes\" in phoenix_vm_configs.json. The CA state directory
(ca.guest_state_dir) is mounted read-only; NFS volumes use
lookupcache=positive so a newly written ca.ready is seen at once.

As a systemd generator (link this binary into
/usr/lib/systemd/system-generators/; systemd passes the three directories
and the `generate` word is implied) it writes one .mount unit per volume;
the CA state mount orders Before=phoenix-ca-wait.service. /etc/fstab is
never edited; a mount point it already has is left to it.",
    exit: &[
        (exit::OK, ""),
        (
            exit::FAILED,
            "a volume not mounted as configured (check), or not mounted: its \
             mount command failed or ran past --timeout, and the others were \
             still tried (apply)",
        ),
        (
            exit::CONFIG,
            "also a generator directory that does not exist",
        ),
        (
            exit::STOPPED,
            "apply: the mount in progress was stopped (its process group \
             ended), the volumes after it not tried",
        ),
    ],
};

/// Command line of `phoenix-mount`.
#[derive(Debug, Parser)]
#[command(name = "phoenix-mount", version, about = ABOUT, long_about = LONG_ABOUT, term_width = 80)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Use this VM's volumes from phoenix_vm_configs.json instead of "mounts"
    #[arg(long, global = true, value_name = "VMID")]
    vmid: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// systemd generator: write one .mount unit per volume into NORMAL
    Generate {
        /// Generator directory for normal-priority units
        normal: PathBuf,
        /// Early directory (unused)
        early: Option<PathBuf>,
        /// Late directory (unused)
        late: Option<PathBuf>,
    },
    /// Mount every volume now; one already mounted from its source is left
    Apply {
        /// Bound of one mount command, seconds
        #[arg(long, value_name = "S", default_value_t = 60)]
        timeout: u64,
    },
    /// Exit 1 listing every volume that is not mounted as configured
    Check {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// systemd runs a generator as `NAME NORMAL EARLY LATE`: with a first
/// argument that is a path, `generate` is implied.
pub fn generator_args(argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first_is_dir = argv
        .get(1)
        .is_some_and(|a| a.as_encoded_bytes().first() == Some(&b'/'));
    if first_is_dir {
        let mut v = argv;
        v.insert(1, "generate".into());
        v
    } else {
        argv
    }
}

/// The configuration file this invocation reads, for `SourcePath=`.
fn config_source(common: &Common) -> PathBuf {
    common
        .config
        .clone()
        .or_else(|| std::env::var_os("PHOENIX_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

impl Args {
    /// Set up logging and signals, then run the subcommand.
    pub fn run(self) -> Result<()> {
        self.common.init("phoenix-mount");
        let config: Config = self.common.load_config()?;
        let mut source = std::path::absolute(config_source(&self.common))?;
        if let Some(id) = self.vmid {
            source = std::path::absolute(config.vm_configs_path())?;
            log::debug!("volumes of VM {id} from '{}'", source.display());
        }
        let volumes = mount::volumes(&config, self.vmid)?;
        match self.command {
            Command::Generate { normal, .. } => {
                if !normal.is_dir() {
                    return Err(err(
                        Kind::Config,
                        format!("generator directory '{}' does not exist", normal.display()),
                    ));
                }
                let written = mount::generate(&volumes, &normal, &source, Path::new("/etc/fstab"))?;
                log::debug!("{} mount unit(s) written", written.len());
                mount::ca_wait_dropin(&normal, &config.ca.guest_state_dir, &source)?;
                Ok(())
            }
            Command::Apply { timeout } => {
                if volumes.is_empty() {
                    log::info!("no volumes configured: nothing to mount");
                }
                let opts = ApplyOptions {
                    timeout: Duration::from_secs(timeout.max(1)),
                };
                mount::apply(&volumes, &opts)
            }
            Command::Check { json } => mount::check(&volumes, json, &mut std::io::stdout().lock()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_invocation_implies_generate() {
        let argv = |v: &[&str]| {
            v.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        let a = generator_args(argv(&["phoenix-mount", "/run/g", "/run/e", "/run/l"]));
        let a = Args::try_parse_from(a).unwrap();
        assert!(matches!(a.command, Command::Generate { .. }));
        let a = generator_args(argv(&["phoenix-mount", "check"]));
        assert!(matches!(
            Args::try_parse_from(a).unwrap().command,
            Command::Check { json: false }
        ));
    }
}
