//! CSV: RFC 4180 records read with the `csv` crate into text columns.
//!
//! Every column is `Utf8` holding the field as written; an empty field is null. A record with
//! the wrong number of fields or with invalid UTF-8 is kept (its fields as far as they go,
//! invalid bytes replaced) and marked malformed, so it lands in the invalid output.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, BinaryBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{FileSource, assemble, open_decompressed};
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
) -> Result<::csv::Reader<Box<dyn std::io::BufRead + Send>>> {
    Ok(::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(path, opts))
        .buffer_capacity(1 << 16)
        .from_reader(open_decompressed(path)?))
}

/// The header of one file (or `column_N` names when there is none).
fn header(name: &str, path: &std::path::Path, opts: &CsvOptions) -> Result<Vec<String>> {
    if let Some(c) = opts.delimiter.filter(|c| !c.is_ascii()) {
        return Err(Error::source(
            name,
            format!("CSV delimiter {c:?} must be one ASCII character"),
        ));
    }
    let mut r = reader(path, opts)?;
    let mut rec = ::csv::ByteRecord::new();
    let got = r
        .read_byte_record(&mut rec)
        .map_err(|e| Error::source(name, format!("cannot read {}: {e}", path.display())))?;
    if !got {
        return Ok(vec![]);
    }
    if !opts.has_header {
        return Ok((1..=rec.len()).map(|i| format!("column_{i}")).collect());
    }
    let mut names = Vec::with_capacity(rec.len());
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
        if names.contains(&s) {
            return Err(Error::source(
                name,
                format!("{}: the header names column `{s}` twice", path.display()),
            ));
        }
        names.push(s);
    }
    Ok(names)
}

/// The union of the files' headers, in first-seen order; every column is text.
pub(crate) fn infer_schema(name: &str, files: &[PathBuf], opts: &CsvOptions) -> Result<SchemaRef> {
    let mut names: Vec<String> = Vec::new();
    for f in files {
        for h in header(name, f, opts)? {
            if !names.contains(&h) {
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

struct OpenFile {
    reader: ::csv::Reader<Box<dyn std::io::BufRead + Send>>,
    display: String,
    /// For each field position in this file, the schema column it fills.
    positions: Vec<usize>,
    next_row: u64,
}

/// Iterator over the batches of a CSV source.
pub(crate) struct CsvBatches {
    source: FileSource,
    schema: SchemaRef,
    next_file: usize,
    current: Option<OpenFile>,
}

impl CsvBatches {
    pub(crate) fn new(source: FileSource, schema: SchemaRef) -> Self {
        CsvBatches {
            source,
            schema,
            next_file: 0,
            current: None,
        }
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.source.files().get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        let opts = &self.source.config().csv;
        let data = self.source.data_schema();
        let names = header(self.source.name(), &path, opts)?;
        let positions = names
            .iter()
            .map(|n| {
                data.index_of(n)
                    .expect("the schema is the union of all headers")
            })
            .collect();
        let mut reader = reader(&path, opts)?;
        if opts.has_header {
            let mut skip = ::csv::ByteRecord::new();
            reader.read_byte_record(&mut skip).map_err(|e| {
                Error::source(self.source.name(), format!("{}: {e}", path.display()))
            })?;
        }
        self.current = Some(OpenFile {
            reader,
            display: path.display().to_string(),
            positions,
            next_row: 1,
        });
        Ok(true)
    }
}

impl super::ReadBatch for CsvBatches {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let ncols = self.schema.fields().len() - super::PROVENANCE.len();
            let batch_size = self.source.batch_size();
            let name = self.source.name().to_string();
            let file = self.current.as_mut().expect("opened above");
            // Fields are collected as bytes and checked for UTF-8 once per column and batch
            // (`try_from_binary`), far cheaper than a check per field.
            let mut builders: Vec<BinaryBuilder> = (0..ncols)
                .map(|_| BinaryBuilder::with_capacity(batch_size, batch_size * 16))
                .collect();
            let mut rows = Vec::with_capacity(batch_size);
            let mut errors: Vec<Option<String>> = Vec::with_capacity(batch_size);
            let mut rec = ::csv::ByteRecord::new();
            let mut filled = vec![false; ncols];
            while rows.len() < batch_size {
                let more = file
                    .reader
                    .read_byte_record(&mut rec)
                    .map_err(|e| Error::source(&name, format!("{}: {e}", file.display)))?;
                if !more {
                    break;
                }
                let mut problem: Option<String> = None;
                let expected = file.positions.len();
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
                self.current = None;
                continue;
            }
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(ncols);
            for (col, b) in builders.iter_mut().enumerate() {
                let bytes = b.finish();
                // The clone shares the buffers; it is kept for the rare batch that fails.
                let text = match StringArray::try_from_binary(bytes.clone()) {
                    Ok(text) => text,
                    Err(_) => lossy_text(&bytes, col, &self.schema, &mut errors),
                };
                columns.push(Arc::new(text));
            }
            let raw = vec![None; rows.len()];
            return assemble(&self.schema, columns, &file.display, rows, errors, raw).map(Some);
        }
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
