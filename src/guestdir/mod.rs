//! Host-side work under directories a guest can write.
//!
//! Root in a container or a VM writes its own certificate directory (a
//! bind mount, an NFS export), and the CA container writes the CA state
//! directory; `phoenix-hook` and `phoenix-renew` run as root over them. A
//! path there can change between two system calls: a file becomes a
//! symbolic link to a host file, a directory a link to a host directory.
//! So everything done under such a directory goes through this module, on
//! descriptors, never by path:
//!
//! - a directory is reached by walking from `/` (from the working
//!   directory for a relative path) with `openat(O_NOFOLLOW | O_DIRECTORY)`
//!   on every component ([`Dir::open`]). Where the guest's part of a path
//!   begins is not guessed: no symbolic link anywhere on the way is
//!   followed, whoever made it, so a configured path through a link is
//!   refused too (docs/renew.md says so);
//! - a file is opened relative to that handle with `O_NOFOLLOW |
//!   O_NONBLOCK` and judged with `fstat` ([`Dir::open_file`]): only a
//!   regular file with no second name is taken. A symbolic link, a
//!   directory, a FIFO, a device, or a hard link (which could be a second
//!   name of a host file) is refused, with the path and why;
//! - owner and mode change with `fchown`/`fchmod` on that descriptor.
//!   The owner is not a criterion for taking a file: one with a single
//!   name under the guest's directory is the guest's whatever its uid (the
//!   guest may have made it, a manifest's owner may change), and a host
//!   file can only appear there as a second name, which is refused;
//! - reads go through the one bounded reader, [`fsutil::read_open_limited`];
//! - a new file is a temp file made with `O_CREAT | O_EXCL | O_NOFOLLOW`
//!   in the directory handle, owner and mode set before the data, `fsync`,
//!   then `renameat` within the handle (which replaces a planted link, never
//!   writes through it) and `fsync` of the directory ([`Dir::stage`]);
//! - what another program reads (step's inputs, the files `pct push`
//!   copies into a guest) is a private copy made from a bounded read, in a
//!   directory only root can enter ([`PrivateDir`]), never a guest's path.
//!
//! A refusal is an error naming the path and why; callers fail only the
//! entry it belongs to.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fsync, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::fsutil::{FileOptions, TEMP_PREFIX};

mod file;
mod private;

pub use file::{GuestFile, Staged};
pub use private::PrivateDir;

/// Flags of every directory open: no link followed, never a terminal.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Flags of every file open for reading or for `fchmod`: no link
/// followed, a FIFO does not block, a tty does not become ours.
fn file_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// An error saying that `path` was refused, and why.
fn refused(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("refusing '{}': {why}", path.display()),
    )
}

/// A system call's error, naming what it was about.
fn os_error(what: impl std::fmt::Display, e: Errno) -> io::Error {
    let kind = io::Error::from(e).kind();
    io::Error::new(kind, format!("{what}: {}", e.desc()))
}

/// What kind of file `mode` (an `st_mode`) says, in words.
pub fn kind_name(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFLNK => "a symbolic link (not followed)",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFREG => "a regular file",
        _ => "of an unknown type",
    }
}

fn is_link(mode: u32) -> bool {
    mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits()
}

/// A name for use inside one directory: one component, not `.` or `..`.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a file name", name.to_string_lossy()),
        ));
    }
    Ok(())
}

/// A random 64-bit number (the standard library seeds its hashers from
/// the kernel's random source): a temp name a guest cannot guess ahead.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// `.phoenix-tmp.<target>.<pid>.<random>`: hidden, never a target's
/// name, and recognised by [`Dir::remove_stale_temps`].
fn temp_name(target: &OsStr) -> OsString {
    let mut n = OsString::from(TEMP_PREFIX);
    n.push(target);
    n.push(format!(".{}.{:016x}", std::process::id(), random()));
    n
}

/// A directory reached without following any symbolic link. Every
/// operation on it works relative to its descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Open the directory `path`, refusing a symbolic link (or anything
    /// that is not a directory) on any component. A missing component is a
    /// `NotFound` error.
    pub fn open(path: &Path) -> io::Result<Dir> {
        Self::walk(path, None)
    }

    /// As [`Dir::open`], creating missing components with `mode` (minus
    /// the umask) as it goes.
    pub fn create(path: &Path, mode: u32) -> io::Result<Dir> {
        Self::walk(path, Some(mode))
    }

    fn walk(path: &Path, create: Option<u32>) -> io::Result<Dir> {
        let (start, mut here) = if path.is_absolute() {
            ("/", PathBuf::from("/"))
        } else {
            (".", PathBuf::from("."))
        };
        let raw = openat(None, start, dir_flags(), Mode::empty())
            .map_err(|e| os_error(format!("opening '{start}'"), e))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let mut fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for c in path.components() {
            let name: &OsStr = match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
                Component::ParentDir => OsStr::new(".."),
                Component::Normal(n) => n,
            };
            here.push(name);
            let parent = Dir {
                fd,
                path: here.parent().unwrap_or(Path::new("/")).to_path_buf(),
            };
            fd = match parent.open_dir_fd(name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create.is_some() => {
                    let mode = Mode::from_bits_truncate(create.unwrap_or(0o755));
                    match mkdirat(Some(parent.fd.as_raw_fd()), name, mode) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(os_error(
                                format!("creating directory '{}'", here.display()),
                                e,
                            ))
                        }
                    }
                    parent
                        .open_dir_fd(name)
                        .map_err(|e| parent.dir_error(name, path, e))?
                }
                Err(e) => return Err(parent.dir_error(name, path, e)),
            };
        }
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn open_dir_fd(&self, name: &OsStr) -> Result<OwnedFd, Errno> {
        let raw = openat(Some(self.fd.as_raw_fd()), name, dir_flags(), Mode::empty())?;
        // SAFETY: a new descriptor, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Why `name` (on the way to `full`) could not be opened as a directory.
    fn dir_error(&self, name: &OsStr, full: &Path, e: Errno) -> io::Error {
        let here = self.path.join(name);
        let what = |kind: &str| {
            if here == full {
                format!("it is {kind}")
            } else {
                format!("'{}' on the way is {kind}", here.display())
            }
        };
        match e {
            Errno::ELOOP | Errno::ENOTDIR => match self.mode_of(name) {
                Ok(Some(m)) if is_link(m) => refused(full, what("a symbolic link")),
                Ok(Some(m)) => {
                    refused(full, what(&format!("not a directory but {}", kind_name(m))))
                }
                _ => os_error(format!("opening '{}'", here.display()), e),
            },
            Errno::ENOENT => io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{}' does not exist", here.display()),
            ),
            e => os_error(format!("opening '{}'", here.display()), e),
        }
    }

    /// The path this handle was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `st_mode` of `name` itself (a link is not followed), `None` when
    /// absent.
    pub fn mode_of(&self, name: &OsStr) -> io::Result<Option<u32>> {
        check_name(name)?;
        match fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st.st_mode)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(os_error(
                format!("stat '{}'", self.path.join(name).display()),
                e,
            )),
        }
    }

    /// Whether `other` is the same directory (device and inode).
    pub fn same_as(&self, other: &Dir) -> bool {
        match (fstat(self.fd.as_raw_fd()), fstat(other.fd.as_raw_fd())) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        }
    }

    /// The subdirectory `name`, `None` when absent; refused when it is a
    /// symbolic link or not a directory.
    pub fn subdir(&self, name: &OsStr) -> io::Result<Option<Dir>> {
        check_name(name)?;
        let path = self.path.join(name);
        match self.open_dir_fd(name) {
            Ok(fd) => Ok(Some(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.dir_error(name, &path, e)),
        }
    }

    /// `fstat` of the directory itself.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        self.as_file()?.metadata()
    }

    /// `fchmod` of the directory itself.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        fchmod(self.fd.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| os_error(format!("chmod '{}'", self.path.display()), e))
    }

    fn as_file(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// The names in the directory (not `.` and `..`), sorted: `readdir`
    /// on a new descriptor of this directory (`openat(fd, ".")`), never
    /// on its path.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        use nix::libc;
        let fail = |e: Errno| os_error(format!("listing '{}'", self.path.display()), e);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let raw = openat(Some(self.fd.as_raw_fd()), ".", flags, Mode::empty()).map_err(fail)?;
        // SAFETY: fdopendir takes over `raw` (a new descriptor) on success;
        // on failure it is still ours and closed here.
        let dirp = unsafe { libc::fdopendir(raw) };
        if dirp.is_null() {
            let e = Errno::last();
            let _ = nix::unistd::close(raw);
            return Err(fail(e));
        }
        let mut names = Vec::new();
        let result = loop {
            Errno::clear();
            // SAFETY: `dirp` is a valid stream until closedir below.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break match Errno::last_raw() {
                    0 => Ok(()),
                    n => Err(fail(Errno::from_raw(n))),
                };
            }
            // SAFETY: d_name is a NUL-terminated name inside `*ent`.
            let n = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_owned());
            }
        };
        // SAFETY: closes the stream and its descriptor, once.
        unsafe { libc::closedir(dirp) };
        result?;
        names.sort();
        Ok(names)
    }

    /// Open `name` (a link is not followed) and check it is a regular
    /// file with no second name. `Ok(None)` when absent.
    pub fn open_file(&self, name: &OsStr) -> io::Result<Option<GuestFile>> {
        check_name(name)?;
        let path = self.path.join(name);
        let raw = match openat(Some(self.fd.as_raw_fd()), name, file_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refused(&path, "a symbolic link (not followed)")),
            Err(e) => return Err(os_error(format!("opening '{}'", path.display()), e)),
        };
        // SAFETY: a new descriptor, owned by nothing else.
        let file = unsafe { File::from_raw_fd(raw) };
        GuestFile::take(file, path).map(Some)
    }

    /// Read `name` whole, at most `limit` bytes, through [`Dir::open_file`].
    /// Absent is a `NotFound` error.
    pub fn read(&self, name: &OsStr, limit: u64) -> io::Result<Vec<u8>> {
        match self.open_file(name)? {
            Some(f) => f.read(limit),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{}' does not exist", self.path.join(name).display()),
            )),
        }
    }

    /// Write `data` into a new temp file for `target` with `opts`' owner
    /// and mode (set before the data), `fsync`ed. [`Staged::install`]
    /// renames it over `target`; dropped before that, it is removed.
    pub fn stage(&self, target: &OsStr, data: &[u8], opts: FileOptions) -> io::Result<Staged<'_>> {
        check_name(target)?;
        // A guest may plant names; O_EXCL refuses them, a new random name
        // is tried.
        for _ in 0..8 {
            let name = temp_name(target);
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let raw = match openat(
                Some(self.fd.as_raw_fd()),
                name.as_os_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => fd,
                Err(Errno::EEXIST) => continue,
                Err(e) => {
                    return Err(os_error(
                        format!("creating temp file in '{}'", self.path.display()),
                        e,
                    ))
                }
            };
            // SAFETY: a new descriptor, owned by nothing else.
            let mut file = unsafe { File::from_raw_fd(raw) };
            let staged = Staged {
                dir: self,
                name,
                target: target.to_owned(),
                done: false,
            };
            let tmp = staged.temp_path();
            let mut fill = || -> io::Result<()> {
                if let Some((uid, gid)) = opts.owner {
                    fchown(
                        file.as_raw_fd(),
                        Some(Uid::from_raw(uid)),
                        Some(Gid::from_raw(gid)),
                    )
                    .map_err(|e| os_error(format!("chown {uid}:{gid} '{}'", tmp.display()), e))?;
                }
                // After chown: chown may clear set-id bits.
                fchmod(file.as_raw_fd(), Mode::from_bits_truncate(opts.mode))
                    .map_err(|e| os_error(format!("chmod '{}'", tmp.display()), e))?;
                file.write_all(data)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("writing '{}': {e}", tmp.display()))
                    })
            };
            fill()?;
            return Ok(staged);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "no free temp name for '{}'",
                self.path.join(target).display()
            ),
        ))
    }

    /// Write `data` to `target` atomically with `opts`' owner and mode:
    /// [`Dir::stage`], `renameat`, `fsync` of the directory.
    pub fn write_atomic(&self, target: &OsStr, data: &[u8], opts: FileOptions) -> io::Result<()> {
        self.stage(target, data, opts)?.install()?;
        self.sync()
    }

    /// `renameat` from `from` to `to`, both in this directory. A link at
    /// `to` is replaced, never followed.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        self.rename_to(from, self, to)
    }

    /// `renameat` from `from` here to `to` in `dir` (same file system).
    pub fn rename_to(&self, from: &OsStr, dir: &Dir, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        renameat(
            Some(self.fd.as_raw_fd()),
            from,
            Some(dir.fd.as_raw_fd()),
            to,
        )
        .map_err(|e| {
            os_error(
                format!(
                    "renaming '{}' to '{}'",
                    self.path.join(from).display(),
                    dir.path.join(to).display()
                ),
                e,
            )
        })
    }

    /// Remove `name` (a file or a link, never followed); `Ok(false)` when
    /// it was absent.
    pub fn unlink(&self, name: &OsStr) -> io::Result<bool> {
        check_name(name)?;
        match unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(os_error(
                format!("removing '{}'", self.path.join(name).display()),
                e,
            )),
        }
    }

    /// `fsync` the directory: renames and removals in it are durable.
    pub fn sync(&self) -> io::Result<()> {
        fsync(self.fd.as_raw_fd())
            .map_err(|e| os_error(format!("fsync directory '{}'", self.path.display()), e))
    }

    /// Remove the temp files of `target` (`.phoenix-tmp.<target>.*`) that
    /// this process did not make: a killed run leaves them behind. Call it
    /// only where no other live process writes `target` (under the job's
    /// lock). Returns how many were removed.
    pub fn remove_stale_temps(&self, target: &OsStr) -> usize {
        let mut prefix = OsString::from(TEMP_PREFIX);
        prefix.push(target);
        prefix.push(".");
        let own = format!("{}.", std::process::id());
        let Ok(names) = self.entries() else {
            return 0;
        };
        let mut removed = 0;
        for n in names {
            let Some(rest) = n.as_bytes().strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            if rest.starts_with(own.as_bytes()) {
                continue;
            }
            log::info!(
                "removing '{}' left by a killed run",
                self.path.join(&n).display()
            );
            if self.unlink(&n).unwrap_or(false) {
                removed += 1;
            }
        }
        removed
    }
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' has no file name", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// The handle of `path`'s directory, and its file name.
pub fn open_parent(path: &Path) -> io::Result<(Dir, OsString)> {
    let (parent, name) = split(path)?;
    Ok((Dir::open(parent)?, name.to_owned()))
}

/// As [`open_parent`], creating missing directories with `mode`.
pub fn create_parent(path: &Path, mode: u32) -> io::Result<(Dir, OsString)> {
    let (parent, name) = split(path)?;
    Ok((Dir::create(parent, mode)?, name.to_owned()))
}

/// Read `path` whole, at most `limit` bytes, following no link on the way
/// and taking only a regular file with no second name. Absent (the file or a
/// directory on the way) is a `NotFound` error.
pub fn read_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (dir, name) = open_parent(path)?;
    dir.read(&name, limit)
}

/// Write `path` atomically with `opts`' owner and mode ([`Dir::write_atomic`]),
/// its directory reached without following a link.
pub fn write_file(path: &Path, data: &[u8], opts: FileOptions) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    dir.write_atomic(&name, data, opts)
}

/// Remove `path` (a link there is removed, never followed) and `fsync` its
/// directory; `Ok(false)` when it, or its directory, was absent.
pub fn remove_file(path: &Path) -> io::Result<bool> {
    let (dir, name) = match open_parent(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let removed = dir.unlink(&name)?;
    if removed {
        dir.sync()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_link_anywhere_on_the_way_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), "x").unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        assert_eq!(read_file(&real.join("f"), 10).unwrap(), b"x");
        let e = read_file(&t.path().join("link/f"), 10).unwrap_err();
        let msg = e.to_string();
        let link = t.path().join("link").display().to_string();
        assert!(
            msg.contains(&format!("refusing '{link}': it is a symbolic link")),
            "{msg}"
        );
        let msg = read_file(&t.path().join("link/sub/f"), 10)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("'{link}' on the way is a symbolic link")),
            "{msg}"
        );
        // The last component too.
        symlink(real.join("f"), real.join("g")).unwrap();
        let msg = read_file(&real.join("g"), 10).unwrap_err().to_string();
        assert!(msg.contains("a symbolic link (not followed)"), "{msg}");
        // Absent: NotFound, for the file and for a directory on the way.
        let e = read_file(&real.join("none"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = read_file(&t.path().join("none/f"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn only_a_bounded_regular_file_with_one_name_is_read() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        std::fs::write(t.path().join("a"), "12345").unwrap();
        // Replaced between the open and the fstat (0 names left): still
        // the file that was opened, taken.
        let f = File::open(t.path().join("a")).unwrap();
        std::fs::write(t.path().join("y"), "other").unwrap();
        std::fs::rename(t.path().join("y"), t.path().join("a")).unwrap();
        let f = GuestFile::take(f, t.path().join("a")).unwrap();
        assert_eq!(f.read(5).unwrap(), b"12345");
        std::fs::write(t.path().join("a"), "12345").unwrap();
        assert_eq!(d.read(OsStr::new("a"), 5).unwrap(), b"12345");
        let msg = d.read(OsStr::new("a"), 4).unwrap_err().to_string();
        assert!(
            msg.contains("larger than 4 bytes") && msg.contains("/a'"),
            "{msg}"
        );
        std::fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        let msg = d.read(OsStr::new("a"), 5).unwrap_err().to_string();
        assert!(msg.contains("a hard link (2 names"), "{msg}");
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let msg = d.read(OsStr::new("fifo"), 5).unwrap_err().to_string();
        assert!(msg.contains("not a regular file but a FIFO"), "{msg}");
        symlink("/dev/zero", t.path().join("zero")).unwrap();
        let msg = d.read(OsStr::new("zero"), 5).unwrap_err().to_string();
        assert!(msg.contains("symbolic link"), "{msg}");
        // A 64 GiB sparse file: refused from its size, nothing read.
        let f = File::create(t.path().join("sparse")).unwrap();
        f.set_len(64 << 30).unwrap();
        let started = std::time::Instant::now();
        let msg = d
            .read(OsStr::new("sparse"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(d.read(OsStr::new("../x"), 5).is_err());
    }

    #[test]
    fn owner_and_mode_change_through_the_descriptor_only() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("host");
        std::fs::write(&outside, "host").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = Dir::open(t.path()).unwrap();
        symlink(&outside, t.path().join("ca.pem")).unwrap();
        assert!(d.open_file(OsStr::new("ca.pem")).is_err());
        assert_eq!(mode_of(&outside), 0o600);
        std::fs::write(t.path().join("own"), "x").unwrap();
        let f = d.open_file(OsStr::new("own")).unwrap().unwrap();
        let (uid, gid) = (f.metadata().uid(), f.metadata().gid());
        assert!(f.set_owner_mode(uid, gid, 0o640).unwrap());
        assert_eq!(mode_of(&t.path().join("own")), 0o640);
        let f = d.open_file(OsStr::new("own")).unwrap().unwrap();
        assert!(!f.set_owner_mode(uid, gid, 0o640).unwrap());
        assert!(d.open_file(OsStr::new("absent")).unwrap().is_none());
    }

    #[test]
    fn staged_files_replace_a_planted_link_and_vanish_unless_installed() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::write(&host, "host").unwrap();
        let certs = t.path().join("certs");
        let d = Dir::create(&certs, 0o755).unwrap();
        symlink(&host, certs.join("ca.pem")).unwrap();
        d.write_atomic(OsStr::new("ca.pem"), b"chain", FileOptions::mode(0o644))
            .unwrap();
        assert_eq!(std::fs::read(&host).unwrap(), b"host");
        assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), b"chain");
        assert_eq!(mode_of(&certs.join("ca.pem")), 0o644);
        let s = d
            .stage(OsStr::new("web.key"), b"k", FileOptions::mode(0o600))
            .unwrap();
        let tmp = s.temp_path();
        assert_eq!(mode_of(&tmp), 0o600);
        drop(s);
        assert!(!tmp.exists());
        assert_eq!(d.entries().unwrap(), [OsString::from("ca.pem")]);
    }

    #[test]
    fn create_makes_missing_directories_but_not_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("hostdir");
        std::fs::create_dir(&host).unwrap();
        symlink(&host, t.path().join("certs")).unwrap();
        let msg = Dir::create(&t.path().join("certs/101"), 0o755)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("on the way is a symbolic link"), "{msg}");
        assert!(std::fs::read_dir(&host).unwrap().next().is_none());
        let d = Dir::create(&t.path().join("a/b/c"), 0o755).unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        assert_eq!(d.path(), t.path().join("a/b/c"));
    }

    #[test]
    fn stale_temps_of_others_go_ours_stay() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let stale = t.path().join(".phoenix-tmp.web.crt.999999999.0");
        std::fs::write(&stale, "x").unwrap();
        symlink(
            "/etc/hostname",
            t.path().join(".phoenix-tmp.web.crt.999999998.0"),
        )
        .unwrap();
        let mine = d
            .stage(OsStr::new("web.crt"), b"c", FileOptions::mode(0o644))
            .unwrap();
        assert_eq!(d.remove_stale_temps(OsStr::new("web.crt")), 2);
        assert!(!stale.exists());
        assert!(mine.temp_path().exists());
        assert!(Path::new("/etc/hostname").exists());
    }

    #[test]
    fn private_dirs_of_gone_processes_are_removed_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = t.path().join(format!("phoenix-issue.{dead}.abcdef"));
        let live = t
            .path()
            .join(format!("phoenix-issue.{}.abcdef", std::process::id()));
        let other = t.path().join(format!("phoenix-issue.{dead}.open"));
        for d in [&stale, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("new.key"), "k").unwrap();
        }
        for d in [&stale, &live] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = PrivateDir::new_in(t.path(), "step").unwrap();
        assert!(!stale.exists(), "a dead process's directory stayed");
        assert!(live.exists() && other.exists() && p.path().exists());
    }

    #[test]
    fn private_copies_are_ours_and_go_away() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("pw"), "secret").unwrap();
        let p = PrivateDir::new("test").unwrap();
        let dir = p.path().to_path_buf();
        assert_eq!(mode_of(&dir), 0o700);
        let copy = p.copy_of(&t.path().join("pw"), 64, "pw").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"secret");
        assert_eq!(mode_of(&copy), 0o600);
        symlink("/dev/zero", t.path().join("zero")).unwrap();
        assert!(p.copy_of(&t.path().join("zero"), 64, "z").is_err());
        drop(p);
        assert!(!dir.exists());
    }
}
