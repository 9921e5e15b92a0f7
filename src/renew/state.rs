//! Per-certificate memory between runs, `<state_dir>/renew-state.json`:
//! the last result and success, and the failure backoff (5 min doubling to
//! 6 h) that keeps a broken entry from hammering the CA or a guest every
//! hour. `--force` bypasses the backoff. The file is rewritten atomically
//! after each certificate, so a crash loses at most the current one.
//!
//! A stored backoff is capped when read: one stored while the clock was
//! ahead (years, say) would otherwise hold the certificate back until the
//! clock caught up. A `retry_after` more than [`BACKOFF_CAP`] away counts
//! as now + the cap, and is stored so (see [`State::cap_backoffs`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FileOptions};

/// First backoff after a failure, seconds.
pub const BACKOFF_FIRST: i64 = 5 * 60;
/// Longest backoff, seconds.
pub const BACKOFF_CAP: i64 = 6 * 3600;

/// What the last attempt on a certificate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new certificate was issued.
    Issued,
    /// The certificate was renewed.
    Renewed,
    /// Nothing was due.
    Unchanged,
    /// It failed.
    Failed,
}

/// The memory of one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// Consecutive failures.
    #[serde(default)]
    pub failures: u32,
    /// The last result.
    #[serde(default)]
    pub last_result: Option<Outcome>,
    /// When the last attempt ended, Unix seconds.
    #[serde(default)]
    pub last_attempt: Option<i64>,
    /// When a run last left this certificate good, Unix seconds.
    #[serde(default)]
    pub last_success: Option<i64>,
    /// The last error, one line.
    #[serde(default)]
    pub last_error: Option<String>,
    /// No new attempt before this, Unix seconds (unless forced).
    #[serde(default)]
    pub retry_after: Option<i64>,
    /// The pair changed but its post-renewal action has not succeeded yet:
    /// the next run runs it even though the certificate is up to date.
    #[serde(default)]
    pub post_pending: bool,
    /// Since when the pending delivery and action wait for a guest that is
    /// not running, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<i64>,
    /// The guest's state then (`stopped`, `paused`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Memo of the key match: SHA-256 of the key file and the public
    /// point derived from it (hex). Deriving the point is a scalar
    /// multiplication, by far the costliest step of planning; the memo
    /// is keyed by the whole file, so any change to the key derives anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_memo: Option<KeyMemo>,
}

/// See [`EntryState::key_memo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMemo {
    /// SHA-256 of the key file, hex.
    pub key_sha256: String,
    /// Its public point (uncompressed SEC1), hex.
    pub public_point: String,
}

/// Backoff after `failures` consecutive failures, seconds.
pub fn backoff(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST << doublings).min(BACKOFF_CAP)
}

impl EntryState {
    /// Record a success (or an up-to-date certificate) at `now`.
    pub fn succeeded(&mut self, outcome: Outcome, now: i64) {
        self.failures = 0;
        self.post_pending = false;
        self.waiting_since = None;
        self.waiting_for = None;
        self.last_result = Some(outcome);
        self.last_attempt = Some(now);
        self.last_success = Some(now);
        self.last_error = None;
        self.retry_after = None;
    }

    /// Record at `now` that the pair is good (`outcome`) but its guest is
    /// `guest_state`, not running: delivery and action stay pending, with
    /// no failure counted. Returns since when it has waited.
    pub fn waiting_for_guest(&mut self, outcome: Outcome, guest_state: &str, now: i64) -> i64 {
        let since = self.waiting_since.unwrap_or(now);
        // The pair is good: a success, but for the action still to come.
        self.succeeded(outcome, now);
        self.post_pending = true;
        self.waiting_for = Some(guest_state.to_string());
        self.waiting_since = Some(since);
        since
    }

    /// Record that the post-renewal action failed at `now`, the new pair
    /// being installed: the action stays pending and the next run tries it
    /// again, while the certificate itself is not held back (a backoff
    /// here would defer its next renewal, and with a short lifetime let it
    /// expire while a reload kept failing).
    pub fn post_failed(&mut self, error: &str, now: i64) {
        self.post_pending = true;
        self.waiting_since = None;
        self.waiting_for = None;
        self.last_result = Some(Outcome::Failed);
        self.last_attempt = Some(now);
        self.last_error = Some(last_error(error));
    }

    /// Record a failure at `now` and set the next allowed attempt.
    pub fn failed(&mut self, error: &str, now: i64) {
        self.failures = self.failures.saturating_add(1);
        self.last_result = Some(Outcome::Failed);
        self.last_attempt = Some(now);
        self.last_error = Some(last_error(error));
        self.retry_after = Some(now + backoff(self.failures));
    }

    /// Whether the backoff holds this certificate back at `now`, and
    /// until when: never more than [`BACKOFF_CAP`] from `now`.
    pub fn held_back(&self, now: i64) -> Option<i64> {
        self.retry_after
            .filter(|&t| now < t)
            .map(|t| t.min(now.saturating_add(BACKOFF_CAP)))
    }

    /// Bring a `retry_after` more than [`BACKOFF_CAP`] after `now` back
    /// to now + the cap; returns the value it had.
    pub fn cap_backoff(&mut self, now: i64) -> Option<i64> {
        let cap = now.saturating_add(BACKOFF_CAP);
        match self.retry_after {
            Some(t) if t > cap => {
                self.retry_after = Some(cap);
                Some(t)
            }
            _ => None,
        }
    }
}

/// The state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// By certificate name (the manifest's `common_name`).
    #[serde(default)]
    pub certificates: BTreeMap<String, EntryState>,
    /// The last run (not a dry run) that took the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
    #[serde(skip)]
    path: PathBuf,
}

/// How the last run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When it ended, Unix seconds.
    pub finished: i64,
    /// Its exit status.
    pub exit_code: u8,
    /// Since when the runs find the CA unreachable, unavailable or not
    /// ready (exit 75 for it), Unix seconds; none once a run reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_unavailable_since: Option<i64>,
    /// Its error, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl State {
    /// The state file in `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("renew-state.json")
    }

    /// Load it; a missing file is an empty state, an unreadable or corrupt
    /// one is warned about and started afresh (it only holds backoff).
    pub fn load(state_dir: &Path) -> State {
        let path = Self::path_in(state_dir);
        let mut state = match fsutil::read_limited(&path, crate::config::JSON_LIMIT) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).unwrap_or_else(|e| {
                log::warn!("ignoring corrupt renewal state '{}': {e}", path.display());
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                log::warn!(
                    "ignoring unreadable renewal state '{}': {e}",
                    path.display()
                );
                State::default()
            }
        };
        state.path = path;
        state
    }

    /// [`EntryState::cap_backoff`] on every certificate, each capped one
    /// warned about. A run calls it once after loading, so the capped
    /// value is what it stores: the certificate is retried at most
    /// [`BACKOFF_CAP`] after the first run that saw it.
    pub fn cap_backoffs(&mut self, now: i64) {
        for (name, st) in &mut self.certificates {
            if let Some(was) = st.cap_backoff(now) {
                log::warn!(
                    "{name}: the stored backoff ran until {} ({} s from now: \
                     stored while the clock was ahead?); capped to {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(was.max(0) as u64)
                    ),
                    was - now,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs((now + BACKOFF_CAP).max(0) as u64)
                    ),
                );
            }
        }
    }

    /// The entry of `name` (created empty).
    pub fn entry(&mut self, name: &str) -> &mut EntryState {
        self.certificates.entry(name.to_string()).or_default()
    }

    /// Write it atomically (0600: error texts may name paths).
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            fsutil::ensure_dir(dir, 0o755)?;
        }
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        fsutil::write_atomic(&self.path, &text, FileOptions::mode(0o600))
    }
}

/// What `last_error` keeps of a failure: its first line, and of a long
/// one the end, where the cause is (`` `step ...` exited with status 1:
/// <cause> ``), at most [`LAST_ERROR_MAX`] characters.
pub fn last_error(error: &str) -> String {
    let line = error.lines().next().unwrap_or("");
    let n = line.chars().count();
    if n <= LAST_ERROR_MAX {
        return line.to_string();
    }
    let tail: String = line.chars().skip(n - (LAST_ERROR_MAX - 3)).collect();
    format!("...{tail}")
}

/// Longest `last_error` kept.
pub const LAST_ERROR_MAX: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_keeps_its_cause() {
        let cmd = format!(
            "`step ca certificate {}` exited with status 1",
            "x".repeat(600)
        );
        let e = last_error(&format!(
            "{cmd}: failed to decrypt JWK: invalid password\nmore"
        ));
        assert!(e.ends_with("invalid password"), "{e}");
        assert_eq!(e.chars().count(), LAST_ERROR_MAX);
        assert_eq!(last_error("short\nsecond"), "short");
    }

    #[test]
    fn backoff_doubles_from_five_minutes_to_six_hours() {
        let got: Vec<i64> = (1..=9).map(backoff).collect();
        assert_eq!(got, [300, 600, 1200, 2400, 4800, 9600, 19200, 21600, 21600]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn failure_holds_back_and_success_clears() {
        let mut e = EntryState::default();
        e.failed("step failed\nmore", 1000);
        e.failed("again", 1300);
        assert_eq!(e.failures, 2);
        assert_eq!(e.held_back(1300), Some(1900));
        assert_eq!(e.held_back(1900), None);
        assert_eq!(e.last_error.as_deref(), Some("again"));
        e.succeeded(Outcome::Renewed, 2000);
        assert_eq!((e.failures, e.held_back(2000)), (0, None));
    }

    #[test]
    fn a_backoff_from_a_clock_ahead_is_capped_on_read() {
        let now = 1_700_000_000;
        let mut e = EntryState::default();
        // Failed while the clock said ten years later.
        e.failed("boom", now + 10 * 365 * 86400);
        assert_eq!(e.held_back(now), Some(now + BACKOFF_CAP));
        let mut s = State::default();
        s.certificates.insert("web.x".into(), e.clone());
        s.cap_backoffs(now);
        let e = &s.certificates["web.x"];
        assert_eq!(e.retry_after, Some(now + BACKOFF_CAP));
        // Stored capped: a later run is no longer held back.
        assert_eq!(e.held_back(now + BACKOFF_CAP), None);
        // A backoff within the cap is left as it is.
        let mut e = EntryState::default();
        e.failed("boom", now);
        assert_eq!(e.cap_backoff(now), None);
        assert_eq!(e.held_back(now), Some(now + BACKOFF_FIRST));
    }

    #[test]
    fn state_round_trips_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::load(dir.path());
        s.entry("web.x").failed("boom", 10);
        s.save().unwrap();
        let back = State::load(dir.path());
        assert_eq!(back.certificates["web.x"].failures, 1);
        std::fs::write(State::path_in(dir.path()), "{not json").unwrap();
        assert!(State::load(dir.path()).certificates.is_empty());
    }
}
