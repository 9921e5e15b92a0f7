//! Where each guest lives: pmxcfs's `.vmlist`, read with a bound.
//!
//! pmxcfs serves `<pve_dir>/.vmlist` from its in-memory guest list
//! (pve-cluster `src/pmxcfs/status.c` `cfs_create_vmlist_msg`, registered
//! in `src/pmxcfs/pmxcfs.c` `create_dot_vmlist_cb`):
//!
//! ```text
//! {
//! "version": 7,
//! "ids": {
//! "101": { "node": "pve1", "type": "lxc", "version": 3 },
//! "1001": { "node": "pve2", "type": "qemu", "version": 5 }}
//!
//! }
//! ```
//!
//! `ids` is absent when there is no guest; `type` is `qemu`, `lxc` (or
//! `openvz`, `unknown` from old or odd entries: kept, never matched as a
//! VM or a container). The same list `PVE::Cluster::get_vmlist`
//! (`src/PVE/Cluster.pm`) gives every Proxmox tool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::exit::{err, Kind};
use crate::fsutil;
use crate::phoenix::GuestType;

/// Largest `.vmlist` read: about 60 bytes a guest, so room for far more
/// guests than a cluster holds.
pub const VMLIST_LIMIT: u64 = 4 << 20;

/// A guest's line of `.vmlist`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmEntry {
    /// The node it is on.
    pub node: String,
    /// `qemu`, `lxc` (pmxcfs's `vminfo_type_to_string`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The version of its config in pmxcfs.
    #[serde(default)]
    pub version: u64,
}

impl VmEntry {
    /// The guest type, when it is a VM or a container.
    pub fn guest_type(&self) -> Option<GuestType> {
        match self.kind.as_str() {
            "qemu" => Some(GuestType::Vm),
            "lxc" => Some(GuestType::Lxc),
            _ => None,
        }
    }

    /// Its config file as Proxmox names it in messages
    /// (`nodes/NODE/qemu-server/ID.conf`, pve-guest-common
    /// `src/PVE/AbstractConfig.pm` `load_config`).
    pub fn config_path(&self, id: u32) -> String {
        let dir = match self.kind.as_str() {
            "qemu" => "qemu-server",
            other => other,
        };
        format!("nodes/{}/{dir}/{id}.conf", self.node)
    }
}

/// The whole list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VmList {
    /// pmxcfs's version of the list (bumped on every change).
    #[serde(default)]
    pub version: u64,
    /// VMID (as text) to where it is.
    #[serde(default)]
    pub ids: BTreeMap<String, VmEntry>,
}

impl VmList {
    /// Where guest `id` is, if on any node.
    pub fn get(&self, id: u32) -> Option<&VmEntry> {
        self.ids.get(&id.to_string())
    }

    /// Parse the text of a `.vmlist`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<VmList> {
        let list: VmList = crate::config::parse_json(bytes, path, "pmxcfs guest list")?;
        for (id, e) in &list.ids {
            if id.parse::<u32>().is_err() {
                return Err(err(
                    Kind::Failed,
                    format!(
                        "pmxcfs guest list '{}': '{id}' is not a VMID",
                        path.display()
                    ),
                ));
            }
            if super::check_node_name(&e.node).is_err() {
                return Err(err(
                    Kind::Failed,
                    format!(
                        "pmxcfs guest list '{}': guest {id} is on '{}', not a node name",
                        path.display(),
                        e.node.escape_debug()
                    ),
                ));
            }
        }
        Ok(list)
    }
}

/// `<pve_dir>/.vmlist`.
pub fn path_in(pve_dir: &Path) -> PathBuf {
    pve_dir.join(".vmlist")
}

/// Read `<pve_dir>/.vmlist` (bounded, never through a symbolic link):
/// `None` when there is none (a host without pmxcfs, as before the
/// cluster support). Unreadable or malformed is an error: which node a
/// guest is on cannot be told then, and guessing would renew another
/// node's certificate or none at all.
pub fn read(pve_dir: &Path) -> Result<Option<VmList>> {
    let path = path_in(pve_dir);
    match fsutil::read_limited(&path, VMLIST_LIMIT) {
        Ok(bytes) => VmList::parse(&bytes, &path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(
            Kind::TempFail,
            format!(
                "cannot read the pmxcfs guest list '{}': {e}",
                path.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pmxcfs's exact output, as `cfs_create_vmlist_msg` prints it.
    const PMXCFS: &str = "{\n\"version\": 7,\n\"ids\": {\n\
        \"101\": { \"node\": \"pve1\", \"type\": \"lxc\", \"version\": 3 },\n\
        \"1001\": { \"node\": \"pve2\", \"type\": \"qemu\", \"version\": 5 }}\n\n}\n";

    #[test]
    fn reads_pmxcfs_output() {
        let l = VmList::parse(PMXCFS.as_bytes(), Path::new("/etc/pve/.vmlist")).unwrap();
        assert_eq!(l.version, 7);
        let ct = l.get(101).unwrap();
        assert_eq!(
            (ct.node.as_str(), ct.guest_type()),
            ("pve1", Some(GuestType::Lxc))
        );
        assert_eq!(ct.config_path(101), "nodes/pve1/lxc/101.conf");
        let vm = l.get(1001).unwrap();
        assert_eq!(vm.guest_type(), Some(GuestType::Vm));
        assert_eq!(vm.config_path(1001), "nodes/pve2/qemu-server/1001.conf");
        assert!(l.get(102).is_none());
    }

    #[test]
    fn no_guest_means_no_ids_key() {
        let l = VmList::parse(b"{\n\"version\": 1\n\n}\n", Path::new("x")).unwrap();
        assert!(l.ids.is_empty());
    }

    #[test]
    fn odd_entries_are_refused_by_name() {
        let e = VmList::parse(
            br#"{"version": 1, "ids": {"web": {"node": "a", "type": "lxc"}}}"#,
            Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("'web' is not a VMID"), "{e}");
        let e = VmList::parse(
            br#"{"version": 1, "ids": {"5": {"node": "../x", "type": "lxc"}}}"#,
            Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a node name"), "{e}");
    }

    #[test]
    fn missing_file_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        std::fs::write(d.path().join(".vmlist"), PMXCFS).unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap().ids.len(), 2);
    }
}
