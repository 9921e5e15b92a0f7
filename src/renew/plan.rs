//! The plan: for each certificate, read its files natively and decide
//! issue, renew or nothing; `--force` makes it issue; the failure backoff
//! defers an entry that failed recently.

use std::cell::RefCell;

use sha2::Digest;

use crate::digest::{hex, sha256_hex};

use crate::cert::{self, Action, Assessment, CertInfo, Root};
use crate::config::Threshold;
use crate::guestdir;

use super::manifest::Entry;
use super::state::{KeyMemo, State};

/// Largest certificate bundle or key read while planning.
const FILE_LIMIT: u64 = 1 << 20;

/// The decision for one entry.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What the files say.
    pub assessment: Assessment,
    /// Deferred by the backoff until then (Unix seconds).
    pub deferred_until: Option<i64>,
    /// The key match memo for the key on disk now.
    pub key_memo: Option<KeyMemo>,
}

impl Planned {
    /// What this run will do.
    pub fn action(&self) -> Action {
        if self.deferred_until.is_some() {
            Action::Nothing
        } else {
            self.assessment.action
        }
    }
}

/// Assess one entry from its files, taking the key's public point from
/// the key file ([`cert::key_public_point_stored`]) unless `memo` holds
/// it for exactly this key file. Returns the memo for
/// the key on disk.
pub fn assess(
    entry: &Entry,
    root: &Root,
    now: i64,
    threshold: Threshold,
    memo: Option<&KeyMemo>,
) -> (Assessment, Option<KeyMemo>) {
    let fresh = RefCell::new(None);
    let derive = |key: &[u8]| -> anyhow::Result<Vec<u8>> {
        let digest = sha256_hex(key);
        if let Some(m) = memo.filter(|m| m.key_sha256 == digest) {
            if let Some(point) = unhex(&m.public_point) {
                *fresh.borrow_mut() = Some(m.clone());
                return Ok(point);
            }
        }
        // The point the key file carries, derived only where it carries
        // none: a cold run over many keys costs no scalar multiplication.
        let point = cert::key_public_point_stored(key)?;
        *fresh.borrow_mut() = Some(KeyMemo {
            key_sha256: digest,
            public_point: hex(&point),
        });
        Ok(point)
    };
    let a = cert::assess(
        // The guest's directory: no link followed, only a plain file.
        guestdir::read_file(&entry.cert_path, FILE_LIMIT),
        guestdir::read_file(&entry.key_path, FILE_LIMIT),
        &derive,
        &entry.name,
        &entry.wanted,
        root,
        now,
        threshold,
    );
    (a, fresh.into_inner())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The failure backoff never carries a certificate past its expiry: a
/// deferral until `until` is cut to a quarter of the time the current
/// certificate has left, and there is none in the last tenth of its life
/// (expired included): then every run tries. A certificate that could not
/// be read has no life to protect and keeps its backoff.
pub fn within_life(current: Option<&CertInfo>, now: i64, until: i64) -> Option<i64> {
    let Some(c) = current else {
        return Some(until);
    };
    let left = c.not_after - now;
    let life = (c.not_after - c.not_before).max(1);
    if left <= life / 10 {
        return None;
    }
    let capped = until.min(now + left / 4);
    (capped > now).then_some(capped)
}

/// How much earlier than its threshold a certificate is renewed, under
/// `renewal.spread_secs`: fixed for a certificate (from its name and
/// serial, so every run agrees and a renewed one gets a new amount), and at
/// most half the time from its issuance to its threshold (never due at
/// once). What smallstep's renewer and certbot do with random jitter, made
/// deterministic.
pub fn early_by(name: &str, c: &CertInfo, threshold: Threshold, spread: u64) -> i64 {
    if spread == 0 {
        return 0;
    }
    let d = sha2::Sha256::digest(format!("{name}\n{}", c.serial).as_bytes());
    let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    let room = ((cert::due_at(c, threshold) - c.not_before) / 2).max(0);
    ((n % spread) as i64).min(room)
}

/// What a run asks beyond what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urge {
    /// What the files and the threshold say.
    #[default]
    Due,
    /// `--renew-now`: a certificate that needs nothing is renewed (same
    /// key) as if past its threshold; the others as they are. The failure
    /// backoff still applies.
    RenewNow,
    /// `--force`: every certificate issued anew, the backoff ignored.
    Force,
}

/// Plan every entry: one [`Planned`] per entry, in the same order.
pub fn plan(
    entries: &[&Entry],
    root: &Root,
    state: &State,
    now: i64,
    threshold: Threshold,
    spread: u64,
    urge: Urge,
) -> Vec<Planned> {
    let force = urge == Urge::Force;
    let one = |e: &&Entry| {
        let memo = state
            .certificates
            .get(&e.name)
            .and_then(|s| s.key_memo.as_ref());
        let (mut assessment, key_memo) = assess(e, root, now, threshold, memo);
        if force {
            assessment.action = Action::Issue;
            assessment.reason = format!("forced ({})", assessment.reason);
        }
        if urge == Urge::RenewNow && assessment.action == Action::Nothing {
            assessment.action = Action::Renew;
            assessment.reason = "asked (--renew-now)".into();
        }
        if let (Action::Nothing, Some(c)) = (assessment.action, &assessment.current) {
            let early = early_by(&e.name, c, threshold, spread);
            let due = cert::due_at(c, threshold);
            if early > 0 && now >= due - early && now < c.not_after {
                assessment.action = Action::Renew;
                assessment.reason = format!(
                    "due under renewal.spread_secs ({early} s before its threshold at {})",
                    cert::rfc3339(due)
                );
            }
        }
        let deferred_until = match assessment.action {
            Action::Nothing => None,
            _ if force => None,
            _ => state
                .certificates
                .get(&e.name)
                .and_then(|s| s.held_back(now))
                .and_then(|until| within_life(assessment.current.as_ref(), now, until)),
        };
        Planned {
            assessment,
            deferred_until,
            key_memo,
        }
    };
    // Each entry is its own two files, read and parsed: a large manifest
    // is spread over the CPUs, in chunks, kept in order (1,000
    // certificates: benches/renew-plan.sh).
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(entries.len() / PER_WORKER)
        .clamp(1, MAX_WORKERS);
    if workers == 1 {
        return entries.iter().map(one).collect();
    }
    let chunk = entries.len().div_ceil(workers);
    std::thread::scope(|s| {
        let one = &one;
        let parts: Vec<_> = entries
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The fewest entries worth a planning thread of their own.
const PER_WORKER: usize = 128;
/// The most planning threads (the files are small; more threads mostly
/// wait on each other in the kernel).
const MAX_WORKERS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64) -> CertInfo {
        CertInfo {
            serial: "1".into(),
            subject_cn: None,
            sans: Default::default(),
            not_before,
            not_after,
            public_key: Vec::new(),
            chains_to_root: true,
            chain_pem: String::new(),
        }
    }

    #[test]
    fn the_spread_is_fixed_per_certificate_and_leaves_room() {
        let c = cert(0, 24 * 3600);
        let t = Threshold::Percent(66);
        assert_eq!(early_by("a", &c, t, 0), 0);
        let a = early_by("a", &c, t, 3600);
        assert_eq!(a, early_by("a", &c, t, 3600), "not the same on every run");
        assert!((0..3600).contains(&a));
        // Ten certificates issued together: not one renewal moment.
        let moments: std::collections::BTreeSet<i64> = (0..10)
            .map(|i| early_by(&format!("c{i}"), &c, t, 3600))
            .collect();
        assert!(moments.len() > 5, "{moments:?}");
        // A spread longer than the certificate's time to its threshold
        // is cut to half of it: never due at issuance.
        let due = cert::due_at(&c, t);
        assert!(early_by("a", &c, t, 10 * 24 * 3600) <= due / 2);
    }

    #[test]
    fn the_backoff_stops_short_of_expiry() {
        // A 24 h certificate with 10 h left: a 6 h backoff is cut to 2.5 h.
        let c = cert(0, 24 * 3600);
        let now = 14 * 3600;
        assert_eq!(
            within_life(Some(&c), now, now + 6 * 3600),
            Some(now + 10 * 3600 / 4)
        );
        // Short backoffs are kept.
        assert_eq!(within_life(Some(&c), now, now + 600), Some(now + 600));
        // The last tenth of its life, and after expiry: every run tries.
        assert_eq!(within_life(Some(&c), 22 * 3600, 22 * 3600 + 600), None);
        assert_eq!(within_life(Some(&c), 30 * 3600, 30 * 3600 + 600), None);
        // Nothing read: nothing to expire, the backoff stays.
        assert_eq!(within_life(None, now, now + 600), Some(now + 600));
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001abff").unwrap(), b);
        assert!(unhex("0g").is_none() && unhex("abc").is_none());
    }
}
