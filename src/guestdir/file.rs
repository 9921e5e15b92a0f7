//! Files under a guest's directory: a temp file on its way in
//! ([`Staged`]) and a file opened without following a link ([`GuestFile`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, Gid, Uid};

use super::{kind_name, os_error, refused, Dir};
use crate::fsutil;

/// A temp file written by [`Dir::stage`], removed unless installed.
#[derive(Debug)]
pub struct Staged<'a> {
    pub(super) dir: &'a Dir,
    pub(super) name: OsString,
    pub(super) target: OsString,
    pub(super) done: bool,
}

impl Staged<'_> {
    /// The temp file's name in its directory.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The temp file's path (for messages).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// Rename the temp file over its target (not durable until the
    /// directory is `fsync`ed: [`Dir::sync`]).
    pub fn install(mut self) -> io::Result<()> {
        self.dir.rename(&self.name, &self.target)?;
        self.done = true;
        Ok(())
    }

    /// Rename the temp file over `name` in its directory instead; it is
    /// then no longer removed on drop.
    pub fn install_as(mut self, name: &OsStr) -> io::Result<()> {
        self.dir.rename(&self.name, name)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.dir.unlink(&self.name);
        }
    }
}

/// A regular file with no second name, opened under a guest's directory
/// without following a link.
#[derive(Debug)]
pub struct GuestFile {
    file: File,
    path: PathBuf,
    meta: std::fs::Metadata,
}

impl GuestFile {
    /// Judge a file just opened without following a link: only a regular
    /// file without a second name is taken.
    pub(super) fn take(file: File, path: PathBuf) -> io::Result<GuestFile> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(refused(
                &path,
                format!("not a regular file but {}", kind_name(meta.mode())),
            ));
        }
        // No second name: a host file hard-linked into the guest's
        // directory is not taken (defense in depth: the kernel's
        // protected_hardlinks already keeps a guest from linking files it
        // does not own). 0 names is fine: the guest renamed something over
        // it since it was opened, and what is open is what was there.
        if meta.nlink() > 1 {
            return Err(refused(
                &path,
                format!(
                    "a hard link ({} names; one may be a file outside this directory)",
                    meta.nlink()
                ),
            ));
        }
        Ok(GuestFile { file, path, meta })
    }

    /// Its path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` as it was opened.
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// Read it whole, at most `limit` bytes.
    pub fn read(self, limit: u64) -> io::Result<Vec<u8>> {
        let path = self.path;
        fsutil::read_open_limited(self.file, limit).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                refused(&path, e)
            } else {
                io::Error::new(e.kind(), format!("reading '{}': {e}", path.display()))
            }
        })
    }

    /// Give it owner `uid:gid` and `mode` through its descriptor, if it
    /// has not. Returns whether anything changed.
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<bool> {
        let m = &self.meta;
        if m.mode() & 0o7777 == mode && m.uid() == uid && m.gid() == gid {
            return Ok(false);
        }
        let fd = self.file.as_raw_fd();
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| os_error(format!("chown {uid}:{gid} '{}'", self.path.display()), e))?;
        fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| os_error(format!("chmod {mode:o} '{}'", self.path.display()), e))?;
        Ok(true)
    }

    /// `fchmod` only.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        fchmod(self.file.as_raw_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| os_error(format!("chmod {mode:o} '{}'", self.path.display()), e))
    }
}
