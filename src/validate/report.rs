//! Splitting a validated batch into valid rows (columnar, untouched) and invalid rows with
//! their error lists. Per-row work happens only here, and only for invalid rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, not};
use arrow::datatypes::{SchemaRef, UInt64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Check, Rule};
use crate::error::Result;
use crate::plan::Layout;

/// One error of one row. Errors are data: they are written to the invalid output, not raised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowError {
    /// Target field, or null for record-level problems (a malformed line).
    pub field: Option<String>,
    /// The rule that failed (`required`, `type`, `format`, `minimum`, …, `malformed`).
    pub rule: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

/// The source values of an invalid row as read: a JSON object, column name → value, in source
/// column order. Kept as its JSON text, written once from the Arrow columns and copied into
/// the invalid output as it is; [`Record::to_map`] and [`Record::get`] read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    json: String,
}

impl Record {
    /// The JSON object text.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The values by column name.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.json).expect("a record is a JSON object written by conform")
    }

    /// The value of one source column, if the record has it.
    pub fn get(&self, column: &str) -> Option<Value> {
        self.to_map().remove(column)
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

/// One invalid row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidRow {
    /// Input file.
    pub source_file: String,
    /// 1-based record number in that file.
    pub row: u64,
    /// The source values as read.
    pub record: Record,
    /// Raw text of a record that could not be parsed; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// Everything wrong with the row, in field order then rule order.
    pub errors: Vec<RowError>,
}

impl InvalidRow {
    /// Appends the row as one compact JSON object, the same text `serde_json` makes of it, to
    /// `out` — without taking the record apart and putting it together again.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.extend_from_slice(b"{\"source_file\":");
        push_json_str(out, &self.source_file);
        out.extend_from_slice(b",\"row\":");
        write!(out, "{}", self.row).expect("writing to memory does not fail");
        out.extend_from_slice(b",\"record\":");
        out.extend_from_slice(self.record.json.as_bytes());
        if let Some(raw) = &self.raw {
            out.extend_from_slice(b",\"raw\":");
            push_json_str(out, raw);
        }
        out.extend_from_slice(b",\"errors\":[");
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"field\":");
            match &e.field {
                Some(f) => push_json_str(out, f),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"rule\":");
            push_json_str(out, &e.rule);
            out.extend_from_slice(b",\"message\":");
            push_json_str(out, &e.message);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to memory does not fail");
}

/// The invalid side of one batch.
pub type InvalidRows = Vec<InvalidRow>;

/// Error counts: field (or `(record)` for a malformed record) → rule → rows.
pub type ErrorCounts = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

/// Adds the errors of `rows` to `counts`.
pub fn count_errors(rows: &[InvalidRow], counts: &mut ErrorCounts) {
    for row in rows {
        for e in &row.errors {
            let field = e.field.as_deref().unwrap_or("(record)");
            let by_rule = match counts.get_mut(field) {
                Some(m) => m,
                None => counts.entry(field.to_string()).or_default(),
            };
            *by_rule.entry(e.rule.clone()).or_default() += 1;
        }
    }
}

/// Splits one batch of plan output into the valid rows (in `valid_schema`) and invalid rows.
pub fn split(
    batch: &RecordBatch,
    layout: &Layout,
    checks: &[Check],
    valid_schema: &SchemaRef,
) -> Result<(RecordBatch, InvalidRows)> {
    let valid_mask = batch.column(layout.valid).as_boolean().clone();
    let targets = batch.project(&(0..layout.n_targets).collect::<Vec<_>>())?;
    let valid_count = valid_mask.true_count();
    let valid = if valid_count == batch.num_rows() {
        targets
    } else {
        filter_record_batch(&targets, &valid_mask)?
    };
    let valid = RecordBatch::try_new(Arc::clone(valid_schema), valid.columns().to_vec())?;
    if valid_count == batch.num_rows() {
        return Ok((valid, Vec::new()));
    }
    let invalid_mask = not(&valid_mask)?;
    let invalid = filter_record_batch(batch, &invalid_mask)?;
    Ok((valid, describe_invalid(&invalid, layout, checks)?))
}

/// The values of one source column of the invalid rows, for their records.
enum SourceValues<'a> {
    /// Text, written as JSON strings straight from the array.
    Text(&'a arrow::array::StringArray),
    /// Other types, rendered by the Arrow JSON writer.
    Json(Vec<Value>),
}

impl SourceValues<'_> {
    fn write(&self, r: usize, out: &mut Vec<u8>) {
        match self {
            SourceValues::Text(a) if a.is_null(r) => out.extend_from_slice(b"null"),
            SourceValues::Text(a) => push_json_str(out, a.value(r)),
            SourceValues::Json(v) => {
                serde_json::to_writer(&mut *out, &v[r]).expect("writing to memory does not fail")
            }
        }
    }

    /// The value as a message shows it (`"text"`), if it is given (not null or blank).
    fn shown(&self, r: usize) -> Option<String> {
        match self {
            SourceValues::Text(a) => crate::functions::is_present(*a, r)
                .then(|| serde_json::to_string(a.value(r)).unwrap_or_default()),
            SourceValues::Json(v) => match &v[r] {
                Value::Null => None,
                Value::String(t) if t.trim().is_empty() => None,
                v => Some(v.to_string()),
            },
        }
    }
}

fn describe_invalid(b: &RecordBatch, layout: &Layout, checks: &[Check]) -> Result<InvalidRows> {
    let n = b.num_rows();
    let files = b.column(layout.file).as_string::<i32>();
    let rows = b.column(layout.row).as_primitive::<UInt64Type>();
    let malformed = b.column(layout.error).as_string::<i32>();
    let raw = b.column(layout.raw).as_string::<i32>();
    let opts = FormatOptions::default();
    let record = b.column(layout.record).as_struct();
    let values: Vec<SourceValues> = (0..layout.src_columns.len())
        .map(|i| {
            let column = record.column(i);
            Ok(match column.as_string_opt::<i32>() {
                Some(text) => SourceValues::Text(text),
                None => SourceValues::Json(crate::functions::column_to_json(column)?),
            })
        })
        .collect::<Result<_>>()?;
    // `"name":` of every column, escaped once.
    let keys: Vec<Vec<u8>> = layout
        .src_columns
        .iter()
        .map(|name| {
            let mut k = Vec::new();
            push_json_str(&mut k, name);
            k.push(b':');
            k
        })
        .collect();
    // For each check, the positions of its source columns, for `type` messages.
    let position: std::collections::HashMap<&str, usize> = layout
        .src_columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let check_sources: Vec<Vec<(usize, &str)>> = checks
        .iter()
        .map(|c| {
            c.sources
                .iter()
                .filter_map(|s| Some((*position.get(s.as_str())?, s.as_str())))
                .collect()
        })
        .collect();
    let oks: Vec<&BooleanArray> = (0..checks.len())
        .map(|i| b.column(layout.ok_start + i).as_boolean())
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut last_len = 0;
    for r in 0..n {
        let mut json = Vec::with_capacity(last_len);
        json.push(b'{');
        for (i, (key, vals)) in keys.iter().zip(&values).enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(key);
            vals.write(r, &mut json);
        }
        json.push(b'}');
        last_len = json.len();
        let mut errors = Vec::new();
        if malformed.is_valid(r) {
            errors.push(RowError {
                field: None,
                rule: "malformed".into(),
                message: malformed.value(r).to_string(),
            });
        } else {
            for (ci, check) in checks.iter().enumerate() {
                if oks[ci].value(r) {
                    continue;
                }
                let target = b.column(layout.target_index(&check.field));
                let value = show(target, r, &opts);
                let detail =
                    layout.detail[ci].map(|d| b.column(d).as_string::<i32>().value(r).to_string());
                let raw_source = || {
                    check_sources[ci]
                        .iter()
                        .find_map(|&(i, name)| Some(format!("{} of `{name}`", values[i].shown(r)?)))
                        .unwrap_or_else(|| "the source value".into())
                };
                errors.push(RowError {
                    field: Some(check.field.clone()),
                    rule: check.rule.name().to_string(),
                    message: message(check, &value, raw_source, detail.as_deref()),
                });
            }
        }
        out.push(InvalidRow {
            source_file: files.value(r).to_string(),
            row: rows.value(r),
            record: Record {
                json: String::from_utf8(json).expect("JSON text is UTF-8"),
            },
            raw: raw.is_valid(r).then(|| raw.value(r).to_string()),
            errors,
        });
    }
    Ok(out)
}

/// A value for a message: strings quoted, others as Arrow displays them.
fn show(a: &ArrayRef, i: usize, opts: &FormatOptions) -> String {
    if a.is_null(i) {
        return "null".into();
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        return serde_json::to_string(s.value(i)).unwrap_or_default();
    }
    ArrayFormatter::try_new(a.as_ref(), opts)
        .map(|f| f.value(i).to_string())
        .unwrap_or_else(|_| "?".into())
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// The message of a failed check; `raw_source` names the first given source value.
fn message(
    check: &Check,
    value: &str,
    raw_source: impl Fn() -> String,
    detail: Option<&str>,
) -> String {
    let f = &check.field;
    match &check.rule {
        Rule::Required if check.sources.is_empty() => {
            format!("`{f}` is required but no source column is mapped to it")
        }
        Rule::Required => format!("`{f}` is required but the source value is missing"),
        Rule::Type => format!("`{f}`: {} is not a valid {}", raw_source(), check.kind_name),
        Rule::DateFormat => format!(
            "`{f}`: {} is not a valid {} in the mapped formats",
            raw_source(),
            check.kind_name
        ),
        Rule::Minimum(x) => format!("`{f}` = {value} is less than the minimum {}", num(*x)),
        Rule::Maximum(x) => format!("`{f}` = {value} is greater than the maximum {}", num(*x)),
        Rule::ExclusiveMinimum(x) => format!("`{f}` = {value} must be greater than {}", num(*x)),
        Rule::ExclusiveMaximum(x) => format!("`{f}` = {value} must be less than {}", num(*x)),
        Rule::MultipleOf(x) => format!("`{f}` = {value} is not a multiple of {}", num(*x)),
        Rule::MinLength(n) => format!("`{f}` = {value} is shorter than {n} characters"),
        Rule::MaxLength(n) => {
            let shown: String = value.chars().take(40).collect();
            let ellipsis = if value.chars().count() > 40 {
                "…"
            } else {
                ""
            };
            format!("`{f}` = {shown}{ellipsis} is longer than {n} characters")
        }
        Rule::Pattern(p) => format!("`{f}` = {value} does not match the pattern {p}"),
        Rule::Enum(vals) => {
            let list: Vec<String> = vals.iter().take(12).map(|v| v.to_string()).collect();
            let more = if vals.len() > 12 { ", …" } else { "" };
            format!("`{f}` = {value} is not one of {}{more}", list.join(", "))
        }
        Rule::Const(c) => format!("`{f}` = {value} is not {c}"),
        Rule::Format(fmt) => format!("`{f}` = {value} is not a valid {fmt}"),
        Rule::Schema => format!("`{f}`: {}", detail.unwrap_or("does not match its schema")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(raw: Option<&str>) -> InvalidRow {
        let record = serde_json::json!({"id": "7", "note": "quote \" tab \t ünïcode \u{1}", "n": null, "x": 1.5});
        InvalidRow {
            source_file: "dir/ä \"file\".csv".into(),
            row: 42,
            record: Record {
                json: record.to_string(),
            },
            raw: raw.map(str::to_string),
            errors: vec![
                RowError {
                    field: None,
                    rule: "malformed".into(),
                    message: "expected 3 fields, found 2".into(),
                },
                RowError {
                    field: Some("id".into()),
                    rule: "pattern".into(),
                    message: "`id` = \"7\\n\" does not match".into(),
                },
            ],
        }
    }

    #[test]
    fn rows_are_written_as_serde_writes_them() {
        for r in [row(None), row(Some("a,\"b\"\n"))] {
            let mut out = Vec::new();
            r.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
        let r = row(None);
        assert_eq!(
            r.record.get("note").unwrap(),
            "quote \" tab \t ünïcode \u{1}"
        );
        assert_eq!(r.record.get("n"), Some(Value::Null));
        assert_eq!(r.record.get("missing"), None);
        assert_eq!(
            r.record.to_map().keys().collect::<Vec<_>>(),
            ["id", "note", "n", "x"]
        );
    }
}
