//! `/etc/pve/storage.cfg`, parsed as pve-storage reads it, and what each
//! storage type needs to be "there" (see the parent module).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest `storage.cfg` read (pmxcfs holds files of at most 1 MiB).
pub const STORAGE_CFG_LIMIT: u64 = 1 << 20;

/// One section of `storage.cfg`: `TYPE: ID` and its indented properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The storage type, lowercased as pve-storage does (`dir`, `nfs`...).
    pub kind: String,
    /// The storage ID.
    pub id: String,
    /// Its properties; `None` for a bare key (a boolean set to 1).
    pub props: BTreeMap<String, Option<String>>,
}

impl Section {
    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key).and_then(|v| v.as_deref())
    }

    /// A boolean property as pve-common reads one (a bare key is true).
    pub fn flag(&self, key: &str) -> bool {
        match self.props.get(key) {
            Some(None) => true,
            Some(Some(v)) => parse_boolean(v) == Some(true),
            None => false,
        }
    }
}

/// `PVE::JSONSchema::parse_boolean`.
fn parse_boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parse `storage.cfg` as `PVE::SectionConfig::parse_config` does: lines
/// starting (after blanks) with `#` are skipped; a section is a header
/// `TYPE: ID` and the indented `key [value]` lines after it, up to an empty
/// line. Returns the sections and one warning per line it ignored (the
/// lines pve-storage also ignores with a warning).
pub fn parse(text: &str) -> (Vec<Section>, Vec<String>) {
    let mut lines = text
        .split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#'));
    let mut sections = Vec::new();
    let mut warnings = Vec::new();
    while let Some((n, line)) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((kind, id)) = header(line) else {
            warnings.push(format!("line {}: ignored: {line}", n + 1));
            continue;
        };
        let valid_id = id.len() >= 2
            && id.starts_with(|c: char| c.is_ascii_alphabetic())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            warnings.push(format!("line {}: section '{id}' skipped: bad ID", n + 1));
        }
        let mut props = BTreeMap::new();
        for (n, line) in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            match property(line) {
                Some((k, _)) if props.contains_key(k) => warnings.push(format!(
                    "line {}: section '{id}': duplicate '{k}' ignored",
                    n + 1
                )),
                Some((k, v)) => {
                    props.insert(k.to_string(), v.map(String::from));
                }
                None => warnings.push(format!("line {}: section '{id}': ignored: {line}", n + 1)),
            }
        }
        if valid_id {
            sections.push(Section {
                kind: kind.to_ascii_lowercase(),
                id: id.to_string(),
                props,
            });
        }
    }
    (sections, warnings)
}

/// `^(\S+):\s*(\S+)\s*$` (the type takes every colon but the last).
fn header(line: &str) -> Option<(&str, &str)> {
    let (kind, rest) = line.rsplit_once(':')?;
    let id = rest.trim();
    let plain = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    (plain(kind) && plain(id)).then_some((kind, id))
}

/// `^\s+(\S+)(\s+(.*\S))?\s*$`
fn property(line: &str) -> Option<(&str, Option<&str>)> {
    if !line.starts_with(char::is_whitespace) {
        return None;
    }
    let body = line.trim();
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once(char::is_whitespace) {
        Some((k, v)) => (k, Some(v.trim_start())),
        None => (body, None),
    })
}

/// The network file systems whose storages Proxmox mounts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFs {
    /// `nfs`: `server`, `export`.
    Nfs,
    /// `cifs`: `server`, `share`, `subdir`.
    Cifs,
    /// `cephfs`: `subdir`.
    CephFs,
}

impl NetFs {
    /// Whether a mount table type is this file system (the plugins'
    /// `$_->[2] =~ /^nfs/`, `/^cifs/`, `m#^ceph|fuse\.ceph-fuse#`).
    pub fn is_type(self, fs_type: &str) -> bool {
        match self {
            NetFs::Nfs => fs_type.starts_with("nfs"),
            NetFs::Cifs => fs_type.starts_with("cifs"),
            NetFs::CephFs => fs_type.starts_with("ceph") || fs_type.contains("fuse.ceph-fuse"),
        }
    }

    /// Its storage type name.
    pub fn name(self) -> &'static str {
        match self {
            NetFs::Nfs => "nfs",
            NetFs::Cifs => "cifs",
            NetFs::CephFs => "cephfs",
        }
    }
}

/// What makes a storage "there", as pve-storage checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `dir`/`btrfs` without `is_mountpoint`: a directory that exists.
    Directory,
    /// `dir`/`btrfs` with `is_mountpoint`: this path is a mount point.
    MountPoint(PathBuf),
    /// `zfspool`: `dataset` (or a child) mounted, type zfs, at `at`.
    Zfs {
        /// The `pool` property: a pool or `pool/dataset`.
        dataset: String,
        /// `mountpoint`, else `/<pool>` (the `pool` value, a dataset).
        at: PathBuf,
    },
    /// `nfs`, `cifs`, `cephfs`: a mount of that type at `at`.
    Network {
        /// Which file system.
        fs: NetFs,
        /// `path`, else `<storage_root>/<id>`.
        at: PathBuf,
        /// The mount source the plugin looks for (`server:export`,
        /// `//server/share`, `:subdir`), if the section names one.
        source: Option<String>,
    },
    /// A type with a `path` this module has no rule for: exists.
    Other,
}

/// A storage a host path can lie on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Its ID.
    pub id: String,
    /// Its type, as written.
    pub kind: String,
    /// Where its files are.
    pub path: PathBuf,
    /// What is checked.
    pub rule: Rule,
    /// `disable` is set (Proxmox does not activate it).
    pub disabled: bool,
}

/// `File::Spec->canonpath` as far as it matters here: no trailing `/`.
fn canon(p: &str) -> PathBuf {
    PathBuf::from(p).components().collect()
}

impl Storage {
    /// The storage of `s`, if it has a place in the file system.
    pub fn from_section(s: &Section, storage_root: &Path) -> Option<Storage> {
        let (path, rule) = match s.kind.as_str() {
            "dir" | "btrfs" => {
                let path = canon(s.get("path")?);
                // DirPlugin.pm parse_is_mountpoint: a boolean, else a path.
                let rule = match s.props.get("is_mountpoint") {
                    None | Some(None) => Rule::Directory,
                    Some(Some(v)) => match parse_boolean(v) {
                        Some(true) => Rule::MountPoint(path.clone()),
                        Some(false) => Rule::Directory,
                        None => Rule::MountPoint(canon(v)),
                    },
                };
                (path, rule)
            }
            "zfspool" => {
                let dataset = s.get("pool")?.trim_end_matches('/').to_string();
                // ZFSPoolPlugin.pm `path`: `mountpoint // "/$scfg->{pool}"`,
                // the whole `pool` value (`rpool/data` -> `/rpool/data`).
                let at = s
                    .get("mountpoint")
                    .map(canon)
                    .unwrap_or_else(|| PathBuf::from(format!("/{dataset}")));
                (at.clone(), Rule::Zfs { dataset, at })
            }
            kind @ ("nfs" | "cifs" | "cephfs") => {
                let at = s
                    .get("path")
                    .map(canon)
                    .unwrap_or_else(|| storage_root.join(&s.id));
                let bracket = |h: &str| {
                    if h.contains(':') {
                        format!("[{h}]")
                    } else {
                        h.to_string()
                    }
                };
                let (fs, source) = match kind {
                    "nfs" => (
                        NetFs::Nfs,
                        s.get("server")
                            .zip(s.get("export"))
                            .map(|(h, e)| format!("{}:{e}", bracket(h))),
                    ),
                    "cifs" => (
                        NetFs::Cifs,
                        s.get("server").zip(s.get("share")).map(|(h, sh)| {
                            format!("//{}/{sh}{}", bracket(h), s.get("subdir").unwrap_or(""))
                        }),
                    ),
                    _ => (
                        NetFs::CephFs,
                        Some(format!(":{}", s.get("subdir").unwrap_or("/"))),
                    ),
                };
                (at.clone(), Rule::Network { fs, at, source })
            }
            _ => (canon(s.get("path")?), Rule::Other),
        };
        Some(Storage {
            id: s.id.clone(),
            kind: s.kind.clone(),
            path,
            rule,
            disabled: s.flag("disable"),
        })
    }

    /// `storage 'quickOS' (nfs: 10.0.0.13:/quickOS at '/mnt/pve/quickOS')`.
    pub fn describe(&self) -> String {
        let detail = match &self.rule {
            Rule::Directory => "a plain directory, no is_mountpoint".to_string(),
            Rule::MountPoint(mp) => format!("is_mountpoint '{}'", mp.display()),
            Rule::Zfs { dataset, at } => format!("pool {dataset} at '{}'", at.display()),
            Rule::Network { source, at, .. } => match source {
                Some(s) => format!("{s} at '{}'", at.display()),
                None => format!("at '{}'", at.display()),
            },
            Rule::Other => format!("path '{}'", self.path.display()),
        };
        let disabled = if self.disabled { ", disabled" } else { "" };
        format!("storage '{}' ({}: {detail}{disabled})", self.id, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_lines_are_ignored_with_a_warning_and_a_blank_line_ends_a_section() {
        let text = "dir: a1\n\tpath /a\n\tpath /b\n  # comment inside\nnot a property\n\n\
                    \tpath /orphan\nDIR: b1  \n\tpath /b\n\n1: x\n";
        let (sections, warnings) = parse(text);
        assert_eq!(sections.len(), 2, "{sections:?}");
        assert_eq!(sections[0].get("path"), Some("/a"), "the first one stays");
        assert_eq!(sections[1].kind, "dir", "type lowercased");
        assert_eq!(sections[1].id, "b1");
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[0].contains("duplicate 'path'"), "{warnings:?}");
        assert!(warnings[2].contains("/orphan"), "{warnings:?}");
        assert!(warnings[3].contains("bad ID"), "{warnings:?}");
    }
}
