//! `/proc/self/mountinfo`, parsed: which paths are mount points, of what.
//!
//! Reading the kernel's table is one `read()` and never touches the mounted
//! file systems, so asking "is this storage mounted?" cannot hang on a dead
//! NFS server (a `stat()` of the mount point could), and it needs no
//! `mountpoint` process per path.

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil;

/// The table of this process's mount namespace.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Largest table read: about 100,000 mounts.
const MOUNTINFO_LIMIT: u64 = 16 << 20;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount ID.
    pub id: u32,
    /// Path inside the mounted file system that is mounted here (`/` for a
    /// whole file system, the source directory for a bind mount).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw` or `ro` first).
    pub options: String,
    /// File system type (`nfs4`, `tmpfs`, `ext4`...).
    pub fs_type: String,
    /// Mount source (`server:/export`, `/dev/sda1`, `tmpfs`).
    pub source: String,
}

impl Mount {
    /// Mounted read-only (per-mount flag).
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// The parsed table, in the kernel's order (a later mount on the same path
/// hides the earlier ones).
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    /// Every mount.
    pub mounts: Vec<Mount>,
}

impl MountTable {
    /// Read this process's table.
    pub fn read() -> Result<MountTable> {
        Self::read_from(Path::new(SELF_MOUNTINFO))
    }

    /// Read a table from `path` (tests use a file).
    pub fn read_from(path: &Path) -> Result<MountTable> {
        // /proc files report size 0, and every read() of this one walks
        // the mount list again to its position: read it in one gulp of
        // 256 KiB (only the pages the kernel writes are touched), not in
        // `read_to_end`'s growing probes (8 KiB, 16 KiB...).
        let what = || format!("reading mount table '{}'", path.display());
        let file = std::fs::File::open(path).with_context(what)?;
        let text = fsutil::read_sized(&file, 256 << 10, MOUNTINFO_LIMIT)
            .with_context(what)?
            .ok_or_else(|| anyhow::anyhow!("{}: larger than {MOUNTINFO_LIMIT} bytes", what()))?;
        Ok(Self::parse(&text))
    }

    /// Parse mountinfo text; lines that do not parse are skipped (the
    /// format is the kernel's, a line we cannot read is not the operator's
    /// problem).
    pub fn parse(text: &[u8]) -> MountTable {
        let mounts = text.split(|&b| b == b'\n').filter_map(parse_line).collect();
        MountTable { mounts }
    }

    /// The mount visible at exactly `path` (the topmost one), if `path` is
    /// a mount point.
    pub fn at(&self, path: &Path) -> Option<&Mount> {
        self.mounts.iter().rev().find(|m| m.mount_point == path)
    }

    /// Whether `path` is a mount point.
    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.at(path).is_some()
    }

    /// The mount `path` lies on, as written (no link resolved): the
    /// topmost mount at the deepest mount point that is `path` or one of
    /// its parents.
    pub fn holding(&self, path: &Path) -> Option<&Mount> {
        self.mounts
            .iter()
            .filter(|m| path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.components().count())
    }
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE
    // SUPER-OPTIONS (proc_pid_mountinfo(5)).
    let mut fields = line.split(|&b| b == b' ');
    let mut next = || fields.next().filter(|f| *f != b"-");
    let id = next()?;
    let (_parent, _dev) = (next()?, next()?);
    let (root, mount_point, options) = (next()?, next()?, next()?);
    while next().is_some() {}
    let (fs_type, source) = (fields.next()?, fields.next()?);
    let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(unescape(b).into_owned()));
    Some(Mount {
        id: std::str::from_utf8(id).ok()?.parse().ok()?,
        root: path(root),
        mount_point: path(mount_point),
        options: text(options),
        fs_type: text(fs_type),
        source: text(source),
    })
}

/// Undo the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash); a field without any is borrowed as it is.
fn unescape(field: &[u8]) -> Cow<'_, [u8]> {
    if !field.contains(&b'\\') {
        return Cow::Borrowed(field);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u32, |acc, b| acc * 8 + (b - b'0') as u32);
                if v <= 0xff {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /mnt/pve/quickOS rw,relatime shared:20 - nfs4 10.0.0.13:/quickOS rw,vers=4.2
41 22 8:1 /srv/data /mnt/my\\040data ro,relatime - ext4 /dev/sda1 rw
42 22 0:50 / /tmp/x rw - tmpfs tmpfs rw
43 22 0:51 / /tmp/x ro master:3 - tmpfs other rw
garbage line
";

    #[test]
    fn parses_fields_and_optional_tags() {
        let t = MountTable::parse(SAMPLE);
        assert_eq!(t.mounts.len(), 5);
        let nfs = t.at(Path::new("/mnt/pve/quickOS")).unwrap();
        assert_eq!(nfs.fs_type, "nfs4");
        assert_eq!(nfs.source, "10.0.0.13:/quickOS");
        assert!(!nfs.read_only());
        assert!(!t.is_mount_point(Path::new("/mnt/pve")));
    }

    #[test]
    fn unescapes_spaces_and_keeps_bind_root() {
        let t = MountTable::parse(SAMPLE);
        let m = t.at(Path::new("/mnt/my data")).unwrap();
        assert_eq!(m.root, PathBuf::from("/srv/data"));
        assert!(m.read_only());
        assert_eq!(&*unescape(b"a\\134b\\011"), b"a\\b\t");
        assert_eq!(&*unescape(b"trailing\\"), b"trailing\\");
    }

    #[test]
    fn topmost_mount_wins() {
        let t = MountTable::parse(SAMPLE);
        assert_eq!(t.at(Path::new("/tmp/x")).unwrap().source, "other");
        assert_eq!(t.holding(Path::new("/tmp/x/y")).unwrap().source, "other");
    }

    #[test]
    fn holding_mount_is_the_deepest_parent() {
        let t = MountTable::parse(SAMPLE);
        let on = |p: &str| t.holding(Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(
            on("/mnt/pve/quickOS/lxc/103"),
            Path::new("/mnt/pve/quickOS")
        );
        assert_eq!(on("/mnt/pve/quickOSX"), Path::new("/"));
        assert_eq!(on("/"), Path::new("/"));
        assert!(MountTable::default().holding(Path::new("/a")).is_none());
    }

    #[test]
    fn reads_this_process_table() {
        let t = MountTable::read().unwrap();
        assert!(t.is_mount_point(Path::new("/")));
        assert!(t.is_mount_point(Path::new("/proc")));
    }
}
