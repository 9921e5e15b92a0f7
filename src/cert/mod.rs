//! X.509 for renewal, natively: read a certificate bundle and its key
//! (no `openssl` process per file), compare them with what the manifest
//! asks for, and decide what to do: issue, renew or nothing.
//!
//! - SANs are compared as sets (DNS names case-insensitively, IP addresses
//!   by value, the subject included), so a reordered manifest or an IP SAN
//!   never causes a reissue, and a changed one always does.
//! - The key matches when the public point derived from the private key
//!   (EC P-256, the key type step issues) equals the certificate's.
//! - "Issued by our root" is checked by linkage: each certificate of the
//!   bundle names the next as issuer (name and key identifier), and the
//!   last names our root. Signatures are checked by the CA itself when it
//!   accepts a renewal (it refuses a certificate it did not sign).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;

use crate::config::Threshold;

pub mod san;

use san::join;
pub use san::{parse_san, wanted_sans, San};

/// Largest certificate bundle or key read.
const PEM_LIMIT: u64 = 1 << 20;

/// What the renewal decision needs from a certificate bundle.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Serial number, decimal (as `step certificate inspect` shows it).
    pub serial: String,
    /// Subject common name.
    pub subject_cn: Option<String>,
    /// Subject alternative names.
    pub sans: BTreeSet<San>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// The leaf's public key (the BIT STRING content of its SPKI).
    pub public_key: Vec<u8>,
    /// Whether the bundle chains, by name and key identifier, to the root.
    pub chains_to_root: bool,
    /// The certificates after the leaf (intermediates), PEM.
    pub chain_pem: String,
}

/// The identity of our root, for the linkage check.
#[derive(Debug, Clone)]
pub struct Root {
    subject: Vec<u8>,
    key_id: Option<Vec<u8>>,
    /// The root certificate, PEM.
    pub pem: String,
}

/// Names and key identifiers of one certificate, for linkage.
struct Link {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
}

fn link_of(x: &x509_parser::certificate::X509Certificate<'_>) -> Link {
    let mut l = Link {
        subject: x.subject().as_raw().to_vec(),
        issuer: x.issuer().as_raw().to_vec(),
        ski: None,
        aki: None,
    };
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => l.ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                l.aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    l
}

/// `child` names `parent` as its issuer, and by key identifier when the
/// parent has one (step-ca always writes both; a look-alike with the same
/// names but another key fails here).
fn issued_by(child: &Link, parent_subject: &[u8], parent_ski: &Option<Vec<u8>>) -> bool {
    child.issuer == parent_subject
        && match (&child.aki, parent_ski) {
            (Some(a), Some(s)) => a == s,
            (None, Some(_)) => false,
            _ => true,
        }
}

fn pems(bytes: &[u8]) -> Result<Vec<Pem>> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| anyhow!("bad PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            out.push(pem);
        }
    }
    if out.is_empty() {
        return Err(anyhow!("no CERTIFICATE block"));
    }
    Ok(out)
}

impl Root {
    /// A root that nothing chains to: certificates are still read (expiry,
    /// SANs) while the real root cannot be, and none counts as ours.
    pub fn unreadable() -> Root {
        Root {
            subject: Vec::new(),
            key_id: None,
            pem: String::new(),
        }
    }
}

/// Read the root certificate.
pub fn read_root(path: &Path) -> Result<Root> {
    // In the CA state directory, which the CA container writes: no link
    // followed, only a plain file, bounded.
    let bytes = crate::guestdir::read_file(path, PEM_LIMIT)
        .with_context(|| format!("reading root certificate '{}'", path.display()))?;
    let pem = pems(&bytes).with_context(|| format!("root certificate '{}'", path.display()))?;
    let x = pem[0]
        .parse_x509()
        .map_err(|e| anyhow!("root certificate '{}': {e}", path.display()))?;
    let l = link_of(&x);
    Ok(Root {
        subject: l.subject,
        key_id: l.ski,
        pem: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Parse a certificate bundle (leaf first, then intermediates).
pub fn parse_bundle(bytes: &[u8], root: &Root) -> Result<CertInfo> {
    let blocks = pems(bytes)?;
    let mut links = Vec::with_capacity(blocks.len());
    let mut chain_pem = String::new();
    let mut info = None;
    for (i, pem) in blocks.iter().enumerate() {
        let x = pem
            .parse_x509()
            .map_err(|e| anyhow!("certificate {i}: {e}"))?;
        links.push(link_of(&x));
        if i > 0 {
            chain_pem.push_str(&pem_block("CERTIFICATE", &pem.contents));
            continue;
        }
        let mut sans = BTreeSet::new();
        if let Ok(Some(ext)) = x.subject_alternative_name() {
            for name in &ext.value.general_names {
                sans.insert(match name {
                    GeneralName::DNSName(d) => San::Dns(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                        16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                        _ => San::Other(format!("IP:{b:02x?}")),
                    },
                    other => San::Other(other.to_string()),
                });
            }
        }
        let validity = x.validity();
        info = Some(CertInfo {
            serial: x.serial.to_string(),
            subject_cn: x
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            sans,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            public_key: x.public_key().subject_public_key.data.to_vec(),
            chains_to_root: false,
            chain_pem: String::new(),
        });
    }
    let mut info = info.expect("at least one block");
    let linked = links
        .windows(2)
        .all(|w| issued_by(&w[0], &w[1].subject, &w[1].ski));
    let last = links.last().expect("at least one block");
    info.chains_to_root = linked && issued_by(last, &root.subject, &root.key_id);
    info.chain_pem = chain_pem;
    Ok(info)
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// The public point (uncompressed SEC1) derived from a PEM private key:
/// `EC PRIVATE KEY` (SEC1, what step writes) or unencrypted PKCS#8, P-256.
/// The point is computed from the secret scalar, not taken from the
/// optional copy inside the file.
pub fn key_public_point(pem: &[u8]) -> Result<Vec<u8>> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePrivateKey;
    let text = std::str::from_utf8(pem).map_err(|_| anyhow!("key is not PEM text"))?;
    let key = if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(text).map_err(|e| anyhow!("not an EC P-256 key: {e}"))?
    } else if text.contains("-----BEGIN PRIVATE KEY-----") {
        p256::SecretKey::from_pkcs8_pem(text).map_err(|e| anyhow!("not an EC P-256 key: {e}"))?
    } else {
        return Err(anyhow!(
            "unsupported key format (expected an unencrypted EC P-256 key)"
        ));
    };
    Ok(key.public_key().to_encoded_point(false).as_bytes().to_vec())
}

/// The public point (uncompressed SEC1) a PEM private key file carries:
/// the `publicKey` of its SEC1 `ECPrivateKey` (step writes one, as Go's
/// `x509.MarshalECPrivateKey` does), also inside unencrypted PKCS#8;
/// checked to be a point of P-256 (a cheap on-curve check). A file without
/// it is derived ([`key_public_point`]).
///
/// For planning, where the derivation (a P-256 scalar multiplication,
/// ~0.35 ms) would dominate a cold run over many keys. The stored point
/// is not proven to be the scalar's: a key file whose two halves disagree
/// passes as matching its certificate here. Only its writer can make one
/// (a guest, its own key), and the harm stays with that guest's TLS; a
/// pair this tool installs is checked with the derived point
/// ([`key_public_point`]) before it is installed.
pub fn key_public_point_stored(pem: &[u8]) -> Result<Vec<u8>> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use sec1::der::Decode;
    /// id-ecPublicKey and prime256v1 (RFC 5480).
    const EC_PUBLIC_KEY: sec1::der::asn1::ObjectIdentifier =
        sec1::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: sec1::der::asn1::ObjectIdentifier =
        sec1::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    let not_p256 = || anyhow!("not an EC P-256 key");
    let (label, der) =
        sec1::der::pem::decode_vec(pem).map_err(|e| anyhow!("key is not PEM: {e}"))?;
    let sec1_der = match label {
        "EC PRIVATE KEY" => der,
        "PRIVATE KEY" => {
            let info = sec1::pkcs8::PrivateKeyInfo::from_der(&der)
                .map_err(|e| anyhow!("not a PKCS#8 key: {e}"))?;
            let curve = info
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<sec1::der::asn1::ObjectIdentifier>().ok());
            if info.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
                return Err(not_p256());
            }
            info.private_key.to_vec()
        }
        _ => {
            return Err(anyhow!(
                "unsupported key format (expected an unencrypted EC P-256 key)"
            ))
        }
    };
    let key =
        sec1::EcPrivateKey::from_der(&sec1_der).map_err(|e| anyhow!("not an EC P-256 key: {e}"))?;
    if let Some(params) = &key.parameters {
        if params.named_curve() != Some(P256) {
            return Err(not_p256());
        }
    }
    if key.private_key.len() != 32 {
        return Err(not_p256());
    }
    match key.public_key {
        Some(point) => {
            let public = p256::PublicKey::from_sec1_bytes(point)
                .map_err(|_| anyhow!("the key file's public point is not on P-256"))?;
            Ok(public.to_encoded_point(false).as_bytes().to_vec())
        }
        None => key_public_point(pem),
    }
}

/// What to do with one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing: valid, matching, not yet due.
    Nothing,
    /// Past the threshold: `step ca renew`.
    Renew,
    /// Missing, wrong or expired: `step ca certificate`.
    Issue,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Nothing => "nothing",
            Action::Renew => "renew",
            Action::Issue => "issue",
        })
    }
}

/// The decision for one certificate and why.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// What to do.
    pub action: Action,
    /// Why, for humans.
    pub reason: String,
    /// The current certificate, when it could be read.
    pub current: Option<CertInfo>,
}

/// Unix seconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
    )
    .to_string()
}

/// The moment a certificate is due under `threshold`, Unix seconds.
pub fn due_at(info: &CertInfo, threshold: Threshold) -> i64 {
    match threshold {
        Threshold::Percent(p) => {
            let life = (info.not_after - info.not_before).max(0);
            info.not_before + life * i64::from(p) / 100
        }
        Threshold::Remaining(d) => info.not_after - d.as_secs() as i64,
    }
}

/// Decide for one certificate from the bytes of its files (an I/O error
/// means missing or unreadable), what the manifest asks, our root, the
/// time now (Unix seconds) and the threshold. `derive` turns the key into
/// its public point ([`key_public_point`], or a memo of it).
#[allow(clippy::too_many_arguments)]
pub fn assess(
    cert: std::io::Result<Vec<u8>>,
    key: std::io::Result<Vec<u8>>,
    derive: &dyn Fn(&[u8]) -> Result<Vec<u8>>,
    subject: &str,
    wanted: &BTreeSet<San>,
    root: &Root,
    now: i64,
    threshold: Threshold,
) -> Assessment {
    let issue = |reason: String, current: Option<CertInfo>| Assessment {
        action: Action::Issue,
        reason,
        current,
    };
    let bytes = match cert {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return issue("certificate missing".into(), None)
        }
        Err(e) => return issue(format!("certificate unreadable: {e}"), None),
    };
    let info = match parse_bundle(&bytes, root) {
        Ok(i) => i,
        Err(e) => return issue(format!("certificate unreadable: {e:#}"), None),
    };
    let key_point = match key {
        Ok(k) => derive(&k),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow!("missing")),
        Err(e) => Err(anyhow!(e)),
    };
    let why = match key_point {
        Err(e) => Some(format!("key {e:#}")),
        Ok(p) if p != info.public_key => Some("key does not match the certificate".into()),
        Ok(_) if &info.sans != wanted => Some(format!(
            "SANs differ: have [{}], want [{}]",
            join(&info.sans),
            join(wanted)
        )),
        Ok(_) if info.subject_cn.as_deref() != Some(subject) => Some(format!(
            "subject is '{}', want '{subject}'",
            info.subject_cn.as_deref().unwrap_or("")
        )),
        Ok(_) if now >= info.not_after => Some("expired".into()),
        // Clients on this host's clock reject it: issue one valid now.
        Ok(_) if now < info.not_before => Some(format!(
            "not valid yet (valid from {}, {} s from now: clock skew?)",
            rfc3339(info.not_before),
            info.not_before - now
        )),
        Ok(_) if !info.chains_to_root => Some("not issued by our root".into()),
        Ok(_) => None,
    };
    if let Some(reason) = why {
        return issue(reason, Some(info));
    }
    let due = due_at(&info, threshold);
    if now >= due {
        return Assessment {
            action: Action::Renew,
            reason: "past the renewal threshold".into(),
            current: Some(info),
        };
    }
    Assessment {
        action: Action::Nothing,
        reason: "valid".into(),
        current: Some(info),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn the_stored_public_point_is_the_derived_one_or_refused() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        use sec1::der::Encode;
        let key = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let sec1_pem = key.to_sec1_pem(LineEnding::LF).unwrap();
        let derived = key_public_point(sec1_pem.as_bytes()).unwrap();
        // SEC1 with the point (what step and Go write), and PKCS#8.
        assert_eq!(
            key_public_point_stored(sec1_pem.as_bytes()).unwrap(),
            derived
        );
        let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(key_public_point_stored(pkcs8.as_bytes()).unwrap(), derived);
        // SEC1 without the optional point: derived.
        let bare = sec1::EcPrivateKey {
            private_key: &[7u8; 32],
            parameters: None,
            public_key: None,
        };
        let bare_pem = pem_block("EC PRIVATE KEY", &bare.to_der().unwrap());
        assert_eq!(
            key_public_point_stored(bare_pem.as_bytes()).unwrap(),
            derived
        );
        // A point that is not on the curve, another curve, not a key.
        let mut off = derived.clone();
        off[64] ^= 1;
        let bad = sec1::EcPrivateKey {
            private_key: &[7u8; 32],
            parameters: None,
            public_key: Some(&off),
        };
        let bad_pem = pem_block("EC PRIVATE KEY", &bad.to_der().unwrap());
        let e = key_public_point_stored(bad_pem.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not on P-256"), "{e}");
        let p384 = sec1::EcPrivateKey {
            private_key: &[7u8; 48],
            parameters: Some(sec1::EcParameters::NamedCurve(
                sec1::der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34"),
            )),
            public_key: None,
        };
        let p384_pem = pem_block("EC PRIVATE KEY", &p384.to_der().unwrap());
        assert!(key_public_point_stored(p384_pem.as_bytes()).is_err());
        assert!(key_public_point_stored(
            b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn pem_block_round_trips() {
        let der: Vec<u8> = (0..=255u8).chain(0..7).collect();
        let text = pem_block("CERTIFICATE", &der);
        let pem = Pem::iter_from_buffer(text.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(pem.contents, der);
    }

    fn info(nb: i64, na: i64) -> CertInfo {
        CertInfo {
            serial: "01".into(),
            subject_cn: None,
            sans: BTreeSet::new(),
            not_before: nb,
            not_after: na,
            public_key: Vec::new(),
            chains_to_root: true,
            chain_pem: String::new(),
        }
    }

    #[test]
    fn thresholds() {
        let i = info(1000, 2000);
        assert_eq!(due_at(&i, Threshold::Percent(66)), 1660);
        assert_eq!(
            due_at(&i, Threshold::Remaining(Duration::from_secs(100))),
            1900
        );
    }

    // A real self-signed certificate and key made by step: parse, SANs,
    // key match, linkage, and every decision.
    fn step(dir: &Path, args: &[&str]) {
        let st = std::process::Command::new("step")
            .args(args)
            .args(["--no-password", "--insecure"])
            .current_dir(dir)
            .env("STEPPATH", dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("step CLI");
        assert!(st.success(), "step {args:?}");
    }

    /// A root and a leaf for web.x it signed, made by step.
    fn make_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (root, root_key) = (format!("{name}-root.crt"), format!("{name}-root.key"));
        step(
            dir,
            &[
                "certificate",
                "create",
                "Root",
                &root,
                &root_key,
                "--profile",
                "root-ca",
            ],
        );
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        step(
            dir,
            &[
                "certificate",
                "create",
                "web.x",
                &crt,
                &key,
                "--ca",
                &root,
                "--ca-key",
                &root_key,
                "--san",
                "web.x",
                "--san",
                "*.web.x",
                "--san",
                "10.0.0.1",
                "--not-after",
                "1h",
            ],
        );
        (dir.join(root), dir.join(crt), dir.join(key))
    }

    #[test]
    fn real_certificate_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let (root, crt, key) = make_pki(dir.path(), "c");
        let (_, other_crt, other_key) = make_pki(dir.path(), "o");
        let root = read_root(&root).unwrap();
        let (c, k) = (std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap());
        let want = wanted_sans("web.x", &["10.0.0.1".into(), "*.web.x".into()]).unwrap();
        let now = parse_bundle(&c, &root).unwrap().not_before + 60;
        let t = Threshold::Percent(66);
        let a = assess(
            Ok(c.clone()),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now,
            t,
        );
        assert_eq!(a.action, Action::Nothing, "{}", a.reason);
        // Before its notBefore (a skewed clock): not valid now, issue.
        let early = assess(
            Ok(c.clone()),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now - 61,
            t,
        );
        assert_eq!(early.action, Action::Issue);
        assert!(
            early.reason.starts_with("not valid yet"),
            "{}",
            early.reason
        );
        assert!(a.current.unwrap().chains_to_root);
        let late = assess(
            Ok(c.clone()),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now + 2400,
            t,
        );
        assert_eq!(late.action, Action::Renew);
        let dead = assess(
            Ok(c.clone()),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now + 3600,
            t,
        );
        assert_eq!(
            (dead.action, dead.reason.as_str()),
            (Action::Issue, "expired")
        );
        let fewer = wanted_sans("web.x", &["10.0.0.1".into()]).unwrap();
        let drift = assess(
            Ok(c.clone()),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &fewer,
            &root,
            now,
            t,
        );
        assert!(drift.reason.contains("SANs differ"), "{}", drift.reason);
        let other = std::fs::read(&other_key).unwrap();
        let wrong = assess(
            Ok(c.clone()),
            Ok(other),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now,
            t,
        );
        assert!(wrong.reason.contains("does not match"), "{}", wrong.reason);
        let foreign = std::fs::read(&other_crt).unwrap();
        let foreign = parse_bundle(&foreign, &root).unwrap();
        assert!(
            !foreign.chains_to_root,
            "another self-signed cert taken as ours"
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let gone = assess(
            Err(missing),
            Ok(k.clone()),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now,
            t,
        );
        assert_eq!(gone.reason, "certificate missing");
        let garbage = assess(
            Ok(b"junk".to_vec()),
            Ok(k),
            &key_public_point,
            "web.x",
            &want,
            &root,
            now,
            t,
        );
        assert!(garbage.reason.contains("unreadable"), "{}", garbage.reason);
    }
}
