//! What was last deployed, per stack: `<state_dir>/deploy/<key>.json`
//! holds the rendered compose text and its SHA-256. A run deploys a stack
//! only when the digest of what it renders now differs (a secret's
//! version is in its name, so a rotated secret changes the text), or when
//! the stack has gone from the swarm. `--dry-run` diffs against the text.
//!
//! The text holds the stack's variables (passwords among them): the
//! directory is 0700 and the files 0600, root's. Written atomically after
//! the stack converged, so a crash or a failed deployment leaves the old
//! record and the next run deploys again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FileOptions};

/// Largest record read back.
const RECORD_LIMIT: u64 = 4 << 20;

/// One stack's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The stack's name in the swarm.
    pub name: String,
    /// SHA-256 (hex) of `compose`.
    pub sha256: String,
    /// When it converged, seconds since the epoch.
    pub deployed_at: u64,
    /// The compose text sent to `docker stack deploy`.
    pub compose: String,
}

/// The directory of the records.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("deploy")
}

fn path(state_dir: &Path, key: &str) -> PathBuf {
    dir(state_dir).join(format!("{key}.json"))
}

/// The record of stack `key`; `None` if there is none or it cannot be
/// read (then the stack is deployed again, which is harmless).
pub fn load(state_dir: &Path, key: &str) -> Option<Record> {
    let p = path(state_dir, key);
    let bytes = match fsutil::read_limited(&p, RECORD_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "cannot read '{}': {e}; the stack is deployed again",
                p.display()
            );
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!(
                "'{}' is not a deploy record ({e}); the stack is deployed again",
                p.display()
            );
            None
        }
    }
}

/// Store the record of stack `key`, atomically, 0600.
pub fn store(state_dir: &Path, key: &str, record: &Record) -> Result<()> {
    fsutil::ensure_dir(&dir(state_dir), 0o700)?;
    let p = path(state_dir, key);
    let data = serde_json::to_vec_pretty(record)?;
    fsutil::write_atomic(&p, &data, FileOptions::mode(0o600))
        .with_context(|| format!("recording the deployment of {key} in '{}'", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_round_trip_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "s"), None);
        let r = Record {
            name: "s".into(),
            sha256: "ab".into(),
            deployed_at: 5,
            compose: "services: {}\n".into(),
        };
        store(dir.path(), "s", &r).unwrap();
        assert_eq!(load(dir.path(), "s"), Some(r));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&super::dir(dir.path())), 0o700);
        assert_eq!(mode(&path(dir.path(), "s")), 0o600);
        std::fs::write(path(dir.path(), "s"), "{").unwrap();
        assert_eq!(load(dir.path(), "s"), None);
    }
}
