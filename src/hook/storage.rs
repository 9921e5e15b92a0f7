//! "Does this host path sit on mounted storage?" for the hookscript.
//!
//! Proxmox mounts a shared storage `S` at `<storage_root>/S` (default
//! `/mnt/pve/S`). When that mount is missing, `<storage_root>/S/...` is an
//! ordinary (often empty) directory on the root file system, and a guest
//! started on it writes its state into the wrong place. So a path under
//! `<storage_root>/S/` needs `<storage_root>/S` to be a mount point (asked
//! of the kernel's mount table, never of the possibly-hung NFS server) and
//! then to exist; a path elsewhere only needs to exist.

use std::path::{Component, Path, PathBuf};

use crate::mount::mountinfo::MountTable;

/// The storage a path lies on: its name and mount point, if the path is
/// under `<storage_root>/<name>`.
pub fn storage_of(storage_root: &Path, path: &Path) -> Option<(String, PathBuf)> {
    let rest = path.strip_prefix(storage_root).ok()?;
    match rest.components().next()? {
        Component::Normal(name) => {
            Some((name.to_string_lossy().into_owned(), storage_root.join(name)))
        }
        _ => None,
    }
}

/// Whether `dir` is a mount point: as written, or (for a storage root
/// reached through a symbolic link) as it resolves.
fn is_mount_point(table: &MountTable, dir: &Path) -> bool {
    table.is_mount_point(dir)
        || std::fs::canonicalize(dir).is_ok_and(|real| table.is_mount_point(&real))
}

/// Check `path` (`what` names it in messages: "bind mount source", "CA
/// state directory"). `Ok` says what was checked; `Err` says what is wrong,
/// naming the path and the storage.
pub fn check(
    table: &MountTable,
    storage_root: &Path,
    what: &str,
    path: &Path,
) -> Result<String, String> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{what} '{}' is not an absolute path without '..'",
            path.display()
        ));
    }
    let exists = |p: &Path| match std::fs::metadata(p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{what} '{}' does not exist", p.display()))
        }
        Err(e) => Err(format!("{what} '{}': {e}", p.display())),
    };
    match storage_of(storage_root, path) {
        Some((name, mount_point)) => {
            if !is_mount_point(table, &mount_point) {
                return Err(format!(
                    "{what} '{}': storage '{name}' is not mounted ('{}' is not a mount point)",
                    path.display(),
                    mount_point.display()
                ));
            }
            exists(path).map_err(|e| format!("{e} on storage '{name}'"))?;
            Ok(format!(
                "{what} '{}' exists on mounted storage '{name}'",
                path.display()
            ))
        }
        None => {
            exists(path)?;
            Ok(format!(
                "{what} '{}' exists (not under '{}': no storage mount to check)",
                path.display(),
                storage_root.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(mount_point: &Path) -> MountTable {
        let line = format!(
            "40 22 0:40 / {} rw,relatime - nfs4 10.0.0.13:/quickOS rw\n",
            mount_point.display()
        );
        MountTable::parse(line.as_bytes())
    }

    #[test]
    fn storage_is_the_first_component_under_the_root() {
        let root = Path::new("/mnt/pve");
        assert_eq!(
            storage_of(root, Path::new("/mnt/pve/quickOS/lxc/103/ssl")),
            Some(("quickOS".into(), PathBuf::from("/mnt/pve/quickOS")))
        );
        assert_eq!(storage_of(root, Path::new("/mnt/pve")), None);
        assert_eq!(storage_of(root, Path::new("/srv/data")), None);
        assert_eq!(storage_of(root, Path::new("/mnt/pveX/a")), None);
    }

    #[test]
    fn unmounted_storage_is_refused_even_if_the_path_exists() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("quickOS/lxc/101/logs");
        std::fs::create_dir_all(&src).unwrap();
        let why = check(
            &MountTable::default(),
            root.path(),
            "bind mount source",
            &src,
        )
        .unwrap_err();
        assert!(why.contains("storage 'quickOS' is not mounted"), "{why}");
        assert!(why.contains(&src.display().to_string()), "{why}");
    }

    #[test]
    fn mounted_storage_needs_the_path_too() {
        let root = tempfile::tempdir().unwrap();
        let storage = root.path().join("quickOS");
        std::fs::create_dir_all(storage.join("present")).unwrap();
        let table = table_with(&storage);
        let ok = check(&table, root.path(), "source", &storage.join("present")).unwrap();
        assert!(ok.contains("mounted storage 'quickOS'"), "{ok}");
        let why = check(&table, root.path(), "source", &storage.join("absent")).unwrap_err();
        assert!(why.contains("does not exist on storage 'quickOS'"), "{why}");
    }

    #[test]
    fn paths_elsewhere_only_need_to_exist() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ok = check(&MountTable::default(), root.path(), "source", other.path()).unwrap();
        assert!(ok.contains("no storage mount to check"), "{ok}");
        let gone = other.path().join("gone");
        let why = check(&MountTable::default(), root.path(), "source", &gone).unwrap_err();
        assert!(why.contains("does not exist"), "{why}");
        assert!(check(
            &MountTable::default(),
            root.path(),
            "source",
            Path::new("rel")
        )
        .is_err());
    }
}
