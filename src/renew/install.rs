//! Getting a new certificate into place without ever exposing a bad pair,
//! and without ever following a guest's link.
//!
//! The certificate directory belongs to the guest (a bind mount, an NFS
//! export): everything done there goes through [`crate::guestdir`], on
//! descriptors. step never writes there and never reads a guest's path:
//! it gets private copies of its inputs (the current pair, for a renewal)
//! and writes into a private directory ([`PrivateDir`]). What it wrote is
//! read back (bounded), verified (parses, chains to our root, key
//! matches, SANs and subject as asked), written into temp files in the
//! certificate directory with owner and mode set before the data, and
//! renamed into place within that directory.
//!
//! A new pair is two renames, key first. The old key is kept under a temp
//! name (a copy, made before) until the certificate's rename has
//! succeeded: if that rename fails (EPERM from an immutable file, EIO,
//! ...), the old key is renamed back, and the old pair is in place,
//! matching. A crash between the two renames still leaves the new key
//! beside the old certificate (no file system renames two files at once):
//! the next run sees the mismatch and issues again, and removes the temp
//! files as stale.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::cert::{self, CertInfo, Root};
use crate::config::Threshold;
use crate::fsutil::{self, FileOptions};
use crate::guestdir::{self, Dir, PrivateDir, Staged};
use crate::step::Step;

use super::manifest::Entry;

/// Mode of certificates and the CA chain.
pub const CERT_MODE: u32 = 0o644;

/// Largest certificate bundle or key read (what step wrote, the current
/// pair, the chain file).
pub const PEM_LIMIT: u64 = 1 << 20;

/// How far before our clock a new certificate's notBefore may lie and
/// still be new: step-ca backdates notBefore by one minute (its default
/// `backdate`), and the call itself takes up to the command timeout.
const FRESH_SLACK_SECS: i64 = 300;

/// Check a freshly written pair against the entry and `threshold`.
fn verify(
    entry: &Entry,
    root: &Root,
    threshold: Threshold,
    crt: &[u8],
    key: &[u8],
) -> Result<CertInfo> {
    let info = cert::parse_bundle(crt, root).context("the new certificate does not parse")?;
    let point = cert::key_public_point(key)?;
    if point != info.public_key {
        return Err(anyhow!("the new certificate does not match its key"));
    }
    if info.sans != entry.wanted || info.subject_cn.as_deref() != Some(entry.name.as_str()) {
        let list = |sans: &std::collections::BTreeSet<cert::San>| {
            sans.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(anyhow!(
            "the new certificate does not carry the subject and SANs asked for: asked \
             CN {} with {}; got CN {} with {}",
            entry.name,
            list(&entry.wanted),
            info.subject_cn.as_deref().unwrap_or("(none)"),
            list(&info.sans)
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
    // The other way round: this host's clock ahead of the CA's, a new
    // certificate already expired here. Installing it breaks the service
    // and the next run would issue again, on every run.
    if now >= info.not_after {
        return Err(anyhow!(
            "the new certificate expired at {} by this host's clock ({} s ago): this \
             host's clock is ahead of the CA's; check NTP on both",
            cert::rfc3339(info.not_after),
            now - info.not_after
        ));
    }
    // Already due by this host's clock: renewed again on every run. When
    // the certificate began well before now, the clocks disagree (ours
    // ahead): refused like the cases above. When its own life is too
    // short for the threshold (a renewal keeps the old certificate's
    // lifetime; a CA may cap it), refusing would let the old one expire:
    // it is installed, and the operator told what to change.
    let due = cert::due_at(&info, threshold);
    if now >= due {
        let age = now - info.not_before;
        if due - info.not_before > FRESH_SLACK_SECS && age > FRESH_SLACK_SECS {
            return Err(anyhow!(
                "the new certificate is already due by this host's clock (valid from {}, \
                 {age} s ago; due at {}): this host's clock is about {} s ahead of the \
                 CA's; check NTP on both",
                cert::rfc3339(info.not_before),
                cert::rfc3339(due),
                age - 60
            ));
        }
        log::warn!(
            "{}: the new certificate lives {} s, too short for renewal.threshold: it is \
             due at once and every run will renew it (a renewal keeps the old \
             certificate's lifetime: --force issues one of renewal.lifetime; or the \
             CA caps the lifetime: lower renewal.threshold)",
            entry.name,
            info.not_after - info.not_before
        );
    }
    Ok(info)
}

/// The directory handle of `path` (no link followed on the way; with
/// `create`, missing directories are made 0755) and its file name.
fn dir_of(path: &Path, create: bool) -> Result<(Dir, OsString)> {
    if create {
        guestdir::create_parent(path, 0o755)
    } else {
        guestdir::open_parent(path)
    }
    .with_context(|| format!("opening the directory of '{}'", path.display()))
}

/// A file step wrote into our private directory.
fn read_private(path: &Path) -> Result<Vec<u8>> {
    fsutil::read_limited(path, PEM_LIMIT)
        .with_context(|| format!("reading '{}' written by step", path.display()))
}

/// Remove the temp files a killed run left beside the entry's files.
/// Called under the renew lock, so no live run is writing them.
pub fn remove_stale_temps(entry: &Entry) {
    for target in [&entry.cert_path, &entry.key_path, &entry.ca_path()] {
        if let Ok((dir, name)) = guestdir::open_parent(target) {
            dir.remove_stale_temps(&name);
        }
    }
}

/// Issue a new key and certificate and install them.
pub fn issue(
    entry: &Entry,
    step: &Step,
    root: &Root,
    lifetime: std::time::Duration,
    threshold: Threshold,
) -> Result<CertInfo> {
    // The directories first: one a guest turned into a link is refused
    // before the CA is asked for anything.
    let (cert_dir, cert_name) = dir_of(&entry.cert_path, true)?;
    let (key_dir, key_name) = dir_of(&entry.key_path, true)?;
    let private = PrivateDir::new("issue").context("making a private directory for step")?;
    let (crt, key) = (private.join("new.crt"), private.join("new.key"));
    step.issue(&entry.name, &entry.sans, &crt, &key, lifetime)?;
    let (crt_pem, key_pem) = (read_private(&crt)?, read_private(&key)?);
    drop(private);
    let info = verify(entry, root, threshold, &crt_pem, &key_pem)?;
    install_pair(
        entry,
        (&cert_dir, &cert_name, &crt_pem),
        (&key_dir, &key_name, &key_pem),
    )?;
    place_ca(entry, root, &info)?;
    Ok(info)
}

/// A copy of the key now installed at `name`, under a temp name, with its
/// owner and mode: what is put back if the certificate cannot follow the
/// new key. `None` when there is no key, or none we can keep (a link a
/// guest planted is not followed: the new pair replaces it).
fn keep_old_key<'a>(dir: &'a Dir, name: &OsStr, entry: &Entry) -> Option<Staged<'a>> {
    let kept = dir.open_file(name).and_then(|f| {
        let Some(f) = f else { return Ok(None) };
        let m = f.metadata();
        let opts = FileOptions {
            mode: m.mode() & 0o7777,
            owner: Some((m.uid(), m.gid())),
        };
        let data = f.read(PEM_LIMIT)?;
        dir.stage(name, &data, opts).map(Some)
    });
    kept.unwrap_or_else(|e| {
        log::warn!("{}: the old key is not kept: {e}", entry.name);
        None
    })
}

type Target<'a> = (&'a Dir, &'a OsStr, &'a [u8]);

/// Put a verified pair into place: both written to temp files first, the
/// key renamed, then the certificate; if the certificate's rename fails,
/// the key's is undone.
fn install_pair(entry: &Entry, (cd, cn, crt): Target, (kd, kn, key): Target) -> Result<()> {
    let owner = Some((entry.uid, entry.gid));
    let key_opts = FileOptions {
        mode: entry.key_mode,
        owner,
    };
    let new_key = kd.stage(kn, key, key_opts)?;
    let new_crt = cd.stage(
        cn,
        crt,
        FileOptions {
            mode: CERT_MODE,
            owner,
        },
    )?;
    let old_key = keep_old_key(kd, kn, entry);
    new_key.install()?;
    if let Err(e) = new_crt.install() {
        let undo = match old_key {
            Some(old) => old.install_as(kn),
            None => kd.unlink(kn).map(drop),
        };
        let _ = kd.sync();
        return Err(match undo {
            Ok(()) => anyhow!(e).context(format!(
                "installing the new certificate '{}' failed; the new key was taken back, \
                 the old pair is in place",
                entry.cert_path.display()
            )),
            Err(u) => anyhow!(e).context(format!(
                "installing the new certificate '{}' failed, and taking the new key back \
                 failed too ({u}): '{}' does not match its certificate until the next run \
                 issues again",
                entry.cert_path.display(),
                entry.key_path.display()
            )),
        });
    }
    drop(old_key);
    cd.sync()?;
    if !kd.same_as(cd) {
        kd.sync()?;
    }
    Ok(())
}

/// Renew the certificate for its current key and install it.
pub fn renew(entry: &Entry, step: &Step, root: &Root, threshold: Threshold) -> Result<CertInfo> {
    let (cert_dir, cert_name) = dir_of(&entry.cert_path, false)?;
    let (key_dir, key_name) = dir_of(&entry.key_path, false)?;
    let current = cert_dir
        .read(&cert_name, PEM_LIMIT)
        .context("reading the current certificate")?;
    let key = key_dir
        .read(&key_name, PEM_LIMIT)
        .context("reading the current key")?;
    let private = PrivateDir::new("renew").context("making a private directory for step")?;
    let (crt_copy, key_copy) = (
        private.write("current.crt", &current)?,
        private.write("current.key", &key)?,
    );
    let out = private.join("new.crt");
    step.renew(&crt_copy, &key_copy, &out)?;
    let new = read_private(&out)?;
    drop(private);
    let info = verify(entry, root, threshold, &new, &key)?;
    let opts = FileOptions {
        mode: CERT_MODE,
        owner: Some((entry.uid, entry.gid)),
    };
    cert_dir
        .write_atomic(&cert_name, &new, opts)
        .with_context(|| format!("installing '{}'", entry.cert_path.display()))?;
    ensure_modes(entry)?;
    place_ca(entry, root, &info)?;
    Ok(info)
}

/// `include_ca`: the intermediates of the bundle and the root, `ca.pem`
/// beside the certificate, written only when it changed. Whatever a guest
/// put there instead of a plain file (a link, a FIFO, a hard link) is
/// replaced, never followed.
fn place_ca(entry: &Entry, root: &Root, info: &CertInfo) -> Result<()> {
    if !entry.include_ca {
        return Ok(());
    }
    let path = entry.ca_path();
    let (dir, name) = dir_of(&path, false)?;
    let mut chain = info.chain_pem.clone();
    chain.push_str(root.pem.trim_end());
    chain.push('\n');
    match dir.read(&name, PEM_LIMIT) {
        Ok(now) if now == chain.as_bytes() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("{}: {e}: written anew", entry.name),
    }
    let opts = FileOptions {
        mode: CERT_MODE,
        owner: Some((entry.uid, entry.gid)),
    };
    dir.write_atomic(&name, chain.as_bytes(), opts)
        .with_context(|| format!("writing '{}'", path.display()))
}

/// Bring owner and mode of the installed files to what the entry says (a
/// key made world-readable by hand is tightened), through descriptors. A
/// certificate or key that is not a plain file (a link, a hard link, a
/// FIFO) is refused, naming it; a chain file that is not is left to
/// [`repair_ca`], which writes it anew. Returns what it fixed.
pub fn ensure_modes(entry: &Entry) -> Result<Vec<String>> {
    let mut fixed = Vec::new();
    let ca = entry.ca_path();
    let mut files = vec![
        (&entry.key_path, entry.key_mode, true),
        (&entry.cert_path, CERT_MODE, true),
    ];
    if entry.include_ca {
        files.push((&ca, CERT_MODE, false));
    }
    for (path, mode, must) in files {
        let found = guestdir::open_parent(path).and_then(|(dir, name)| dir.open_file(&name));
        let file = match found {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if !must => {
                log::warn!("{}: {e}: owner and mode left alone", entry.name);
                continue;
            }
            Err(e) => {
                return Err(anyhow!(e)).context("checking owner and mode");
            }
        };
        if file
            .set_owner_mode(entry.uid, entry.gid, mode)
            .context("fixing owner and mode")?
        {
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

/// `include_ca` and the chain file is missing, or not a plain file (a
/// link or FIFO a guest put there): [`repair_ca`] writes it.
pub fn ca_missing(entry: &Entry) -> bool {
    entry.include_ca
        && !matches!(
            guestdir::open_parent(&entry.ca_path()).and_then(|(d, n)| d.open_file(&n)),
            Ok(Some(_))
        )
}

/// Re-place a missing CA chain for an otherwise good certificate.
pub fn repair_ca(entry: &Entry, root: &Root, info: &CertInfo) -> Result<()> {
    place_ca(entry, root, info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::GuestType;
    use crate::proxmox::Guest;
    use crate::renew::manifest::PostAction;
    use std::os::unix::fs::PermissionsExt;

    fn entry(dir: &Path) -> Entry {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        Entry {
            index: 0,
            name: "web.x".into(),
            guest: Guest {
                kind: GuestType::Lxc,
                id: 101,
            },
            sans: Vec::new(),
            wanted: Default::default(),
            cert_path: dir.join("web.crt"),
            key_path: dir.join("web.key"),
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            key_mode: 0o600,
            include_ca: true,
            post: PostAction::Legacy("true".into()),
            deliver: true,
            warnings: Vec::new(),
        }
    }

    fn install(e: &Entry, crt: &[u8], key: &[u8]) -> Result<()> {
        let (d, cn) = dir_of(&e.cert_path, false)?;
        let kn = e.key_path.file_name().unwrap();
        install_pair(e, (&d, &cn, crt), (&d, kn, key))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_pair_replaces_both_and_leaves_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let e = entry(t.path());
        std::fs::write(&e.key_path, "old key").unwrap();
        std::fs::write(&e.cert_path, "old cert").unwrap();
        install(&e, b"new cert", b"new key").unwrap();
        assert_eq!(std::fs::read(&e.key_path).unwrap(), b"new key");
        assert_eq!(std::fs::read(&e.cert_path).unwrap(), b"new cert");
        let mode = std::fs::metadata(&e.key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(names(t.path()), ["web.crt", "web.key"]);
    }

    #[test]
    fn a_failed_certificate_rename_puts_the_old_key_back() {
        // A directory where the certificate goes: the key's rename works,
        // the certificate's fails (EISDIR).
        let t = tempfile::tempdir().unwrap();
        let e = entry(t.path());
        std::fs::write(&e.key_path, "old key").unwrap();
        std::fs::set_permissions(&e.key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::create_dir(&e.cert_path).unwrap();
        std::fs::write(e.cert_path.join("x"), "x").unwrap();
        let err = format!("{:#}", install(&e, b"new cert", b"new key").unwrap_err());
        assert!(
            err.contains("the new key was taken back, the old pair is in place"),
            "{err}"
        );
        assert_eq!(std::fs::read(&e.key_path).unwrap(), b"old key");
        let mode = std::fs::metadata(&e.key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640, "the old key's mode is kept");
        assert_eq!(names(t.path()), ["web.crt", "web.key"]);
        // Without an old key, the new one is taken away.
        std::fs::remove_file(&e.key_path).unwrap();
        assert!(install(&e, b"new cert", b"new key").is_err());
        assert_eq!(names(t.path()), ["web.crt"]);
    }

    #[test]
    fn a_ca_pem_link_is_left_to_the_repair_and_never_chmodded() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::write(&host, "host").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o600)).unwrap();
        let certs = t.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let e = entry(&certs);
        std::fs::write(&e.key_path, "k").unwrap();
        std::fs::write(&e.cert_path, "c").unwrap();
        std::os::unix::fs::symlink(&host, e.ca_path()).unwrap();
        ensure_modes(&e).unwrap();
        let mode = std::fs::metadata(&host).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert!(ca_missing(&e));
        // A key that is a link: refused, named.
        std::fs::remove_file(&e.key_path).unwrap();
        std::os::unix::fs::symlink(&host, &e.key_path).unwrap();
        let err = format!("{:#}", ensure_modes(&e).unwrap_err());
        assert!(err.contains("web.key': a symbolic link"), "{err}");
    }
}
