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
use crate::swarm::secrets::{self, Part, Rotation, SecretSpec};

use super::legacy;

/// What to run after a certificate changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostAction {
    /// Nothing.
    None,
    /// argv inside the guest (typed transport).
    Guest(Vec<String>),
    /// The legacy shell string, run on the host (deprecated).
    Legacy(String),
    /// Swarm secrets made from the new files, rotated into services.
    SwarmSecrets(Rotation),
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
    /// What the plan warns of (a legacy command that cannot work, ...).
    pub warnings: Vec<String>,
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
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    let mut manager: Option<u32> = None;
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
        let mut entry = check(config, index, &e, &lxc, &bad)?;
        if !names.insert(entry.name.clone()) {
            return Err(bad("common_name", "used by an earlier entry too".into()));
        }
        if let PostAction::SwarmSecrets(rot) = &mut entry.post {
            for s in &rot.secrets {
                let field = format!("post_renewal.swarm_secrets.{}", s.part.field());
                if let Some(other) = entries.iter().find(|o| secret_names(o).contains(&s.name)) {
                    return Err(bad(
                        &field,
                        format!(
                            "'{}' is rotated by entry [{}] ('{}') too",
                            s.name, other.index, other.name
                        ),
                    ));
                }
            }
            rot.manager = match manager {
                Some(id) => id,
                None => {
                    let id = crate::swarm::topology(config)
                        .map_err(|e| {
                            bad(
                                "post_renewal.swarm_secrets",
                                format!("finding the swarm manager: {e:#}"),
                            )
                        })?
                        .manager
                        .vmid;
                    *manager.get_or_insert(id)
                }
            };
        }
        for w in &entry.warnings {
            log::warn!("{}: {w}", entry.name);
        }
        entries.push(entry);
    }
    Ok(Manifest { path, entries })
}

fn secret_names(e: &Entry) -> Vec<String> {
    match &e.post {
        PostAction::SwarmSecrets(r) => r.secrets.iter().map(|s| s.name.clone()).collect(),
        _ => Vec::new(),
    }
}

/// `post_renewal.swarm_secrets` and `services`, checked as Docker will
/// check them (the manager is filled in by the caller).
fn check_rotation(
    e: &ManifestEntry,
    p: &phoenix::PostRenewal,
    names: &phoenix::SwarmSecretNames,
    bad: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<Rotation> {
    if p.deliver {
        return Err(bad(
            "post_renewal.deliver",
            "is for \"run\": swarm_secrets take the files themselves".into(),
        ));
    }
    let mut secrets = Vec::new();
    for (part, name) in [
        (Part::Cert, &names.cert),
        (Part::Key, &names.key),
        (Part::Ca, &names.ca),
    ] {
        let Some(name) = name else { continue };
        let field = format!("post_renewal.swarm_secrets.{}", part.field());
        secrets::check_secret_name(name).map_err(|why| bad(&field, why))?;
        if part == Part::Ca && !e.include_ca {
            return Err(bad(
                &field,
                "needs \"include_ca\": true (the CA chain is written beside the certificate only then)"
                    .into(),
            ));
        }
        if secrets.iter().any(|s: &SecretSpec| &s.name == name) {
            return Err(bad(&field, format!("'{name}' is named twice")));
        }
        secrets.push(SecretSpec {
            part,
            name: name.clone(),
        });
    }
    if secrets.is_empty() {
        return Err(bad(
            "post_renewal.swarm_secrets",
            "names no secret: give cert, key and/or ca".into(),
        ));
    }
    for (i, s) in p.services.iter().enumerate() {
        secrets::check_service_name(s)
            .map_err(|why| bad(&format!("post_renewal.services[{i}]"), why))?;
    }
    Ok(Rotation {
        manager: 0,
        secrets,
        services: p.services.clone(),
    })
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
        (Some(p), None) => match (&p.run, &p.swarm_secrets) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "post_renewal",
                    "give run or swarm_secrets, not both".into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "post_renewal",
                    "needs run (a command in the guest) or swarm_secrets".into(),
                ))
            }
            (Some(run), None) if run.is_empty() || run[0].is_empty() => {
                return Err(bad("post_renewal.run", "is an empty command".into()))
            }
            (Some(_), None) if !p.services.is_empty() => {
                return Err(bad(
                    "post_renewal.services",
                    "goes with swarm_secrets, not run".into(),
                ))
            }
            (Some(run), None) => PostAction::Guest(run.clone()),
            (None, Some(names)) => PostAction::SwarmSecrets(check_rotation(e, p, names, bad)?),
        },
        (None, Some(c)) if c.trim().is_empty() => PostAction::None,
        (None, Some(c)) => PostAction::Legacy(c.clone()),
        (None, None) => PostAction::None,
    };
    let deliver = match (&post, &e.post_renewal) {
        (PostAction::Legacy(_), _) => true,
        (PostAction::Guest(_), Some(p)) => p.deliver,
        _ => false,
    };
    let warnings = match &post {
        PostAction::Legacy(c) => legacy::secret_chain_warning(c).into_iter().collect(),
        _ => Vec::new(),
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
        warnings,
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

    const VMS: &str = r#"{"vms": [{"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
        "network_config": {"ip": "10.0.0.111/24"}}]}"#;

    fn portainer(post: &str, include_ca: bool) -> String {
        format!(
            r#"[{{"common_name": "portainer.x", "guest_id": 1001, "guest_type": "vm",
            "cert_path": "/p/portainer.crt", "key_path": "/p/portainer.key",
            "include_ca": {include_ca}, "post_renewal": {post}}}]"#
        )
    }

    fn load_with_vms(text: &str) -> Result<Manifest> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("certificate-manifest.json"), text).unwrap();
        std::fs::write(dir.path().join("phoenix_vm_configs.json"), VMS).unwrap();
        let config = Config {
            phoenix_etc: dir.path().into(),
            ..Config::default()
        };
        load(&config)
    }

    #[test]
    fn swarm_secrets_resolve_to_the_manager() {
        let m = load_with_vms(&portainer(
            r#"{"swarm_secrets": {"cert": "portainer_tls_cert.pem", "key": "portainer_tls_key.pem",
                "ca": "portainer_tls_ca.pem"}, "services": ["production_portainer_service_portainer"]}"#,
            true,
        ))
        .unwrap();
        let PostAction::SwarmSecrets(r) = &m.entries[0].post else {
            panic!("{:?}", m.entries[0].post)
        };
        assert_eq!(r.manager, 1001);
        let names: Vec<_> = r
            .secrets
            .iter()
            .map(|s| (s.part, s.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (Part::Cert, "portainer_tls_cert.pem"),
                (Part::Key, "portainer_tls_key.pem"),
                (Part::Ca, "portainer_tls_ca.pem")
            ]
        );
        assert!(!m.entries[0].deliver);
    }

    #[test]
    fn names_docker_would_refuse_are_config_errors_at_plan_time() {
        let cases = [
            (
                r#"{"swarm_secrets": {"cert": "bad name"}}"#,
                true,
                "[0].post_renewal.swarm_secrets.cert",
            ),
            (
                &format!(r#"{{"swarm_secrets": {{"key": "{}"}}}}"#, "k".repeat(52)),
                true,
                "[0].post_renewal.swarm_secrets.key",
            ),
            (
                r#"{"swarm_secrets": {"ca": "ca.pem"}}"#,
                false,
                "include_ca",
            ),
            (
                r#"{"swarm_secrets": {"cert": "c.pem"}, "services": ["a.b"]}"#,
                true,
                "[0].post_renewal.services[0]",
            ),
            (r#"{"swarm_secrets": {}}"#, true, "names no secret"),
            (
                r#"{"swarm_secrets": {"cert": "x", "key": "x"}}"#,
                true,
                "named twice",
            ),
            (
                r#"{"run": ["true"], "swarm_secrets": {"cert": "x"}}"#,
                true,
                "not both",
            ),
            (
                r#"{"run": ["true"], "services": ["s"]}"#,
                true,
                "[0].post_renewal.services",
            ),
            (
                r#"{"swarm_secrets": {"cert": "x"}, "deliver": true}"#,
                true,
                "[0].post_renewal.deliver",
            ),
            (r#"{}"#, true, "needs run"),
        ];
        for (post, ca, want) in cases {
            let e = load_with_vms(&portainer(post, ca)).unwrap_err();
            assert_eq!(crate::exit::kind_of(&e), Kind::Config, "{post}: {e}");
            assert!(e.to_string().contains(want), "{post}: {e}");
        }
    }

    #[test]
    fn one_secret_name_belongs_to_one_entry() {
        let one = portainer(r#"{"swarm_secrets": {"cert": "shared.pem"}}"#, false);
        let two = one.replace("}]", "},") + &one[1..].replace("portainer.x", "other.x");
        let e = load_with_vms(&two).unwrap_err();
        assert!(
            e.to_string()
                .contains("[1].post_renewal.swarm_secrets.cert"),
            "{e}"
        );
        assert!(e.to_string().contains("entry [0] ('portainer.x')"), "{e}");
    }

    #[test]
    fn the_legacy_secret_chain_is_flagged_with_its_equivalent() {
        let legacy = ONE.replace(
            r#""post_renewal": {"run": ["systemctl", "reload", "nginx"]}"#,
            r#""post_renewal_command": "docker secret rm web.pem; docker secret create web.pem /tmp/cert.pem""#,
        );
        let m = load_text(&legacy, None).unwrap();
        assert_eq!(m.entries[0].warnings.len(), 1);
        assert!(m.entries[0].warnings[0].contains(r#""swarm_secrets": {"cert": "web.pem"}"#));
        assert!(load_text(ONE, None).unwrap().entries[0].warnings.is_empty());
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
