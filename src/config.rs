//! The toolkit's own configuration, `/etc/phoenix/toolkit.json`.
//!
//! Every key is optional; the built-in defaults match the Phoenix layout,
//! so the tools run with no file at all. The file is strict: an unknown
//! key, a wrong type or bad JSON is a configuration error (exit 2) naming
//! the file, the key path and the line:column. Which file: `--config PATH`,
//! else `$PHOENIX_CONFIG`, else `/etc/phoenix/toolkit.json` if it exists.
//! A file named explicitly must exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::exit::{err, Kind};
use crate::fsutil;

/// Where the configuration is read from when nothing else is said.
pub const DEFAULT_PATH: &str = "/etc/phoenix/toolkit.json";

/// Largest configuration or Phoenix JSON file read (hostile input guard).
pub const JSON_LIMIT: u64 = 16 << 20;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder of `phoenix_vm_configs.json`, `phoenix_lxc_configs.json`,
    /// `certificate-manifest.json`.
    pub phoenix_etc: PathBuf,
    /// Where job locks live (local, never NFS).
    pub lock_dir: PathBuf,
    /// The toolkit's own state (renewal backoff, ...).
    pub state_dir: PathBuf,
    /// The certificate manifest; default `<phoenix_etc>/certificate-manifest.json`.
    pub manifest: Option<PathBuf>,
    /// The Step-CA and its readiness token.
    pub ca: CaConfig,
    /// Per-guest settings, by VMID.
    pub guests: BTreeMap<u32, GuestConfig>,
    /// Mounts a guest sets up itself (`phoenix-mount`).
    pub mounts: Vec<MountConfig>,
    /// Certificate renewal.
    pub renewal: RenewalConfig,
    /// Docker Swarm.
    pub swarm: SwarmConfig,
    /// Stack deployment (`phoenix-deploy`).
    pub deploy: DeployConfig,
    /// A Proxmox cluster: this node's name, the cluster-wide lock.
    pub cluster: ClusterConfig,
    /// Free text for the operator; ignored.
    #[serde(rename = "$comment")]
    pub comment: Option<serde_json::Value>,
    /// Where Proxmox mounts shared storages (`<storage_root>/<storage>`):
    /// the default `path` of an nfs, cifs or cephfs storage, and, without
    /// a `storage.cfg`, the rule itself (a host path under it needs its
    /// storage mounted).
    pub storage_root: PathBuf,
    /// Proxmox's cluster configuration (`storage.cfg`, `lxc/`,
    /// `qemu-server/`), read by the hookscript.
    pub pve_dir: PathBuf,
    /// Host directories that must be mount points when a checked path
    /// lies under them, beyond what `storage.cfg` says.
    pub required_mounts: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            phoenix_etc: "/usr/local/phoenix_hypervisor/etc".into(),
            lock_dir: "/run/lock/phoenix".into(),
            state_dir: "/var/lib/phoenix".into(),
            manifest: None,
            ca: CaConfig::default(),
            guests: BTreeMap::new(),
            mounts: Vec::new(),
            renewal: RenewalConfig::default(),
            swarm: SwarmConfig::default(),
            deploy: DeployConfig::default(),
            cluster: ClusterConfig::default(),
            comment: None,
            storage_root: "/mnt/pve".into(),
            pve_dir: "/etc/pve".into(),
            required_mounts: Vec::new(),
        }
    }
}

/// The `ca` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// VMID of the CA container.
    pub guest_id: u32,
    /// The CA's URL as clients reach it.
    pub url: String,
    /// CA state directory as the Proxmox host sees it.
    pub state_dir: PathBuf,
    /// The same directory as guests see it (STEPPATH's `ssl`).
    pub guest_state_dir: PathBuf,
    /// Readiness token, relative to the state directory.
    pub ready_file: PathBuf,
    /// Current generation, relative to the state directory.
    pub generation_file: PathBuf,
    /// Root fingerprint (hex), relative to the state directory.
    pub fingerprint_file: PathBuf,
    /// Root certificate, relative to the state directory.
    pub root_cert: PathBuf,
    /// Provisioner used to issue certificates.
    pub provisioner: String,
    /// Provisioner password file, relative to the state directory.
    pub provisioner_password_file: PathBuf,
    /// Bound of `phoenix-ca wait`, seconds.
    pub wait_timeout_secs: u64,
    /// Bound of the CA guest's post-start wait in the hook, seconds.
    pub post_start_timeout_secs: u64,
    /// Tighten group/world-readable CA secrets to 0600 at pre-start.
    pub fix_permissions: bool,
    /// Bound of one health check, seconds.
    pub health_timeout_secs: u64,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            guest_id: 103,
            url: "https://172.16.100.11:9000".into(),
            state_dir: "/mnt/pve/quickOS/lxc-persistent-data/103/ssl".into(),
            guest_state_dir: "/etc/step-ca/ssl".into(),
            ready_file: "ca.ready".into(),
            generation_file: "ca.generation".into(),
            fingerprint_file: "root_ca.fingerprint".into(),
            root_cert: "phoenix_root_ca.crt".into(),
            provisioner: "admin@thinkheads.ai".into(),
            provisioner_password_file: "provisioner_password.txt".into(),
            wait_timeout_secs: 300,
            post_start_timeout_secs: 120,
            fix_permissions: true,
            health_timeout_secs: 5,
        }
    }
}

/// The CA's files, resolved against one view of the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// The state directory itself.
    pub dir: PathBuf,
    /// `ca.ready`.
    pub ready: PathBuf,
    /// `ca.generation`.
    pub generation: PathBuf,
    /// `root_ca.fingerprint`.
    pub fingerprint: PathBuf,
    /// The root certificate.
    pub root_cert: PathBuf,
    /// The provisioner password file.
    pub provisioner_password: PathBuf,
}

impl CaConfig {
    /// The CA files under `dir` (relative names are joined to it, absolute
    /// ones kept).
    pub fn paths_in(&self, dir: &Path) -> CaPaths {
        CaPaths {
            dir: dir.to_path_buf(),
            ready: dir.join(&self.ready_file),
            generation: dir.join(&self.generation_file),
            fingerprint: dir.join(&self.fingerprint_file),
            root_cert: dir.join(&self.root_cert),
            provisioner_password: dir.join(&self.provisioner_password_file),
        }
    }

    /// The CA files as the Proxmox host sees them.
    pub fn host_paths(&self) -> CaPaths {
        self.paths_in(&self.state_dir)
    }

    /// The CA files as a guest sees them.
    pub fn guest_paths(&self) -> CaPaths {
        self.paths_in(&self.guest_state_dir)
    }
}

/// A `guests.<vmid>` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// Hold this guest's start until the CA is ready.
    pub gate_on_ca: bool,
    /// Bound of that wait, seconds (default: `ca.post_start_timeout_secs`).
    pub gate_timeout_secs: Option<u64>,
    /// The guest is unprivileged with this uid/gid shift (default 100000
    /// for an unprivileged container, 0 otherwise).
    pub id_shift: Option<u32>,
}

/// Kinds of mount `phoenix-mount` sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// NFS (`server:path`).
    Nfs,
    /// A bind mount of a local path.
    Bind,
    /// A tmpfs.
    Tmpfs,
}

/// A `mounts[]` entry: the shape of a VM's `volumes[]` object in
/// `phoenix_vm_configs.json`, so one can be copied over as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// The volume's name in the Phoenix VM config: kept, shown in
    /// messages and the unit's description; it changes nothing mounted.
    #[serde(default)]
    pub name: Option<String>,
    /// nfs, bind or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// NFS server (nfs only).
    #[serde(default)]
    pub server: Option<String>,
    /// Export path (nfs) or source path (bind).
    #[serde(default)]
    pub path: Option<String>,
    /// Where to mount it.
    pub mount_point: PathBuf,
    /// Mount options; defaults fit the kind.
    #[serde(default)]
    pub options: Option<String>,
    /// Mount read-only (default: true for the CA state directory).
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// The `renewal` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalConfig {
    /// Lifetime asked for a new certificate.
    pub lifetime: HumanDuration,
    /// When to renew: a share of the lifetime (`"66%"`) or a duration
    /// before expiry (`"8h"`).
    pub threshold: Threshold,
    /// How long a second run waits for the lock before exit 75, seconds.
    pub lock_wait_secs: u64,
    /// Deadline of one `step`, `pct` or `qm` command, seconds.
    pub command_timeout_secs: u64,
    /// uid/gid shift of unprivileged containers' files on the host.
    pub unprivileged_id_shift: u32,
    /// Directory in the guest that receives `cert.pem`, `key.pem` and
    /// `ca.pem` before a post-renewal action that asks for them (every
    /// legacy `post_renewal_command` does: they start with
    /// `mv /tmp/cert.pem ...`).
    pub guest_drop_dir: PathBuf,
    /// Renew each certificate up to this many seconds before its
    /// threshold, by an amount fixed per certificate: certificates issued
    /// together do not renew together for ever (0: off).
    pub spread_secs: u64,
    /// How long delivery and the post-renewal action may wait for a
    /// guest that is not running before the run fails for it, seconds.
    pub pending_max_secs: u64,
    /// The old bash managers' cron file: a run warns while it is there.
    pub legacy_cron_file: PathBuf,
    /// node_exporter textfile each run writes (atomically) when its
    /// directory exists; `null`: none. Debian's prometheus-node-exporter
    /// reads `/var/lib/prometheus/node-exporter/*.prom`.
    pub metrics_file: Option<PathBuf>,
}

impl RenewalConfig {
    /// The least share of a certificate's life that must pass before it is
    /// due: a new certificate is never due within minutes of its issuance
    /// (a threshold at or above the lifetime, or "1%", would renew on
    /// every run).
    pub const MIN_SHARE_BEFORE_DUE: u32 = 10;

    /// Whether `threshold` leaves room in `lifetime`; the error says how
    /// much room there must be and what would do.
    pub fn threshold_room(&self) -> Result<(), String> {
        let life = self.lifetime.0.as_secs();
        let min_share = u64::from(Self::MIN_SHARE_BEFORE_DUE);
        match self.threshold {
            Threshold::Percent(p) if u64::from(p) < min_share => Err(format!(
                "{p}% makes a new certificate due after {} of its {} life: at least \
                 {min_share}% must pass before it is due, e.g. \"66%\"",
                human(life * u64::from(p) / 100),
                human(life)
            )),
            Threshold::Remaining(d) if d.as_secs() * 100 > life * (100 - min_share) => {
                Err(format!(
                    "'{}' before expiry leaves no room in renewal.lifetime '{}': a new \
                     certificate would be due {}; at most {} before expiry ({}% of the \
                     lifetime), e.g. \"{}\" or \"66%\"",
                    human(d.as_secs()),
                    human(life),
                    if d.as_secs() >= life {
                        "at once".to_string()
                    } else {
                        format!("after {}", human(life - d.as_secs()))
                    },
                    human(life * (100 - min_share) / 100),
                    100 - min_share,
                    human(life / 3)
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Seconds as a short human duration ("1h 30m").
fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Where Debian's prometheus-node-exporter reads textfile metrics.
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// The default metrics file of `phoenix-<job>`.
fn textfile(job: &str) -> PathBuf {
    Path::new(TEXTFILE_DIR).join(format!("phoenix-{job}.prom"))
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            lifetime: HumanDuration(Duration::from_secs(24 * 3600)),
            threshold: Threshold::Percent(66),
            lock_wait_secs: 0,
            command_timeout_secs: 120,
            unprivileged_id_shift: 100_000,
            guest_drop_dir: PathBuf::from("/tmp"),
            spread_secs: 0,
            pending_max_secs: 3 * 86400,
            legacy_cron_file: PathBuf::from("/etc/cron.d/phoenix-cert-renewal"),
            metrics_file: Some(textfile("renew")),
        }
    }
}

/// The `cluster` section (see `docs/cluster.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name as Proxmox spells it; default the short `uname`
    /// node name, as `PVE::INotify::nodename` and pmxcfs take it.
    pub node_name: Option<String>,
    /// How long `phoenix-renew` waits for a certificate's cluster-wide
    /// lock another node holds, seconds; 10 as pve-cluster's `cfs_lock`
    /// waits by default. (The swarm's and the deployment's cluster locks
    /// wait their own `lock_wait_secs`.)
    pub lock_wait_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_name: None,
            lock_wait_secs: 10,
        }
    }
}

/// The `swarm` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// The manager VM (default: the VM whose `swarm_role` is manager).
    pub manager_id: Option<u32>,
    /// Address the manager advertises (default: its `network_config.ip`).
    pub advertise_addr: Option<String>,
    /// Swarm port.
    pub port: u16,
    /// How long to wait for a cold VM's guest agent, seconds.
    pub agent_timeout_secs: u64,
    /// How long to wait for a pending/locked/erroring node, seconds.
    pub state_timeout_secs: u64,
    /// How long a second run waits for the lock before exit 75, seconds.
    pub lock_wait_secs: u64,
    /// Deadline of one docker command in a VM (`qm guest exec --timeout`),
    /// seconds. dockerd gives up a join after 20 s on its own.
    pub command_timeout_secs: u64,
    /// How long a service update that rotates secrets may take to
    /// complete (every task replaced and past its monitor period), seconds.
    pub update_timeout_secs: u64,
    /// node_exporter textfile each `ensure` writes (atomically) when its
    /// directory exists; `null`: none.
    pub metrics_file: Option<PathBuf>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            manager_id: None,
            advertise_addr: None,
            port: 2377,
            agent_timeout_secs: 120,
            state_timeout_secs: 60,
            lock_wait_secs: 0,
            command_timeout_secs: 60,
            update_timeout_secs: 300,
            metrics_file: Some(textfile("swarm")),
        }
    }
}

/// The `deploy` section: what `phoenix-deploy` deploys and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// `phoenix_stacks_config.json`; default `<phoenix_etc>/phoenix_stacks_config.json`.
    pub stacks_config: Option<PathBuf>,
    /// Which of each stack's `environments` is deployed.
    pub environment: String,
    /// The directory the stacks' `compose_file_path` and files' `source`
    /// are relative to.
    pub stacks_root: PathBuf,
    /// Per stack (by its key in `docker_stacks`): its name in the swarm.
    pub stacks: BTreeMap<String, StackOverride>,
    /// Networks the stacks expect to exist, created when missing.
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Swarm secrets the stacks expect, made from host files.
    pub secrets: BTreeMap<String, SecretSource>,
    /// How long a stack's services may take to converge (every task
    /// running, every update completed), seconds.
    pub converge_timeout_secs: u64,
    /// How long a second run waits for the `deploy` lock before exit 75.
    pub lock_wait_secs: u64,
    /// node_exporter textfile each run writes (atomically) when its
    /// directory exists; `null`: none.
    pub metrics_file: Option<PathBuf>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            stacks_config: None,
            environment: "production".into(),
            stacks_root: "/mnt/pve/quickOS".into(),
            stacks: BTreeMap::new(),
            networks: BTreeMap::new(),
            secrets: BTreeMap::new(),
            converge_timeout_secs: 300,
            lock_wait_secs: 0,
            metrics_file: Some(textfile("deploy")),
        }
    }
}

/// One stack's settings under `deploy.stacks`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackOverride {
    /// The stack's name in the swarm (default: its key).
    pub name: Option<String>,
}

/// A network under `deploy.networks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// `docker network create --driver`.
    pub driver: String,
    /// `--attachable`: standalone containers may join it too.
    pub attachable: bool,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            driver: "overlay".into(),
            attachable: true,
        }
    }
}

/// A secret under `deploy.secrets`: its content is a host file's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// The file (absolute; read with a bound, never echoed).
    pub file: PathBuf,
}

/// A duration written the human way (`"24h"`, `"90m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("'{s}' is not a duration like \"24h\" or \"90m\": {e}"))?;
        if d.is_zero() {
            return Err(format!("'{s}': a duration must be more than zero"));
        }
        Ok(HumanDuration(d))
    }
}

/// When a certificate is due for renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Threshold {
    /// Once this share (1-99 %) of the lifetime has passed.
    Percent(u8),
    /// Once less than this is left before expiry.
    Remaining(Duration),
}

impl TryFrom<String> for Threshold {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(n) if (1..=99).contains(&n) => Ok(Threshold::Percent(n)),
                _ => Err(format!("'{s}': a share of the lifetime is 1% to 99%")),
            };
        }
        HumanDuration::try_from(s.clone())
            .map(|d| Threshold::Remaining(d.0))
            .map_err(|_| {
                format!("'{s}' is neither a share like \"66%\" nor a duration like \"8h\"")
            })
    }
}

impl Config {
    /// The manifest path in effect.
    pub fn manifest_path(&self) -> PathBuf {
        self.manifest
            .clone()
            .unwrap_or_else(|| self.phoenix_etc.join("certificate-manifest.json"))
    }

    /// `phoenix_vm_configs.json`.
    pub fn vm_configs_path(&self) -> PathBuf {
        self.phoenix_etc.join("phoenix_vm_configs.json")
    }

    /// `phoenix_stacks_config.json`.
    pub fn stacks_config_path(&self) -> PathBuf {
        self.deploy
            .stacks_config
            .clone()
            .unwrap_or_else(|| self.phoenix_etc.join("phoenix_stacks_config.json"))
    }

    /// `phoenix_lxc_configs.json`.
    pub fn lxc_configs_path(&self) -> PathBuf {
        self.phoenix_etc.join("phoenix_lxc_configs.json")
    }

    /// Load from `explicit` (must exist), else `$PHOENIX_CONFIG` (must
    /// exist), else [`DEFAULT_PATH`] if present, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let env = std::env::var_os("PHOENIX_CONFIG").filter(|v| !v.is_empty());
        match explicit.map(Path::to_path_buf).or(env.map(PathBuf::from)) {
            Some(path) => Self::load_file(&path),
            None if Path::new(DEFAULT_PATH).exists() => Self::load_file(Path::new(DEFAULT_PATH)),
            None => Ok(Config::default()),
        }
    }

    /// Load one file, which must exist.
    pub fn load_file(path: &Path) -> Result<Config> {
        let config: Config = read_json(path, "configuration")?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, why: &str| {
            Err(err(
                Kind::Config,
                format!("configuration '{}': {key}: {why}", path.display()),
            ))
        };
        if !self.ca.url.starts_with("https://") {
            return bad("ca.url", "must start with https://");
        }
        if self.ca.wait_timeout_secs == 0 {
            return bad("ca.wait_timeout_secs", "must be at least 1");
        }
        if self.swarm.command_timeout_secs == 0 {
            return bad("swarm.command_timeout_secs", "must be at least 1");
        }
        if self.swarm.update_timeout_secs == 0 {
            return bad("swarm.update_timeout_secs", "must be at least 1");
        }
        if self.deploy.converge_timeout_secs == 0 {
            return bad("deploy.converge_timeout_secs", "must be at least 1");
        }
        if !self.deploy.stacks_root.is_absolute() {
            return bad("deploy.stacks_root", "must be an absolute path");
        }
        if self.deploy.environment.is_empty() {
            return bad("deploy.environment", "is empty");
        }
        for (name, s) in &self.deploy.secrets {
            if !s.file.is_absolute() {
                return bad(
                    &format!("deploy.secrets.{name}.file"),
                    "must be an absolute path",
                );
            }
        }
        if let Err(why) = self.renewal.threshold_room() {
            return bad("renewal.threshold", &why);
        }
        if !self.renewal.guest_drop_dir.is_absolute() {
            return bad("renewal.guest_drop_dir", "must be an absolute path");
        }
        if let Some(n) = &self.cluster.node_name {
            if let Err(why) = crate::cluster::check_node_name(n) {
                return bad("cluster.node_name", &why);
            }
        }
        if !self.pve_dir.is_absolute() {
            return bad("pve_dir", "must be an absolute path");
        }
        for (i, p) in self.required_mounts.iter().enumerate() {
            if !p.is_absolute() {
                return bad(&format!("required_mounts[{i}]"), "must be an absolute path");
            }
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if m.name
                .as_deref()
                .is_some_and(|n| n.chars().any(char::is_control))
            {
                return bad(&format!("mounts[{i}].name"), "holds a control character");
            }
            if !m.mount_point.is_absolute() {
                return bad(
                    &format!("mounts[{i}].mount_point"),
                    "must be an absolute path",
                );
            }
            match m.kind {
                MountType::Nfs if m.server.is_none() || m.path.is_none() => {
                    return bad(
                        &format!("mounts[{i}]"),
                        "an nfs mount needs \"server\" and \"path\"",
                    );
                }
                MountType::Bind if m.path.is_none() => {
                    return bad(&format!("mounts[{i}]"), "a bind mount needs \"path\"");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Read a JSON document strictly: a missing or unreadable file, bad JSON or
/// a value of the wrong shape is a [`Kind::Config`] error naming the file,
/// the key path and line:column. `what` names the document in messages.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    parse_json(&read_json_bytes(path, what)?, path, what)
}

/// The bytes of the JSON document [`read_json`] reads, bounded; a missing
/// or unreadable file is its [`Kind::Config`] error.
pub fn read_json_bytes(path: &Path, what: &str) -> Result<Vec<u8>> {
    fsutil::read_limited(path, JSON_LIMIT).map_err(|e| {
        err(
            Kind::Config,
            format!("cannot read {what} '{}': {e}", path.display()),
        )
    })
}

/// [`read_json`] on bytes already read from `path`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    what: &str,
) -> Result<T> {
    // Straight first: tracking the key path wraps every value of the
    // document (the Phoenix configs: 57 KB in every run of phoenix-hook),
    // and only an error needs it. The same bytes then fail the same way.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        let place = if at == "." || at.is_empty() {
            String::new()
        } else {
            format!("{at}: ")
        };
        err(
            Kind::Config,
            format!("{what} '{}': {place}{inner}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    fn load_str(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("toolkit.json");
        std::fs::write(&p, text).unwrap();
        Config::load_file(&p)
    }

    #[test]
    fn empty_object_gives_phoenix_defaults() {
        let c = load_str("{}").unwrap();
        assert_eq!(c.ca.guest_id, 103);
        assert_eq!(c.lock_dir, PathBuf::from("/run/lock/phoenix"));
        assert_eq!(
            c.ca.host_paths().ready,
            PathBuf::from("/mnt/pve/quickOS/lxc-persistent-data/103/ssl/ca.ready")
        );
        assert_eq!(
            c.ca.guest_paths().fingerprint,
            PathBuf::from("/etc/step-ca/ssl/root_ca.fingerprint")
        );
        assert_eq!(
            c.manifest_path(),
            PathBuf::from("/usr/local/phoenix_hypervisor/etc/certificate-manifest.json")
        );
        assert_eq!(c.renewal.threshold, Threshold::Percent(66));
    }

    #[test]
    fn unknown_key_names_path_and_position() {
        let e = load_str("{\n  \"ca\": {\n    \"guest_idd\": 5\n  }\n}").unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let msg = e.to_string();
        assert!(msg.contains("toolkit.json"), "{msg}");
        assert!(msg.contains("ca.guest_idd"), "{msg}");
        assert!(msg.contains("line 3 column"), "{msg}");
    }

    #[test]
    fn wrong_type_names_path_and_position() {
        let e = load_str("{\"ca\": {\"wait_timeout_secs\": \"soon\"}}").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ca.wait_timeout_secs"), "{msg}");
        assert!(msg.contains("line 1 column"), "{msg}");
    }

    #[test]
    fn bad_json_and_missing_file_are_config_errors() {
        let e = load_str("{\"ca\": ").unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = Config::load_file(Path::new("/nonexistent/toolkit.json")).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("/nonexistent/toolkit.json"));
    }

    #[test]
    fn durations_and_thresholds_are_checked() {
        let c = load_str(r#"{"renewal": {"lifetime": "2h", "threshold": "30m"}}"#).unwrap();
        assert_eq!(c.renewal.lifetime.0, Duration::from_secs(7200));
        assert_eq!(
            c.renewal.threshold,
            Threshold::Remaining(Duration::from_secs(1800))
        );
        let e = load_str(r#"{"renewal": {"threshold": "150%"}}"#).unwrap_err();
        assert!(e.to_string().contains("renewal.threshold"), "{e}");
        // No room: due at once, or within minutes of issuance.
        for (cfg, says) in [
            (
                r#"{"renewal": {"lifetime": "1h", "threshold": "2h"}}"#,
                "due at once",
            ),
            (
                r#"{"renewal": {"lifetime": "1h", "threshold": "1h"}}"#,
                "due at once",
            ),
            (
                r#"{"renewal": {"lifetime": "1h", "threshold": "58m"}}"#,
                "after 2m",
            ),
            (
                r#"{"renewal": {"lifetime": "24h", "threshold": "1%"}}"#,
                "after 14m 24s",
            ),
        ] {
            let e = load_str(cfg).unwrap_err().to_string();
            assert!(
                e.contains("renewal.threshold") && e.contains(says),
                "{cfg}: {e}"
            );
        }
        let e = load_str(r#"{"renewal": {"lifetime": "1h", "threshold": "2h"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 54m before expiry"), "{e}");
        // The edges that leave room are taken.
        load_str(r#"{"renewal": {"lifetime": "1h", "threshold": "54m"}}"#).unwrap();
        load_str(r#"{"renewal": {"lifetime": "1h", "threshold": "10%"}}"#).unwrap();
        let e = load_str(r#"{"renewal": {"lifetime": "soon"}}"#).unwrap_err();
        assert!(e.to_string().contains("renewal.lifetime"), "{e}");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let e = load_str(r#"{"ca": {"url": "http://x"}}"#).unwrap_err();
        assert!(e.to_string().contains("ca.url"), "{e}");
        let e = load_str(r#"{"mounts": [{"type": "nfs", "mount_point": "/x"}]}"#).unwrap_err();
        assert!(e.to_string().contains("mounts[0]"), "{e}");
    }

    #[test]
    fn storage_root_defaults_to_mnt_pve() {
        assert_eq!(
            load_str("{}").unwrap().storage_root,
            PathBuf::from("/mnt/pve")
        );
        let c = load_str(r#"{"storage_root": "/srv/pve"}"#).unwrap();
        assert_eq!(c.storage_root, PathBuf::from("/srv/pve"));
    }

    #[test]
    fn guests_are_keyed_by_vmid() {
        let c = load_str(r#"{"guests": {"101": {"gate_on_ca": true}}}"#).unwrap();
        assert!(c.guests[&101].gate_on_ca);
        let e = load_str(r#"{"guests": {"web": {}}}"#).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
    }

    #[test]
    fn swarm_command_timeout_has_a_default_and_a_floor() {
        assert_eq!(load_str("{}").unwrap().swarm.command_timeout_secs, 60);
        let c = load_str(r#"{"swarm": {"command_timeout_secs": 5}}"#).unwrap();
        assert_eq!(c.swarm.command_timeout_secs, 5);
        let e = load_str(r#"{"swarm": {"command_timeout_secs": 0}}"#).unwrap_err();
        assert!(e.to_string().contains("swarm.command_timeout_secs"), "{e}");
    }

    #[test]
    fn guest_drop_dir_defaults_to_tmp_and_must_be_absolute() {
        assert_eq!(
            load_str("{}").unwrap().renewal.guest_drop_dir,
            PathBuf::from("/tmp")
        );
        let c = load_str(r#"{"renewal": {"guest_drop_dir": "/run/phoenix"}}"#).unwrap();
        assert_eq!(c.renewal.guest_drop_dir, PathBuf::from("/run/phoenix"));
        let e = load_str(r#"{"renewal": {"guest_drop_dir": "tmp"}}"#).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("renewal.guest_drop_dir"), "{e}");
    }
}
