//! The configuration as JSON Schema, generated from the config structs (their doc comments,
//! defaults and `#[schemars(range(…))]` attributes), and what is built on it: the range check
//! every config goes through at load, the list of numeric settings the property tests try
//! extreme values on, and `docs/configuration.md`. One source for all three, so a new key
//! cannot go unchecked or undocumented.

use serde_json::{Map, Value};

use super::{Config, SourceConfig};
use crate::error::{Error, Result};

/// The whole config file's schema: [`Config`] with `data_sources` as an object of
/// [`SourceConfig`]s, definitions merged under `$defs`.
pub fn schema() -> Value {
    let mut top = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    let source = serde_json::to_value(schemars::schema_for!(SourceConfig)).unwrap_or(Value::Null);
    let (Value::Object(top_map), Value::Object(mut source_map)) = (&mut top, source) else {
        return top;
    };
    let source_defs = source_map.remove("$defs");
    source_map.remove("$schema");
    source_map.remove("title");
    if let Some(Value::Object(defs)) = source_defs {
        let all = top_map
            .entry("$defs")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(all) = all {
            for (k, v) in defs {
                all.entry(k).or_insert(v);
            }
        }
    }
    if let Some(Value::Object(all)) = top_map.get_mut("$defs") {
        all.insert("SourceConfig".into(), Value::Object(source_map));
    }
    if let Some(Value::Object(props)) = top_map.get_mut("properties") {
        props.insert(
            "data_sources".into(),
            serde_json::json!({
                "description": "The sources, by name, in the order they are processed. A name is \
                    used in file names: 1–128 letters, digits, `_`, `-` or `.`, not starting with `.`.",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/SourceConfig"}
            }),
        );
    }
    top
}

/// The schema at `r` (`#/$defs/Name`), or `s` itself when it is not a reference.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    let mut s = s;
    // References do not chain far; bounded all the same.
    for _ in 0..8 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => match r
                .strip_prefix("#/$defs/")
                .and_then(|name| root.get("$defs")?.get(name))
            {
                Some(target) => s = target,
                None => return s,
            },
            None => return s,
        }
    }
    s
}

/// A numeric setting's range, as the schema states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// Smallest allowed value.
    pub min: Option<f64>,
    /// Largest allowed value.
    pub max: Option<f64>,
    /// Whether the setting takes whole numbers only.
    pub integer: bool,
}

fn range_of(s: &Value) -> Option<Range> {
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let integer = types.contains(&"integer");
    if !integer && !types.contains(&"number") {
        return None;
    }
    Some(Range {
        min: s.get("minimum").and_then(Value::as_f64),
        max: s.get("maximum").and_then(Value::as_f64),
        integer,
    })
}

fn show(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        // Thousands unseparated: the value is copied into configs as it is shown.
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Range {
    /// The range for messages and the reference: `1–1048576`, `≥ 0`.
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("{} to {}", show(a), show(b)),
            (Some(a), None) => format!("at least {}", show(a)),
            (None, Some(b)) => format!("at most {}", show(b)),
            (None, None) => String::new(),
        }
    }

    fn admits(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// Checks every number of a config file against its setting's range; the error names the key's
/// path. Runs on the file's JSON before it becomes a [`Config`], so no out-of-range value ever
/// reaches a buffer size, a duration or a loop bound.
pub fn check_ranges(value: &Value) -> Result<()> {
    let root = schema();
    // Explicit stack: the config's nesting is bounded before this runs, but the walk does not
    // rely on it.
    let mut stack: Vec<(&Value, &Value, String)> = vec![(&root, value, String::new())];
    let mut steps = 0usize;
    while let Some((s, v, path)) = stack.pop() {
        steps += 1;
        if steps > 1_000_000 {
            break;
        }
        let s = resolve(&root, s);
        if let Value::Number(n) = v
            && let Some(range) = range_of(s)
            && let Some(x) = n.as_f64()
            && !range.admits(x)
        {
            return Err(Error::config(
                path,
                format!("{n} is out of range: must be {}", range.describe()),
            ));
        }
        let Value::Object(obj) = v else { continue };
        // A tagged union (`pagination`): the variant its `type` names, else every variant.
        let variants: Vec<&Value> = match (s.get("oneOf"), s.get("anyOf")) {
            (Some(Value::Array(a)), _) | (None, Some(Value::Array(a))) => {
                let tag = obj.get("type").and_then(Value::as_str);
                let chosen: Vec<&Value> = a
                    .iter()
                    .map(|b| resolve(&root, b))
                    .filter(|b| {
                        b.pointer("/properties/type/const")
                            .and_then(Value::as_str)
                            .is_none_or(|c| Some(c) == tag)
                    })
                    .collect();
                chosen
            }
            _ => vec![s],
        };
        for variant in variants {
            if std::ptr::eq(variant, s) {
                // Not a union: its properties below.
            } else if variant.get("oneOf").is_some() || variant.get("anyOf").is_some() {
                // A union inside an optional (`Option<Pagination>`): chosen again on its own.
                stack.push((variant, v, path.clone()));
                continue;
            }
            let props = variant.get("properties").and_then(Value::as_object);
            let extra = variant
                .get("additionalProperties")
                .filter(|a| a.is_object());
            for (k, item) in obj {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(sub) = props.and_then(|p| p.get(k)).or(extra) {
                    stack.push((sub, item, at));
                }
            }
        }
    }
    Ok(())
}

/// One numeric setting: its key path (`data_sources.*.http.timeout_s`, with the variant of a
/// tagged union as `pagination[type=offset].size`) and its range.
#[derive(Debug, Clone)]
pub struct NumericSetting {
    /// Dotted key path; `*` stands for a source name or a storage prefix.
    pub path: String,
    /// Its range.
    pub range: Range,
}

/// Every numeric setting of the config file with its range.
pub fn numeric_settings() -> Vec<NumericSetting> {
    let root = schema();
    let mut out = Vec::new();
    for row in rows(&root) {
        if let Some(range) = row.range {
            out.push(NumericSetting {
                path: row.path,
                range,
            });
        }
    }
    out
}

/// One documented key.
struct Row {
    section: String,
    path: String,
    key: String,
    kind: String,
    default: String,
    range: Option<Range>,
    doc: String,
}

fn kind_of(root: &Value, s: &Value) -> String {
    let s = resolve(root, s);
    if let Some(Value::Array(alts)) = s.get("oneOf").or_else(|| s.get("anyOf")) {
        // A string enumeration (`output_format`) or an optional object.
        let consts: Vec<String> = alts
            .iter()
            .map(|a| resolve(root, a))
            .filter_map(|a| a.get("const").and_then(Value::as_str))
            .map(|c| format!("`{c}`"))
            .collect();
        if !consts.is_empty() {
            return format!("one of {}", consts.join(", "));
        }
        // A tagged union (`pagination`): an object whose `type` picks the variant.
        let tags: Vec<String> = alts
            .iter()
            .map(|a| resolve(root, a))
            .filter_map(|a| a.pointer("/properties/type/const").and_then(Value::as_str))
            .map(|c| format!("`{c}`"))
            .collect();
        if !tags.is_empty() {
            return format!("object with `type` one of {}", tags.join(", "));
        }
        let kinds: Vec<String> = alts
            .iter()
            .map(|a| kind_of(root, a))
            .filter(|k| k != "null")
            .collect();
        return kinds.join(" or ");
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        let names: Vec<String> = e
            .iter()
            .filter_map(Value::as_str)
            .map(|c| format!("`{c}`"))
            .collect();
        return format!("one of {}", names.join(", "));
    }
    let base = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any JSON".into(),
    };
    if s.get("writeOnly") == Some(&Value::Bool(true)) {
        return "string (secret)".into();
    }
    if base == "object"
        && let Some(extra) = s.get("additionalProperties").filter(|a| !a.is_boolean())
    {
        return format!("object of {}", kind_of(root, extra));
    }
    base
}

fn doc_of(s: &Value) -> String {
    s.get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn default_of(s: &Value) -> String {
    match s.get("default") {
        // An object's defaults are listed key by key in its own section.
        None | Some(Value::Null) | Some(Value::Object(_)) => String::new(),
        Some(v) => format!("`{v}`"),
    }
}

/// The documented keys of `root`, section by section, in declaration order.
fn rows(root: &Value) -> Vec<Row> {
    let mut out = Vec::new();
    // (schema of an object, its section name and key path prefix)
    let mut todo: Vec<(Value, String, String)> = vec![(root.clone(), String::new(), String::new())];
    let mut guard = 0;
    while !todo.is_empty() && guard < 1000 {
        guard += 1;
        let (s, section, prefix) = todo.remove(0);
        let s = resolve(root, &s).clone();
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            continue;
        };
        let mut nested = Vec::new();
        for (k, sub) in props {
            if prefix.contains("[type=") && k == "type" {
                continue;
            }
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let r = resolve(root, sub);
            // An optional object (`Option<T>`): its non-null branch.
            let object_branch = match r.get("anyOf").and_then(Value::as_array) {
                Some(alts) => alts
                    .iter()
                    .map(|a| resolve(root, a))
                    .find(|a| a.get("properties").is_some() || a.get("oneOf").is_some())
                    .cloned(),
                None => None,
            };
            let target = object_branch.unwrap_or_else(|| r.clone());
            let doc = {
                let d = doc_of(sub);
                if d.is_empty() { doc_of(r) } else { d }
            };
            out.push(Row {
                section: section.clone(),
                path: path.clone(),
                key: k.clone(),
                kind: kind_of(root, sub),
                default: default_of(sub),
                range: range_of(r),
                doc,
            });
            // The section's title: `*` reads as NAME (a source name, a store prefix).
            let title = path.replace('*', "NAME");
            if target.get("properties").is_some() {
                nested.push((target.clone(), title.clone(), path.clone()));
            } else if let Some(Value::Array(variants)) = target.get("oneOf") {
                for v in variants {
                    let v = resolve(root, v);
                    if let Some(tag) = v.pointer("/properties/type/const").and_then(Value::as_str) {
                        let mut v = v.clone();
                        if let Some(d) = v.get("description").cloned()
                            && let Some(o) = v.as_object_mut()
                        {
                            o.insert("x-section-doc".into(), d);
                        }
                        nested.push((
                            v,
                            format!("{title}` with `\"type\": \"{tag}\""),
                            format!("{path}[type={tag}]"),
                        ));
                    }
                }
            } else if let Some(extra) = target
                .get("additionalProperties")
                .map(|a| resolve(root, a))
                .filter(|a| a.get("properties").is_some())
            {
                nested.push((extra.clone(), format!("{title}.NAME"), format!("{path}.*")));
            }
        }
        // Sections of nested objects follow their parent's, in order.
        for (i, n) in nested.into_iter().enumerate() {
            todo.insert(i, n);
        }
    }
    out
}

/// `docs/configuration.md`: every key with its type, default, range and description,
/// generated from the config structs. A test compares the committed file with this text.
pub fn markdown() -> String {
    let root = schema();
    let mut md = String::new();
    md.push_str(
        "# Configuration reference\n\n\
         Every key of a config file, generated from the config structs' doc comments, defaults \
         and ranges (`src/config/`). Do not edit this page by hand: after changing a setting, \
         run `CONFORM_UPDATE_DOCS=1 cargo test --test it generated_references` and commit the \
         result; the test suite fails while this page and the code disagree.\n\n\
         Numbers outside a key's range are refused when the config is loaded (exit status 2, \
         naming the key). Keys not listed here are refused too. `NAME` stands for a source \
         name or an object-store prefix. How to write a config: \
         [the configuration guide](configuration-guide.md).\n",
    );
    let mut section = None::<String>;
    for row in rows(&root) {
        if section.as_deref() != Some(row.section.as_str()) {
            let title = if row.section.is_empty() {
                "Top level".to_string()
            } else {
                format!("`{}`", row.section)
            };
            md.push_str(&format!(
                "\n## {title}\n\n| key | type | default | range | description |\n|---|---|---|---|---|\n"
            ));
            section = Some(row.section.clone());
        }
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            row.key,
            cell(&row.kind),
            cell(&row.default),
            row.range.as_ref().map(Range::describe).unwrap_or_default(),
            cell(&row.doc)
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_setting_has_a_range() {
        let settings = numeric_settings();
        assert!(settings.len() > 30, "{}", settings.len());
        for s in &settings {
            assert!(
                s.range.min.is_some() && s.range.max.is_some(),
                "{} has no complete range",
                s.path
            );
        }
        let paths: Vec<&str> = settings.iter().map(|s| s.path.as_str()).collect();
        for p in [
            "batch_size",
            "llm.timeout_s",
            "data_sources.*.http.timeout_s",
            "data_sources.*.pagination[type=page].size",
            "feedback.max_invalid_ratio",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn out_of_range_numbers_name_their_key() {
        let v = serde_json::json!({"batch_size": 200_000_000u64, "data_sources": {}});
        let e = check_ranges(&v).unwrap_err().to_string();
        assert!(e.contains("batch_size") && e.contains("1048576"), "{e}");
        let v = serde_json::json!({"data_sources": {"a": {"url": "http://x", "http": {"timeout_s": 1e300}}}});
        let e = check_ranges(&v).unwrap_err().to_string();
        assert!(e.contains("data_sources.a.http.timeout_s"), "{e}");
        let v = serde_json::json!({"data_sources": {"a": {"url": "http://x",
            "pagination": {"type": "page", "size": 0}}}});
        let e = check_ranges(&v).unwrap_err().to_string();
        assert!(e.contains("data_sources.a.pagination.size"), "{e}");
        let v = serde_json::json!({"batch_size": 8192, "llm": {"timeout_s": 30},
            "data_sources": {"a": {"path": "x.csv"}}, "internal_schema": {"maximum": -5}});
        check_ranges(&v).unwrap();
    }
}
