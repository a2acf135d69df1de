//! NDJSON (one object per line) and JSON (one array of objects), decoded with arrow-json.
//!
//! Records are split out of the byte stream first (lines, or top-level array elements found by a
//! small scanner that tracks strings and nesting), then decoded a batch at a time. Scalars are
//! read as text. If a batch fails to decode, its records are decoded one by one and each record
//! that still fails (broken JSON, not an object, an unexpected key, a nested value of the wrong
//! shape) becomes a malformed row carrying its raw text.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_json_reader::{Decoder, ReaderBuilder};
use serde_json::Value;

use super::limit::read_line_limited;
use super::{FileSource, Piece, PieceUnit, assemble, open_decompressed};
use crate::config::InputFormat;
use crate::error::{Error, Result};

use arrow::json::reader as arrow_json_reader;

/// Records sampled per file to infer the schema.
const INFER_RECORDS: usize = 1000;

/// Splits a byte stream into JSON records: `(record number, bytes)`.
pub(crate) struct Records {
    reader: Box<dyn BufRead + Send>,
    array: bool,
    /// Number of the next record (1-based line for NDJSON, element index for an array).
    next: u64,
    state: ArrayState,
    /// Longest record kept; a longer one is measured, not kept.
    max_record: usize,
    /// The size of the last record when it was over `max_record` (its bytes were dropped).
    pub(crate) oversized: Option<u64>,
}

#[derive(PartialEq)]
enum ArrayState {
    Start,
    Inside,
    Done,
}

impl Records {
    pub(crate) fn open(path: &Path, format: InputFormat, max_record: usize) -> Result<Records> {
        Ok(Records {
            reader: open_decompressed(path)?,
            array: format == InputFormat::Json,
            next: 1,
            state: ArrayState::Start,
            max_record,
            oversized: None,
        })
    }

    /// The lines of one byte piece of an uncompressed NDJSON file, numbered from the piece's
    /// first line.
    fn open_piece(path: &Path, piece: Piece, max_record: usize) -> Result<Records> {
        Ok(Records {
            reader: Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                super::files::open_range(path, piece.start, piece.end)?,
            )),
            array: false,
            next: piece.first_row,
            state: ArrayState::Start,
            max_record,
            oversized: None,
        })
    }

    /// The next record, or None at the end. Errors are I/O errors only.
    pub(crate) fn next_record(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
        buf.clear();
        self.oversized = None;
        if self.array {
            return self.next_element(buf);
        }
        loop {
            let (n, over) = read_line_limited(&mut self.reader, buf, self.max_record)?;
            if n == 0 {
                return Ok(None);
            }
            let row = self.next;
            self.next += 1;
            if over.is_some() {
                self.oversized = over;
                return Ok(Some(row));
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
                continue; // A blank line is not a record.
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(Some(row));
        }
    }

    fn read_byte(&mut self) -> std::io::Result<Option<u8>> {
        let b = match self.reader.fill_buf()?.first() {
            Some(b) => *b,
            None => return Ok(None),
        };
        self.reader.consume(1);
        Ok(Some(b))
    }

    fn skip_ws(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            let peek = self.reader.fill_buf()?.first().copied();
            match peek {
                Some(b) if b.is_ascii_whitespace() => self.reader.consume(1),
                other => return Ok(other),
            }
        }
    }

    fn next_element(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
        if self.state == ArrayState::Done {
            return Ok(None);
        }
        if self.state == ArrayState::Start {
            match self.skip_ws()? {
                None => {
                    self.state = ArrayState::Done;
                    return Ok(None);
                }
                Some(b'[') => {
                    self.reader.consume(1);
                    self.state = ArrayState::Inside;
                    if self.skip_ws()? == Some(b']') {
                        self.reader.consume(1);
                        self.state = ArrayState::Done;
                        return Ok(None);
                    }
                }
                Some(_) => {
                    // Not an array: the whole remaining text is one malformed record.
                    self.reader.read_to_end(buf)?;
                    self.state = ArrayState::Done;
                    return Ok(Some(self.take_number()));
                }
            }
        }
        self.skip_ws()?;
        let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
        let mut size = 0u64;
        let limit = self.max_record as u64;
        loop {
            size += 1;
            if size > limit && self.oversized.is_none() {
                // Measured from here on, not kept.
                self.oversized = Some(size);
                *buf = Vec::new();
            }
            if let Some(s) = &mut self.oversized {
                *s = size;
            }
            let Some(b) = self.read_byte()? else {
                self.state = ArrayState::Done;
                return Ok(if buf.is_empty() {
                    None
                } else {
                    Some(self.take_number())
                });
            };
            if in_string {
                if self.oversized.is_none() {
                    buf.push(b);
                }
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' => {
                    self.state = ArrayState::Done;
                    trim_end(buf);
                    return Ok(if buf.is_empty() && self.oversized.is_none() {
                        None
                    } else {
                        Some(self.take_number())
                    });
                }
                b',' if depth == 0 => {
                    trim_end(buf);
                    return Ok(Some(self.take_number()));
                }
                _ => {}
            }
            if self.oversized.is_none() {
                buf.push(b);
            }
        }
    }

    fn take_number(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        n
    }
}

fn trim_end(buf: &mut Vec<u8>) {
    while buf.last().is_some_and(u8::is_ascii_whitespace) {
        buf.pop();
    }
}

/// Infers the columns from the first records of each file, in first-seen key order. Keys whose
/// sampled values are all scalars become text columns; objects and arrays keep their shape.
pub(crate) fn infer_schema(
    name: &str,
    files: &[PathBuf],
    format: InputFormat,
    max_record: usize,
) -> Result<SchemaRef> {
    let mut objects: Vec<Value> = Vec::new();
    let mut buf = Vec::new();
    let mut records = 0usize;
    for f in files {
        let mut recs = Records::open(f, format, max_record)?;
        let mut seen = 0;
        while seen < INFER_RECORDS {
            let Some(_) = recs
                .next_record(&mut buf)
                .map_err(|e| Error::io("reading", f, e))?
            else {
                break;
            };
            seen += 1;
            records += 1;
            // Malformed records are reported when the data is read.
            if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&buf) {
                objects.push(v);
            }
        }
    }
    if records == 0 {
        // An export with no records is an empty source, not a broken one: it yields no rows.
        return Ok(Arc::new(Schema::empty()));
    }
    schema_of_objects(&objects).ok_or_else(|| {
        Error::source(
            name,
            format!(
                "{} holds no JSON object to infer columns from",
                files[0].display()
            ),
        )
    })
}

/// Columns of JSON objects: the union of their keys in first-seen order; scalars as text,
/// nested values as Arrow structs/lists (of text). None when there is no key at all.
pub(crate) fn schema_of_objects(objects: &[Value]) -> Option<SchemaRef> {
    let mut order: Vec<String> = Vec::new();
    let mut values: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for map in objects.iter().filter_map(Value::as_object) {
        for (k, v) in map {
            if !values.contains_key(k) {
                order.push(k.clone());
            }
            values.entry(k.clone()).or_default().push(v.clone());
        }
    }
    if order.is_empty() {
        return None;
    }
    let fields: Vec<Field> = order
        .into_iter()
        .map(|k| {
            let vals = &values[&k];
            let nested = vals.iter().any(|v| v.is_object() || v.is_array());
            let dt = if !nested {
                DataType::Utf8
            } else {
                let objs = vals.iter().filter(|v| !v.is_null()).map(|v| {
                    let mut m = serde_json::Map::new();
                    m.insert(k.clone(), v.clone());
                    Ok::<Value, arrow::error::ArrowError>(Value::Object(m))
                });
                match arrow_json_reader::infer_json_schema_from_iterator(objs) {
                    Ok(s)
                        if vals
                            .iter()
                            .all(|v| v.is_null() || v.is_object() || v.is_array()) =>
                    {
                        texts_for_scalars(s.field(0).data_type())
                    }
                    _ => DataType::Utf8,
                }
            };
            Field::new(k, dt, true)
        })
        .collect();
    Some(Arc::new(Schema::new(fields)))
}

/// Inside nested types, scalars are read as text too, for the same robustness as top level.
fn texts_for_scalars(dt: &DataType) -> DataType {
    match dt {
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Field::new(f.name(), texts_for_scalars(f.data_type()), true))
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::List(item) => DataType::List(Arc::new(Field::new(
            item.name(),
            texts_for_scalars(item.data_type()),
            true,
        ))),
        _ => DataType::Utf8,
    }
}

/// Splits an uncompressed NDJSON file into pieces of about `target` bytes at line boundaries,
/// numbering their first lines as the reader does (blank lines count). `None` for a JSON array,
/// a compressed file or one no larger than `target`.
// Pieces are for cluster runs, which only the `ballista` feature builds.
#[cfg_attr(not(feature = "ballista"), allow(dead_code))]
pub fn split(path: &Path, format: InputFormat, target: u64) -> Result<Option<Vec<Piece>>> {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let len = super::files::size(path)?;
    if format != InputFormat::Ndjson
        || lower.ends_with(".gz")
        || lower.ends_with(".zst")
        || len <= target
    {
        return Ok(None);
    }
    let mut f = super::files::open_range(path, 0, len)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut lines) = (0u64, 0u64);
    let (mut start, mut first_row) = (0u64, 1u64);
    let mut pieces = Vec::new();
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            lines += 1;
            let end = pos + i as u64 + 1;
            if end - start >= target {
                pieces.push(Piece {
                    unit: PieceUnit::Bytes,
                    start,
                    end,
                    first_row,
                });
                (start, first_row) = (end, lines + 1);
            }
        }
        pos += n as u64;
    }
    if start < len || pieces.is_empty() {
        pieces.push(Piece {
            unit: PieceUnit::Bytes,
            start,
            end: len,
            first_row,
        });
    }
    Ok(Some(pieces))
}

/// One NDJSON/JSON file (or piece of one) being read.
pub(crate) struct JsonFile {
    records: Records,
    display: String,
    /// A read error met after some records of a batch (a truncated compressed file): those
    /// records are handed on first, the error with the next call.
    failed: Option<Error>,
}

fn decoder(data_schema: &SchemaRef, batch_size: usize) -> Result<Decoder> {
    Ok(ReaderBuilder::new(Arc::clone(data_schema))
        .with_batch_size(batch_size.max(1))
        .with_coerce_primitive(true)
        .with_strict_mode(true)
        .build_decoder()?)
}

/// Decoded columns of some JSON records, with per-record errors and raw text (both None for a
/// record that decoded).
pub(crate) type Decoded = (Vec<ArrayRef>, Vec<Option<String>>, Vec<Option<String>>);

/// Decodes JSON records (`text[span]` each) into `data_schema`'s columns: all at once when they
/// are well formed, else one by one so that each bad record becomes a null row with its error
/// and raw text while its neighbours are kept. `known` holds the errors already known (an
/// oversized record, whose span is empty); a record nested deeper than
/// [`MAX_DATA_DEPTH`](crate::limits::MAX_DATA_DEPTH) is refused before any decoder sees it.
pub(crate) fn decode_records(
    data_schema: &SchemaRef,
    text: &[u8],
    spans: &[std::ops::Range<usize>],
    mut known: Vec<Option<String>>,
) -> Result<Decoded> {
    let n = spans.len();
    for (span, err) in spans.iter().zip(known.iter_mut()) {
        if err.is_none() && crate::limits::too_deep(&text[span.clone()]) {
            *err = Some(format!(
                "the record nests deeper than {} levels",
                crate::limits::MAX_DATA_DEPTH
            ));
        }
    }
    let any_known = known.iter().any(Option::is_some);
    let fast = if any_known {
        None
    } else {
        let mut d = decoder(data_schema, n)?;
        d.decode(text)
            .and_then(|_| d.flush())
            .ok()
            .flatten()
            .filter(|b| b.num_rows() == n)
    };
    if let Some(b) = fast {
        return Ok((b.columns().to_vec(), vec![None; n], vec![None; n]));
    }
    let mut pieces = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let null_row = RecordBatch::try_new(
        Arc::clone(data_schema),
        data_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect(),
    )?;
    for (span, known) in spans.iter().zip(known) {
        let bytes = &text[span.clone()];
        if let Some(msg) = known {
            pieces.push(null_row.clone());
            errors.push(Some(msg));
            raw.push((!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned()));
            continue;
        }
        let mut d = decoder(data_schema, 1)?;
        let decoded = match d.decode(bytes).and_then(|_| d.flush()) {
            Ok(Some(b)) if b.num_rows() == 1 => Ok(b),
            Ok(_) => Err("not a JSON object".to_string()),
            Err(e) => Err(describe(bytes, e)),
        };
        match decoded {
            Ok(b) => {
                pieces.push(b);
                errors.push(None);
                raw.push(None);
            }
            Err(msg) => {
                pieces.push(null_row.clone());
                errors.push(Some(msg));
                raw.push(Some(String::from_utf8_lossy(bytes).into_owned()));
            }
        }
    }
    let all = arrow::compute::concat_batches(data_schema, &pieces)?;
    Ok((all.columns().to_vec(), errors, raw))
}

impl super::files::FileReader for JsonFile {
    fn open(source: &FileSource, _: &SchemaRef, index: usize) -> Result<Self> {
        let path = &source.files()[index];
        let piece = source.range(index).filter(|p| p.unit == PieceUnit::Bytes);
        let max_record = source.config().max_record_bytes;
        let records = match piece {
            Some(p) if source.format() == InputFormat::Ndjson => {
                Records::open_piece(path, p, max_record)?
            }
            _ => Records::open(path, source.format(), max_record)?,
        };
        Ok(JsonFile {
            records,
            display: path.display().to_string(),
            failed: None,
        })
    }

    fn next_batch(
        &mut self,
        source: &FileSource,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let batch_size = source.batch_size();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        // Sized for at most 8,192 rows up front: a large `batch_size` reserves nothing it
        // does not fill.
        let reserve = batch_size.min(8192);
        let mut text = Vec::with_capacity(reserve * 128);
        let mut spans = Vec::with_capacity(reserve);
        let mut rows = Vec::with_capacity(reserve);
        let mut known = Vec::with_capacity(reserve);
        let mut buf = Vec::new();
        let max_record = source.config().max_record_bytes;
        while rows.len() < batch_size {
            let row = match self.records.next_record(&mut buf) {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    let e = Error::source(source.name(), format!("{}: {e}", self.display));
                    if rows.is_empty() {
                        return Err(e);
                    }
                    self.failed = Some(e);
                    break;
                }
            };
            let start = text.len();
            text.extend_from_slice(&buf);
            spans.push(start..text.len());
            text.push(b'\n');
            rows.push(row);
            known.push(
                self.records
                    .oversized
                    .map(|size| super::limit::oversized_message(size, max_record)),
            );
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let (columns, errors, raw) = decode_records(&source.data_schema(), &text, &spans, known)?;
        assemble(schema, columns, &self.display, rows, errors, raw).map(Some)
    }
}

/// A short reason for a record that does not decode, preferring serde_json's syntax message.
fn describe(bytes: &[u8], e: arrow::error::ArrowError) -> String {
    match serde_json::from_slice::<Value>(bytes) {
        Err(se) => format!("malformed JSON: {se}"),
        Ok(Value::Object(_)) => format!("record does not fit the source's columns: {e}"),
        Ok(_) => "not a JSON object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str, format: InputFormat) -> Vec<(u64, String)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, text).unwrap();
        let mut r = Records::open(&p, format, 1 << 24).unwrap();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(n) = r.next_record(&mut buf).unwrap() {
            out.push((n, String::from_utf8(buf.clone()).unwrap()));
        }
        out
    }

    #[test]
    fn array_elements_are_split_at_top_level_commas() {
        let got = records(
            r#" [ {"a": "x,]}", "b": [1, 2]} , {"a": "\"q\""}, 5 ] "#,
            InputFormat::Json,
        );
        assert_eq!(
            got,
            vec![
                (1, r#"{"a": "x,]}", "b": [1, 2]}"#.to_string()),
                (2, r#"{"a": "\"q\""}"#.to_string()),
                (3, "5".to_string())
            ]
        );
        assert!(records("[]", InputFormat::Json).is_empty());
        assert_eq!(records(r#"[{"a": 1}, {"a": "#, InputFormat::Json).len(), 2);
    }

    #[test]
    fn ndjson_lines_keep_line_numbers_and_skip_blanks() {
        let got = records("{\"a\":1}\n\n{\"a\":2}\r\n", InputFormat::Ndjson);
        assert_eq!(
            got,
            vec![(1, "{\"a\":1}".to_string()), (3, "{\"a\":2}".to_string())]
        );
    }

    #[test]
    fn ndjson_pieces_keep_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson");
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!("{{\"a\":{i},\"b\":\"some text\"}}\n"));
            if i % 40 == 0 {
                text.push('\n'); // blank lines count as lines, not records
            }
        }
        std::fs::write(&path, &text).unwrap();
        let lines = |pieces: Option<Vec<Piece>>| -> Vec<(u64, String)> {
            let mut out = Vec::new();
            let mut buf = Vec::new();
            let mut each = |mut r: Records| {
                while let Some(row) = r.next_record(&mut buf).unwrap() {
                    out.push((row, String::from_utf8(buf.clone()).unwrap()));
                }
            };
            match pieces {
                None => each(Records::open(&path, InputFormat::Ndjson, 1 << 24).unwrap()),
                Some(ps) => {
                    for p in ps {
                        each(Records::open_piece(&path, p, 1 << 24).unwrap());
                    }
                }
            }
            out
        };
        let pieces = split(&path, InputFormat::Ndjson, 1000).unwrap().unwrap();
        assert!(pieces.len() > 5, "{pieces:?}");
        let whole = lines(None);
        assert_eq!(whole.len(), 300);
        assert_eq!(lines(Some(pieces)), whole);
        assert!(split(&path, InputFormat::Json, 10).unwrap().is_none());
    }
}
