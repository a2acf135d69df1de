//! Value evidence: what a column's values say about a field — type, date formats, the
//! schema's `format`, `pattern`, `enum`, `examples` and ranges, emptiness, constants, and the
//! value shape the field's role expects.

use super::evidence::{ColumnFacts, FieldFacts, Role};
use super::values::{ValueTable, table};
use crate::schema::FieldKind;
use crate::source::{ColumnProfile, ValueShape};

/// The note of the veto of a column none of whose values are the field's allowed values.
pub const NOT_ALLOWED_VALUES: &str = "values are not the field's allowed values";
/// The note of a constant column's veto.
pub const CONSTANT: &str = "holds one constant value, not identifiers";

/// What the values say.
#[derive(Debug, Clone, Default)]
pub struct ValueEvidence {
    /// How well they fit, 0..1.
    pub fit: f64,
    /// They identify the field on their own (the enum's values, e-mails for `format: email`,
    /// dates for a date field, values matching the pattern or the schema's examples).
    pub strong: bool,
    /// They contradict it (an enum none of them is, a pattern none matches, text for a number,
    /// a constant for an identifier, no values at all).
    pub veto: bool,
    /// Why, for the rationale.
    pub note: &'static str,
    /// The enum value table, when the field has an enum.
    pub table: Option<ValueTable>,
}

fn type_fit(kind: &FieldKind, p: &ColumnProfile) -> f64 {
    use ValueShape as S;
    match (kind, &p.shape) {
        (_, S::Empty) => 0.5,
        (FieldKind::Integer, S::Integer) => 1.0,
        // Decimals with fractions are not counts; `12.0` is.
        (FieldKind::Integer, S::Number) if fractional(p) => 0.15,
        (FieldKind::Integer, S::Number | S::FormattedNumber) => 0.6,
        (FieldKind::Integer, S::Boolean) if p.data_type != "Boolean" => 0.6,
        (FieldKind::Number, S::Integer | S::Number | S::FormattedNumber) => 1.0,
        (FieldKind::Boolean, S::Boolean) => 1.0,
        (FieldKind::Date | FieldKind::DateTime, S::Date { .. } | S::DateTime { .. }) => 1.0,
        // Text that is not (mostly) dates may be dirty dates: the validator reports them.
        (FieldKind::Date | FieldKind::DateTime, S::Text) => 0.3,
        (FieldKind::String | FieldKind::Json, S::Text) => 1.0,
        (FieldKind::String | FieldKind::Json, _) => 0.7,
        (FieldKind::Object(_) | FieldKind::Array(_), S::Nested) => 1.0,
        (FieldKind::Integer | FieldKind::Number, S::Boolean) => 0.3,
        _ => 0.1,
    }
}

/// Most values have a non-zero fractional part.
fn fractional(p: &ColumnProfile) -> bool {
    share(p, |v| {
        v.trim()
            .parse::<f64>()
            .is_ok_and(|x| x.is_finite() && x.fract() != 0.0)
    }) >= 0.5
}

fn share(p: &ColumnProfile, hits: impl Fn(&str) -> bool) -> f64 {
    let mut n = 0usize;
    let mut h = 0usize;
    for (v, c) in &p.top_values {
        n += c;
        if hits(v) {
            h += c;
        }
    }
    if n == 0 { 0.0 } else { h as f64 / n as f64 }
}

fn looks_like_url(v: &str) -> bool {
    let l = v.trim().to_ascii_lowercase();
    l.starts_with("http://")
        || l.starts_with("https://")
        || l.starts_with("www.")
        || l.starts_with('/')
        || l.starts_with("\\/")
}

/// Value evidence for a column as the source of a field.
pub fn value_evidence(f: &FieldFacts<'_>, c: &ColumnFacts<'_>) -> ValueEvidence {
    let t = f.field;
    let p = c.profile;
    let mut ev = ValueEvidence {
        fit: type_fit(&t.kind, p),
        ..Default::default()
    };
    if !c.has_values() {
        ev.veto = true;
        ev.note = "has no values in the sample";
        return ev;
    }
    // The schema's format, including the date types.
    let format = match t.kind {
        FieldKind::Date => Some("date"),
        FieldKind::DateTime => Some("date-time"),
        _ => t.constraints.format.as_deref(),
    };
    match format {
        Some(fmt @ ("email" | "uuid" | "ipv4" | "uri")) => {
            if p.semantic == Some(fmt) {
                ev.fit = 1.0;
                ev.strong = true;
                ev.note = "values have the field's format";
            } else if fmt == "uri" && share(p, looks_like_url) >= 0.8 {
                ev.fit = 0.9;
                ev.note = "values look like links";
            } else if matches!(p.shape, ValueShape::Text) {
                ev.fit = 0.4;
            } else {
                ev.veto = true;
                ev.note = "values are not of the field's format";
            }
        }
        Some("date" | "date-time") => match p.shape {
            ValueShape::Date { .. } | ValueShape::DateTime { .. } => {
                ev.fit = 1.0;
                ev.strong = true;
                ev.note = "values are dates";
            }
            ValueShape::Text => ev.fit = 0.3,
            _ => {
                ev.veto = true;
                ev.note = "values are not dates";
            }
        },
        _ => {}
    }
    if let Some(index) = &f.enums {
        let tab = table(index, p, &c.norm_top, &c.affix);
        let cov = tab.coverage;
        let text_values = index.strings() && p.distinct >= 2;
        if cov >= 0.8 {
            ev.fit = 1.0;
            ev.strong = true;
            ev.note = "values are the field's allowed values";
        } else if cov >= 0.5 {
            ev.fit = ev.fit.max(0.8);
            ev.note = "most values are the field's allowed values";
        } else if cov < 0.2 && (text_values || !index.strings()) {
            ev.veto = true;
            ev.note = NOT_ALLOWED_VALUES;
        } else {
            ev.fit *= 0.6;
        }
        if !index.strings() && !tab.entries.is_empty() {
            // Labels for a numeric enum cannot be converted by the expression; a column
            // holding the codes themselves is the better source.
            ev.fit *= 0.7;
            ev.strong = false;
        }
        ev.table = Some(tab);
    }
    if let Some(re) = &f.pattern {
        let s = share(p, |v| re.is_match(v));
        if s >= 0.8 {
            ev.fit = ev.fit.max(0.9);
            ev.strong = true;
            ev.note = "values match the field's pattern";
        } else if s < 0.2 {
            ev.veto = true;
            ev.note = "values do not match the field's pattern";
        }
    }
    if !f.examples.is_empty() {
        let overlap = c.norm_values.intersection(&f.examples).count();
        if overlap >= 2 || (overlap == 1 && f.examples.len() == 1) {
            ev.fit = ev.fit.max(0.9);
            ev.strong = true;
            ev.note = "values overlap the field's examples";
        }
    }
    let c_ = &t.constraints;
    if matches!(t.kind, FieldKind::Integer | FieldKind::Number)
        && (c_.minimum.is_some() || c_.maximum.is_some())
    {
        let lo = c_.minimum.unwrap_or(f64::NEG_INFINITY);
        let hi = c_.maximum.unwrap_or(f64::INFINITY);
        let in_range = share(p, |v| {
            crate::functions::parse_number_str(v)
                .or_else(|| v.trim().parse().ok())
                .is_some_and(|x: f64| x >= lo && x <= hi)
        });
        if in_range < 0.5 {
            ev.fit *= 0.4;
            ev.note = "values are outside the field's range";
        }
    }
    if c.constant() && t.constraints.const_value.is_none() {
        if matches!(f.role, Role::Id | Role::Name | Role::Code) {
            ev.veto = true;
            ev.note = CONSTANT;
        } else if !ev.strong {
            ev.fit *= 0.5;
        }
    }
    role_fit(f, p, &mut ev);
    if ev.fit < 0.2 && !ev.strong {
        ev.veto = true;
        if ev.note.is_empty() {
            ev.note = "values cannot become the field's type";
        }
    }
    ev
}

/// The value shape the field's role expects: identifiers are mostly distinct single tokens,
/// names a few words, free text sentences, links URLs.
fn role_fit(f: &FieldFacts<'_>, p: &ColumnProfile, ev: &mut ValueEvidence) {
    let distinct_ratio = p.distinct as f64 / p.non_blank.max(1) as f64;
    let text = matches!(p.shape, ValueShape::Text);
    let many = p.non_blank >= 10;
    // A field named by its role alone (`name`, `definition`, as in a data dictionary) can be
    // recognised from the values when the column's own name says nothing (`Field`,
    // `column_0`): distinct short labels for a name, sentences for a definition.
    if f.generic_role && text && p.non_blank >= 5 {
        match f.role {
            Role::Name
                if p.mean_words <= 3.0
                    && distinct_ratio >= 0.9
                    && p.top_values.iter().all(|(v, _)| !v.ends_with('.')) =>
            {
                ev.fit = 1.0;
                ev.strong = true;
                ev.note = "values are distinct short names";
                return;
            }
            Role::LongText if p.mean_words >= 5.0 => {
                ev.fit = 1.0;
                ev.strong = true;
                ev.note = "values are sentences";
                return;
            }
            _ => {}
        }
    }
    match f.role {
        Role::Id if many && distinct_ratio < 0.5 => ev.fit *= 0.6,
        Role::Id | Role::Code if p.mean_words > 2.0 => ev.fit *= 0.5,
        Role::Name if text && p.mean_words > 8.0 => ev.fit *= 0.5,
        Role::Name if !text && matches!(f.field.kind, FieldKind::String) => ev.fit *= 0.7,
        Role::LongText if text && p.mean_words >= 4.0 => ev.fit = ev.fit.max(1.0),
        Role::LongText if p.mean_words < 2.0 => ev.fit *= 0.6,
        Role::Url if share(p, looks_like_url) >= 0.8 => {
            ev.fit = 1.0;
            ev.strong = true;
            ev.note = "values are links";
        }
        Role::Url if text => ev.fit *= 0.5,
        _ => {}
    }
}
