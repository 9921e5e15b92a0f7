//! The plan: for each certificate, read its files natively and decide
//! issue, renew or nothing; `--force` makes it issue; the failure backoff
//! defers an entry that failed recently.

use crate::cert::{self, Action, Assessment, Root};
use crate::config::Threshold;
use crate::fsutil;

use super::manifest::Entry;
use super::state::State;

/// Largest certificate bundle or key read while planning.
const FILE_LIMIT: u64 = 1 << 20;

/// The decision for one entry.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The entry's index in the manifest.
    pub index: usize,
    /// What the files say.
    pub assessment: Assessment,
    /// Deferred by the backoff until then (Unix seconds).
    pub deferred_until: Option<i64>,
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

/// Assess one entry from its files.
pub fn assess(entry: &Entry, root: &Root, now: i64, threshold: Threshold) -> Assessment {
    cert::assess(
        fsutil::read_limited(&entry.cert_path, FILE_LIMIT),
        fsutil::read_limited(&entry.key_path, FILE_LIMIT),
        &entry.name,
        &entry.wanted,
        root,
        now,
        threshold,
    )
}

/// Plan every entry.
pub fn plan(
    entries: &[&Entry],
    root: &Root,
    state: &State,
    now: i64,
    threshold: Threshold,
    force: bool,
) -> Vec<Planned> {
    entries
        .iter()
        .map(|e| {
            let mut assessment = assess(e, root, now, threshold);
            if force {
                assessment.action = Action::Issue;
                assessment.reason = format!("forced ({})", assessment.reason);
            }
            let deferred_until = match assessment.action {
                Action::Nothing => None,
                _ if force => None,
                _ => state
                    .certificates
                    .get(&e.name)
                    .and_then(|s| s.held_back(now)),
            };
            Planned {
                index: e.index,
                assessment,
                deferred_until,
            }
        })
        .collect()
}
