//! "Does this host path sit on mounted storage?" for the hookscript.
//!
//! When a storage is not there, its directory is often still an ordinary
//! (empty) directory on the root file system, and a guest started on it
//! writes its state into the wrong place. Proxmox storages differ in what
//! "there" means, so the rule is read from `/etc/pve/storage.cfg` and is
//! the one pve-storage itself applies before it activates the storage
//! (`activate_storage` of each plugin, `src/PVE/Storage/*Plugin.pm` of
//! <https://github.com/proxmox/pve-storage>):
//!
//! - `dir` (and `btrfs`, which reuses it) without `is_mountpoint`: a plain
//!   directory; Proxmox only makes sure it exists (`DirPlugin.pm`
//!   `activate_storage` -> `config_aware_base_mkdir`, `mkdir` /
//!   `create-base-path`). Here it must exist: the hook creates nothing.
//! - `dir` with `is_mountpoint yes` (or a path as its value): that path
//!   must be a mount point, of any type (`DirPlugin.pm`
//!   `parse_is_mountpoint`, `path_is_mounted`).
//! - `zfspool`: the pool's dataset mounted, type `zfs`, at its
//!   `mountpoint` or `/<pool>` (`ZFSPoolPlugin.pm` `path` and
//!   `dataset_mounted_heuristic`: a mounted child dataset counts).
//! - `nfs`, `cifs`, `cephfs`: `path` (default `/mnt/pve/<id>`,
//!   `check_config`) is a mount point of that type from the configured
//!   server and export, share or subdir (`NFSPlugin.pm` `nfs_is_mounted`,
//!   `CIFSPlugin.pm` `cifs_is_mounted`, `CephFSPlugin.pm`
//!   `cephfs_is_mounted`).
//!
//! A path under no configured storage only has to exist, unless it lies
//! under one of toolkit.json's `required_mounts`. Without a `storage.cfg`
//! (not a Proxmox node, or a test) the old rule stands in: a path under
//! `<storage_root>/S/` needs `<storage_root>/S` to be a mount point.
//! Mount points are asked of the kernel's mount table, never of a
//! possibly-hung NFS server.

pub mod cfg;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};

pub use cfg::{parse, NetFs, Rule, Section, Storage, STORAGE_CFG_LIMIT};

use crate::fsutil;
use crate::guestdir::{self, Dir};
use crate::mount::mountinfo::{Mount, MountTable};

impl Storage {
    /// `Ok` (what was checked) when the storage is there as pve-storage
    /// would have it, for a path at `path` on it.
    fn mounted(&self, table: &MountTable, path: &Path) -> Result<String, String> {
        let me = self.describe();
        match &self.rule {
            Rule::Directory | Rule::Other => Ok(format!("{me}: exists")),
            Rule::MountPoint(mp) => {
                if is_mount_point(table, mp) {
                    Ok(format!("{me}: '{}' is a mount point", mp.display()))
                } else {
                    Err(format!(
                        "{me} is not mounted: '{}' is not a mount point",
                        mp.display()
                    ))
                }
            }
            Rule::Zfs { dataset, at } => {
                let of_pool = |m: &Mount| {
                    m.fs_type == "zfs"
                        && (m.source == *dataset || m.source.starts_with(&format!("{dataset}/")))
                };
                // As written: the mount table is the kernel's, and the
                // path is not resolved (a guest's link there is not
                // followed to a mount it does not lie on).
                let holder = table.holding(path);
                match holder {
                    Some(m) if m.mount_point.starts_with(at) && of_pool(m) => Ok(format!(
                        "{me}: '{}' is zfs dataset {}",
                        m.mount_point.display(),
                        m.source
                    )),
                    Some(m) => Err(format!(
                        "{me} is not mounted: no zfs dataset of '{dataset}' is mounted at '{}' \
                         (the path is on {} {} mounted at '{}')",
                        at.display(),
                        m.fs_type,
                        m.source,
                        m.mount_point.display()
                    )),
                    None => Err(format!(
                        "{me} is not mounted: no zfs dataset of '{dataset}' is mounted at '{}'",
                        at.display()
                    )),
                }
            }
            Rule::Network { fs, at, source } => {
                let m = table.at(at).or_else(|| {
                    std::fs::canonicalize(at)
                        .ok()
                        .and_then(|real| table.at(&real))
                });
                let Some(m) = m else {
                    return Err(format!(
                        "{me} is not mounted: '{}' is not a mount point",
                        at.display()
                    ));
                };
                if !fs.is_type(&m.fs_type) {
                    return Err(format!(
                        "{me} is not mounted: '{}' has {} {} mounted, not {}",
                        at.display(),
                        m.fs_type,
                        m.source,
                        fs.name()
                    ));
                }
                let same = match (fs, source) {
                    (_, None) => true,
                    (NetFs::CephFs, Some(s)) => m.source.ends_with(s) || m.source == "ceph-fuse",
                    (_, Some(s)) => m.source.strip_suffix('/').unwrap_or(&m.source) == s,
                };
                if !same {
                    return Err(format!(
                        "{me} is not mounted: '{}' has {} {} mounted, not {}",
                        at.display(),
                        m.fs_type,
                        m.source,
                        source.as_deref().unwrap_or_default()
                    ));
                }
                Ok(format!(
                    "{me}: '{}' is {} {}",
                    at.display(),
                    m.fs_type,
                    m.source
                ))
            }
        }
    }
}

/// `st_mode` of `path` itself (`None`: absent), following no symbolic
/// link below `base`. `base` is the host's part of the path (a storage's
/// path or mount point, from root's configuration), given with its
/// directory opened as pve-storage resolves it (`Cwd::realpath`), so a
/// storage reached through the host's own link still counts. Below it a
/// guest may write (a bind-mount source, the CA state directory), so from
/// there each directory is opened with `O_NOFOLLOW` ([`guestdir`]) and
/// the last component is not followed either. `walked` keeps the
/// directories opened on the way, by base and the path below it: a
/// container's mounts and the CA's secrets mostly share their first
/// directories, and each is opened once (and is then the same directory
/// for every later check of the run).
fn mode_below(
    base: (&Path, &Dir),
    path: &Path,
    walked: &RefCell<HashMap<(PathBuf, PathBuf), Rc<Dir>>>,
) -> io::Result<Option<u32>> {
    let (base, first) = base;
    let rest = path.strip_prefix(base).map_err(|_| {
        io::Error::other(format!(
            "'{}' is not under '{}'",
            path.display(),
            base.display()
        ))
    })?;
    let mut names: Vec<&OsStr> = rest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some(last) = names.pop() else {
        return first.metadata().map(|m| Some(m.mode()));
    };
    let mut below: Option<Rc<Dir>> = None;
    let mut at = PathBuf::new();
    for name in names {
        at.push(name);
        let key = (base.to_path_buf(), at.clone());
        let cached = walked.borrow().get(&key).cloned();
        let dir = match cached {
            Some(d) => d,
            None => match below.as_deref().unwrap_or(first).subdir(name)? {
                Some(d) => {
                    let d = Rc::new(d);
                    walked.borrow_mut().insert(key, Rc::clone(&d));
                    d
                }
                None => return Ok(None),
            },
        };
        below = Some(dir);
    }
    below.as_deref().unwrap_or(first).mode_of(last)
}

/// A base resolved ([`Storages::check`] walks from it): where it leads,
/// and that directory opened.
#[derive(Debug)]
struct Base {
    real: PathBuf,
    dir: Rc<Dir>,
}

/// Whether `dir` is a mount point: as written, or (reached through a
/// symbolic link) as it resolves, which is what `DirPlugin.pm`
/// `path_is_mounted` compares (`Cwd::realpath`).
fn is_mount_point(table: &MountTable, dir: &Path) -> bool {
    table.is_mount_point(dir)
        || std::fs::canonicalize(dir).is_ok_and(|real| table.is_mount_point(&real))
}

/// The storage a path lies on under the fallback rule (no storage.cfg):
/// its name and mount point, if the path is under `<storage_root>/<name>`.
pub fn storage_of(storage_root: &Path, path: &Path) -> Option<(String, PathBuf)> {
    let rest = path.strip_prefix(storage_root).ok()?;
    match rest.components().next()? {
        Component::Normal(name) => {
            Some((name.to_string_lossy().into_owned(), storage_root.join(name)))
        }
        _ => None,
    }
}

/// Where the storages come from.
#[derive(Debug, Clone)]
enum Source {
    /// `storage.cfg`, read.
    Cfg(Vec<Storage>),
    /// No `storage.cfg`: `<storage_root>/S` must be a mount point.
    Fallback(PathBuf),
}

/// The host's storages and the mounts toolkit.json requires: what
/// [`Storages::check`] checks a host path against.
#[derive(Debug, Clone)]
pub struct Storages {
    cfg_path: PathBuf,
    source: Source,
    required: Vec<PathBuf>,
    /// Lines of storage.cfg that were ignored, for the log.
    pub warnings: Vec<String>,
    /// Bases resolved and opened so far ([`Storages::resolve`]): a
    /// container's mounts and the CA's secrets mostly share one storage.
    resolved: RefCell<HashMap<PathBuf, Rc<Base>>>,
    /// Directories opened below a base so far, by the base and the path
    /// below it ([`mode_below`]).
    walked: RefCell<HashMap<(PathBuf, PathBuf), Rc<Dir>>>,
}

impl Storages {
    /// Read `cfg_path` (`<pve_dir>/storage.cfg`, bounded). Absent: the
    /// `<storage_root>/S` fallback. Unreadable: an error.
    pub fn load(cfg_path: &Path, storage_root: &Path, required: &[PathBuf]) -> Result<Storages> {
        match fsutil::read_limited(cfg_path, STORAGE_CFG_LIMIT) {
            Ok(bytes) => Ok(Self::from_text(
                cfg_path,
                &String::from_utf8_lossy(&bytes),
                storage_root,
                required,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Storages {
                cfg_path: cfg_path.to_path_buf(),
                source: Source::Fallback(storage_root.to_path_buf()),
                required: required.to_vec(),
                warnings: Vec::new(),
                resolved: RefCell::default(),
                walked: RefCell::default(),
            }),
            Err(e) => Err(e).with_context(|| {
                format!("reading the storage configuration '{}'", cfg_path.display())
            }),
        }
    }

    /// The storages of `text` (the content of `cfg_path`), with the
    /// `local` storage pve-storage always has (`dir` at `/var/lib/vz`,
    /// `Plugin.pm` `parse_config`) when the file has no usable one.
    pub fn from_text(
        cfg_path: &Path,
        text: &str,
        storage_root: &Path,
        required: &[PathBuf],
    ) -> Storages {
        let (sections, warnings) = parse(text);
        let mut storages: Vec<Storage> = sections
            .iter()
            .filter_map(|s| Storage::from_section(s, storage_root))
            .collect();
        let local_ok = storages
            .iter()
            .any(|s| s.id == "local" && s.kind == "dir" && s.path == Path::new("/var/lib/vz"));
        if !local_ok {
            storages.retain(|s| s.id != "local");
            storages.push(Storage {
                id: "local".into(),
                kind: "dir".into(),
                path: "/var/lib/vz".into(),
                rule: Rule::Directory,
                disabled: false,
            });
        }
        Storages {
            cfg_path: cfg_path.to_path_buf(),
            source: Source::Cfg(storages),
            required: required.to_vec(),
            warnings,
            resolved: RefCell::default(),
            walked: RefCell::default(),
        }
    }

    /// Whether storage.cfg was found (else the fallback rule is in use).
    pub fn from_storage_cfg(&self) -> bool {
        matches!(self.source, Source::Cfg(_))
    }

    /// One line for the log: where the rules come from.
    pub fn describe_source(&self) -> String {
        match &self.source {
            Source::Cfg(s) => format!(
                "storages from '{}' ({} with a path)",
                self.cfg_path.display(),
                s.len()
            ),
            Source::Fallback(root) => format!(
                "no '{}': a path under '{}/<storage>/' needs '{}/<storage>' to be a mount point",
                self.cfg_path.display(),
                root.display(),
                root.display()
            ),
        }
    }

    /// The storage `path` lies on (the one with the longest path).
    pub fn storage_of(&self, path: &Path) -> Option<&Storage> {
        let Source::Cfg(storages) = &self.source else {
            return None;
        };
        storages
            .iter()
            .filter(|s| path.starts_with(&s.path))
            .max_by_key(|s| s.path.components().count())
    }

    /// `base` (a storage's path or mount point, or a required mount: the
    /// host's configuration; or `/`) as pve-storage resolves it
    /// (`Cwd::realpath`), and opened: once per base.
    fn resolve(&self, base: &Path) -> io::Result<Rc<Base>> {
        if let Some(b) = self.resolved.borrow().get(base) {
            return Ok(Rc::clone(b));
        }
        let real = std::fs::canonicalize(base)?;
        let dir = Rc::new(Dir::open(&real)?);
        let b = Rc::new(Base { real, dir });
        self.resolved
            .borrow_mut()
            .insert(base.to_path_buf(), Rc::clone(&b));
        Ok(b)
    }

    /// [`mode_below`] from `path`'s base ([`Storages::base_of`]), resolved;
    /// from `/` (which resolves to itself: nothing on the way followed)
    /// when it has none.
    fn mode_below(&self, path: &Path) -> io::Result<Option<u32>> {
        let base = self.base_of(path).unwrap_or_else(|| PathBuf::from("/"));
        let dir = Rc::clone(&self.resolve(&base)?.dir);
        mode_below((&base, &dir), path, &self.walked)
    }

    /// The base [`Storages::check`] walks `path` from: its storage's path
    /// (storage.cfg) or mount point (the fallback rule), else the deepest
    /// required mount it lies under; `None`: from `/`.
    fn base_of(&self, path: &Path) -> Option<PathBuf> {
        let storage = match &self.source {
            Source::Cfg(_) => self.storage_of(path).map(|s| s.path.clone()),
            Source::Fallback(root) => storage_of(root, path).map(|(_, mp)| mp),
        };
        storage.or_else(|| {
            self.required
                .iter()
                .filter(|r| path.starts_with(r))
                .max_by_key(|r| r.components().count())
                .cloned()
        })
    }

    /// Whether `path` exists, looked at as [`Storages::check`] looks at
    /// it: no link followed below its base, nor the last component.
    pub fn exists(&self, path: &Path) -> bool {
        matches!(self.mode_below(path), Ok(Some(_)))
    }

    /// `path` as the kernel resolves it, without following a link a guest
    /// may have made: its base ([`Storages::check`]'s) resolved, the rest
    /// as written. For a path `check` accepted that is where it leads (its
    /// walk allowed no link below the base); for another, where the
    /// configuration says it is. `None` when the base does not resolve.
    pub fn real_path(&self, path: &Path) -> Option<PathBuf> {
        match self.base_of(path) {
            Some(b) => {
                let rest = path.strip_prefix(&b).ok()?;
                Some(self.resolve(&b).ok()?.real.join(rest))
            }
            None => Some(path.to_path_buf()),
        }
    }

    /// Check `path` (`what` names it in messages: "bind mount source", "CA
    /// state directory"). `Ok` says what was checked; `Err` says what is
    /// wrong, naming the path, the storage, its type and what was checked.
    pub fn check(&self, table: &MountTable, what: &str, path: &Path) -> Result<String, String> {
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{what} '{}' is not an absolute path without '..'",
                path.display()
            ));
        }
        // The path itself may be a guest's (or under one's): it is looked
        // at without following a link below the storage it lies on.
        let exists = || match self.mode_below(path) {
            Ok(Some(m)) if m & nix::libc::S_IFMT == nix::libc::S_IFLNK => Err(format!(
                "{what} '{}' is {}",
                path.display(),
                guestdir::kind_name(m)
            )),
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("{what} '{}' does not exist", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(format!("{what} '{}' does not exist", path.display()))
            }
            Err(e) => Err(format!("{what} '{}': {e}", path.display())),
        };
        let mut checked = Vec::new();
        for r in self.required.iter().filter(|r| path.starts_with(r)) {
            if !is_mount_point(table, r) {
                return Err(format!(
                    "{what} '{}': '{}' is not a mount point (toolkit.json required_mounts)",
                    path.display(),
                    r.display()
                ));
            }
            checked.push(format!("'{}' is a mount point", r.display()));
        }
        let also = |checked: &[String]| {
            if checked.is_empty() {
                String::new()
            } else {
                format!("; {}", checked.join(", "))
            }
        };
        match &self.source {
            Source::Cfg(_) => match self.storage_of(path) {
                Some(s) => {
                    let ok = s
                        .mounted(table, path)
                        .map_err(|e| format!("{what} '{}': {e}", path.display()))?;
                    exists().map_err(|e| format!("{e} on {}", s.describe()))?;
                    Ok(format!(
                        "{what} '{}' exists on {ok}{}",
                        path.display(),
                        also(&checked)
                    ))
                }
                None => {
                    exists()?;
                    Ok(format!(
                        "{what} '{}' exists (on no storage of '{}': no storage mount to check{})",
                        path.display(),
                        self.cfg_path.display(),
                        also(&checked)
                    ))
                }
            },
            Source::Fallback(root) => match storage_of(root, path) {
                Some((name, mount_point)) => {
                    if !is_mount_point(table, &mount_point) {
                        return Err(format!(
                            "{what} '{}': storage '{name}' is not mounted ('{}' is not a mount \
                             point; no '{}', so every '{}/<storage>' is taken for a mount point)",
                            path.display(),
                            mount_point.display(),
                            self.cfg_path.display(),
                            root.display()
                        ));
                    }
                    exists().map_err(|e| format!("{e} on storage '{name}'"))?;
                    Ok(format!(
                        "{what} '{}' exists on mounted storage '{name}' (no '{}': '{}' taken \
                         for its mount point){}",
                        path.display(),
                        self.cfg_path.display(),
                        mount_point.display(),
                        also(&checked)
                    ))
                }
                None => {
                    exists()?;
                    Ok(format!(
                        "{what} '{}' exists (not under '{}': no storage mount to check{})",
                        path.display(),
                        root.display(),
                        also(&checked)
                    ))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage.cfg as pve-storage writes it: tab-indented properties,
    /// a blank line between sections, comments.
    const CFG: &str = "\
# storages of this node
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup

zfspool: local-zfs
\tpool rpool/data
\tsparse
\tcontent images,rootdir

dir: scratch
\tpath /srv/scratch/
\tcontent images
\tshared 0

dir: backup
\tpath /mnt/usb/pve
\tcontent backup
\tis_mountpoint /mnt/usb
\tprune-backups keep-last=3

dir: big
\tpath /mnt/big
\tcontent images
\tis_mountpoint yes
\tdisable

nfs: quickOS
\texport /quickOS
\tpath /mnt/pve/quickOS
\tserver 10.0.0.13
\tcontent images,rootdir
\toptions vers=4.2

cifs: share
\tserver fd00::5
\tshare pve
\tsubdir /guests
\tcontent backup

cephfs: cephfs
\tpath /mnt/pve/cephfs
\tcontent backup,vztmpl
\tfs-name cephfs

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images
";

    fn storages(text: &str) -> Storages {
        Storages::from_text(
            Path::new("/etc/pve/storage.cfg"),
            text,
            Path::new("/mnt/pve"),
            &[],
        )
    }

    fn table(lines: &[&str]) -> MountTable {
        MountTable::parse(lines.join("\n").as_bytes())
    }

    #[test]
    fn parses_sections_as_pve_section_config_does() {
        let (sections, warnings) = parse(CFG);
        assert!(warnings.is_empty(), "{warnings:?}");
        let ids: Vec<_> = sections.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "local",
                "local-zfs",
                "scratch",
                "backup",
                "big",
                "quickOS",
                "share",
                "cephfs",
                "local-lvm"
            ]
        );
        let zfs = &sections[1];
        assert_eq!(zfs.kind, "zfspool");
        assert_eq!(zfs.get("pool"), Some("rpool/data"));
        assert_eq!(zfs.props.get("sparse"), Some(&None), "a bare key");
        assert!(sections[4].flag("disable"));
        assert!(!sections[2].flag("shared"));
    }

    #[test]
    fn each_type_gets_the_rule_its_plugin_applies() {
        let s = storages(CFG);
        let of = |p: &str| s.storage_of(Path::new(p)).unwrap();
        assert_eq!(of("/var/lib/vz/snippets").rule, Rule::Directory);
        assert_eq!(of("/srv/scratch/x").path, Path::new("/srv/scratch"));
        assert_eq!(
            of("/mnt/usb/pve/dump").rule,
            Rule::MountPoint("/mnt/usb".into())
        );
        assert_eq!(of("/mnt/big/x").rule, Rule::MountPoint("/mnt/big".into()));
        assert!(of("/mnt/big/x").disabled);
        assert_eq!(
            of("/rpool/data/subvol-101-disk-0").rule,
            Rule::Zfs {
                dataset: "rpool/data".into(),
                at: "/rpool/data".into()
            }
        );
        assert_eq!(
            of("/mnt/pve/quickOS/lxc").rule,
            Rule::Network {
                fs: NetFs::Nfs,
                at: "/mnt/pve/quickOS".into(),
                source: Some("10.0.0.13:/quickOS".into())
            }
        );
        // No path written: /mnt/pve/<id> (check_config); IPv6 in brackets.
        assert_eq!(
            of("/mnt/pve/share/x").rule,
            Rule::Network {
                fs: NetFs::Cifs,
                at: "/mnt/pve/share".into(),
                source: Some("//[fd00::5]/pve/guests".into())
            }
        );
        assert!(s.storage_of(Path::new("/mnt/pve/other/x")).is_none());
        assert!(s.storage_of(Path::new("/mnt/usb/other")).is_none());
    }

    #[test]
    fn local_is_always_there() {
        let s = storages("nfs: n1\n\tserver h\n\texport /e\n");
        let local = s.storage_of(Path::new("/var/lib/vz/images")).unwrap();
        assert_eq!(
            (local.id.as_str(), &local.rule),
            ("local", &Rule::Directory)
        );
    }

    #[test]
    fn plain_directory_only_needs_to_exist() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("dir: plain\n\tpath {}\n", dir.path().display());
        let s = storages(&text);
        let ok = s.check(&table(&[]), "source", dir.path()).unwrap();
        assert!(
            ok.contains("storage 'plain' (dir: a plain directory"),
            "{ok}"
        );
        let why = s
            .check(&table(&[]), "source", &dir.path().join("gone"))
            .unwrap_err();
        assert!(
            why.contains("does not exist on storage 'plain' (dir"),
            "{why}"
        );
    }

    #[test]
    fn is_mountpoint_needs_a_mount_of_any_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("pve")).unwrap();
        let text = format!("dir: usb\n\tpath {d}/pve\n\tis_mountpoint {d}\n\tcontent backup\n");
        let s = storages(&text);
        let src = dir.path().join("pve");
        let why = s.check(&table(&[]), "source", &src).unwrap_err();
        assert!(
            why.contains(&format!(
                "storage 'usb' (dir: is_mountpoint '{d}') is not mounted: '{d}' is not a mount point"
            )),
            "{why}"
        );
        let t = table(&[&format!("40 1 8:1 / {d} rw - ext4 /dev/sdb1 rw")]);
        assert!(s.check(&t, "source", &src).is_ok());
    }

    #[test]
    fn zfspool_needs_its_dataset_mounted_as_zfs() {
        let s = storages(CFG);
        let p = Path::new("/rpool/data/subvol-101-disk-0/data");
        // ZFS root: '/' is zfs too, but of another dataset.
        let root_only = table(&["22 1 0:21 / / rw - zfs rpool/ROOT/pve-1 rw"]);
        let why = s.check(&root_only, "source", p).unwrap_err();
        assert!(
            why.contains(
                "storage 'local-zfs' (zfspool: pool rpool/data at '/rpool/data') is not mounted"
            ) && why.contains("on zfs rpool/ROOT/pve-1 mounted at '/'"),
            "{why}"
        );
        let ext4 = table(&["40 1 8:1 / /rpool/data rw - ext4 /dev/sdb1 rw"]);
        let why = s.check(&ext4, "source", p).unwrap_err();
        assert!(why.contains("on ext4 /dev/sdb1"), "{why}");
        // A mounted child dataset counts (the root one may be canmount=off).
        let child = table(&[
            "22 1 0:21 / / rw - zfs rpool/ROOT/pve-1 rw",
            "41 22 0:41 / /rpool/data/subvol-101-disk-0 rw - zfs rpool/data/subvol-101-disk-0 rw",
        ]);
        let mounted = s.storage_of(p).unwrap().mounted(&child, p).unwrap();
        assert!(
            mounted.contains("is zfs dataset rpool/data/subvol-101-disk-0"),
            "{mounted}"
        );
    }

    #[test]
    fn nfs_needs_its_export_mounted_there() {
        let s = storages(CFG);
        let at = Path::new("/mnt/pve/quickOS");
        let p = at.join("lxc-persistent-data");
        let st = s.storage_of(&p).unwrap();
        let why = st.mounted(&table(&[]), &p).unwrap_err();
        assert_eq!(
            why,
            "storage 'quickOS' (nfs: 10.0.0.13:/quickOS at '/mnt/pve/quickOS') is not mounted: \
             '/mnt/pve/quickOS' is not a mount point"
        );
        let ext4 = table(&["40 1 8:1 / /mnt/pve/quickOS rw - ext4 /dev/sdb1 rw"]);
        let why = st.mounted(&ext4, &p).unwrap_err();
        assert!(why.contains("has ext4 /dev/sdb1 mounted, not nfs"), "{why}");
        let other = table(&["40 1 0:40 / /mnt/pve/quickOS rw - nfs4 10.0.0.14:/quickOS rw"]);
        let why = st.mounted(&other, &p).unwrap_err();
        assert!(why.contains("not 10.0.0.13:/quickOS"), "{why}");
        let good = table(&["40 1 0:40 / /mnt/pve/quickOS rw - nfs4 10.0.0.13:/quickOS/ rw"]);
        assert!(st.mounted(&good, &p).is_ok());
        let ceph = s.storage_of(Path::new("/mnt/pve/cephfs/x")).unwrap();
        let t = table(&["40 1 0:40 / /mnt/pve/cephfs rw - ceph 10.0.0.1,10.0.0.2:/ rw"]);
        assert!(ceph.mounted(&t, Path::new("/mnt/pve/cephfs/x")).is_ok());
    }

    #[test]
    fn paths_on_no_storage_only_need_to_exist_unless_required() {
        let dir = tempfile::tempdir().unwrap();
        let s = storages(CFG);
        let ok = s.check(&table(&[]), "source", dir.path()).unwrap();
        assert!(
            ok.contains("on no storage of '/etc/pve/storage.cfg'"),
            "{ok}"
        );
        let s = Storages::from_text(
            Path::new("/etc/pve/storage.cfg"),
            CFG,
            Path::new("/mnt/pve"),
            &[dir.path().to_path_buf()],
        );
        let why = s.check(&table(&[]), "source", dir.path()).unwrap_err();
        assert!(why.contains("required_mounts"), "{why}");
        let d = dir.path().display();
        let t = table(&[&format!("40 1 8:1 / {d} rw - ext4 /dev/sdb1 rw")]);
        assert!(s.check(&t, "source", dir.path()).is_ok());
    }

    #[test]
    fn fallback_storage_is_the_first_component_under_the_root() {
        let root = Path::new("/mnt/pve");
        assert_eq!(
            storage_of(root, Path::new("/mnt/pve/quickOS/lxc/103/ssl")),
            Some(("quickOS".into(), PathBuf::from("/mnt/pve/quickOS")))
        );
        assert_eq!(storage_of(root, Path::new("/mnt/pve")), None);
        assert_eq!(storage_of(root, Path::new("/srv/data")), None);
        assert_eq!(storage_of(root, Path::new("/mnt/pveX/a")), None);
    }

    fn fallback(root: &Path) -> Storages {
        Storages::load(&root.join("no-storage.cfg"), root, &[]).unwrap()
    }

    #[test]
    fn fallback_refuses_unmounted_storage_even_if_the_path_exists() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("quickOS/lxc/101/logs");
        std::fs::create_dir_all(&src).unwrap();
        let s = fallback(root.path());
        assert!(!s.from_storage_cfg());
        let why = s
            .check(&MountTable::default(), "bind mount source", &src)
            .unwrap_err();
        assert!(why.contains("storage 'quickOS' is not mounted"), "{why}");
        assert!(why.contains("no-storage.cfg'"), "{why}");
        assert!(why.contains(&src.display().to_string()), "{why}");
    }

    #[test]
    fn fallback_mounted_storage_needs_the_path_too() {
        let root = tempfile::tempdir().unwrap();
        let storage = root.path().join("quickOS");
        std::fs::create_dir_all(storage.join("present")).unwrap();
        let t = table(&[&format!(
            "40 22 0:40 / {} rw - nfs4 10.0.0.13:/quickOS rw",
            storage.display()
        )]);
        let s = fallback(root.path());
        let ok = s.check(&t, "source", &storage.join("present")).unwrap();
        assert!(ok.contains("mounted storage 'quickOS'"), "{ok}");
        let why = s.check(&t, "source", &storage.join("absent")).unwrap_err();
        assert!(why.contains("does not exist on storage 'quickOS'"), "{why}");
    }

    #[test]
    fn fallback_paths_elsewhere_only_need_to_exist() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let s = fallback(root.path());
        let t = MountTable::default();
        let ok = s.check(&t, "source", other.path()).unwrap();
        assert!(ok.contains("no storage mount to check"), "{ok}");
        let why = s
            .check(&t, "source", &other.path().join("gone"))
            .unwrap_err();
        assert!(why.contains("does not exist"), "{why}");
        assert!(s.check(&t, "source", Path::new("rel")).is_err());
    }

    #[test]
    fn a_guests_link_below_the_storage_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("etc")).unwrap();
        let st = dir.path().join("st");
        let ca = st.join("103/ssl");
        std::fs::create_dir_all(&ca).unwrap();
        // The CA container swapped its `public` for a link to a host
        // directory; another guest's source is under it, or is it.
        std::os::unix::fs::symlink(host.path(), ca.join("public")).unwrap();
        // The storage itself is reached through the host's own link.
        let st_link = dir.path().join("st-link");
        std::os::unix::fs::symlink(&st, &st_link).unwrap();
        let text = format!("dir: st\n\tpath {}\n", st_link.display());
        let s = storages(&text);
        let t = table(&[]);
        let public = st_link.join("103/ssl/public");
        let why = s.check(&t, "source", &public).unwrap_err();
        assert!(why.contains("is a symbolic link (not followed)"), "{why}");
        let why = s.check(&t, "source", &public.join("etc")).unwrap_err();
        assert!(why.contains("public': it is a symbolic link"), "{why}");
        assert!(s.check(&t, "source", &st_link.join("103/ssl")).is_ok());
        // On no storage: no link on the way at all.
        let s = storages(CFG);
        let why = s.check(&t, "source", &ca.join("public/etc")).unwrap_err();
        assert!(why.contains("public': it is a symbolic link"), "{why}");
        let why = s.check(&t, "source", &st_link.join("103")).unwrap_err();
        assert!(why.contains("st-link': it is a symbolic link"), "{why}");
        assert!(s.check(&t, "source", &ca).is_ok());
    }

    #[test]
    fn real_path_resolves_the_hosts_link_and_no_guests() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("key"), "k").unwrap();
        let st = dir.path().join("st");
        let ca = st.join("103/ssl");
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::write(ca.join("provisioner_password.txt"), "pw").unwrap();
        // A guest's link below the storage, to a host directory.
        std::os::unix::fs::symlink(host.path(), ca.join("public")).unwrap();
        // The storage reached through the host's own link.
        let st_link = dir.path().join("st-link");
        std::os::unix::fs::symlink(&st, &st_link).unwrap();
        let s = storages(&format!("dir: st\n\tpath {}\n", st_link.display()));
        let real_st = std::fs::canonicalize(&st).unwrap();

        assert_eq!(
            s.real_path(&st_link.join("103/ssl")),
            Some(real_st.join("103/ssl"))
        );
        assert_eq!(s.real_path(&st_link), Some(real_st.clone()));
        // Where the configuration says, not where the guest's link goes.
        assert_eq!(
            s.real_path(&st_link.join("103/ssl/public/key")),
            Some(real_st.join("103/ssl/public/key"))
        );
        assert!(s.exists(&st_link.join("103/ssl/provisioner_password.txt")));
        assert!(s.exists(&st_link.join("103/ssl/public")), "the link itself");
        assert!(
            !s.exists(&st_link.join("103/ssl/public/key")),
            "through the link"
        );
        assert!(!s.exists(&st_link.join("103/ssl/absent")));
        // On no storage: as written, nothing resolved.
        let s = storages(CFG);
        assert_eq!(s.real_path(&st_link.join("103")), Some(st_link.join("103")));
        assert!(!s.exists(&st_link.join("103")), "through the link");
    }

    /// The exposure check on the hook's own answer: a source written
    /// through the host's link to the storage is seen to expose the CA's
    /// secrets (configured by their real path); a source through a link a
    /// guest made is not followed there, and the storage check refuses it.
    #[test]
    fn exposure_is_seen_through_the_hosts_link_and_not_through_a_guests() {
        use crate::hook::exposure;
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("st");
        let ca = st.join("103/ssl");
        std::fs::create_dir_all(ca.join("secrets")).unwrap();
        std::fs::create_dir_all(ca.join("public")).unwrap();
        std::fs::create_dir_all(st.join("105")).unwrap();
        std::fs::write(ca.join("provisioner_password.txt"), "pw").unwrap();
        let st_link = dir.path().join("st-link");
        std::os::unix::fs::symlink(&st, &st_link).unwrap();
        // Container 105 made its own directory a link to the CA's.
        std::os::unix::fs::symlink(&ca, st.join("105/data")).unwrap();
        let s = storages(&format!("dir: st\n\tpath {}\n", st_link.display()));
        let secrets = vec![ca.join("provisioner_password.txt"), ca.join("secrets")];
        let whole = st_link.join("103/ssl");
        let public = st_link.join("103/ssl/public");
        let guests = st_link.join("105/data");
        let mounts = [
            (public.as_path(), Path::new("/ca")),
            (whole.as_path(), Path::new("/etc/step-ca/ssl")),
            (guests.as_path(), Path::new("/data")),
        ];
        let found = exposure::check(mounts, &secrets, &s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].index, 1);
        assert_eq!(
            found[0].files,
            vec![
                PathBuf::from("/etc/step-ca/ssl/provisioner_password.txt"),
                PathBuf::from("/etc/step-ca/ssl/secrets")
            ]
        );
        let why = s
            .check(&table(&[]), "bind mount source", &guests)
            .unwrap_err();
        assert!(why.contains("is a symbolic link (not followed)"), "{why}");
    }

    #[test]
    fn zfs_mounts_are_looked_up_as_written_not_as_resolved() {
        // No mount holds the path as written: a guest's link to where a
        // dataset of the pool is mounted does not make it count.
        let s = storages(CFG);
        let p = Path::new("/rpool/data/subvol-101-disk-0/link");
        let t = table(&["41 1 0:41 / /other rw - zfs rpool/data/subvol-102-disk-0 rw"]);
        let why = s.storage_of(p).unwrap().mounted(&t, p).unwrap_err();
        assert!(why.contains("no zfs dataset of 'rpool/data'"), "{why}");
    }

    #[test]
    fn unreadable_storage_cfg_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let e = Storages::load(dir.path(), Path::new("/mnt/pve"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("storage configuration"), "{e:#}");
    }
}
