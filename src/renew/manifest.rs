//! The certificate manifest, checked before anything is done: every SAN
//! valid, paths absolute, owners resolvable, names unique, no file claimed
//! twice. A problem is a configuration error naming the file, the entry
//! index and the field.
//!
//! A problem of one entry refuses that entry alone ([`BadEntry`]): the
//! others are still renewed, and the run exits 2 at its end. With 24 h
//! certificates, one typo must not let every certificate expire. Only a
//! manifest that cannot be read or is not a JSON array (or a configuration
//! file it needs) stops the whole run before anything.
//!
//! Checks across entries (a name, a file or a Swarm secret claimed by two)
//! refuse the later entry and name the earlier one; they count every
//! earlier entry that parsed, valid or not, so which entry is refused
//! does not depend on what else is wrong.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::unistd::{Group, Uid, User};

use crate::cert::{self, San};
use crate::config::{read_json, Config};
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

/// An entry the manifest check refused: it fails alone (exit 2 at the
/// end of the run), the others go on.
#[derive(Debug, Clone)]
pub struct BadEntry {
    /// Position in the manifest.
    pub index: usize,
    /// Its `common_name`, or `[index]` when it has none.
    pub name: String,
    /// Its guest, when the entry parsed.
    pub guest: Option<Guest>,
    /// Its certificate file, when the entry parsed.
    pub cert_path: Option<PathBuf>,
    /// Why: names the file, the index, the field and the entry.
    pub error: String,
}

/// The loaded manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its path.
    pub path: PathBuf,
    /// Its valid entries, in order.
    pub entries: Vec<Entry>,
    /// The entries the check refused, in order.
    pub bad: Vec<BadEntry>,
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

/// What an earlier entry claims, for the checks across entries.
struct Claims {
    index: usize,
    name: String,
    /// (field, path): `cert_path`, `key_path`, and with `include_ca` the
    /// `ca.pem` beside the certificate.
    files: Vec<(&'static str, PathBuf)>,
    /// Resolved owner, when the entry is valid.
    owner: Option<(u32, u32)>,
    /// (field, name) of its Swarm secrets.
    secrets: Vec<(String, String)>,
}

/// The `include_ca` file as a field name in messages.
const CA_FIELD: &str = "ca.pem (include_ca, beside cert_path)";

fn claims_of(index: usize, e: &ManifestEntry) -> Claims {
    let mut files = vec![
        ("cert_path", e.cert_path.clone()),
        ("key_path", e.key_path.clone()),
    ];
    if e.include_ca {
        files.push((CA_FIELD, e.cert_path.with_file_name("ca.pem")));
    }
    let secrets = e
        .post_renewal
        .as_ref()
        .and_then(|p| p.swarm_secrets.as_ref())
        .map(|n| {
            [
                (Part::Cert, &n.cert),
                (Part::Key, &n.key),
                (Part::Ca, &n.ca),
            ]
            .into_iter()
            .filter_map(|(part, name)| {
                let field = format!("post_renewal.swarm_secrets.{}", part.field());
                name.clone().map(|n| (field, n))
            })
            .collect()
        })
        .unwrap_or_default();
    Claims {
        index,
        name: e.common_name.clone(),
        files,
        owner: None,
        secrets,
    }
}

/// The claims of the entries read so far, indexed by name, path and
/// secret, so that checking one entry against all earlier ones costs a
/// few lookups, not a pass over every earlier entry (a manifest of 1,000
/// entries took 4 million path comparisons).
#[derive(Default)]
struct Seen {
    claims: Vec<Claims>,
    by_key: HashMap<String, Vec<usize>>,
}

impl Seen {
    fn keys(c: &Claims) -> Vec<String> {
        std::iter::once(format!("name\0{}", c.name))
            .chain(
                c.files
                    .iter()
                    // As `PathBuf`'s `==` sees it: `.` and doubled `/` dropped.
                    .map(|(_, p)| {
                        let same: PathBuf = p.components().collect();
                        format!("path\0{}", same.to_string_lossy())
                    }),
            )
            .chain(c.secrets.iter().map(|(_, n)| format!("secret\0{n}")))
            .collect()
    }

    fn push(&mut self, c: Claims) {
        let i = self.claims.len();
        for k in Self::keys(&c) {
            self.by_key.entry(k).or_default().push(i);
        }
        self.claims.push(c);
    }

    /// The earlier claims that share a name, a path or a secret with
    /// `me`, in manifest order.
    fn sharing(&self, me: &Claims) -> Vec<&Claims> {
        let idx: BTreeSet<usize> = Self::keys(me)
            .iter()
            .filter_map(|k| self.by_key.get(k))
            .flatten()
            .copied()
            .collect();
        idx.into_iter().map(|i| &self.claims[i]).collect()
    }
}

/// Refuse what `me` claims that an earlier entry claims too. Two
/// `include_ca` entries in one directory share its `ca.pem` (the same
/// chain), unless their owners differ: each run would hand it back and
/// forth.
fn check_claims(
    me: &Claims,
    seen: &Seen,
    bad: &dyn Fn(&str, String) -> anyhow::Error,
) -> Result<()> {
    for o in seen.sharing(me) {
        let other = format!("entry [{}] ('{}')", o.index, o.name);
        if o.name == me.name {
            return Err(bad("common_name", format!("is the name of {other} too")));
        }
        for (field, path) in &me.files {
            for (ofield, opath) in &o.files {
                if path != opath {
                    continue;
                }
                let shared_ca = *field == CA_FIELD && *ofield == CA_FIELD;
                if shared_ca && (me.owner.is_none() || o.owner.is_none() || me.owner == o.owner) {
                    continue;
                }
                let why = if shared_ca {
                    "with another owner".to_string()
                } else {
                    "too".to_string()
                };
                return Err(bad(
                    field,
                    format!("'{}' is the {ofield} of {other} {why}", path.display()),
                ));
            }
        }
        for (field, name) in &me.secrets {
            if let Some((ofield, _)) = o.secrets.iter().find(|(_, n)| n == name) {
                return Err(bad(
                    field,
                    format!("'{name}' is the {ofield} of {other} too"),
                ));
            }
        }
    }
    Ok(())
}

/// Read and check the manifest `config` names. Only a manifest that
/// cannot be read or is not a JSON array (or an unreadable LXC file)
/// is an error: a bad entry lands in [`Manifest::bad`].
pub fn load(config: &Config) -> Result<Manifest> {
    let path = config.manifest_path();
    let raw: Vec<serde_json::Value> = read_json(&path, "certificate manifest")?;
    let mut parsed = Vec::with_capacity(raw.len());
    let mut bad_entries = Vec::new();
    for (index, value) in raw.into_iter().enumerate() {
        let name = value
            .get("common_name")
            .and_then(|v| v.as_str())
            .map(String::from);
        match serde_path_to_error::deserialize::<_, ManifestEntry>(value) {
            Ok(e) => parsed.push((index, e)),
            Err(e) => {
                let at = e.path().to_string();
                let field = if at == "." || at.is_empty() {
                    String::new()
                } else {
                    format!(".{at}")
                };
                let label = name
                    .clone()
                    .map(|n| format!(" ('{n}')"))
                    .unwrap_or_default();
                bad_entries.push(BadEntry {
                    index,
                    name: name.unwrap_or_else(|| format!("[{index}]")),
                    guest: None,
                    cert_path: None,
                    error: format!(
                        "certificate manifest '{}': [{index}]{field}{label}: {}",
                        path.display(),
                        e.into_inner()
                    ),
                });
            }
        }
    }
    // Only needed to know which containers are unprivileged.
    let lxc_path = config.lxc_configs_path();
    let lxc = if parsed.iter().any(|(_, e)| e.guest_type == GuestType::Lxc) && lxc_path.exists() {
        Some(phoenix::read_lxc_configs(&lxc_path)?)
    } else {
        None
    };
    let mut seen = Seen::default();
    let mut entries: Vec<Entry> = Vec::with_capacity(parsed.len());
    let mut manager: Option<u32> = None;
    for (index, e) in parsed {
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
        let mut claims = claims_of(index, &e);
        let checked = check(config, index, &e, &lxc, &bad).and_then(|mut entry| {
            claims.owner = Some((entry.uid, entry.gid));
            check_claims(&claims, &seen, &bad)?;
            if let PostAction::SwarmSecrets(rot) = &mut entry.post {
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
            Ok(entry)
        });
        // A refused entry still claims its name, files and secrets.
        match checked {
            Ok(entry) => {
                entries.push(entry);
            }
            Err(why) => bad_entries.push(BadEntry {
                index,
                name: e.common_name.clone(),
                guest: Some(Guest {
                    kind: e.guest_type,
                    id: e.guest_id,
                }),
                cert_path: Some(e.cert_path.clone()),
                error: format!("{why:#}"),
            }),
        }
        seen.push(claims);
    }
    bad_entries.sort_by_key(|b| b.index);
    Ok(Manifest {
        path,
        entries,
        bad: bad_entries,
    })
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
        // Paths are compared as written: `..` would hide a collision.
        if p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(bad(
                field,
                format!(
                    "'{}' has a '..' component: write the path plainly",
                    p.display()
                ),
            ));
        }
    }
    if e.cert_path == e.key_path {
        return Err(bad("key_path", "is the same file as cert_path".into()));
    }
    if e.include_ca {
        let ca = e.cert_path.with_file_name("ca.pem");
        if e.cert_path == ca {
            return Err(bad(
                "cert_path",
                format!(
                    "'{}' is the ca.pem that include_ca writes the CA chain to",
                    ca.display()
                ),
            ));
        }
        if e.key_path == ca {
            return Err(bad(
                "key_path",
                format!(
                    "'{}' is the ca.pem that include_ca writes beside cert_path",
                    ca.display()
                ),
            ));
        }
    }
    match e.cert_type.as_deref() {
        None | Some("server") | Some("client") => {}
        Some(other) => {
            return Err(bad(
                "cert_type",
                format!("'{other}' is not server or client"),
            ));
        }
    }
    let post = match (&e.post_renewal, &e.post_renewal_command) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "post_renewal",
                "give post_renewal or post_renewal_command, not both".into(),
            ));
        }
        (Some(p), None) => match (&p.run, &p.swarm_secrets) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "post_renewal",
                    "give run or swarm_secrets, not both".into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "post_renewal",
                    "needs run (a command in the guest) or swarm_secrets".into(),
                ));
            }
            (Some(run), None) if run.is_empty() || run[0].is_empty() => {
                return Err(bad("post_renewal.run", "is an empty command".into()));
            }
            (Some(_), None) if !p.services.is_empty() => {
                return Err(bad(
                    "post_renewal.services",
                    "goes with swarm_secrets, not run".into(),
                ));
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
    let mut warnings: Vec<String> = match &post {
        PostAction::Legacy(c) => legacy::secret_chain_warning(c).into_iter().collect(),
        _ => Vec::new(),
    };
    let commands: Vec<Vec<&str>> = match &post {
        PostAction::Legacy(c) => shell_commands(c),
        // An argv: its words as one command, and any `sh -c` script in it.
        PostAction::Guest(argv) => std::iter::once(argv.iter().map(String::as_str).collect())
            .chain(argv.iter().flat_map(|a| shell_commands(a)))
            .collect(),
        _ => Vec::new(),
    };
    warnings.extend(docker_reload_warning(&commands));
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

/// The simple commands of a command line, each as its words: split at
/// shell separators, then at blanks and quotes. Enough to spot a command
/// inside `sh -c '...; ...'`.
fn shell_commands(text: &str) -> Vec<Vec<&str>> {
    text.split(|c: char| ";&|()`\n".contains(c))
        .map(|cmd| {
            cmd.split(|c: char| c.is_whitespace() || "'\"".contains(c))
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

/// `systemctl reload docker` (or `reload-or-restart`, or `service docker
/// reload`) in an action: dockerd reloads its daemon.json on SIGHUP but
/// not its TLS files (`tlscert`, `tlskey`, `tlscacert` are read once, at
/// start: moby's `daemon/reload.go` lists what a reload changes, and they
/// are not among them), so the renewed certificate would not be served.
/// ARCHITECTURE.md failure mode 13.
fn docker_reload_warning(commands: &[Vec<&str>]) -> Option<String> {
    let is_docker = |w: &str| w == "docker" || w == "docker.service";
    let reloads = |w: &str| matches!(w, "reload" | "reload-or-restart" | "try-reload-or-restart");
    let found = commands.iter().any(|words| {
        words.iter().enumerate().any(|(i, &w)| match w {
            "systemctl" => {
                let rest: Vec<&str> = words[i + 1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with('-'))
                    .collect();
                rest.first().is_some_and(|v| reloads(v)) && rest[1..].iter().any(|u| is_docker(u))
            }
            "service" => {
                words.get(i + 1).is_some_and(|u| is_docker(u))
                    && words.get(i + 2).is_some_and(|v| *v == "reload")
            }
            _ => false,
        })
    });
    found.then(|| {
        "the post-renewal action reloads docker, which does not make dockerd read its TLS \
         certificate and key again: the old certificate stays in use; use `systemctl restart \
         docker`"
            .to_string()
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

    /// The manifest, or its first refused entry as the error.
    fn strict(m: Result<Manifest>) -> Result<Manifest> {
        let m = m?;
        match m.bad.first() {
            Some(b) => Err(err(Kind::Config, b.error.clone())),
            None => Ok(m),
        }
    }

    fn load_text(text: &str, lxc: Option<&str>) -> Result<Manifest> {
        strict(load_lenient(text, lxc))
    }

    fn load_lenient(text: &str, lxc: Option<&str>) -> Result<Manifest> {
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
        strict(load(&config))
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
        let two = one.replace("}]", "},") + &one[1..].replace("portainer", "other");
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
    fn reloading_docker_is_warned_of_restarting_is_not() {
        for (cmd, warned) in [
            ("systemctl reload docker", true),
            ("systemctl --no-block reload docker.service", true),
            ("systemctl reload-or-restart docker", true),
            ("service docker reload", true),
            (
                "pct exec 101 -- sh -c 'mv /tmp/cert.pem /etc/docker/ && systemctl reload docker'",
                true,
            ),
            ("systemctl restart docker", false),
            (
                "systemctl reload nginx && docker service update --force web",
                false,
            ),
            ("service docker restart", false),
        ] {
            assert_eq!(
                docker_reload_warning(&shell_commands(cmd)).is_some(),
                warned,
                "{cmd}"
            );
        }
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

    /// `ONE` plus `extra` entries (JSON objects, comma-separated).
    fn with(extra: &str) -> String {
        ONE.replace("}]", &format!("}}, {extra}]"))
    }

    fn vm(name: &str, crt: &str, key: &str, more: &str) -> String {
        format!(
            r#"{{"common_name": "{name}", "guest_id": 1, "guest_type": "vm",
            "cert_path": "{crt}", "key_path": "{key}"{more}}}"#
        )
    }

    #[test]
    fn a_bad_entry_is_refused_alone() {
        let text = with(
            &[
                vm(
                    "owner.x",
                    "/o/o.crt",
                    "/o/o.key",
                    r#", "owner": "nobody-such-user""#,
                ),
                vm("typo.x", "/t/t.crt", "/t/t.key", r#", "sans": "a.x""#),
                r#"{"guest_id": 1}"#.to_string(),
                vm("good.x", "/g/g.crt", "/g/g.key", ""),
            ]
            .join(", "),
        );
        let m = load_lenient(&text, None).unwrap();
        let good: Vec<_> = m
            .entries
            .iter()
            .map(|e| (e.index, e.name.as_str()))
            .collect();
        assert_eq!(good, [(0, "web.x"), (4, "good.x")]);
        let bad: Vec<_> = m.bad.iter().map(|b| (b.index, b.name.as_str())).collect();
        assert_eq!(bad, [(1, "owner.x"), (2, "typo.x"), (3, "[3]")]);
        assert!(
            m.bad[0].error.contains("[1].owner ('owner.x')"),
            "{}",
            m.bad[0].error
        );
        assert!(
            m.bad[1].error.contains("[2].sans ('typo.x'): invalid type"),
            "{}",
            m.bad[1].error
        );
        assert!(m.bad[2].error.contains("common_name"), "{}", m.bad[2].error);
        // Only a manifest that is no JSON array stops everything.
        for broken in ["[{", "{}", ""] {
            let e = load_lenient(broken, None).unwrap_err();
            assert_eq!(crate::exit::kind_of(&e), Kind::Config, "{broken}: {e}");
        }
    }

    #[test]
    fn files_claimed_twice_are_refused_naming_both_entries() {
        let cases = [
            // key_path is the ca.pem include_ca writes beside cert_path.
            (
                vm("a.x", "/a/a.crt", "/a/ca.pem", r#", "include_ca": true"#),
                "[1].key_path ('a.x'): '/a/ca.pem' is the ca.pem",
            ),
            (
                vm("a.x", "/a/ca.pem", "/a/a.key", r#", "include_ca": true"#),
                "[1].cert_path ('a.x')",
            ),
            // Two entries on one pair, or one file.
            (
                vm("a.x", "/s/web.crt", "/s/web.key", ""),
                "[1].cert_path ('a.x'): '/s/web.crt' is the cert_path of entry [0] ('web.x')",
            ),
            (
                vm("a.x", "/a/a.crt", "/s/web.crt", ""),
                "[1].key_path ('a.x'): '/s/web.crt' is the cert_path of entry [0] ('web.x')",
            ),
            (
                vm("a.x", "/s/./web.key", "/a/a.key", ""),
                "[1].cert_path ('a.x'): '/s/./web.key' is the key_path of entry [0] ('web.x')",
            ),
            (
                vm("a.x", "/a/a.crt", "/a/../s/web.key", ""),
                "[1].key_path ('a.x'): '/a/../s/web.key' has a '..' component",
            ),
            // A pair where another entry's include_ca writes its ca.pem.
            (
                vm("a.x", "/s/ca.pem", "/a/a.key", ""),
                "[1].cert_path ('a.x'): '/s/ca.pem' is the ca.pem (include_ca, beside cert_path) of entry [0] ('web.x')",
            ),
            // One ca.pem, two owners: they would hand it back and forth.
            (
                vm("a.x", "/s/a.crt", "/s/a.key", r#", "include_ca": true"#),
                "[1].ca.pem (include_ca, beside cert_path) ('a.x'): '/s/ca.pem' is the ca.pem (include_ca, beside cert_path) of entry [0] ('web.x') with another owner",
            ),
        ];
        let web_ca = ONE.replace(r#""owner""#, r#""include_ca": true, "owner""#);
        for (other, want) in cases {
            let text = web_ca.replace("}]", &format!("}}, {other}]"));
            let m = load_lenient(&text, None).unwrap();
            assert_eq!(m.entries.len(), 1, "{other}");
            assert_eq!(m.entries[0].name, "web.x");
            assert_eq!(m.bad.len(), 1, "{other}");
            assert!(
                m.bad[0].error.contains(want),
                "{other}:\n{}",
                m.bad[0].error
            );
        }
        // One ca.pem shared by two include_ca entries of one owner is fine.
        let same = vm(
            "a.x",
            "/s/a.crt",
            "/s/a.key",
            r#", "include_ca": true, "owner": "0:33""#,
        );
        let m = load_lenient(&web_ca.replace("}]", &format!("}}, {same}]")), None).unwrap();
        assert!(m.bad.is_empty(), "{:?}", m.bad);
        // A refused entry still claims its files: the later one is refused.
        let text = with(
            &[
                vm(
                    "bad.x",
                    "/b/b.crt",
                    "/b/b.key",
                    r#", "owner": "nobody-such-user""#,
                ),
                vm("late.x", "/b/b.crt", "/l/l.key", ""),
            ]
            .join(", "),
        );
        let m = load_lenient(&text, None).unwrap();
        assert_eq!(m.entries.len(), 1);
        assert!(
            m.bad[1].error.contains(
                "[2].cert_path ('late.x'): '/b/b.crt' is the cert_path of entry [1] ('bad.x')"
            ),
            "{}",
            m.bad[1].error
        );
    }
}
