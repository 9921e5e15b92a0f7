//! The exit-code contract shared by every binary, and the small typed error
//! that carries a kind through an `anyhow` chain to `main`.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | ok |
//! | 1    | failed |
//! | 2    | usage or configuration error (permanent: do not retry) |
//! | 75   | temporary failure, retry later (`EX_TEMPFAIL`; includes "lock busy") |
//! | 124  | timed out (as timeout(1)) |
//! | 128+N | stopped by signal N (SIGHUP 129, SIGINT 130, SIGQUIT 131, SIGTERM 143) |

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
    let mut causes = e.chain();
    if let Some(first) = causes.next() {
        log::error!("{first}");
    }
    for cause in causes {
        log::error!("  caused by: {cause}");
    }
    ExitCode::from(kind_of(e).code())
}

/// Map a library result to the process exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
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
    fn untyped_chain_is_failed() {
        let e = anyhow::anyhow!("boom");
        assert_eq!(kind_of(&e), Kind::Failed);
        assert_eq!(Kind::Config.code(), 2);
        assert_eq!(Kind::TempFail.code(), 75);
        assert_eq!(Kind::Interrupted(15).code(), 143);
    }
}
