//! The Debian package: scripts/build-deb.sh builds it from the test build's
//! binaries, lintian finds no error or warning in it, its contents are
//! what README.md promises, it installs into a throwaway root with `dpkg
//! --root`, its units verify there with `systemd-analyze verify --root`
//! (silently), every binary answers `--version` from the root, the
//! generator writes nothing without `mounts`, nothing is enabled (neither
//! by the install nor by `systemctl preset-all`), and a purge removes it
//! all, the operator's enable links included.
//!
//! `dpkg --root` with `--force-script-chrootless`: the maintainer scripts
//! run without a chroot (the empty root has no /bin/sh), with `DPKG_ROOT`
//! set, which they honour. `--force-depends`: the root has no libc6.

mod common;
mod deb_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use deb_support::{build_deb as build, project, run, text};
use phoenix_hooks::config::Config;

const BINARIES: [&str; 6] = [
    "phoenix-ca",
    "phoenix-deploy",
    "phoenix-hook",
    "phoenix-mount",
    "phoenix-renew",
    "phoenix-swarm",
];

/// The units with an [Install] section: what an operator may enable.
const ENABLEABLE: [&str; 4] = [
    "phoenix-ca-wait.service",
    "phoenix-renew.timer",
    "phoenix-sync-boot.service",
    "phoenix-sync.target",
];

/// Every enable link (a symlink under a `.wants`/`.requires` directory,
/// or an alias) to a phoenix unit under `etc/systemd` of `root`.
fn phoenix_links(root: &Path) -> Vec<String> {
    if !root.join("etc/systemd").exists() {
        return Vec::new();
    }
    let out = run(Command::new("find").arg(root.join("etc/systemd")).args([
        "-type",
        "l",
        "-name",
        "phoenix-*",
    ]));
    text(&out.stdout).lines().map(String::from).collect()
}

/// `systemctl --root=ROOT ARGS...`: enable, preset, without a manager.
fn systemctl(root: &Path, args: &[&str]) -> String {
    let out = run(Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args(args)
        .env("SYSTEMD_LOG_COLOR", "0"));
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "--log=/dev/null",
            "--force-script-chrootless",
            "--force-depends",
            "--force-not-root",
        ]);
    cmd
}

/// Every unit name under `usr/lib/systemd/system` of `root` (not drop-ins).
fn units(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("usr/lib/systemd/system"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".d"))
        .collect();
    v.sort();
    v
}

#[test]
fn package_builds_installs_verifies_and_purges() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build(tmp.path());

    // --- lintian: no error, no warning, no stale override ----------------
    // Info tags (I:) are allowed, and said; an override needs its reason
    // written in packaging/lintian-overrides.
    let out = Command::new("lintian")
        // --fail-on: exit 2 on an error or a warning (not with
        // --show-overrides, which makes any override fail the run).
        .args(["--pedantic", "--info", "--tag-display-limit=0"])
        .args(["--fail-on", "error,warning"])
        .arg(&deb)
        .output()
        .expect("lintian is needed: apt-get install lintian");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| {
            l.starts_with("E:")
                || l.starts_with("W:")
                || l.contains("unused-override")
                || l.contains("mismatched-override")
        })
        .collect();
    assert!(
        bad.is_empty() && out.status.success(),
        "lintian ({}):\n{}\n--- all it said:\n{said}",
        out.status,
        bad.join("\n")
    );
    eprintln!("lintian:\n{said}");

    // --- What the archive holds ---------------------------------------
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout);
    let entries: BTreeSet<String> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f[0], f[5].trim_start_matches('.'))
        })
        .collect();
    let mut want: Vec<String> = Vec::new();
    for b in BINARIES {
        want.push(format!("-rwxr-xr-x /usr/bin/{b}"));
        want.push(format!("-rw-r--r-- /usr/share/man/man1/{b}.1.gz"));
        want.push(format!(
            "-rw-r--r-- /usr/share/bash-completion/completions/{b}"
        ));
        want.push(format!("-rw-r--r-- /usr/share/zsh/vendor-completions/_{b}"));
        want.push(format!(
            "-rw-r--r-- /usr/share/fish/vendor_completions.d/{b}.fish"
        ));
    }
    for sub in [
        "ca-wait",
        "ca-publish",
        "deploy-run",
        "deploy-status",
        "renew-run",
        "swarm-status",
    ] {
        want.push(format!("-rw-r--r-- /usr/share/man/man1/phoenix-{sub}.1.gz"));
    }
    for u in [
        "phoenix-ca-wait.service",
        "phoenix-deploy.service",
        "phoenix-renew.service",
        "phoenix-renew.timer",
        "phoenix-renew-sync.service",
        "phoenix-swarm.service",
        "phoenix-sync.target",
        "phoenix-renew.service.d/phoenix-sync.conf",
    ] {
        want.push(format!("-rw-r--r-- /usr/lib/systemd/system/{u}"));
    }
    want.extend(
        [
            "lrwxrwxrwx /usr/lib/systemd/system-generators/phoenix-mount",
            "-rw-r--r-- /usr/lib/systemd/system-preset/80-phoenix-hooks.preset",
            "-rwxr-xr-x /usr/share/phoenix-hooks/phoenix-hook",
            "-rw-r--r-- /usr/share/phoenix-hooks/examples/toolkit.json",
            "-rw-r--r-- /usr/share/phoenix-hooks/docker.service.d/phoenix-ca-wait.conf",
            "-rw-r--r-- /usr/share/phoenix-hooks/step-ca.service.d/phoenix-ca-publish.conf",
            "-rw-r--r-- /etc/phoenix/toolkit.json",
            "-rw-r--r-- /usr/share/doc/phoenix-hooks/copyright",
            "-rw-r--r-- /usr/share/lintian/overrides/phoenix-hooks",
            "-rw-r--r-- /usr/share/doc/phoenix-hooks/changelog.Debian.gz",
            "-rw-r--r-- /usr/share/doc/phoenix-hooks/README.md.gz",
            "-rw-r--r-- /usr/share/doc/phoenix-hooks/swarm.md.gz",
            "-rw-r--r-- /usr/share/doc/phoenix-hooks/deploy.md.gz",
            "-rw-r--r-- /usr/lib/tmpfiles.d/phoenix-hooks.conf",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = want.iter().filter(|w| !entries.contains(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{listing}");
    // Files are root's; a drop-in for another package's unit is never
    // active on install (only an example under /usr/share).
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "{listing}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.contains("/usr/lib/systemd/system/docker.service.d")
                || e.contains("/usr/lib/systemd/system/step-ca.service.d")),
        "{listing}"
    );
    let field = |f: &str| {
        text(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f)).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "phoenix-hooks");
    // The binaries' version, then the packaging's revision
    // (packaging/changelog's newest entry).
    let version = field("Version");
    assert!(
        version
            .strip_prefix(concat!(env!("CARGO_PKG_VERSION"), "-"))
            .is_some_and(|rev| !rev.is_empty() && rev.chars().all(|c| c.is_ascii_digit())),
        "{version}"
    );
    let changelog = std::fs::read_to_string(project().join("packaging/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("phoenix-hooks ({version}) ")),
        "{changelog}"
    );
    // Depends: every shared library the binaries load, by its package,
    // as dpkg-shlibdeps computes it (libc6 and Rust's unwinder, libgcc_s).
    let depends = field("Depends");
    assert!(
        depends.starts_with("libc6 (>= 2.") && depends.contains("libgcc-s1"),
        "{depends}"
    );
    // A binary linked statically (the release's phoenix-hook and
    // phoenix-ca; scripts/test.sh runs this file with those) carries
    // glibc's code: the control file names glibc's source version
    // (Built-Using, Debian policy 7.8). The test build links none so.
    let statics: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| common::is_static(&deb_support::bin_dir().join(b)))
        .collect();
    let built_using = field("Built-Using");
    if statics.is_empty() {
        assert_eq!(built_using, "", "no static binary");
    } else {
        assert!(
            built_using.starts_with("glibc (= "),
            "static {statics:?}: Built-Using '{built_using}'"
        );
    }
    // The maintainer scripts have their unit lists filled in.
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        let s = std::fs::read_to_string(control.join(script)).unwrap();
        assert!(!s.contains("_UNITS#"), "{script}:\n{s}");
        assert!(s.contains("phoenix-renew.timer"), "{script}:\n{s}");
    }
    // md5sums: every file but the conffile (dpkg keeps its sum itself).
    let md5sums = std::fs::read_to_string(control.join("md5sums")).unwrap();
    let summed: BTreeSet<String> = md5sums
        .lines()
        .map(|l| format!("/{}", l.split_once("  ").unwrap().1))
        .collect();
    let files: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.starts_with('-'))
        .map(|e| e.split_once(' ').unwrap().1.to_string())
        .filter(|f| f != "/etc/phoenix/toolkit.json")
        .collect();
    assert_eq!(summed, files, "DEBIAN/md5sums");

    // --- Install into a throwaway root ------------------------------------
    let root = tmp.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    run(dpkg(&root).arg("-i").arg(&deb));
    let status = std::fs::read_to_string(admin.join("status")).unwrap();
    assert!(status.contains("Status: install ok installed"), "{status}");
    // Every file as the md5sums say.
    let verify = run(dpkg(&root).args(["--verify", "phoenix-hooks"]));
    assert!(
        text(&verify.stdout).trim().is_empty(),
        "{}",
        text(&verify.stdout)
    );
    assert!(
        status.contains("Conffiles:\n /etc/phoenix/toolkit.json "),
        "{status}"
    );

    // The lock directory: the tmpfiles.d snippet makes it root's, 0755
    // (postinst runs systemd-tmpfiles in the root; boot does it again).
    let conf = std::fs::read_to_string(root.join("usr/lib/tmpfiles.d/phoenix-hooks.conf")).unwrap();
    assert!(
        conf.lines()
            .any(|l| l == "d /run/lock/phoenix 0755 root root -"),
        "{conf}"
    );
    let lock_dir = std::fs::symlink_metadata(root.join("run/lock/phoenix"))
        .expect("postinst made the lock directory");
    {
        use std::os::unix::fs::MetadataExt;
        assert!(lock_dir.is_dir());
        assert_eq!(lock_dir.mode() & 0o7777, 0o755);
        assert_eq!(lock_dir.uid(), nix::unistd::geteuid().as_raw());
    }
    assert_eq!(Config::default().lock_dir, Path::new("/run/lock/phoenix"));

    // Nothing enabled: no .wants/.requires link anywhere in the root.
    let found = run(Command::new("find").arg(&root).args([
        "-name",
        "*.wants",
        "-o",
        "-name",
        "*.requires",
    ]));
    assert!(
        text(&found.stdout).trim().is_empty(),
        "{}",
        text(&found.stdout)
    );
    // Nor by `systemctl preset-all` (a first boot, an image builder): the
    // package's preset disables its units, which systemd would otherwise
    // enable (no preset says "disable *" on Debian): as a check that this
    // can fail, without the preset file preset-all does enable them.
    let preset = root.join("usr/lib/systemd/system-preset/80-phoenix-hooks.preset");
    let kept = tmp.path().join("preset");
    std::fs::rename(&preset, &kept).unwrap();
    systemctl(&root, &["preset-all"]);
    assert!(
        !phoenix_links(&root).is_empty(),
        "preset-all enabled nothing even without the preset"
    );
    systemctl(&root, &[&["disable"][..], &ENABLEABLE[..]].concat());
    assert!(
        phoenix_links(&root).is_empty(),
        "{:?}",
        phoenix_links(&root)
    );
    std::fs::rename(&kept, &preset).unwrap();
    let said = systemctl(&root, &["preset-all"]);
    assert!(
        phoenix_links(&root).is_empty(),
        "preset-all enabled {:?}:\n{said}",
        phoenix_links(&root)
    );

    // Every binary runs from the root.
    for b in BINARIES {
        let out = run(Command::new(root.join("usr/bin").join(b)).arg("--version"));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("{b} {}", env!("CARGO_PKG_VERSION"))
        );
    }

    // Units verify in the root. systemctl (phoenix-renew-sync.service's
    // ExecStart=) and /bin/sh (phoenix-sync-boot.service's) are systemd's
    // and dash's files, present on every target: stubs here.
    for stub in ["usr/bin/systemctl", "bin/sh"] {
        let p = root.join(stub);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let names = units(&root);
    assert_eq!(names.len(), 8, "{names:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["--man=no", "--recursive-errors=no"])
        .args(names.iter().map(|n| format!("/usr/lib/systemd/system/{n}")))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify --root said:\n{said}"
    );
    // Documentation= references resolve inside the package (--man=no
    // above: the host's man has no MANPATH into the root).
    for n in &names {
        let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(n)).unwrap();
        for doc in unit
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
            .flat_map(str::split_whitespace)
        {
            let path = if let Some(page) = doc.strip_prefix("man:") {
                let (name, sect) = page.trim_end_matches(')').split_once('(').unwrap();
                format!("usr/share/man/man{sect}/{name}.{sect}.gz")
            } else {
                doc.strip_prefix("file:/").unwrap().to_string()
            };
            assert!(root.join(&path).is_file(), "{n}: {doc} not in the package");
        }
    }

    // The generator, as systemd runs it, with the shipped configuration
    // (no "mounts"): writes nothing.
    let gen_link = root.join("usr/lib/systemd/system-generators/phoenix-mount");
    // A relative link: it holds in any root (lintian's
    // absolute-symlink-in-top-level-folder otherwise).
    let target = std::fs::read_link(&gen_link).unwrap();
    assert_eq!(target, Path::new("../../../bin/phoenix-mount"));
    let out_dir = tmp.path().join("generated");
    std::fs::create_dir(&out_dir).unwrap();
    run(Command::new(&gen_link)
        .args([&out_dir, &out_dir, &out_dir])
        .env("PHOENIX_CONFIG", root.join("etc/phoenix/toolkit.json")));
    let written: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(written.is_empty(), "generator wrote {written:?}");

    // The operator enables the units (README.md, "Install"); a purge
    // removes those links with the package (deb-systemd-helper purge).
    systemctl(&root, &[&["enable"][..], &ENABLEABLE[..]].concat());
    let enabled = phoenix_links(&root);
    for link in [
        "multi-user.target.wants/phoenix-ca-wait.service",
        "multi-user.target.wants/phoenix-sync-boot.service",
        "timers.target.wants/phoenix-renew.timer",
    ] {
        assert!(
            enabled.iter().any(|l| l.ends_with(link)),
            "{link}: {enabled:?}"
        );
    }

    // Purge removes every file, the conffile included.
    run(dpkg(&root).args(["--purge", "phoenix-hooks"]));
    assert!(
        phoenix_links(&root).is_empty(),
        "purge left enable links: {:?} (were {enabled:?})",
        phoenix_links(&root)
    );
    let state = root.join("var/lib/systemd/deb-systemd-helper-enabled");
    if state.exists() {
        let left = run(Command::new("find")
            .arg(&state)
            .args(["-name", "*phoenix*"]));
        assert!(
            text(&left.stdout).trim().is_empty(),
            "{}",
            text(&left.stdout)
        );
    }
    assert!(
        !root.join("run/lock/phoenix").exists(),
        "lock directory left"
    );
    for stub in ["usr/bin/systemctl", "bin/sh"] {
        std::fs::remove_file(root.join(stub)).unwrap();
    }
    for b in BINARIES {
        assert!(!root.join("usr/bin").join(b).exists(), "{b} left");
    }
    assert!(!root.join("etc/phoenix/toolkit.json").exists());
    assert!(!gen_link.exists() && gen_link.symlink_metadata().is_err());
}

#[test]
fn shipped_example_config_loads_and_is_the_defaults() {
    // The example says "every value below is the built-in default".
    let path = project().join("packaging/toolkit.json");
    let mut loaded = Config::load_file(&path).unwrap();
    assert!(loaded.comment.is_some(), "the example explains itself");
    loaded.comment = None;
    assert_eq!(
        format!("{loaded:#?}"),
        format!("{:#?}", Config::default()),
        "packaging/toolkit.json differs from the defaults"
    );
    // It names every key there is: a key added to config.rs must be added
    // to the example (and to README.md's table).
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let debug = format!("{:#?}", Config::default());
    for line in debug.lines() {
        let Some((key, _)) = line.trim().split_once(": ") else {
            continue;
        };
        if key == "comment" || key.starts_with('"') {
            continue;
        }
        let present = json.as_object().unwrap().contains_key(key)
            || ["ca", "renewal", "swarm", "deploy", "cluster"]
                .iter()
                .any(|s| json[s].as_object().unwrap().contains_key(key));
        assert!(present, "key '{key}' missing from packaging/toolkit.json");
    }
}

#[test]
fn man_pages_and_completions_come_from_the_clap_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    deb_support::docs::write_all(tmp.path()).unwrap();
    let page = std::fs::read_to_string(tmp.path().join("man/man1/phoenix-ca-wait.1")).unwrap();
    // The --timeout option of `phoenix-ca wait`, as --help shows it.
    assert!(page.contains(".TH phoenix-ca-wait 1"), "{page}");
    assert!(page.contains("\\-\\-timeout"), "{page}");
    let bash = std::fs::read_to_string(tmp.path().join("completions/bash/phoenix-renew")).unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("status"),
        "{bash}"
    );
    let fish =
        std::fs::read_to_string(tmp.path().join("completions/fish/phoenix-swarm.fish")).unwrap();
    assert!(fish.contains("-a \"ensure\""), "{fish}");
}
