//! The exit-code contract shared by every binary, and the small typed error
//! that carries a kind through an `anyhow` chain to `main`.
//!
//! The contract is one table, [`CONTRACT`]: each [`Status`] is a [`Kind`]'s
//! code (or, for [`STOPPED`], the stop signals' codes, 128 + the signal's
//! number) and what it means in every binary. Each binary's `--help` and man
//! page list the statuses it can end with from it (`cli::BINARIES`), and the
//! README's "Exit codes" table is checked against it (tests/cli_help.rs).

use std::fmt;
use std::process::ExitCode;

/// What went wrong, as far as a caller (or systemd) needs to branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A generic failure (exit 1).
    Failed,
    /// Bad arguments or configuration (exit 2).
    Config,
    /// Temporary: the CA is unreachable, a lock is held... (exit 75).
    TempFail,
    /// A bounded wait ran out (exit 124).
    Timeout,
    /// A stop request (SIGINT, SIGTERM, SIGHUP, SIGQUIT) arrived (exit 128 +
    /// signal).
    Interrupted(i32),
}

impl Kind {
    /// The process exit status for this kind.
    pub fn code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::Config => 2,
            Kind::TempFail => 75,
            Kind::Timeout => 124,
            Kind::Interrupted(sig) => (128 + sig).clamp(129, 255) as u8,
        }
    }
}

/// An exit status as the documentation shows it: its code (or codes) and
/// what it means in every binary. A binary says more about one in its
/// [`Documented`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The code, or the codes of one meaning (`129/130/131/143`).
    pub codes: &'static str,
    /// What it means, in every binary.
    pub meaning: &'static str,
}

/// Exit 0.
pub const OK: Status = Status {
    codes: "0",
    meaning: "ok",
};
/// [`Kind::Failed`].
pub const FAILED: Status = Status {
    codes: "1",
    meaning: "failed",
};
/// [`Kind::Config`].
pub const CONFIG: Status = Status {
    codes: "2",
    meaning: "usage or configuration error (permanent: do not retry)",
};
/// [`Kind::TempFail`].
pub const TEMPFAIL: Status = Status {
    codes: "75",
    meaning: "temporary failure, retry later (includes \"already running\")",
};
/// [`Kind::Timeout`].
pub const TIMEOUT: Status = Status {
    codes: "124",
    meaning: "timed out",
};
/// [`Kind::Interrupted`], for each of the stop signals, all handled alike.
pub const STOPPED: Status = Status {
    codes: "129/130/131/143",
    meaning: "stopped by SIGHUP/SIGINT/SIGQUIT/SIGTERM (128 + the signal's number)",
};

/// Every status of the contract, in order.
pub const CONTRACT: [Status; 6] = [OK, FAILED, CONFIG, TEMPFAIL, TIMEOUT, STOPPED];

/// One status a binary can exit with, and when, for that binary (`""`:
/// nothing to add to the contract's meaning).
pub type Documented = (Status, &'static str);

/// The line of `--help` and the man page for `doc`: the contract's meaning,
/// then the binary's words.
pub fn describe(doc: &Documented) -> String {
    match doc {
        (status, "") => status.meaning.to_string(),
        (status, when) => format!("{}: {when}", status.meaning),
    }
}

/// An error with a [`Kind`]. Put it at the root of a chain (`Err(Error::new(..))?`)
/// or attach it as context; [`kind_of`] finds it anywhere in the chain.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    msg: String,
}

impl Error {
    /// A new error of `kind` saying `msg`.
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    /// The kind of this error.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Shorthand for `anyhow::Error::new(Error::new(kind, msg))`.
pub fn err(kind: Kind, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Error::new(kind, msg))
}

/// The kind of an error chain: the outermost typed [`Error`] wins; a chain
/// with none is [`Kind::Failed`]. To re-tag an error with a new kind, add an
/// [`Error`] itself as context (`e.context(Error::new(kind, msg))`), not an
/// `anyhow::Error` made by [`err`]: anyhow can find a context of a concrete
/// type, not one hidden inside another `anyhow::Error`.
pub fn kind_of(e: &anyhow::Error) -> Kind {
    if let Some(outer) = e.downcast_ref::<Error>() {
        return outer.kind();
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<Error>().map(Error::kind))
        .unwrap_or(Kind::Failed)
}

/// Report an error chain on the log, one cause per line, and turn it into
/// the process exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(report_status(e))
}

/// [`report`], the exit status as a number (for a `main` that returns one).
pub fn report_status(e: &anyhow::Error) -> u8 {
    let mut causes = e.chain();
    if let Some(first) = causes.next() {
        log::error!("{first}");
    }
    for cause in causes {
        log::error!("  caused by: {cause}");
    }
    kind_of(e).code()
}

/// Map a library result to the process exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    ExitCode::from(finish_status(result))
}

/// [`finish`], the exit status as a number.
pub fn finish_status(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => report_status(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_is_found_under_context() {
        let e: anyhow::Error = Err::<(), _>(err(Kind::Timeout, "no token"))
            .context("waiting for the CA")
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::Timeout);
        assert_eq!(kind_of(&e).code(), 124);
    }

    #[test]
    fn a_typed_context_retags_the_chain() {
        let e = anyhow::anyhow!("connection refused")
            .context(Error::new(Kind::TempFail, "CA unreachable"));
        assert_eq!(kind_of(&e), Kind::TempFail);
        let e = err(Kind::Failed, "inner").context(Error::new(Kind::Timeout, "outer"));
        assert_eq!(kind_of(&e), Kind::Timeout);
    }

    #[test]
    fn the_documented_codes_are_the_kinds_codes() {
        let code = |k: Kind| k.code().to_string();
        assert_eq!(OK.codes, "0");
        assert_eq!(FAILED.codes, code(Kind::Failed));
        assert_eq!(CONFIG.codes, code(Kind::Config));
        assert_eq!(TEMPFAIL.codes, code(Kind::TempFail));
        assert_eq!(TIMEOUT.codes, code(Kind::Timeout));
        let mut stopped: Vec<(u8, &str)> = crate::signal::STOP_SIGNALS
            .iter()
            .map(|s| (Kind::Interrupted(*s as i32).code(), s.as_str()))
            .collect();
        stopped.sort();
        let codes: Vec<String> = stopped.iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(STOPPED.codes, codes.join("/"));
        let names: Vec<&str> = stopped.iter().map(|(_, n)| *n).collect();
        assert!(
            STOPPED
                .meaning
                .starts_with(&format!("stopped by {}", names.join("/"))),
            "{}",
            STOPPED.meaning
        );
        assert_eq!(describe(&(TIMEOUT, "")), "timed out");
        assert_eq!(
            describe(&(FAILED, "status: not ready")),
            "failed: status: not ready"
        );
    }

    #[test]
    fn untyped_chain_is_failed() {
        let e = anyhow::anyhow!("boom");
        assert_eq!(kind_of(&e), Kind::Failed);
        assert_eq!(Kind::Config.code(), 2);
        assert_eq!(Kind::TempFail.code(), 75);
        assert_eq!(Kind::Interrupted(15).code(), 143);
    }
}
