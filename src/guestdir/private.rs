//! Private copies: what another program reads in our stead (step's
//! inputs, the files `pct push` copies into a guest) lives in a directory
//! only root can enter, never on a guest's path.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{os_error, read_file};

/// A fresh directory only this process's user can enter (`mkdtemp`, 0700)
/// in the temp directory (`$TMPDIR`, else `/tmp`; phoenix-renew.service
/// has its own with `PrivateTmp=`), removed with what is in it when
/// dropped. The files other programs read in our stead go here. Its name,
/// `phoenix-<what>.<pid>.XXXXXX`, says whose it is: one left by a process
/// that is gone (killed with SIGKILL: no drop ran) is removed when the
/// next one is made.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Make one; `what` goes into its name.
    pub fn new(what: &str) -> io::Result<PrivateDir> {
        Self::new_in(&std::env::temp_dir(), what)
    }

    /// Make one in `base` (tests).
    pub fn new_in(base: &Path, what: &str) -> io::Result<PrivateDir> {
        remove_stale_private_dirs(base);
        let template = base.join(format!("phoenix-{what}.{}.XXXXXX", std::process::id()));
        let path = nix::unistd::mkdtemp(&template).map_err(|e| {
            os_error(
                format!("creating a private directory '{}'", template.display()),
                e,
            )
        })?;
        Ok(PrivateDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Write `data` into a new file `name` here, mode 0600.
    pub fn write(&self, name: &str, data: &[u8]) -> io::Result<PathBuf> {
        let path = self.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating '{}': {e}", path.display())))?;
        f.write_all(data)
            .map_err(|e| io::Error::new(e.kind(), format!("writing '{}': {e}", path.display())))?;
        Ok(path)
    }

    /// A private copy of `src` (a file under a directory a guest can
    /// write) as `name`: read through [`read_file`], at most `limit` bytes.
    pub fn copy_of(&self, src: &Path, limit: u64, name: &str) -> io::Result<PathBuf> {
        let data = read_file(src, limit)?;
        self.write(name, &data)
    }
}

/// Remove the private directories in `base` whose process is gone: ours
/// (our uid, 0700, a real directory), named `phoenix-<what>.<pid>.<x>`,
/// with no process `pid` alive. A live process's directory is never
/// touched (a reused pid only delays the removal).
fn remove_stale_private_dirs(base: &Path) {
    let me = nix::unistd::geteuid().as_raw();
    let Ok(list) = std::fs::read_dir(base) else {
        return;
    };
    for e in list.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("phoenix-")) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let pid = match parts[..] {
            [_, pid, _] => pid.parse::<i32>().ok().filter(|p| *p > 0),
            _ => None,
        };
        let Some(pid) = pid else { continue };
        let gone =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH);
        let ours = std::fs::symlink_metadata(e.path())
            .is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o7777 == 0o700);
        if gone && ours {
            log::debug!("removing '{}' left by a killed run", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("could not remove '{}': {e}", self.path.display());
        }
    }
}
