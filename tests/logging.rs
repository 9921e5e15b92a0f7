//! The journal's priority prefix (`<3>` ...) is written only when stderr is
//! the stream `JOURNAL_STREAM` names (its device and inode), as
//! systemd.exec(5) says: a unit's child that inherits the variable but
//! writes to a file or a pipe of its own writes plain lines.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

/// `phoenix-mount` with a configuration file that does not exist: one error
/// line on stderr, exit 2, nothing touched.
fn failing_run(journal_stream: Option<&str>, stderr: Stdio) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix-mount"));
    cmd.args(["--config", "/nonexistent/phoenix/toolkit.json", "check"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("PHOENIX_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(v) = journal_stream {
        cmd.env("JOURNAL_STREAM", v);
    }
    cmd.spawn().unwrap()
}

/// Run with stderr into a new file; return what the binary wrote there.
/// `journal_stream` gets the file's own `DEVICE:INODE` and returns the
/// value to set.
fn run_into_file(journal_stream: impl FnOnce(&str) -> Option<String>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr.log");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let value = journal_stream(&own);
    let status = failing_run(value.as_deref(), Stdio::from(file))
        .wait()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("cannot read configuration"), "{text}");
    text
}

#[test]
fn a_file_named_by_journal_stream_gets_the_priority() {
    let text = run_into_file(|own| Some(own.to_string()));
    assert!(
        text.starts_with("<3>error: cannot read configuration"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with("<3>")), "{text}");
}

#[test]
fn a_file_journal_stream_does_not_name_stays_plain() {
    // Another file's device and inode: the stream systemd gave our parent.
    let other = tempfile::NamedTempFile::new().unwrap();
    let meta = other.as_file().metadata().unwrap();
    let elsewhere = format!("{}:{}", meta.dev(), meta.ino());
    for value in [Some(elsewhere), Some("1".into()), Some(String::new()), None] {
        let text = run_into_file(|own| {
            assert_ne!(value.as_deref(), Some(own));
            value.clone()
        });
        assert!(
            text.starts_with("error: cannot read configuration"),
            "JOURNAL_STREAM={value:?}:\n{text}"
        );
        assert!(!text.contains("<3>"), "{text}");
    }
}

/// A pipe not inherited by the children other tests start meanwhile.
fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Run with stderr into a new pipe; return what came through it.
fn run_into_pipe(named: bool) -> String {
    let (read, write): (OwnedFd, OwnedFd) = pipe().unwrap();
    let st = nix::sys::stat::fstat(write.as_raw_fd()).unwrap();
    let value = if named {
        format!("{}:{}", st.st_dev, st.st_ino)
    } else {
        // The same pipe filesystem, another pipe's inode.
        let (_r, w) = pipe().unwrap();
        let other = nix::sys::stat::fstat(w.as_raw_fd()).unwrap();
        assert_ne!(other.st_ino, st.st_ino);
        format!("{}:{}", other.st_dev, other.st_ino)
    };
    let mut child = failing_run(Some(&value), Stdio::from(write));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut File::from(read), &mut text).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
    text
}

#[test]
fn a_pipe_gets_the_priority_only_when_named() {
    let text = run_into_pipe(true);
    assert!(
        text.starts_with("<3>error: cannot read configuration"),
        "{text}"
    );
    let text = run_into_pipe(false);
    assert!(
        text.starts_with("error: cannot read configuration"),
        "{text}"
    );
}
