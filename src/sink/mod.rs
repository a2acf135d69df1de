//! Output files. Every file is written under a temporary name in the same directory and renamed
//! into place by `finish`; dropping a sink unfinished (an error, Ctrl-C) removes the temporary
//! file, so a final name never holds a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::writer::{JsonArray, LineDelimited, WriterBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::{OutputFormat, ParquetOptions};
use crate::error::{Error, Result};
use crate::fs::AtomicFile;
use crate::validate::report::InvalidRow;

#[cfg(feature = "delta")]
pub mod delta;

/// The two outputs of one split stream: the valid rows' file, and the invalid rows' file
/// created on the first invalid row (a source or partition without invalid rows writes none).
/// The local run's writer stage and each cluster partition write through it.
pub struct SplitWriter {
    valid: ValidSink,
    invalid: Option<InvalidSink>,
    invalid_path: PathBuf,
    invalid_array: bool,
}

/// The files a [`SplitWriter`] completed.
#[derive(Debug, Clone)]
pub struct Written {
    /// The valid rows' file.
    pub valid: PathBuf,
    /// The invalid rows' file, if any row was invalid.
    pub invalid: Option<PathBuf>,
}

impl SplitWriter {
    /// Opens the valid output at `valid_path` in `format`; invalid rows will go to
    /// `invalid_path` (a JSON array for `json` output, else NDJSON).
    pub fn create(
        valid_path: &Path,
        invalid_path: &Path,
        format: OutputFormat,
        valid_schema: &SchemaRef,
        parquet: &ParquetOptions,
    ) -> Result<SplitWriter> {
        Ok(SplitWriter {
            valid: ValidSink::create(valid_path, format, valid_schema, parquet)?,
            invalid: None,
            invalid_path: invalid_path.to_path_buf(),
            invalid_array: format == OutputFormat::Json,
        })
    }

    /// Appends one split batch.
    pub fn write(&mut self, valid: &RecordBatch, invalid: &[InvalidRow]) -> Result<()> {
        self.valid.write(valid)?;
        if invalid.is_empty() {
            return Ok(());
        }
        let sink = match &mut self.invalid {
            Some(sink) => sink,
            None => self
                .invalid
                .insert(InvalidSink::create(&self.invalid_path, self.invalid_array)?),
        };
        sink.write(invalid)
    }

    /// Completes both files and moves them into place. Dropped instead, it leaves nothing.
    pub fn finish(self) -> Result<Written> {
        let valid = self.valid.finish()?;
        let invalid = self.invalid.map(InvalidSink::finish).transpose()?;
        Ok(Written { valid, invalid })
    }
}

/// Where valid rows go: shaped like arrow's `RecordBatchWriter` (`write`, then `finish`).
/// A failed write names the file and keeps the operating system's error
/// (`No space left on device`).
pub struct ValidSink {
    dest: PathBuf,
    writer: ValidWriter,
}

/// The writer of one valid-rows format.
enum ValidWriter {
    /// One JSON array, streamed batch by batch.
    Json(arrow::json::Writer<AtomicFile, JsonArray>),
    /// One JSON object per line.
    Ndjson(arrow::json::Writer<AtomicFile, LineDelimited>),
    /// Parquet, zstd; row groups are flushed by size so memory stays bounded.
    Parquet(Box<ArrowWriter<AtomicFile>>),
}

impl ValidSink {
    /// Opens a sink for `dest` in `format`.
    pub fn create(
        dest: &Path,
        format: OutputFormat,
        schema: &SchemaRef,
        parquet: &ParquetOptions,
    ) -> Result<ValidSink> {
        let writer = match format {
            OutputFormat::Json => ValidWriter::Json(
                WriterBuilder::new().build::<_, JsonArray>(AtomicFile::create(dest)?),
            ),
            OutputFormat::Ndjson => ValidWriter::Ndjson(
                WriterBuilder::new().build::<_, LineDelimited>(AtomicFile::create(dest)?),
            ),
            OutputFormat::Delta => {
                return Err(Error::config(
                    "output_format",
                    "Delta tables are written by `sink::delta`, not as one file",
                ));
            }
            OutputFormat::Parquet => {
                let file = AtomicFile::create(dest)?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(parquet.zstd_level)?))
                    .set_max_row_group_row_count(Some(parquet.row_group_size))
                    .build();
                ValidWriter::Parquet(Box::new(ArrowWriter::try_new(
                    file,
                    Arc::clone(schema),
                    Some(props),
                )?))
            }
        };
        Ok(ValidSink {
            dest: dest.to_path_buf(),
            writer,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let result = match &mut self.writer {
            ValidWriter::Json(w) => w.write(batch).map_err(Error::from),
            ValidWriter::Ndjson(w) => w.write(batch).map_err(Error::from),
            ValidWriter::Parquet(w) => w.write(batch).map_err(Error::from),
        };
        result.map_err(|e| write_error(&self.dest, e))
    }

    /// Completes the file and moves it into place.
    pub fn finish(self) -> Result<PathBuf> {
        let dest = self.dest;
        let file = match self.writer {
            ValidWriter::Json(mut w) => {
                // Writes `[]` when there were no rows, as the original tool did.
                w.finish().map_err(|e| write_error(&dest, e.into()))?;
                w.into_inner()
            }
            ValidWriter::Ndjson(mut w) => {
                w.finish().map_err(|e| write_error(&dest, e.into()))?;
                w.into_inner()
            }
            ValidWriter::Parquet(w) => w.into_inner().map_err(|e| write_error(&dest, e.into()))?,
        };
        file.commit()
    }
}

/// A writer's error as an I/O error on `dest` when an I/O error is at its root, so that the
/// message says which file and what the system said.
pub(crate) fn write_error(dest: &Path, e: Error) -> Error {
    let io = match e {
        Error::Arrow(arrow::error::ArrowError::IoError(_, io)) => io,
        Error::Parquet(parquet::errors::ParquetError::External(inner)) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => *io,
                Err(other) => std::io::Error::other(other.to_string()),
            }
        }
        Error::Io { source, .. } => source,
        other => return other,
    };
    Error::io("writing", dest, io)
}

/// Where invalid rows go: a JSON array or NDJSON of `{source_file, row, record, errors}`.
/// Created on the first invalid row, so a source without invalid rows writes no file.
pub struct InvalidSink {
    file: AtomicFile,
    array: bool,
    rows: u64,
}

impl InvalidSink {
    /// Opens the sink; `array` picks one JSON array over NDJSON.
    pub fn create(dest: &Path, array: bool) -> Result<InvalidSink> {
        let mut file = AtomicFile::create(dest)?;
        if array {
            file.write_all(b"[")
                .map_err(|e| Error::io("writing", dest, e))?;
        }
        Ok(InvalidSink {
            file,
            array,
            rows: 0,
        })
    }

    /// Appends rows.
    pub fn write(&mut self, rows: &[InvalidRow]) -> Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 512);
        for r in rows {
            let sep: &[u8] = match (self.array, self.rows) {
                (true, 0) => b"\n",
                (true, _) => b",\n",
                (false, _) => b"",
            };
            buf.extend_from_slice(sep);
            r.write_json(&mut buf);
            if !self.array {
                buf.push(b'\n');
            }
            self.rows += 1;
        }
        self.file
            .write_all(&buf)
            .map_err(|e| Error::io("writing", self.file.path(), e))
    }

    /// Completes the file and moves it into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.array {
            self.file
                .write_all(b"\n]\n")
                .map_err(|e| Error::io("writing", self.file.path(), e))?;
        }
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::fs::File;

    #[test]
    fn a_parquet_file_without_rows_has_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("empty.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let sink = ValidSink::create(
            &dest,
            OutputFormat::Parquet,
            &schema,
            &ParquetOptions::default(),
        )
        .unwrap();
        sink.finish().unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&dest).unwrap(),
        )
        .unwrap();
        assert_eq!(reader.schema().fields().len(), 1);
        assert_eq!(reader.metadata().num_row_groups(), 0);
    }

    #[test]
    fn a_bad_zstd_level_fails_when_the_sink_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let options = ParquetOptions {
            zstd_level: 99,
            ..ParquetOptions::default()
        };
        let got = ValidSink::create(
            &dir.path().join("x.parquet"),
            OutputFormat::Parquet,
            &schema,
            &options,
        );
        assert!(got.is_err());
    }
}
