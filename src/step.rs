//! The smallstep `step` CLI, as renewal uses it: issue a certificate with
//! a provisioner password read from a file, renew one with its own key.
//!
//! Every call names the CA URL and root explicitly (nothing is taken from
//! `$STEPPATH` defaults), takes flags before positional arguments (step's
//! parser stops at the first positional one), runs with stdin from
//! `/dev/null` (step prompts on a terminal) and a deadline. A CA that
//! cannot be reached is a [`Kind::TempFail`]: the run exits 75, retry later.
//!
//! step reads its root and the provisioner password whole, however large,
//! from a directory the CA container writes (one put `/dev/zero` there and
//! step read until memory ran out). So it never gets those paths: each
//! call gets private 0600 copies made by our bounded reader
//! ([`crate::guestdir`]: no link followed, only a plain file, the root at
//! most [`ROOT_LIMIT`], the password at most [`PASSWORD_LIMIT`]), in a
//! directory only root can enter, removed when the call returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cert::San;
use crate::exec::{Cmd, Output};
use crate::exit::{err, Kind};
use crate::guestdir::PrivateDir;

/// Largest root certificate read (for step's `--root`, or a health check).
pub const ROOT_LIMIT: u64 = 1 << 20;

/// Largest provisioner password file handed to step.
pub const PASSWORD_LIMIT: u64 = 64 << 10;

/// A private copy of the root certificate `root` in `dir`, for step's
/// `--root`.
pub fn private_root(dir: &PrivateDir, root: &Path) -> Result<PathBuf> {
    dir.copy_of(root, ROOT_LIMIT, "root_ca.crt")
        .context("reading the CA root certificate for step")
}

/// How to reach the CA with `step`.
#[derive(Debug, Clone)]
pub struct Step {
    /// The `step` program.
    pub program: String,
    /// CA URL.
    pub ca_url: String,
    /// Root certificate (host path).
    pub root: PathBuf,
    /// Provisioner name.
    pub provisioner: String,
    /// Provisioner password file (never the password itself).
    pub password_file: PathBuf,
    /// Deadline of one call.
    pub timeout: Duration,
}

/// Words in step's errors that mean the CA was not reached at all.
const UNREACHABLE: &[&str] = &[
    "connection refused",
    "no route to host",
    "no such host",
    "network is unreachable",
    "i/o timeout",
    "connection reset",
    "Client.Timeout exceeded",
];

/// The lines of step's stderr that say why it failed: ANSI colour codes
/// removed, its progress lines (`✔ Provisioner: admin (JWK) [kid: ...]`,
/// `✔ CA: https://...`) and blank lines dropped, the rest on one line.
/// Without this the cause ("failed to decrypt JWK: invalid password",
/// "requested duration ... is more than the authorized maximum") came
/// after a coloured progress line and was lost where one line is kept.
pub fn cause(stderr: &str) -> String {
    let mut plain = String::with_capacity(stderr.len());
    let mut chars = stderr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    let lines: Vec<&str> = plain
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('✔')
                && !l.starts_with('✓')
                && !l.starts_with("Re-run with STEPDEBUG=1")
        })
        .collect();
    if lines.is_empty() {
        plain.trim().to_string()
    } else {
        lines.join("; ")
    }
}

/// step's answers that are the configuration's fault, not a
/// certificate's: every certificate would fail the same way and no retry
/// helps (smallstep cli 0.19 against step-ca, checked with the real
/// binaries). Each with what to change.
const CONFIG_ERRORS: &[(&str, &str)] = &[
    (
        "failed to decrypt JWK: invalid password",
        "the provisioner password file (ca.provisioner_password_file) does not open the \
         provisioner's key: put that provisioner's password in it",
    ),
    (
        "for flag '--issuer'",
        "the provisioner (ca.provisioner) is not one of the CA's: use a name that \
         `step ca provisioner list` shows",
    ),
    (
        "is more than the authorized maximum certificate duration",
        "renewal.lifetime is longer than the CA allows: lower it, or raise the \
         provisioner's maxTLSCertDuration",
    ),
];

/// step's answers when something answered but not as a working CA: a
/// proxy's error page in front of it (HTML where step expects JSON: "invalid
/// character '<' looking for beginning of value"), or the CA's own server
/// error (step-ca's 5xx messages). The CA is unavailable, not the
/// certificate at fault: temporary, no backoff. Checked with step 0.19
/// against an HTTPS server answering 502 with HTML and 503 with JSON.
const UNAVAILABLE: &[&str] = &[
    "invalid character '<' looking for beginning of value",
    "encountered an Internal Server Error",
    "temporarily unavailable",
    "Bad Gateway",
    "Service Unavailable",
    "Gateway Timeout",
];

/// Turn a failed step call into an error: temporary when the CA was not
/// reached or is unavailable; a configuration error (exit 2) when it is
/// one of [`CONFIG_ERRORS`].
fn failure(cmd: &Cmd, out: &Output) -> anyhow::Error {
    let msg = cmd.failure_message_with(out, cause);
    let text = out.stderr_str();
    if UNREACHABLE.iter().any(|w| text.contains(w)) {
        return err(Kind::TempFail, format!("the CA is unreachable: {msg}"));
    }
    if UNAVAILABLE.iter().any(|w| text.contains(w)) {
        return err(
            Kind::TempFail,
            format!(
                "the CA is unavailable (something answered, but with a server error or a \
                 page that is not the CA's: a proxy in front of it?): {msg}"
            ),
        );
    }
    if let Some((_, advice)) = CONFIG_ERRORS.iter().find(|(w, _)| text.contains(w)) {
        return err(Kind::Config, format!("{advice} ({msg})"));
    }
    anyhow::anyhow!("{msg}")
}

/// `--not-after` as step reads it (a Go duration).
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl Step {
    fn cmd(&self) -> Cmd {
        Cmd::new(&self.program).timeout(self.timeout)
    }

    /// This step with private copies of its root and (with `password`)
    /// its password file, in `dir`.
    fn private(&self, dir: &PrivateDir, password: bool) -> Result<Step> {
        let mut s = self.clone();
        s.root = private_root(dir, &self.root)?;
        if password {
            s.password_file = dir
                .copy_of(&self.password_file, PASSWORD_LIMIT, "password")
                .context("reading the provisioner password file for step")?;
        }
        Ok(s)
    }

    fn private_dir() -> Result<PrivateDir> {
        PrivateDir::new("step").context("making a private directory for step")
    }

    fn run(&self, cmd: Cmd) -> Result<()> {
        // A CA that accepts the connection and never answers is as
        // unreachable as one that refuses it: retry later (75), not a
        // failed certificate.
        let out = cmd.run().map_err(|e| {
            if crate::exit::kind_of(&e) == Kind::Timeout {
                err(
                    Kind::TempFail,
                    format!("the CA did not answer in time: {e:#}"),
                )
            } else {
                e
            }
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failure(&cmd, &out))
        }
    }

    /// The argv of [`Self::issue`] (for tests and `--dry-run`).
    pub fn issue_cmd(
        &self,
        subject: &str,
        sans: &[San],
        crt: &Path,
        key: &Path,
        lifetime: Duration,
    ) -> Cmd {
        let mut cmd = self.cmd().args(["ca", "certificate"]);
        // Every SAN its own flag, the subject among them: with any --san,
        // step no longer adds the subject by itself.
        for san in sans {
            cmd = cmd.arg("--san").arg(san.to_string());
        }
        cmd.arg("--provisioner")
            .arg(&self.provisioner)
            .arg("--provisioner-password-file")
            .arg(&self.password_file)
            .args(["--not-after", &go_duration(lifetime)])
            .args(["--ca-url", &self.ca_url])
            .arg("--root")
            .arg(&self.root)
            .arg("--force")
            .arg(subject)
            .arg(crt)
            .arg(key)
    }

    /// `step ca certificate`: a new key and certificate into `crt`/`key`
    /// (temp files; step creates them 0600).
    pub fn issue(
        &self,
        subject: &str,
        sans: &[San],
        crt: &Path,
        key: &Path,
        lifetime: Duration,
    ) -> Result<()> {
        let dir = Self::private_dir()?;
        let s = self.private(&dir, true)?;
        s.run(s.issue_cmd(subject, sans, crt, key, lifetime))
    }

    /// `step ca token SUBJECT`: proves the provisioner exists and the
    /// password file decrypts its key, issuing nothing. The token (a
    /// secret) goes to a private file, removed with its directory.
    pub fn check_provisioner(&self, subject: &str) -> Result<()> {
        let dir = Self::private_dir()?;
        let s = self.private(&dir, true)?;
        let cmd = s
            .cmd()
            .args(["ca", "token", subject])
            .arg("--provisioner")
            .arg(&s.provisioner)
            .arg("--provisioner-password-file")
            .arg(&s.password_file)
            .arg("--output-file")
            .arg(dir.join("token"))
            .args(["--ca-url", &s.ca_url])
            .arg("--root")
            .arg(&s.root);
        s.run(cmd)
    }

    /// `step ca renew --force --out OUT CRT KEY`: a new certificate for
    /// the same key, authenticated by the current (valid) certificate.
    pub fn renew(&self, crt: &Path, key: &Path, out: &Path) -> Result<()> {
        let dir = Self::private_dir()?;
        let s = self.private(&dir, false)?;
        let cmd = s
            .cmd()
            .args(["ca", "renew", "--force", "--out"])
            .arg(out)
            .args(["--ca-url", &s.ca_url])
            .arg("--root")
            .arg(&s.root)
            .arg(crt)
            .arg(key);
        s.run(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_the_progress_dropped() {
        let stderr = "\u{1b}[32m✔\u{1b}[0m Provisioner: admin (JWK) [kid: abc]\nerror creating new token: failed to decrypt JWK: invalid password\n";
        assert_eq!(
            cause(stderr),
            "error creating new token: failed to decrypt JWK: invalid password"
        );
        assert_eq!(cause("✔ CA: https://ca:9000\n"), "✔ CA: https://ca:9000");
        assert_eq!(cause("a\n\nb"), "a; b");
        // What step 0.19 prints when the CA refuses the duration.
        let refused = "\u{1b}[32m\u{1b}[32m✔\u{1b}[0m \u{1b}[1mCA\u{1b}[0m: https://127.0.0.1:9000\nThe request was forbidden by the certificate authority: requested duration of 10000h1m0s is more than the authorized maximum certificate duration of 24h1m0s.\nRe-run with STEPDEBUG=1 for more info.\n";
        assert_eq!(
            cause(refused),
            "The request was forbidden by the certificate authority: requested duration of \
             10000h1m0s is more than the authorized maximum certificate duration of 24h1m0s."
        );
    }

    fn step() -> Step {
        Step {
            program: "step".into(),
            ca_url: "https://ca:9000".into(),
            root: "/ca/root.crt".into(),
            provisioner: "admin".into(),
            password_file: "/ca/pw".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn issue_lists_every_san_and_no_secret() {
        let sans = [
            San::Dns("web.x".into()),
            San::Ip("10.0.0.1".parse().unwrap()),
        ];
        let cmd = step().issue_cmd(
            "web.x",
            &sans,
            "/t/c".as_ref(),
            "/t/k".as_ref(),
            Duration::from_secs(3600),
        );
        assert_eq!(
            cmd.to_string(),
            "`step ca certificate --san web.x --san 10.0.0.1 --provisioner admin \
             --provisioner-password-file /ca/pw --not-after 3600s --ca-url https://ca:9000 \
             --root /ca/root.crt --force web.x /t/c /t/k`"
        );
    }

    #[test]
    fn unreachable_ca_is_temporary() {
        let cmd = Cmd::new("sh").args([
            "-c",
            "echo 'dial tcp 127.0.0.1:1: connect: connection refused' >&2; exit 1",
        ]);
        let out = cmd.run().unwrap();
        assert_eq!(crate::exit::kind_of(&failure(&cmd, &out)), Kind::TempFail);
        let cmd = Cmd::new("sh").args(["-c", "echo 'token is expired' >&2; exit 1"]);
        let out = cmd.run().unwrap();
        assert_eq!(crate::exit::kind_of(&failure(&cmd, &out)), Kind::Failed);
    }
}
