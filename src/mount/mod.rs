//! `phoenix-mount`: a guest mounts the shared CA state directory (and its
//! other volumes) itself, read-only and with NFS options fit for polling,
//! instead of having files pushed into it while it boots (the pull model).
//!
//! The volumes come from `toolkit.json` `mounts`, or from a VM's `volumes`
//! in `phoenix_vm_configs.json` (a `mounts` entry has the shape of such a
//! volume object, its `name` included). Three uses: a systemd generator
//! that writes one `.mount` unit per volume ([`generate`]), mounting now,
//! idempotently ([`apply`]), and a check that every volume is mounted as
//! configured ([`check`]). Nothing here edits `/etc/fstab`.
//!
//! Each of them warns when this guest waits for the CA at boot
//! (`phoenix-ca-wait.service` enabled, or pulled in by Docker's drop-in)
//! but nothing mounts `ca.guest_state_dir`: the wait would run into its
//! bound at every boot ([`ca_wait_uncovered`]).

pub mod mountinfo;
pub mod unit;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::config::{Config, MountConfig, MountType};
use crate::exec::Cmd;
use crate::exit::{err, Kind};
use crate::fsutil::{self, FileOptions};
use crate::phoenix;
use crate::signal;
use mountinfo::{Mount, MountTable};

/// Where `systemctl enable` puts its links.
pub const SYSTEMD_CONF_DIR: &str = "/etc/systemd/system";

/// One volume, resolved: what to mount where, with the final options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its `name` in the configuration, if it has one (for messages).
    pub name: Option<String>,
    /// nfs, bind or tmpfs.
    pub kind: MountType,
    /// `server:/export`, the bind source, or `tmpfs`.
    pub what: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Mount options in effect (`ro`/`rw` first).
    pub options: Vec<String>,
    /// Mounted read-only.
    pub read_only: bool,
    /// This is the CA state directory (`ca.guest_state_dir`).
    pub ca_state: bool,
}

impl Volume {
    /// Resolve a `mounts[]` entry: default options for its kind, read-only
    /// for the CA state directory unless said otherwise.
    pub fn resolve(config: &Config, m: &MountConfig) -> Result<Volume> {
        let ca_state = m.mount_point == config.ca.guest_state_dir;
        let mut options: Vec<String> = m
            .options
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        let said = options.iter().rev().find_map(|o| match o.as_str() {
            "ro" => Some(true),
            "rw" => Some(false),
            _ => None,
        });
        let read_only = m.read_only.or(said).unwrap_or(ca_state);
        options.retain(|o| o != "ro" && o != "rw");
        options.insert(0, if read_only { "ro" } else { "rw" }.to_string());
        let has = |opts: &[String], prefix: &str| opts.iter().any(|o| o.starts_with(prefix));
        let what = match m.kind {
            MountType::Nfs => {
                // A new file must be seen promptly: no cached "does not
                // exist" answers (negative dentries), short attribute caching
                // on the small CA directory.
                if !has(&options, "lookupcache=") {
                    options.push("lookupcache=positive".into());
                }
                if ca_state && !has(&options, "ac") && !has(&options, "noac") {
                    options.push("actimeo=1".into());
                }
                let server = m.server.as_deref().unwrap_or_default();
                let path = m.path.as_deref().unwrap_or_default();
                format!("{server}:{path}")
            }
            MountType::Bind => {
                if !options.iter().any(|o| o == "bind" || o == "rbind") {
                    options.insert(1, "bind".into());
                }
                m.path.clone().unwrap_or_default()
            }
            MountType::Tmpfs => "tmpfs".to_string(),
        };
        if ca_state {
            for o in ["nosuid", "nodev", "noexec"] {
                if !options.iter().any(|x| x == o) {
                    options.push(o.into());
                }
            }
        }
        let name = m.name.clone().unwrap_or_default();
        for (field, text) in [
            ("what", &what),
            ("options", &options.join(",")),
            ("name", &name),
        ] {
            if text.chars().any(char::is_control) {
                return Err(err(
                    Kind::Config,
                    format!(
                        "mount on '{}': {field} holds a control character",
                        m.mount_point.display()
                    ),
                ));
            }
        }
        Ok(Volume {
            name: m.name.clone().filter(|n| !n.is_empty()),
            kind: m.kind,
            what,
            mount_point: m.mount_point.clone(),
            options,
            read_only,
            ca_state,
        })
    }

    /// `nfs 10.0.0.13:/x on '/mnt/y' (ro)`, for messages; a named volume
    /// `NAME: nfs ...`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            MountType::Nfs => "nfs",
            MountType::Bind => "bind",
            MountType::Tmpfs => "tmpfs",
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!("{n}: "))
            .unwrap_or_default();
        format!(
            "{name}{kind} {} on '{}' ({})",
            self.what,
            self.mount_point.display(),
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

/// The volumes in effect: `vmid`'s `volumes` in `phoenix_vm_configs.json`,
/// else `toolkit.json` `mounts`. Warns (once, for every subcommand) when
/// this guest waits for the CA but none of them, nor `/etc/fstab`, mounts
/// the CA state directory ([`ca_wait_uncovered`]).
pub fn volumes(config: &Config, vmid: Option<u32>) -> Result<Vec<Volume>> {
    let vols = configured_volumes(config, vmid)?;
    if let Some(w) = ca_wait_uncovered(
        config,
        &vols,
        Path::new(SYSTEMD_CONF_DIR),
        Path::new("/etc/fstab"),
    ) {
        log::warn!("{w}");
    }
    Ok(vols)
}

fn configured_volumes(config: &Config, vmid: Option<u32>) -> Result<Vec<Volume>> {
    let Some(vmid) = vmid else {
        return config
            .mounts
            .iter()
            .map(|m| Volume::resolve(config, m))
            .collect();
    };
    let path = config.vm_configs_path();
    let vms = phoenix::read_vm_configs(&path)?;
    let Some((i, vm)) = vms.vms.iter().enumerate().find(|(_, v)| v.vmid == vmid) else {
        return Err(err(
            Kind::Config,
            format!("VM {vmid} is not in '{}'", path.display()),
        ));
    };
    vm.volumes
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let kind = match v.kind.as_str() {
                "nfs" => MountType::Nfs,
                "bind" => MountType::Bind,
                "tmpfs" => MountType::Tmpfs,
                other => {
                    return Err(err(
                        Kind::Config,
                        format!(
                            "'{}': vms[{i}].volumes[{j}].type: unknown volume type '{other}' \
                             (nfs, bind or tmpfs)",
                            path.display()
                        ),
                    ))
                }
            };
            let m = MountConfig {
                name: None,
                kind,
                server: v.server.clone(),
                path: v.path.clone(),
                mount_point: v.mount_point.clone(),
                options: None,
                read_only: None,
            };
            if kind == MountType::Nfs && (m.server.is_none() || m.path.is_none()) {
                return Err(err(
                    Kind::Config,
                    format!(
                        "'{}': vms[{i}].volumes[{j}]: an nfs volume needs \"server\" and \"path\"",
                        path.display()
                    ),
                ));
            }
            Volume::resolve(config, &m)
        })
        .collect()
}

/// How a volume stands against the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Mounted from the configured source with the configured access.
    Ok,
    /// Nothing is mounted there.
    NotMounted,
    /// Something else is mounted there (described).
    OtherSource(String),
    /// The right source, but read-write where read-only is configured
    /// (or the other way round).
    WrongAccess {
        /// Whether the mount is read-only now.
        read_only: bool,
    },
}

fn describe_mount(m: &Mount) -> String {
    if m.root == Path::new("/") {
        format!("{} ({})", m.source, m.fs_type)
    } else {
        format!("{} ({}, path '{}')", m.source, m.fs_type, m.root.display())
    }
}

fn trim_slash(s: &str) -> &str {
    let t = s.trim_end_matches('/');
    if t.is_empty() || t.ends_with(':') {
        s
    } else {
        t
    }
}

/// Compare `volume` with the mount table.
pub fn state(volume: &Volume, table: &MountTable) -> State {
    let Some(m) = table.at(&volume.mount_point) else {
        return State::NotMounted;
    };
    let same = match volume.kind {
        MountType::Nfs => {
            m.fs_type.starts_with("nfs") && trim_slash(&m.source) == trim_slash(&volume.what)
        }
        MountType::Tmpfs => m.fs_type == "tmpfs",
        // A bind mount shows the device, not the source path: the mount
        // point must be the source's very directory.
        MountType::Bind => match (
            std::fs::metadata(&volume.what),
            std::fs::metadata(&volume.mount_point),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        },
    };
    if !same {
        return State::OtherSource(describe_mount(m));
    }
    if m.read_only() != volume.read_only {
        return State::WrongAccess {
            read_only: m.read_only(),
        };
    }
    State::Ok
}

/// Options of [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Deadline of one `mount` command.
    pub timeout: Duration,
}

/// Mount every volume that is not mounted yet. Already mounted from the
/// same source: nothing. Something else mounted there, or a mount command
/// that fails or runs past its deadline: an error naming it (the other
/// volumes are still mounted). A stop signal ends the run at once, with
/// the mount in progress stopped and the volumes after it not tried.
pub fn apply(volumes: &[Volume], opts: &ApplyOptions) -> Result<()> {
    let mut failed = Vec::new();
    for v in volumes {
        signal::check()?;
        let table = MountTable::read()?;
        match state(v, &table) {
            State::Ok => log::info!("{}: already mounted", v.describe()),
            State::WrongAccess { read_only } => log::warn!(
                "{}: already mounted, but {}; left as it is",
                v.describe(),
                if read_only { "read-only" } else { "read-write" }
            ),
            State::OtherSource(other) => {
                let msg = format!(
                    "'{}' already has {other} mounted, not {}",
                    v.mount_point.display(),
                    v.what
                );
                log::error!("{msg}");
                failed.push(msg);
            }
            State::NotMounted => {
                if let Err(e) = mount(v, opts) {
                    log::error!("{e:#}");
                    failed.push(format!("{e:#}"));
                }
            }
        }
    }
    // A mount stopped by the signal failed above; the run ends as stopped.
    signal::check()?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(err(
            Kind::Failed,
            format!("{} of {} volumes not mounted", failed.len(), volumes.len()),
        ))
    }
}

fn mount(v: &Volume, opts: &ApplyOptions) -> Result<()> {
    fsutil::ensure_dir(&v.mount_point, 0o755)?;
    let mut cmd = Cmd::new("mount");
    match v.kind {
        MountType::Nfs => cmd = cmd.args(["-t", "nfs"]),
        MountType::Tmpfs => cmd = cmd.args(["-t", "tmpfs"]),
        MountType::Bind => {}
    }
    cmd.arg("-o")
        .arg(v.options.join(","))
        .arg("--")
        .arg(&v.what)
        .arg(&v.mount_point)
        .timeout(opts.timeout)
        .run_ok()?;
    log::info!("{}: mounted", v.describe());
    Ok(())
}

/// One volume's line of `phoenix-mount check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRow {
    /// Where the volume belongs.
    pub mount_point: PathBuf,
    /// What should be mounted there.
    pub source: String,
    /// Mounted as configured.
    pub ok: bool,
    /// What is wrong, if anything.
    pub problem: Option<String>,
}

/// Print each volume's state (text, or JSON with `json`); `Err` (exit 1)
/// listing every volume that is not mounted as configured.
pub fn check(volumes: &[Volume], json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let table = MountTable::read()?;
    let rows: Vec<CheckRow> = volumes
        .iter()
        .map(|v| {
            let problem = match state(v, &table) {
                State::Ok => None,
                State::NotMounted => Some("not mounted".to_string()),
                State::OtherSource(other) => Some(format!("{other} is mounted there instead")),
                State::WrongAccess { read_only } => Some(format!(
                    "mounted {}",
                    if read_only { "read-only" } else { "read-write" }
                )),
            };
            CheckRow {
                mount_point: v.mount_point.clone(),
                source: v.what.clone(),
                ok: problem.is_none(),
                problem,
            }
        })
        .collect();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        for (v, row) in volumes.iter().zip(&rows) {
            match &row.problem {
                None => writeln!(out, "ok       {}", v.describe())?,
                Some(w) => writeln!(out, "FAILED   {}: {w}", v.describe())?,
            }
        }
    }
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.problem
                .as_ref()
                .map(|w| format!("'{}' ({w})", r.mount_point.display()))
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(err(
            Kind::Failed,
            format!("not mounted as configured: {}", bad.join(", ")),
        ))
    }
}

/// Whether `/etc/fstab` (or `fstab`) already has a line for `mount_point`:
/// then systemd-fstab-generator makes its unit, and a second one of the
/// same name would make that generator fail.
fn in_fstab(fstab: &Path, mount_point: &Path) -> bool {
    fstab_mount_points(fstab).iter().any(|p| p == mount_point)
}

/// The mount points `fstab` lists (none if it is unreadable).
fn fstab_mount_points(fstab: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(fstab) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Why this guest waits for the CA at boot, if it does: the link or
/// drop-in in `systemd_dir` (`/etc/systemd/system`) that starts
/// `phoenix-ca-wait.service`, as `systemctl enable` (a link in a
/// `*.wants/` or `*.requires/` directory) or the shipped Docker drop-in
/// (`docker.service.d/phoenix-ca-wait.conf`, `Wants=` it) leave it. A
/// masked unit (a link to `/dev/null`) waits for nothing.
pub fn ca_wait_enabled(systemd_dir: &Path) -> Option<PathBuf> {
    let unit = unit::CA_WAIT_UNIT;
    let masked =
        std::fs::read_link(systemd_dir.join(unit)).is_ok_and(|to| to == Path::new("/dev/null"));
    if masked {
        return None;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(systemd_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".wants") || n.ends_with(".requires")
        })
        .map(|e| e.path().join(unit))
        .collect();
    dirs.sort();
    dirs.push(systemd_dir.join("docker.service.d/phoenix-ca-wait.conf"));
    dirs.into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
}

/// The warning for a guest that waits for the CA (see [`ca_wait_enabled`])
/// while no volume, nor a line of `fstab`, mounts `ca.guest_state_dir` or
/// a directory above it (`/` does not count): its wait would last its
/// whole bound at every boot, for a token nothing brings.
pub fn ca_wait_uncovered(
    config: &Config,
    volumes: &[Volume],
    systemd_dir: &Path,
    fstab: &Path,
) -> Option<String> {
    let why = ca_wait_enabled(systemd_dir)?;
    let dir = &config.ca.guest_state_dir;
    let covers = |p: &Path| p != Path::new("/") && dir.starts_with(p);
    if volumes.iter().any(|v| covers(&v.mount_point))
        || fstab_mount_points(fstab).iter().any(|p| covers(p))
    {
        return None;
    }
    Some(format!(
        "this guest waits for the CA at boot ({} exists) but no mount covers \
         ca.guest_state_dir '{}': none of the configured volumes (toolkit.json \
         \"mounts\", or the VM's \"volumes\" with --vmid), nor '{}'. {} will wait \
         its whole bound (ca.wait_timeout_secs, {} s) at every boot for a readiness \
         token that cannot arrive. Add the CA state directory's mount (docs/hook.md, \
         \"In the guests\"), or disable the wait",
        why.display(),
        dir.display(),
        fstab.display(),
        unit::CA_WAIT_UNIT,
        config.ca.wait_timeout_secs
    ))
}

/// The generator: one `.mount` unit per volume in `dir` (systemd's
/// "normal" generator directory), pulled in by `remote-fs.target` (NFS) or
/// `local-fs.target`. A mount point `/etc/fstab` already has is left to
/// systemd-fstab-generator. Returns the unit names written.
pub fn generate(
    volumes: &[Volume],
    dir: &Path,
    source: &Path,
    fstab: &Path,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for v in volumes {
        let name = unit::unit_name(&v.mount_point)?;
        if in_fstab(fstab, &v.mount_point) {
            log::warn!(
                "'{}' is in '{}': left to systemd-fstab-generator, no {name} written",
                v.mount_point.display(),
                fstab.display()
            );
            continue;
        }
        let path = dir.join(&name);
        if path.exists() {
            log::warn!("'{}' exists already: not overwritten", path.display());
            continue;
        }
        fsutil::write_atomic(
            &path,
            unit::render(v, source).as_bytes(),
            FileOptions::mode(0o644),
        )?;
        let (target, how) = unit::install_target(v);
        let links = dir.join(format!("{target}.{how}"));
        fsutil::ensure_dir(&links, 0o755)?;
        let link = links.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("../{name}"), &link)
                .map_err(|e| anyhow::anyhow!("linking '{}': {e}", link.display()))?;
        }
        log::debug!("wrote {}", path.display());
        written.push(name);
    }
    Ok(written)
}

/// The generator's drop-in for `phoenix-ca-wait.service`: its
/// `RequiresMountsFor=` on the CA state directory as configured
/// (`ca.guest_state_dir`), which the shipped unit can only name by its
/// default (nothing is written for the default). Written into `dir` (the generator's output directory), read
/// from `source`. A path systemd cannot take in that list (whitespace) is
/// refused with a warning and no drop-in.
pub fn ca_wait_dropin(dir: &Path, ca_state: &Path, source: &Path) -> Result<Option<PathBuf>> {
    if ca_state
        == Path::new(
            crate::config::CaConfig::default()
                .guest_state_dir
                .as_os_str(),
        )
    {
        // The shipped unit names it already: nothing to add.
        return Ok(None);
    }
    let text = ca_state.to_string_lossy();
    if !ca_state.is_absolute() || text.chars().any(char::is_whitespace) {
        log::warn!(
            "ca.guest_state_dir '{text}' cannot be a RequiresMountsFor= path \
             (absolute, no whitespace): phoenix-ca-wait.service keeps its default"
        );
        return Ok(None);
    }
    let dropins = dir.join("phoenix-ca-wait.service.d");
    fsutil::ensure_dir(&dropins, 0o755)?;
    let path = dropins.join("phoenix-ca-state.conf");
    let unit = format!(
        "# Written by phoenix-mount (a generator) from {}: the CA state\n\
         # directory as configured (ca.guest_state_dir).\n\
         [Unit]\nRequiresMountsFor={}\n",
        source.display(),
        text.replace('%', "%%")
    );
    fsutil::write_atomic(&path, unit.as_bytes(), FileOptions::mode(0o644))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs(mount_point: &str, options: Option<&str>, read_only: Option<bool>) -> MountConfig {
        MountConfig {
            name: None,
            kind: MountType::Nfs,
            server: Some("10.0.0.13".into()),
            path: Some("/quickOS/lxc-persistent-data/103/ssl".into()),
            mount_point: mount_point.into(),
            options: options.map(String::from),
            read_only,
        }
    }

    #[test]
    fn ca_state_is_read_only_with_prompt_lookups() {
        let c = Config::default();
        let v = Volume::resolve(&c, &nfs("/etc/step-ca/ssl", None, None)).unwrap();
        assert!(v.ca_state && v.read_only);
        assert_eq!(v.what, "10.0.0.13:/quickOS/lxc-persistent-data/103/ssl");
        assert_eq!(
            v.options,
            [
                "ro",
                "lookupcache=positive",
                "actimeo=1",
                "nosuid",
                "nodev",
                "noexec"
            ]
        );
    }

    #[test]
    fn other_volumes_are_rw_and_keep_given_options() {
        let c = Config::default();
        let v = Volume::resolve(
            &c,
            &nfs("/mnt/persistent", Some("vers=4.2,lookupcache=all"), None),
        )
        .unwrap();
        assert!(!v.ca_state && !v.read_only);
        assert_eq!(v.options, ["rw", "vers=4.2", "lookupcache=all"]);
        let v = Volume::resolve(&c, &nfs("/etc/step-ca/ssl", Some("rw"), Some(true))).unwrap();
        assert_eq!(v.options[0], "ro");
        let v = Volume::resolve(&c, &nfs("/mnt/x", Some("ro"), None)).unwrap();
        assert!(v.read_only);
    }

    #[test]
    fn control_characters_are_refused() {
        let c = Config::default();
        let mut m = nfs("/mnt/x", None, None);
        m.path = Some("/a\nb".into());
        assert!(Volume::resolve(&c, &m).is_err());
    }

    #[test]
    fn fstab_lines_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fstab");
        std::fs::write(
            &f,
            "# /mnt/commented nfs\nsrv:/x /mnt/persistent nfs defaults 0 0\nsrv:/y /mnt/a\\040b nfs\n",
        )
        .unwrap();
        assert!(in_fstab(&f, Path::new("/mnt/persistent")));
        assert!(in_fstab(&f, Path::new("/mnt/a b")));
        assert!(!in_fstab(&f, Path::new("/mnt/commented")));
        assert!(!in_fstab(
            &dir.path().join("none"),
            Path::new("/mnt/persistent")
        ));
    }

    #[test]
    fn a_volume_keeps_its_name_for_messages() {
        let c = Config::default();
        let mut m = nfs("/mnt/persistent", None, None);
        m.name = Some("persistent".into());
        let v = Volume::resolve(&c, &m).unwrap();
        assert_eq!(v.name.as_deref(), Some("persistent"));
        assert!(
            v.describe().starts_with("persistent: nfs 10.0.0.13:"),
            "{}",
            v.describe()
        );
        m.name = Some("a\nb".into());
        assert!(Volume::resolve(&c, &m).is_err());
    }

    #[test]
    fn the_ca_wait_is_enabled_by_a_link_or_the_docker_dropin_unless_masked() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(ca_wait_enabled(d.path()), None);
        let dropin = d.path().join("docker.service.d/phoenix-ca-wait.conf");
        std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/usr/share/phoenix-hooks/x.conf", &dropin).unwrap();
        assert_eq!(ca_wait_enabled(d.path()), Some(dropin.clone()));
        let wants = d.path().join("multi-user.target.wants");
        std::fs::create_dir(&wants).unwrap();
        let link = wants.join("phoenix-ca-wait.service");
        std::os::unix::fs::symlink("/usr/lib/systemd/system/phoenix-ca-wait.service", &link)
            .unwrap();
        assert_eq!(ca_wait_enabled(d.path()), Some(link));
        std::os::unix::fs::symlink("/dev/null", d.path().join("phoenix-ca-wait.service")).unwrap();
        assert_eq!(ca_wait_enabled(d.path()), None, "masked");
    }

    #[test]
    fn a_waiting_guest_without_a_ca_mount_is_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::default();
        let fstab = d.path().join("fstab");
        std::fs::write(&fstab, "UUID=x / ext4 defaults 0 1\n").unwrap();
        let sd = d.path().join("system");
        let wants = sd.join("multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::fs::write(wants.join("phoenix-ca-wait.service"), "").unwrap();
        let other = Volume::resolve(&c, &nfs("/mnt/persistent", None, None)).unwrap();
        let w = ca_wait_uncovered(&c, std::slice::from_ref(&other), &sd, &fstab).unwrap();
        assert!(
            w.contains("no mount covers ca.guest_state_dir '/etc/step-ca/ssl'"),
            "{w}"
        );
        assert!(w.contains("300 s"), "{w}");
        // Covered: by a volume there or above, or by an fstab line.
        let ca = Volume::resolve(&c, &nfs("/etc/step-ca", None, None)).unwrap();
        assert_eq!(
            ca_wait_uncovered(&c, &[other.clone(), ca], &sd, &fstab),
            None
        );
        std::fs::write(&fstab, "srv:/ssl /etc/step-ca/ssl nfs ro 0 0\n").unwrap();
        assert_eq!(
            ca_wait_uncovered(&c, std::slice::from_ref(&other), &sd, &fstab),
            None
        );
        // Not waiting (the host): nothing to say.
        std::fs::remove_file(&fstab).unwrap();
        assert_eq!(
            ca_wait_uncovered(&c, &[other], &d.path().join("none"), &fstab),
            None
        );
    }

    #[test]
    fn nfs_source_compares_without_trailing_slash() {
        assert_eq!(trim_slash("srv:/x/"), "srv:/x");
        assert_eq!(trim_slash("srv:/"), "srv:/");
    }
}
