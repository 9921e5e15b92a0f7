//! Guests own their directories (issue 13): root in a container or a VM
//! writes its own certificate directory, and the CA container writes the
//! CA state directory, while `phoenix-renew` and `phoenix-hook` run as root
//! over them. The attacker here is the test itself, playing the guest,
//! concurrently with the real binaries (real step-ca, fake pct):
//!
//! - `ca.pem` replaced by a link to a host file, with the action pending:
//!   the host file keeps its mode and content and is never delivered;
//! - the `certs` directory replaced by a link to a host directory: nothing
//!   is written there, and only that entry fails;
//! - the new key swapped for a link to a host file between the install
//!   and the push, raced over many runs: the host file is never pushed;
//! - `secrets/` exchanged with a link to a host directory while the CA's
//!   pre-start walks it: no host file or directory changes mode;
//! - the provisioner password and the root certificate at `/dev/zero` or
//!   a 64 GiB sparse file: renewal and the health check fail at once,
//!   naming the file, without reading it;
//! - the certificate's rename failing with EPERM after the key's: the old
//!   pair stays in place, matching.

mod common;
mod hook_support;
mod reliability_support;
mod renew_support;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reliability_support::{figures, pair, temps_in, Pair};
use renew_support::{listing, stderr, Bench};
use serde_json::{json, Value};

/// What a host file the guest points at holds.
const HOST_SECRET: &str = "HOST-ONLY SECRET, never to reach a guest\n";

fn ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
}

/// Edit the bench's toolkit.json in place.
fn edit_config(b: &Bench, f: impl FnOnce(&mut Value)) {
    let path = b.path("toolkit.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// The guest's certificate directory for container `id`.
fn certs(b: &Bench, id: u32) -> PathBuf {
    b.path(&format!("pve/{id}/certs"))
}

/// A container entry with `include_ca` whose action takes the delivered
/// files: the guest appends what it got to `delivered-ID.log`.
fn entry(b: &Bench, name: &str, id: u32) -> Value {
    let (d, drop) = (certs(b, id), b.drop_dir());
    let log = b.path(&format!("delivered-{id}.log"));
    let script = format!(
        "cat {0}/cert.pem {0}/key.pem {0}/ca.pem >> {1}",
        drop.display(),
        log.display()
    );
    json!({"common_name": name, "guest_id": id, "guest_type": "lxc",
        "cert_path": d.join("web.crt"), "key_path": d.join("web.key"), "include_ca": true,
        "post_renewal": {"run": ["sh", "-c", script], "deliver": true}})
}

/// Everything guest `id` was delivered so far.
fn delivered(b: &Bench, id: u32) -> String {
    std::fs::read_to_string(b.path(&format!("delivered-{id}.log"))).unwrap_or_default()
}

/// A host file only root may read, holding [`HOST_SECRET`].
fn host_file(b: &Bench) -> PathBuf {
    let dir = b.path("host");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("secret.pem");
    std::fs::write(&f, HOST_SECRET).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn is_plain(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// Replace `path` by a symbolic link to `target` in one rename, as a
/// guest would (a reader sees the file or the link, never nothing).
fn swap_for_link(path: &Path, target: &Path) {
    let tmp = path.with_extension("guest-link");
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn root_of(b: &Bench) -> phoenix_hooks::cert::Root {
    phoenix_hooks::cert::read_root(&b.ca.root_cert()).unwrap()
}

#[test]
fn a_ca_pem_swapped_for_a_link_is_written_anew_never_followed_nor_delivered() {
    let b = Bench::new();
    let ct = b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", 101)]));
    ok(&b.run(&["run"]));
    let ca = certs(&b, 101).join("ca.pem");
    let chain = std::fs::read(&ca).unwrap();
    let host = host_file(&b);

    // The action left pending: the guest was stopped during a forced run.
    b.pve.set_status(&ct, "stopped");
    // A stopped guest is not a failure: the action waits, pending (exit 0).
    assert_eq!(b.run(&["run", "--force"]).status.code(), Some(0));
    b.pve.set_status(&ct, "running");
    // Then the guest points ca.pem at a host file. The hourly run sees a
    // good pair, fixes owner and mode, repairs the chain, delivers, acts.
    swap_for_link(&ca, &host);
    let out = b.run(&["run"]);
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("refusing '{}'", ca.display())) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(mode_of(&host), 0o600, "the host file's mode changed");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), HOST_SECRET);
    assert!(is_plain(&ca), "ca.pem is still a link");
    assert_eq!(std::fs::read(&ca).unwrap(), chain);
    let got = delivered(&b, 101);
    assert!(
        !got.contains(HOST_SECRET.trim()),
        "the host file was delivered"
    );
    assert_eq!(got.matches("BEGIN EC PRIVATE KEY").count(), 2, "{got}");

    // Again with nothing pending: the owner/mode pass alone.
    swap_for_link(&ca, &host);
    ok(&b.run(&["run"]));
    assert_eq!(mode_of(&host), 0o600);
    assert_eq!(std::fs::read_to_string(&host).unwrap(), HOST_SECRET);
    assert!(is_plain(&ca));
    figures(&[("guestfs-ca-pem-link", "`ca.pem` replaced by a link to a host file (0600) with the action pending: the hourly run leaves the host file's mode and content alone, writes ca.pem anew and delivers the real chain; again with nothing pending (violations)", "0".into())]);
}

#[test]
fn a_certs_dir_swapped_for_a_link_gets_nothing_written_and_fails_alone() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.pve.add_ct(102);
    b.write_manifest(&json!([
        entry(&b, "web.test", 101),
        entry(&b, "api.test", 102)
    ]));
    ok(&b.run(&["run"]));

    let hostdir = b.path("host/etc-ssl");
    std::fs::create_dir_all(&hostdir).unwrap();
    std::fs::write(hostdir.join("keep.pem"), HOST_SECRET).unwrap();
    let d = certs(&b, 101);
    std::fs::rename(&d, d.with_extension("moved")).unwrap();
    symlink(&hostdir, &d).unwrap();
    let other = (
        certs(&b, 102).join("web.crt"),
        certs(&b, 102).join("web.key"),
    );
    let before = std::fs::read(&other.0).unwrap();

    for args in [&["run"][..], &["run", "--force"][..]] {
        let out = b.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "refusing '{}': it is a symbolic link",
                d.display()
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("web.test"), "{err}");
        assert_eq!(
            listing(&hostdir),
            ["keep.pem"],
            "{args:?}: written into the host"
        );
        assert_eq!(
            std::fs::read_to_string(hostdir.join("keep.pem")).unwrap(),
            HOST_SECRET
        );
    }
    // The other entry was still handled (reissued by --force), and matches.
    assert_ne!(std::fs::read(&other.0).unwrap(), before);
    assert!(matches!(
        pair(&other.0, &other.1, &root_of(&b)),
        Pair::Matching { .. }
    ));
    assert!(!delivered(&b, 101).contains(HOST_SECRET.trim()));
    figures(&[("guestfs-certs-dir-link", "a guest's `certs` directory replaced by a link to a host directory: `run` and `run --force` exit 1 naming the link, nothing is written there, the other entry is still reissued and matching (violations)", "0".into())]);
}

#[test]
fn a_key_swapped_for_a_link_between_install_and_push_is_never_pushed() {
    let tries = reliability_support::size("PHOENIX_GUESTFS_TRIES", 200);
    let b = Bench::new();
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", 101)]));
    let host = host_file(&b);
    let key = certs(&b, 101).join("web.key");

    // The guest: each time a new key is installed, it waits a random
    // moment (0-1 ms) and renames a link to the host file over it.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let guest = {
        let (stop, swaps, key, host) = (stop.clone(), swaps.clone(), key.clone(), host.clone());
        std::thread::spawn(move || {
            let mut rng = reliability_support::Rng::from_env();
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                match std::fs::symlink_metadata(&key) {
                    Ok(m) if m.file_type().is_file() && m.ino() != last => {
                        last = m.ino();
                        std::thread::sleep(Duration::from_micros(rng.below(1000)));
                        swap_for_link(&key, &host);
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    let (mut pushed, mut refused, mut violations) = (0, 0, Vec::new());
    for i in 0..tries {
        let out = b.run(&["run", "--force"]);
        let err = stderr(&out);
        match out.status.code() {
            Some(0) => pushed += 1,
            Some(1)
                if err.contains(&format!("refusing '{}'", key.display()))
                    && err.contains("symbolic link") =>
            {
                refused += 1
            }
            c => violations.push(format!("try {i}: exit {c:?}: {err}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap();
    let got = delivered(&b, 101);
    if got.contains(HOST_SECRET.trim()) {
        violations.push("the host file was pushed into the guest".into());
    }
    if mode_of(&host) != 0o600 || std::fs::read_to_string(&host).unwrap() != HOST_SECRET {
        violations.push("the host file changed".into());
    }
    if got.matches("BEGIN EC PRIVATE KEY").count() != pushed {
        violations.push(format!(
            "{pushed} runs delivered, but the guest got other keys"
        ));
    }
    eprintln!(
        "{tries} runs, {} swaps: {pushed} delivered our copy, {refused} refused the link",
        swaps.load(Ordering::Relaxed)
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    if reliability_support::default_sizes("PHOENIX_GUESTFS_TRIES") {
        figures(&[
            ("guestfs-key-swap-runs", "`phoenix-renew run --force` while the guest swaps each new key for a link to a host file 0-1 ms after the install (real step-ca, fake pct)", tries.to_string()),
            ("guestfs-key-swap-violations", "runs that pushed the host file into the guest, changed it, or failed without naming the link", violations.len().to_string()),
        ]);
    }
}

#[test]
fn secrets_exchanged_with_a_link_during_the_ca_pre_start_walk_change_no_host_file() {
    let runs = reliability_support::size("PHOENIX_GUESTFS_WALKS", 100);
    let l = hook_support::Layout::new(json!({}), json!({}));
    let host = l.dir.path().join("host-etc");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("shadow"), HOST_SECRET).unwrap();
    std::fs::set_permissions(host.join("shadow"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(host.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = l.state.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for name in ["shadow", "root_ca_key"] {
        std::fs::write(secrets.join(name), "k").unwrap();
    }
    std::fs::create_dir(secrets.join("sub")).unwrap();
    let link = l.state.join("secrets.link");
    symlink(&host, &link).unwrap();

    // The CA container: secrets/ and the link trade places, non-stop.
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (stop, a, b) = (stop.clone(), secrets.clone(), link.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let flags = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                nix::fcntl::renameat2(None, &a, None, &b, flags).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut violations = Vec::new();
    for i in 0..runs {
        let out = l.run_mounted("103", "pre-start");
        if out.status.code() != Some(0) {
            violations.push(format!(
                "run {i}: exit {:?}: {}",
                out.status.code(),
                stderr(&out)
            ));
        }
        let modes = (mode_of(&host.join("shadow")), mode_of(&host.join("sub")));
        if modes != (0o644, 0o755) {
            violations.push(format!(
                "run {i}: host modes became {:o}, {:o}",
                modes.0, modes.1
            ));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = guest.join().unwrap();
    eprintln!("{runs} pre-starts, {swaps} exchanges");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    if reliability_support::default_sizes("PHOENIX_GUESTFS_WALKS") {
        figures(&[
            ("guestfs-secrets-walks", "CA pre-starts (`phoenix-hook 103 pre-start`) while the CA container exchanges `secrets/` with a link to a host directory non-stop", runs.to_string()),
            ("guestfs-secrets-violations", "pre-starts that failed or changed the mode of a host file or directory", violations.len().to_string()),
        ]);
    }
}

/// `phoenix-ca` with the bench's toolkit.json.
fn phoenix_ca(b: &Bench, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phoenix-ca"))
        .arg("--config")
        .arg(b.path("toolkit.json"))
        .args(args)
        .env_remove("PHOENIX_CONFIG")
        .output()
        .unwrap()
}

/// Put at `path`: a link to /dev/zero, or a 64 GiB sparse file.
fn endless(path: &Path, how: &str) {
    let _ = std::fs::remove_file(path);
    match how {
        "/dev/zero" => symlink("/dev/zero", path).unwrap(),
        _ => std::fs::File::create(path)
            .unwrap()
            .set_len(64 << 30)
            .unwrap(),
    }
}

#[test]
fn password_and_root_at_dev_zero_or_a_sparse_file_fail_at_once_named() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", 101)]));
    // The CA state as the host sees it: a copy of the root and password.
    let state = b.path("ca-state");
    std::fs::create_dir_all(&state).unwrap();
    let (pw, root) = (
        state.join("provisioner_password.txt"),
        state.join("phoenix_root_ca.crt"),
    );
    std::fs::copy(b.ca.password_file(), &pw).unwrap();
    std::fs::copy(b.ca.root_cert(), &root).unwrap();
    edit_config(&b, |c| {
        c["ca"]["provisioner_password_file"] = json!(pw);
        c["ca"]["root_cert"] = json!(root);
    });
    ok(&b.run(&["run"]));
    let crt = certs(&b, 101).join("web.crt");
    let before = std::fs::read(&crt).unwrap();
    let good_pw = std::fs::read(&pw).unwrap();
    let good_root = std::fs::read(&root).unwrap();
    let bound = Duration::from_secs(15);

    for (how, says) in [
        ("/dev/zero", "symbolic link (not followed)"),
        ("sparse", "larger than 65536 bytes"),
    ] {
        endless(&pw, how);
        let t = Instant::now();
        let out = b.run(&["run", "--force"]);
        let err = stderr(&out);
        assert!(
            t.elapsed() < bound,
            "password {how}: took {:?}",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "password {how}: {err}");
        assert!(
            err.contains(&format!("refusing '{}'", pw.display())) && err.contains(says),
            "password {how}: {err}"
        );
        assert_eq!(std::fs::read(&crt).unwrap(), before, "password {how}");
    }
    std::fs::remove_file(&pw).unwrap();
    std::fs::write(&pw, &good_pw).unwrap();

    // A fresh token, so that a waiter goes on to the health check.
    let state_s = state.to_str().unwrap();
    let url = b.ca.url();
    let fp = b.ca.fingerprint();
    ok(&phoenix_ca(
        &b,
        &[
            "publish",
            "--no-health",
            "--state-dir",
            state_s,
            "--ca-url",
            &url,
            "--fingerprint",
            &fp,
        ],
    ));
    let wait = [
        "wait",
        "--state-dir",
        state_s,
        "--ca-url",
        &url,
        "--timeout",
        "2",
        "--interval",
        "100",
    ];
    ok(&phoenix_ca(&b, &wait));
    for (how, says) in [
        ("/dev/zero", "symbolic link (not followed)"),
        ("sparse", "larger than 1048576 bytes"),
    ] {
        endless(&root, how);
        let named = format!("refusing '{}'", root.display());
        // Renewal: the root is read first, bounded.
        let t = Instant::now();
        let out = b.run(&["run", "--force"]);
        let err = stderr(&out);
        assert!(t.elapsed() < bound, "root {how}: took {:?}", t.elapsed());
        assert_eq!(out.status.code(), Some(1), "root {how}: {err}");
        assert!(
            err.contains(&named) && err.contains(says),
            "root {how}: {err}"
        );
        // A waiter's health check (a VM's wait, the CA's post-start gate):
        // each check fails at once, named; the wait ends at its bound.
        let t = Instant::now();
        let out = phoenix_ca(&b, &wait);
        let err = stderr(&out);
        assert!(
            t.elapsed() < bound,
            "wait, root {how}: took {:?}",
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(124), "wait, root {how}: {err}");
        assert!(
            err.contains(&named) && err.contains(says),
            "wait, root {how}: {err}"
        );
    }
    std::fs::remove_file(&root).unwrap();
    std::fs::write(&root, &good_root).unwrap();
    ok(&phoenix_ca(&b, &wait));
    assert_eq!(std::fs::read(&crt).unwrap(), before);
    figures(&[("guestfs-endless-inputs", "provisioner password and root certificate at `/dev/zero` and as a 64 GiB sparse file: `phoenix-renew run --force` exits 1 and `phoenix-ca wait` (its health check) 124 within 15 s, naming the file and why, the pair untouched (violations)", "0".into())]);
}

/// `chattr +i` on a file, undone when dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let st = Command::new("chattr").arg("+i").arg(p).status().unwrap();
        assert!(st.success(), "chattr +i {}", p.display());
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_failed_certificate_rename_takes_the_new_key_back() {
    let b = Bench::new();
    b.pve.add_ct(101);
    b.write_manifest(&json!([entry(&b, "web.test", 101)]));
    ok(&b.run(&["run"]));
    let d = certs(&b, 101);
    let (crt, key) = (d.join("web.crt"), d.join("web.key"));
    let root = root_of(&b);
    let old = pair(&crt, &key, &root);
    assert!(matches!(old, Pair::Matching { .. }), "{old:?}");
    let old_modes = (mode_of(&key), mode_of(&crt));

    // An immutable certificate: renaming over it fails with EPERM, while
    // the key's rename (first) succeeds.
    let guard = Immutable::set(&crt);
    for i in 0..3 {
        let out = b.run(&["run", "--force"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&crt.display().to_string())
                && err.contains("Operation not permitted")
                && err.contains("the new key was taken back"),
            "{err}"
        );
        assert_eq!(
            pair(&crt, &key, &root),
            old,
            "run {i}: the live pair changed"
        );
        assert_eq!((mode_of(&key), mode_of(&crt)), old_modes);
        assert_eq!(temps_in(&d), Vec::<String>::new(), "run {i}");
    }
    drop(guard);
    ok(&b.run(&["run", "--force"]));
    let new = pair(&crt, &key, &root);
    assert!(
        matches!(new, Pair::Matching { .. }) && new != old,
        "{new:?}"
    );
    figures(&[("guestfs-eperm-rename", "the certificate's rename failing with EPERM (`chattr +i`) after the key's, three forced runs: each exits 1 naming it, the old pair stays in place and matching, modes kept, no temp file; once writable, the next run installs a new pair (violations)", "0".into())]);
}
