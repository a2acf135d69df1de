//! The offline mapper: names, value shapes and target constraints, no network.
//!
//! For each target field it scores every source column by name similarity (normalised words,
//! abbreviations, synonyms) and by whether the sampled values can become the target type, picks
//! the best pairs greedily (a column feeds one field, except that first/last name columns may
//! build a full name), and writes the conversion the sample calls for: a date format that parses
//! the values, `parse_number` for `$1,234.50`, `parse_bool` for yes/no, case folding for
//! enums, unit conversion when the names carry units (`weight_lb` → `weight_kg`).

use futures::future::BoxFuture;
use indexmap::IndexMap;

use super::names::{similarity, tokens, unit};
use super::{
    FieldMapping, Mapper, MapperKind, MappingDocument, MappingRequest, Proposal, fingerprint,
};
use crate::error::Result;
use crate::schema::{FieldKind, TargetField};
use crate::source::{ColumnProfile, ValueShape};

/// Minimum name similarity for a match.
const MIN_NAME_SCORE: f64 = 0.5;

/// The offline heuristic mapper.
#[derive(Debug, Default, Clone)]
pub struct HeuristicMapper;

impl Mapper for HeuristicMapper {
    fn kind(&self) -> MapperKind {
        MapperKind::Heuristic
    }

    fn map<'a>(&'a self, request: &'a MappingRequest<'a>) -> BoxFuture<'a, Result<Proposal>> {
        Box::pin(async move {
            Ok(Proposal {
                document: self.map_now(request),
                llm: None,
            })
        })
    }
}

use crate::sql::{literal, quote};

/// How well values of this shape can become the target kind, 0..1.
fn type_fit(kind: &FieldKind, p: &ColumnProfile) -> f64 {
    use ValueShape as S;
    match (kind, &p.shape) {
        (_, S::Empty) => 0.5,
        (FieldKind::Integer, S::Integer) => 1.0,
        (FieldKind::Integer, S::Number | S::FormattedNumber) => 0.6,
        (FieldKind::Number, S::Integer | S::Number | S::FormattedNumber) => 1.0,
        (FieldKind::Boolean, S::Boolean) => 1.0,
        (FieldKind::Date | FieldKind::DateTime, S::Date { .. } | S::DateTime { .. }) => 1.0,
        (FieldKind::String | FieldKind::Json, S::Text) => 1.0,
        (FieldKind::String | FieldKind::Json, _) => 0.7,
        (FieldKind::Object(_) | FieldKind::Array(_), S::Nested) => 1.0,
        (FieldKind::Integer | FieldKind::Number, S::Boolean) => 0.3,
        _ => 0.1,
    }
}

/// What the sampled values say about a column as a source for a target field: how well they
/// fit (0..1), and whether they identify it on their own (emails for an `email` field, the
/// schema's enum values, dates for a date field), which lets a column whose name says nothing
/// still be matched when it is the only one of its kind.
fn value_evidence(t: &TargetField, p: &ColumnProfile) -> (f64, bool) {
    let has_values = !matches!(p.shape, ValueShape::Empty);
    if let Some(fmt) = t.constraints.format.as_deref() {
        match fmt {
            "email" | "uuid" | "ipv4" | "uri" => {
                // Text that is not mostly of the format may be dirty data (the validator
                // reports it); flags, numbers or dates are another kind of value.
                return match (&p.semantic, &p.shape) {
                    (Some(s), _) if *s == fmt => (1.0, true),
                    (_, ValueShape::Text) => (0.4, false),
                    _ if has_values => (0.05, false),
                    _ => (0.5, false),
                };
            }
            "date" | "date-time" => {
                return match p.shape {
                    ValueShape::Date { .. } | ValueShape::DateTime { .. } => (1.0, true),
                    ValueShape::Text => (0.3, false),
                    _ if has_values => (0.1, false),
                    _ => (0.5, false),
                };
            }
            _ => {}
        }
    }
    if let Some(values) = &t.constraints.enum_values {
        let allowed: Vec<String> = values
            .iter()
            .filter_map(|v| v.as_str().map(|s| s.trim().to_lowercase()))
            .collect();
        if !allowed.is_empty() && !p.examples.is_empty() {
            let hits = p
                .examples
                .iter()
                .filter(|e| allowed.contains(&e.trim().to_lowercase()))
                .count();
            let share = hits as f64 / p.examples.len() as f64;
            return if share >= 0.8 {
                (1.0, true)
            } else if share < 0.3 {
                (type_fit(&t.kind, p) * 0.5, false)
            } else {
                (type_fit(&t.kind, p), false)
            };
        }
    }
    let fit = type_fit(&t.kind, p);
    let strong = matches!(
        (&t.kind, &p.shape),
        (FieldKind::Boolean, ValueShape::Boolean)
            | (
                FieldKind::Date | FieldKind::DateTime,
                ValueShape::Date { .. } | ValueShape::DateTime { .. }
            )
    );
    (fit, strong)
}

/// Columns a loading pipeline adds about the load itself (`_loaded_at`, `etl_batch_id`): never
/// matched on their values alone.
fn is_metadata(column: &str) -> bool {
    let ws = super::names::words(column);
    column.starts_with('_')
        || ws.iter().any(|w| {
            matches!(
                w.as_str(),
                "etl"
                    | "loaded"
                    | "load"
                    | "ingested"
                    | "ingest"
                    | "batch"
                    | "sdc"
                    | "dw"
                    | "audit"
            )
        })
}

/// Name evidence: the field's name, or its title/description, against the column's name.
fn name_evidence(t: &TargetField, column: &str) -> f64 {
    let by_name = similarity(&t.name, column);
    let Some(desc) = t.description.as_deref() else {
        return by_name;
    };
    // The column's words all appearing in the description ("units_ordered" for "Number of
    // units ordered") is good, if weaker, evidence.
    let d = tokens(desc);
    let c = tokens(column);
    if c.is_empty() {
        return by_name;
    }
    let found = c.iter().filter(|w| d.contains(w)).count() as f64 / c.len() as f64;
    by_name.max(found * 0.8)
}

impl HeuristicMapper {
    /// Maps without awaiting anything.
    pub fn map_now(&self, req: &MappingRequest<'_>) -> MappingDocument {
        let nt = req.target.fields.len();
        let ns = req.profiles.len();
        let mut name = vec![vec![0.0; ns]; nt];
        let mut value = vec![vec![(0.0, false); ns]; nt];
        let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
        for (ti, t) in req.target.fields.iter().enumerate() {
            for (si, p) in req.profiles.iter().enumerate() {
                name[ti][si] = name_evidence(t, &p.name);
                value[ti][si] = value_evidence(t, p);
                let (fit, _) = value[ti][si];
                // Values that contradict the field (booleans for an e-mail) veto a name match.
                if name[ti][si] >= MIN_NAME_SCORE - 1e-9 && fit >= 0.2 {
                    candidates.push((name[ti][si] * 0.75 + fit * 0.25, ti, si));
                }
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut chosen: Vec<Option<(f64, usize, &'static str)>> = vec![None; nt];
        let mut used = vec![false; ns];
        for (score, ti, si) in candidates {
            if chosen[ti].is_none() && !used[si] {
                chosen[ti] = Some((score, si, "matches by name"));
                used[si] = true;
            }
        }
        // Second pass: a field whose values identify it (emails, enum values, dates, flags)
        // takes the one remaining column of that kind; among several, the clearly best named.
        for ti in 0..nt {
            if chosen[ti].is_some() {
                continue;
            }
            let mut strong: Vec<usize> = (0..ns)
                .filter(|&si| !used[si] && value[ti][si].1 && !is_metadata(&req.profiles[si].name))
                .collect();
            strong.sort_by(|&a, &b| name[ti][b].total_cmp(&name[ti][a]));
            let pick = match strong.as_slice() {
                [] => None,
                [only] => Some(*only),
                [best, second, ..] if name[ti][*best] >= name[ti][*second] + 0.2 => Some(*best),
                _ => None,
            };
            if let Some(si) = pick {
                chosen[ti] = Some((
                    0.45 + 0.3 * name[ti][si],
                    si,
                    "is the only column whose values fit",
                ));
                used[si] = true;
            }
        }
        let mut fields = IndexMap::new();
        for (ti, t) in req.target.fields.iter().enumerate() {
            let m = match chosen[ti] {
                Some((score, si, why)) => {
                    let p = &req.profiles[si];
                    let (expr, how) = conversion(t, p);
                    FieldMapping {
                        expr: Some(expr),
                        sources: vec![p.name.clone()],
                        confidence: (score.min(1.0) * 100.0).round() / 100.0,
                        rationale: format!("column `{}` {why}; {how}", p.name),
                        error: None,
                    }
                }
                None => full_name(t, req.profiles, &used).unwrap_or(FieldMapping {
                    rationale: "no source column matches this field by name or values".into(),
                    ..FieldMapping::unmapped()
                }),
            };
            fields.insert(t.name.clone(), m);
        }
        MappingDocument {
            source: req.source.to_string(),
            source_fingerprint: fingerprint(&req.source_schema),
            mapper: MapperKind::Heuristic,
            pinned: false,
            model: None,
            fields,
        }
    }
}

/// Fill-ins for a mapped field that is mostly null: `coalesce(current, other)` over the unused
/// columns whose name relates to the field and whose values fit it, best first (at most 3).
pub fn fill_ins(
    t: &TargetField,
    current: &str,
    profiles: &[ColumnProfile],
    used: &[&str],
) -> Vec<(String, String)> {
    let mut scored: Vec<(f64, &ColumnProfile)> = profiles
        .iter()
        .filter(|p| !used.contains(&p.name.as_str()) && !is_metadata(&p.name))
        .filter(|p| !matches!(p.shape, ValueShape::Empty))
        .filter_map(|p| {
            let name = name_evidence(t, &p.name);
            let (fit, _) = value_evidence(t, p);
            (name >= MIN_NAME_SCORE / 2.0 && fit >= 0.5).then_some((name * 0.75 + fit * 0.25, p))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(3)
        .map(|(_, p)| {
            let (expr, how) = conversion(t, p);
            (
                format!("coalesce({current}, {expr})"),
                format!("mostly null: filled from column `{}` ({how})", p.name),
            )
        })
        .collect()
}

/// A `name`/`full_name` target built from unused first- and last-name columns.
fn full_name(t: &TargetField, profiles: &[ColumnProfile], used: &[bool]) -> Option<FieldMapping> {
    if !matches!(t.kind, FieldKind::String) || !tokens(&t.name).contains(&"name".to_string()) {
        return None;
    }
    let find = |want: &str| {
        profiles.iter().enumerate().find(|(i, p)| {
            !used[*i] && {
                let tk = tokens(&p.name);
                tk.iter().any(|x| x == want || x == &format!("{want}name"))
            }
        })
    };
    let (_, first) = find("first")?;
    let (_, last) = find("last")?;
    Some(FieldMapping {
        expr: Some(format!(
            "nullif(concat_ws(' ', clean({}), clean({})), '')",
            quote(&first.name),
            quote(&last.name)
        )),
        sources: vec![first.name.clone(), last.name.clone()],
        confidence: 0.7,
        rationale: format!("full name joined from `{}` and `{}`", first.name, last.name),
        error: None,
    })
}

/// Unit conversion factor from the source column's unit to the target's, if both are known.
fn unit_factor(target: &str, source: &str) -> Option<(f64, String)> {
    let (tu, su) = (unit(target), unit(source));
    let f = match (su.as_deref(), tu.as_deref()) {
        (Some("lb" | "lbs"), Some("kg")) => 0.45359237,
        (Some("kg"), Some("lb" | "lbs")) => 1.0 / 0.45359237,
        (Some("g"), Some("kg")) => 0.001,
        (Some("kg"), Some("g")) => 1000.0,
        (Some("cents" | "cent"), None) => 0.01,
        (Some("ms"), Some("s" | "sec" | "secs")) => 0.001,
        _ => return None,
    };
    Some((
        f,
        format!(
            "{} → {}",
            su.unwrap_or_default(),
            tu.unwrap_or_else(|| "units".into())
        ),
    ))
}

/// The expression converting column `p` to the target's type, and a note saying why.
fn conversion(t: &TargetField, p: &ColumnProfile) -> (String, String) {
    let c = quote(&p.name);
    let is_text = p.data_type == "Utf8" || p.data_type == "Utf8View" || p.data_type == "LargeUtf8";
    let clean = if is_text {
        format!("clean({c})")
    } else {
        c.clone()
    };
    let formats = |fs: &[String]| fs.iter().map(|f| literal(f)).collect::<Vec<_>>().join(", ");
    match &t.kind {
        FieldKind::Integer | FieldKind::Number => {
            let sql_type = if t.kind == FieldKind::Integer {
                "BIGINT"
            } else {
                "DOUBLE"
            };
            let (base, how) = if matches!(p.shape, ValueShape::FormattedNumber) {
                (
                    format!("parse_number({c})"),
                    "numbers with currency signs or separators",
                )
            } else if is_text {
                (format!("CAST({clean} AS DOUBLE)"), "numeric text")
            } else {
                (format!("CAST({c} AS DOUBLE)"), "numeric column")
            };
            match unit_factor(&t.name, &p.name) {
                Some((f, units)) => {
                    let e = if f < 1.0 && (1.0 / f).fract() == 0.0 {
                        format!("{base} / {}", 1.0 / f)
                    } else {
                        format!("{base} * {f}")
                    };
                    let e = if sql_type == "BIGINT" {
                        format!("CAST({e} AS BIGINT)")
                    } else {
                        e
                    };
                    (e, format!("{how}; unit conversion {units}"))
                }
                None if sql_type == "BIGINT" && !matches!(p.shape, ValueShape::FormattedNumber) => {
                    (
                        format!("CAST({clean} AS BIGINT)"),
                        format!("{how}, as integer"),
                    )
                }
                None if sql_type == "BIGINT" => {
                    (format!("CAST({base} AS BIGINT)"), how.to_string())
                }
                None => (base, how.to_string()),
            }
        }
        FieldKind::Boolean => {
            if p.data_type == "Boolean" {
                (c, "boolean column".into())
            } else {
                (
                    format!("parse_bool({c})"),
                    "yes/no words parsed as booleans".into(),
                )
            }
        }
        FieldKind::Date => match &p.shape {
            ValueShape::Date { formats: fs } | ValueShape::DateTime { formats: fs }
                if is_text && !fs.is_empty() =>
            {
                (
                    format!("try_to_date({c}, {})", formats(fs)),
                    format!("dates in format {}", fs.join(" or ")),
                )
            }
            _ if is_text => (format!("try_to_date({c})"), "ISO dates".into()),
            _ => (format!("CAST({c} AS DATE)"), "date column".into()),
        },
        FieldKind::DateTime => match &p.shape {
            ValueShape::DateTime { formats: fs } | ValueShape::Date { formats: fs }
                if is_text && !fs.is_empty() =>
            {
                (
                    format!("try_to_timestamp({c}, {})", formats(fs)),
                    format!("timestamps in format {}", fs.join(" or ")),
                )
            }
            _ if is_text => (
                format!("try_to_timestamp({c})"),
                "ISO 8601 timestamps".into(),
            ),
            _ => (c, "timestamp column".into()),
        },
        FieldKind::String => {
            let mut e = clean;
            let mut how = String::from("text, trimmed");
            if let Some(case) = enum_case(t) {
                e = format!("{case}({e})");
                how = format!("text, trimmed and {case}-cased to match the allowed values");
            } else if t.constraints.format.as_deref() == Some("email")
                || tokens(&t.name).contains(&"email".to_string())
            {
                e = format!("lower({e})");
                how = "e-mail addresses, trimmed and lower-cased".into();
            }
            (e, how)
        }
        FieldKind::Object(_) | FieldKind::Array(_) | FieldKind::Json => (c, "value as is".into()),
    }
}

/// `lower`/`upper` when every allowed string value of an enum is in that case.
fn enum_case(t: &TargetField) -> Option<&'static str> {
    let values = t.constraints.enum_values.as_ref()?;
    let strs: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
    if strs.is_empty() || !strs.iter().any(|s| s.chars().any(char::is_alphabetic)) {
        return None;
    }
    if strs.iter().all(|s| s.to_lowercase() == *s) {
        Some("lower")
    } else if strs.iter().all(|s| s.to_uppercase() == *s) {
        Some("upper")
    } else {
        None
    }
}
