//! A Proxmox cluster, not one host: which node this is, where each guest
//! lives, whether the host is part of a cluster, and the one lock API
//! every job takes (see `docs/cluster.md`).
//!
//! - This node's name is Proxmox's: the `uname` node name up to its first
//!   dot (pve-common `src/PVE/INotify.pm` `nodename`; pmxcfs does the same
//!   in pve-cluster `src/pmxcfs/pmxcfs.c` `main`), or `cluster.node_name`.
//! - Where each guest lives: pmxcfs's `<pve_dir>/.vmlist` ([`vmlist`]).
//! - A cluster is a host with `<pve_dir>/corosync.conf`, the test
//!   pve-cluster's `PVE::Corosync::check_conf_exists`
//!   (`src/PVE/Corosync.pm`) makes before `pvecm` treats the node as part
//!   of one. (`.members` lists the nodes of a cluster, but a standalone
//!   host's pmxcfs writes one too, with no `nodelist`.)
//! - The lock: [`lock`] takes the local `flock` of `src/lock.rs` (one run
//!   per node, the holder named) and, on a cluster, the pmxcfs lock
//!   `phoenix-<job>` ([`cfs_lock`]) as well, so a job runs on one node at
//!   a time cluster-wide. A single host has only the local lock, as
//!   before.

pub mod cfs_lock;
pub mod vmlist;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::exit::{err, Kind};
use crate::lock::{self, LockGuard};
use crate::phoenix::GuestType;

pub use cfs_lock::CfsLock;
pub use vmlist::{VmEntry, VmList};

/// A node name as Proxmox takes one (pve-common `src/PVE/JSONSchema.pm`
/// `pve_verify_node_name`: letters, digits, inner hyphens).
pub fn check_node_name(name: &str) -> std::result::Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a node name (letters, digits and inner hyphens, as Proxmox takes one)",
            name.escape_debug()
        ))
    }
}

/// This host's node name as Proxmox spells it: `uname -n` up to the first
/// dot (pve-common `src/PVE/INotify.pm` `nodename`).
pub fn uname_nodename() -> Result<String> {
    // SAFETY: `uname` fills the zeroed struct; its fields are
    // NUL-terminated C strings.
    let mut u: nix::libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { nix::libc::uname(&mut u) } != 0 {
        return Err(err(
            Kind::Failed,
            format!(
                "unable to read node name: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    let raw = unsafe { std::ffi::CStr::from_ptr(u.nodename.as_ptr()) };
    let full = raw.to_string_lossy();
    let short = full.split('.').next().unwrap_or_default().to_string();
    if short.is_empty() {
        return Err(err(Kind::Failed, "unable to read node name"));
    }
    Ok(short)
}

/// This node's name: `cluster.node_name`, else [`uname_nodename`].
pub fn node_name(config: &Config) -> Result<String> {
    match &config.cluster.node_name {
        Some(n) => Ok(n.clone()),
        None => uname_nodename(),
    }
}

/// Where a guest is, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this node (or a single host without `.vmlist`: everything is).
    Here,
    /// On another node of the cluster.
    Elsewhere(String),
    /// On no node: not in `.vmlist`.
    Nowhere,
    /// In `.vmlist` as another type than asked (a container where a VM
    /// was named): its type and node.
    OtherType(String, String),
}

/// This host as part of (or outside) a cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// `<pve_dir>/corosync.conf` exists.
    pub clustered: bool,
    /// pmxcfs's guest list; `None` without one (a host without pmxcfs).
    pub vmlist: Option<VmList>,
    /// `pve_dir`.
    pub pve_dir: PathBuf,
    /// `cluster.lock_wait_secs`.
    pub lock_wait: Duration,
}

impl Cluster {
    /// Look at `pve_dir`: the node name, whether it is a cluster, the
    /// guest list. A cluster without a guest list (pmxcfs not mounted)
    /// is exit 75: which node runs which guest cannot be told.
    pub fn load(config: &Config) -> Result<Cluster> {
        let pve_dir = config.pve_dir.clone();
        let clustered = pve_dir.join("corosync.conf").is_file();
        let vmlist = vmlist::read(&pve_dir)?;
        if clustered && vmlist.is_none() {
            return Err(err(
                Kind::TempFail,
                format!(
                    "'{}' has corosync.conf but no .vmlist: the cluster file system (pmxcfs) \
                     is not mounted, or not yet; where guests run cannot be told",
                    pve_dir.display()
                ),
            ));
        }
        Ok(Cluster {
            node: node_name(config)?,
            clustered,
            vmlist,
            pve_dir,
            lock_wait: Duration::from_secs(config.cluster.lock_wait_secs),
        })
    }

    /// Read `.vmlist` again (a guest may have migrated since).
    pub fn reload_vmlist(&mut self) -> Result<()> {
        if let Some(l) = vmlist::read(&self.pve_dir)? {
            self.vmlist = Some(l);
        }
        Ok(())
    }

    /// `<pve_dir>/priv/lock`.
    pub fn lock_dir(&self) -> PathBuf {
        lock_dir_in(&self.pve_dir)
    }

    /// The node guest `id` is on, if known.
    pub fn node_of(&self, id: u32) -> Option<String> {
        match &self.vmlist {
            Some(l) => l.get(id).map(|e| e.node.clone()),
            None => Some(self.node.clone()),
        }
    }

    /// Where guest `id` of type `kind` is, seen from here.
    pub fn placement(&self, kind: GuestType, id: u32) -> Placement {
        let Some(list) = &self.vmlist else {
            return Placement::Here;
        };
        match list.get(id) {
            None => Placement::Nowhere,
            Some(e) if e.guest_type() != Some(kind) => {
                Placement::OtherType(e.kind.clone(), e.node.clone())
            }
            Some(e) if e.node == self.node => Placement::Here,
            Some(e) => Placement::Elsewhere(e.node.clone()),
        }
    }

    /// On a cluster, take the cluster-wide lock `name` (waiting
    /// `cluster.lock_wait_secs`); on a single host, `None`: the local lock
    /// the caller holds is enough there.
    pub fn lock(&self, name: &str) -> Result<Option<CfsLock>> {
        if !self.clustered {
            return Ok(None);
        }
        cfs_lock::acquire(&self.lock_dir(), name, self.lock_wait).map(Some)
    }

    /// Proxmox's own quorum test where it can be made: pmxcfs shows
    /// `<pve_dir>/local` (a link) without its write bit while the node has
    /// no quorum (pve-cluster `src/PVE/Cluster.pm` `check_cfs_quorum`,
    /// `src/pmxcfs/cfs-plug-link.c`). `Err` (75) "no quorum: ..." then.
    /// Elsewhere (no such link: a stand-in) it passes, and a refused
    /// `mkdir` of the first lock says it instead.
    pub fn check_quorum(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if !self.clustered {
            return Ok(());
        }
        let local = self.pve_dir.join("local");
        match std::fs::symlink_metadata(&local) {
            Ok(m) if m.file_type().is_symlink() && m.mode() & 0o200 == 0 => Err(err(
                Kind::TempFail,
                format!(
                    "no quorum: '{}' is read-only (cluster not ready - no quorum?); \
                     `pvecm status` says why",
                    self.pve_dir.display()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `<pve_dir>/priv/lock`, where pve-cluster's `cfs_lock` makes its locks.
pub fn lock_dir_in(pve_dir: &Path) -> PathBuf {
    pve_dir.join("priv/lock")
}

/// A job's lock: the local one, and on a cluster the pmxcfs one.
/// Dropping it releases the cluster lock first, then the local one.
#[derive(Debug)]
pub struct JobLock {
    /// `phoenix-<job>` in `<pve_dir>/priv/lock` on a cluster.
    pub cluster: Option<CfsLock>,
    /// `<lock_dir>/<job>.lock`.
    pub local: LockGuard,
}

/// Take `job`'s lock (`swarm`, `deploy`, ...), waiting at most `wait` for
/// either part: the local `flock` of [`crate::lock::lock_at`] (a second
/// run on this node is told who holds it), then, on a cluster, the pmxcfs
/// lock `phoenix-<job>`: the job runs on one node at a time cluster-wide.
/// Exit 75 when either is held past `wait`, or without quorum.
pub fn lock(config: &Config, job: &str, wait: Duration) -> Result<JobLock> {
    let local = lock::lock_at(&config.lock_dir, job, wait)?;
    let clustered = config.pve_dir.join("corosync.conf").is_file();
    let cluster = if clustered {
        Some(cfs_lock::acquire(
            &lock_dir_in(&config.pve_dir),
            &format!("phoenix-{job}"),
            wait,
        )?)
    } else {
        None
    };
    Ok(JobLock { cluster, local })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    fn config(pve: &Path, node: &str) -> Config {
        Config {
            pve_dir: pve.to_path_buf(),
            lock_dir: pve.join("run-lock").join(node),
            cluster: crate::config::ClusterConfig {
                node_name: Some(node.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn three_nodes(pve: &Path) {
        std::fs::create_dir(pve.join("priv")).unwrap();
        std::fs::write(pve.join("corosync.conf"), "totem {}\n").unwrap();
        std::fs::write(
            pve.join(".vmlist"),
            r#"{"version": 3, "ids": {"101": {"node": "pve1", "type": "lxc", "version": 1},
               "1001": {"node": "pve2", "type": "qemu", "version": 2}}}"#,
        )
        .unwrap();
    }

    #[test]
    fn node_names_as_proxmox_takes_them() {
        for good in ["pve1", "a", "node-2", "PVE"] {
            check_node_name(good).unwrap();
        }
        for bad in ["", "-a", "a-", "a.b", "a b", "../x"] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
        let n = uname_nodename().unwrap();
        assert!(!n.contains('.'), "{n}");
    }

    #[test]
    fn placement_from_vmlist() {
        let d = tempfile::tempdir().unwrap();
        three_nodes(d.path());
        let c = Cluster::load(&config(d.path(), "pve1")).unwrap();
        assert!(c.clustered);
        assert_eq!(c.placement(GuestType::Lxc, 101), Placement::Here);
        assert_eq!(
            c.placement(GuestType::Vm, 1001),
            Placement::Elsewhere("pve2".into())
        );
        assert_eq!(c.placement(GuestType::Vm, 7), Placement::Nowhere);
        assert_eq!(
            c.placement(GuestType::Vm, 101),
            Placement::OtherType("lxc".into(), "pve1".into())
        );
        assert_eq!(c.node_of(1001).as_deref(), Some("pve2"));
        assert_eq!(c.node_of(7), None);
    }

    #[test]
    fn a_single_host_without_vmlist_has_everything_here() {
        let d = tempfile::tempdir().unwrap();
        let c = Cluster::load(&config(d.path(), "pve")).unwrap();
        assert!(!c.clustered);
        assert_eq!(c.placement(GuestType::Vm, 1001), Placement::Here);
        assert_eq!(c.node_of(1001).as_deref(), Some("pve"));
        assert!(c.lock("phoenix-x").unwrap().is_none());
    }

    #[test]
    fn a_cluster_without_vmlist_is_temporary() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("corosync.conf"), "").unwrap();
        let e = Cluster::load(&config(d.path(), "pve1")).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!(e.to_string().contains("pmxcfs"), "{e}");
    }

    #[test]
    fn job_lock_is_cluster_wide_on_a_cluster() {
        let d = tempfile::tempdir().unwrap();
        three_nodes(d.path());
        let a = lock(&config(d.path(), "pve1"), "swarm", Duration::ZERO).unwrap();
        assert!(d.path().join("priv/lock/phoenix-swarm").is_dir());
        // Another node (its own local lock directory) is kept off.
        let e = lock(&config(d.path(), "pve2"), "swarm", Duration::ZERO).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
        assert!(e.to_string().contains("phoenix-swarm"), "{e}");
        drop(a);
        assert!(!d.path().join("priv/lock/phoenix-swarm").exists());
        let _b = lock(&config(d.path(), "pve2"), "swarm", Duration::ZERO).unwrap();
    }

    #[test]
    fn job_lock_on_a_single_host_is_the_local_one() {
        let d = tempfile::tempdir().unwrap();
        let l = lock(&config(d.path(), "pve"), "deploy", Duration::ZERO).unwrap();
        assert!(l.cluster.is_none());
        assert!(!d.path().join("priv").exists());
    }
}
