//! Recognising the old bash's Swarm secret chain in a legacy
//! `post_renewal_command`: `docker secret rm X; docker secret create X
//! /tmp/cert.pem; ...; docker service update --force S`. On a live swarm
//! Docker refuses to remove a secret a service uses, so every `rm` and
//! `create` fails, the last `service update` succeeds, and the command
//! reports success while the service keeps the old certificate. Such a
//! command is named at plan time with its structured equivalent
//! (`post_renewal.swarm_secrets`), which rotates for real.
//!
//! Only recognised, never rewritten: the operator's manifest is theirs.

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
