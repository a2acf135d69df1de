//! What a column's values look like, from a sample: the evidence mappers use to pick
//! conversions (which date formats parse, whether numbers carry currency signs, …).

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use chrono::Datelike;
use chrono::format::{Item, Parsed, StrftimeItems};

/// Date formats tried on sample values, most common first.
pub const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%Y/%m/%d",
    "%d.%m.%Y",
    "%d-%m-%Y",
    "%Y%m%d",
    "%m/%d/%y",
    "%d/%m/%y",
    "%b %d %Y",
    "%d %b %Y",
    "%B %d, %Y",
    "%d-%b-%Y",
];

/// Date-time formats tried on sample values, most common first.
pub const DATETIME_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    // UTC designator and numeric offsets (RFC 3339): `1971-10-20T00:00:00Z`, `…+02:00`.
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%:z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%d.%m.%Y %H:%M",
];

/// The dominant shape of a column's non-blank values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "shape")]
pub enum ValueShape {
    /// No non-blank value in the sample.
    Empty,
    /// Integer literals.
    Integer,
    /// Decimal numbers.
    Number,
    /// Numbers written with currency signs, thousands separators or units (`$1,234.50`).
    FormattedNumber,
    /// true/false, yes/no, y/n, 1/0.
    Boolean,
    /// Calendar dates; `formats` parse the sample's values, best first.
    Date {
        /// chrono formats, best first.
        formats: Vec<String>,
    },
    /// Date-times; `formats` parse the sample's values, best first.
    DateTime {
        /// chrono formats, best first.
        formats: Vec<String>,
    },
    /// Anything else.
    Text,
    /// Nested values (struct/list columns).
    Nested,
}

/// A column's profile from a sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnProfile {
    /// Column name.
    pub name: String,
    /// Arrow type as read.
    pub data_type: String,
    /// Dominant shape of the values.
    pub shape: ValueShape,
    /// Share of null or blank values, 0..1.
    pub null_share: f64,
    /// Values have leading/trailing whitespace.
    pub padded: bool,
    /// Letters appear in more than one case across values (`Paid`, `PAID`).
    pub mixed_case: bool,
    /// Up to five distinct example values.
    pub examples: Vec<String>,
    /// Number of distinct non-blank values in the sample.
    pub distinct: usize,
    /// Non-blank values in the sample.
    pub non_blank: usize,
    /// The most frequent distinct values (up to [`TOP_VALUES`]) with their counts, most
    /// frequent first: the evidence for enum value tables and value overlap.
    #[serde(skip)]
    pub top_values: Vec<(String, usize)>,
    /// Mean number of words per non-blank value (sentences vs codes).
    pub mean_words: f64,
    /// What most text values are, when recognisable: `email`, `uuid`, `ipv4` or `uri`.
    pub semantic: Option<&'static str>,
    /// What the source says the column holds: the field's Arrow metadata (`description`,
    /// `comment` or `doc`, as Parquet writers, Spark and pyarrow store them) or the source's
    /// `descriptions` in the config. Evidence for the mapper like the target's descriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Profiles every data column of a sample (provenance columns excluded).
pub fn profile(sample: &RecordBatch) -> Vec<ColumnProfile> {
    sample
        .schema()
        .fields()
        .iter()
        .zip(sample.columns())
        .filter(|(f, _)| !super::PROVENANCE.contains(&f.name().as_str()))
        .map(|(f, col)| ColumnProfile {
            description: described(f.metadata()),
            ..profile_column(f.name(), col.as_ref())
        })
        .collect()
}

/// Field metadata keys that carry a column's description, in order of preference.
pub const DESCRIPTION_KEYS: [&str; 3] = ["description", "comment", "doc"];

/// Longest description kept, in characters: a description is evidence, not a document, and
/// it reaches the model's prompt.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// The description a field's metadata gives, trimmed and bounded; `None` when it gives none.
pub fn described(metadata: &std::collections::HashMap<String, String>) -> Option<String> {
    DESCRIPTION_KEYS
        .iter()
        .filter_map(|k| metadata.get(*k))
        .find_map(|d| bounded_description(d))
}

/// `text` trimmed and cut to [`MAX_DESCRIPTION_CHARS`]; `None` when blank.
pub fn bounded_description(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.chars().take(MAX_DESCRIPTION_CHARS).collect())
}

fn profile_column(name: &str, col: &dyn Array) -> ColumnProfile {
    let dt = col.data_type().clone();
    let base = ColumnProfile {
        name: name.to_string(),
        data_type: dt.to_string(),
        shape: ValueShape::Empty,
        null_share: 0.0,
        padded: false,
        mixed_case: false,
        examples: vec![],
        distinct: 0,
        non_blank: 0,
        top_values: vec![],
        mean_words: 0.0,
        semantic: None,
        description: None,
    };
    if matches!(
        dt,
        DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_) | DataType::Map(..)
    ) {
        let nulls = col.null_count();
        return ColumnProfile {
            shape: ValueShape::Nested,
            null_share: ratio(nulls, col.len()),
            non_blank: col.len() - nulls,
            ..base
        };
    }
    let text = match arrow::compute::cast(col, &DataType::Utf8) {
        Ok(t) => t,
        Err(_) => {
            return ColumnProfile {
                shape: ValueShape::Text,
                ..base
            };
        }
    };
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8");
    let raw: Vec<&str> = text.iter().flatten().collect();
    let values: Vec<&str> = raw
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    let mut distinct: Vec<&str> = values.clone();
    distinct.sort_unstable();
    let top_values = top_values(&distinct);
    distinct.dedup();
    let mean_words = if values.is_empty() {
        0.0
    } else {
        values
            .iter()
            .map(|v| v.split_whitespace().count())
            .sum::<usize>() as f64
            / values.len() as f64
    };
    let examples = distinct.iter().take(5).map(|s| s.to_string()).collect();
    let padded = raw.iter().any(|v| v.trim() != *v && !v.trim().is_empty());
    let has_upper = values.iter().any(|v| v.chars().any(char::is_uppercase));
    let has_lower = values.iter().any(|v| v.chars().any(char::is_lowercase));
    let shape = if dt.is_numeric() {
        if dt.is_integer() {
            ValueShape::Integer
        } else {
            ValueShape::Number
        }
    } else if dt == DataType::Boolean {
        ValueShape::Boolean
    } else if matches!(dt, DataType::Date32 | DataType::Date64) {
        ValueShape::Date {
            formats: vec!["%Y-%m-%d".into()],
        }
    } else if matches!(dt, DataType::Timestamp(..)) {
        ValueShape::DateTime { formats: vec![] }
    } else {
        text_shape(&values)
    };
    let semantic_of = if shape == ValueShape::Text {
        semantic(&values)
    } else {
        None
    };
    ColumnProfile {
        shape,
        null_share: ratio(col.len() - values.len(), col.len()),
        padded,
        mixed_case: has_upper && has_lower,
        semantic: semantic_of,
        examples,
        distinct: distinct.len(),
        non_blank: values.len(),
        top_values,
        mean_words,
        ..base
    }
}

/// Distinct values kept per column with their counts.
pub const TOP_VALUES: usize = 64;

/// The most frequent values of a sorted list, with counts (ties in value order).
fn top_values(sorted: &[&str]) -> Vec<(String, usize)> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in sorted {
        match counts.last_mut() {
            Some((last, n)) if last == v => *n += 1,
            _ => counts.push((v, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .into_iter()
        .take(TOP_VALUES)
        .map(|(v, n)| (v.to_string(), n))
        .collect()
}

/// The kind of text most values are (80% or more), checked with the validator's own format
/// rules so that a column recognised here also passes validation.
fn semantic(values: &[&str]) -> Option<&'static str> {
    if values.is_empty() {
        return None;
    }
    ["email", "uuid", "ipv4", "uri"].into_iter().find(|f| {
        let ok = values.iter().filter(|v| crate::format::check(f, v)).count();
        ok * 10 >= values.len() * 8
    })
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Whether `s` is an integer literal.
pub fn is_integer(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` is a plain decimal literal (no exponent, no separators).
pub fn is_decimal(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (a, b) = d.split_once('.').unwrap_or((d, ""));
    (!a.is_empty() || !b.is_empty())
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
}

/// The date (`date_only`) or date-time formats that together parse the values, most values
/// first; empty when none parses any.
pub fn detect_formats(values: &[&str], date_only: bool) -> Vec<String> {
    let vals: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    if date_only {
        matching_formats(&vals, DATE_FORMATS, true).0
    } else {
        matching_formats(&vals, DATETIME_FORMATS, false).0
    }
}

/// Whether any of `formats` (chrono) parses at least one of `values`, as a date
/// (`date_only`) or a date-time (a date-only format also counts for date-times).
pub fn any_format_parses(values: &[&str], formats: &[&str], date_only: bool) -> bool {
    let vals: Vec<&str> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect();
    if vals.is_empty() {
        return true;
    }
    matching_formats(&vals, formats, date_only).1 > 0
        || (!date_only && matching_formats(&vals, formats, true).1 > 0)
}

/// Formats (from `candidates`) that parse at least one value, ordered by how many they parse.
fn matching_formats(values: &[&str], candidates: &[&str], date_only: bool) -> (Vec<String>, usize) {
    // chrono's `%Y` accepts any number of digits, so `1/11/99` would be the year 99 under
    // `%m/%d/%Y`; a four-digit-year format must read a year of four digits.
    let four_digit: Vec<bool> = candidates.iter().map(|f| f.contains("%Y")).collect();
    // Each format is parsed into chrono items once: parsing the format string again for every
    // value was most of the time spent profiling a wide sample.
    let items: Vec<Vec<Item<'_>>> = candidates
        .iter()
        .map(|f| StrftimeItems::new(f).collect())
        .collect();
    let parses = |v: &str, fi: usize| {
        // Every format needs digits and a length of 6 to 35 characters.
        if !(6..=35).contains(&v.len()) || !v.bytes().any(|b| b.is_ascii_digit()) {
            return false;
        }
        let mut parsed = Parsed::new();
        if chrono::format::parse(&mut parsed, v, items[fi].iter()).is_err() {
            return false;
        }
        let year = if date_only {
            parsed.to_naive_date().map(|d| d.year())
        } else {
            parsed.to_naive_datetime_with_offset(0).map(|d| d.year())
        };
        year.is_ok_and(|y| !four_digit[fi] || y >= 1000)
    };
    // Distinct values with their counts: a column repeats its dates.
    let mut distinct: Vec<&str> = values.to_vec();
    distinct.sort_unstable();
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for v in distinct {
        match counted.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => counted.push((v, 1)),
        }
    }
    // parse[f][i]: format f parses distinct value i.
    let parse: Vec<Vec<bool>> = (0..candidates.len())
        .map(|fi| counted.iter().map(|(v, _)| parses(v, fi)).collect())
        .collect();
    let mut scored: Vec<(usize, usize)> = (0..candidates.len())
        .map(|fi| {
            let n: usize = counted
                .iter()
                .zip(&parse[fi])
                .filter(|(_, ok)| **ok)
                .map(|((_, c), _)| c)
                .sum();
            (n, fi)
        })
        .filter(|(n, _)| *n > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // Greedy cover: a format is kept only if it parses a value the kept ones do not. This drops
    // the twin of a day-first/month-first pair (both parse 01/02/2023) and formats that chrono
    // treats as supersets (`%.f` also accepts no fraction).
    let mut kept: Vec<usize> = Vec::new();
    let mut done = vec![false; counted.len()];
    for (_, fi) in &scored {
        let mut adds = false;
        for (i, ok) in parse[*fi].iter().enumerate() {
            if !done[i] && *ok {
                done[i] = true;
                adds = true;
            }
        }
        if adds {
            kept.push(*fi);
        }
    }
    let covered = counted
        .iter()
        .zip(&done)
        .filter(|(_, d)| **d)
        .map(|((_, c), _)| c)
        .sum();
    (
        kept.into_iter()
            .map(|fi| candidates[fi].to_string())
            .collect(),
        covered,
    )
}

fn text_shape(values: &[&str]) -> ValueShape {
    if values.is_empty() {
        return ValueShape::Empty;
    }
    let n = values.len();
    let most = |k: usize| k * 10 >= n * 8; // at least 80% of the values
    let ints = values.iter().filter(|v| is_integer(v)).count();
    let decs = values.iter().filter(|v| is_decimal(v)).count();
    let bools = values
        .iter()
        .filter(|v| crate::functions::parse_bool_str(v).is_some())
        .count();
    let formatted = values
        .iter()
        .filter(|v| crate::functions::parse_number_str(v).is_some())
        .count();
    // Any integer among the boolean words is 0 or 1, so a mostly-boolean column is a flag.
    if most(bools) {
        return ValueShape::Boolean;
    }
    if most(ints) {
        return ValueShape::Integer;
    }
    if most(decs) {
        return ValueShape::Number;
    }
    if most(formatted) {
        return ValueShape::FormattedNumber;
    }
    let (dt_formats, dt_cov) = matching_formats(values, DATETIME_FORMATS, false);
    if most(dt_cov) {
        return ValueShape::DateTime {
            formats: dt_formats,
        };
    }
    let (d_formats, d_cov) = matching_formats(values, DATE_FORMATS, true);
    if most(d_cov) {
        return ValueShape::Date { formats: d_formats };
    }
    ValueShape::Text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_come_from_field_metadata() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let meta =
            |k: &str, v: &str| std::collections::HashMap::from([(k.to_string(), v.to_string())]);
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true)
                .with_metadata(meta("description", " Age in years ")),
            Field::new("b", DataType::Int64, true)
                .with_metadata(meta("comment", "Spark's column comment")),
            Field::new("c", DataType::Int64, true).with_metadata(meta("doc", &"x".repeat(2000))),
            Field::new("d", DataType::Int64, true).with_metadata(meta("description", "   ")),
            Field::new("e", DataType::Int64, true),
        ]);
        let col = Arc::new(Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef;
        let batch = RecordBatch::try_new(Arc::new(schema), vec![col; 5]).unwrap();
        let p = profile(&batch);
        assert_eq!(p[0].description.as_deref(), Some("Age in years"));
        assert_eq!(p[1].description.as_deref(), Some("Spark's column comment"));
        assert_eq!(
            p[2].description.as_ref().map(|d| d.chars().count()),
            Some(MAX_DESCRIPTION_CHARS)
        );
        assert_eq!(p[3].description, None);
        assert_eq!(p[4].description, None);
    }

    #[test]
    fn shapes() {
        assert_eq!(text_shape(&["1", "2", "-3"]), ValueShape::Integer);
        assert_eq!(text_shape(&["1.5", "2", "3.25"]), ValueShape::Number);
        assert_eq!(
            text_shape(&["$1,200.00", "$3.50", "€4"]),
            ValueShape::FormattedNumber
        );
        assert_eq!(text_shape(&["yes", "no", "Y", "n"]), ValueShape::Boolean);
        assert_eq!(text_shape(&["0", "1", "1", "0"]), ValueShape::Boolean);
        assert_eq!(text_shape(&["hello", "world"]), ValueShape::Text);
        assert_eq!(
            text_shape(&[
                "2023-04-05T13:45:12",
                "05/04/2023 13:45",
                "2023-01-02T00:00:00"
            ]),
            ValueShape::DateTime {
                formats: vec!["%Y-%m-%dT%H:%M:%S".into(), "%d/%m/%Y %H:%M".into()]
            }
        );
        assert_eq!(
            text_shape(&["31/01/2023", "01/02/2023"]),
            ValueShape::Date {
                formats: vec!["%d/%m/%Y".into()]
            }
        );
        assert_eq!(
            text_shape(&["1971-10-20T00:00:00Z", "2001-02-03T04:05:06Z"]),
            ValueShape::DateTime {
                formats: vec!["%Y-%m-%dT%H:%M:%SZ".into()]
            }
        );
        assert_eq!(
            text_shape(&["2001-02-03T04:05:06+02:00"]),
            ValueShape::DateTime {
                formats: vec!["%Y-%m-%dT%H:%M:%S%:z".into()]
            }
        );
        assert_eq!(
            text_shape(&["1/11/99", "10/18/99"]),
            ValueShape::Date {
                formats: vec!["%m/%d/%y".into()]
            }
        );
        assert_eq!(
            text_shape(&["01/31/2023", "02/01/2023"]),
            ValueShape::Date {
                formats: vec!["%m/%d/%Y".into()]
            }
        );
    }
}
