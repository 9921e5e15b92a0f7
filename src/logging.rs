//! The `log` backend of every binary.
//!
//! Lines go to stderr. Under systemd (`JOURNAL_STREAM` set) each line starts
//! with its sd-daemon priority (`<3>` error ... `<7>` debug) so journald
//! files it at the right level and adds the timestamp itself; on a terminal
//! or in a Proxmox task log the line is plain. Where stderr goes nowhere
//! durable (hookscripts), the same lines can also go to syslog with the
//! binary's name as ident.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How a binary wants its log.
#[derive(Debug, Clone)]
pub struct Options {
    /// The syslog ident, normally the binary's name.
    pub ident: String,
    /// 0: info, 1: debug, 2 and more: trace. Negative: warnings only.
    pub verbosity: i8,
    /// Also send every line to syslog (`/dev/log`).
    pub syslog: bool,
    /// Put in front of every line, e.g. `103 pre-start: ` for the hook.
    pub prefix: String,
}

impl Options {
    /// Defaults for the binary `ident`.
    pub fn new(ident: &str) -> Self {
        Options {
            ident: ident.to_string(),
            verbosity: 0,
            syslog: false,
            prefix: String::new(),
        }
    }
}

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

struct Logger {
    level: LevelFilter,
    journal: bool,
    prefix: String,
    syslog: Option<Mutex<Syslog>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Install the logger. A second call is ignored (tests may call it often).
pub fn init(opts: &Options) {
    let level = match opts.verbosity {
        i8::MIN..=-1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let syslog = if opts.syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: opts.ident.clone(),
            pid: std::process::id(),
        };
        // No syslog socket (a container without one): stderr still works.
        syslog::unix(formatter).ok().map(Mutex::new)
    } else {
        None
    };
    let logger = Logger {
        level,
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        prefix: opts.prefix.clone(),
        syslog,
    };
    if LOGGER.set(logger).is_ok() {
        let logger = LOGGER.get().expect("just set");
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let text = format!("{}{}{}", self.prefix, tag, record.args());
        let mut err = std::io::stderr().lock();
        // One write per line so concurrent writers do not interleave.
        let line = if self.journal {
            format!("<{}>{}\n", priority(record.level()), text)
        } else {
            format!("{text}\n")
        };
        let _ = err.write_all(line.as_bytes());
        if let Some(syslog) = &self.syslog {
            if let Ok(mut s) = syslog.lock() {
                let _ = match record.level() {
                    Level::Error => s.err(&text),
                    Level::Warn => s.warning(&text),
                    Level::Info => s.info(&text),
                    Level::Debug | Level::Trace => s.debug(&text),
                };
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
