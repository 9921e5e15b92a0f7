//! The certificate manifest, checked once before anything is done: every
//! SAN valid, paths absolute, owners resolvable, names unique. A problem is
//! a configuration error (exit 2) naming the file, the entry index and the
//! field, and nothing is touched.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::unistd::{Group, Uid, User};

use crate::cert::{self, San};
use crate::config::Config;
use crate::exit::{err, Kind};
use crate::phoenix::{self, GuestType, ManifestEntry};
use crate::proxmox::Guest;

/// What to run after a certificate changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostAction {
    /// Nothing.
    None,
    /// argv inside the guest (typed transport).
    Guest(Vec<String>),
    /// The legacy shell string, run on the host (deprecated).
    Legacy(String),
}

/// A manifest entry, validated and resolved.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the manifest.
    pub index: usize,
    /// Its name: the common name.
    pub name: String,
    /// The guest it serves.
    pub guest: Guest,
    /// The SANs to ask for, the subject first.
    pub sans: Vec<San>,
    /// The same as a set, for comparison.
    pub wanted: BTreeSet<San>,
    /// Certificate file (host path).
    pub cert_path: PathBuf,
    /// Key file (host path).
    pub key_path: PathBuf,
    /// Host-side uid and gid of the files (shift applied).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Key mode: 0640 when a group other than the owner's must read it.
    pub key_mode: u32,
    /// Also write the CA chain beside the certificate.
    pub include_ca: bool,
    /// After a change.
    pub post: PostAction,
    /// Put the new files into the guest before the post-renewal action
    /// (every legacy command; a structured one with `deliver: true`).
    pub deliver: bool,
}

impl Entry {
    /// Where the CA chain goes when `include_ca` is set: `ca.pem` beside
    /// the certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.cert_path.with_file_name("ca.pem")
    }
}

/// The loaded manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its path.
    pub path: PathBuf,
    /// Its entries, in order.
    pub entries: Vec<Entry>,
}

/// Resolve `user[:group]` (names or numbers) to host ids.
fn resolve_owner(owner: &str) -> std::result::Result<(u32, u32, u32), String> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (
            n,
            User::from_uid(Uid::from_raw(n))
                .ok()
                .flatten()
                .map(|u| u.gid.as_raw()),
        ),
        Err(_) => match User::from_name(user) {
            Ok(Some(u)) => (u.uid.as_raw(), Some(u.gid.as_raw())),
            _ => return Err(format!("no user '{user}' on this host")),
        },
    };
    let gid = match group {
        None | Some("") => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid.as_raw(),
                _ => return Err(format!("no group '{g}' on this host")),
            },
        },
    };
    Ok((uid, gid, primary.unwrap_or(uid)))
}

/// The uid/gid shift of an unprivileged container's files on the host.
fn id_shift(config: &Config, guest: Guest, lxc: &Option<phoenix::LxcConfigs>) -> u32 {
    if guest.kind != GuestType::Lxc {
        return 0;
    }
    if let Some(shift) = config.guests.get(&guest.id).and_then(|g| g.id_shift) {
        return shift;
    }
    let unprivileged = lxc
        .as_ref()
        .and_then(|l| l.lxc_configs.get(&guest.id))
        .and_then(|c| c.unprivileged)
        .unwrap_or(false);
    if unprivileged {
        config.renewal.unprivileged_id_shift
    } else {
        0
    }
}

/// Read and check the manifest `config` names.
pub fn load(config: &Config) -> Result<Manifest> {
    let path = config.manifest_path();
    let raw = phoenix::read_manifest(&path)?;
    // Only needed to know which containers are unprivileged.
    let lxc_path = config.lxc_configs_path();
    let lxc = if raw.iter().any(|e| e.guest_type == GuestType::Lxc) && lxc_path.exists() {
        Some(phoenix::read_lxc_configs(&lxc_path)?)
    } else {
        None
    };
    let mut names = HashSet::new();
    let mut entries = Vec::with_capacity(raw.len());
    for (index, e) in raw.into_iter().enumerate() {
        let bad = |field: &str, why: String| {
            err(
                Kind::Config,
                format!(
                    "certificate manifest '{}': [{index}].{field} ('{}'): {why}",
                    path.display(),
                    e.common_name
                ),
            )
        };
        let entry = check(config, index, &e, &lxc, &bad)?;
        if !names.insert(entry.name.clone()) {
            return Err(bad("common_name", "used by an earlier entry too".into()));
        }
        entries.push(entry);
    }
    Ok(Manifest { path, entries })
}

fn check(
    config: &Config,
    index: usize,
    e: &ManifestEntry,
    lxc: &Option<phoenix::LxcConfigs>,
    bad: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Entry> {
    let mut sans = vec![cert::parse_san(&e.common_name).map_err(|why| bad("common_name", why))?];
    for (i, v) in e.sans.iter().flatten().enumerate() {
        let san =
            cert::parse_san(v).map_err(|why| bad(&format!("sans[{i}]"), format!("'{v}' {why}")))?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for (field, p) in [("cert_path", &e.cert_path), ("key_path", &e.key_path)] {
        if !p.is_absolute() || p.file_name().is_none() {
            return Err(bad(
                field,
                format!("'{}' is not an absolute file path", p.display()),
            ));
        }
    }
    if e.cert_path == e.key_path {
        return Err(bad("key_path", "is the same file as cert_path".into()));
    }
    match e.cert_type.as_deref() {
        None | Some("server") | Some("client") => {}
        Some(other) => {
            return Err(bad(
                "cert_type",
                format!("'{other}' is not server or client"),
            ))
        }
    }
    let post = match (&e.post_renewal, &e.post_renewal_command) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "post_renewal",
                "give post_renewal or post_renewal_command, not both".into(),
            ))
        }
        (Some(p), None) if p.run.is_empty() || p.run[0].is_empty() => {
            return Err(bad("post_renewal.run", "is an empty command".into()))
        }
        (Some(p), None) => PostAction::Guest(p.run.clone()),
        (None, Some(c)) if c.trim().is_empty() => PostAction::None,
        (None, Some(c)) => PostAction::Legacy(c.clone()),
        (None, None) => PostAction::None,
    };
    let deliver = match (&post, &e.post_renewal) {
        (PostAction::Legacy(_), _) => true,
        (PostAction::Guest(_), Some(p)) => p.deliver,
        _ => false,
    };
    let guest = Guest {
        kind: e.guest_type,
        id: e.guest_id,
    };
    let owner = e.owner.as_deref().unwrap_or("root:root");
    let (uid, gid, primary) = resolve_owner(owner).map_err(|why| bad("owner", why))?;
    let shift = id_shift(config, guest, lxc);
    let key_mode = if gid != primary { 0o640 } else { 0o600 };
    Ok(Entry {
        index,
        name: e.common_name.clone(),
        guest,
        wanted: sans.iter().cloned().collect(),
        sans,
        cert_path: e.cert_path.clone(),
        key_path: e.key_path.clone(),
        uid: uid
            .checked_add(shift)
            .ok_or_else(|| bad("owner", "uid overflows with the id shift".into()))?,
        gid: gid
            .checked_add(shift)
            .ok_or_else(|| bad("owner", "gid overflows with the id shift".into()))?,
        key_mode,
        include_ca: e.include_ca,
        post,
        deliver,
    })
}

/// Is the manifest fit to hold host shell commands: owned by root and
/// writable by nobody else? (Legacy `post_renewal_command` strings run as
/// root on the host.)
pub fn trusted_for_commands(path: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.uid() != 0 {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, lxc: Option<&str>) -> Result<Manifest> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("certificate-manifest.json"), text).unwrap();
        if let Some(l) = lxc {
            std::fs::write(dir.path().join("phoenix_lxc_configs.json"), l).unwrap();
        }
        let config = Config {
            phoenix_etc: dir.path().into(),
            ..Config::default()
        };
        load(&config)
    }

    const ONE: &str = r#"[{"common_name": "web.x", "sans": ["10.0.0.1", "web.x", "*.web.x"],
        "guest_id": 101, "guest_type": "lxc", "cert_path": "/s/web.crt", "key_path": "/s/web.key",
        "owner": "0:33", "post_renewal": {"run": ["systemctl", "reload", "nginx"]}}]"#;

    #[test]
    fn entry_is_resolved() {
        let m = load_text(ONE, None).unwrap();
        let e = &m.entries[0];
        assert_eq!(e.sans.len(), 3, "subject listed once: {:?}", e.sans);
        assert_eq!((e.uid, e.gid, e.key_mode), (0, 33, 0o640));
        assert_eq!(
            e.post,
            PostAction::Guest(vec!["systemctl".into(), "reload".into(), "nginx".into()])
        );
        assert!(
            !e.deliver,
            "a structured action gets no files unless it asks"
        );
    }

    #[test]
    fn legacy_commands_always_get_the_files_structured_ones_on_request() {
        let asks = ONE.replace(r#""nginx"]}"#, r#""nginx"], "deliver": true}"#);
        assert!(load_text(&asks, None).unwrap().entries[0].deliver);
        let legacy = ONE.replace(
            r#""post_renewal": {"run": ["systemctl", "reload", "nginx"]}"#,
            r#""post_renewal_command": "pct exec 101 -- mv /tmp/cert.pem /etc/x""#,
        );
        assert!(load_text(&legacy, None).unwrap().entries[0].deliver);
        let typo = ONE.replace(r#""nginx"]}"#, r#""nginx"], "delivr": true}"#);
        let e = load_text(&typo, None).unwrap_err();
        assert!(e.to_string().contains("delivr"), "{e}");
    }

    #[test]
    fn unprivileged_container_ids_are_shifted() {
        let lxc = r#"{"lxc_configs": {"101": {"name": "Nginx", "unprivileged": true}}}"#;
        let m = load_text(ONE, Some(lxc)).unwrap();
        assert_eq!((m.entries[0].uid, m.entries[0].gid), (100_000, 100_033));
    }

    #[test]
    fn errors_name_index_and_field() {
        let two = ONE.replace(
            "}]",
            r#"}, {"common_name": "b.x", "sans": ["a,b"], "guest_id": 1,
            "guest_type": "vm", "cert_path": "/b.crt", "key_path": "/b.key"}]"#,
        );
        let e = load_text(&two, None).unwrap_err();
        assert_eq!(crate::exit::kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("[1].sans[0]"), "{e}");
        assert!(e.to_string().contains("'a,b'"), "{e}");
        let rel = ONE.replace("/s/web.key", "web.key");
        assert!(load_text(&rel, None)
            .unwrap_err()
            .to_string()
            .contains("[0].key_path"));
        let owner = ONE.replace("0:33", "nobody-such-user:root");
        assert!(load_text(&owner, None)
            .unwrap_err()
            .to_string()
            .contains("[0].owner"));
        let dup = ONE.replace(
            "}]",
            r#"}, {"common_name": "web.x", "guest_id": 1,
            "guest_type": "vm", "cert_path": "/b.crt", "key_path": "/b.key"}]"#,
        );
        assert!(load_text(&dup, None)
            .unwrap_err()
            .to_string()
            .contains("[1].common_name"));
    }
}
