//! The hookscript in a cluster: on storage every node sees, or a guest
//! migrated to another node does not start there.
//!
//! Proxmox runs a guest's `hookscript: STORAGE:snippets/NAME` from the
//! path that volume has on the node starting it, and refuses the start
//! when it is not there: "hookscript error for ID on pre-start: script
//! 'VOLID' does not exist" (pve-guest-common src/PVE/GuestHelpers.pm
//! `check_hookscript`, `exec_hookscript` with `stop_on_error` at
//! pre-start). A storage is the same on every node when pve-storage says
//! `shared`: its `shared` flag, or a type pve-storage marks shared
//! itself (src/PVE/Storage/Plugin.pm `@SHARED_STORAGE`, applied in
//! `parse_config`). `local` is always a directory storage of its node's
//! own (`/var/lib/vz`, forced by the same `parse_config`).
//!
//! A host is in a cluster when `<pve_dir>/corosync.conf` exists
//! ([`crate::cluster`]). The CA's pre-start warns there when its own
//! hookscript is on a storage that is not shared (a warning only: the
//! start goes on).

use std::path::Path;

use super::onboot;
use super::storage::cfg::{self, STORAGE_CFG_LIMIT};
use crate::fsutil;

/// pve-storage src/PVE/Storage/Plugin.pm `@SHARED_STORAGE`: types that
/// are shared whatever their `shared` flag says.
pub const SHARED_TYPES: &[&str] = &[
    "iscsi",
    "nfs",
    "cifs",
    "rbd",
    "cephfs",
    "iscsidirect",
    "zfs",
    "drbd",
    "pbs",
];

/// The `hookscript:` value of a guest config's current section (the
/// lines before the first `[snapshot]` header).
pub fn hookscript_of(conf: &str) -> Option<String> {
    onboot::main_section(conf)
        .find(|(key, _)| *key == "hookscript")
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty())
}

/// Where a storage's files are, as far as the hookscript goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The same on every node.
    Shared,
    /// This node's own: the storage's type.
    NodeLocal(String),
    /// Not in `storage.cfg` (nor `local`).
    Undefined,
}

/// Whether storage `id` is shared, as `storage.cfg` (its `text`; `None`
/// when there is none) defines it.
pub fn reach(text: Option<&str>, id: &str) -> Reach {
    let sections = text.map(|t| cfg::parse(t).0).unwrap_or_default();
    match sections.iter().find(|s| s.id == id) {
        // pve-storage forces `local` to be the node's own directory.
        _ if id == "local" => Reach::NodeLocal("dir".into()),
        Some(s) if s.flag("shared") || SHARED_TYPES.contains(&s.kind.as_str()) => Reach::Shared,
        Some(s) => Reach::NodeLocal(s.kind.clone()),
        None => Reach::Undefined,
    }
}

/// The warning for guest `vmid` (its config in `<pve_dir>/lxc` or
/// `<pve_dir>/qemu-server`, this node's), if this host is in a cluster and
/// the guest's hookscript is on a storage the other nodes do not share.
pub fn hookscript_warning(pve_dir: &Path, vmid: u32) -> Option<String> {
    if !pve_dir.join("corosync.conf").is_file() {
        return None;
    }
    let (conf, tool) = [("lxc", "pct"), ("qemu-server", "qm")]
        .iter()
        .find_map(|(sub, tool)| {
            let path = pve_dir.join(sub).join(format!("{vmid}.conf"));
            Some((onboot::read_conf(&path).ok()?, *tool))
        })?;
    let volid = hookscript_of(&conf)?;
    let storage = volid.split_once(':').map(|(s, _)| s).unwrap_or(&volid);
    let cfg_path = pve_dir.join("storage.cfg");
    let text = fsutil::read_limited(&cfg_path, STORAGE_CFG_LIMIT)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let why = match reach(text.as_deref(), storage) {
        Reach::Shared => return None,
        Reach::NodeLocal(kind) => format!(
            "storage '{storage}' ({kind}, not shared) is this node's own: each node has its \
             own copy or none"
        ),
        Reach::Undefined => format!(
            "storage '{storage}' is not defined in '{}'",
            cfg_path.display()
        ),
    };
    let name = volid
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or("phoenix-hook");
    Some(format!(
        "hookscript: this node is in a cluster ('{}' exists) and guest {vmid}'s hookscript \
         {volid} is on storage every node does not see: {why}. Migrated to a node without it, \
         the guest does not start there (\"hookscript error for {vmid} on pre-start: script \
         '{volid}' does not exist\"). Install it on a storage with the snippets content shared \
         by all nodes and set it: `{tool} set {vmid} --hookscript SHARED:snippets/{name}` \
         (README, Install)",
        pve_dir.join("corosync.conf").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_sections_hookscript_is_read() {
        let conf = "arch: amd64\nhookscript: local:snippets/phoenix-hook\nonboot: 1\n\n\
                    [snap]\nhookscript: shared:snippets/old\n";
        assert_eq!(
            hookscript_of(conf).as_deref(),
            Some("local:snippets/phoenix-hook")
        );
        assert_eq!(
            hookscript_of("arch: amd64\n[snap]\nhookscript: x:snippets/y\n"),
            None
        );
    }

    #[test]
    fn shared_is_the_flag_or_the_type() {
        let cfg = "dir: local\n\tpath /var/lib/vz\n\tcontent snippets\n\n\
                   dir: snip\n\tpath /mnt/snip\n\tcontent snippets\n\tshared 1\n\n\
                   dir: nodeonly\n\tpath /srv/snip\n\tcontent snippets\n\n\
                   nfs: nas\n\tserver 10.0.0.13\n\texport /quickOS\n\tpath /mnt/pve/nas\n\
                   \tcontent snippets\n\n\
                   cephfs: cephfs\n\tpath /mnt/pve/cephfs\n\tcontent snippets\n";
        assert_eq!(reach(Some(cfg), "local"), Reach::NodeLocal("dir".into()));
        assert_eq!(reach(None, "local"), Reach::NodeLocal("dir".into()));
        assert_eq!(reach(Some(cfg), "snip"), Reach::Shared);
        assert_eq!(reach(Some(cfg), "nas"), Reach::Shared);
        assert_eq!(reach(Some(cfg), "cephfs"), Reach::Shared);
        assert_eq!(reach(Some(cfg), "nodeonly"), Reach::NodeLocal("dir".into()));
        assert_eq!(reach(Some(cfg), "gone"), Reach::Undefined);
    }
}
