//! Swarm secrets made from a certificate, rotated the one way Docker
//! allows while services use them (moby #29882, #35803):
//!
//! 1. each part of the pair (certificate, key, CA chain) becomes a secret
//!    under a versioned name, its logical name plus the first 12 hex
//!    digits of the content's SHA-256 (`portainer_tls_cert.pem-3f2a9c81d0e4`),
//!    labelled with the logical name, the certificate and the full digest;
//!    the bytes go on stdin, never argv;
//! 2. every listed service that mounts an older version of a name gets
//!    one `docker service update --secret-rm OLD --secret-add
//!    source=NEW,target=...` for all its rotated secrets, so it rolls
//!    once; the target, owner and mode are the old reference's, so the
//!    file inside the container keeps its name;
//! 3. the update is waited for, bounded: `paused` is rolled back and
//!    `rollback_*` is a failure; either keeps the old secrets, and the
//!    next run tries again;
//! 4. then versions no service uses are removed: ours (labelled) and the
//!    unversioned name the old bash created.
//!
//! The same content is the same name, so a run with nothing new issues
//! one read (`docker secret ls`) and no write; the second, third, ...
//! rotation is the first one again with other digests.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::digest::sha256_hex;
use anyhow::Result;

use super::docker::Docker;
use super::service::{Removed, SecretAdd, SecretEntry, ServiceInfo};
use crate::signal;

/// Label: the logical name a version belongs to.
pub const LABEL_NAME: &str = "phoenix.secret";
/// Label: the certificate (manifest common name) it was made from.
pub const LABEL_CERT: &str = "phoenix.certificate";
/// Label: the full SHA-256 of its content.
pub const LABEL_DIGEST: &str = "phoenix.sha256";
/// Hex digits of the digest in a versioned name.
pub const DIGEST_LEN: usize = 12;
/// swarmkit's limit on a secret or config name.
pub const NAME_MAX: usize = 64;
/// swarmkit's limit on a service name.
pub const SERVICE_NAME_MAX: usize = 63;
/// swarmkit's `MaxSecretSize`.
pub const SECRET_MAX_BYTES: u64 = 500 * 1024;

/// A part of the certificate's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The certificate file.
    Cert,
    /// The private key.
    Key,
    /// The CA chain (`ca.pem`).
    Ca,
}

impl Part {
    /// Its field under `post_renewal.swarm_secrets`.
    pub fn field(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
            Part::Ca => "ca",
        }
    }
}

/// One secret of a rotation: which part, under which logical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The file it is made from.
    pub part: Part,
    /// Its logical name (the old unversioned name, and the usual target).
    pub name: String,
}

/// The structured post-renewal action `swarm_secrets`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The swarm manager VM, where the secrets live.
    pub manager: u32,
    /// The secrets, in manifest order (cert, key, ca).
    pub secrets: Vec<SecretSpec>,
    /// The services that use them.
    pub services: Vec<String>,
}

/// Check a logical secret name as swarmkit will check the versioned one
/// (`^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64
/// characters with the suffix).
pub fn check_secret_name(name: &str) -> std::result::Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if name.is_empty() {
        return Err("is empty".into());
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(format!(
            "'{name}' must start and end with a letter or digit (Docker refuses it)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(alnum(c) || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "'{name}' has '{c}': Docker allows only letters, digits, '-', '_' and '.'"
        ));
    }
    let max = NAME_MAX - 1 - DIGEST_LEN;
    if name.len() > max {
        return Err(format!(
            "'{name}' is {} characters: at most {max}, so that with the version suffix \
             ('-' and {DIGEST_LEN} hex digits) it stays within Docker's {NAME_MAX}",
            name.len()
        ));
    }
    Ok(())
}

/// Check a service name as swarmkit does
/// (`^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`, at most 63 characters).
pub fn check_service_name(name: &str) -> std::result::Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > SERVICE_NAME_MAX {
        return Err(format!(
            "'{name}' is longer than Docker's {SERVICE_NAME_MAX} characters"
        ));
    }
    let ok = name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "'{name}' is not a Docker service name (letters, digits, '-' and '_', \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// The versioned name of `logical` holding `bytes`, and the bytes'
/// SHA-256 (hex).
pub fn version_name(logical: &str, bytes: &[u8]) -> (String, String) {
    let sha256 = sha256_hex(bytes);
    (format!("{logical}-{}", &sha256[..DIGEST_LEN]), sha256)
}

/// One secret's content, read from the installed file.
pub struct Material {
    /// What it is.
    pub spec: SecretSpec,
    /// Its versioned name.
    pub version: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    bytes: Vec<u8>,
}

impl Material {
    /// The content of `spec`: its versioned name follows from it.
    pub fn new(spec: SecretSpec, bytes: Vec<u8>) -> Material {
        let (version, sha256) = version_name(&spec.name, &bytes);
        Material {
            spec,
            version,
            sha256,
            bytes,
        }
    }
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("version", &self.version)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// Is `name` a version of `logical`: the unversioned name itself, or the
/// name plus `-` and 12 hex digits.
pub fn is_version_of(name: &str, logical: &str) -> bool {
    if name == logical {
        return true;
    }
    name.strip_prefix(logical)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|d| d.len() == DIGEST_LEN && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Secrets created (versioned names).
    pub created: Vec<String>,
    /// Services rolled onto the new versions.
    pub updated: Vec<String>,
    /// Old versions removed.
    pub removed: Vec<String>,
}

impl Report {
    /// Nothing was written.
    pub fn unchanged(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The swap one service needs: which names out, which in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Swap {
    remove: Vec<String>,
    add: Vec<SecretAdd>,
}

/// The swap `svc` needs to mount only the current versions, or `None`
/// when it already does (or mounts none of the names).
fn swap_for(svc: &ServiceInfo, material: &[Material]) -> Option<Swap> {
    let mut swap = Swap {
        remove: Vec::new(),
        add: Vec::new(),
    };
    for r in &svc.secrets {
        let Some(m) = material
            .iter()
            .find(|m| is_version_of(&r.secret_name, &m.spec.name))
        else {
            continue;
        };
        if r.secret_name == m.version {
            continue;
        }
        if !swap.remove.contains(&r.secret_name) {
            swap.remove.push(r.secret_name.clone());
        }
        let file = r.file.clone().unwrap_or(super::service::SecretFile {
            name: m.spec.name.clone(),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o444,
        });
        let add = SecretAdd {
            source: m.version.clone(),
            file,
        };
        if !swap.add.contains(&add) {
            swap.add.push(add);
        }
    }
    (!swap.remove.is_empty()).then_some(swap)
}

fn mounts_any(svc: &ServiceInfo, material: &[Material]) -> bool {
    svc.secrets.iter().any(|r| {
        material
            .iter()
            .any(|m| is_version_of(&r.secret_name, &m.spec.name))
    })
}

/// Versions of the rotated names other than the current ones that this
/// tool may remove: ours (labelled with the logical name) and the
/// unversioned name itself.
fn stale_versions<'s>(existing: &'s [SecretEntry], material: &[Material]) -> Vec<&'s str> {
    let current: Vec<(&str, &str)> = material
        .iter()
        .map(|m| (m.spec.name.as_str(), m.version.as_str()))
        .collect();
    older_versions(existing, &current, true)
}

/// The secrets of `existing` that are versions of a logical name of
/// `current` ((logical, current version) pairs) other than its current
/// version and that this toolkit made (labelled `phoenix.secret` with the
/// logical name); with `unversioned`, also a secret named the logical name
/// itself (what the old bash created). What a rotation or a deployment may
/// remove once no service uses it.
pub fn older_versions<'s>(
    existing: &'s [SecretEntry],
    current: &[(&str, &str)],
    unversioned: bool,
) -> Vec<&'s str> {
    existing
        .iter()
        .filter(|s| {
            current.iter().any(|&(logical, version)| {
                s.name != version
                    && ((unversioned && s.name == logical)
                        || (is_version_of(&s.name, logical)
                            && s.labels.get(LABEL_NAME).map(String::as_str) == Some(logical)))
            })
        })
        .map(|s| s.name.as_str())
        .collect()
}

/// Rotate `material` (made from certificate `cert`) into `services` on
/// the manager `d`. `update_bound` bounds each service update.
pub fn rotate(
    d: &Docker,
    cert: &str,
    material: &[Material],
    services: &[String],
    update_bound: Duration,
) -> Result<Report> {
    let mut report = Report::default();
    let existing = d.secret_ls()?;
    let names: BTreeSet<&str> = existing.iter().map(|s| s.name.as_str()).collect();
    let stale = stale_versions(&existing, material);
    let missing: Vec<&Material> = material
        .iter()
        .filter(|m| !names.contains(m.version.as_str()))
        .collect();
    if missing.is_empty() && stale.is_empty() {
        // No other version exists, so no service can mount one.
        log::info!(
            "{cert}: swarm secrets current ({})",
            material
                .iter()
                .map(|m| m.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(report);
    }
    for m in missing {
        let labels = [
            format!("{LABEL_NAME}={}", m.spec.name),
            format!("{LABEL_CERT}={cert}"),
            format!("{LABEL_DIGEST}={}", m.sha256),
        ];
        d.secret_create(&m.version, &labels, &m.bytes)?;
        log::info!(
            "{cert}: created swarm secret {} ({})",
            m.version,
            m.spec.part.field()
        );
        report.created.push(m.version.clone());
    }

    let mut failures = Vec::new();
    for name in services {
        // A stop request ends the rotation here, not after one more update.
        signal::check()?;
        let Some(svc) = d.service_inspect(name)? else {
            log::warn!(
                "{cert}: service {name} does not exist (yet): its secrets are created, \
                 it will mount them when deployed"
            );
            continue;
        };
        if !mounts_any(&svc, material) {
            log::warn!(
                "{cert}: service {name} mounts none of {}: left alone",
                material
                    .iter()
                    .map(|m| m.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            continue;
        }
        let Some(swap) = swap_for(&svc, material) else {
            // Current already: unless an update (an earlier run's that
            // outlived its bound, say) is still rolling or stuck, the old
            // versions are free to go.
            if let Err(e) = settled(d, &svc, update_bound) {
                failures.push(e);
            }
            continue;
        };
        match update(d, &svc, &swap, update_bound) {
            Ok(()) => {
                log::info!(
                    "{cert}: service {name} runs on {}",
                    swap.add
                        .iter()
                        .map(|a| a.source.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                report.updated.push(name.clone());
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let lines: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
        return Err(anyhow::anyhow!(
            "{}; old secret versions kept, the next run tries again",
            lines.join("; ")
        ));
    }

    for name in stale {
        match d.secret_rm(name)? {
            Removed::Yes => {
                log::info!("{cert}: removed old swarm secret {name}");
                report.removed.push(name.to_string());
            }
            Removed::InUse(why) => log::warn!(
                "{cert}: old swarm secret {name} kept: {why} (a service not listed \
                 in post_renewal.services; add it there)"
            ),
        }
    }
    Ok(report)
}

/// One service update, waited for: `completed` is success; `paused` is
/// rolled back; `rollback_*` and a run past the bound are failures.
fn update(d: &Docker, svc: &ServiceInfo, swap: &Swap, bound: Duration) -> Result<()> {
    d.swap_secrets(&svc.name, &swap.remove, &swap.add)?;
    wait_update(d, &svc.name, bound, true)
}

/// A service that already mounts the current versions: an update still
/// rolling is waited for; one paused or rolled back is reported and left
/// as it is (it may be the operator's, not ours).
fn settled(d: &Docker, svc: &ServiceInfo, bound: Duration) -> Result<()> {
    match svc.update.as_ref().map(|u| u.state.as_str()) {
        Some("updating") => wait_update(d, &svc.name, bound, false),
        Some(state @ ("paused" | "rollback_paused" | "rollback_started")) => {
            let msg = svc
                .update
                .as_ref()
                .map(|u| u.message.as_str())
                .unwrap_or("");
            Err(anyhow::anyhow!(
                "service {}: mounts the new secrets, but its last update is {state} ({msg}): \
                 left as it is; see `docker service ps {}`",
                svc.name,
                svc.name
            ))
        }
        _ => Ok(()),
    }
}

/// Poll the update status of `name` until it completes, bounded. A
/// `paused` update is rolled back when `rollback` says so.
fn wait_update(d: &Docker, name: &str, bound: Duration, rollback: bool) -> Result<()> {
    let deadline = Instant::now() + bound;
    let mut delay = Duration::from_millis(100);
    let mut last = String::from("not started");
    loop {
        signal::check()?;
        if let Some(st) = d.update_status(name)? {
            let msg = if st.message.is_empty() {
                st.state.clone()
            } else {
                format!("{}: {}", st.state, st.message)
            };
            match st.state.as_str() {
                "completed" => return Ok(()),
                "paused" => {
                    let back = if rollback {
                        match d.service_rollback(name) {
                            Ok(()) => "rolled back to the old ones".to_string(),
                            Err(e) => format!("rolling it back failed too: {e:#}"),
                        }
                    } else {
                        format!("left as it is; see `docker service ps {name}`")
                    };
                    return Err(anyhow::anyhow!(
                        "service {name}: the update onto the new secrets paused ({msg}); {back}"
                    ));
                }
                s if s.starts_with("rollback") => {
                    return Err(anyhow::anyhow!(
                        "service {name}: the update onto the new secrets was rolled back ({msg})"
                    ))
                }
                _ => last = msg,
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow::anyhow!(
                "service {name}: the update onto the new secrets is not complete after {} \
                 (last state: {last})",
                humantime::format_duration(Duration::from_secs(bound.as_secs().max(1)))
            ));
        }
        crate::notify::status(&format!(
            "service {name}: updating onto the new secrets ({}s left): {last}",
            deadline.saturating_duration_since(now).as_secs()
        ));
        signal::sleep(delay.min(deadline - now));
        // At most 1 s late noticing the end: each look is a qm call.
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::super::service::{SecretFile, SecretRef};
    use super::*;

    fn spec(part: Part, name: &str) -> SecretSpec {
        SecretSpec {
            part,
            name: name.into(),
        }
    }

    #[test]
    fn names_are_checked_as_swarmkit_does() {
        assert!(check_secret_name("portainer_tls_cert.pem").is_ok());
        assert!(check_secret_name("a").is_ok());
        for bad in ["", ".pem", "x.pem.", "has space", "a/b", "é"] {
            assert!(check_secret_name(bad).is_err(), "{bad:?}");
        }
        let longest = "a".repeat(NAME_MAX - 1 - DIGEST_LEN);
        assert!(check_secret_name(&longest).is_ok());
        let e = check_secret_name(&format!("{longest}b")).unwrap_err();
        assert!(e.contains("at most 51"), "{e}");
        assert!(check_service_name("production_portainer_service_portainer").is_ok());
        for bad in ["", "-x", "x.y", "x_", &"s".repeat(64)] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_follow_the_content() {
        let a = Material::new(spec(Part::Cert, "c.pem"), b"one".to_vec());
        let b = Material::new(spec(Part::Cert, "c.pem"), b"one".to_vec());
        let c = Material::new(spec(Part::Cert, "c.pem"), b"two".to_vec());
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert_eq!(a.version.len(), "c.pem".len() + 1 + DIGEST_LEN);
        assert!(check_secret_name(&a.version).is_ok());
        assert!(is_version_of(&a.version, "c.pem"));
        assert!(is_version_of("c.pem", "c.pem"));
        assert!(!is_version_of("c.pem-zz", "c.pem"));
        assert!(!is_version_of("c.pem.bak", "c.pem"));
        assert!(!format!("{a:?}").contains("one"));
    }

    fn svc(refs: &[(&str, &str)]) -> ServiceInfo {
        ServiceInfo {
            id: "id".into(),
            name: "svc".into(),
            secrets: refs
                .iter()
                .map(|(n, t)| SecretRef {
                    secret_name: n.to_string(),
                    file: Some(SecretFile {
                        name: t.to_string(),
                        uid: "0".into(),
                        gid: "0".into(),
                        mode: 0o600,
                    }),
                })
                .collect(),
            update: None,
        }
    }

    #[test]
    fn one_swap_per_service_keeps_targets_and_other_secrets() {
        let m = [
            Material::new(spec(Part::Cert, "c.pem"), b"cert".to_vec()),
            Material::new(spec(Part::Key, "k.pem"), b"key".to_vec()),
        ];
        let s = svc(&[
            ("c.pem", "/certs/tls-cert.pem"),
            ("k.pem-0123456789ab", "k.pem"),
            ("admin_password", "admin_password"),
        ]);
        let swap = swap_for(&s, &m).unwrap();
        assert_eq!(swap.remove, ["c.pem", "k.pem-0123456789ab"]);
        assert_eq!(swap.add[0].source, m[0].version);
        assert_eq!(swap.add[0].file.name, "/certs/tls-cert.pem");
        assert_eq!(swap.add[1].file.mode, 0o600);
        // Current already: nothing to do.
        let cur = svc(&[(&m[0].version, "c.pem"), (&m[1].version, "k.pem")]);
        assert_eq!(swap_for(&cur, &m), None);
        assert!(mounts_any(&cur, &m));
        assert!(!mounts_any(&svc(&[("other", "other")]), &m));
    }

    #[test]
    fn only_our_versions_and_the_legacy_name_are_stale() {
        let m = [Material::new(spec(Part::Cert, "c.pem"), b"cert".to_vec())];
        let entry = |name: &str, ours: bool| SecretEntry {
            id: name.into(),
            name: name.into(),
            labels: if ours {
                [(LABEL_NAME.to_string(), "c.pem".to_string())].into()
            } else {
                Default::default()
            },
        };
        let existing = [
            entry(&m[0].version, true),
            entry("c.pem", false),
            entry("c.pem-0123456789ab", true),
            entry("c.pem-aaaaaaaaaaaa", false),
            entry("unrelated", false),
        ];
        assert_eq!(
            stale_versions(&existing, &m),
            ["c.pem", "c.pem-0123456789ab"]
        );
    }
}
