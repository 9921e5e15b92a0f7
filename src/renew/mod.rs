//! Certificate renewal (`phoenix-renew`): for each certificate of the
//! manifest, issue, renew or leave it, install the new pair atomically with
//! the right owner and modes, deliver it into the guest when its
//! post-renewal action expects it there, and run that action.
//!
//! One run at a time (the `renew` lock). One certificate failing does not
//! stop the others, nor does an entry the manifest check refuses. Nothing
//! is issued or renewed before the CA's readiness token of its current
//! generation is in place ([`gate`]). Exit status, the first that
//! applies: 128+N a stop request (signal N); 75 the CA is not ready, it
//! (or its state) is unreachable, or another run holds the lock: retry
//! later; 2 a manifest entry was refused (the others were handled),
//! or the manifest or configuration is unusable (nothing touched); 1 a
//! certificate failed, or is held back by the backoff (due, missing or
//! not valid); 0 every selected certificate is valid, installed and not
//! past its threshold.
//!
//! A stop request (SIGTERM, SIGINT, SIGHUP, SIGQUIT) ends the running
//! `step` or `qm` and the run; it is not the certificate's failure: no
//! failure or backoff is recorded for it.
//!
//! On a Proxmox cluster (see `docs/cluster.md` and [`crate::cluster`])
//! each node handles the certificates of the guests that run on it, as
//! pmxcfs's `.vmlist` places them: one of a guest on another node is
//! skipped with a line naming that node; one of a guest on no node is a
//! failure. Each certificate is handled under its own cluster-wide lock
//! (`phoenix-renew-<name>-<hash>`), and under it the guest's node is
//! looked up again and the certificate assessed again: the timers of all
//! nodes firing together, or a guest migrating during a run, never have
//! one certificate renewed twice, nor by a node its guest has left. A node
//! without quorum renews nothing (75).

pub mod deliver;
pub mod gate;
pub mod install;
pub mod legacy;
pub mod manifest;
pub mod plan;
pub mod post;
pub mod retire;
pub mod state;
pub mod status;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cert::{self, Action, Root};
use crate::cluster::{Cluster, Placement};
use crate::config::Config;
use crate::exit::{err, kind_of, Kind};
use crate::proxmox::{Proxmox, RunState};
use crate::step::Step;
use crate::{cluster, lock, signal};

use manifest::{BadEntry, Entry, Manifest, PostAction};
use state::{Outcome, State};

/// Options of `phoenix-renew run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Beyond what is due: `--renew-now` or `--force`.
    pub urge: plan::Urge,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// With `dry_run`: also ask the CA's health and whether it takes the
    /// provisioner and its password, issuing nothing.
    pub check_ca: bool,
    /// Only these certificates (by common name); empty: all.
    pub only: Vec<String>,
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What `--only` selects.
#[derive(Debug)]
pub struct Selection<'a> {
    /// Valid entries, in manifest order.
    pub entries: Vec<&'a Entry>,
    /// Refused entries, in manifest order.
    pub refused: Vec<&'a BadEntry>,
}

/// The entries `only` selects (all when empty); an unknown name is a
/// usage error. A refused entry left out by `only` is only warned about.
pub fn select<'a>(m: &'a Manifest, only: &[String]) -> Result<Selection<'a>> {
    for name in only {
        let known =
            m.entries.iter().any(|e| &e.name == name) || m.bad.iter().any(|b| &b.name == name);
        if !known {
            return Err(err(
                Kind::Config,
                format!(
                    "--only {name}: no such certificate in '{}'",
                    m.path.display()
                ),
            ));
        }
    }
    let wanted = |name: &String| only.is_empty() || only.contains(name);
    let mut refused = Vec::new();
    for b in &m.bad {
        if wanted(&b.name) {
            log::error!("{}: refused: {}", b.name, b.error);
            refused.push(b);
        } else {
            log::warn!("{}: not selected, and refused: {}", b.name, b.error);
        }
    }
    Ok(Selection {
        entries: m.entries.iter().filter(|e| wanted(&e.name)).collect(),
        refused,
    })
}

/// Read our root: without it nothing can be judged. Missing means the CA
/// state is not there (storage not mounted yet): retry later.
pub fn load_root(config: &Config) -> Result<Root> {
    let path = config.ca.host_paths().root_cert;
    cert::read_root(&path).map_err(|e| {
        let kind = if path.exists() {
            Kind::Failed
        } else {
            Kind::TempFail
        };
        err(kind, format!("{e:#}"))
    })
}

fn step_for(config: &Config) -> Step {
    let paths = config.ca.host_paths();
    Step {
        program: "step".into(),
        ca_url: config.ca.url.clone(),
        root: paths.root_cert,
        provisioner: config.ca.provisioner.clone(),
        password_file: paths.provisioner_password,
        timeout: Duration::from_secs(config.renewal.command_timeout_secs),
    }
}

fn proxmox_for(config: &Config) -> Proxmox {
    Proxmox::with_command_timeout(config.renewal.command_timeout_secs)
}

/// `phoenix-renew run`.
pub fn run(config: &Config, opts: &RunOptions) -> Result<()> {
    for w in retire::warnings(config) {
        log::warn!("{w}");
    }
    let manifest = manifest::load(config)?;
    for e in &manifest.entries {
        for w in &e.warnings {
            log::warn!("{}: {w}", e.name);
        }
    }
    let selection = select(&manifest, &opts.only)?;
    let entries = &selection.entries;
    if entries.is_empty() && !selection.refused.is_empty() {
        // Nothing valid to do: no lock, no CA state, no state file.
        return outcome(&selection, &[], &[], &[]);
    }
    let mut cluster = Cluster::load(config)?;
    if cluster.clustered {
        log::debug!(
            "node '{}' of a cluster: handling the certificates of its guests",
            cluster.node
        );
    }
    if opts.dry_run {
        return run_with(config, opts, &manifest, &selection, &mut cluster);
    }
    cluster.check_quorum()?;
    // One run per node (the local lock); each certificate then takes its
    // own cluster-wide lock, so the nodes work side by side.
    let wait = Duration::from_secs(config.renewal.lock_wait_secs);
    let _lock = lock::lock_at(&config.lock_dir, "renew", wait)?;
    let result = run_with(config, opts, &manifest, &selection, &mut cluster);
    // Under the lock still: the record and the metrics of this run.
    record(config, &result);
    result
}

/// Record how a run ended in the state file, and write the metrics file.
/// Neither can change the run's result: a failure is a warning.
fn record(config: &Config, result: &Result<()>) {
    let t = now();
    let mut state = State::load(&config.state_dir);
    let previous = state.last_run.take().unwrap_or_default();
    let ca_down = matches!(result, Err(e) if kind_of(e) == Kind::TempFail);
    state.last_run = Some(state::RunRecord {
        finished: t,
        exit_code: crate::metrics::exit_code(result),
        ca_unavailable_since: ca_down.then(|| previous.ca_unavailable_since.unwrap_or(t)),
        error: result
            .as_ref()
            .err()
            .map(|e| state::last_error(&format!("{e:#}"))),
    });
    if let Err(e) = state.save() {
        log::warn!("recording the run in the renewal state: {e:#}");
    }
    let Some(path) = &config.renewal.metrics_file else {
        return;
    };
    crate::metrics::write_textfile(path, || {
        Ok(status::report_prometheus(&status::report(config)?))
    });
}

/// The run proper, under the lock (or a dry run without it).
fn run_with(
    config: &Config,
    opts: &RunOptions,
    manifest: &Manifest,
    selection: &Selection,
    cluster: &mut Cluster,
) -> Result<()> {
    let entries = &selection.entries;
    if entries.is_empty() {
        // An empty manifest is a success, not a CA to wait for (the sync's
        // renewal step would otherwise retry it, then fail the sync).
        log::info!("no certificate in the manifest: nothing to do");
        return outcome(selection, &[], &[], &[]);
    }
    let root = load_root(config)?;
    let mut state = State::load(&config.state_dir);
    state.cap_backoffs(now());
    let started = std::time::Instant::now();
    let planned = plan::plan(
        entries,
        &root,
        &state,
        now(),
        config.renewal.threshold,
        config.renewal.spread_secs,
        opts.urge,
    );
    log::debug!(
        "planned {} certificates in {:.1}ms",
        planned.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let placements: Vec<Placement> = entries
        .iter()
        .map(|e| cluster.placement(e.guest.kind, e.guest.id))
        .collect();
    if opts.dry_run {
        print_plan(entries, &planned, &placements, &selection.refused);
        if opts.check_ca {
            check_ca(config, &root, entries[0])?;
        }
        return outcome(selection, &planned, &[], &[]);
    }
    // Before the first call to the CA: its token of the current
    // generation in place, else exit 75 with nothing touched.
    let here = |i: usize| placements[i] == Placement::Here;
    if planned
        .iter()
        .enumerate()
        .any(|(i, p)| here(i) && p.action() != Action::Nothing)
    {
        gate::check(config)?;
    }
    crate::fsutil::remove_stale_temps(&State::path_in(&config.state_dir));

    let step = step_for(config);
    let px = proxmox_for(config);
    let cmd_timeout = Duration::from_secs(config.renewal.command_timeout_secs);
    let mut failed = Vec::new();
    let mut held_back = Vec::new();
    let mut ca_down: Option<anyhow::Error> = None;
    // Held by another node past `cluster.lock_wait_secs`: that node works
    // on it; not a failure here.
    let mut busy: Vec<String> = Vec::new();
    // A configuration error step reports (wrong provisioner password,
    // unknown provisioner, a lifetime above the CA's maximum) is the same
    // for every certificate: said once, the rest not tried, no backoff.
    let mut misconfigured: Option<anyhow::Error> = None;
    for (i, (entry, p)) in entries.iter().zip(&planned).enumerate() {
        if signal::received().is_some() {
            break;
        }
        if let Some(why) = elsewhere(entry, &placements[i], cluster) {
            match why {
                Ok(line) => log::info!("{line}"),
                Err(line) => {
                    log::error!("{line}");
                    failed.push(entry.name.clone());
                }
            }
            continue;
        }
        let mine = state.entry(&entry.name).clone();
        if let Some(until) = p.deferred_until {
            let line = format!(
                "{}: {} ({} failure(s) in a row; next attempt after {}, or --force)",
                entry.name,
                p.assessment.reason,
                mine.failures,
                status::time(until)
            );
            // Held back, the run does not end well: a certificate past
            // its threshold, missing, expired or not what the manifest
            // asks is what the operator must hear of on every run, not
            // only on the run that failed (the unit stays failed).
            log::error!("{line}");
            held_back.push(entry.name.clone());
            continue;
        }
        let action = p.action();
        if action != Action::Nothing && ca_down.is_some() {
            log::warn!(
                "{}: {} skipped: the CA is unreachable or unavailable",
                entry.name,
                action
            );
            continue;
        }
        if action != Action::Nothing && misconfigured.is_some() {
            log::warn!(
                "{}: {} skipped: the configuration error above",
                entry.name,
                action
            );
            continue;
        }
        // The certificate's cluster-wide lock (none on a single host: the
        // local one is held). Without quorum the run stops here: nothing
        // more is renewed.
        let (cert_lock, fresh) = match lock_certificate(entry, cluster) {
            Ok(Locked::Go(l)) => (l, None),
            Ok(Locked::Moved(Ok(line))) => {
                log::info!("{line} (it moved during this run)");
                continue;
            }
            Ok(Locked::Moved(Err(line))) => {
                log::error!("{line}");
                failed.push(entry.name.clone());
                continue;
            }
            Ok(Locked::Busy(e)) => {
                log::warn!("{}: skipped: {e:#}", entry.name);
                busy.push(entry.name.clone());
                continue;
            }
            Ok(Locked::Replan(l)) => {
                let l = Some(l);
                // Under the lock: what the files say now (another node may
                // have renewed it a moment ago, before its guest came here).
                let again = plan::plan(
                    &[*entry],
                    &root,
                    &state,
                    now(),
                    config.renewal.threshold,
                    config.renewal.spread_secs,
                    opts.urge,
                );
                (l, again.into_iter().next())
            }
            Err(e) => {
                state.save().context("saving the renewal state")?;
                if let Err(also) = outcome(selection, &planned, &failed, &held_back) {
                    log::error!("{also}");
                }
                return Err(e.context(crate::exit::Error::new(
                    Kind::TempFail,
                    "certificates left as they are: no cluster lock can be taken",
                )));
            }
        };
        let p = fresh.as_ref().unwrap_or(p);
        let action = p.action();
        if p.deferred_until.is_some() {
            // Deferred since the plan (a failure recorded meanwhile).
            continue;
        }
        // Clear what a killed run left half-done, and mark the post-renewal
        // action pending *before* the pair can change: a run killed after
        // the install but before its action still gets the action run by
        // the next one (an extra reload is harmless, a missed one is not).
        install::remove_stale_temps(entry);
        if action != Action::Nothing && !mine.post_pending {
            state.entry(&entry.name).post_pending = true;
            state.save().context("saving the renewal state")?;
        }
        let result = handle(
            entry,
            p,
            &step,
            &root,
            &px,
            config,
            manifest,
            mine.post_pending,
            cmd_timeout,
        );
        // A stop request ends the step or qm call under way: what it
        // broke is not the certificate's failure (no failure, no backoff).
        let stopped = signal::received().is_some();
        let st = state.entry(&entry.name);
        // The memo describes the key planned from; a new key is derived
        // afresh next time (its digest differs).
        st.key_memo = p.key_memo.clone();
        let did_work = action != Action::Nothing || mine.post_pending;
        match result {
            Ok((_, Post::Failed(e))) if stopped => {
                // The pair changed; its action did not finish: pending.
                log::warn!(
                    "{}: stopped before the post-renewal action finished ({e:#}); \
                     it stays pending for the next run",
                    entry.name
                );
                st.post_pending = true;
            }
            Err(e) if stopped => {
                log::warn!(
                    "{}: stopped ({e:#}); the files are as they were, nothing is \
                     recorded against the certificate",
                    entry.name
                );
                st.post_pending = mine.post_pending;
            }
            Ok((_, Post::Failed(e))) => {
                log::error!("{}: {e:#}", entry.name);
                st.post_failed(&format!("{e:#}"), now());
                failed.push(entry.name.clone());
            }
            Ok((outcome, Post::GuestNotRunning(guest_state))) => {
                let t = now();
                let since = st.waiting_for_guest(outcome, &guest_state, t);
                let bound = config.renewal.pending_max_secs as i64;
                let line = format!(
                    "{}: {} is {guest_state}: the pair is installed on the host; delivery and \
                     the post-renewal action wait until it runs (pending since {})",
                    entry.name,
                    entry.guest,
                    status::time(since)
                );
                if t - since >= bound {
                    log::error!(
                        "{line}, as long as renewal.pending_max_secs allows ({bound} s): start the \
                         guest, or take the entry out of the manifest"
                    );
                    failed.push(entry.name.clone());
                } else {
                    log::warn!("{line}");
                }
            }
            Ok((outcome, Post::Done)) => st.succeeded(outcome, now()),
            Err(e) if kind_of(&e) == Kind::TempFail => {
                log::error!("{}: {e:#}", entry.name);
                st.post_pending = mine.post_pending;
                ca_down = Some(e);
            }
            Err(e) if kind_of(&e) == Kind::Config => {
                log::error!("{}: {e:#}", entry.name);
                st.post_pending = mine.post_pending;
                misconfigured = Some(e);
            }
            Err(e) => {
                log::error!("{}: {e:#}", entry.name);
                st.post_pending = mine.post_pending;
                st.failed(&format!("{e:#}"), now());
                failed.push(entry.name.clone());
            }
        }
        if did_work {
            state.save().context("saving the renewal state")?;
        }
        if let Some(l) = cert_lock.as_ref().filter(|l| !l.held()) {
            log::error!(
                "{}: its cluster lock '{}' expired while this node worked on it (not \
                 refreshed for {} s): another node may have handled it too",
                entry.name,
                l.path().display(),
                cluster::cfs_lock::LOCK_TIMEOUT.as_secs()
            );
        }
    }
    state.save().context("saving the renewal state")?;
    if !busy.is_empty() {
        log::warn!(
            "{} certificate(s) left to whoever holds their cluster lock: {}",
            busy.len(),
            busy.join(", ")
        );
    }
    // A stop request wins over everything: systemd asked, and gets 128+N.
    signal::check()?;
    if let Some(e) = misconfigured {
        if let Err(also) = outcome(selection, &planned, &failed, &held_back) {
            log::error!("{also}");
        }
        return Err(e.context(crate::exit::Error::new(
            Kind::Config,
            "certificates left as they are: the configuration stops every issuance and \
             renewal; fix it and run again",
        )));
    }
    if let Some(e) = ca_down {
        if let Err(also) = outcome(selection, &planned, &failed, &held_back) {
            log::error!("{also}");
        }
        return Err(e.context(crate::exit::Error::new(
            Kind::TempFail,
            "certificates left as they are: the CA is unreachable or unavailable; retry later",
        )));
    }
    outcome(selection, &planned, &failed, &held_back)
}

/// Why this node leaves `entry` alone, if it does: `Ok` a line for a
/// guest on another node (that node's run handles it), `Err` a failure
/// line for a guest on no node, or of another type than the manifest's.
fn elsewhere(
    entry: &Entry,
    placement: &Placement,
    cluster: &Cluster,
) -> Option<std::result::Result<String, String>> {
    let (name, guest) = (&entry.name, entry.guest);
    match placement {
        Placement::Here => None,
        Placement::Elsewhere(node) => Some(Ok(format!(
            "{name}: skipped: {guest} runs on node '{node}', whose run handles it"
        ))),
        Placement::Nowhere => Some(Err(format!(
            "{name}: {guest} is on no node of the cluster (not in '{}'): nothing can deliver \
             or act on its certificate; create the guest, or take the entry out of the manifest",
            cluster::vmlist::path_in(&cluster.pve_dir).display()
        ))),
        Placement::OtherType(kind, node) => Some(Err(format!(
            "{name}: the manifest says {guest}, but guest {} is of type '{kind}' (on node \
             '{node}'): fix the entry's guest_type",
            guest.id
        ))),
    }
}

/// A certificate's cluster-wide lock name: its name made safe, and a
/// hash of it (two names made alike stay two locks).
pub fn cert_lock_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = crate::digest::sha256_hex(name.as_bytes());
    format!(
        "phoenix-renew-{}-{}",
        safe.trim_start_matches('.'),
        &hash[..12]
    )
}

/// What taking a certificate's lock came to.
enum Locked {
    /// A single host: go on with the plan (the local lock is held).
    Go(Option<cluster::CfsLock>),
    /// Held on a cluster: assess it again, then go on.
    Replan(cluster::CfsLock),
    /// Its guest left this node (or every node) while the run went on:
    /// as [`elsewhere`] says.
    Moved(std::result::Result<String, String>),
    /// Another holds it past `cluster.lock_wait_secs`.
    Busy(anyhow::Error),
}

/// Take `entry`'s cluster-wide lock and look at its guest's node again
/// under it. `Err` only when nothing can be locked (no quorum, pmxcfs
/// gone): the run stops.
fn lock_certificate(entry: &Entry, cluster: &mut Cluster) -> Result<Locked> {
    if !cluster.clustered {
        return Ok(Locked::Go(None));
    }
    let lock = match cluster.lock(&cert_lock_name(&entry.name)) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(Locked::Go(None)),
        Err(e) if cluster::cfs_lock::is_held(&e) => return Ok(Locked::Busy(e)),
        Err(e) => return Err(e),
    };
    cluster.reload_vmlist()?;
    let placement = cluster.placement(entry.guest.kind, entry.guest.id);
    Ok(match elsewhere(entry, &placement, cluster) {
        None => Locked::Replan(lock),
        Some(line) => Locked::Moved(line),
    })
}

/// `--dry-run --check-ca`: what a run needs of the CA, asked without
/// issuing anything. Its `/health` (pinned to our root), then the
/// provisioner and its password: `step ca token` fetches the
/// provisioner's encrypted key from the CA and decrypts it with the
/// password file (into a private file, dropped: a token is a secret).
/// Errors as a run's: 75 unreachable, 2 with what to change.
fn check_ca(config: &Config, root: &Root, entry: &Entry) -> Result<()> {
    let timeout = Duration::from_secs(config.renewal.command_timeout_secs);
    crate::ca::health::check(&config.ca.url, root.pem.as_bytes(), timeout).map_err(|why| {
        err(
            Kind::TempFail,
            format!("the CA at {} is not healthy: {why}", config.ca.url),
        )
    })?;
    log::info!("the CA at {} answers /health: ok", config.ca.url);
    step_for(config).check_provisioner(&entry.name)?;
    log::info!(
        "the CA accepts provisioner '{}' with the password file (a token was made for {} \
         and dropped; nothing issued)",
        config.ca.provisioner,
        entry.name
    );
    Ok(())
}

/// The end of a run: 2 when an entry was refused, 1 when a certificate
/// failed or is held back, else 0; the message names them.
fn outcome(
    selection: &Selection,
    planned: &[plan::Planned],
    failed: &[String],
    held_back: &[String],
) -> Result<()> {
    let total = planned.len() + selection.refused.len();
    let mut parts = Vec::new();
    if !selection.refused.is_empty() {
        let names: Vec<&str> = selection.refused.iter().map(|b| b.name.as_str()).collect();
        parts.push(format!(
            "{} of {total} refused by the manifest check (fix the manifest): {}",
            names.len(),
            names.join(", ")
        ));
    }
    if !failed.is_empty() {
        parts.push(format!(
            "{} of {total} certificate(s) failed: {}",
            failed.len(),
            failed.join(", ")
        ));
    }
    if !held_back.is_empty() {
        parts.push(format!(
            "{} of {total} due, missing or not valid, and held back by the failure backoff (--force to retry now): {}",
            held_back.len(),
            held_back.join(", ")
        ));
    }
    if parts.is_empty() {
        return Ok(());
    }
    let kind = if selection.refused.is_empty() {
        Kind::Failed
    } else {
        Kind::Config
    };
    Err(err(kind, parts.join("; ")))
}

/// Do what the plan says for one entry. Returns what happened, and how
/// delivery and the post-renewal action went.
#[allow(clippy::too_many_arguments)]
fn handle(
    entry: &Entry,
    p: &plan::Planned,
    step: &Step,
    root: &Root,
    px: &Proxmox,
    config: &Config,
    manifest: &Manifest,
    post_pending: bool,
    cmd_timeout: Duration,
) -> Result<(Outcome, Post)> {
    let lifetime = config.renewal.lifetime.0;
    let (outcome, info) = match p.action() {
        Action::Nothing => {
            for fix in install::ensure_modes(entry)? {
                log::warn!("{}: fixed owner/mode: {fix}", entry.name);
            }
            if let Some(info) = &p.assessment.current {
                if install::ca_missing(entry) {
                    install::repair_ca(entry, root, info)?;
                }
            }
            if !post_pending {
                log::info!("{}: up to date", entry.name);
                return Ok((Outcome::Unchanged, Post::Done));
            }
            log::info!(
                "{}: up to date; running the post-renewal action left pending",
                entry.name
            );
            (Outcome::Unchanged, None)
        }
        Action::Renew => match install::renew(entry, step, root, config.renewal.threshold) {
            Ok(info) => (Outcome::Renewed, Some(info)),
            // Never fall back to issuing when the CA is down or we were
            // asked to stop (the stop killed the renewal).
            Err(e) if kind_of(&e) == Kind::TempFail || signal::received().is_some() => {
                return Err(e);
            }
            Err(e) => {
                log::warn!(
                    "{}: renewal failed ({e:#}); issuing a new certificate",
                    entry.name
                );
                (
                    Outcome::Issued,
                    Some(install::issue(
                        entry,
                        step,
                        root,
                        lifetime,
                        config.renewal.threshold,
                    )?),
                )
            }
        },
        Action::Issue => {
            log::info!("{}: issuing ({})", entry.name, p.assessment.reason);
            (
                Outcome::Issued,
                Some(install::issue(
                    entry,
                    step,
                    root,
                    lifetime,
                    config.renewal.threshold,
                )?),
            )
        }
    };
    if let Some(info) = &info {
        log::info!(
            "{}: {} serial {}, valid until {}",
            entry.name,
            if outcome == Outcome::Issued {
                "issued"
            } else {
                "renewed"
            },
            info.serial,
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(info.not_after.max(0) as u64)
            )
        );
    }
    // Delivery and action succeed or stay pending together: a failed
    // delivery is retried, with the action, by the next run.
    let post = deliver::run(entry, px, &config.renewal.guest_drop_dir)
        .with_context(|| {
            format!(
                "delivering the new files of {} into {} (post-renewal action not run)",
                entry.name, entry.guest
            )
        })
        .and_then(|()| {
            let bounds = post::Bounds {
                command: cmd_timeout,
                update: Duration::from_secs(config.swarm.update_timeout_secs),
            };
            post::run_in(entry, px, &manifest.path, bounds, Some(&config.state_dir)).with_context(
                || format!("post-renewal action for {} in {}", entry.name, entry.guest),
            )
        });
    let post = match post {
        Ok(()) => Post::Done,
        // A guest that is not running (stopped by its operator, or not
        // started yet) cannot take the files or run the action: the pair
        // is installed on the host, and delivery and action wait for it,
        // pending, without failing the run (the old bash skipped it with
        // a warning). Asked only after a failure: no extra `qm`/`pct`
        // call on the common path.
        Err(e) => match entry.post {
            PostAction::Guest(_) | PostAction::Legacy(_) | PostAction::None => {
                match px.status(entry.guest) {
                    Ok(RunState::Other(state)) => Post::GuestNotRunning(state),
                    _ => Post::Failed(e),
                }
            }
            PostAction::SwarmSecrets(_) => Post::Failed(e),
        },
    };
    Ok((outcome, post))
}

/// How delivery and the post-renewal action went.
#[derive(Debug)]
enum Post {
    /// Done, or nothing to do.
    Done,
    /// Failed: pending for the next run.
    Failed(anyhow::Error),
    /// The guest is not running (its state as `qm`/`pct status` says):
    /// pending until it runs.
    GuestNotRunning(String),
}

fn print_plan(
    entries: &[&Entry],
    planned: &[plan::Planned],
    placements: &[Placement],
    refused: &[&BadEntry],
) {
    println!("{:<40} {:<8} {:<8} REASON", "NAME", "GUEST", "ACTION");
    for ((e, p), at) in entries.iter().zip(planned).zip(placements) {
        let (action, reason) = match (at, p.deferred_until) {
            (Placement::Elsewhere(node), _) => (
                "skip".to_string(),
                format!("{} runs on node '{node}'", e.guest),
            ),
            (Placement::Nowhere | Placement::OtherType(..), _) => (
                "fail".to_string(),
                "its guest is on no node of the cluster, or of another type".to_string(),
            ),
            (Placement::Here, d) => match d {
                Some(t) => (
                    "deferred".to_string(),
                    format!(
                        "{} (backoff until {})",
                        p.assessment.reason,
                        status::time(t)
                    ),
                ),
                None => (p.action().to_string(), p.assessment.reason.clone()),
            },
        };
        println!(
            "{:<40} {:<8} {:<8} {}",
            e.name,
            e.guest.to_string(),
            action,
            reason
        );
    }
    for b in refused {
        println!(
            "{:<40} {:<8} {:<8} {}",
            b.name,
            b.guest.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            "refused",
            b.error
        );
    }
}
