//! Legacy `post_renewal_command` strings.
//!
//! - A string that is one `qm guest exec VMID [OPTIONS] -- ARGV` and
//!   nothing else ([`qm_guest_exec`]) is run through the typed transport
//!   ([`crate::proxmox::Proxmox::exec_or_pid`]) with
//!   `renewal.command_timeout_secs`, not through `sh -c` under qm's 30 s
//!   default `--timeout` (qemu-server src/PVE/CLI/qm.pm `exec`), after
//!   which qm prints `{"pid": N}` and the command goes on running.
//!
//! - The old bash's Swarm secret chain: `docker secret rm X; docker secret
//!   create X /tmp/cert.pem; ...; docker service update --force S`. On a
//!   live swarm Docker refuses to remove a secret a service uses, so every
//!   `rm` and `create` fails, the last `service update` succeeds, and the
//!   command reports success while the service keeps the old certificate.
//!   Such a command is named at plan time with its structured equivalent
//!   (`post_renewal.swarm_secrets`), which rotates for real.
//!
//! Only read, never rewritten: the operator's manifest is theirs.

/// A legacy command that is exactly one `qm guest exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmGuestExec {
    /// The VM.
    pub vmid: u32,
    /// The command in the guest, as `sh` would have split it.
    pub argv: Vec<String>,
    /// `--timeout N` as the string gave it: replaced by
    /// `renewal.command_timeout_secs`.
    pub timeout: Option<String>,
}

/// `command` as one `qm guest exec VMID [--timeout N] [--pass-stdin B]
/// [--synchronous 1] -- ARGV` (or without `--` when no word of ARGV starts
/// with `-`), split into words as `sh -c` would. `None` for anything the
/// shell would do more with: several commands, pipes, redirections,
/// expansions (`$`, backquotes, globs, `~`), comments, assignments; other
/// `qm` options, `--synchronous 0` (the operator asked not to wait); a
/// string that is no `qm guest exec`. Those run with `sh -c` as before.
pub fn qm_guest_exec(command: &str) -> Option<QmGuestExec> {
    let words = shell_words(command)?;
    let mut it = words.into_iter();
    let qm = it.next()?;
    if !(qm == "qm" || qm == "/usr/sbin/qm") || it.next()? != "guest" || it.next()? != "exec" {
        return None;
    }
    let mut vmid = None;
    let mut timeout = None;
    let mut argv = Vec::new();
    let mut rest = it.peekable();
    while let Some(w) = rest.next() {
        if w == "--" {
            argv.extend(rest.by_ref());
            break;
        }
        if let Some(opt) = w.strip_prefix("--").or_else(|| w.strip_prefix('-')) {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (opt.to_string(), rest.next()?),
            };
            match name.as_str() {
                "timeout" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    timeout = Some(value)
                }
                // No stdin reaches it either way (`sh -c` had /dev/null).
                "pass-stdin" if perl_bool(&value).is_some() => {}
                "synchronous" if perl_bool(&value) == Some(true) => {}
                _ => return None,
            }
            continue;
        }
        if vmid.is_none() {
            vmid = Some(
                w.parse::<u32>()
                    .ok()
                    .filter(|_| w.bytes().all(|b| b.is_ascii_digit()))?,
            );
        } else {
            argv.push(w);
        }
    }
    if argv.is_empty() {
        return None;
    }
    Some(QmGuestExec {
        vmid: vmid?,
        argv,
        timeout,
    })
}

/// A PVE boolean option value.
fn perl_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The words `sh -c` would make of `command` when it is one simple
/// command with no expansion: blanks split words; `'...'` is literal;
/// `"..."` is literal but for `\"`, `\\`, `\$`, `` \` `` and a
/// backslash-newline; a backslash outside quotes takes the next character
/// as it is. `None` when the shell would do more: an unquoted `;`, `&`,
/// `|`, `<`, `>`, `(`, `)`, newline, `$`, `` ` ``, `*`, `?`, `[`, a `~` or
/// `#` starting a word, a `$` or `` ` `` inside double quotes, an
/// unterminated quote, or a first word that assigns (`VAR=value`).
pub fn shell_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word is under way (`''` is an empty word).
    let mut started = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' => return None,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '\n' | '$' | '`' | '*' | '?' | '[' => {
                return None
            }
            '~' | '#' if !started => return None,
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        words.push(word);
    }
    let first = words.first()?;
    if first.contains('=') {
        return None;
    }
    Some(words)
}

/// The warning for a legacy command that rotates secrets in place, with
/// the structured equivalent; `None` for any other command.
pub fn secret_chain_warning(command: &str) -> Option<String> {
    let words = words(command);
    let has = |a: &str, b: &str, c: &str| {
        words
            .windows(3)
            .any(|w| w[0] == a && w[1] == b && w[2] == c)
    };
    if !(has("docker", "secret", "rm") && has("docker", "secret", "create")) {
        return None;
    }
    let var = |w: &str| resolve(w, &words);
    let mut cert = None;
    let mut key = None;
    let mut ca = None;
    let mut services: Vec<String> = Vec::new();
    for (i, w) in words.windows(5).enumerate() {
        if w[0] == "docker" && w[1] == "secret" && w[2] == "create" {
            let name = var(w[3]);
            match w[4].rsplit('/').next().unwrap_or("") {
                "cert.pem" => cert = Some(name),
                "key.pem" => key = Some(name),
                "ca.pem" => ca = Some(name),
                _ => {}
            }
        }
        if w[0] == "docker" && w[1] == "service" && w[2] == "update" {
            // The service is the first word after the flags.
            if let Some(s) = words[i + 3..]
                .iter()
                .find(|s| !s.starts_with('-'))
                .map(|s| var(s))
            {
                if !services.contains(&s) {
                    services.push(s);
                }
            }
        }
    }
    let mut parts = Vec::new();
    for (field, v) in [("cert", cert), ("key", key), ("ca", ca)] {
        if let Some(v) = v {
            parts.push(format!("{}: {}", json(field), json(&v)));
        }
    }
    if parts.is_empty() {
        parts.push(format!("{}: {}", json("cert"), json("NAME")));
    }
    let services: Vec<String> = services.iter().map(|s| json(s)).collect();
    Some(format!(
        "post_renewal_command removes and recreates Docker secrets in place: Docker refuses \
         to remove a secret a service uses, so on a live swarm this leaves the old \
         certificate in place while reporting success; use instead \
         \"post_renewal\": {{\"swarm_secrets\": {{{}}}, \"services\": [{}]}}",
        parts.join(", "),
        services.join(", ")
    ))
}

fn json(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Shell-ish words: split on blanks, `;`, `'`, `"` and the usual control
/// operators. Enough to find literal docker commands and `VAR=value`.
fn words(command: &str) -> Vec<&str> {
    command
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '\'' | '"' | '&' | '|' | '(' | ')'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// `$VAR` / `${VAR}` to the value of the last `VAR=value` before it
/// (quotes are word breaks, so `VAR="v"` is the words `VAR=`, `v`).
fn resolve(word: &str, words: &[&str]) -> String {
    let name = word
        .strip_prefix("${")
        .and_then(|w| w.strip_suffix('}'))
        .or_else(|| word.strip_prefix('$'));
    let Some(name) = name else {
        return word.to_string();
    };
    let assign = format!("{name}=");
    let mut value = None;
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix(&assign) {
            value = Some(if v.is_empty() {
                words.get(i + 1).copied().unwrap_or("").to_string()
            } else {
                v.to_string()
            });
        }
    }
    value.unwrap_or_else(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the Phoenix manifest's Portainer entry.
    const PORTAINER: &str = "qm guest exec 1001 -- /bin/bash -c 'SECRET_CERT=\"portainer_tls_cert.pem\"; \
        SECRET_KEY=\"portainer_tls_key.pem\"; SECRET_CA=\"portainer_tls_ca.pem\"; \
        SERVICE_NAME=\"production_portainer_service_portainer\"; \
        if docker secret inspect $SECRET_CERT >/dev/null 2>&1; then docker secret rm $SECRET_CERT; fi; \
        docker secret create $SECRET_CERT /tmp/cert.pem; \
        if docker secret inspect $SECRET_KEY >/dev/null 2>&1; then docker secret rm $SECRET_KEY; fi; \
        docker secret create $SECRET_KEY /tmp/key.pem; \
        if docker secret inspect $SECRET_CA >/dev/null 2>&1; then docker secret rm $SECRET_CA; fi; \
        docker secret create $SECRET_CA /tmp/ca.pem; \
        if docker service inspect $SERVICE_NAME >/dev/null 2>&1; then docker service update --force $SERVICE_NAME; fi'";

    #[test]
    fn the_portainer_chain_is_recognised_with_its_equivalent() {
        let w = secret_chain_warning(PORTAINER).unwrap();
        assert!(w.contains("Docker refuses"), "{w}");
        assert!(
            w.contains(
                r#""post_renewal": {"swarm_secrets": {"cert": "portainer_tls_cert.pem", "key": "portainer_tls_key.pem", "ca": "portainer_tls_ca.pem"}, "services": ["production_portainer_service_portainer"]}"#
            ),
            "{w}"
        );
    }

    #[test]
    fn a_lone_qm_guest_exec_is_split_as_sh_would() {
        let q = qm_guest_exec(PORTAINER).unwrap();
        assert_eq!(q.vmid, 1001);
        assert_eq!(q.argv[..2], ["/bin/bash", "-c"]);
        assert_eq!(q.argv.len(), 3);
        assert!(
            q.argv[2].starts_with("SECRET_CERT=\"portainer_tls_cert.pem\"; "),
            "{:?}",
            q.argv
        );
        assert!(q.argv[2].ends_with("$SERVICE_NAME; fi"), "{:?}", q.argv);
        let q = qm_guest_exec(
            "qm guest exec 1002 --timeout 30 -- docker service update --force \"my svc\" a\\ b",
        )
        .unwrap();
        assert_eq!((q.vmid, q.timeout.as_deref()), (1002, Some("30")));
        assert_eq!(
            q.argv,
            ["docker", "service", "update", "--force", "my svc", "a b"]
        );
        let q =
            qm_guest_exec("qm guest exec --pass-stdin=1 1003 systemctl restart docker").unwrap();
        assert_eq!((q.vmid, q.argv.len()), (1003, 3));
        assert_eq!(
            qm_guest_exec("  qm guest exec 7 -- echo ''  ")
                .unwrap()
                .argv,
            ["echo", ""]
        );
    }

    #[test]
    fn anything_the_shell_does_more_with_is_left_to_it() {
        for command in [
            "qm guest exec 1001 -- true && echo done",
            "qm guest exec 1001 -- true; reboot",
            "qm guest exec 1001 -- cat /x > /y",
            "qm guest exec 1001 -- echo $HOME",
            "qm guest exec 1001 -- echo \"$HOME\"",
            "qm guest exec 1001 -- echo `id`",
            "qm guest exec 1001 -- ls /tmp/*.pem",
            "qm guest exec 1001 -- ls ~",
            "qm guest exec 1001 -- ls # x",
            "qm guest exec 1001 -- echo 'open",
            "qm guest exec 1001 --synchronous 0 -- true",
            "qm guest exec 1001 --bogus 1 -- true",
            "qm guest exec 1001",
            "qm guest exec 1001 --",
            "qm guest exec abc -- true",
            "qm guest exec 1001 ls -l",
            "X=1 qm guest exec 1001 -- true",
            "pct exec 101 -- systemctl reload nginx",
            "qm guest exec 1001 -- true\nreboot",
        ] {
            assert_eq!(qm_guest_exec(command), None, "{command}");
        }
    }

    #[test]
    fn literal_names_and_other_commands() {
        let w = secret_chain_warning(
            "docker secret rm web_cert && docker secret create web_cert /tmp/cert.pem",
        )
        .unwrap();
        assert!(w.contains(r#"{"cert": "web_cert"}, "services": []"#), "{w}");
        assert_eq!(
            secret_chain_warning("pct exec 101 -- systemctl reload nginx"),
            None
        );
        assert_eq!(
            secret_chain_warning("docker secret create x /tmp/cert.pem"),
            None,
            "creating alone replaces nothing"
        );
    }
}
