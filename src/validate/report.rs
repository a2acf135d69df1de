//! Invalid rows as they are reported: the row's source values, its errors, and how they are
//! written and counted. Building them from a batch is [`crate::split`]'s job.

use serde::Serialize;
use serde_json::{Map, Value};

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

impl RowError {
    /// The fields of one error in the Arrow outputs of invalid rows (the Delta table's
    /// `errors` list, the Python package's invalid stream): `field`, `rule`, `message`.
    pub fn arrow_fields() -> arrow::datatypes::Fields {
        use arrow::datatypes::{DataType, Field};
        arrow::datatypes::Fields::from(vec![
            Field::new("field", DataType::Utf8, true),
            Field::new("rule", DataType::Utf8, false),
            Field::new("message", DataType::Utf8, false),
        ])
    }
}

/// The source values of an invalid row as read: a JSON object, column name → value, in source
/// column order. Kept as its JSON text, written once from the Arrow columns and copied into
/// the invalid output as it is; [`Record::to_map`] and [`Record::get`] read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub(crate) json: String,
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
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
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
