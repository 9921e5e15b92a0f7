//! Compose-style interpolation of `$VAR` and `${VAR...}` in a stack's
//! compose file, for [`super::render`].
//!
//! Values come only from the stack's own variables (its environment's
//! `variables`), never from the process environment: the file is rendered
//! on the Proxmox host, whose environment says nothing about the stack and
//! must not leak into a guest's services, and the same file must render the
//! same way whoever runs `phoenix-deploy`. For the same reason a name used
//! and not set is an error naming it rather than the empty string.
//!
//! Interpolation happens here and only here: the rendered output has every
//! `$` doubled (with [`walk_strings`]), so the docker CLI, which
//! interpolates again from the guest's environment, gives back exactly the
//! strings interpolated here.

use anyhow::Result;
use serde_yaml_ng::Value;

use super::render::{join, key_text};

/// Call `f` on every string value (not keys) under `value`, with its key path.
pub(super) fn walk_strings(
    value: &mut Value,
    at: &str,
    f: &mut dyn FnMut(&mut String, &str) -> Result<()>,
) -> Result<()> {
    match value {
        Value::String(s) => f(s, at),
        Value::Sequence(list) => list
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| walk_strings(item, &format!("{at}[{i}]"), f)),
        Value::Mapping(map) => map
            .iter_mut()
            .try_for_each(|(k, item)| walk_strings(item, &join(at, &key_text(k)), f)),
        Value::Tagged(tagged) => walk_strings(&mut tagged.value, at, f),
        _ => Ok(()),
    }
}

/// Interpolate one string the way compose does, from `vars` only (the last
/// entry of a name wins, as when they are merged into `environment`).
pub(super) fn interpolate(s: &str, vars: &[(String, String)]) -> Result<String, String> {
    let invalid = || {
        format!(
            "invalid interpolation in '{s}': use $NAME or ${{NAME}} (with :-, -, :?, ?, :+ or + \
             and a text after the name), and $$ for a literal $"
        )
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end =
                closing_brace(braced).ok_or_else(|| format!("unterminated '${{' in '{s}'"))?;
            out.push_str(&substitute(&braced[..end], vars).ok_or_else(invalid)??);
            rest = &braced[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                return Err(invalid());
            }
            out.push_str(lookup(&after[..n], vars).ok_or_else(|| unset(&after[..n]))?);
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of `${inner}`; None when `inner` is not a valid expression.
fn substitute(inner: &str, vars: &[(String, String)]) -> Option<Result<String, String>> {
    let (name, op) = inner.split_at(name_len(inner));
    if name.is_empty() {
        return None;
    }
    let value = lookup(name, vars);
    let full = value.filter(|v| !v.is_empty());
    let required = |arg: &str, why: &str| {
        let msg = if arg.is_empty() {
            String::new()
        } else {
            format!(": {arg}")
        };
        Err(format!("required variable {name} is {why}{msg}"))
    };
    let or = |v: Option<&str>, arg: &str| match v {
        Some(v) => Ok(v.to_string()),
        None => interpolate(arg, vars),
    };
    Some(if op.is_empty() {
        value.map(str::to_string).ok_or_else(|| unset(name))
    } else if let Some(arg) = op.strip_prefix(":-") {
        or(full, arg)
    } else if let Some(arg) = op.strip_prefix('-') {
        or(value, arg)
    } else if let Some(arg) = op.strip_prefix(":?") {
        match (value, full) {
            (_, Some(v)) => Ok(v.to_string()),
            (Some(_), None) => required(arg, "empty"),
            (None, None) => required(arg, "not set"),
        }
    } else if let Some(arg) = op.strip_prefix('?') {
        value
            .map(str::to_string)
            .map_or_else(|| required(arg, "not set"), Ok)
    } else if let Some(arg) = op.strip_prefix(":+") {
        full.map_or(Ok(String::new()), |_| interpolate(arg, vars))
    } else if let Some(arg) = op.strip_prefix('+') {
        value.map_or(Ok(String::new()), |_| interpolate(arg, vars))
    } else {
        return None;
    })
}

/// The error for a name used and not set: says where to set it.
fn unset(name: &str) -> String {
    format!("variable {name} is not set (set it in the stack's environment variables)")
}

/// The value of `name`: its last entry in `vars`, as when they are
/// merged into `environment`.
fn lookup<'v>(name: &str, vars: &'v [(String, String)]) -> Option<&'v str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Length of the variable name at the start of `s` (0 if none).
fn name_len(s: &str) -> usize {
    match s.bytes().next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => s
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(s.len()),
        _ => 0,
    }
}

/// Index of the `}` closing a `${` whose content starts `s` (nesting allowed).
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation_forms() {
        let v = vars(&[("A", "a"), ("E", ""), ("A", "last")]);
        for (input, want) in [
            ("$A/${A}", "last/last"),
            ("${E:-d} ${E-d} ${U-d} ${U:-${A}}", "d  d last"),
            ("${A:+alt}|${E:+alt}|${E+alt}|${U+alt}", "alt||alt|"),
            ("${A:?need}${A?need}", "lastlast"),
            ("$$A costs $$5 ${U:-{x}}", "$A costs $5 {x}"),
        ] {
            assert_eq!(interpolate(input, &v).as_deref(), Ok(want), "{input}");
        }
    }
}
