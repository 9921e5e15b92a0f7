//! Property tests of the parsers that read outside data: the toolkit's JSON
//! documents, the readiness token, `qm guest exec` and `docker info` output,
//! manifest SANs and certificate/key files. Arbitrary (and mutated valid)
//! inputs never panic; errors carry the documented kind; what is accepted
//! satisfies the parser's contract. 256 cases each (`PROPTEST_CASES=N` for
//! more); the total number of inputs is checked against RELIABILITY.md.

mod common;
mod reliability_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use phoenix_hooks::cert::san::parse_san;
use phoenix_hooks::config::{parse_json, Config};
use phoenix_hooks::exit::{kind_of, Kind};
use phoenix_hooks::proxmox::{parse_qm_exec, GuestOutput};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Number of properties below (each runs `cases()` inputs).
const PROPERTIES: usize = 8;

/// Any JSON value, a few levels deep, with keys drawn partly from the
/// documents' real vocabulary so that deserializers get past the first key.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("ca".to_string()),
        Just("url".to_string()),
        Just("guests".to_string()),
        Just("renewal".to_string()),
        Just("swarm".to_string()),
        Just("exited".to_string()),
        Just("exitcode".to_string()),
        Just("out-data".to_string()),
        Just("LocalNodeState".to_string()),
        Just("generation".to_string()),
        Just("version".to_string()),
        "[a-zA-Z_-]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A root certificate and a leaf it signed (made with `step`, once).
fn pki() -> &'static (tempfile::TempDir, phoenix_hooks::cert::Root, Vec<u8>) {
    static PKI: OnceLock<(tempfile::TempDir, phoenix_hooks::cert::Root, Vec<u8>)> = OnceLock::new();
    PKI.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        let step = |args: &[&str]| {
            let out = Command::new("step")
                .args(args)
                .env("STEPPATH", d.path())
                .output()
                .expect("step CLI");
            assert!(out.status.success(), "{out:?}");
        };
        let (rc, rk, lc, lk) = (p("root.crt"), p("root.key"), p("leaf.crt"), p("leaf.key"));
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        step(&[
            "certificate",
            "create",
            "Prop Root",
            &s(&rc),
            &s(&rk),
            "--profile",
            "root-ca",
            "--no-password",
            "--insecure",
        ]);
        step(&[
            "certificate",
            "create",
            "leaf.test",
            &s(&lc),
            &s(&lk),
            "--profile",
            "leaf",
            "--ca",
            &s(&rc),
            "--ca-key",
            &s(&rk),
            "--no-password",
            "--insecure",
            "--san",
            "leaf.test",
        ]);
        let root = phoenix_hooks::cert::read_root(&rc).unwrap();
        let leaf = std::fs::read(&lc).unwrap();
        (d, root, leaf)
    })
}

/// The DER inside a PEM file.
fn der_of(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn base64_encode(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for ch in b.chunks(3) {
        let n = (ch[0] as u32) << 16
            | (*ch.get(1).unwrap_or(&0) as u32) << 8
            | *ch.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= ch.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b = base64_encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn toolkit_json_arbitrary_bytes_are_config_errors(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let r = parse_json::<Config>(&bytes, Path::new("/etc/phoenix/toolkit.json"), "configuration");
        if let Err(e) = r {
            prop_assert_eq!(kind_of(&e), Kind::Config);
            let msg = format!("{e:#}");
            prop_assert!(msg.contains("/etc/phoenix/toolkit.json"), "{}", msg);
        }
    }

    #[test]
    fn toolkit_json_arbitrary_values_are_config_errors(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Err(e) = parse_json::<Config>(&bytes, Path::new("t.json"), "configuration") {
            prop_assert_eq!(kind_of(&e), Kind::Config);
        }
        // The Phoenix files' readers go through the same function.
        if let Err(e) = parse_json::<Value>(&bytes, Path::new("p.json"), "x") {
            prop_assert!(false, "valid JSON refused: {e:#}");
        }
    }

    #[test]
    fn ca_token_any_bytes_is_fresh_only_when_it_carries_the_generation(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            any::<(u32, bool)>().prop_map(|(ver, same)| serde_json::to_vec(&json!({
                "version": ver % 3, "generation": if same { "00ff" } else { "abcd" },
                "ca_url": "https://ca:9000", "fingerprint": "ab".repeat(32),
                "written_at": "2024-01-01T00:00:00Z"})).unwrap()),
        ]
    ) {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let paths = cfg.ca.paths_in(d.path());
        std::fs::write(&paths.generation, br#"{"generation":"00ff","created_at":"2024-01-01T00:00:00Z"}"#).unwrap();
        std::fs::write(&paths.ready, &bytes).unwrap();
        let verdict = phoenix_hooks::ca::token::check(&paths);
        if verdict.is_fresh() {
            let v: Value = serde_json::from_slice(&bytes).expect("a fresh token is JSON");
            prop_assert_eq!(&v["generation"], "00ff");
        }
        prop_assert!(!matches!(verdict, phoenix_hooks::ca::token::Verdict::Missing));
        let _ = verdict.describe();
    }

    #[test]
    fn qm_exec_arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = parse_qm_exec(&s, "vm 100: true");
    }

    #[test]
    fn qm_exec_succeeds_only_when_exited_and_exitcode(v in json_value(), exited in prop::option::of(json_value()), code in prop::option::of(json_value())) {
        let mut obj = match v { Value::Object(m) => m, _ => Default::default() };
        if let Some(e) = exited { obj.insert("exited".into(), e); }
        if let Some(c) = code { obj.insert("exitcode".into(), c); }
        let text = Value::Object(obj.clone()).to_string();
        if parse_qm_exec(&text, "vm 100: true").is_ok() {
            let truthy = match &obj["exited"] {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_i64().unwrap_or(0) != 0,
                Value::String(s) => s == "1" || s == "true",
                _ => false,
            };
            prop_assert!(truthy, "accepted without exited: {text}");
            prop_assert!(obj.get("exitcode").is_some_and(Value::is_number), "accepted without exitcode: {text}");
        }
    }

    #[test]
    fn docker_info_arbitrary_output_never_panics(
        stdout in prop_oneof![".{0,200}", json_value().prop_map(|v| v.to_string())],
        stderr in prop_oneof![Just(String::new()), ".{0,40}"],
        code in -1i32..3,
    ) {
        let out = GuestOutput { exitcode: code, stdout, stderr: stderr.clone(), out_truncated: false, err_truncated: false };
        if phoenix_hooks::swarm::docker::parse_info(&out).is_ok() {
            prop_assert_eq!(code, 0);
            prop_assert!(stderr.trim().is_empty());
        }
    }

    #[test]
    fn accepted_sans_are_never_flags_lists_or_words(s in prop_oneof![".{0,40}", "[-a-z0-9.,* $();_]{0,30}"]) {
        if let Ok(san) = parse_san(&s) {
            let text = san.to_string();
            prop_assert!(!text.starts_with('-'), "{s:?} -> {text}");
            prop_assert!(!text.contains(','), "{s:?} -> {text}");
            prop_assert!(!text.chars().any(char::is_whitespace), "{s:?} -> {text}");
            prop_assert!(!text.contains(['$', '(', ')', ';', '`']), "{s:?} -> {text}");
        }
    }

    #[test]
    fn certificate_files_of_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let (_, root, leaf) = pki();
        let _ = phoenix_hooks::cert::parse_bundle(&bytes, root);
        let _ = phoenix_hooks::cert::key_public_point(&bytes);
        // A real certificate with a few bytes of its DER changed, then cut.
        let mut der = der_of(leaf);
        for (at, b) in &flips {
            let i = at.index(der.len());
            der[i] = *b;
        }
        let _ = phoenix_hooks::cert::parse_bundle(&pem("CERTIFICATE", &der), root);
        der.truncate(cut.index(der.len() + 1));
        let _ = phoenix_hooks::cert::parse_bundle(&pem("CERTIFICATE", &der), root);
        let _ = phoenix_hooks::cert::key_public_point(&pem("EC PRIVATE KEY", &der));
        let _ = phoenix_hooks::cert::key_public_point(&pem("PRIVATE KEY", &der));
    }
}

fn cases() -> u32 {
    reliability_support::size("PROPTEST_CASES", 256) as u32
}

/// The inputs these properties try, in RELIABILITY.md (proptest runs
/// exactly `cases` inputs per property: none is filtered out).
#[test]
fn figures() {
    if reliability_support::default_sizes("PROPTEST_CASES") {
        reliability_support::figures(&[(
            "parsers-inputs",
            "arbitrary and mutated inputs given to the parsers (JSON documents, ca.ready, qm and docker output, SANs, certificate and key files) under proptest; none panicked",
            (PROPERTIES * cases() as usize).to_string(),
        )]);
    }
}
