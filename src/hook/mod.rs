//! `phoenix-hook VMID PHASE`: the Proxmox hookscript.
//!
//! Proxmox runs it at `pre-start` (a non-zero exit aborts the start),
//! `post-start`, `pre-stop` and `post-stop` (non-zero only warns), with no
//! timeout of its own, while the start task holds the guest's config lock
//! (so nothing here calls `qm set`/`pct set`). One hookscript may serve
//! every guest:
//!
//! - the CA guest (`ca.guest_id`), pre-start: its bind mounts and state
//!   directory sit on mounted storage (as `storage.cfg` defines it), its
//!   secrets are not open to group or others, then a new generation (the
//!   old readiness token goes stale); a warning when other onboot guests
//!   start beside or before it ([`onboot`]), and when, in a cluster, its
//!   hookscript is on storage the other nodes do not share ([`cluster`]);
//! - the CA guest, post-start: wait, bounded, for the fresh token and a
//!   healthy CA, so Proxmox's onboot order starts the guests of a higher
//!   startup order only then (those of the CA's own order start beside
//!   it: [`onboot`]);
//! - a container with bind mounts, pre-start: every source sits on mounted
//!   storage, else the start is refused; a mount that hands the guest the
//!   CA's secrets (the whole state directory rather than its `public/`) is
//!   warned about; with `guests.<id>.gate_on_ca`, also wait, bounded, for
//!   the CA;
//! - pre-stop/post-stop: idempotent clean-up, always exit 0 (the CA guest's
//!   readiness token is withdrawn: a stopped CA is not ready);
//! - any other guest: nothing, at once, reading only what that takes.
//!
//! Every phase runs under a hard deadline ([`Watchdog`]): a hook never
//! hangs a start task, even on a file system that stopped answering.

pub mod cluster;
pub mod exposure;
pub mod onboot;
pub mod secrets;
pub mod storage;

use std::time::Duration;

use anyhow::Result;

use crate::ca::{self, Health, WaitOptions};
use crate::config::Config;
use crate::exit::{err, kind_of, Kind};
use crate::mount::mountinfo::MountTable;
use crate::phoenix::{self, Lxc};
use storage::Storages;

/// Time a phase gets beyond its configured waits before the watchdog
/// ends it (file checks, one last health check).
pub const MARGIN: Duration = Duration::from_secs(20);

/// Poll interval of the hook's waits (inotify wakes earlier where the CA's
/// writes reach this host's VFS, as they do through a container's bind
/// mount).
const WAIT_INTERVAL: Duration = Duration::from_millis(250);

/// A phase Proxmox runs the hookscript in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the guest starts; a failure aborts the start.
    PreStart,
    /// After the guest started.
    PostStart,
    /// Before the guest stops.
    PreStop,
    /// After the guest stopped.
    PostStop,
}

impl Phase {
    /// The phase Proxmox names `name`, if it is one.
    pub fn parse(name: &str) -> Option<Phase> {
        match name {
            "pre-start" => Some(Phase::PreStart),
            "post-start" => Some(Phase::PostStart),
            "pre-stop" => Some(Phase::PreStop),
            "post-stop" => Some(Phase::PostStop),
            _ => None,
        }
    }

    /// Whether a failure here must never become a non-zero exit.
    pub fn is_stop(self) -> bool {
        matches!(self, Phase::PreStop | Phase::PostStop)
    }
}

/// Ends the process if the phase is still running after its deadline.
/// Dropping it disarms it.
///
/// `alarm(2)` and a SIGALRM handler, not a thread: a hook that has
/// nothing to do ends in about a millisecond, and a thread (its stack, two
/// context switches) was a good part of that. The handler does only what
/// is safe in a signal handler: it writes the message prepared at arming
/// and calls `_exit(2)`. A process has one alarm: one watchdog at a time.
pub struct Watchdog {
    _private: (),
}

/// The expiry's message and exit code, set before the alarm is armed.
static EXPIRY: std::sync::OnceLock<(Vec<u8>, i32)> = std::sync::OnceLock::new();

extern "C" fn expire(_: nix::libc::c_int) {
    if let Some((msg, code)) = EXPIRY.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer
        // was written before the alarm was armed and is never changed.
        unsafe {
            nix::libc::write(2, msg.as_ptr().cast(), msg.len());
            nix::libc::_exit(*code);
        }
    }
}

impl Watchdog {
    /// Write `message` (a line, to stderr) and end the process with
    /// `code` once `after` has passed (rounded up to whole seconds),
    /// unless the watchdog is dropped first.
    pub fn arm(after: Duration, message: String, code: u8) -> Watchdog {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let mut line = message.into_bytes();
        line.push(b'\n');
        // The first arming wins; a later one (only tests arm twice) keeps
        // the first message.
        let _ = EXPIRY.set((line, i32::from(code)));
        let action = SigAction::new(
            SigHandler::Handler(expire),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only calls async-signal-safe functions.
        if let Err(e) = unsafe { sigaction(Signal::SIGALRM, &action) } {
            log::warn!("no hard deadline: cannot handle SIGALRM: {e}");
            return Watchdog { _private: () };
        }
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        nix::unistd::alarm::set(secs.clamp(1, u64::from(u32::MAX)) as u32);
        Watchdog { _private: () }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        nix::unistd::alarm::cancel();
    }
}

/// The bound of everything `phase` may wait for, for `vmid`.
pub fn wait_bound(config: &Config, vmid: u32, phase: Phase) -> Duration {
    let secs = match phase {
        Phase::PostStart if vmid == config.ca.guest_id => config.ca.post_start_timeout_secs,
        Phase::PreStart => gate_timeout(config, vmid).map_or(0, |d| d.as_secs()),
        _ => 0,
    };
    Duration::from_secs(secs)
}

/// The hard deadline of `phase`: its waits, a health check, and [`MARGIN`].
pub fn deadline(config: &Config, vmid: u32, phase: Phase) -> Duration {
    wait_bound(config, vmid, phase) + Duration::from_secs(config.ca.health_timeout_secs) + MARGIN
}

/// The CA gate of a dependent guest, if it has one.
fn gate_timeout(config: &Config, vmid: u32) -> Option<Duration> {
    if vmid == config.ca.guest_id {
        return None;
    }
    let g = config.guests.get(&vmid).filter(|g| g.gate_on_ca)?;
    Some(Duration::from_secs(
        g.gate_timeout_secs
            .unwrap_or(config.ca.post_start_timeout_secs),
    ))
}

/// Run `phase` for `vmid`. Stop phases never fail (their errors are
/// logged); the caller maps an `Err` to the exit code contract.
pub fn run(config: &Config, vmid: u32, phase: Phase) -> Result<()> {
    let result = match phase {
        Phase::PreStart => pre_start(config, vmid),
        Phase::PostStart if vmid == config.ca.guest_id => ca_post_start(config),
        Phase::PostStart => {
            log::debug!("not the CA guest: nothing to do after start");
            Ok(())
        }
        Phase::PreStop | Phase::PostStop => stop(config, vmid),
    };
    match result {
        Err(e) if phase.is_stop() => {
            log::warn!("{e:#} (ignored: a stop phase never fails)");
            Ok(())
        }
        r => r,
    }
}

fn health(config: &Config) -> Health {
    Health {
        url: config.ca.url.clone(),
        root: config.ca.host_paths().root_cert,
        timeout: Duration::from_secs(config.ca.health_timeout_secs),
    }
}

fn wait_for_ca(config: &Config, timeout: Duration) -> Result<()> {
    let opts = WaitOptions {
        timeout,
        interval: WAIT_INTERVAL,
        health: Some(health(config)),
        inotify: true,
    };
    ca::wait_ready(&config.ca.host_paths(), &opts).map(|_| ())
}

fn pre_start(config: &Config, vmid: u32) -> Result<()> {
    let is_ca = vmid == config.ca.guest_id;
    let gate = gate_timeout(config, vmid);
    let lxc_path = config.lxc_configs_path();
    let ct: Option<Lxc> = phoenix::read_lxc_config(&lxc_path, vmid)?;
    let name = match (&ct, is_ca) {
        (Some(ct), true) => format!("CA container {vmid} ({})", ct.name),
        (None, true) => format!("CA guest {vmid}"),
        (Some(ct), false) => format!("container {vmid} ({})", ct.name),
        (None, false) => {
            // Only for the message: a VM has no bind mounts to check.
            match phoenix::read_vm_name(&config.vm_configs_path(), vmid)? {
                Some(vm) => format!("VM {vmid} ({vm})"),
                None if gate.is_some() => format!("guest {vmid}"),
                None => {
                    log::info!("guest not in the Phoenix configs: nothing to do");
                    return Ok(());
                }
            }
        }
    };
    if is_ca {
        warn_onboot_order(config, vmid);
        if let Some(w) = cluster::hookscript_warning(&config.pve_dir, vmid) {
            log::warn!("{w}");
        }
    }
    let sources: Vec<_> = ct
        .iter()
        .flat_map(|c| c.mount_points.iter().map(|m| m.host_path.clone()))
        .collect();
    if sources.is_empty() && !is_ca && gate.is_none() {
        log::info!("{name}: no bind mounts, no CA gate: nothing to check");
        return Ok(());
    }
    let table = MountTable::read()?;
    let storages = Storages::load(
        &config.pve_dir.join("storage.cfg"),
        &config.storage_root,
        &config.required_mounts,
    )?;
    for w in &storages.warnings {
        log::warn!("{}: {w}", config.pve_dir.join("storage.cfg").display());
    }
    if storages.from_storage_cfg() {
        log::debug!("{}", storages.describe_source());
    } else {
        log::info!("{}", storages.describe_source());
    }
    let mut problems = Vec::new();
    for src in &sources {
        match storages.check(&table, "bind mount source", src) {
            Ok(what) => log::info!("{what}"),
            Err(why) => {
                log::error!("{name}: {why}");
                problems.push(why);
            }
        }
    }
    if is_ca {
        ca_checks(config, &table, &storages, &mut problems)?;
    } else if let Some(ct) = &ct {
        warn_exposed_secrets(config, &name, ct, &storages);
    }
    if !problems.is_empty() {
        return Err(err(
            Kind::Failed,
            format!(
                "refusing to start {name}: {} problem{} (see above)",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    if is_ca {
        ca::invalidate(&config.ca.host_paths())?;
    }
    if let Some(timeout) = gate {
        log::info!(
            "{name}: waiting up to {} for the CA (guests.{vmid}.gate_on_ca)",
            humantime::format_duration(timeout)
        );
        wait_for_ca(config, timeout).map_err(|e| {
            let kind = kind_of(&e);
            e.context(err(
                kind,
                format!("refusing to start {name}: the CA is not ready"),
            ))
        })?;
    }
    log::info!("{name} may start");
    Ok(())
}

/// The CA's state directory and secrets; problems that must stop the start
/// are pushed onto `problems`.
fn ca_checks(
    config: &Config,
    table: &MountTable,
    storages: &Storages,
    problems: &mut Vec<String>,
) -> Result<()> {
    let dir = &config.ca.state_dir;
    // The CA container writes the state directory: it is opened as the
    // secrets check opens it, with no link followed on the way.
    match storages.check(table, "CA state directory", dir) {
        Ok(what) => match crate::guestdir::Dir::open(dir) {
            Ok(_) => log::info!("{what}"),
            Err(e) => {
                let why = format!(
                    "CA state directory '{}' is not a directory ({e})",
                    dir.display()
                );
                log::error!("{why}");
                problems.push(why);
                return Ok(());
            }
        },
        Err(why) => {
            log::error!("{why}");
            problems.push(why);
            return Ok(());
        }
    }
    let fix = config.ca.fix_permissions;
    let findings = secrets::check(&secrets::secret_paths(&config.ca, dir), fix)
        .map_err(|e| anyhow::anyhow!("checking the CA secrets in '{}': {e}", dir.display()))?;
    for f in findings {
        match f.fixed_to {
            Some(to) => log::warn!(
                "CA secret '{}' was mode {:04o}, open to group or others: tightened to {to:04o}",
                f.path.display(),
                f.mode
            ),
            None => {
                let why = format!(
                    "CA secret '{}' is mode {:04o}, open to group or others \
                     (ca.fix_permissions is off: fix it by hand)",
                    f.path.display(),
                    f.mode
                );
                log::error!("{why}");
                problems.push(why);
            }
        }
    }
    Ok(())
}

/// Warn when other onboot guests of this node start beside or before the
/// CA guest `vmid` (a warning only: the start goes on).
fn warn_onboot_order(config: &Config, vmid: u32) {
    let (guests, skipped) = onboot::guests(&config.pve_dir);
    for s in skipped {
        log::warn!("guest config {s}: skipped in the onboot order check");
    }
    match onboot::warning(&guests, vmid) {
        Some(w) => log::warn!("{w}"),
        None => log::debug!("onboot order: no other onboot guest starts with or before the CA"),
    }
}

/// Warn about each bind mount of a dependent container that exposes the
/// CA's secrets (a warning only: such setups worked before, and the fix,
/// mounting `public/`, is the operator's).
fn warn_exposed_secrets(config: &Config, name: &str, ct: &Lxc, storages: &Storages) {
    let secrets = secrets::secret_paths(&config.ca, &config.ca.state_dir);
    let mounts = ct
        .mount_points
        .iter()
        .map(|m| (m.host_path.as_path(), m.container_path.as_path()));
    for found in exposure::check(mounts, &secrets, storages) {
        log::warn!(
            "{name}: {found}; its root can read them. Bind-mount '{}' (the root \
             certificate, fingerprint and readiness token only) instead: see \
             docs/hook.md, \"The CA's public directory\"",
            ca::public::dir_of(&config.ca.state_dir).display()
        );
    }
}

fn ca_post_start(config: &Config) -> Result<()> {
    let timeout = Duration::from_secs(config.ca.post_start_timeout_secs);
    log::info!(
        "waiting up to {} for the CA's fresh readiness token and /health",
        humantime::format_duration(timeout)
    );
    wait_for_ca(config, timeout)
}

fn stop(config: &Config, vmid: u32) -> Result<()> {
    if vmid != config.ca.guest_id {
        log::debug!("not the CA guest: nothing to clean up");
        return Ok(());
    }
    let paths = config.ca.host_paths();
    if ca::withdraw(&paths)? {
        log::info!(
            "CA stopping: readiness token withdrawn from '{}' (and its public/)",
            paths.dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestConfig;
    use std::time::Instant;

    #[test]
    fn phases_parse() {
        assert_eq!(Phase::parse("pre-start"), Some(Phase::PreStart));
        assert_eq!(Phase::parse("post-stop"), Some(Phase::PostStop));
        assert_eq!(Phase::parse("pre-migrate"), None);
        assert!(Phase::PreStop.is_stop() && !Phase::PostStart.is_stop());
    }

    #[test]
    fn deadlines_follow_the_configured_waits() {
        let mut c = Config::default();
        c.ca.post_start_timeout_secs = 7;
        c.guests.insert(
            101,
            GuestConfig {
                gate_on_ca: true,
                gate_timeout_secs: Some(3),
                ..Default::default()
            },
        );
        c.guests.insert(
            102,
            GuestConfig {
                gate_on_ca: true,
                ..Default::default()
            },
        );
        let h = Duration::from_secs(c.ca.health_timeout_secs);
        assert_eq!(
            deadline(&c, 103, Phase::PostStart),
            Duration::from_secs(7) + h + MARGIN
        );
        assert_eq!(deadline(&c, 103, Phase::PreStart), h + MARGIN);
        assert_eq!(wait_bound(&c, 101, Phase::PreStart), Duration::from_secs(3));
        assert_eq!(wait_bound(&c, 102, Phase::PreStart), Duration::from_secs(7));
        assert_eq!(wait_bound(&c, 101, Phase::PostStart), Duration::ZERO);
        assert_eq!(wait_bound(&c, 999, Phase::PreStart), Duration::ZERO);
    }

    /// The child of [`watchdog_ends_the_process_at_its_deadline`]: a
    /// phase that hangs past its deadline.
    #[test]
    #[ignore = "run by watchdog_ends_the_process_at_its_deadline"]
    fn watchdog_child() {
        if std::env::var_os("PHOENIX_WATCHDOG_CHILD").is_none() {
            return;
        }
        let _w = Watchdog::arm(
            Duration::from_millis(1),
            "5 pre-start: error: hung".into(),
            99,
        );
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn watchdog_ends_the_process_at_its_deadline() {
        let started = Instant::now();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hook::tests::watchdog_child",
                "--ignored",
                "--nocapture",
            ])
            .env("PHOENIX_WATCHDOG_CHILD", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(99), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("5 pre-start: error: hung\n"),
            "{out:?}"
        );
        // One second (alarm's unit), not the child's thirty.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn dropped_watchdog_never_fires() {
        // Armed for a second, dropped at once: no alarm is left pending
        // (one that fired would end this test process with code 99).
        let w = Watchdog::arm(Duration::from_millis(1), "fired".into(), 99);
        drop(w);
        assert_eq!(
            nix::unistd::alarm::cancel(),
            None,
            "an alarm is still pending"
        );
    }
}
