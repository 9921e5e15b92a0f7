//! `phoenix-hook VMID PHASE`: the Proxmox hookscript's command line.

use clap::Parser;

use super::Common;
use crate::exit::{self, Kind};
use crate::hook::{self, Phase, Watchdog};
use crate::{logging, signal};

const ABOUT: &str = "Proxmox hookscript: storage, CA secrets and CA readiness per guest";

/// The long description of `--help` and the man page, with the exit statuses.
pub const LONG_ABOUT: super::LongAbout = super::LongAbout {
    text: "\
Proxmox hookscript: storage, CA secrets and CA readiness per guest.

Proxmox runs it as `phoenix-hook VMID PHASE` (set it with
`qm set VMID --hookscript local:snippets/phoenix-hook`, or `pct set`).

pre-start   CA guest: state dir on mounted storage, secrets not open to
            group or others (tightened to 0600 unless ca.fix_permissions
            is off), then a new generation: the old ca.ready goes stale.
            Container with bind mounts: every source on mounted storage,
            else the start is refused. guests.<id>.gate_on_ca: also wait,
            bounded, for the CA.
post-start  CA guest: wait, bounded by ca.post_start_timeout_secs, for the
            fresh ca.ready and a healthy CA.
pre-stop,   CA guest: withdraw ca.ready. Always exit 0.
post-stop

A guest the Phoenix configs do not know: nothing, exit 0. An unknown
phase: a warning, exit 0. Every phase has a hard deadline. Lines go to
stderr (the task log) and to syslog (ident phoenix-hook).",
    exit: &[
        (
            exit::OK,
            "also every stop phase, an unknown phase, a guest the Phoenix \
             configs do not know",
        ),
        (exit::FAILED, "the start is refused (pre-start)"),
        (exit::CONFIG, ""),
        (
            exit::TIMEOUT,
            "the CA not ready at the bound, or the hard deadline passed (a \
             start phase)",
        ),
        (exit::STOPPED, "while a start phase waits"),
    ],
};

/// Command line of `phoenix-hook`.
#[derive(Debug, Parser)]
#[command(name = "phoenix-hook", version, about = ABOUT, long_about = LONG_ABOUT, term_width = 80)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Guest ID, as Proxmox passes it
    #[arg(value_parser = clap::value_parser!(u32).range(1..))]
    vmid: u32,
    /// pre-start, post-start, pre-stop or post-stop
    phase: String,
}

/// The whole of `phoenix-hook`: parse `argv`, run the phase; the exit
/// status.
pub fn main<I, T>(argv: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match parse_args(argv) {
        Ok(args) => args.run(),
        Err(status) => status,
    }
}

/// Parse the command line; any usage error (a missing argument, a VMID
/// that is not a number) prints the error and the usage line and exits 2.
fn parse_args<I, T>(argv: I) -> Result<Args, u8>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    if let Some(args) = as_proxmox_calls(&argv, std::env::var_os("PHOENIX_CONFIG")) {
        return Ok(args);
    }
    match Args::try_parse_from(argv) {
        Ok(a) => Ok(a),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(0)
        }
        Err(e) => {
            let text = e.render().to_string();
            eprint!("{text}");
            if !text.contains("Usage:") {
                eprintln!("\n{}", Args::command().render_usage());
            }
            Err(Kind::Config.code())
        }
    }
}

/// `argv` parsed without clap when it is the one form Proxmox uses,
/// `phoenix-hook VMID PHASE`: a VMID of digits from 1 to 4294967295 with no
/// leading zero, a phase that is not an option, no option at all. These
/// give what clap gives (`as_proxmox_calls_is_what_clap_parses`); anything
/// else (an option, `--help`, a usage error) is left to clap (`None`).
/// Building clap's command, help texts included, was a tenth of the
/// hook's run (BENCHMARKS.md, "phoenix-hook").
///
/// `config`: `$PHOENIX_CONFIG` (clap's `env`), taken when set and not
/// empty; an empty one is left to clap.
fn as_proxmox_calls(
    argv: &[std::ffi::OsString],
    config: Option<std::ffi::OsString>,
) -> Option<Args> {
    let [_, vmid, phase] = argv else {
        return None;
    };
    let vmid = vmid.to_str()?;
    let phase = phase.to_str()?;
    if !vmid.bytes().all(|b| b.is_ascii_digit()) || vmid.starts_with('0') {
        return None;
    }
    let vmid: u32 = vmid.parse().ok()?;
    if phase.is_empty() || phase.starts_with('-') {
        return None;
    }
    if config.as_ref().is_some_and(|c| c.is_empty()) {
        return None;
    }
    Some(Args {
        common: Common {
            config: config.map(Into::into),
            verbose: 0,
            quiet: false,
            syslog: false,
        },
        vmid,
        phase: phase.to_string(),
    })
}

impl Args {
    /// Log with `VMID PHASE: ` on every line (stderr and syslog), load the
    /// configuration, run the phase under its hard deadline.
    pub fn run(self) -> u8 {
        let mut opts = logging::Options::new("phoenix-hook");
        opts.verbosity = if self.common.quiet {
            -1
        } else {
            self.common.verbose as i8
        };
        opts.syslog = true;
        opts.prefix = format!("{} {}: ", self.vmid, self.phase);
        logging::init(&opts);
        signal::install();

        let Some(phase) = Phase::parse(&self.phase) else {
            log::warn!("unknown phase '{}': nothing to do", self.phase);
            return 0;
        };
        let config = match self.common.load_config() {
            Ok(c) => c,
            Err(e) if phase.is_stop() => {
                log::warn!("{e:#} (ignored: a stop phase never fails)");
                return 0;
            }
            Err(e) => return exit::report_status(&e),
        };
        let after = hook::deadline(&config, self.vmid, phase);
        let _watchdog = Watchdog::arm(
            after,
            format!(
                "{} {}: error: hard deadline of {}s passed: giving up rather than hang the task",
                self.vmid,
                self.phase,
                after.as_secs()
            ),
            if phase.is_stop() {
                0
            } else {
                Kind::Timeout.code()
            },
        );
        let result = hook::run(&config, self.vmid, phase);
        if phase.is_stop() {
            return 0;
        }
        exit::finish_status(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmid_must_be_a_positive_number() {
        assert!(Args::try_parse_from(["phoenix-hook", "103", "pre-start"]).is_ok());
        assert!(Args::try_parse_from(["phoenix-hook", "ct103", "pre-start"]).is_err());
        assert!(Args::try_parse_from(["phoenix-hook", "0", "pre-start"]).is_err());
        assert!(Args::try_parse_from(["phoenix-hook", "103"]).is_err());
        assert!(parse_args(["phoenix-hook", "x", "pre-start"]).is_err());
    }

    /// The parse without clap gives what clap gives, and leaves every
    /// other command line to it.
    #[test]
    fn as_proxmox_calls_is_what_clap_parses() {
        use std::ffi::OsString;
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["103", "pre-start"], None),
            (&["103", "post-stop"], Some("/etc/phoenix/other.json")),
            (&["4294967295", "pre-start"], None),
            (&["1", "pre-migrate"], None),
            (&["103", "pre start"], None),
        ];
        for (args, env) in cases {
            let argv: Vec<OsString> = std::iter::once("phoenix-hook")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect();
            let ours = as_proxmox_calls(&argv, env.map(OsString::from))
                .unwrap_or_else(|| panic!("{args:?} was left to clap"));
            let mut theirs = Args::try_parse_from(&argv).unwrap();
            // clap reads the variable itself: give it what ours was given.
            theirs.common.config = env.map(Into::into);
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{args:?}");
        }
        for args in [
            &["0", "pre-start"][..],
            &["0103", "pre-start"],
            &["+103", "pre-start"],
            &["4294967296", "pre-start"],
            &["ct103", "pre-start"],
            &["103", "-v"],
            &["103", ""],
            &["-v", "103", "pre-start"],
            &["103", "pre-start", "--quiet"],
            &["--help"],
            &["103"],
        ] {
            let argv: Vec<OsString> = std::iter::once("phoenix-hook")
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect();
            assert!(as_proxmox_calls(&argv, None).is_none(), "{args:?}");
        }
        let argv: Vec<OsString> = ["phoenix-hook", "103", "pre-start"]
            .map(OsString::from)
            .to_vec();
        assert!(as_proxmox_calls(&argv, Some(OsString::new())).is_none());
    }
}
