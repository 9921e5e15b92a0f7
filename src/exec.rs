//! The one subprocess runner of the toolkit.
//!
//! - argv only: there is no way to build a `sh -c` string from data here;
//! - every command has a deadline, at which its whole process group is
//!   killed (a `qm` stuck on a dead guest agent never hangs a boot);
//! - secrets travel on stdin ([`Cmd::stdin`]), and any string marked with
//!   [`Cmd::redact`] is replaced by `<redacted>` in every message;
//! - output is captured (bounded), and a failure names the full command,
//!   its exit status and its stderr;
//! - a stop request to us (SIGINT, SIGTERM, SIGHUP, SIGQUIT) ends the
//!   child's whole process group too (SIGTERM, then SIGKILL after 2 s).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::exit::{err, Kind};
use crate::signal;

/// Most output kept per stream; the rest is read and dropped.
const OUTPUT_LIMIT: usize = 8 << 20;
/// Default deadline of a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after SIGTERM a stopped child gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A command to run: program, arguments, stdin, deadline.
#[derive(Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    redact: Vec<String>,
    secret_stdout: bool,
}

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (code or signal).
    pub status: ExitStatus,
    /// Captured stdout (at most 8 MiB).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most 8 MiB).
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as (lossy) UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Cmd {
    /// A command running `program` with no arguments, stdin from
    /// `/dev/null`, and the default deadline (60 s).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
            redact: Vec::new(),
            secret_stdout: false,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Feed `data` on stdin (the way secrets reach a child). The data is
    /// never shown in any message.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Deadline for the whole run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Never show `secret` in a message (argv, stdout, stderr).
    pub fn redact(mut self, secret: impl Into<String>) -> Self {
        let s = secret.into();
        if !s.is_empty() {
            self.redact.push(s);
        }
        self
    }

    /// The command's stdout is a secret (a join token): no message ever
    /// quotes it, even when stderr is empty.
    pub fn secret_stdout(mut self) -> Self {
        self.secret_stdout = true;
        self
    }

    /// Replace every redacted string in `text`.
    pub fn scrub(&self, text: &str) -> String {
        self.redact
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
    }

    /// Run to completion, whatever the exit status. Errors: the program
    /// cannot be started, the deadline passed ([`Kind::Timeout`]), or we
    /// were asked to stop ([`Kind::Interrupted`]).
    pub fn run(&self) -> Result<Output> {
        log::debug!("running {self}");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.to_string_lossy()))?;
        let pgid = Pid::from_raw(child.id() as i32);

        if let (Some(data), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // A child that exits without reading gets EPIPE here: not our error.
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let out_rx = spawn_reader(child.stdout.take());
        let err_rx = spawn_reader(child.stderr.take());
        let status = self.wait_with_deadline(&mut child, pgid)?;
        // Readers end when the pipes close; a grandchild that escaped the
        // group could keep them open, so this wait is bounded too.
        let collect = |rx: mpsc::Receiver<Vec<u8>>| {
            rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: collect(out_rx),
            stderr: collect(err_rx),
        })
    }

    fn wait_with_deadline(&self, child: &mut Child, pgid: Pid) -> Result<ExitStatus> {
        let deadline = Instant::now() + self.timeout;
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(status) = child.try_wait().context("waiting for child")? {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(err(
                    Kind::Timeout,
                    format!(
                        "{self} timed out after {} (process group killed)",
                        humantime::format_duration(self.timeout)
                    ),
                ));
            }
            if let Some(sig) = signal::received() {
                let _ = killpg(pgid, Signal::SIGTERM);
                let grace = Instant::now() + TERM_GRACE;
                while Instant::now() < grace {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(err(
                    Kind::Interrupted(sig),
                    format!("{self} stopped: we were asked to stop"),
                ));
            }
            // Naps that start short and grow: a quick command (a health
            // check) is reaped within a millisecond or two, a long one
            // costs at most 20 wake-ups a second.
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    /// Run and require exit status 0; otherwise an error naming the
    /// command, the status and (scrubbed) stderr.
    pub fn run_ok(&self) -> Result<Output> {
        let out = self.run()?;
        if out.status.success() {
            return Ok(out);
        }
        Err(anyhow::anyhow!("{}", self.failure_message(&out)))
    }

    /// "`cmd` exited with status N: stderr" (scrubbed); stdout instead
    /// when stderr is empty, unless stdout is [secret](Self::secret_stdout).
    pub fn failure_message(&self, out: &Output) -> String {
        self.failure_message_with(out, |s| s.to_string())
    }

    /// [`Self::failure_message`] with stderr (scrubbed) passed through
    /// `clean`: a tool's own noise (progress lines, colours) left out.
    pub fn failure_message_with(&self, out: &Output, clean: impl Fn(&str) -> String) -> String {
        let mut msg = format!("{self} {}", describe_status(out.status));
        let stderr = clean(&self.scrub(out.stderr_str().trim()));
        let text = if stderr.is_empty() && !self.secret_stdout {
            self.scrub(out.stdout_str().trim())
        } else {
            stderr
        };
        if !text.is_empty() {
            msg.push_str(": ");
            msg.push_str(&truncate(&text, 2000));
        }
        msg
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// "exited with status N" or "was killed by signal S".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
            format!("was killed by signal {sig} ({name})")
        }
        _ => "ended in an unknown way".to_string(),
    }
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = tx.send(kept);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Quote one word for display the way a shell would need it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|w| quote(&self.scrub(&w.to_string_lossy())))
            .collect();
        write!(f, "`{}`", words.join(" "))
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    #[test]
    fn captures_output_and_status() {
        let out = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout_str(), "out\n");
        assert_eq!(out.stderr_str(), "err\n");
    }

    #[test]
    fn stdin_reaches_child_and_never_the_message() {
        let cmd = Cmd::new("sh")
            .args(["-c", "read x; echo \"got $x\" >&2; exit 1"])
            .stdin("hunter2\n")
            .redact("hunter2");
        let e = cmd.run_ok().unwrap_err().to_string();
        assert!(e.contains("exited with status 1"), "{e}");
        assert!(e.contains("got <redacted>"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survivor");
        // The grandchild would write the marker after 1 s if it survived.
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let e = Cmd::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Give a surviving grandchild the time to show itself.
        let grace = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < grace {
            assert!(!marker.exists(), "grandchild survived the deadline");
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_secret_stdout_is_never_quoted() {
        // The secret is not in argv (which is shown), only in the output.
        let script = "printf 'SWMTKN-1-abc-%s%s' top secret; exit 1";
        let cmd = Cmd::new("sh").args(["-c", script]);
        let out = cmd.run().unwrap();
        assert!(cmd.failure_message(&out).contains("topsecret"));
        let cmd = cmd.secret_stdout();
        let e = cmd.run_ok().unwrap_err().to_string();
        assert!(e.contains("exited with status 1"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn missing_program_is_named() {
        let e = Cmd::new("phoenix-no-such-program").run().unwrap_err();
        assert!(format!("{e:#}").contains("phoenix-no-such-program"));
    }

    #[test]
    fn display_quotes_and_redacts() {
        let cmd = Cmd::new("step")
            .args(["ca", "token", "a b", "tok-123"])
            .redact("tok-123");
        assert_eq!(cmd.to_string(), "`step ca token 'a b' '<redacted>'`");
    }
}
