//! CSV: RFC 4180 records read with the `csv` crate into text columns.
//!
//! Every column is `Utf8` holding the field as written; an empty field is null. A record with
//! the wrong number of fields or with invalid UTF-8 is kept (its fields as far as they go,
//! invalid bytes replaced) and marked malformed, so it lands in the invalid output.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, BinaryBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::limit::{CsvLimit, oversized, oversized_message};
use super::{FileSource, Piece, PieceUnit, assemble, open_decompressed};
use crate::config::CsvOptions;
use crate::error::{Error, Result};

fn delimiter(path: &std::path::Path, opts: &CsvOptions) -> u8 {
    match opts.delimiter {
        Some(c) => c as u8,
        None if path.to_string_lossy().to_ascii_lowercase().contains(".tsv") => b'\t',
        None => b',',
    }
}

fn reader(
    path: &std::path::Path,
    opts: &CsvOptions,
    max_record: usize,
) -> Result<::csv::Reader<Box<dyn std::io::BufRead + Send>>> {
    let limited: Box<dyn std::io::BufRead + Send> = Box::new(CsvLimit::new(
        open_decompressed(path)?,
        delimiter(path, opts),
        max_record,
    ));
    Ok(::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(path, opts))
        .buffer_capacity(1 << 16)
        .from_reader(limited))
}

/// A reader of one byte range of an uncompressed file.
fn range_reader(
    path: &std::path::Path,
    opts: &CsvOptions,
    range: Piece,
    max_record: usize,
) -> Result<::csv::Reader<Box<dyn std::io::BufRead + Send>>> {
    let piece: Box<dyn std::io::BufRead + Send> = Box::new(CsvLimit::new(
        std::io::BufReader::with_capacity(
            1 << 20,
            super::files::open_range(path, range.start, range.end)?,
        ),
        delimiter(path, opts),
        max_record,
    ));
    Ok(::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(path, opts))
        .buffer_capacity(1 << 16)
        .from_reader(piece))
}

/// The header of one file (or `column_N` names when there is none).
fn header(
    name: &str,
    path: &std::path::Path,
    opts: &CsvOptions,
    max_record: usize,
) -> Result<Vec<String>> {
    if let Some(c) = opts.delimiter.filter(|c| !c.is_ascii()) {
        return Err(Error::source(
            name,
            format!("CSV delimiter {c:?} must be one ASCII character"),
        ));
    }
    let mut r = reader(path, opts, max_record)?;
    let mut rec = ::csv::ByteRecord::new();
    let got = r
        .read_byte_record(&mut rec)
        .map_err(|e| Error::source(name, format!("cannot read {}: {e}", path.display())))?;
    if !got {
        return Ok(vec![]);
    }
    if let Some(size) = rec.get(0).and_then(oversized) {
        return Err(Error::source(
            name,
            format!(
                "{}: the first line is {size} bytes long, over `limits.max_record_bytes` ({max_record})",
                path.display()
            ),
        ));
    }
    if !opts.has_header {
        return Ok((1..=rec.len()).map(|i| format!("column_{i}")).collect());
    }
    let mut names = Vec::with_capacity(rec.len());
    let mut seen = std::collections::HashSet::with_capacity(rec.len());
    for (i, f) in rec.iter().enumerate() {
        let s = std::str::from_utf8(f).map_err(|_| {
            Error::source(
                name,
                format!("{}: header field {} is not UTF-8", path.display(), i + 1),
            )
        })?;
        let s = s.trim_start_matches('\u{feff}').trim();
        let s = if s.is_empty() {
            format!("column_{}", i + 1)
        } else {
            s.to_string()
        };
        if !seen.insert(s.clone()) {
            return Err(Error::source(
                name,
                format!("{}: the header names column `{s}` twice", path.display()),
            ));
        }
        names.push(s);
    }
    Ok(names)
}

/// Splits a CSV file into ranges of about `target` bytes at record boundaries, found with the
/// same tokenizer and options the reader uses (quoted fields may hold newlines), so each range
/// reads the same records with the same numbers as the whole file. `None` for a compressed
/// file (it cannot be entered in the middle) or one no larger than `target`.
// Pieces are for cluster runs, which only the `ballista` feature builds.
#[cfg_attr(not(feature = "ballista"), allow(dead_code))]
pub fn split(path: &std::path::Path, opts: &CsvOptions, target: u64) -> Result<Option<Vec<Piece>>> {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let len = super::files::size(path)?;
    if lower.ends_with(".gz") || lower.ends_with(".zst") || len <= target {
        return Ok(None);
    }
    // Byte positions must be the file's own, so this reader has no record limit.
    let mut r = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(path, opts))
        .buffer_capacity(1 << 16)
        .from_reader(open_decompressed(path)?);
    let mut rec = ::csv::ByteRecord::new();
    let bad = |e: ::csv::Error| Error::source("(split)", format!("{}: {e}", path.display()));
    if opts.has_header {
        r.read_byte_record(&mut rec).map_err(bad)?;
    }
    let mut ranges = Vec::new();
    let (mut start, mut first_row, mut next_row) = (r.position().byte(), 1u64, 1u64);
    while r.read_byte_record(&mut rec).map_err(bad)? {
        next_row += 1;
        let here = r.position().byte();
        if here - start >= target {
            ranges.push(Piece {
                unit: PieceUnit::Bytes,
                start,
                end: here,
                first_row,
            });
            (start, first_row) = (here, next_row);
        }
    }
    if start < len || ranges.is_empty() {
        ranges.push(Piece {
            unit: PieceUnit::Bytes,
            start,
            end: len,
            first_row,
        });
    }
    Ok(Some(ranges))
}

/// The union of the files' headers, in first-seen order; every column is text.
pub(crate) fn infer_schema(
    name: &str,
    files: &[PathBuf],
    opts: &CsvOptions,
    max_record: usize,
) -> Result<SchemaRef> {
    let mut names: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in files {
        for h in header(name, f, opts, max_record)? {
            if seen.insert(h.clone()) {
                names.push(h);
            }
        }
    }
    if names.is_empty() {
        // Zero-byte files: no columns and no records, so an empty source rather than an error.
        tracing::warn!(
            source = name,
            "The input has no header line and no records."
        );
        return Ok(Arc::new(Schema::empty()));
    }
    Ok(Arc::new(Schema::new(
        names
            .into_iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )))
}

pub(crate) struct OpenFile {
    reader: ::csv::Reader<Box<dyn std::io::BufRead + Send>>,
    display: String,
    /// For each field position in this file, the schema column it fills.
    positions: Vec<usize>,
    next_row: u64,
    /// A read error met after some rows of a batch: those rows are handed on first (a
    /// truncated file reports the rows it had), the error with the next call.
    failed: Option<Error>,
}

impl super::files::FileReader for OpenFile {
    fn open(source: &FileSource, _: &SchemaRef, index: usize) -> Result<Self> {
        let path = &source.files()[index];
        let range = source.range(index).filter(|p| p.unit == PieceUnit::Bytes);
        let opts = &source.config().csv;
        let data = source.data_schema();
        let max_record = source.config().max_record_bytes;
        let names = header(source.name(), path, opts, max_record)?;
        // A map, not `index_of` per name: a file may have tens of thousands of columns.
        let index: std::collections::HashMap<&str, usize> = data
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), i))
            .collect();
        let positions = names
            .iter()
            .map(|n| {
                *index
                    .get(n.as_str())
                    .expect("the schema is the union of all headers")
            })
            .collect();
        let (reader, next_row) = match range {
            Some(r) => (range_reader(path, opts, r, max_record)?, r.first_row),
            None => {
                let mut reader = reader(path, opts, max_record)?;
                if opts.has_header {
                    let mut skip = ::csv::ByteRecord::new();
                    reader.read_byte_record(&mut skip).map_err(|e| {
                        Error::source(source.name(), format!("{}: {e}", path.display()))
                    })?;
                }
                (reader, 1)
            }
        };
        Ok(OpenFile {
            reader,
            display: path.display().to_string(),
            positions,
            next_row,
            failed: None,
        })
    }

    fn next_batch(
        &mut self,
        source: &FileSource,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let ncols = schema.fields().len() - super::PROVENANCE.len();
        let batch_size = source.batch_size();
        let name = source.name();
        let max_record = source.config().max_record_bytes;
        let file = self;
        if let Some(e) = file.failed.take() {
            return Err(e);
        }
        // Buffers grow with the data; sized up front for at most this many rows, so that a
        // large `batch_size` reserves nothing it does not fill.
        let reserve = batch_size.min(8192);
        // Fields are collected as bytes and checked for UTF-8 once per column and batch
        // (`try_from_binary`), far cheaper than a check per field.
        let mut builders: Vec<BinaryBuilder> = (0..ncols)
            .map(|_| BinaryBuilder::with_capacity(reserve, reserve * 16))
            .collect();
        let mut rows = Vec::with_capacity(reserve);
        let mut errors: Vec<Option<String>> = Vec::with_capacity(reserve);
        let mut rec = ::csv::ByteRecord::new();
        let mut filled = vec![false; ncols];
        while rows.len() < batch_size {
            let more = match file.reader.read_byte_record(&mut rec) {
                Ok(more) => more,
                Err(e) => {
                    let e = Error::source(name, format!("{}: {e}", file.display));
                    if rows.is_empty() {
                        return Err(e);
                    }
                    file.failed = Some(e);
                    break;
                }
            };
            if !more {
                break;
            }
            let mut problem: Option<String> = None;
            let expected = file.positions.len();
            if let Some(size) = rec.get(0).and_then(oversized) {
                // Skipped as it streamed by: a malformed row with no values.
                builders.iter_mut().for_each(BinaryBuilder::append_null);
                rows.push(file.next_row);
                file.next_row += 1;
                errors.push(Some(oversized_message(size, max_record)));
                continue;
            }
            if rec.len() != expected {
                problem = Some(format!("expected {expected} fields, found {}", rec.len()));
            }
            filled.iter_mut().for_each(|f| *f = false);
            for (i, bytes) in rec.iter().enumerate().take(expected) {
                let col = file.positions[i];
                filled[col] = true;
                if bytes.is_empty() {
                    builders[col].append_null();
                } else {
                    builders[col].append_value(bytes);
                }
            }
            for (col, done) in filled.iter().enumerate() {
                if !done {
                    builders[col].append_null();
                }
            }
            rows.push(file.next_row);
            file.next_row += 1;
            errors.push(problem);
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(ncols);
        for (col, b) in builders.iter_mut().enumerate() {
            let bytes = b.finish();
            // The clone shares the buffers; it is kept for the rare batch that fails.
            let text = match StringArray::try_from_binary(bytes.clone()) {
                Ok(text) => text,
                Err(_) => lossy_text(&bytes, col, schema, &mut errors),
            };
            columns.push(Arc::new(text));
        }
        let raw: Vec<Option<String>> = vec![None; rows.len()];
        assemble(schema, columns, &file.display, rows, errors, raw).map(Some)
    }
}

/// A column with invalid UTF-8: bad values keep their text with U+FFFD replacements, and their
/// rows are marked malformed (unless they already are).
fn lossy_text(
    bytes: &BinaryArray,
    col: usize,
    schema: &Schema,
    errors: &mut [Option<String>],
) -> StringArray {
    bytes
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.map(|b| match std::str::from_utf8(b) {
                Ok(s) => s.to_string(),
                Err(_) => {
                    errors[row].get_or_insert_with(|| {
                        format!("invalid UTF-8 in column `{}`", schema.field(col).name())
                    });
                    String::from_utf8_lossy(b).into_owned()
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InputFormat;
    use arrow::array::{Array, AsArray};

    /// (row number, first field) of every record read from the given pieces of `path`.
    fn read(path: &std::path::Path, pieces: Vec<Option<Piece>>) -> Vec<(u64, String)> {
        let opts = CsvOptions::default();
        let schema = infer_schema("t", &[path.to_path_buf()], &opts, 1 << 24).unwrap();
        let files = pieces
            .into_iter()
            .map(|r| (path.to_path_buf(), r))
            .collect();
        let source = FileSource::for_files("t", InputFormat::Csv, opts, schema, files, 7);
        let mut out = Vec::new();
        for b in source.batches().unwrap() {
            let b = b.unwrap();
            let ids = b.column(0).as_string::<i32>();
            let rows = b
                .column_by_name(crate::source::ROW_COL)
                .unwrap()
                .as_primitive::<arrow::datatypes::UInt64Type>();
            for i in 0..b.num_rows() {
                out.push((rows.value(i), ids.value(i).to_string()));
                assert!(ids.is_valid(i));
            }
        }
        out
    }

    #[test]
    fn pieces_at_record_boundaries_read_the_same_records_with_the_same_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        let mut text = String::from("id,note\n");
        for i in 0..500 {
            // Quoted fields with newlines and commas: a naive line split would cut records.
            text.push_str(&format!("r{i},\"line one\nline, two {i}\"\n"));
            if i % 50 == 0 {
                text.push('\n'); // empty lines are skipped, not counted
            }
        }
        std::fs::write(&path, &text).unwrap();
        let whole = read(&path, vec![None]);
        assert_eq!(whole.len(), 500);
        let ranges = split(&path, &CsvOptions::default(), 1000).unwrap().unwrap();
        assert!(ranges.len() > 10, "{ranges:?}");
        assert_eq!(ranges.last().unwrap().end, text.len() as u64);
        let pieces = read(&path, ranges.into_iter().map(Some).collect());
        assert_eq!(pieces, whole);
        // Small files are not split.
        assert!(
            split(&path, &CsvOptions::default(), 1 << 30)
                .unwrap()
                .is_none()
        );
    }
}
