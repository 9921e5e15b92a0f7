//! YAML output of the rendered compose file that the docker 20.10 CLI reads
//! back as written, for [`super::render`].
//!
//! serde_yaml_ng writes YAML 1.2, where `yes`, `off`, `y`, `1_000` or
//! `22:22` are plain strings and need no quotes; the docker 20.10 CLI reads
//! the compose file with go-yaml v2, which is YAML 1.1, and would take them
//! for booleans or numbers (an environment value `on` becoming `true`, a
//! port `22:22` becoming 1342). Such strings, keys or values, are written
//! single-quoted, so every string reaches docker as the string it is.

use anyhow::Result;
use serde_yaml_ng::Value;

/// Whether the docker 20.10 CLI (YAML 1.1) reads plain `s` as a non-string
/// where serde_yaml_ng (YAML 1.2) writes it plain: booleans such as `yes`,
/// `off`, `y`, and numbers with `_` or `:` (`1_000`, sexagesimal `1:20`).
fn yaml11_non_string(s: &str) -> bool {
    const BOOLS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let t = s.trim_start_matches(['+', '-']);
    BOOLS.contains(&s)
        || (t.starts_with(|c: char| c.is_ascii_digit())
            && t.contains(['_', ':'])
            && t.chars()
                .all(|c| c.is_ascii_hexdigit() || "xXoO_:.+-".contains(c)))
}

/// Serialise `doc` with serde_yaml_ng, quoting what YAML 1.1 would misread:
/// such strings go through as unique plain markers, replaced afterwards.
pub(super) fn to_yaml(mut doc: Value) -> Result<String> {
    let plain = serde_yaml_ng::to_string(&doc)?;
    let mut marker = String::from("phoenix-quoted-");
    while plain.contains(&marker) {
        marker.insert(0, 'x');
    }
    let mut quoted = Vec::new();
    mark(&mut doc, &marker, &mut quoted);
    if quoted.is_empty() {
        return Ok(plain);
    }
    let mut text = serde_yaml_ng::to_string(&doc)?;
    for (i, s) in quoted.iter().enumerate() {
        text = text.replacen(
            &format!("{marker}{i}-end"),
            &format!("'{}'", s.replace('\'', "''")),
            1,
        );
    }
    Ok(text)
}

/// Replace every YAML 1.1-ambiguous key and string under `value` with a
/// marker numbered by its index in `quoted`.
fn mark(value: &mut Value, marker: &str, quoted: &mut Vec<String>) {
    match value {
        Value::String(s) => swap(s, marker, quoted),
        Value::Sequence(list) => list.iter_mut().for_each(|v| mark(v, marker, quoted)),
        Value::Mapping(map) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(mut k, mut v)| {
                    if let Value::String(s) = &mut k {
                        swap(s, marker, quoted);
                    }
                    mark(&mut v, marker, quoted);
                    (k, v)
                })
                .collect();
        }
        Value::Tagged(tagged) => mark(&mut tagged.value, marker, quoted),
        _ => {}
    }
}

/// Put the next marker in place of `s` if YAML 1.1 would misread it,
/// keeping `s` in `quoted`.
fn swap(s: &mut String, marker: &str, quoted: &mut Vec<String>) {
    if yaml11_non_string(s) {
        quoted.push(std::mem::replace(
            s,
            format!("{marker}{}-end", quoted.len()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_docker_would_misread_are_quoted() {
        let text = "services:\n  a:\n    environment: {A: 'on', B: '1_000', C: '22:22', 'n': x}\n";
        let out = to_yaml(serde_yaml_ng::from_str(text).unwrap()).unwrap();
        for line in ["A: 'on'", "B: '1_000'", "C: '22:22'", "'n': x"] {
            assert!(out.contains(line), "{out}");
        }
    }
}
