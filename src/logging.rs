//! The `log` backend of every binary.
//!
//! Lines go to stderr. When stderr is the journal's stream (systemd sets
//! `JOURNAL_STREAM` to its `DEVICE:INODE`, and stderr's `fstat()` matches
//! it) each line starts with its sd-daemon priority (`<3>` error ... `<7>`
//! debug) so journald files it at the right level and adds the timestamp
//! itself; on a terminal, in a Proxmox task log, or redirected to a file by
//! a unit's child (which inherits `JOURNAL_STREAM`) the line is plain.
//! Where stderr goes nowhere durable (hookscripts), the same lines can also
//! go to syslog with the binary's name as ident.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::OnceLock;

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

/// The local syslog socket: journald's on a systemd host (a link to
/// `/run/systemd/journal/dev-log`), rsyslog's or syslog-ng's otherwise.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// `LOG_DAEMON` (syslog(3)): the facility of every line sent.
const FACILITY_DAEMON: u8 = 3;

/// Lines sent to the local syslog socket as glibc's syslog(3) sends them,
/// one datagram each: `<PRI>IDENT[PID]: MESSAGE`, without the RFC 3164
/// time stamp, which journald and rsyslog's imuxsock replace with the time
/// they received the line (journald's `syslog_skip_date` skips one if
/// present; imuxsock ignores it by default).
struct Syslog {
    socket: UnixDatagram,
    /// `IDENT[PID]: `
    tag: String,
}

impl Syslog {
    /// Connected to `path` ([`SYSLOG_SOCKET`]); `None` where there is none
    /// (a container without a syslog daemon: stderr still works).
    fn connect(path: &Path, ident: &str) -> Option<Syslog> {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(path).ok()?;
        Some(Syslog {
            socket,
            tag: format!("{ident}[{}]: ", std::process::id()),
        })
    }

    /// Send one line; a full or vanished socket loses it (stderr has it).
    fn send(&self, level: Level, text: &str) {
        let pri = FACILITY_DAEMON * 8 + priority(level);
        let _ = self
            .socket
            .send(format!("<{pri}>{}{text}", self.tag).as_bytes());
    }
}

struct Logger {
    level: LevelFilter,
    journal: bool,
    prefix: String,
    syslog: Option<Syslog>,
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
    let syslog = opts
        .syslog
        .then(|| Syslog::connect(Path::new(SYSLOG_SOCKET), &opts.ident))
        .flatten();
    let logger = Logger {
        level,
        journal: stderr_is_journal(),
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

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` names the
/// device and inode of the stream systemd connected, and only a stderr with
/// the same ones is it (systemd.exec(5)). The variable alone is not enough:
/// children inherit it, also with their stderr sent elsewhere.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(nix::libc::STDERR_FILENO) else {
        return false;
    };
    // dev_t and ino_t are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
    journal_stream_matches(&value, dev, ino)
}

/// Parse a `JOURNAL_STREAM` value, `DEVICE:INODE` in decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    // Digits only: u64's parser would also take a leading '+'.
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((number(dev)?, number(ino)?))
}

/// Whether `JOURNAL_STREAM`'s `value` names the stream whose `fstat()` gave
/// `dev` and `ino`. A value that does not parse names nothing.
fn journal_stream_matches(value: &std::ffi::OsStr, dev: u64, ino: u64) -> bool {
    value
        .to_str()
        .and_then(parse_journal_stream)
        .is_some_and(|named| named == (dev, ino))
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
            syslog.send(record.level(), &text);
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_syslog_line_is_priority_ident_pid_and_text() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let s = Syslog::connect(&path, "phoenix-hook").unwrap();
        let mut buf = [0u8; 256];
        for (level, pri) in [
            (Level::Error, 27),
            (Level::Warn, 28),
            (Level::Info, 30),
            (Level::Debug, 31),
        ] {
            s.send(level, "101 pre-start: a line");
            let n = daemon.recv(&mut buf).unwrap();
            assert_eq!(
                std::str::from_utf8(&buf[..n]).unwrap(),
                format!(
                    "<{pri}>phoenix-hook[{}]: 101 pre-start: a line",
                    std::process::id()
                )
            );
        }
        assert!(Syslog::connect(&d.path().join("none"), "x").is_none());
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("0:1"), Some((0, 1)));
        assert_eq!(
            parse_journal_stream("18446744073709551615:7"),
            Some((u64::MAX, 7))
        );
        for bad in [
            "",
            "1",
            ":",
            "8:",
            ":5",
            "8:5:1",
            "8 :5",
            "+8:5",
            "-8:5",
            "8:x",
            "0x8:5",
            "18446744073709551616:1",
        ] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_named_stream_is_the_journal() {
        assert!(journal_stream_matches(OsStr::new("25:4711"), 25, 4711));
        // The same inode on another device, another inode on the device.
        assert!(!journal_stream_matches(OsStr::new("25:4711"), 26, 4711));
        assert!(!journal_stream_matches(OsStr::new("25:4711"), 25, 4712));
        // Set but empty or garbled (a hand-made environment): no prefix.
        assert!(!journal_stream_matches(OsStr::new(""), 0, 0));
        assert!(!journal_stream_matches(OsStr::new("yes"), 25, 4711));
        use std::os::unix::ffi::OsStrExt;
        assert!(!journal_stream_matches(
            OsStr::from_bytes(b"25:47\xff"),
            25,
            47
        ));
    }
}
