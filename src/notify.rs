//! `STATUS=` lines to the service manager (sd_notify(3)), so that
//! `systemctl status phoenix-swarm` shows what a long wait is waiting
//! for, and `READY=1` where a unit is `Type=notify`. Sent only when systemd gave us `$NOTIFY_SOCKET` (a unit with
//! `NotifyAccess=main`, or `Type=notify`); nowhere else, and never an
//! error: a status line is a courtesy, the journal has the whole story.
//! The texts are the progress lines the log has too, which never carry a
//! secret.

use std::os::unix::net::UnixDatagram;

/// Tell the service manager what we are doing now: `STATUS=text` (one
/// line; newlines become spaces).
pub fn status(text: &str) {
    notify("", text);
}

/// Tell the service manager the unit's work is done (`READY=1`, with
/// `STATUS=text`), for a `Type=notify` unit whose main process still has
/// to exit: the units ordered after it start now, not after the exit,
/// which for a sandboxed unit includes tearing its mount namespace down
/// (milliseconds, BENCHMARKS.md).
pub fn ready(text: &str) {
    notify("READY=1\n", text);
}

/// `fields` then `STATUS=text`, when systemd gave us a socket.
fn notify(fields: &str, text: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("{fields}STATUS={}", text.replace('\n', " "));
    let _ = send(&socket, msg.as_bytes());
}

/// One datagram to the socket systemd named: a path, or an abstract
/// name written with a leading `@` (sd_notify(3)).
fn send(socket: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)?;
        }
        Some((b'/', _)) => {
            sock.send_to(msg, std::path::Path::new(socket))?;
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_reaches_a_path_and_an_abstract_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"STATUS=waiting for the CA").unwrap();
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=waiting for the CA");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("phoenix-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), b"STATUS=x").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x");

        assert!(send(std::ffi::OsStr::new("relative"), b"x").is_err());
    }
}
