//! Getting a new certificate into place without ever exposing a bad pair:
//! step writes into temp files beside the targets, the result is verified
//! (parses, chains to our root, key matches, SANs and subject as asked),
//! owner and mode are set, and only then are the temp files renamed over
//! the targets, key first. A crash between the two renames leaves a key
//! that does not match its certificate, which the next run sees and
//! repairs by issuing again; a crash before leaves the old pair.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::cert::{self, CertInfo, Root};
use crate::fsutil::{self, FileOptions};
use crate::step::Step;

use super::manifest::Entry;

/// Mode of certificates and the CA chain.
pub const CERT_MODE: u32 = 0o644;

/// Temp files that are removed unless they were committed.
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Check a freshly written pair against the entry.
fn verify(entry: &Entry, root: &Root, crt: &Path, key: &Path) -> Result<CertInfo> {
    let bytes =
        fs::read(crt).with_context(|| format!("reading new certificate '{}'", crt.display()))?;
    let info = cert::parse_bundle(&bytes, root).context("the new certificate does not parse")?;
    let point = cert::key_public_point(
        &fs::read(key).with_context(|| format!("reading key '{}'", key.display()))?,
    )?;
    if point != info.public_key {
        return Err(anyhow!("the new certificate does not match its key"));
    }
    if info.sans != entry.wanted || info.subject_cn.as_deref() != Some(entry.name.as_str()) {
        return Err(anyhow!(
            "the new certificate does not carry the subject and SANs asked for"
        ));
    }
    if !info.chains_to_root {
        return Err(anyhow!("the new certificate does not chain to our root"));
    }
    // A CA whose clock runs ahead issues certificates that are not valid
    // yet: installing one would break the service, and issuing again on
    // every run would not help. The old pair stays; the failure backoff
    // spaces the retries until the clocks agree.
    let now = super::now();
    if now < info.not_before {
        return Err(anyhow!(
            "the new certificate is not valid until {} ({} s from now): the CA's \
             clock is ahead of this host's; check NTP on both",
            cert::rfc3339(info.not_before),
            info.not_before - now
        ));
    }
    Ok(info)
}

/// Give a temp file its final owner and mode, and make its data durable.
fn finish(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let owner = Some((uid, gid));
    fsutil::seal(path, FileOptions { mode, owner })
}

fn ensure_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fsutil::ensure_dir(dir, 0o755),
        _ => Ok(()),
    }
}

/// Remove the temp files a killed run left beside the entry's files.
/// Called under the renew lock, so no live run is writing them.
pub fn remove_stale_temps(entry: &Entry) {
    for target in [&entry.cert_path, &entry.key_path, &entry.ca_path()] {
        fsutil::remove_stale_temps(target);
    }
}

/// Issue a new key and certificate and install them.
pub fn issue(
    entry: &Entry,
    step: &Step,
    root: &Root,
    lifetime: std::time::Duration,
) -> Result<CertInfo> {
    ensure_parent(&entry.cert_path)?;
    ensure_parent(&entry.key_path)?;
    let crt = fsutil::temp_path_for(&entry.cert_path)?;
    let key = fsutil::temp_path_for(&entry.key_path)?;
    let temps = Temps(vec![crt.clone(), key.clone()]);
    step.issue(&entry.name, &entry.sans, &crt, &key, lifetime)?;
    // step creates the key 0600; make sure, before anything else.
    if fs::metadata(&key)
        .map(|m| m.mode() & 0o077 != 0)
        .unwrap_or(true)
    {
        finish(&key, 0, 0, 0o600)?;
    }
    let info = verify(entry, root, &crt, &key)?;
    finish(&key, entry.uid, entry.gid, entry.key_mode)?;
    finish(&crt, entry.uid, entry.gid, CERT_MODE)?;
    // Back to back, one directory fsync after both: the instant in which
    // a reader (or a crash) sees the new key beside the old certificate is
    // as short as two system calls; the next run repairs it (key mismatch).
    fsutil::rename(&key, &entry.key_path)?;
    fsutil::rename_durable(&crt, &entry.cert_path)?;
    if entry.key_path.parent() != entry.cert_path.parent() {
        fsutil::fsync_dir(entry.key_path.parent().unwrap_or(Path::new(".")))?;
    }
    drop(temps);
    place_ca(entry, root, &info)?;
    Ok(info)
}

/// Renew the certificate for its current key and install it.
pub fn renew(entry: &Entry, step: &Step, root: &Root) -> Result<CertInfo> {
    let crt = fsutil::temp_path_for(&entry.cert_path)?;
    let temps = Temps(vec![crt.clone()]);
    step.renew(&entry.cert_path, &entry.key_path, &crt)?;
    let info = verify(entry, root, &crt, &entry.key_path)?;
    finish(&crt, entry.uid, entry.gid, CERT_MODE)?;
    fsutil::rename_durable(&crt, &entry.cert_path)?;
    drop(temps);
    ensure_modes(entry)?;
    place_ca(entry, root, &info)?;
    Ok(info)
}

/// `include_ca`: the intermediates of the bundle and the root, `ca.pem`
/// beside the certificate, written only when it changed.
fn place_ca(entry: &Entry, root: &Root, info: &CertInfo) -> Result<()> {
    if !entry.include_ca {
        return Ok(());
    }
    let path = entry.ca_path();
    let mut chain = info.chain_pem.clone();
    chain.push_str(root.pem.trim_end());
    chain.push('\n');
    if fs::read(&path).ok().as_deref() == Some(chain.as_bytes()) {
        return Ok(());
    }
    let opts = FileOptions {
        mode: CERT_MODE,
        owner: Some((entry.uid, entry.gid)),
    };
    fsutil::write_atomic(&path, chain.as_bytes(), opts)
}

/// Bring owner and mode of the installed files to what the entry says (a
/// key made world-readable by hand is tightened). Returns what it fixed.
pub fn ensure_modes(entry: &Entry) -> Result<Vec<String>> {
    let mut fixed = Vec::new();
    let mut files = vec![
        (&entry.key_path, entry.key_mode),
        (&entry.cert_path, CERT_MODE),
    ];
    let ca = entry.ca_path();
    if entry.include_ca {
        files.push((&ca, CERT_MODE));
    }
    for (path, mode) in files {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        if meta.mode() & 0o7777 != mode || meta.uid() != entry.uid || meta.gid() != entry.gid {
            std::os::unix::fs::chown(path, Some(entry.uid), Some(entry.gid))
                .with_context(|| format!("chown '{}'", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod '{}'", path.display()))?;
            fixed.push(format!(
                "{} -> {}:{} {mode:o}",
                path.display(),
                entry.uid,
                entry.gid
            ));
        }
    }
    Ok(fixed)
}

/// `include_ca` and the chain file is missing or stale.
pub fn ca_missing(entry: &Entry) -> bool {
    entry.include_ca && !entry.ca_path().exists()
}

/// Re-place a missing CA chain for an otherwise good certificate.
pub fn repair_ca(entry: &Entry, root: &Root, info: &CertInfo) -> Result<()> {
    place_ca(entry, root, info)
}
