//! Checks of the config text before it becomes a [`super::Config`]: `${VAR}` interpolation,
//! keys written twice, source names that must be file names.

use serde_json::Value;

use crate::error::{Error, Result};

/// Longest source name.
const MAX_SOURCE_NAME: usize = 128;

/// A source name becomes part of file names (`NAME_valid_data.json`, `NAME.mapping.json`) and is
/// printed on the console, so it must be a safe file-name component: letters, digits, `_`, `-`
/// and `.`, not starting with `.`, at most 128 characters.
pub(crate) fn check_source_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SOURCE_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        return Ok(());
    }
    // The name is shown escaped: it may hold control characters that would forge console lines.
    Err(Error::config(
        "data_sources",
        format!(
            "invalid source name {}: a source name is used in file names and must be 1–{MAX_SOURCE_NAME} letters, digits, `_`, `-` or `.`, not starting with `.`",
            crate::limits::shorten(&format!("{name:?}"), 80)
        ),
    ))
}

/// A key written twice in one object is an error, not "the last one wins": in
/// `data_sources` it would silently drop a source.
pub(super) fn duplicate_keys(obj: &jsonc_parser::ast::Object<'_>, path: &str) -> Result<()> {
    // An explicit stack: nesting is bounded, but recursion depth should not depend on input.
    let mut stack = vec![(obj, path.to_string())];
    while let Some((obj, path)) = stack.pop() {
        let mut seen = std::collections::HashSet::new();
        for prop in &obj.properties {
            let key = prop.name.as_str();
            let at = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            if !seen.insert(key) {
                return Err(Error::config(
                    crate::limits::shorten(&at, 200),
                    "this key is written twice in the same object",
                ));
            }
            let mut value = &prop.value;
            // Objects inside arrays (`enum`, `items` lists) are checked too.
            let mut arrays = Vec::new();
            loop {
                match value {
                    jsonc_parser::ast::Value::Object(o) => stack.push((o, at.clone())),
                    jsonc_parser::ast::Value::Array(a) => arrays.extend(a.elements.iter()),
                    _ => {}
                }
                match arrays.pop() {
                    Some(v) => value = v,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// Replaces `${VAR}` in every string of the tree; `$${` escapes a literal `${`.
pub(super) fn interpolate(
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match v {
        Value::String(s) if s.contains('$') => *s = expand(s, path, env)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), env)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate(item, &p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn expand(s: &str, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| Error::config(path, format!("unterminated `${{` in {s:?}")))?;
            let name = &tail[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::config(
                    path,
                    format!("`${{{name}}}` is not a valid environment variable reference"),
                ));
            }
            let value = env(name).ok_or_else(|| {
                Error::config(path, format!("environment variable `{name}` is not set"))
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
