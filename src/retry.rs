//! Retrying a whole run after a temporary failure, inside one start job.
//!
//! systemd (252, Debian 12) fails a oneshot's start job at its first
//! non-zero exit even when `Restart=` will start it again, so whatever the
//! sync orders after a step (the renewal after the swarm, the deployment
//! after the renewal) is skipped for that boot by one exit 75: the lock
//! held by a run by hand, a VM's agent still silent, the CA still
//! starting. `--retry-for` keeps the retry inside the step instead: a run
//! that ends temporary (exit 75) is run again, with a backoff, until it
//! succeeds, fails for good, or the bound passes; only then does the step
//! end, with the last run's result. Every run the tools make is
//! idempotent, so running one again is safe; a run by hand that holds the
//! lock is waited out, then joined by a run that finds nothing left to do.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::exit::{kind_of, Kind};
use crate::signal;

/// The first pause after a temporary failure.
pub const FIRST: Duration = Duration::from_secs(5);
/// The longest pause between two runs.
pub const LONGEST: Duration = Duration::from_secs(60);

/// Run `run` until it does not fail temporarily, or `bound` has passed
/// (no new run starts after it; a run under way is not cut short). A zero
/// bound runs it once. `what` names the run in the log.
pub fn temporary<T>(what: &str, bound: Duration, mut run: impl FnMut() -> Result<T>) -> Result<T> {
    retry_with(what, bound, FIRST, &mut run)
}

fn retry_with<T>(
    what: &str,
    bound: Duration,
    first: Duration,
    run: &mut impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + bound;
    let mut pause = first;
    let mut attempt = 1u32;
    loop {
        let result = run();
        let e = match result {
            Err(e) if kind_of(&e) == Kind::TempFail => e,
            other => return other,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left < pause {
            if attempt > 1 {
                log::warn!(
                    "{what}: still failing temporarily after {attempt} runs in {}: giving up",
                    humantime::format_duration(bound)
                );
            }
            return Err(e);
        }
        log::warn!(
            "{what}: temporary failure ({e:#}); run {} in {}s ({}s of --retry-for left)",
            attempt + 1,
            pause.as_secs(),
            left.as_secs()
        );
        crate::notify::status(&format!(
            "{what}: temporary failure; run {} in {}s ({}s of --retry-for left)",
            attempt + 1,
            pause.as_secs(),
            left.as_secs()
        ));
        signal::sleep(pause);
        signal::check()?;
        pause = (pause * 2).min(LONGEST);
        attempt += 1;
    }
}

/// Parse `--retry-for` (`10min`, `90s`, `0`).
pub fn parse_bound(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like \"10min\" or \"90s\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::err;
    use std::cell::Cell;

    #[test]
    fn a_temporary_failure_is_run_again_until_it_passes() {
        let runs = Cell::new(0);
        let r = retry_with(
            "t",
            Duration::from_secs(5),
            Duration::from_millis(10),
            &mut || {
                runs.set(runs.get() + 1);
                if runs.get() < 3 {
                    Err(err(Kind::TempFail, "lock held"))
                } else {
                    Ok(runs.get())
                }
            },
        );
        assert_eq!(r.unwrap(), 3);
    }

    #[test]
    fn other_failures_and_the_bound_end_it() {
        let runs = Cell::new(0);
        let e = retry_with(
            "t",
            Duration::from_secs(5),
            Duration::from_millis(10),
            &mut || -> Result<()> {
                runs.set(runs.get() + 1);
                Err(err(Kind::Config, "bad"))
            },
        )
        .unwrap_err();
        assert_eq!((kind_of(&e), runs.get()), (Kind::Config, 1));
        runs.set(0);
        let e = retry_with("t", Duration::ZERO, FIRST, &mut || -> Result<()> {
            runs.set(runs.get() + 1);
            Err(err(Kind::TempFail, "down"))
        })
        .unwrap_err();
        assert_eq!((kind_of(&e), runs.get()), (Kind::TempFail, 1));
        runs.set(0);
        let e = retry_with(
            "t",
            Duration::from_millis(100),
            Duration::from_millis(20),
            &mut || -> Result<()> {
                runs.set(runs.get() + 1);
                Err(err(Kind::TempFail, "down"))
            },
        )
        .unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!((2..=4).contains(&runs.get()), "{} runs", runs.get());
    }

    #[test]
    fn bounds_parse() {
        assert_eq!(parse_bound("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_bound("0"), Ok(Duration::ZERO));
        assert!(parse_bound("soon").is_err());
    }
}
