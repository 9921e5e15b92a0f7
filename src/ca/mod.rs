//! The Step-CA readiness protocol: invalidate (new generation), publish
//! (write the token once the CA answers `/health`), wait (bounded, for a
//! fresh token and a healthy CA), status. Publish also copies the public
//! part (token, generation, root certificate, fingerprint) into the state
//! directory's `public/` ([`public`]), the directory dependents should
//! mount instead of the whole state with its secrets.
//!
//! Health is checked natively ([`health`]): one HTTPS GET of `/health`
//! pinned to the CA's root, what `step ca health --root FILE` does. It
//! used to run `step`, a Go process started for every check: most of the
//! guest chain's latency (publish to Docker started), and it made `step`
//! a requirement of every VM. `step` stays where certificates are issued.

pub mod health;
pub mod public;
pub mod token;
pub mod wait;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::digest::sha256_hex;
use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{CaPaths, Config};
use crate::exec::Cmd;
use crate::exit::{err, Kind};
use crate::fsutil::{self, FileOptions};
use crate::signal;
pub use token::{Generation, Token, Verdict};
use wait::DirWatch;

/// How the CA's health is checked.
#[derive(Debug, Clone)]
pub struct Health {
    /// The CA's URL.
    pub url: String,
    /// Root certificate the connection is pinned to.
    pub root: PathBuf,
    /// Deadline of one check.
    pub timeout: Duration,
}

impl Health {
    /// Ask the CA once, natively ([`health::check`]: what `step ca
    /// health` does, without a Go process). `Err` says why it is not
    /// healthy.
    ///
    /// The root lives in the CA state directory, which the CA container
    /// writes: it is read by our bounded reader (no link followed, only a
    /// plain file, at most 1 MiB), so a root replaced by `/dev/zero` or a
    /// huge file fails this check at once, naming the file.
    pub fn check(&self) -> Result<(), String> {
        let root =
            crate::guestdir::read_file(&self.root, crate::step::ROOT_LIMIT).map_err(|e| {
                format!(
                    "reading the CA root certificate '{}': {e}",
                    self.root.display()
                )
            })?;
        health::check(&self.url, &root, self.timeout)
    }
}

/// The state directory `phoenix-ca` uses when none is given: the host's
/// view on a Proxmox node (`/etc/pve` exists), the guests' view elsewhere.
pub fn default_state_dir(config: &Config) -> PathBuf {
    if Path::new("/etc/pve").is_dir() {
        config.ca.state_dir.clone()
    } else {
        config.ca.guest_state_dir.clone()
    }
}

/// SHA-256 fingerprint (hex) of the first certificate in a PEM file, as
/// `step certificate fingerprint` prints it.
pub fn fingerprint_of(root: &Path) -> Result<String> {
    let bytes = read_root(root)?;
    fingerprint_of_pem(&bytes, root)
}

fn read_root(root: &Path) -> Result<Vec<u8>> {
    fsutil::read_limited(root, crate::step::ROOT_LIMIT)
        .with_context(|| format!("reading root certificate '{}'", root.display()))
}

/// [`fingerprint_of`] for the content `bytes` of the file `root`.
fn fingerprint_of_pem(bytes: &[u8], root: &Path) -> Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes)
        .map_err(|e| anyhow::anyhow!("root certificate '{}' is not PEM: {e}", root.display()))?;
    pem.parse_x509().map_err(|e| {
        anyhow::anyhow!("root certificate '{}' does not parse: {e}", root.display())
    })?;
    Ok(sha256_hex(&pem.contents))
}

/// Read a fingerprint file: `Ok(None)` when absent, an error when present
/// but not a fingerprint.
pub fn read_fingerprint_file(path: &Path) -> Result<Option<String>> {
    match fsutil::read_limited(path, 4096) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).trim().to_lowercase();
            if token::is_fingerprint(&text) {
                Ok(Some(text))
            } else {
                Err(err(
                    Kind::Config,
                    format!(
                        "fingerprint file '{}' does not hold 64 hex digits",
                        path.display()
                    ),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading '{}'", path.display())),
    }
}

/// Start a new generation: write `ca.generation`, then remove `ca.ready`
/// (old bash waiters that only test for the file keep waiting too). A
/// token of the old generation is stale from the first step on. The
/// same in `public/`, if the CA made one (never created here: it is the
/// CA guest's directory); one that is not a directory is an error.
pub fn invalidate(paths: &CaPaths) -> Result<Generation> {
    if !paths.dir.is_dir() {
        return Err(err(
            Kind::Failed,
            format!(
                "CA state directory '{}' does not exist",
                paths.dir.display()
            ),
        ));
    }
    let generation = token::new_generation()?;
    token::write_generation(&paths.generation, &generation)?;
    let public = public::invalidate(paths, &generation)
        .context("updating the public copy of the generation");
    let removed = remove_token(&paths.ready)?;
    let public = public?;
    log::info!(
        "new CA generation {} in '{}'{}{}",
        token::short(&generation.generation),
        paths.dir.display(),
        if public { " and its public/" } else { "" },
        if removed {
            "; old readiness token removed"
        } else {
            ""
        }
    );
    Ok(generation)
}

/// Withdraw the readiness token (the CA stops): `ca.ready` and its copy
/// in `public/`. Whether either was there.
pub fn withdraw(paths: &CaPaths) -> Result<bool> {
    let main = remove_token(&paths.ready);
    let public = public::withdraw(paths);
    Ok(main? | public?)
}

/// Remove a readiness token from the CA guest's directory (the host does
/// it): through its directory handle, a link removed, never followed.
fn remove_token(path: &Path) -> Result<bool> {
    crate::guestdir::remove_file(path).with_context(|| format!("removing '{}'", path.display()))
}

/// Options of [`publish`].
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// URL written into the token (and checked, with `health`).
    pub ca_url: String,
    /// Root certificate: fingerprint source and health-check pin.
    pub root: PathBuf,
    /// Fingerprint given explicitly.
    pub fingerprint: Option<String>,
    /// Wait for `/health` before publishing.
    pub health: bool,
    /// Bound of that wait.
    pub timeout: Duration,
    /// Deadline of one health check.
    pub health_timeout: Duration,
}

/// Wait for the CA to answer `/health`, then write the token atomically
/// (and the fingerprint file, if absent). The public copies (generation,
/// root certificate, fingerprint, token) go to `public/` first, so a
/// failure there leaves no token saying "ready" anywhere.
pub fn publish(paths: &CaPaths, opts: &PublishOptions) -> Result<Token> {
    let fingerprint = resolve_fingerprint(paths, opts)?;
    if opts.health {
        let health = Health {
            url: opts.ca_url.clone(),
            root: opts.root.clone(),
            timeout: opts.health_timeout,
        };
        wait_healthy(&health, opts.timeout)?;
    }
    let generation = match token::read_generation(&paths.generation) {
        Ok(Some(g)) => g,
        Ok(None) => {
            let g = token::new_generation()?;
            token::write_generation(&paths.generation, &g)?;
            log::info!("no generation yet: started {}", token::short(&g.generation));
            g
        }
        Err(why) => {
            return Err(err(
                Kind::Failed,
                format!("cannot read the CA generation: {why}"),
            ))
        }
    };
    let token = Token {
        version: token::TOKEN_VERSION,
        generation: generation.generation.clone(),
        ca_url: opts.ca_url.clone(),
        fingerprint: fingerprint.clone(),
        written_at: token::now_rfc3339(),
    };
    signal::check()?;
    let root_pem = public_root(&opts.root, &fingerprint);
    public::publish(paths, &generation, root_pem.as_deref(), &token)
        .context("publishing the public copies")?;
    token::write_token(&paths.ready, &token)?;
    // An invalidate that ran meanwhile may have had its new generation in
    // public/ overwritten by the copy above: carry the current one over,
    // so the public token is exactly as stale as the state directory's.
    if let Ok(Some(now)) = token::read_generation(&paths.generation) {
        if now.generation != token.generation {
            log::warn!(
                "a new generation {} began while publishing {}: this token is stale",
                token::short(&now.generation),
                token::short(&token.generation)
            );
            public::invalidate(paths, &now)?;
        }
    }
    if read_fingerprint_file(&paths.fingerprint)?.is_none() {
        fsutil::write_atomic(
            &paths.fingerprint,
            format!("{fingerprint}\n").as_bytes(),
            FileOptions::mode(0o644),
        )?;
    }
    log::info!(
        "published readiness token for generation {} ({})",
        token::short(&token.generation),
        paths.ready.display()
    );
    Ok(token)
}

/// The root certificate to copy into `public/`: the one at `root` if it
/// reads, parses and has the published fingerprint (a root that does not
/// match the token would only make dependents' checks fail: warned about
/// and not copied).
fn public_root(root: &Path, fingerprint: &str) -> Option<Vec<u8>> {
    let bytes = match read_root(root) {
        Ok(b) => b,
        Err(e) => {
            log::info!("no root certificate copied to public/: {e:#}");
            return None;
        }
    };
    match fingerprint_of_pem(&bytes, root) {
        Ok(fp) if fp == fingerprint => Some(bytes),
        Ok(fp) => {
            log::warn!(
                "root certificate '{}' has fingerprint {}, not the published {}: \
                 not copied to public/",
                root.display(),
                token::short(&fp),
                token::short(fingerprint)
            );
            None
        }
        Err(e) => {
            log::warn!("root certificate not copied to public/: {e:#}");
            None
        }
    }
}

fn resolve_fingerprint(paths: &CaPaths, opts: &PublishOptions) -> Result<String> {
    if let Some(fp) = &opts.fingerprint {
        let fp = fp.trim().to_lowercase();
        if !token::is_fingerprint(&fp) {
            return Err(err(
                Kind::Config,
                format!("--fingerprint '{fp}' is not 64 hex digits"),
            ));
        }
        return Ok(fp);
    }
    if let Some(fp) = read_fingerprint_file(&paths.fingerprint)? {
        return Ok(fp);
    }
    if opts.root.exists() {
        return fingerprint_of(&opts.root).map_err(|e| err(Kind::Config, format!("{e:#}")));
    }
    Err(err(
        Kind::Config,
        format!(
            "no root fingerprint: give --fingerprint, or provide '{}' or the root certificate '{}'",
            paths.fingerprint.display(),
            opts.root.display()
        ),
    ))
}

/// Poll `health` until it passes or `timeout` runs out (exit 124).
pub fn wait_healthy(health: &Health, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        signal::check()?;
        match health.check() {
            Ok(()) => return Ok(()),
            Err(why) => {
                if why != last {
                    let line = format!("CA at {} not healthy yet: {why}", health.url);
                    log::info!("{line}");
                    crate::notify::status(&line);
                    last = why;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(err(
                Kind::Timeout,
                format!(
                    "CA at {} not healthy after {}: {last}",
                    health.url,
                    humantime::format_duration(timeout)
                ),
            ));
        }
        signal::sleep(Duration::from_millis(200).min(deadline - Instant::now()));
    }
}

/// Options of [`wait_ready`].
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Bound of the whole wait.
    pub timeout: Duration,
    /// Poll interval (inotify may wake earlier).
    pub interval: Duration,
    /// Health check to pass as well; `None` trusts the token alone.
    pub health: Option<Health>,
    /// Use inotify where available.
    pub inotify: bool,
}

/// What a successful wait found.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The token, if it was one (a legacy empty file has none).
    pub token: Option<Token>,
    /// How long the wait took.
    pub waited: Duration,
}

/// Wait until the token is fresh (and the CA healthy, if asked). Exit 124
/// at the bound with a message saying what was missing.
pub fn wait_ready(paths: &CaPaths, opts: &WaitOptions) -> Result<Ready> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    // Made only once a look found the CA not ready: a CA that is ready
    // already (a guest booting after it) needs no watch, and closing one
    // waits for its teardown (an SRCU grace period, 2-3 ms here). Made,
    // the token is looked at once more before anything is said or awaited,
    // so that a token renamed in between the first look and the watch is
    // not missed.
    let mut watch: Option<DirWatch> = None;
    let watch_dir = || {
        let w = DirWatch::new(&paths.dir, opts.inotify);
        log::debug!(
            "waiting for '{}' ({}, every {} ms)",
            paths.ready.display(),
            if w.uses_inotify() {
                "inotify and polling"
            } else {
                "polling"
            },
            opts.interval.as_millis()
        );
        w
    };
    let mut last = String::new();
    let mut next_progress = started + Duration::from_secs(10);
    loop {
        signal::check()?;
        let verdict = token::check(paths);
        let may_be_ready = verdict.is_fresh() || (opts.health.is_some() && verdict.needs_health());
        if watch.is_none() && !may_be_ready {
            watch = Some(watch_dir());
            continue;
        }
        if opts.health.is_some() && may_be_ready {
            // Likely the last look: the watch's teardown overlaps the
            // health check rather than delaying the exit. With no health
            // check to overlap, the watch is left to the close at exit: a
            // watch removed just before the close made the close wait
            // longer (p90 7.9 ms against 0.9 ms, benches/ca_wait_latency.py).
            if let Some(w) = watch.as_mut() {
                w.suspend();
            }
        }
        let why = match (&verdict, &opts.health) {
            (Verdict::Fresh(t), None) => return Ok(ready(Some(t.clone()), started)),
            (Verdict::Fresh(t), Some(h)) => match h.check() {
                Ok(()) => return Ok(ready(Some(t.clone()), started)),
                Err(e) => format!("token fresh, but the CA is unhealthy: {e}"),
            },
            (v, Some(h)) if v.needs_health() => match h.check() {
                Ok(()) => {
                    log::warn!("accepting {} because the CA answers /health", v.describe());
                    let token = match v {
                        Verdict::Unverified(t, _) => Some(t.clone()),
                        _ => None,
                    };
                    return Ok(ready(token, started));
                }
                Err(e) => format!("{}; CA unhealthy: {e}", v.describe()),
            },
            (v, None) if v.needs_health() => {
                format!("{} and health checks are off", v.describe())
            }
            (v, _) => v.describe(),
        };
        let now = Instant::now();
        if why != last || now >= next_progress {
            let left = deadline.saturating_duration_since(now);
            let line = format!(
                "waiting for the CA: {why} ({}s left)",
                left.as_millis().div_ceil(1000)
            );
            log::info!("{line}");
            crate::notify::status(&line);
            last = why;
            next_progress = now + Duration::from_secs(10);
        }
        if now >= deadline {
            return Err(err(
                Kind::Timeout,
                format!(
                    "CA not ready after {}: {last} ('{}')",
                    humantime::format_duration(opts.timeout),
                    paths.ready.display()
                ),
            ));
        }
        // Not yet made when the first look found a token that the health
        // check then refused: made now, it bounds this wait like a
        // suspended one (the interval).
        watch
            .get_or_insert_with(watch_dir)
            .wait(opts.interval.min(deadline - now));
    }
}

fn ready(token: Option<Token>, started: Instant) -> Ready {
    let waited = started.elapsed();
    log::info!("CA ready after {} ms", waited.as_millis());
    Ready { token, waited }
}

/// Debian's directory of local trust anchors (`update-ca-certificates`).
pub const TRUST_DIR: &str = "/usr/local/share/ca-certificates";
/// The root's file name in it (`.crt`: update-ca-certificates takes only
/// those).
pub const TRUST_FILE: &str = "phoenix-root-ca.crt";

/// Trust the CA system-wide: the root certificate from the CA state
/// directory (`root`, read bounded, no link followed: the CA guest writes
/// that directory), checked against `fingerprint` (the readiness token's),
/// installed into [`TRUST_DIR`] and the bundle rebuilt with
/// `update-ca-certificates`. What `step ca bootstrap --install` did,
/// without `step` in the VM. Idempotent: nothing is written or run when the
/// installed root is already this one.
pub fn bootstrap(root: &Path, fingerprint: &str, timeout: Duration) -> Result<()> {
    bootstrap_into(
        root,
        fingerprint,
        Path::new(TRUST_DIR),
        "update-ca-certificates",
        timeout,
    )
}

/// [`bootstrap`] into `trust_dir`, rebuilding with `update`.
pub fn bootstrap_into(
    root: &Path,
    fingerprint: &str,
    trust_dir: &Path,
    update: &str,
    timeout: Duration,
) -> Result<()> {
    let bytes = crate::guestdir::read_file(root, crate::step::ROOT_LIMIT).map_err(|e| {
        err(
            Kind::Failed,
            format!("reading the CA root certificate '{}': {e}", root.display()),
        )
    })?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| anyhow::anyhow!("root certificate '{}' is not PEM: {e}", root.display()))?;
    pem.parse_x509().map_err(|e| {
        anyhow::anyhow!("root certificate '{}' does not parse: {e}", root.display())
    })?;
    let have = sha256_hex(&pem.contents);
    if !have.eq_ignore_ascii_case(fingerprint.trim()) {
        return Err(err(
            Kind::Failed,
            format!(
                "root certificate '{}' has fingerprint {}, the readiness token says {}: not trusted",
                root.display(),
                token::short(&have),
                token::short(fingerprint)
            ),
        ));
    }
    // Only that certificate, re-encoded: nothing else the file held.
    let text = crate::cert::pem_block("CERTIFICATE", &pem.contents);
    let target = trust_dir.join(TRUST_FILE);
    if fsutil::read_limited(&target, crate::step::ROOT_LIMIT)
        .ok()
        .as_deref()
        == Some(text.as_bytes())
    {
        log::info!("the CA's root {} is trusted already", token::short(&have));
        return Ok(());
    }
    fsutil::ensure_dir(trust_dir, 0o755)?;
    fsutil::write_atomic(&target, text.as_bytes(), fsutil::FileOptions::mode(0o644))?;
    Cmd::new(update)
        .timeout(timeout)
        .run_ok()
        .context("rebuilding the system's trusted certificates")?;
    log::info!(
        "the CA's root {} is trusted system-wide ('{}')",
        token::short(&have),
        target.display()
    );
    Ok(())
}

/// What `phoenix-ca status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The state directory looked at.
    pub state_dir: PathBuf,
    /// Current generation, if readable.
    pub generation: Option<Generation>,
    /// Why the generation is not shown, if it is not.
    pub generation_problem: Option<String>,
    /// The token, if it parsed.
    pub token: Option<Token>,
    /// The verdict in words.
    pub token_state: String,
    /// Whether the token is of the current generation.
    pub token_fresh: bool,
    /// Content of the fingerprint file.
    pub fingerprint: Option<String>,
    /// `ok`, the failure, or `not checked`.
    pub health: String,
    /// Fresh token (or legacy plus health) and a healthy CA.
    pub ready: bool,
}

/// Gather the status; `health` `None` skips the health check.
pub fn status(paths: &CaPaths, health: Option<&Health>) -> Status {
    let (generation, generation_problem) = match token::read_generation(&paths.generation) {
        Ok(Some(g)) => (Some(g), None),
        Ok(None) => (None, Some("no generation file".to_string())),
        Err(why) => (None, Some(why)),
    };
    let verdict = token::check(paths);
    let token = match &verdict {
        Verdict::Fresh(t) | Verdict::Unverified(t, _) => Some(t.clone()),
        _ => None,
    };
    let fingerprint = read_fingerprint_file(&paths.fingerprint).ok().flatten();
    let health_result = health.map(Health::check);
    let healthy = matches!(health_result, Some(Ok(())));
    let ready = match &health_result {
        None => verdict.is_fresh(),
        Some(_) => healthy && (verdict.is_fresh() || verdict.needs_health()),
    };
    Status {
        state_dir: paths.dir.clone(),
        generation,
        generation_problem,
        token_fresh: verdict.is_fresh(),
        token,
        token_state: verdict.describe(),
        fingerprint,
        health: match health_result {
            None => "not checked".into(),
            Some(Ok(())) => "ok".into(),
            Some(Err(e)) => e,
        },
        ready,
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dash = || "-".to_string();
        let rows = [
            ("state dir", self.state_dir.display().to_string()),
            (
                "generation",
                match (&self.generation, &self.generation_problem) {
                    (Some(g), _) => format!("{} (since {})", g.generation, g.created_at),
                    (None, Some(p)) => p.clone(),
                    _ => dash(),
                },
            ),
            ("token", self.token_state.clone()),
            (
                "token written",
                self.token
                    .as_ref()
                    .map(|t| t.written_at.clone())
                    .unwrap_or_else(dash),
            ),
            (
                "ca url",
                self.token
                    .as_ref()
                    .map(|t| t.ca_url.clone())
                    .unwrap_or_else(dash),
            ),
            ("fingerprint", self.fingerprint.clone().unwrap_or_else(dash)),
            ("health", self.health.clone()),
            ("ready", if self.ready { "yes" } else { "no" }.into()),
        ];
        for (k, v) in rows {
            writeln!(f, "{k:<14} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn invalidate_and_withdraw_never_follow_the_guests_links() {
        let root = tempfile::tempdir().unwrap();
        let host = root.path().join("host-file");
        std::fs::write(&host, "host\n").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = root.path().join("ssl");
        std::fs::create_dir(&dir).unwrap();
        let paths = crate::config::CaConfig::default().paths_in(&dir);
        // The CA guest planted links where the host writes and removes.
        symlink(&host, &paths.ready).unwrap();
        symlink(&host, &paths.generation).unwrap();
        invalidate(&paths).unwrap();
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "host\n");
        assert!(!paths.ready.exists() && std::fs::symlink_metadata(&paths.ready).is_err());
        let meta = std::fs::symlink_metadata(&paths.generation).unwrap();
        assert!(meta.is_file(), "the link was replaced by a new file");
        symlink(&host, &paths.ready).unwrap();
        assert!(withdraw(&paths).unwrap());
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "host\n");
        // A state directory that is itself a link is refused.
        let linked = root.path().join("linked");
        symlink(&dir, &linked).unwrap();
        let via = crate::config::CaConfig::default().paths_in(&linked);
        let e = invalidate(&via).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
    }
}
