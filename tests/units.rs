//! Every unit file and drop-in in `units/` passes `systemd-analyze verify`
//! with no output at all. `ExecStart=` paths are pointed at the built
//! binaries, and units the project's units name but does not ship (docker,
//! step-ca, network-online.target...) get empty stubs, so that only the
//! project's own lines are judged.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SUFFIXES: [&str; 7] = [
    ".service", ".target", ".timer", ".mount", ".socket", ".path", ".slice",
];

fn is_unit_name(word: &str) -> bool {
    SUFFIXES
        .iter()
        .any(|s| word.ends_with(s) && word.len() > s.len())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@_.-\\:".contains(c))
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_phoenix-ca"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Copy `units/` into `dir` with binaries pointed at the build, and stub
/// every unit it names but does not contain. Returns the units to verify.
fn stage(src: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut shipped = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut dropin_owners = BTreeSet::new();
    let rewrite = |text: &str| {
        text.replace(
            "/usr/bin/phoenix-",
            &format!("{}/phoenix-", bin_dir().display()),
        )
    };
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let owner = name.trim_end_matches(".d").to_string();
            fs::create_dir_all(dir.join(&name)).unwrap();
            for f in fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                let text = fs::read_to_string(&f).unwrap();
                referenced.extend(
                    text.split(|c: char| c.is_whitespace() || c == '=')
                        .filter(|w| is_unit_name(w))
                        .map(String::from),
                );
                fs::write(dir.join(&name).join(f.file_name().unwrap()), rewrite(&text)).unwrap();
            }
            dropin_owners.insert(owner);
        } else if is_unit_name(&name) {
            let text = fs::read_to_string(&path).unwrap();
            referenced.extend(
                text.lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '='))
                    .filter(|w| is_unit_name(w))
                    .map(String::from),
            );
            fs::write(dir.join(&name), rewrite(&text)).unwrap();
            shipped.push(name);
        }
    }
    let mut to_verify: Vec<PathBuf> = shipped.iter().map(|n| dir.join(n)).collect();
    for name in referenced.iter().chain(dropin_owners.iter()) {
        if shipped.contains(name) || dir.join(name).is_file() {
            continue;
        }
        let stub = if name.ends_with(".service") {
            "[Unit]\nDescription=stub\n[Service]\nExecStart=/bin/true\n"
        } else {
            "[Unit]\nDescription=stub\n"
        };
        fs::write(dir.join(name), stub).unwrap();
        if dropin_owners.contains(name) {
            // A stub with the project's drop-in applied: verifies the drop-in.
            to_verify.push(dir.join(name));
        }
    }
    to_verify
}

fn verify(dir: &Path, units: &[PathBuf]) -> String {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .args(units)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_unit_and_dropin_verifies_silently() {
    let dir = tempfile::tempdir().unwrap();
    let units = stage(&common::project().join("units"), dir.path());
    assert!(
        units.iter().any(|u| u.ends_with("phoenix-ca-wait.service")),
        "{units:?}"
    );
    assert!(
        units.iter().any(|u| u.ends_with("docker.service")),
        "drop-in not verified: {units:?}"
    );
    let output = verify(dir.path(), &units);
    assert!(
        output.trim().is_empty(),
        "systemd-analyze verify said:\n{output}"
    );
}

#[test]
fn the_check_catches_a_broken_unit() {
    // Proof that the verification above can fail: a relative ExecStart.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("broken.service");
    fs::write(
        &unit,
        "[Service]\nType=oneshot\nExecStart=phoenix-ca wait\n",
    )
    .unwrap();
    let output = verify(dir.path(), &[unit]);
    assert!(!output.trim().is_empty());
}
