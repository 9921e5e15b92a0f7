//! The project's Debian package as the tests build it: scripts/build-deb.sh
//! from the test build's binaries (or the release's, [`bin_dir`]), with man
//! pages and completions generated from the clap types. Shared by
//! tests/package.rs (installs it into a throwaway root) and
//! tests/nspawn_boot.rs (boots a system with it).
#![allow(dead_code)]

#[path = "../../examples/gen-docs/docs.rs"]
pub mod docs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project root.
pub fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the packaged binaries are: cargo's test build, or the directory
/// `PHOENIX_TEST_BIN_DIR` names (scripts/test.sh runs tests/package.rs
/// again with the release build, as it ships).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PHOENIX_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_phoenix-ca"))
                .parent()
                .unwrap()
                .to_path_buf()
        })
}

/// Text of a byte buffer (stdout, stderr).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `cmd`, which must succeed; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Build the package in `dir`; returns the .deb's path.
pub fn build_deb(dir: &Path) -> PathBuf {
    let gen = dir.join("docs");
    docs::write_all(&gen).unwrap();
    let out = run(Command::new("bash")
        .arg(project().join("scripts/build-deb.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--docs")
        .arg(&gen)
        .arg("--out")
        .arg(dir)
        .args(["--compress", "gzip"]));
    let deb = PathBuf::from(text(&out.stdout).trim());
    assert!(deb.is_file(), "no .deb at '{}'", deb.display());
    deb
}
