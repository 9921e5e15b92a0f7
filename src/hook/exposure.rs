//! Which bind mounts of a dependent container hand it the CA's secrets.
//!
//! The CA container's state directory holds the provisioner password, the
//! CA password and `secrets/` (the CA's private keys). Root in any
//! container that bind-mounts that directory (or a parent of it, or the
//! `secrets/` directory itself) can read them: in an unprivileged
//! container it has the same host uid as the CA container's root (the
//! default idmap is shared), in a privileged one it is root. Dependents
//! only need the public part, which `phoenix-ca publish` copies into
//! `public/`; the hook warns (it does not refuse: the start would break
//! setups that worked) naming the guest, the mount and the files.

use std::path::{Path, PathBuf};

/// A bind mount that exposes CA secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// Position in the container's `mount_points` (Proxmox's `mpN`).
    pub index: usize,
    /// Source on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub container_path: PathBuf,
    /// The secrets the guest can read, as it sees them.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self
            .files
            .iter()
            .map(|p| format!("'{}'", p.display()))
            .collect();
        write!(
            f,
            "bind mount mp{} ('{}' -> '{}') exposes CA secrets to the guest: {}",
            self.index,
            self.host_path.display(),
            self.container_path.display(),
            files.join(", ")
        )
    }
}

/// Whether `a` and `b` overlap: one lies under the other (or they are the
/// same path), compared by components.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// How host paths are looked at: whether one exists, and where it leads.
/// The hook's answer is its storages' ([`super::storage::Storages`]): no
/// link a guest may have made is followed, in a bind source or in the
/// CA's state directory (the CA container writes there).
pub trait HostPaths {
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Where `path` leads, as far as the host's own configuration goes.
    fn real_path(&self, path: &Path) -> Option<PathBuf>;
}

impl HostPaths for super::storage::Storages {
    fn exists(&self, path: &Path) -> bool {
        super::storage::Storages::exists(self, path)
    }
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        super::storage::Storages::real_path(self, path)
    }
}

/// The secrets of `present` (absolute host paths of files or directories
/// that exist, each with where it leads) the bind mount `host_path ->
/// container_path` exposes, as the guest sees them. Compared as written
/// and as they lead (a source on a storage reached through the host's
/// link).
fn exposed(
    host_path: &Path,
    container_path: &Path,
    present: &[(&PathBuf, Option<PathBuf>)],
    paths: &dyn HostPaths,
) -> Vec<PathBuf> {
    let real_source = paths.real_path(host_path);
    present
        .iter()
        .filter_map(|(s, real)| {
            let inside = if overlaps(s, host_path) {
                s.strip_prefix(host_path).ok().map(Path::to_path_buf)
            } else {
                match (&real_source, real) {
                    (Some(src), Some(real)) if overlaps(real, src) => {
                        real.strip_prefix(src).ok().map(Path::to_path_buf)
                    }
                    _ => return None,
                }
            };
            Some(match inside {
                Some(rel) => container_path.join(rel),
                // The mount is inside the secret (a part of `secrets/`).
                None => container_path.to_path_buf(),
            })
        })
        .collect()
}

/// Every mount of `mounts` (host path, container path), in order, that
/// exposes one of `secrets`.
pub fn check<'a>(
    mounts: impl IntoIterator<Item = (&'a Path, &'a Path)>,
    secrets: &[PathBuf],
    paths: &dyn HostPaths,
) -> Vec<Exposure> {
    // Once for all the mounts: which secrets exist, and where each leads
    // (its directory resolved; the secret itself not followed: it may be
    // a link the CA guest made).
    let present: Vec<(&PathBuf, Option<PathBuf>)> = secrets
        .iter()
        .filter(|s| paths.exists(s))
        .map(|s| {
            let real = s
                .parent()
                .and_then(|p| paths.real_path(p))
                .zip(s.file_name())
                .map(|(dir, name)| dir.join(name));
            (s, real)
        })
        .collect();
    if present.is_empty() {
        return Vec::new();
    }
    mounts
        .into_iter()
        .enumerate()
        .filter_map(|(index, (host, guest))| {
            let files = exposed(host, guest, &present, paths);
            (!files.is_empty()).then(|| Exposure {
                index,
                host_path: host.to_path_buf(),
                container_path: guest.to_path_buf(),
                files,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths as the file system has them, links followed (the storages'
    /// own answer is tested in `storage`).
    struct Fs;

    impl HostPaths for Fs {
        fn exists(&self, path: &Path) -> bool {
            path.symlink_metadata().is_ok()
        }
        fn real_path(&self, path: &Path) -> Option<PathBuf> {
            std::fs::canonicalize(path).ok()
        }
    }

    fn exposed(host: &Path, guest: &Path, secrets: &[PathBuf]) -> Vec<PathBuf> {
        check([(host, guest)], secrets, &Fs)
            .into_iter()
            .flat_map(|e| e.files)
            .collect()
    }

    fn state() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let ssl = d.path().join("103/ssl");
        std::fs::create_dir_all(ssl.join("secrets")).unwrap();
        std::fs::create_dir_all(ssl.join("public")).unwrap();
        std::fs::write(ssl.join("provisioner_password.txt"), "pw").unwrap();
        std::fs::write(ssl.join("secrets/root_ca_key"), "k").unwrap();
        let secrets = vec![
            ssl.join("ca_password.txt"),
            ssl.join("provisioner_password.txt"),
            ssl.join("secrets"),
        ];
        (d, ssl, secrets)
    }

    #[test]
    fn the_state_dir_a_parent_or_secrets_expose_public_does_not() {
        let (d, ssl, secrets) = state();
        let guest = Path::new("/etc/step-ca/ssl");
        // ca_password.txt does not exist: not listed.
        assert_eq!(
            exposed(&ssl, guest, &secrets),
            vec![
                guest.join("provisioner_password.txt"),
                guest.join("secrets")
            ]
        );
        let parent = d.path().join("103");
        assert_eq!(
            exposed(&parent, Path::new("/data"), &secrets),
            vec![
                PathBuf::from("/data/ssl/provisioner_password.txt"),
                PathBuf::from("/data/ssl/secrets")
            ]
        );
        assert_eq!(
            exposed(&ssl.join("secrets"), Path::new("/keys"), &secrets),
            vec![PathBuf::from("/keys")]
        );
        assert_eq!(
            exposed(&ssl.join("secrets/x"), Path::new("/k"), &secrets),
            vec![PathBuf::from("/k")]
        );
        assert!(exposed(&ssl.join("public"), guest, &secrets).is_empty());
        assert!(exposed(&d.path().join("103/sslx"), guest, &secrets).is_empty());
    }

    #[test]
    fn a_source_reached_through_a_symlink_is_seen() {
        let (d, ssl, secrets) = state();
        let link = d.path().join("alias");
        std::os::unix::fs::symlink(&ssl, &link).unwrap();
        let found = exposed(&link, Path::new("/ca"), &secrets);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.contains(&PathBuf::from("/ca/secrets")));
    }

    #[test]
    fn check_names_the_mount_index() {
        let (d, ssl, secrets) = state();
        let logs = d.path().join("logs");
        let a = (logs.as_path(), Path::new("/var/log"));
        let b = (ssl.as_path(), Path::new("/etc/step-ca/ssl"));
        let found = check([a, b], &secrets, &Fs);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].index, 1);
        let text = found[0].to_string();
        assert!(text.starts_with("bind mount mp1 ("), "{text}");
        assert!(
            text.contains("'/etc/step-ca/ssl/provisioner_password.txt'"),
            "{text}"
        );
    }
}
