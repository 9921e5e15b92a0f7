//! The CA's secrets must not be open to group or others: the CA password,
//! the provisioner password and everything in `secrets/` (the CA's private
//! keys). The hook tightens them (files 0600, directories 0700) and says
//! so, or, with `ca.fix_permissions` off, refuses to start the CA.
//!
//! Each file is opened with `O_NOFOLLOW` and judged and changed through
//! that descriptor (`fstat`, `fchmod`), so a symbolic link swapped in
//! cannot redirect the `chmod` outside the state directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

use crate::config::CaConfig;

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

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
}

/// Check (and with `fix`, tighten) every secret under `roots` that
/// exists. Missing ones are fine (not every CA has `ca_password.txt`); a
/// symbolic link is reported and left alone. `Err` only for an I/O error.
pub fn check(roots: &[PathBuf], fix: bool) -> io::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for root in roots {
        visit(root, fix, 0, &mut findings)?;
    }
    Ok(findings)
}

fn visit(path: &Path, fix: bool, depth: usize, findings: &mut Vec<Finding>) -> io::Result<()> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            log::warn!(
                "secret '{}' is a symbolic link: not followed, not checked",
                path.display()
            );
            return Ok(());
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("opening '{}': {e}", path.display()),
            ))
        }
    };
    let meta = file.metadata()?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        let target = if meta.is_dir() { 0o700 } else { 0o600 };
        let fixed_to = if fix {
            file.set_permissions(std::fs::Permissions::from_mode(target))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("chmod '{}': {e}", path.display()))
                })?;
            Some(target)
        } else {
            None
        };
        findings.push(Finding {
            path: path.to_path_buf(),
            mode,
            fixed_to,
        });
    }
    if meta.is_dir() && depth < MAX_DEPTH {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            visit(&entry, fix, depth + 1, findings)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
