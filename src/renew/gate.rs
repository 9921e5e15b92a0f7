//! The CA readiness gate of a run: nothing is issued or renewed before
//! the CA's readiness token of its current generation is in place.
//!
//! At the CA container's pre-start the host begins a new generation (and
//! removes the token); the CA publishes a token of it once it answers.
//! Until then the CA at `ca.url` may be the previous instance going down,
//! or one still starting, and a token left by an earlier boot proves
//! nothing. The timer, the sync and a run by hand are not ordered after
//! the CA: each run checks for itself, before its first call to the CA,
//! and one that finds it not ready exits 75 having touched nothing (its
//! unit's retry, or the next timer run, tries again).
//!
//! The token is read in the host's view of the state directory
//! (`ca.state_dir`), which the CA container writes: through
//! [`crate::guestdir`], as [`token::check_host`] does. An empty `ca.ready`
//! of the old bash managers, or a token with no `ca.generation` to hold it
//! against, is taken only if the CA answers `/health`, as `phoenix-ca
//! wait` takes it.

use std::time::Duration;

use anyhow::Result;

use crate::ca::{token, Health, Verdict};
use crate::config::Config;
use crate::exit::{err, Kind};

/// Ok when the CA is ready to issue; else a temporary error (exit 75)
/// saying what is missing.
pub fn check(config: &Config) -> Result<()> {
    let paths = config.ca.host_paths();
    let verdict = token::check_host(&paths);
    let why = match &verdict {
        Verdict::Fresh(t) => {
            log::debug!(
                "the CA is ready: token of generation {} in '{}'",
                token::short(&t.generation),
                paths.ready.display()
            );
            return Ok(());
        }
        v if v.needs_health() => {
            let health = Health {
                url: config.ca.url.clone(),
                root: paths.root_cert.clone(),
                timeout: Duration::from_secs(config.ca.health_timeout_secs),
            };
            match health.check() {
                Ok(()) => {
                    log::warn!("accepting {} because the CA answers /health", v.describe());
                    return Ok(());
                }
                Err(e) => format!("{}; CA unhealthy: {e}", v.describe()),
            }
        }
        v => v.describe(),
    };
    Err(err(
        Kind::TempFail,
        format!(
            "the CA is not ready: {why} ('{}'); nothing issued or renewed, retry later",
            paths.ready.display()
        ),
    ))
}
