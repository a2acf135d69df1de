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

/// One invalid row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidRow {
    /// Input file.
    pub source_file: String,
    /// 1-based record number in that file.
    pub row: u64,
    /// The source values as read.
    pub record: Map<String, Value>,
    /// Raw text of a record that could not be parsed; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// Everything wrong with the row, in field order then rule order.
    pub errors: Vec<RowError>,
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

fn describe_invalid(b: &RecordBatch, layout: &Layout, checks: &[Check]) -> Result<InvalidRows> {
    let n = b.num_rows();
    let files = b.column(layout.file).as_string::<i32>();
    let rows = b.column(layout.row).as_primitive::<UInt64Type>();
    let malformed = b.column(layout.error).as_string::<i32>();
    let raw = b.column(layout.raw).as_string::<i32>();
    let opts = FormatOptions::default();
    let mut src_json: Vec<Vec<Value>> = layout
        .src_columns
        .iter()
        .enumerate()
        .map(|(i, _)| crate::functions::column_to_json(b.column(layout.src_start + i)))
        .collect::<std::result::Result<_, _>>()?;
    let oks: Vec<&BooleanArray> = (0..checks.len())
        .map(|i| b.column(layout.ok_start + i).as_boolean())
        .collect();
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let record: Map<String, Value> = layout
            .src_columns
            .iter()
            .zip(src_json.iter_mut())
            // Each value is used once: move it out instead of cloning it.
            .map(|(name, vals)| (name.clone(), std::mem::take(&mut vals[r])))
            .collect();
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
                errors.push(RowError {
                    field: Some(check.field.clone()),
                    rule: check.rule.name().to_string(),
                    message: message(check, &value, &record, detail.as_deref()),
                });
            }
        }
        out.push(InvalidRow {
            source_file: files.value(r).to_string(),
            row: rows.value(r),
            record,
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

fn message(
    check: &Check,
    value: &str,
    record: &Map<String, Value>,
    detail: Option<&str>,
) -> String {
    let f = &check.field;
    let raw_source = || {
        check
            .sources
            .iter()
            .find_map(|s| match record.get(s) {
                Some(Value::Null) | None => None,
                Some(Value::String(t)) if t.trim().is_empty() => None,
                Some(v) => Some(format!("{v} of `{s}`")),
            })
            .unwrap_or_else(|| "the source value".into())
    };
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
