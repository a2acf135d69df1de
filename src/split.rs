//! The split of the plan's output: valid rows in the target's Arrow schema, and invalid rows
//! with their source values and one error per failed check, worded for people.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, not};
use arrow::datatypes::{SchemaRef, UInt64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

use crate::error::Result;
use crate::plan::Layout;
use crate::validate::report::{InvalidRow, InvalidRows, Record, RowError, push_json_str};
use crate::validate::{Check, Rule};

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
        Rule::Type if check.grows => format!(
            "`{f}`: {} is not a valid {}, or the expression's output for this row would exceed its budget ({} bytes per row, {} per batch, shared by its repeat/lpad/rpad/replace calls)",
            raw_source(),
            check.kind_name,
            crate::limits::MAX_VALUE_BYTES,
            crate::limits::MAX_BATCH_OUTPUT_BYTES
        ),
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
