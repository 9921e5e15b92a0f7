//! Subject alternative names: validated one by one (as `step` would read
//! them, a comma, a space or a leading `-` would become another name or a
//! flag) and compared as sets.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// A DNS name or wildcard, lowercased.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// Anything else a certificate carries (email, URI...), as text.
    Other(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
            San::Other(o) => f.write_str(o),
        }
    }
}

/// Parse and validate one SAN of the manifest: a DNS name, a wildcard
/// (`*.example.org`) or an IPv4/IPv6 address. Refused: empty values,
/// spaces, commas (step would take `a,b` as one literal name) and a
/// leading `-` (step would take it as a flag).
pub fn parse_san(value: &str) -> std::result::Result<San, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.starts_with('-') {
        return Err("starts with '-' (it would be read as a flag)".into());
    }
    if value.contains(',') {
        return Err("contains a comma: give each name its own entry".into());
    }
    if value.chars().any(char::is_whitespace) {
        return Err("contains white space".into());
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        // An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4
        // address: step-ca writes it so, and asking for the other form
        // would make every new pair look wrong and be issued again.
        return Ok(San::Ip(match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }));
    }
    // A fully qualified name's trailing dot is the same name; certificates
    // carry it without.
    let value = match value.strip_suffix('.') {
        Some(v) if !v.is_empty() && !v.ends_with('.') => v,
        _ => value,
    };
    let name = value.to_ascii_lowercase();
    let rest = name.strip_prefix("*.").unwrap_or(&name);
    if rest.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("'{label}' is not a valid DNS label"));
        }
    }
    if name.starts_with("*.") && !rest.contains('.') {
        return Err("a wildcard needs at least two labels after '*.'".into());
    }
    Ok(San::Dns(name))
}

/// The SAN set a manifest entry asks for: its subject plus its `sans`,
/// each validated. The error names the offending value.
pub fn wanted_sans(subject: &str, sans: &[String]) -> std::result::Result<BTreeSet<San>, String> {
    std::iter::once(subject)
        .chain(sans.iter().map(String::as_str))
        .map(|v| parse_san(v).map_err(|why| format!("'{v}': {why}")))
        .collect()
}

/// The set as one line, for messages.
pub(crate) fn join(sans: &BTreeSet<San>) -> String {
    sans.iter()
        .map(San::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_validation_refuses_what_step_would_misread() {
        assert_eq!(
            parse_san("Web.Example").unwrap(),
            San::Dns("web.example".into())
        );
        assert_eq!(
            parse_san("*.internal.example").unwrap(),
            San::Dns("*.internal.example".into())
        );
        assert_eq!(
            parse_san("10.0.0.1").unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_san("::1").unwrap(), San::Ip("::1".parse().unwrap()));
        assert!(parse_san("nginx-gateway-client").is_ok());
        // Forms a certificate carries otherwise are taken as what it carries.
        assert_eq!(
            parse_san("::ffff:10.0.0.1").unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_san("web.example.").unwrap(),
            San::Dns("web.example".into())
        );
        assert!(parse_san("web.example..").is_err());
        assert!(parse_san(".").is_err());
        for bad in [
            "", "-f", "a,b", "a b", "*.com", "a..b", "-a.b", "a-.b", "x*.y.z", "é.x",
        ] {
            assert!(parse_san(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wanted_set_includes_subject_and_ignores_order_and_case() {
        let a = wanted_sans("web.x", &["10.0.0.1".into(), "WEB.x".into()]).unwrap();
        let b = wanted_sans("web.x", &["10.0.0.1".into()]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        let e = wanted_sans("web.x", &["a,b".into()]).unwrap_err();
        assert!(e.contains("'a,b'"), "{e}");
    }
}
