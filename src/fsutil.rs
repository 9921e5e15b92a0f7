//! File-system helpers: the one atomic write every file of the toolkit goes
//! through, bounded reads of small documents, and directory creation.
//!
//! An atomic write never lets a reader see half a file and never leaves the
//! target half-written after a crash: the data goes to a temp file in the
//! target's directory (same file system, so `rename` is atomic), whose owner
//! and mode are set *before* any byte of data is written (a key is never
//! readable by others, not even for an instant), then `fsync`, `rename`,
//! and `fsync` of the directory so that the rename itself is durable.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Owner and mode of a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    /// `(uid, gid)` to give the file; `None` keeps the writer's.
    pub owner: Option<(u32, u32)>,
}

impl FileOptions {
    /// A file with `mode`, owned by the writer.
    pub fn mode(mode: u32) -> Self {
        FileOptions { mode, owner: None }
    }
}

/// The prefix of every temp file, so that readers and clean-ups can tell
/// them apart from real files.
pub const TEMP_PREFIX: &str = ".phoenix-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp path in the directory of `target`.
pub fn temp_path_for(target: &Path) -> Result<PathBuf> {
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .with_context(|| format!("'{}' has no file name", target.display()))?;
    let mut tmp = OsString::from(TEMP_PREFIX);
    tmp.push(name);
    tmp.push(format!(
        ".{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(dir.join(tmp))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Create a new temp file beside `target` with `opts` applied before any
/// data is written. The caller writes, then calls [`commit`].
pub fn create_temp(target: &Path, opts: FileOptions) -> Result<(File, PathBuf)> {
    let tmp = temp_path_for(target)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("creating temp file '{}'", tmp.display()))?;
    let prepare = || -> Result<()> {
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} '{}'", tmp.display()))?;
        }
        // After chown: chown may clear set-id bits, and the umask played on create.
        file.set_permissions(fs::Permissions::from_mode(opts.mode))
            .with_context(|| format!("chmod {:o} '{}'", opts.mode, tmp.display()))?;
        Ok(())
    };
    if let Err(e) = prepare() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((file, tmp))
}

/// `fsync` the temp file, rename it over `target`, `fsync` the directory.
/// On failure the temp file is removed and `target` is untouched.
pub fn commit(file: File, tmp: &Path, target: &Path) -> Result<()> {
    let result = file
        .sync_all()
        .with_context(|| format!("fsync '{}'", tmp.display()))
        .and_then(|()| {
            drop(file);
            rename(tmp, target)
        });
    if let Err(e) = result {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fsync_dir(parent_dir(target))
}

/// `rename`, with both paths in the error. Not durable by itself: a caller
/// that renames several files back to back `fsync`s the directory once.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("renaming '{}' to '{}'", from.display(), to.display()))
}

/// Remove the temp files of `target` (`.phoenix-tmp.<name>.<pid>.<n>`)
/// that this process did not make: a killed writer leaves them behind.
/// A reader never takes them (hidden, never the target's name), but they
/// must not pile up. Call it only where no other live process writes
/// `target` (under the job's lock). Returns how many were removed.
pub fn remove_stale_temps(target: &Path) -> usize {
    let Some(name) = target.file_name() else {
        return 0;
    };
    let prefix = format!("{TEMP_PREFIX}{}.", name.to_string_lossy());
    let own = format!("{}.", std::process::id());
    let Ok(list) = fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    let mut removed = 0;
    for e in list.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        match file.strip_prefix(&prefix) {
            Some(rest) if !rest.starts_with(&own) => {
                log::info!("removing '{}' left by a killed run", e.path().display());
                if fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
            _ => {}
        }
    }
    removed
}

/// Write `data` to `path` atomically with the given owner and mode.
pub fn write_atomic(path: &Path, data: &[u8], opts: FileOptions) -> Result<()> {
    let (mut file, tmp) = create_temp(path, opts)?;
    if let Err(e) = file.write_all(data) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing '{}'", tmp.display()));
    }
    commit(file, &tmp, path).with_context(|| format!("writing '{}'", path.display()))
}

/// `fsync` a directory, making renames and unlinks in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory '{}'", dir.display()))
}

/// Read a small regular file with `open()` + `read()` (on NFS, `open()`
/// revalidates the file with the server: close-to-open consistency, which
/// `stat()` alone does not give). At most `limit` bytes; a larger file, or
/// something that is not a regular file, is an `InvalidData` error.
/// Opened non-blocking: a FIFO put where a file should be is refused at
/// once instead of blocking the reader (and its bound) until a writer
/// comes; the flag changes nothing for a regular file.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    read_open_limited(file, limit)
}

/// The bounded read itself, on a file already open (by [`read_limited`],
/// or through a directory handle by [`crate::guestdir`]): a regular file
/// of at most `limit` bytes, else an `InvalidData` error. A file that
/// says it is larger is refused before a byte is read (a 64 GiB sparse
/// file costs nothing); one that grows while read stops at `limit + 1`.
pub fn read_open_limited(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        )
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    // The size fstat gave plus one byte, read at once: an unchanged file
    // takes one read() and the one that says end of file. (`read_to_end`
    // through `take` has no size hint and reads 8 KiB, then doubling, then
    // probes: four reads for a 38 KB file.)
    read_sized(&file, meta.len() as usize + 1, limit)?.ok_or_else(too_large)
}

/// Read `file` to its end into a buffer of `first` bytes, grown in
/// doubling steps of at least 8 KiB when it fills (a file that grew since
/// its size was taken, or one whose size says nothing: /proc, some FUSE
/// files report 0), up to `limit + 1` bytes; `None` when there is more
/// than `limit`. The buffer is zeroed by `calloc`, so pages of a large
/// `first` that the read does not reach are never touched.
pub fn read_sized(file: &File, first: usize, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let bound = usize::try_from(limit).unwrap_or(usize::MAX - 1) + 1;
    let mut buf = vec![0u8; first.clamp(1, bound)];
    let mut n = 0;
    let mut reader = file;
    loop {
        if n == buf.len() {
            if n >= bound {
                return Ok(None);
            }
            buf.resize(n.saturating_mul(2).max(8192).min(bound), 0);
        }
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(Some(buf))
}

/// Create `dir` and its missing parents; directories this creates get `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating directory '{}'", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key.pem");
        write_atomic(&target, b"secret", FileOptions::mode(0o600)).unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        write_atomic(&target, b"second", FileOptions::mode(0o640)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("key.pem")]);
    }

    #[test]
    fn failed_write_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&target, b"x", FileOptions::mode(0o644)).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn read_limited_refuses_large_and_non_regular() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        fs::write(&f, vec![b'a'; 100]).unwrap();
        assert_eq!(read_limited(&f, 100).unwrap().len(), 100);
        assert_eq!(
            read_limited(&f, 99).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            read_limited(dir.path(), 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A file whose size says 0 (procfs): read whole, still bounded.
        let argv = Path::new("/proc/self/cmdline");
        let whole = read_limited(argv, 1 << 20).unwrap();
        assert_eq!(whole, fs::read(argv).unwrap());
        assert_eq!(
            read_limited(argv, whole.len() as u64 - 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_limited(&fifo, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn stale_temps_of_other_processes_go_ours_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("web.crt");
        let stale = dir.path().join(".phoenix-tmp.web.crt.999999999.0");
        let other = dir.path().join(".phoenix-tmp.web.key.999999999.0");
        let (_f, mine) = create_temp(&target, FileOptions::mode(0o644)).unwrap();
        for p in [&stale, &other] {
            fs::write(p, "x").unwrap();
        }
        assert_eq!(remove_stale_temps(&target), 1);
        assert!(!stale.exists());
        assert!(mine.exists(), "removed this process's own temp file");
        assert!(other.exists(), "removed another target's temp file");
    }
}
