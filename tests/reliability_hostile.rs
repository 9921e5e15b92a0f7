//! Hostile and broken input: one table of (tool invocation, input mutation,
//! expected exit code, expected message fragments), run against the real
//! binaries. Every input the tools read from disk or argv is tried
//! truncated, with wrong types, huge, non-UTF-8, as a directory, a FIFO or
//! a symlink, with `..`, and with names carrying shell metacharacters or a
//! leading `-`. After every case: the documented code, a message naming
//! the file and key, no panic, the canary file that `$(touch ..)` or
//! `;touch ..` would create absent, and no file written outside the
//! configured lock and state directories. The `qm guest exec` and
//! `docker info` JSON are covered by the parser properties
//! (tests/reliability_parsers.rs): the fakes print only well-formed output.

mod common;
mod reliability_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// One test world: toolkit.json, the three Phoenix files, a CA state
/// directory with a root and a fresh token, a canary path.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["etc", "ca", "cwd", "pve", "certs"] {
            std::fs::create_dir_all(w.p(d)).unwrap();
        }
        let (rc, rk) = (w.p("ca/root_ca.crt"), w.p("rootkey/root.key"));
        std::fs::create_dir_all(w.p("rootkey")).unwrap();
        reliability_support::step_root("Hostile Root", &rc, &rk, &w.p("steppath"));
        w.write(
            "toolkit.json",
            &json!({"phoenix_etc": w.p("etc"), "lock_dir": w.p("lock"), "state_dir": w.p("state"),
                "ca": {"url": "https://127.0.0.1:1", "state_dir": w.p("ca"),
                       "guest_state_dir": w.p("ca"), "root_cert": "root_ca.crt"},
                "swarm": {}}),
        );
        w.write(
            "etc/phoenix_vm_configs.json",
            &json!({"vms": [{"vmid": 1001, "name": "mgr", "swarm_role": "manager"}]}),
        );
        w.write(
            "etc/phoenix_lxc_configs.json",
            &json!({"lxc_configs": {"101": {"name": "web", "unprivileged": true}}}),
        );
        w.manifest(json!({}));
        w
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn canary(&self) -> PathBuf {
        self.p("canary")
    }

    fn write(&self, rel: &str, v: &Value) {
        std::fs::write(self.p(rel), serde_json::to_vec_pretty(v).unwrap()).unwrap();
    }

    /// The manifest with one entry, `patch` merged into it.
    fn manifest(&self, patch: Value) {
        let mut e = json!({"common_name": "web.test", "sans": ["web.test"], "guest_id": 101,
            "guest_type": "lxc", "cert_path": self.p("certs/web.crt"),
            "key_path": self.p("certs/web.key")});
        for (k, v) in patch.as_object().unwrap() {
            e[k] = v.clone();
        }
        self.write("etc/certificate-manifest.json", &json!([e]));
    }

    /// Every path under the world except the lock and state directories.
    fn files(&self) -> BTreeSet<PathBuf> {
        fn walk(d: &Path, out: &mut BTreeSet<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                out.insert(p.clone());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.dir.path(), &mut out);
        out.retain(|p| !p.starts_with(self.p("lock")) && !p.starts_with(self.p("state")));
        out
    }

    fn run(&self, tool: &str, args: &[String]) -> std::process::Output {
        let bin = project_bin(tool);
        let mut cmd = Command::new(bin);
        // phoenix-hook takes its configuration from the environment only
        // when not given: every tool gets it both ways.
        cmd.args(args)
            .env("PHOENIX_CONFIG", self.p("toolkit.json"))
            .env("PATH", common::path_with_fakes())
            .env("PHOENIX_FAKE_PVE", self.p("pve"))
            .env("STEPPATH", self.p("steppath"))
            .current_dir(self.p("cwd"))
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }
}

fn project_bin(tool: &str) -> &'static str {
    match tool {
        "phoenix-ca" => env!("CARGO_BIN_EXE_phoenix-ca"),
        "phoenix-renew" => env!("CARGO_BIN_EXE_phoenix-renew"),
        "phoenix-swarm" => env!("CARGO_BIN_EXE_phoenix-swarm"),
        "phoenix-mount" => env!("CARGO_BIN_EXE_phoenix-mount"),
        "phoenix-hook" => env!("CARGO_BIN_EXE_phoenix-hook"),
        other => panic!("no tool {other}"),
    }
}

type Mutate = Box<dyn Fn(&World)>;

/// One row: what is done to the world, the invocation, the exit code and
/// what stderr must say.
struct Case {
    name: String,
    mutate: Mutate,
    tool: &'static str,
    args: Vec<String>,
    code: i32,
    says: Vec<String>,
}

fn bytes(rel: &'static str, b: Vec<u8>) -> Mutate {
    Box::new(move |w: &World| {
        let _ = std::fs::remove_file(w.p(rel));
        std::fs::write(w.p(rel), &b).unwrap()
    })
}

fn truncated(rel: &'static str) -> Mutate {
    Box::new(move |w: &World| {
        let b = std::fs::read(w.p(rel)).unwrap();
        std::fs::write(w.p(rel), &b[..b.len() / 2]).unwrap()
    })
}

/// `v` with every `CANARY` in its strings replaced by the canary's path.
fn with_canary(w: &World, v: &Value) -> Value {
    let text = v
        .to_string()
        .replace("CANARY", &w.canary().display().to_string());
    serde_json::from_str(&text).unwrap()
}

fn patched(rel: &'static str, pointer: &'static str, v: Value) -> Mutate {
    Box::new(move |w: &World| {
        let mut doc: Value = serde_json::from_slice(&std::fs::read(w.p(rel)).unwrap()).unwrap();
        *doc.pointer_mut(pointer).unwrap() = with_canary(w, &v);
        w.write(rel, &doc);
    })
}

fn huge(rel: &'static str, size: usize) -> Mutate {
    Box::new(move |w: &World| {
        let mut b = vec![b' '; size];
        b[0] = b'{';
        std::fs::write(w.p(rel), b).unwrap()
    })
}

fn replaced(rel: &'static str, by: &'static str) -> Mutate {
    Box::new(move |w: &World| {
        let p = w.p(rel);
        let _ = std::fs::remove_file(&p);
        match by {
            "dir" => std::fs::create_dir(&p).unwrap(),
            "fifo" => {
                nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
            }
            "missing" => {}
            "/dev/zero" => std::os::unix::fs::symlink("/dev/zero", &p).unwrap(),
            other => panic!("{other}"),
        }
    })
}

fn entry(patch: Value) -> Mutate {
    Box::new(move |w: &World| w.manifest(with_canary(w, &patch)))
}

const NON_UTF8: &[u8] = b"{\"phoenix_etc\": \"\xff\xfe\xc0\"}";

fn table(w: &World) -> Vec<Case> {
    let canary = w.canary().display().to_string();
    let subst = |s: &str| s.replace("CANARY", &canary);
    let mut t = Vec::new();
    let mut add =
        |name: &str, mutate: Mutate, tool: &'static str, args: &[&str], code, says: &[&str]| {
            t.push(Case {
                name: name.to_string(),
                mutate,
                tool,
                args: args.iter().map(|a| subst(a)).collect(),
                code,
                says: says.iter().map(|s| subst(s)).collect(),
            })
        };
    let tk = "toolkit.json";
    // toolkit.json, read by every tool.
    for (tool, args) in [
        ("phoenix-renew", &["status"][..]),
        ("phoenix-swarm", &["status"][..]),
        ("phoenix-ca", &["status", "--no-health"][..]),
        ("phoenix-mount", &["check"][..]),
        ("phoenix-hook", &["101", "pre-start"][..]),
    ] {
        add(
            &format!("{tool}: toolkit.json truncated"),
            truncated(tk),
            tool,
            args,
            2,
            &["toolkit.json"],
        );
        add(
            &format!("{tool}: toolkit.json non-UTF-8"),
            bytes(tk, NON_UTF8.to_vec()),
            tool,
            args,
            2,
            &["toolkit.json"],
        );
    }
    let rs = &["status"][..];
    add(
        "toolkit.json: lock_dir a number",
        patched(tk, "/lock_dir", json!(5)),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "lock_dir"],
    );
    add(
        "toolkit.json: ca.url a list",
        patched(tk, "/ca/url", json!([])),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "ca.url"],
    );
    add(
        "toolkit.json: unknown key",
        patched(tk, "/swarm", json!({"bogus": 1})),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "bogus"],
    );
    add(
        "toolkit.json: 17 MiB",
        huge(tk, 17 << 20),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "larger than 16777216 bytes"],
    );
    add(
        "toolkit.json: empty",
        bytes(tk, vec![]),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json"],
    );
    add(
        "toolkit.json: a directory",
        replaced(tk, "dir"),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "not a regular file"],
    );
    add(
        "toolkit.json: a FIFO",
        replaced(tk, "fifo"),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json", "not a regular file"],
    );
    add(
        "toolkit.json: missing",
        replaced(tk, "missing"),
        "phoenix-renew",
        rs,
        2,
        &["toolkit.json"],
    );
    add(
        "toolkit.json: phoenix_etc with $(..)",
        patched(tk, "/phoenix_etc", json!("/$(touch CANARY)")),
        "phoenix-renew",
        rs,
        2,
        &["$(touch CANARY)"],
    );

    // phoenix_vm_configs.json (phoenix-swarm, phoenix-mount).
    let vm = "etc/phoenix_vm_configs.json";
    let ss = &["status"][..];
    add(
        "vm configs: truncated",
        truncated(vm),
        "phoenix-swarm",
        ss,
        2,
        &["phoenix_vm_configs.json"],
    );
    add(
        "vm configs: vms an object",
        patched(vm, "/vms", json!({})),
        "phoenix-swarm",
        ss,
        2,
        &["phoenix_vm_configs.json", "vms"],
    );
    add(
        "vm configs: vmid a string",
        patched(vm, "/vms/0/vmid", json!("1001;touch CANARY")),
        "phoenix-swarm",
        ss,
        2,
        &["phoenix_vm_configs.json", "vms[0].vmid"],
    );
    add(
        "vm configs: non-UTF-8",
        bytes(vm, NON_UTF8.to_vec()),
        "phoenix-swarm",
        ss,
        2,
        &["phoenix_vm_configs.json"],
    );
    add(
        "vm configs: 17 MiB",
        huge(vm, 17 << 20),
        "phoenix-swarm",
        ss,
        2,
        &["phoenix_vm_configs.json", "larger than"],
    );
    add(
        "vm configs: truncated (mount)",
        truncated(vm),
        "phoenix-mount",
        &["check", "--vmid", "1001"],
        2,
        &["phoenix_vm_configs.json"],
    );

    // phoenix_lxc_configs.json (phoenix-renew, for an LXC entry's owner).
    let lxc = "etc/phoenix_lxc_configs.json";
    add(
        "lxc configs: truncated",
        truncated(lxc),
        "phoenix-renew",
        rs,
        2,
        &["phoenix_lxc_configs.json"],
    );
    add(
        "lxc configs: lxc_configs a list",
        patched(lxc, "/lxc_configs", json!([])),
        "phoenix-renew",
        rs,
        2,
        &["phoenix_lxc_configs.json", "lxc_configs"],
    );

    // certificate-manifest.json.
    let mf = "etc/certificate-manifest.json";
    add(
        "manifest: truncated",
        truncated(mf),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json"],
    );
    add(
        "manifest: non-UTF-8",
        bytes(mf, NON_UTF8.to_vec()),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json"],
    );
    add(
        "manifest: 17 MiB",
        huge(mf, 17 << 20),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json", "larger than"],
    );
    add(
        "manifest: sans a string",
        entry(json!({"sans": "web.test"})),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json", "[0].sans"],
    );
    add(
        "manifest: guest_id with ;",
        entry(json!({"guest_id": "101;touch CANARY"})),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json", "[0].guest_id"],
    );
    for san in [
        "-evil",
        "a,b",
        "a b",
        "$(touch CANARY)",
        ";touch CANARY",
        "`touch CANARY`",
    ] {
        for args in [&["status"][..], &["run"][..]] {
            add(
                &format!("manifest: SAN {san:?} ({})", args[0]),
                entry(json!({"sans": [san]})),
                "phoenix-renew",
                args,
                2,
                &["certificate-manifest.json", "sans[0]", san],
            );
        }
    }
    for cn in ["-evil", "$(touch CANARY)"] {
        add(
            &format!("manifest: common_name {cn:?}"),
            entry(json!({"common_name": cn, "sans": []})),
            "phoenix-renew",
            &["run"],
            2,
            &["certificate-manifest.json", cn],
        );
    }
    add(
        "manifest: relative cert_path with ..",
        entry(json!({"cert_path": "../web.crt"})),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json", "cert_path"],
    );
    add(
        "manifest: cert_path a directory name",
        entry(json!({"cert_path": "/"})),
        "phoenix-renew",
        rs,
        2,
        &["certificate-manifest.json", "cert_path"],
    );

    // Certificate files: garbage, huge, non-UTF-8, a FIFO where web.crt
    // should be: the plan says it is unreadable and issues anew (nothing
    // is read past the limit, nothing blocks).
    let crt = "certs/web.crt";
    for (what, m) in [
        (
            "garbage",
            bytes(
                crt,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            ),
        ),
        ("non-UTF-8", bytes(crt, vec![0xff; 300])),
        ("17 MiB", huge(crt, 17 << 20)),
        ("a FIFO", replaced(crt, "fifo")),
    ] {
        add(
            &format!("certificate file {what}"),
            m,
            "phoenix-renew",
            &["run", "--dry-run"],
            0,
            &["web.test", "issue", "certificate unreadable"],
        );
    }

    // ca.ready: the waiter keeps waiting and gives up at its bound.
    let wait = &["wait", "--timeout", "1", "--no-health", "--interval", "100"][..];
    let rd = "ca/ca.ready";
    add(
        "ca.ready: garbage",
        bytes(rd, b"ready".to_vec()),
        "phoenix-ca",
        wait,
        124,
        &["unparseable", "ca.ready"],
    );
    add(
        "ca.ready: truncated JSON",
        bytes(rd, b"{\"version\":1,\"gener".to_vec()),
        "phoenix-ca",
        wait,
        124,
        &["unparseable"],
    );
    add(
        "ca.ready: wrong types",
        bytes(
            rd,
            br#"{"version":"1","generation":5,"ca_url":[],"fingerprint":{},"written_at":0}"#
                .to_vec(),
        ),
        "phoenix-ca",
        wait,
        124,
        &["unparseable"],
    );
    add(
        "ca.ready: 70 KiB",
        huge(rd, 70 << 10),
        "phoenix-ca",
        wait,
        124,
        &["unparseable", "larger than 65536 bytes"],
    );
    add(
        "ca.ready: non-UTF-8",
        bytes(rd, NON_UTF8.to_vec()),
        "phoenix-ca",
        wait,
        124,
        &["unparseable"],
    );
    add(
        "ca.ready: a directory",
        replaced(rd, "dir"),
        "phoenix-ca",
        wait,
        124,
        &["unparseable", "not a regular file"],
    );
    add(
        "ca.ready: a FIFO",
        replaced(rd, "fifo"),
        "phoenix-ca",
        wait,
        124,
        &["unparseable", "not a regular file"],
    );
    add(
        "ca.ready: symlink to /dev/zero",
        replaced(rd, "/dev/zero"),
        "phoenix-ca",
        wait,
        124,
        &["unparseable", "not a regular file"],
    );
    add(
        "ca.ready: --state-dir with $(..)",
        Box::new(|_| {}),
        "phoenix-ca",
        &[
            "wait",
            "--timeout",
            "1",
            "--no-health",
            "--state-dir",
            "/$(touch CANARY)",
        ],
        124,
        &["$(touch CANARY)"],
    );

    // Hook argv, as Proxmox passes it (VMID PHASE).
    for vmid in ["abc", "$(touch CANARY)", "-5", "0", "99999999999"] {
        add(
            &format!("hook: VMID {vmid:?}"),
            Box::new(|_| {}),
            "phoenix-hook",
            &[vmid, "pre-start"],
            2,
            &["VMID"],
        );
    }
    add(
        "hook: no phase",
        Box::new(|_| {}),
        "phoenix-hook",
        &["101"],
        2,
        &["PHASE"],
    );
    // An unknown phase is not an error: a future Proxmox phase must not
    // block a guest's start (documented in docs/hook.md).
    add(
        "hook: phase ;touch",
        Box::new(|_| {}),
        "phoenix-hook",
        &["101", ";touch CANARY"],
        0,
        &["unknown phase ';touch CANARY'"],
    );
    add(
        "hook: phase $(..)",
        Box::new(|_| {}),
        "phoenix-hook",
        &["101", "$(touch CANARY)"],
        0,
        &["unknown phase"],
    );
    t
}

#[test]
fn hostile_inputs_get_their_code_and_message_and_run_nothing() {
    let cases = table(&World::new()).len();
    let mut violations = Vec::new();
    for i in 0..cases {
        // A fresh world per case: mutations do not add up.
        let w = World::new();
        let case = table(&w).swap_remove(i);
        (case.mutate)(&w);
        let before = w.files();
        let out = w.run(case.tool, &case.args);
        // What the operator sees: stderr, and stdout for a plan.
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let here = format!("{} ({} {:?})", case.name, case.tool, case.args);
        if out.status.code() != Some(case.code) {
            violations.push(format!(
                "{here}: exit {:?}, want {}\n{err}",
                out.status.code(),
                case.code
            ));
        }
        for s in &case.says {
            if !err.contains(s.as_str()) {
                violations.push(format!("{here}: stderr lacks {s:?}\n{err}"));
            }
        }
        if err.contains("panicked at") {
            violations.push(format!("{here}: panicked\n{err}"));
        }
        if w.canary().exists() {
            violations.push(format!("{here}: a shell ran on the data (canary created)"));
        }
        let after = w.files();
        let new: Vec<_> = after.difference(&before).collect();
        if !new.is_empty() {
            violations.push(format!("{here}: wrote outside its paths: {new:?}"));
        }
    }
    eprintln!("{cases} hostile inputs, {} violations", violations.len());
    assert!(violations.is_empty(), "{}", violations.join("\n\n"));
    reliability_support::figures(&[
        ("hostile-inputs", "hostile or broken inputs (config, Phoenix files, manifest, certificate files, ca.ready, hook argv) given to the real binaries", cases.to_string()),
        ("hostile-violations", "cases with a wrong exit code, a message not naming file and key, a panic, a shell run on the data, or a write outside the configured paths", violations.len().to_string()),
    ]);
}
