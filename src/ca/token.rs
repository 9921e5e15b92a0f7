//! The readiness token (`ca.ready`) and the generation (`ca.generation`),
//! and the verdict a reader reaches on them.
//!
//! The host starts a new generation at the CA guest's pre-start; the CA
//! publishes a token carrying the generation it was started in. A reader
//! trusts a token only if it carries the *current* generation, so a
//! `ca.ready` left by an earlier boot is never taken for a fresh one.

use std::io;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::CaPaths;
use crate::fsutil::{self, FileOptions};

/// Largest token or generation file read; anything bigger is malformed.
const TOKEN_LIMIT: u64 = 64 << 10;

/// Format version of the token written here.
pub const TOKEN_VERSION: u32 = 1;

/// Content of `ca.generation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// 128 random bits, hex.
    pub generation: String,
    /// When the generation was started (RFC 3339).
    pub created_at: String,
}

/// Content of `ca.ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Format version.
    pub version: u32,
    /// The generation the CA was started in.
    pub generation: String,
    /// The CA's URL as the publisher knows it.
    pub ca_url: String,
    /// SHA-256 fingerprint of the root certificate, hex.
    pub fingerprint: String,
    /// When the token was written (RFC 3339).
    pub written_at: String,
}

/// What a reader makes of the token on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token of the current generation.
    Fresh(Token),
    /// No `ca.ready`.
    Missing,
    /// `ca.ready` exists but cannot be read.
    Unreadable(String),
    /// `ca.ready` does not parse.
    Malformed(String),
    /// A token of another generation (an earlier boot's).
    Stale {
        /// The token's generation.
        token: String,
        /// The current one.
        current: String,
    },
    /// An empty `ca.ready` as the old bash managers wrote: acceptable only
    /// together with a passing health check.
    Legacy,
    /// A token, but no readable `ca.generation` to hold it against:
    /// acceptable only together with a passing health check.
    Unverified(Token, String),
}

impl Verdict {
    /// Whether the token alone is enough (a health check may still follow).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Verdict::Fresh(_))
    }

    /// Whether a passing health check makes this acceptable.
    pub fn needs_health(&self) -> bool {
        matches!(self, Verdict::Legacy | Verdict::Unverified(..))
    }

    /// One line saying what is missing, for logs and timeout messages.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Fresh(t) => format!("fresh token (generation {})", short(&t.generation)),
            Verdict::Missing => "no readiness token yet".into(),
            Verdict::Unreadable(e) => format!("readiness token unreadable: {e}"),
            Verdict::Malformed(e) => format!("readiness token unparseable: {e}"),
            Verdict::Stale { token, current } => format!(
                "stale readiness token: generation {} is not the current {}",
                short(token),
                short(current)
            ),
            Verdict::Legacy => "empty legacy readiness token (needs a health check)".into(),
            Verdict::Unverified(_, why) => {
                format!("readiness token cannot be checked against a generation: {why}")
            }
        }
    }
}

/// The first 12 hex digits: enough to tell generations apart in a log.
pub fn short(generation: &str) -> &str {
    generation.get(..12).unwrap_or(generation)
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn random_hex128() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A new, random generation.
pub fn new_generation() -> Result<Generation> {
    Ok(Generation {
        generation: random_hex128()?,
        created_at: now_rfc3339(),
    })
}

/// Write `ca.generation` atomically.
pub fn write_generation(path: &Path, generation: &Generation) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(generation)?;
    text.push(b'\n');
    // The host writes it into the CA guest's directory: no link followed.
    crate::guestdir::write_file(path, &text, FileOptions::mode(0o644))
        .with_context(|| format!("writing '{}'", path.display()))
}

/// Write `ca.ready` atomically.
pub fn write_token(path: &Path, token: &Token) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(token)?;
    text.push(b'\n');
    fsutil::write_atomic(path, &text, FileOptions::mode(0o644))
}

/// How a reader gets a file's bytes, at most a limit: by path
/// ([`fsutil::read_limited`]: the waiter in a guest, the CA's own
/// publish), or through [`crate::guestdir`] (a host process over the CA
/// guest's directory).
type Read = fn(&Path, u64) -> io::Result<Vec<u8>>;

/// Read `ca.generation`: `Ok(None)` when absent.
pub fn read_generation(path: &Path) -> Result<Option<Generation>, String> {
    generation_with(fsutil::read_limited, path)
}

fn generation_with(read: Read, path: &Path) -> Result<Option<Generation>, String> {
    match read(path, TOKEN_LIMIT) {
        Ok(bytes) => serde_json::from_slice::<Generation>(&bytes)
            .map(Some)
            .map_err(|e| format!("'{}' unparseable: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("'{}': {e}", path.display())),
    }
}

fn parse_token(bytes: &[u8]) -> Result<Token, String> {
    let token: Token = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if token.generation.is_empty() {
        return Err("empty generation".into());
    }
    if !is_fingerprint(&token.fingerprint) {
        return Err(format!(
            "fingerprint '{}' is not 64 hex digits",
            token.fingerprint
        ));
    }
    Ok(token)
}

/// Whether `s` looks like a SHA-256 fingerprint (64 hex digits).
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read the token and the generation (open + read each time, never a
/// cached `stat`) and judge the token.
pub fn check(paths: &CaPaths) -> Verdict {
    check_with(fsutil::read_limited, paths)
}

/// [`check`] for a host process (running as root) over the CA guest's
/// state directory, which the CA container writes: both files are read
/// through [`crate::guestdir`] (no symbolic link followed anywhere on the
/// path, only a regular file with one name, bounded). A file refused
/// there is judged as a token that does not parse.
pub fn check_host(paths: &CaPaths) -> Verdict {
    check_with(crate::guestdir::read_file, paths)
}

fn check_with(read: Read, paths: &CaPaths) -> Verdict {
    let bytes = match read(&paths.ready, TOKEN_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Missing,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Verdict::Malformed(e.to_string())
        }
        Err(e) => return Verdict::Unreadable(e.to_string()),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Legacy;
    }
    let token = match parse_token(&bytes) {
        Ok(t) => t,
        Err(e) => return Verdict::Malformed(e),
    };
    match generation_with(read, &paths.generation) {
        Ok(Some(current)) if current.generation == token.generation => Verdict::Fresh(token),
        Ok(Some(current)) => Verdict::Stale {
            token: token.generation,
            current: current.generation,
        },
        Ok(None) => Verdict::Unverified(
            token,
            format!("'{}' does not exist", paths.generation.display()),
        ),
        Err(why) => Verdict::Unverified(token, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CaConfig;

    fn setup() -> (tempfile::TempDir, CaPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaConfig::default().paths_in(dir.path());
        (dir, paths)
    }

    fn token(generation: &str) -> Token {
        Token {
            version: TOKEN_VERSION,
            generation: generation.into(),
            ca_url: "https://127.0.0.1:9000".into(),
            fingerprint: "ab".repeat(32),
            written_at: now_rfc3339(),
        }
    }

    #[test]
    fn verdicts() {
        let (_d, p) = setup();
        assert_eq!(check(&p), Verdict::Missing);
        std::fs::write(&p.ready, "").unwrap();
        assert_eq!(check(&p), Verdict::Legacy);
        std::fs::write(&p.ready, "{\"generation\": ").unwrap();
        assert!(matches!(check(&p), Verdict::Malformed(_)));
        write_token(&p.ready, &token("g1")).unwrap();
        assert!(matches!(check(&p), Verdict::Unverified(..)));
        let g = new_generation().unwrap();
        assert_eq!(g.generation.len(), 32);
        write_generation(&p.generation, &g).unwrap();
        assert!(matches!(check(&p), Verdict::Stale { .. }));
        write_token(&p.ready, &token(&g.generation)).unwrap();
        assert!(check(&p).is_fresh());
    }

    #[test]
    fn the_host_reads_the_ca_guests_files_without_following_a_link() {
        let (d, p) = setup();
        let g = new_generation().unwrap();
        write_generation(&p.generation, &g).unwrap();
        assert_eq!(check_host(&p), Verdict::Missing);
        write_token(&p.ready, &token(&g.generation)).unwrap();
        assert!(check_host(&p).is_fresh());
        // The CA guest puts a link where its token was: a guest's reader
        // follows it, the host does not.
        let elsewhere = d.path().join("elsewhere");
        std::fs::rename(&p.ready, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &p.ready).unwrap();
        assert!(check(&p).is_fresh());
        match check_host(&p) {
            Verdict::Malformed(why) => assert!(why.contains("symbolic link"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn bad_fingerprint_is_malformed() {
        let (_d, p) = setup();
        let mut t = token("g1");
        t.fingerprint = "not-hex".into();
        write_token(&p.ready, &t).unwrap();
        match check(&p) {
            Verdict::Malformed(why) => assert!(why.contains("fingerprint"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn generations_differ() {
        assert_ne!(
            new_generation().unwrap().generation,
            new_generation().unwrap().generation
        );
    }
}
