//! Does Proxmox's onboot order hold the CA's dependents back?
//!
//! At boot, `pve-guests.service` runs the node's `startall`
//! (pve-manager `PVE/API2/Nodes.pm`): the guests with `onboot: 1`, grouped
//! by `startup: order=N` (none: after every order), a group at a time.
//! Since pve-manager's commit 301897cb of 29 November 2025 ("api: node
//! bulk start: implement concurrent worker parameter") the guests of one
//! group start concurrently (up to `max_workers`), and only the next group
//! waits for all of the group's start tasks, which include the post-start
//! hookscript (pve-container `PVE/LXC.pm` `vm_start`, qemu-server alike).
//! So the CA's post-start wait holds back only guests of a *higher*
//! order: one that shares the CA's order starts beside it, one of a lower
//! order before it. The CA's pre-start warns about both, naming them; it
//! never refuses the start for it.
//!
//! The guest configs (`/etc/pve/lxc/<vmid>.conf`,
//! `/etc/pve/qemu-server/<vmid>.conf`, this node's) are read bounded, a
//! link in place of one is not followed, and only their main section
//! counts: what follows the first `[...]` header is a snapshot's or
//! pending values.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::fsutil;

/// Largest guest config read (pmxcfs holds files of at most 1 MiB).
pub const GUEST_CONF_LIMIT: u64 = 1 << 20;

/// What a guest config says about its start at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Startup {
    /// `onboot: 1`.
    pub onboot: bool,
    /// `startup: order=N` (`None`: no order, or a value Proxmox cannot
    /// parse, which it treats alike: after every order).
    pub order: Option<u64>,
}

impl Startup {
    /// The order `startall` sorts by (`LONG_MAX` for none).
    fn rank(&self) -> u64 {
        self.order.unwrap_or(u64::MAX)
    }

    fn describe(&self) -> String {
        match self.order {
            Some(n) => format!("order={n}"),
            None => "no order".to_string(),
        }
    }
}

/// `PVE::JSONSchema::pve_parse_startup_order`: `[order=]N`, `up=N`,
/// `down=N`, comma-separated; anything else makes the whole value
/// unparsable (`None`, no order).
pub fn parse_startup(value: &str) -> Option<u64> {
    let mut order = None;
    for p in value.split(',') {
        if p.trim().is_empty() {
            continue;
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let n = p.strip_prefix("order=").unwrap_or(p);
        if digits(n) {
            order = Some(n.parse().unwrap_or(u64::MAX));
        } else if !p
            .strip_prefix("up=")
            .or_else(|| p.strip_prefix("down="))
            .is_some_and(digits)
        {
            return None;
        }
    }
    order
}

/// The `key: value` lines of a guest config's main section (what follows
/// the first `[...]` header is a snapshot's or pending values), values
/// trimmed.
pub fn main_section(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .take_while(|line| !line.starts_with('['))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key, value.trim()))
}

/// The `onboot` and `startup` keys of a guest config's main section.
pub fn parse_conf(text: &str) -> Startup {
    let mut s = Startup::default();
    for (key, value) in main_section(text) {
        match key {
            "onboot" => s.onboot = matches!(value, "1" | "on" | "yes" | "true"),
            "startup" => s.order = parse_startup(value),
            _ => {}
        }
    }
    s
}

/// An onboot guest of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// `CT` or `VM`, as Proxmox's start log names them.
    pub kind: &'static str,
    /// Its VMID.
    pub vmid: u32,
    /// Its start settings.
    pub startup: Startup,
}

impl Guest {
    fn describe(&self) -> String {
        format!("{} {} ({})", self.kind, self.vmid, self.startup.describe())
    }
}

/// Read one guest config: a regular file, not a link, at most
/// [`GUEST_CONF_LIMIT`] bytes.
pub fn read_conf(path: &Path) -> std::io::Result<String> {
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)?;
    let bytes = fsutil::read_open_limited(file, GUEST_CONF_LIMIT)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Every guest with a config in `<pve_dir>/lxc` and
/// `<pve_dir>/qemu-server` (those directories are pmxcfs's links to this
/// node's; the files in them are not followed if links). Unreadable
/// files are skipped, each with a line in the second list.
pub fn guests(pve_dir: &Path) -> (Vec<Guest>, Vec<String>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for (sub, kind) in [("lxc", "CT"), ("qemu-server", "VM")] {
        let dir = pve_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                skipped.push(format!("'{}': {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(vmid) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".conf"))
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|id| id.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            match read_conf(&path) {
                Ok(text) => found.push(Guest {
                    kind,
                    vmid,
                    startup: parse_conf(&text),
                }),
                Err(e) => skipped.push(format!("'{}': {e}", path.display())),
            }
        }
    }
    found.sort_by_key(|g| (g.startup.rank(), g.vmid));
    (found, skipped)
}

/// The warning for the CA guest `ca_id` among `guests`, if another onboot
/// guest starts with it or before it.
pub fn warning(guests: &[Guest], ca_id: u32) -> Option<String> {
    let ca = guests.iter().find(|g| g.vmid == ca_id)?;
    if !ca.startup.onboot {
        return None;
    }
    let rank = ca.startup.rank();
    let others = || {
        guests
            .iter()
            .filter(|g| g.vmid != ca_id && g.startup.onboot)
    };
    let list = |gs: Vec<&Guest>| {
        gs.iter()
            .map(|g| g.describe())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let along: Vec<&Guest> = others().filter(|g| g.startup.rank() == rank).collect();
    let before: Vec<&Guest> = others().filter(|g| g.startup.rank() < rank).collect();
    if along.is_empty() && before.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !along.is_empty() {
        parts.push(format!("{} start(s) beside it", list(along)));
    }
    if !before.is_empty() {
        parts.push(format!("{} before it", list(before)));
    }
    let suggest = match ca.startup.order {
        Some(n) => format!("give it an order of its own below theirs (now {n})"),
        None => "give it an order (it has none, so it starts last)".to_string(),
    };
    Some(format!(
        "onboot order: the CA {} shares or is undercut by other onboot guests: {}. \
         Proxmox starts the guests of one startup order concurrently (pve-manager, \
         November 2025) and holds only higher orders for the CA's post-start wait: \
         {suggest}, e.g. `{} set {ca_id} --startup order=1` with the others at 2 or more",
        ca.describe(),
        parts.join("; "),
        if ca.kind == "CT" { "pct" } else { "qm" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_values_parse_as_proxmox_parses_them() {
        assert_eq!(parse_startup("order=1,up=30,down=60"), Some(1));
        assert_eq!(parse_startup("2"), Some(2));
        assert_eq!(parse_startup("up=30"), None);
        assert_eq!(parse_startup("order=1,,up=5"), Some(1));
        assert_eq!(
            parse_startup("order=1,bogus=2"),
            None,
            "unparsable: no order"
        );
        assert_eq!(parse_startup("order=-1"), None);
    }

    #[test]
    fn only_the_main_section_counts() {
        let text = "# a description: onboot: 1\narch: amd64\nhostname: ca\n\
                    startup: order=3,up=10\nmemory: 512\n\n[before-upgrade]\nonboot: 1\n\
                    startup: order=0\n";
        assert_eq!(
            parse_conf(text),
            Startup {
                onboot: false,
                order: Some(3)
            }
        );
        let text = "onboot: 1\n[PENDING]\nonboot: 0\n";
        assert!(parse_conf(text).onboot);
    }

    fn g(kind: &'static str, vmid: u32, onboot: bool, order: Option<u64>) -> Guest {
        Guest {
            kind,
            vmid,
            startup: Startup { onboot, order },
        }
    }

    #[test]
    fn warns_about_guests_beside_or_before_the_ca() {
        let guests = [
            g("CT", 103, true, Some(1)),
            g("CT", 101, true, Some(1)),
            g("VM", 1001, true, Some(0)),
            g("CT", 102, false, Some(0)),
            g("VM", 1002, true, Some(2)),
            g("CT", 104, true, None),
        ];
        let w = warning(&guests, 103).unwrap();
        assert!(w.contains("the CA CT 103 (order=1)"), "{w}");
        assert!(w.contains("CT 101 (order=1) start(s) beside it"), "{w}");
        assert!(w.contains("VM 1001 (order=0) before it"), "{w}");
        assert!(
            !w.contains("102") && !w.contains("1002") && !w.contains("104"),
            "{w}"
        );
        assert!(w.contains("pct set 103 --startup order=1"), "{w}");
    }

    #[test]
    fn a_ca_without_an_order_is_undercut_by_every_order() {
        let guests = [g("VM", 200, true, None), g("CT", 101, true, Some(5))];
        let w = warning(&guests, 200).unwrap();
        assert!(w.contains("CT 101 (order=5) before it"), "{w}");
        assert!(w.contains("qm set 200"), "{w}");
    }

    #[test]
    fn no_warning_when_the_ca_goes_first_alone_or_is_not_onboot() {
        let guests = [
            g("CT", 103, true, Some(1)),
            g("CT", 101, true, Some(2)),
            g("VM", 1001, true, None),
        ];
        assert_eq!(warning(&guests, 103), None);
        let guests = [g("CT", 103, false, Some(1)), g("CT", 101, true, Some(1))];
        assert_eq!(warning(&guests, 103), None);
        assert_eq!(warning(&guests, 999), None);
    }

    #[test]
    fn reads_configs_bounded_and_skips_links() {
        let pve = tempfile::tempdir().unwrap();
        let lxc = pve.path().join("lxc");
        std::fs::create_dir(&lxc).unwrap();
        std::fs::write(lxc.join("103.conf"), "onboot: 1\nstartup: order=1\n").unwrap();
        std::fs::write(lxc.join("notes.txt"), "onboot: 1\n").unwrap();
        let elsewhere = pve.path().join("elsewhere.conf");
        std::fs::write(&elsewhere, "onboot: 1\nstartup: order=0\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, lxc.join("101.conf")).unwrap();
        let big = std::fs::File::create(lxc.join("105.conf")).unwrap();
        big.set_len(GUEST_CONF_LIMIT + 1).unwrap();
        let (found, skipped) = guests(pve.path());
        assert_eq!(found, [g("CT", 103, true, Some(1))]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped.iter().any(|s| s.contains("101.conf")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.contains("105.conf")),
            "{skipped:?}"
        );
    }
}
