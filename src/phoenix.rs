//! Readers for the three Phoenix configuration files, read as they are:
//! `phoenix_lxc_configs.json`, `phoenix_vm_configs.json` and
//! `certificate-manifest.json`.
//!
//! Tolerant of every field the toolkit does not use (the files carry GPU,
//! firewall, vLLM settings and more), strict on the ones it does: a wrong
//! type or a missing required field is a configuration error (exit 2) that
//! names the file, the key path (`vms[1].swarm_role`, `[3].sans[0]`) and
//! line:column.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::read_json;

/// `phoenix_lxc_configs.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct LxcConfigs {
    /// Containers by VMID.
    pub lxc_configs: BTreeMap<u32, Lxc>,
}

/// One container of `lxc_configs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Lxc {
    /// Its name.
    pub name: String,
    /// Unprivileged (ids shifted on the host). Missing means privileged.
    #[serde(default)]
    pub unprivileged: Option<bool>,
    /// Bind mounts from the host.
    #[serde(default)]
    pub mount_points: Vec<LxcMountPoint>,
    /// Network settings.
    #[serde(default)]
    pub network_config: Option<NetworkConfig>,
}

/// A bind mount of a container.
#[derive(Debug, Clone, Deserialize)]
pub struct LxcMountPoint {
    /// Source on the host.
    pub host_path: PathBuf,
    /// Target in the container.
    pub container_path: PathBuf,
}

/// A guest's network settings (only the address is used).
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkConfig {
    /// `10.0.0.111/24`, or `dhcp`.
    #[serde(default)]
    pub ip: Option<String>,
}

impl NetworkConfig {
    /// The static address without its prefix length; `None` for dhcp or
    /// anything that is not an IP address.
    pub fn address(&self) -> Option<IpAddr> {
        let ip = self.ip.as_deref()?;
        ip.split('/').next()?.trim().parse().ok()
    }
}

/// `phoenix_vm_configs.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VmConfigs {
    /// The VMs.
    pub vms: Vec<Vm>,
}

/// Swarm role of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwarmRole {
    /// Swarm manager.
    Manager,
    /// Swarm worker.
    Worker,
}

/// One VM of `vms`.
#[derive(Debug, Clone, Deserialize)]
pub struct Vm {
    /// VMID.
    pub vmid: u32,
    /// Name.
    pub name: String,
    /// A template, not a running guest.
    #[serde(default)]
    pub is_template: bool,
    /// Role in the swarm, if any.
    #[serde(default)]
    pub swarm_role: Option<SwarmRole>,
    /// Network settings.
    #[serde(default)]
    pub network_config: Option<NetworkConfig>,
    /// `key=value` labels for its swarm node (`null` means none).
    #[serde(default)]
    pub node_labels: Option<Vec<String>>,
    /// Volumes the VM mounts itself.
    #[serde(default)]
    pub volumes: Vec<VmVolume>,
    /// Keys of `phoenix_stacks_config.json`'s `docker_stacks` deployed on
    /// this VM's node (`null` means none).
    #[serde(default)]
    pub docker_stacks: Option<Vec<String>>,
}

/// `phoenix_stacks_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct StacksConfig {
    /// The stacks, by key.
    pub docker_stacks: BTreeMap<String, StackDef>,
}

/// One stack of `docker_stacks`.
#[derive(Debug, Clone, Deserialize)]
pub struct StackDef {
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The compose file, relative to `deploy.stacks_root`.
    pub compose_file_path: PathBuf,
    /// Settings per environment (`production`, `testing`, ...).
    #[serde(default)]
    pub environments: BTreeMap<String, StackEnvironment>,
}

/// A stack's settings in one environment.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StackEnvironment {
    /// Environment variables for every service.
    #[serde(default)]
    pub variables: Vec<StackVariable>,
    /// Host files put into every service.
    #[serde(default)]
    pub files: Vec<StackFile>,
    /// Per service (its key in the compose file).
    #[serde(default)]
    pub services: BTreeMap<String, StackService>,
}

/// One of `variables`.
#[derive(Debug, Clone, Deserialize)]
pub struct StackVariable {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// One of `files`.
#[derive(Debug, Clone, Deserialize)]
pub struct StackFile {
    /// The host file, relative to `deploy.stacks_root`.
    pub source: PathBuf,
    /// Where it appears in each container (absolute).
    pub destination_in_container: String,
}

/// One service of an environment's `services`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StackService {
    /// `key=value` labels for Traefik, put into `deploy.labels`.
    #[serde(default)]
    pub traefik_labels: Vec<String>,
}

/// A volume a VM mounts itself.
#[derive(Debug, Clone, Deserialize)]
pub struct VmVolume {
    /// `nfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// NFS server.
    #[serde(default)]
    pub server: Option<String>,
    /// Export path.
    #[serde(default)]
    pub path: Option<String>,
    /// Where it is mounted in the VM.
    pub mount_point: PathBuf,
}

/// How a guest is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    /// A container (`pct`).
    Lxc,
    /// A VM (`qm`).
    Vm,
}

/// The structured post-renewal action: a command run in the guest, or
/// Docker Swarm secrets made from the certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRenewal {
    /// argv run inside the guest.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// Put the new `cert.pem`, `key.pem` (and with `include_ca`, `ca.pem`)
    /// into the guest's `renewal.guest_drop_dir` before `run` (default:
    /// no; the legacy `post_renewal_command` always gets them).
    #[serde(default)]
    pub deliver: bool,
    /// Swarm secrets to rotate on the swarm manager: the logical secret
    /// name of each part of the pair.
    #[serde(default)]
    pub swarm_secrets: Option<SwarmSecretNames>,
    /// Services that use those secrets, rolled once each onto the new
    /// versions.
    #[serde(default)]
    pub services: Vec<String>,
}

/// The logical swarm secret names of `post_renewal.swarm_secrets`: the
/// file name a service sees under `/run/secrets/`, and the name the old
/// bash gave the secret itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmSecretNames {
    /// The certificate (the file at `cert_path`).
    #[serde(default)]
    pub cert: Option<String>,
    /// The private key (the file at `key_path`).
    #[serde(default)]
    pub key: Option<String>,
    /// The CA chain (`ca.pem` beside the certificate; needs `include_ca`).
    #[serde(default)]
    pub ca: Option<String>,
}

/// One entry of `certificate-manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    /// Subject, also the entry's name.
    pub common_name: String,
    /// Subject alternative names (DNS, wildcard, IP); missing means none.
    #[serde(default)]
    pub sans: Option<Vec<String>>,
    /// Guest the certificate serves.
    pub guest_id: u32,
    /// lxc or vm.
    pub guest_type: GuestType,
    /// Certificate file on the host.
    pub cert_path: PathBuf,
    /// Key file on the host.
    pub key_path: PathBuf,
    /// `user:group` of the files (names or numbers).
    #[serde(default)]
    pub owner: Option<String>,
    /// Also place the CA chain.
    #[serde(default)]
    pub include_ca: bool,
    /// `server` (default) or `client`.
    #[serde(default)]
    pub cert_type: Option<String>,
    /// Legacy post-renewal shell command (deprecated).
    #[serde(default)]
    pub post_renewal_command: Option<String>,
    /// Structured post-renewal action.
    #[serde(default)]
    pub post_renewal: Option<PostRenewal>,
}

/// Read `phoenix_lxc_configs.json`.
pub fn read_lxc_configs(path: &Path) -> Result<LxcConfigs> {
    read_json(path, "LXC configuration")
}

/// Container `vmid` of `phoenix_lxc_configs.json` (`None`: not there),
/// as [`read_lxc_configs`] would give it, without building the others:
/// phoenix-hook runs for one guest at a time, at every start. The other
/// containers' entries only have to be JSON; their fields are not looked
/// at (a mistake in one of them is not this guest's to refuse a start
/// for). An error is reported as [`read_lxc_configs`] reports it.
pub fn read_lxc_config(path: &Path, vmid: u32) -> Result<Option<Lxc>> {
    read_field::<LxcConfigs, _, _>(
        path,
        "LXC configuration",
        "lxc_configs",
        OneOf::<Lxc>::new(vmid),
    )
}

/// The name of VM `vmid` in `phoenix_vm_configs.json` (`None`: not
/// there; the first one, if several have that VMID), reading the other
/// VMs as [`read_lxc_config`] reads the other containers.
pub fn read_vm_name(path: &Path, vmid: u32) -> Result<Option<String>> {
    /// The two fields looked at, of every VM.
    #[derive(Deserialize)]
    struct Named {
        vmid: u32,
        name: String,
    }
    let vms = read_field::<VmConfigs, _, _>(
        path,
        "VM configuration",
        "vms",
        std::marker::PhantomData::<Vec<Named>>,
    )?;
    Ok(vms.into_iter().find(|v| v.vmid == vmid).map(|v| v.name))
}

/// The one field `field` of the JSON document `path` (`what` in
/// messages), read with `seed`, the rest skipped. An error is the one the
/// whole document's reader (`Whole`, as [`read_json`] reads it) gives,
/// which names the key path and line:column: the targeted read fails
/// only where that one would; its own error if that one passes.
fn read_field<Whole, S, V>(path: &Path, what: &str, field: &'static str, seed: S) -> Result<V>
where
    Whole: serde::de::DeserializeOwned,
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let bytes = crate::config::read_json_bytes(path, what)?;
    let top = Top { field, seed };
    top.deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
        .map_err(
            |e| match crate::config::parse_json::<Whole>(&bytes, path, what) {
                Err(strict) => strict,
                Ok(_) => crate::exit::err(
                    crate::exit::Kind::Config,
                    format!("{what} '{}': {e}", path.display()),
                ),
            },
        )
}

/// A document's one field `field`, read with `seed`; the other fields are
/// only skipped. A missing `field` is serde's "missing field" error.
struct Top<S> {
    field: &'static str,
    seed: S,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Top<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Top<S> {
    type Value = S::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an object with \"{}\"", self.field)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<S::Value, A::Error> {
        let mut seed = Some(self.seed);
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match (key == self.field, seed.take()) {
                (true, Some(s)) => found = Some(map.next_value_seed(s)?),
                (true, None) => return Err(de::Error::duplicate_field(self.field)),
                (false, s) => {
                    seed = s;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        found.ok_or_else(|| de::Error::missing_field(self.field))
    }
}

/// The value of key `id` of a map keyed by VMID, the others skipped (the
/// last one wins, as in a `BTreeMap`); every key must be a VMID.
struct OneOf<T> {
    id: u32,
    of: std::marker::PhantomData<T>,
}

impl<T> OneOf<T> {
    fn new(id: u32) -> Self {
        OneOf {
            id,
            of: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for OneOf<T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOf<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map keyed by VMID")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<u32>()? {
            if key == self.id {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Read `phoenix_vm_configs.json`.
pub fn read_vm_configs(path: &Path) -> Result<VmConfigs> {
    read_json(path, "VM configuration")
}

/// Read `phoenix_stacks_config.json`.
pub fn read_stacks_config(path: &Path) -> Result<StacksConfig> {
    read_json(path, "stacks configuration")
}

/// Read `certificate-manifest.json`.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    read_json(path, "certificate manifest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{kind_of, Kind};

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn lxc_reader_ignores_unused_fields() {
        let (_d, p) = write(
            "lxc.json",
            r#"{"nvidia_driver_version": "1", "lxc_configs": {"103": {"name": "Step-CA",
               "unprivileged": true, "gpu_assignment": "none",
               "mount_points": [{"host_path": "/mnt/pve/quickOS/x", "container_path": "/etc/step-ca/ssl"}]},
               "101": {"name": "Nginx"}}}"#,
        );
        let c = read_lxc_configs(&p).unwrap();
        assert_eq!(c.lxc_configs[&103].mount_points.len(), 1);
        assert!(c.lxc_configs[&101].mount_points.is_empty());
    }

    #[test]
    fn vm_reader_is_strict_on_used_fields() {
        let (_d, p) = write(
            "vm.json",
            r#"{"vms": [{"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
                "network_config": {"ip": "10.0.0.111/24"}, "node_labels": null},
               {"vmid": 1002, "name": "w", "swarm_role": "boss"}]}"#,
        );
        let e = read_vm_configs(&p).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let msg = e.to_string();
        assert!(msg.contains("vms[1].swarm_role"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn one_container_is_read_as_the_whole_file_gives_it() {
        let (_d, p) = write(
            "lxc.json",
            r#"{"nvidia_driver_version": "1", "lxc_configs": {"103": {"name": "Step-CA",
               "unprivileged": true, "gpu_assignment": "none",
               "mount_points": [{"host_path": "/mnt/pve/quickOS/x", "container_path": "/etc/step-ca/ssl"}]},
               "101": {"name": "Nginx", "mount_points": [{"host_path": "/a", "container_path": "/b"}]},
               "101": {"name": "Nginx again"}}}"#,
        );
        let all = read_lxc_configs(&p).unwrap();
        for id in [101, 103] {
            let one = read_lxc_config(&p, id).unwrap().unwrap();
            assert_eq!(
                format!("{one:?}"),
                format!("{:?}", all.lxc_configs[&id]),
                "{id}"
            );
        }
        assert!(read_lxc_config(&p, 104).unwrap().is_none());
    }

    #[test]
    fn one_container_does_not_answer_for_the_others() {
        // Another container's mistake: not this one's to refuse.
        let (_d, p) = write(
            "lxc.json",
            r#"{"lxc_configs": {"103": {"name": 7}, "101": {"name": "Nginx"}}}"#,
        );
        assert_eq!(read_lxc_config(&p, 101).unwrap().unwrap().name, "Nginx");
        // Its own is refused as the whole file's reader refuses it.
        let e = read_lxc_config(&p, 103).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let msg = e.to_string();
        assert!(msg.contains("lxc_configs.103.name"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        // Not JSON, a key that is no VMID, no lxc_configs at all: refused
        // for every container, by the same messages.
        for (text, says) in [
            (
                r#"{"lxc_configs": {"101": {"name": "x"},}}"#,
                "trailing comma",
            ),
            (
                r#"{"lxc_configs": {"ct101": {"name": "x"}}}"#,
                "lxc_configs",
            ),
            (r#"{"vms": []}"#, "missing field `lxc_configs`"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = read_lxc_config(&p, 101).unwrap_err();
            let full = read_lxc_configs(&p).unwrap_err();
            assert_eq!(kind_of(&e), Kind::Config, "{text}");
            assert_eq!(e.to_string(), full.to_string(), "{text}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn one_vm_name_is_read_as_the_whole_file_gives_it() {
        let (_d, p) = write(
            "vm.json",
            r#"{"vms": [{"vmid": 1001, "name": "Portainer", "swarm_role": "boss"},
               {"vmid": 1002, "name": "w"}, {"vmid": 1002, "name": "second"}]}"#,
        );
        assert_eq!(read_vm_name(&p, 1002).unwrap().as_deref(), Some("w"));
        assert_eq!(
            read_vm_name(&p, 1001).unwrap().as_deref(),
            Some("Portainer")
        );
        assert_eq!(read_vm_name(&p, 1003).unwrap(), None);
        std::fs::write(&p, r#"{"vms": [{"vmid": "1001", "name": "P"}]}"#).unwrap();
        let e = read_vm_name(&p, 1001).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        assert!(e.to_string().contains("vms[0].vmid"), "{e}");
    }

    #[test]
    fn address_strips_prefix_and_refuses_dhcp() {
        let n = |ip: &str| NetworkConfig {
            ip: Some(ip.into()),
        };
        assert_eq!(
            n("10.0.0.111/24").address(),
            Some("10.0.0.111".parse().unwrap())
        );
        assert_eq!(n("dhcp").address(), None);
    }

    #[test]
    fn manifest_errors_name_entry_and_field() {
        let (_d, p) = write(
            "m.json",
            r#"[{"common_name": "a", "guest_id": 1, "guest_type": "lxc", "cert_path": "/a", "key_path": "/b"},
                {"common_name": "b", "guest_id": "x", "guest_type": "lxc", "cert_path": "/a", "key_path": "/b"}]"#,
        );
        let msg = read_manifest(&p).unwrap_err().to_string();
        assert!(msg.contains("[1].guest_id"), "{msg}");
    }
}
