//! The CA's secrets must not be open to group or others: the CA password,
//! the provisioner password and everything in `secrets/` (the CA's private
//! keys). The hook tightens them (files 0600, directories 0700) and says
//! so, or, with `ca.fix_permissions` off, refuses to start the CA.
//!
//! The CA container writes this directory, and may swap any name in it for
//! a symbolic link while the hook walks it. So the walk is done on
//! descriptors ([`crate::guestdir`]): the state directory is reached with
//! no link followed on the way, each directory below is opened relative
//! to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY` and listed
//! through that descriptor, each file is opened relative to it with
//! `O_NOFOLLOW`, judged with `fstat` and changed with `fchmod`. A link (or
//! a hard link, a FIFO, a device) is reported and left alone: nothing
//! outside the state directory is ever listed or changed.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::CaConfig;
use crate::guestdir::{self, Dir};

/// Deepest level walked below `secrets/`.
const MAX_DEPTH: usize = 4;

/// A secret that was open to group or others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file or directory.
    pub path: PathBuf,
    /// Its permission bits as found.
    pub mode: u32,
    /// The bits it has now, if it was tightened.
    pub fixed_to: Option<u32>,
}

/// The secrets of the CA state directory `dir`: the two password files
/// and the `secrets/` directory.
pub fn secret_paths(ca: &CaConfig, dir: &Path) -> Vec<PathBuf> {
    vec![
        dir.join("ca_password.txt"),
        dir.join(&ca.provisioner_password_file),
        dir.join("secrets"),
    ]
}

/// Check (and with `fix`, tighten) every secret under `roots` that
/// exists. Missing ones are fine (not every CA has `ca_password.txt`); a
/// symbolic link is reported and left alone. `Err` for an I/O error, or
/// a state directory reached through a link.
pub fn check(roots: &[PathBuf], fix: bool) -> io::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for root in roots {
        let (dir, name) = match guestdir::open_parent(root) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        visit(&dir, &name, fix, 0, &mut findings)?;
    }
    Ok(findings)
}

fn left_alone(path: &Path, why: impl std::fmt::Display) {
    log::warn!(
        "secret '{}' {why}: not followed, not checked",
        path.display()
    );
}

/// Tighten `name` in `dir`, and what is below it if it is a directory.
fn visit(
    dir: &Dir,
    name: &OsStr,
    fix: bool,
    depth: usize,
    findings: &mut Vec<Finding>,
) -> io::Result<()> {
    let path = dir.path().join(name);
    let Some(kind) = dir.mode_of(name)? else {
        return Ok(());
    };
    if kind & nix::libc::S_IFMT == nix::libc::S_IFDIR {
        // Opened with O_NOFOLLOW | O_DIRECTORY: if it was swapped for a
        // link since the fstatat, the open fails and nothing is followed.
        let sub = match dir.subdir(name) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                left_alone(&path, format!("changed while checked ({e})"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mode = sub.metadata()?.mode() & 0o7777;
        tighten(&path, mode, 0o700, fix, |m| sub.set_mode(m), findings)?;
        if depth < MAX_DEPTH {
            for child in sub.entries()? {
                visit(&sub, &child, fix, depth + 1, findings)?;
            }
        }
        return Ok(());
    }
    match dir.open_file(name) {
        Ok(Some(f)) => {
            let mode = f.metadata().mode() & 0o7777;
            tighten(&path, mode, 0o600, fix, |m| f.set_mode(m), findings)
        }
        Ok(None) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            left_alone(&path, format!("is {}", guestdir::kind_name(kind)));
            if kind & nix::libc::S_IFMT == nix::libc::S_IFREG {
                log::warn!("{e}");
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn tighten(
    path: &Path,
    mode: u32,
    target: u32,
    fix: bool,
    chmod: impl FnOnce(u32) -> io::Result<()>,
    findings: &mut Vec<Finding>,
) -> io::Result<()> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let fixed_to = if fix {
        chmod(target)?;
        Some(target)
    } else {
        None
    };
    findings.push(Finding {
        path: path.to_path_buf(),
        mode,
        fixed_to,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn open_secrets_are_tightened_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let roots = secret_paths(&CaConfig::default(), dir.path());
        std::fs::write(&roots[1], "pw").unwrap();
        chmod(&roots[1], 0o644);
        std::fs::create_dir(&roots[2]).unwrap();
        chmod(&roots[2], 0o755);
        let key = roots[2].join("intermediate_ca_key");
        std::fs::write(&key, "k").unwrap();
        chmod(&key, 0o600);
        let f = check(&roots, true).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].mode, f[0].fixed_to), (0o644, Some(0o600)));
        assert_eq!((f[1].mode, f[1].fixed_to), (0o755, Some(0o700)));
        assert_eq!(mode_of(&roots[1]), 0o600);
        assert_eq!(mode_of(&roots[2]), 0o700);
        assert!(check(&roots, true).unwrap().is_empty());
    }

    #[test]
    fn without_fix_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let roots = secret_paths(&CaConfig::default(), dir.path());
        std::fs::write(&roots[0], "pw").unwrap();
        chmod(&roots[0], 0o640);
        let f = check(&roots, false).unwrap();
        assert_eq!(f[0].fixed_to, None);
        assert_eq!(mode_of(&roots[0]), 0o640);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        chmod(outside.path(), 0o644);
        let roots = secret_paths(&CaConfig::default(), dir.path());
        std::os::unix::fs::symlink(outside.path(), &roots[0]).unwrap();
        assert!(check(&roots, true).unwrap().is_empty());
        assert_eq!(mode_of(outside.path()), 0o644);
    }

    #[test]
    fn a_secrets_dir_swapped_for_a_link_mid_walk_is_never_followed() {
        // The CA container exchanges `secrets` and a link to a host
        // directory as fast as it can while the hook walks.
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("host.key");
        std::fs::write(&victim, "host").unwrap();
        chmod(&victim, 0o644);
        chmod(host.path(), 0o755);
        let roots = secret_paths(&CaConfig::default(), dir.path());
        std::fs::create_dir(&roots[2]).unwrap();
        let key = roots[2].join("host.key");
        std::fs::write(&key, "k").unwrap();
        // Its mode is put back through a descriptor: by path, the test
        // itself would follow the guest's link.
        let key = std::fs::File::open(&key).unwrap();
        let link = dir.path().join("secrets.link");
        std::os::unix::fs::symlink(host.path(), &link).unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let (swaps, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, l, n, end) = (roots[2].clone(), link.clone(), swaps.clone(), stop.clone());
        let guest = std::thread::spawn(move || {
            while !end.load(Ordering::Relaxed) {
                let flags = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                nix::fcntl::renameat2(None, &s, None, &l, flags).unwrap();
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Walks until the guest has swapped many times during them.
        let mut walks = 0;
        while walks < 300 || swaps.load(Ordering::Relaxed) < 20_000 {
            key.set_permissions(std::fs::Permissions::from_mode(0o644))
                .unwrap();
            check(&roots, true).unwrap();
            walks += 1;
            assert!(walks < 1_000_000);
        }
        stop.store(true, Ordering::Relaxed);
        guest.join().unwrap();
        assert_eq!(mode_of(&victim), 0o644, "a host file was changed");
        assert_eq!(mode_of(host.path()), 0o755, "a host directory was changed");
    }
}
