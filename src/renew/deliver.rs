//! Delivery of a renewed pair into its guest, before the post-renewal
//! action that expects it there.
//!
//! Every legacy `post_renewal_command` starts in the guest with
//! `mv /tmp/cert.pem ... && mv /tmp/key.pem ...` (and `/tmp/ca.pem` with
//! `include_ca`): the old bash copied those files in first. So they are
//! delivered before every legacy command, and before a structured
//! `post_renewal` that says `"deliver": true`, as `cert.pem` (0644),
//! `key.pem` (the installed key's mode, 0600 or 0640) and `ca.pem` (0644)
//! in `renewal.guest_drop_dir` (default `/tmp`).
//!
//! The drop directory is usually `/tmp`, world-writable: a file created
//! there in place could be pre-created, or opened early, by any user of
//! the guest, and a reader could see half a key. So the files are first
//! written into a fresh directory that `mktemp -d` makes inside it (0700,
//! root's), then renamed into place with one `mv`: each name appears
//! whole, and a name planted beforehand (a symlink, say) is replaced, not
//! followed. A failure removes the temp directory.
//!
//! What is delivered is read once, before the guest is contacted, from the
//! installed files through [`crate::guestdir`]: no link followed, only a
//! plain file, bounded. The certificate directory is the guest's own, and
//! a guest that swaps its key for a link to a host file after the install
//! gets a refusal, never the host file. Containers get each file with
//! `pct push` of our own private copy (0600, in a directory only root can
//! enter, removed after), never of the guest's path; VMs through `qm guest
//! exec --pass-stdin` with the bytes on stdin. Both through the one
//! transport, [`Proxmox`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::guestdir::{self, PrivateDir};
use crate::phoenix::GuestType;
use crate::proxmox::{Guest, Proxmox, QM_STDIN_LIMIT};

use super::install::CERT_MODE;
use super::manifest::Entry;

/// Prefix of the temp directory made in the drop directory.
const TEMP_PREFIX: &str = ".phoenix-renew.";

/// Writes stdin to `$1` (in the 0700 temp directory), then sets mode `$2`.
const WRITE_STDIN: &str = "umask 077 && cat > \"$1\" && chmod \"$2\" \"$1\"";

/// Moves the files (`$2`...) into the drop directory (last), then removes
/// the empty temp directory `$1`.
const MOVE_INTO_PLACE: &str = "d=$1; shift; mv -f -- \"$@\" && rmdir -- \"$d\"";

/// One file to put into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropFile {
    /// Its name in the drop directory.
    pub name: &'static str,
    /// The installed file on the host.
    pub src: PathBuf,
    /// Its mode in the guest.
    pub mode: u32,
}

/// The files an entry delivers: certificate, key, and with `include_ca`
/// the CA chain.
pub fn files(entry: &Entry) -> Vec<DropFile> {
    let mut v = vec![
        DropFile {
            name: "cert.pem",
            src: entry.cert_path.clone(),
            mode: CERT_MODE,
        },
        DropFile {
            name: "key.pem",
            src: entry.key_path.clone(),
            mode: entry.key_mode,
        },
    ];
    if entry.include_ca {
        v.push(DropFile {
            name: "ca.pem",
            src: entry.ca_path(),
            mode: CERT_MODE,
        });
    }
    v
}

fn guest_path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// Deliver the entry's files into its guest, if its action wants them.
pub fn run(entry: &Entry, px: &Proxmox, drop_dir: &Path) -> Result<()> {
    if !entry.deliver {
        return Ok(());
    }
    let files = files(entry);
    // Read now, through descriptors: this is what is delivered, whatever
    // the guest does to its directory from here on.
    let mut data = Vec::with_capacity(files.len());
    for f in &files {
        data.push(
            guestdir::read_file(&f.src, QM_STDIN_LIMIT as u64)
                .with_context(|| format!("reading '{}' to deliver it", f.src.display()))?,
        );
    }
    px.ensure_reachable(entry.guest)?;
    let tmp = make_temp_dir(px, entry.guest, drop_dir)?;
    let done = put_all(px, entry.guest, &files, &data, &tmp, drop_dir);
    if done.is_err() {
        let rm = ["rm", "-rf", "--", &tmp].map(String::from);
        if let Err(e) = px.exec_ok(entry.guest, &rm, None) {
            log::warn!("{}: could not remove '{tmp}': {e:#}", entry.guest);
        }
    }
    done?;
    log::info!(
        "{}: delivered {} to {} in {}",
        entry.name,
        files.iter().map(|f| f.name).collect::<Vec<_>>().join(", "),
        drop_dir.display(),
        entry.guest
    );
    Ok(())
}

/// `mktemp -d DROP/.phoenix-renew.XXXXXX` in the guest; its answer is
/// checked before it is used as a path.
fn make_temp_dir(px: &Proxmox, guest: Guest, drop_dir: &Path) -> Result<String> {
    let template = guest_path(drop_dir, &format!("{TEMP_PREFIX}XXXXXX"));
    let argv = ["mktemp", "-d", &template].map(String::from);
    let out = px.exec_ok(guest, &argv, None)?;
    let tmp = out.stdout.trim_end_matches('\n');
    let prefix = guest_path(drop_dir, TEMP_PREFIX);
    match tmp.strip_prefix(&prefix) {
        Some(rest) if !rest.is_empty() && !rest.contains(['/', '\n']) => Ok(tmp.to_string()),
        _ => Err(anyhow!(
            "{guest}: `mktemp -d {template}` answered '{}', not a directory in '{}'",
            tmp.chars().take(200).collect::<String>(),
            drop_dir.display()
        )),
    }
}

fn put_all(
    px: &Proxmox,
    guest: Guest,
    files: &[DropFile],
    data: &[Vec<u8>],
    tmp: &str,
    drop_dir: &Path,
) -> Result<()> {
    // `pct push` reads a host path: our own copies, removed when done.
    let private = match guest.kind {
        GuestType::Lxc => {
            Some(PrivateDir::new("deliver").context("making a private directory for pct push")?)
        }
        GuestType::Vm => None,
    };
    for (f, bytes) in files.iter().zip(data) {
        let dest = guest_path(Path::new(tmp), f.name);
        match &private {
            Some(private) => {
                let copy = private.write(f.name, bytes)?;
                px.pct_push(guest.id, &copy, &dest, f.mode)?;
            }
            None => {
                let argv = [
                    "sh",
                    "-c",
                    WRITE_STDIN,
                    "sh",
                    &dest,
                    &format!("{:04o}", f.mode),
                ]
                .map(String::from);
                px.exec_ok(guest, &argv, Some(bytes))?;
            }
        }
    }
    let mut argv: Vec<String> = ["sh", "-c", MOVE_INTO_PLACE, "sh", tmp]
        .into_iter()
        .map(String::from)
        .collect();
    argv.extend(files.iter().map(|f| guest_path(Path::new(tmp), f.name)));
    argv.push(format!(
        "{}/",
        drop_dir.to_string_lossy().trim_end_matches('/')
    ));
    px.exec_ok(guest, &argv, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::renew::manifest::PostAction;

    fn entry(include_ca: bool, key_mode: u32) -> Entry {
        Entry {
            index: 0,
            name: "web.x".into(),
            guest: Guest {
                kind: GuestType::Lxc,
                id: 101,
            },
            sans: Vec::new(),
            wanted: Default::default(),
            cert_path: "/s/web.crt".into(),
            key_path: "/s/web.key".into(),
            uid: 0,
            gid: 33,
            key_mode,
            include_ca,
            post: PostAction::Legacy("true".into()),
            deliver: true,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn files_follow_the_installed_modes_and_include_ca() {
        let f = files(&entry(false, 0o640));
        assert_eq!(
            f.iter().map(|f| (f.name, f.mode)).collect::<Vec<_>>(),
            [("cert.pem", 0o644), ("key.pem", 0o640)]
        );
        assert_eq!(f[1].src, PathBuf::from("/s/web.key"));
        let f = files(&entry(true, 0o600));
        assert_eq!(f[2].name, "ca.pem");
        assert_eq!(f[2].src, PathBuf::from("/s/ca.pem"));
        assert_eq!((f[1].mode, f[2].mode), (0o600, 0o644));
    }

    #[test]
    fn guest_scripts_work_on_this_host() {
        // The two fixed scripts, run by the local sh as the guest would.
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".phoenix-renew.abc");
        std::fs::create_dir(&tmp).unwrap();
        let key = tmp.join("key.pem");
        let mut child = std::process::Command::new("sh")
            .args(["-c", WRITE_STDIN, "sh"])
            .arg(&key)
            .arg("0640")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
        assert!(child.wait().unwrap().success());
        let st = std::process::Command::new("sh")
            .args(["-c", MOVE_INTO_PLACE, "sh"])
            .arg(&tmp)
            .arg(&key)
            .arg(format!("{}/", dir.path().display()))
            .status()
            .unwrap();
        assert!(st.success());
        use std::os::unix::fs::PermissionsExt;
        let placed = dir.path().join("key.pem");
        assert_eq!(std::fs::read(&placed).unwrap(), b"secret\n");
        let mode = std::fs::metadata(&placed).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert!(!tmp.exists(), "temp directory left behind");
    }
}
