//! The expression that converts a column to a field's type: date formats read from the
//! sample, `parse_number` for `$1,234.50`, `parse_bool` for yes/no words, unit conversion when
//! the names carry units (`weight_lb` → `weight_kg`), and for enums either case folding or a
//! `CASE` value table built from the sample.

use super::values::{ValueTable, text};
use crate::mapping::names::{tokens, unit};
use crate::schema::{FieldKind, TargetField};
use crate::source::{ColumnProfile, ValueShape};
use crate::sql::{literal, quote};

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

/// Whether the column holds text.
fn is_text(p: &ColumnProfile) -> bool {
    matches!(p.data_type.as_str(), "Utf8" | "Utf8View" | "LargeUtf8")
}

/// Column `p` as trimmed text (empty → null), whatever its type: a part of a value joined
/// from several columns.
pub fn as_text(p: &ColumnProfile) -> String {
    if is_text(p) {
        format!("clean({})", quote(&p.name))
    } else {
        format!("CAST({} AS VARCHAR)", quote(&p.name))
    }
}

/// The expression converting column `p` to the target's type, and a note saying why; `table`
/// is the column's enum value table, when the field has an enum.
pub fn conversion(
    t: &TargetField,
    p: &ColumnProfile,
    table: Option<&ValueTable>,
) -> (String, String) {
    let c = quote(&p.name);
    let is_text = is_text(p);
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
            if let Some(tab) = table.filter(|t| !t.entries.is_empty())
                && let Some(case) = value_case(&e, tab)
            {
                return (
                    case,
                    format!(
                        "values mapped onto the allowed values by a table ({:.0}% of the sample's values covered)",
                        tab.coverage * 100.0
                    ),
                );
            }
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

/// Longest value table written into an expression; the rest of the values pass through and
/// fail validation with their value named.
const MAX_TABLE_BYTES: usize = 8 * 1024;

/// `CASE lower(x) WHEN 'secret identity' THEN 'secret' … ELSE x END` over the table's entries
/// (matched without regard to case); values not in the table pass through unchanged, so one
/// the table does not know fails validation with its value named.
pub(super) fn value_case(e: &str, tab: &ValueTable) -> Option<String> {
    let mut s = format!("CASE lower({e})");
    let mut seen: Vec<String> = Vec::new();
    for (from, to) in &tab.entries {
        let key = from.trim().to_lowercase();
        if seen.contains(&key) {
            continue;
        }
        let arm = format!(" WHEN {} THEN {}", literal(&key), literal(&text(to)));
        if s.len() + arm.len() > MAX_TABLE_BYTES {
            break;
        }
        s.push_str(&arm);
        seen.push(key);
    }
    if seen.is_empty() {
        return None;
    }
    s.push_str(&format!(" ELSE {e} END"));
    Some(s)
}
