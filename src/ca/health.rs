//! The CA's `/health`, asked natively: one HTTPS GET over TLS (rustls)
//! that trusts only the CA's root, what `step ca health --root ROOT` does
//! (smallstep cli `command/ca/health.go`: GET `<ca-url>/health`, success
//! is `{"status":"ok"}`) without starting a Go process for every check:
//! the post-start gate and every VM's wait check health on their hot path,
//! and a VM then needs no `step` at all.
//!
//! Bounded everywhere: one deadline covers connect, handshake, request
//! and response; the answer is read up to [`ANSWER_LIMIT`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest answer read.
pub const ANSWER_LIMIT: u64 = 64 * 1024;

/// What a program has asked to run once, before the first host name is
/// resolved ([`before_first_lookup`]).
static BEFORE_LOOKUP: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
static LOOKUP_SET_UP: std::sync::Once = std::sync::Once::new();

/// Run `setup` once, before the first host name is resolved, if one ever
/// is. The static binaries configure glibc's `hosts` lookups there
/// ([`hosts_by_files_and_dns`]): glibc reads nsswitch.conf to do it, and
/// most runs of the hook resolve nothing. The first call wins.
pub fn before_first_lookup(setup: fn()) {
    let _ = BEFORE_LOOKUP.set(setup);
}

/// Host names by `/etc/hosts` and DNS only, the two lookups a static glibc
/// has in itself (nss.h, `__nss_configure_lookup`: made for static
/// programs), whatever the `hosts:` line of nsswitch.conf lists: a module
/// there (`myhostname`, `mdns`, `resolve`) is a shared object, which a
/// static program can load only from the very glibc it was linked with.
/// For a statically linked program alone (phoenix-hook and phoenix-ca as
/// released, scripts/build-release.sh), given to [`before_first_lookup`];
/// in a dynamic one it would override nsswitch.conf for nothing.
pub fn hosts_by_files_and_dns() {
    extern "C" {
        fn __nss_configure_lookup(
            db: *const std::ffi::c_char,
            lookups: *const std::ffi::c_char,
        ) -> std::ffi::c_int;
    }
    // SAFETY: two NUL-terminated constants; called once, before the first
    // lookup ([`before_first_lookup`]), and the programs that set it look
    // up names from one thread.
    unsafe {
        __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr());
    }
}

/// `host:port`'s addresses, after the setup of [`before_first_lookup`].
fn resolve(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    LOOKUP_SET_UP.call_once(|| {
        if let Some(setup) = BEFORE_LOOKUP.get() {
            setup();
        }
    });
    Ok((host, port).to_socket_addrs()?.collect())
}

/// `https://host[:port][/prefix]` split for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    /// The path of `/health` under the URL's own path.
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("CA URL '{url}' is not https://"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("CA URL '{url}': unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("CA URL '{url}': port '{p}' is not a number"))?,
        None => 443,
    };
    if host.is_empty() {
        return Err(format!("CA URL '{url}' has no host"));
    }
    Ok(Target {
        host: host.to_string(),
        port,
        path: format!("{prefix}/health"),
    })
}

/// Ask `url`'s `/health` once, trusting only the certificates of
/// `root_pem`, within `timeout`. `Err` says why the CA is not healthy.
pub fn check(url: &str, root_pem: &[u8], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let t = target(url)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(root_pem) {
        let der = der.map_err(|e| format!("the CA root is not PEM: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("the CA root is not a usable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA root holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(t.host.clone())
        .map_err(|_| format!("CA URL '{url}': '{}' is not a host name", t.host))?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "no answer from {url} within {}",
                    humantime::format_duration(timeout)
                )
            })
    };
    let addrs =
        resolve(&t.host, t.port).map_err(|e| format!("cannot resolve '{}': {e}", t.host))?;
    let mut last = format!("'{}' resolves to no address", t.host);
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {url} ({a}): {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    // The request goes in one write after the handshake: nothing to gain
    // from Nagle's delay on it.
    let _ = tcp.set_nodelay(true);
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS to {url}: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "no answer from {url} within {}",
                humantime::format_duration(timeout)
            )
        } else {
            format!("{url}: {e}")
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: phoenix-hooks\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        t.path,
        if t.host.contains(':') {
            format!("[{}]:{}", t.host, t.port)
        } else {
            format!("{}:{}", t.host, t.port)
        }
    );
    tls.sock.set_write_timeout(Some(left()?)).map_err(io)?;
    tls.sock.set_read_timeout(Some(left()?)).map_err(io)?;
    tls.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tls.sock.set_read_timeout(Some(left()?)).map_err(io)?;
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() as u64 > ANSWER_LIMIT {
                    return Err(format!("{url}: answer larger than {ANSWER_LIMIT} bytes"));
                }
                // The whole answer is in: not waiting for the server to
                // close the connection (step-ca's Go server takes a few
                // milliseconds to, which was a third of a check).
                if complete(&answer) {
                    break;
                }
            }
            // A server that closes without close_notify: what was read counts.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(io(e)),
        }
    }
    judge(url, &answer)
}

/// Whether `answer` holds a whole HTTP/1.1 answer: its head, and a body
/// of its `Content-Length`, or a chunked body up to its last chunk. An
/// answer with neither is read to the end of the connection.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let body = &answer[end + 4..];
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"\r\n0\r\n\r\n") || body == b"0\r\n\r\n";
        }
    }
    false
}

/// Read an HTTP/1.1 answer to `GET /health`: status 200 and a JSON body
/// whose `status` is `ok`.
fn judge(url: &str, answer: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    if code != "200" {
        let body = body.trim();
        let shown: String = body.chars().take(200).collect();
        return Err(format!("{url}/health answered {status}: {shown}"));
    }
    let v: serde_json::Value = serde_json::from_str(body.trim())
        .map_err(|_| format!("{url}/health answered something that is not JSON"))?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some("ok") => Ok(()),
        other => Err(format!(
            "{url}/health says status {}",
            other.unwrap_or("(none)")
        )),
    }
}

/// The body of a chunked answer.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_by_its_length_or_last_chunk() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        assert!(complete(full));
        assert!(!complete(&full[..full.len() - 1]));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{\"status\":\"ok\"}\r\n0\r\n\r\n";
        assert!(complete(chunked));
        assert!(!complete(&chunked[..chunked.len() - 5]));
        // Neither: read to the end of the connection.
        assert!(!complete(b"HTTP/1.0 200 OK\r\n\r\n{\"status\":\"ok\"}"));
    }

    #[test]
    fn urls_split_as_step_reads_them() {
        assert_eq!(
            target("https://172.16.100.11:9000").unwrap(),
            Target {
                host: "172.16.100.11".into(),
                port: 9000,
                path: "/health".into()
            }
        );
        let t = target("https://[::1]:8443/ca/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8443, "/ca/health")
        );
        assert_eq!(target("https://ca.internal").unwrap().port, 443);
        assert!(target("http://ca:9000").is_err());
        assert!(target("https://ca:nine").is_err());
    }

    #[test]
    fn answers_are_judged() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"status\":\"ok\"}\n";
        assert_eq!(judge("u", ok), Ok(()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{\"status\":\"ok\"}\r\n0\r\n\r\n";
        assert_eq!(judge("u", chunked), Ok(()));
        let e = judge(
            "u",
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n<html>bad gateway</html>",
        )
        .unwrap_err();
        assert!(e.contains("502 Bad Gateway"), "{e}");
        let e = judge("u", b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"starting\"}").unwrap_err();
        assert!(e.contains("status starting"), "{e}");
        assert!(judge("u", b"garbage").is_err());
    }
}
