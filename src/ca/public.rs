//! The CA state directory's `public/`: copies of what dependents need
//! (`ca.ready`, `ca.generation`, the root certificate, its fingerprint)
//! and nothing secret.
//!
//! The state directory also holds the provisioner password and the CA's
//! keys, which root in any container that bind-mounts it can read (an
//! unprivileged container shares the CA container's idmap). Dependents'
//! bind mounts and the VMs' NFS export point at `public/` instead, and
//! `phoenix-ca wait --state-dir .../public` finds there everything a wait
//! reads: the same file names as in the state directory.
//!
//! `phoenix-ca publish` (in the CA guest) creates and fills it; the host's
//! `invalidate` (CA pre-start) writes the new generation there too and the
//! stop phases withdraw its token, so a waiter on `public/` never takes an
//! earlier boot's token for a fresh one. `public/` belongs to the CA guest,
//! which could put a symbolic link there: everything is done through
//! [`crate::guestdir`], on a descriptor of the directory reached without
//! following a link, never a path through it.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::token::{Generation, Token};
use crate::config::CaPaths;
use crate::exit::{err, Kind};
use crate::fsutil::FileOptions;
use crate::guestdir::Dir;

/// Name of the public directory inside the state directory.
pub const PUBLIC_DIR: &str = "public";

/// `public/` of the state directory `state_dir`.
pub fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join(PUBLIC_DIR)
}

/// The CA files of `public/`: each under the name it has in the state
/// directory, so that a waiter pointed at `public/` reads them there.
pub fn paths(paths: &CaPaths) -> CaPaths {
    let dir = dir_of(&paths.dir);
    let name = |p: &Path| dir.join(p.file_name().unwrap_or(p.as_os_str()));
    CaPaths {
        ready: name(&paths.ready),
        generation: name(&paths.generation),
        fingerprint: name(&paths.fingerprint),
        root_cert: name(&paths.root_cert),
        // Never copied: named only so the struct is whole.
        provisioner_password: name(&paths.provisioner_password),
        dir,
    }
}

fn file_name(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .with_context(|| format!("'{}' has no file name", path.display()))
}

/// A refusal of `guestdir` (a link, not a directory) as an error that
/// says what to do.
fn refusal(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::InvalidData {
        err(
            Kind::Failed,
            format!("{e}: not followed; remove it (`phoenix-ca publish` makes public/ again)"),
        )
    } else {
        anyhow::Error::new(e)
    }
}

/// `public/` of the state directory, reached without following a link.
/// `Ok(None)` when it does not exist.
fn open(state: &CaPaths) -> Result<Option<Dir>> {
    let dir = Dir::open(&state.dir)
        .map_err(refusal)
        .with_context(|| format!("opening CA state directory '{}'", state.dir.display()))?;
    dir.subdir(OsStr::new(PUBLIC_DIR)).map_err(refusal)
}

/// `public/`, created 0755 (whatever the umask) if missing.
fn open_or_create(state: &CaPaths) -> Result<Dir> {
    if let Some(dir) = open(state)? {
        return Ok(dir);
    }
    let path = dir_of(&state.dir);
    let dir = Dir::create(&path, 0o755).map_err(refusal)?;
    dir.set_mode(0o755)?;
    log::info!("created public CA directory '{}'", path.display());
    Ok(dir)
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    Ok(text)
}

/// Write `data` as the file of `path` in `dir`, atomically, 0644.
fn write(dir: &Dir, path: &Path, data: &[u8]) -> Result<()> {
    dir.write_atomic(file_name(path)?, data, FileOptions::mode(0o644))
        .with_context(|| format!("writing '{}'", path.display()))
}

/// Publisher's side: create `public/` if needed and write the generation,
/// the root certificate (`root_pem`, when there is one to copy), the
/// fingerprint, and last the token, each atomically.
pub fn publish(
    state: &CaPaths,
    generation: &Generation,
    root_pem: Option<&[u8]>,
    token: &Token,
) -> Result<()> {
    let p = paths(state);
    let dir = open_or_create(state)?;
    write(&dir, &p.generation, &json(generation)?)?;
    if let Some(pem) = root_pem {
        write(&dir, &p.root_cert, pem)?;
    }
    write(
        &dir,
        &p.fingerprint,
        format!("{}\n", token.fingerprint).as_bytes(),
    )?;
    write(&dir, &p.ready, &json(token)?)?;
    log::info!("published the public copies in '{}'", p.dir.display());
    Ok(())
}

/// Host's side of a new generation: if `public/` exists, write the new
/// generation there, then withdraw its token. Returns whether it exists.
pub fn invalidate(state: &CaPaths, generation: &Generation) -> Result<bool> {
    let p = paths(state);
    let Some(dir) = open(state)? else {
        return Ok(false);
    };
    write(&dir, &p.generation, &json(generation)?)?;
    remove(&dir, &p.ready)?;
    Ok(true)
}

/// Withdraw `public/`'s token (the CA stops); whether there was one.
pub fn withdraw(state: &CaPaths) -> Result<bool> {
    match open(state)? {
        Some(dir) => remove(&dir, &paths(state).ready),
        None => Ok(false),
    }
}

/// Remove the file of `path` from `dir` (a link is removed, not followed)
/// and make that durable; whether it was there.
fn remove(dir: &Dir, path: &Path) -> Result<bool> {
    let removed = dir.unlink(file_name(path)?)?;
    if removed {
        dir.sync()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::token;
    use crate::config::CaConfig;
    use std::os::unix::fs::MetadataExt;

    fn setup() -> (tempfile::TempDir, CaPaths) {
        let d = tempfile::tempdir().unwrap();
        let paths = CaConfig::default().paths_in(d.path());
        (d, paths)
    }

    fn sample_token(g: &Generation) -> Token {
        Token {
            version: token::TOKEN_VERSION,
            generation: g.generation.clone(),
            ca_url: "https://127.0.0.1:9000".into(),
            fingerprint: "ab".repeat(32),
            written_at: token::now_rfc3339(),
        }
    }

    #[test]
    fn public_paths_keep_the_file_names() {
        let (_d, state) = setup();
        let p = paths(&state);
        assert_eq!(p.dir, state.dir.join("public"));
        assert_eq!(p.ready, p.dir.join("ca.ready"));
        assert_eq!(p.root_cert, p.dir.join("phoenix_root_ca.crt"));
        assert_eq!(p.fingerprint, p.dir.join("root_ca.fingerprint"));
    }

    #[test]
    fn publish_then_invalidate_then_withdraw() {
        let (_d, state) = setup();
        let g1 = token::new_generation().unwrap();
        let t1 = sample_token(&g1);
        publish(&state, &g1, Some(b"PEM"), &t1).unwrap();
        let p = paths(&state);
        assert!(token::check(&p).is_fresh());
        assert_eq!(std::fs::read(&p.root_cert).unwrap(), b"PEM");
        let mode = std::fs::metadata(&p.dir).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        for f in [&p.ready, &p.generation, &p.root_cert, &p.fingerprint] {
            assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o644);
        }
        let g2 = token::new_generation().unwrap();
        assert!(invalidate(&state, &g2).unwrap());
        assert_eq!(token::check(&p), token::Verdict::Missing);
        assert_eq!(token::read_generation(&p.generation).unwrap(), Some(g2));
        assert!(!withdraw(&state).unwrap());
        let names: Vec<_> = std::fs::read_dir(&p.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temp files left: {names:?}");
    }

    #[test]
    fn invalidate_without_public_does_nothing() {
        let (_d, state) = setup();
        let g = token::new_generation().unwrap();
        assert!(!invalidate(&state, &g).unwrap());
        assert!(!dir_of(&state.dir).exists());
    }

    #[test]
    fn a_symlinked_public_dir_is_refused_and_not_written_through() {
        let (d, state) = setup();
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("ca.ready"), "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir_of(&state.dir)).unwrap();
        let g = token::new_generation().unwrap();
        let e = invalidate(&state, &g).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(e.to_string().contains("not followed"), "{e}");
        assert!(withdraw(&state).is_err());
        assert!(publish(&state, &g, None, &sample_token(&g)).is_err());
        assert_eq!(std::fs::read(elsewhere.join("ca.ready")).unwrap(), b"keep");
        assert!(!elsewhere.join("ca.generation").exists());
    }

    #[test]
    fn a_symlink_at_a_public_file_is_replaced_not_followed() {
        let (d, state) = setup();
        let g = token::new_generation().unwrap();
        publish(&state, &g, None, &sample_token(&g)).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let p = paths(&state);
        std::fs::remove_file(&p.generation).unwrap();
        std::os::unix::fs::symlink(&victim, &p.generation).unwrap();
        std::fs::remove_file(&p.ready).unwrap();
        std::os::unix::fs::symlink(&victim, &p.ready).unwrap();
        invalidate(&state, &token::new_generation().unwrap()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!p.generation.symlink_metadata().unwrap().is_symlink());
        assert!(p.ready.symlink_metadata().is_err());
    }
}
