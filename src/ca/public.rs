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
//! which could put a symbolic link there: it is opened with `O_NOFOLLOW`
//! and every write, rename and removal is relative to that descriptor
//! (`openat`, `renameat`, `unlinkat`), never a path through it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;

use super::token::{Generation, Token};
use crate::config::CaPaths;
use crate::exit::{err, Kind};
use crate::fsutil;

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

fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("'{}' has no usable file name", path.display()))
}

/// `public/`, opened without following a symbolic link. `Ok(None)` when
/// it does not exist; anything but a directory is refused, named.
fn open(dir: &Path) -> Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => Err(err(
            Kind::Failed,
            format!(
                "public CA directory '{}' is not a directory (a symbolic link or a file): \
                     refused, not followed; remove it (`phoenix-ca publish` makes it again)",
                dir.display()
            ),
        )),
        Err(e) => Err(e).with_context(|| format!("opening '{}'", dir.display())),
    }
}

/// `public/`, created (0755) if missing, then opened as [`open`] does.
fn open_or_create(dir: &Path) -> Result<File> {
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => log::info!("created public CA directory '{}'", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating directory '{}'", dir.display())),
    }
    open(dir)?.with_context(|| format!("'{}' vanished while being opened", dir.display()))
}

/// Write `data` as `name` in the directory `dir` (at `dir_path`)
/// atomically: a new temp file made in the directory (`O_EXCL`,
/// `O_NOFOLLOW`), mode set before data, `fsync`, `renameat`, `fsync` of
/// the directory.
fn write_at(dir: &File, dir_path: &Path, name: &str, data: &[u8], mode: u32) -> Result<()> {
    let target = dir_path.join(name);
    let tmp_path = fsutil::temp_path_for(&target)?;
    let tmp = file_name(&tmp_path)?.to_string();
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("creating temp file '{}'", tmp_path.display()))?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let result = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(data))
        .and_then(|()| file.sync_all())
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            nix::fcntl::renameat(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                Some(dir.as_raw_fd()),
                name,
            )
            .map_err(|e| anyhow::Error::from(io::Error::from(e)))
        });
    if let Err(e) = result {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(e.context(format!("writing '{}'", target.display())));
    }
    dir.sync_all()
        .with_context(|| format!("fsync directory '{}'", dir_path.display()))
}

/// Remove `name` from the directory `dir`; whether it was there.
fn remove_at(dir: &File, dir_path: &Path, name: &str) -> Result<bool> {
    match nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) => {
            dir.sync_all()
                .with_context(|| format!("fsync directory '{}'", dir_path.display()))?;
            Ok(true)
        }
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(io::Error::from(e))
            .with_context(|| format!("removing '{}'", dir_path.join(name).display())),
    }
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    Ok(text)
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
    let dir = open_or_create(&p.dir)?;
    write_at(
        &dir,
        &p.dir,
        file_name(&p.generation)?,
        &json(generation)?,
        0o644,
    )?;
    if let Some(pem) = root_pem {
        write_at(&dir, &p.dir, file_name(&p.root_cert)?, pem, 0o644)?;
    }
    let fp = format!("{}\n", token.fingerprint);
    write_at(
        &dir,
        &p.dir,
        file_name(&p.fingerprint)?,
        fp.as_bytes(),
        0o644,
    )?;
    write_at(&dir, &p.dir, file_name(&p.ready)?, &json(token)?, 0o644)?;
    log::info!("published the public copies in '{}'", p.dir.display());
    Ok(())
}

/// Host's side of a new generation: if `public/` exists, write the new
/// generation there, then withdraw its token. Returns whether it exists.
pub fn invalidate(state: &CaPaths, generation: &Generation) -> Result<bool> {
    let p = paths(state);
    let Some(dir) = open(&p.dir)? else {
        return Ok(false);
    };
    write_at(
        &dir,
        &p.dir,
        file_name(&p.generation)?,
        &json(generation)?,
        0o644,
    )?;
    remove_at(&dir, &p.dir, file_name(&p.ready)?)?;
    Ok(true)
}

/// Withdraw `public/`'s token (the CA stops); whether there was one.
pub fn withdraw(state: &CaPaths) -> Result<bool> {
    let p = paths(state);
    match open(&p.dir)? {
        Some(dir) => remove_at(&dir, &p.dir, file_name(&p.ready)?),
        None => Ok(false),
    }
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
        assert!(e.to_string().contains("refused, not followed"), "{e}");
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
