//! Fixtures of the hook and mount tests: a temporary Phoenix layout (a
//! storage root with a "quickOS" storage, the CA container 103, containers
//! with bind mounts, VMs 1001/1002, an empty stand-in for `/etc/pve`) and
//! a way to run a binary in a private mount namespace where chosen
//! directories are mount points, or where the mount table the binary reads
//! is a text of the test's (a file bind-mounted over the process's
//! `/proc/PID/mountinfo`: file system types no test can mount, zfs, nfs).
//! Mounts made there vanish with the namespace: nothing is ever left on
//! the host.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The script run by `unshare -m`: bind-mount each `SRC DST` pair, then
/// exec the rest. unshare makes the new namespace's mounts private, so
/// nothing propagates back to the host.
const NS_SCRIPT: &str = r#"
table="$1"
shift
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2" || exit 99
  shift 2
done
shift
# exec keeps this pid: the binary reads this file as /proc/self/mountinfo.
if [ -n "$table" ]; then mount --bind "$table" "/proc/$$/mountinfo" || exit 99; fi
exec "$@"
"#;

/// The phoenix-hook under test: this build's, or the one
/// `PHOENIX_TEST_HOOK_BIN` names (scripts/test.sh runs this file again
/// with the hook linked as the release ships it, a static PIE).
pub fn hook_bin() -> PathBuf {
    std::env::var_os("PHOENIX_TEST_HOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_phoenix-hook")))
}

/// Run `cmd` in a private mount namespace after `binds` (source,
/// target) bind mounts. A bind of a directory onto itself makes it a
/// mount point whose files are the host's, so tests can look at them.
pub fn in_namespace(binds: &[(&Path, &Path)], cmd: &Command) -> Output {
    in_namespace_with(binds, None, cmd)
}

/// As [`in_namespace`], and `cmd` reads `table` (mountinfo lines, see
/// [`mount_line`]) as its mount table.
pub fn in_namespace_with_table(binds: &[(&Path, &Path)], table: &str, cmd: &Command) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), table).unwrap();
    in_namespace_with(binds, Some(file.path()), cmd)
}

/// One mountinfo line: `fs_type` `source` mounted at `at`.
pub fn mount_line(id: u32, at: &Path, fs_type: &str, source: &str) -> String {
    format!(
        "{id} 1 0:{id} / {} rw,relatime - {fs_type} {source} rw\n",
        at.display()
    )
}

fn in_namespace_with(binds: &[(&Path, &Path)], table: Option<&Path>, cmd: &Command) -> Output {
    let mut ns = Command::new("unshare");
    ns.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        NS_SCRIPT,
        "sh",
    ]);
    ns.arg(table.map_or(Path::new(""), |t| t));
    for (src, dst) in binds {
        ns.arg(src).arg(dst);
    }
    ns.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => ns.env(k, v),
            None => ns.env_remove(k),
        };
    }
    let out = ns.output().expect("running unshare");
    assert_ne!(
        out.status.code(),
        Some(99),
        "bind mount in the namespace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A temporary Phoenix layout and its toolkit.json.
pub struct Layout {
    pub dir: tempfile::TempDir,
    /// Stands for /mnt/pve.
    pub storage_root: PathBuf,
    /// Stands for /mnt/pve/quickOS.
    pub storage: PathBuf,
    /// The CA state directory (host view).
    pub state: PathBuf,
    /// phoenix_etc.
    pub etc: PathBuf,
    /// Stands for /etc/pve (pve_dir): `lxc/` and `qemu-server/`, empty,
    /// and no `storage.cfg` until a test writes one.
    pub pve: PathBuf,
    /// toolkit.json.
    pub config: PathBuf,
}

impl Layout {
    /// The layout, with `ca_extra` merged into toolkit.json's `ca` object
    /// and `extra` into its top level.
    pub fn new(ca_extra: serde_json::Value, extra: serde_json::Value) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let storage_root = dir.path().join("pve");
        let storage = storage_root.join("quickOS");
        let state = storage.join("lxc-persistent-data/103/ssl");
        let etc = dir.path().join("etc");
        let pve = dir.path().join("etc-pve");
        std::fs::create_dir_all(pve.join("lxc")).unwrap();
        std::fs::create_dir_all(pve.join("qemu-server")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let local = dir.path().join("local/data");
        std::fs::create_dir_all(&local).unwrap();
        let lxc = serde_json::json!({
            "nvidia_driver_version": "x",
            "lxc_configs": {
                "103": {"name": "Step-CA", "unprivileged": true,
                        "mount_points": [{"host_path": state, "container_path": "/etc/step-ca/ssl"}]},
                "101": {"name": "Nginx-Phoenix", "gpu_assignment": "none",
                        "mount_points": [
                            {"host_path": storage.join("lxc-persistent-data/101/logs"),
                             "container_path": "/var/log/nginx", "owner_uid": 33},
                            {"host_path": state, "container_path": "/etc/step-ca/ssl"}]},
                "102": {"name": "Traefik-Internal",
                        "mount_points": [{"host_path": state, "container_path": "/etc/step-ca/ssl"}]},
                "104": {"name": "Local-Data",
                        "mount_points": [{"host_path": local, "container_path": "/data"}]},
                "900": {"name": "Copy-Base", "unprivileged": true}
            }
        });
        let vms = serde_json::json!({
            "vm_defaults": {"cores": 2},
            "vms": [
                {"vmid": 9000, "name": "ubuntu-template", "is_template": true},
                {"vmid": 1001, "name": "Portainer", "swarm_role": "manager",
                 "volumes": [{"type": "nfs", "server": "10.0.0.13",
                              "path": "/quickOS/lxc-persistent-data/103/ssl",
                              "mount_point": "/etc/step-ca/ssl"}]},
                {"vmid": 1002, "name": "drphoenix", "swarm_role": "worker"}
            ]
        });
        std::fs::write(etc.join("phoenix_lxc_configs.json"), lxc.to_string()).unwrap();
        std::fs::write(etc.join("phoenix_vm_configs.json"), vms.to_string()).unwrap();
        let mut ca = serde_json::json!({
            "guest_id": 103,
            "url": format!("https://127.0.0.1:{}", free_port()),
            "state_dir": state,
            "post_start_timeout_secs": 1,
            "health_timeout_secs": 2
        });
        merge(&mut ca, ca_extra);
        let mut toolkit = serde_json::json!({
            "phoenix_etc": etc,
            "storage_root": storage_root,
            "pve_dir": pve,
            "lock_dir": dir.path().join("lock"),
            "ca": ca
        });
        merge(&mut toolkit, extra);
        let config = dir.path().join("toolkit.json");
        std::fs::write(&config, serde_json::to_string_pretty(&toolkit).unwrap()).unwrap();
        Layout {
            dir,
            storage_root,
            storage,
            state,
            etc,
            pve,
            config,
        }
    }

    /// Write `<pve_dir>/storage.cfg`.
    pub fn storage_cfg(&self, text: &str) {
        std::fs::write(self.pve.join("storage.cfg"), text).unwrap();
    }

    /// Write `<pve_dir>/SUB/VMID.conf` (`SUB`: `lxc` or `qemu-server`).
    pub fn guest_conf(&self, sub: &str, vmid: u32, text: &str) {
        std::fs::write(self.pve.join(sub).join(format!("{vmid}.conf")), text).unwrap();
    }

    /// The bind source of container 101's logs.
    pub fn logs(&self) -> PathBuf {
        self.storage.join("lxc-persistent-data/101/logs")
    }

    /// `phoenix-hook --config toolkit.json VMID PHASE`.
    pub fn hook(&self, vmid: &str, phase: &str) -> Command {
        let mut c = Command::new(hook_bin());
        c.arg("--config").arg(&self.config).arg(vmid).arg(phase);
        c.env_remove("PHOENIX_CONFIG");
        c
    }

    /// `phoenix-ca --config toolkit.json ARGS... --state-dir STATE`.
    pub fn phoenix_ca(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phoenix-ca"));
        c.arg("--config").arg(&self.config).args(args);
        c.arg("--state-dir").arg(&self.state);
        c
    }

    /// Run the hook on the host, the storage not mounted.
    pub fn run_unmounted(&self, vmid: &str, phase: &str) -> Output {
        self.hook(vmid, phase).output().unwrap()
    }

    /// Run the hook with the storage mounted (in a private namespace).
    pub fn run_mounted(&self, vmid: &str, phase: &str) -> Output {
        in_namespace(&[(&self.storage, &self.storage)], &self.hook(vmid, phase))
    }

    /// Run the hook reading `table` as its mount table.
    pub fn run_with_table(&self, vmid: &str, phase: &str, table: &str) -> Output {
        in_namespace_with_table(&[], table, &self.hook(vmid, phase))
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
