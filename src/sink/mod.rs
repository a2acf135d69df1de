//! Output files. Every file is written under a temporary name in the same directory and renamed
//! into place by `finish`; dropping a sink unfinished (an error, Ctrl-C) removes the temporary
//! file, so a final name never holds a half-written file.

use std::fs::File;
use std::io::{BufWriter, Write};
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
use crate::validate::report::InvalidRow;

/// A file being written under a temporary name.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates `<dir>/.<name>.tmp-<pid>-<n>` for a file that will be renamed to `dest`. The
    /// counter keeps two writers of the same file in one process (a cluster task run twice)
    /// from sharing a temporary file; the last rename wins, whole.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("output");
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut w = self.writer.take().expect("not yet committed");
        w.flush().map_err(|e| Error::io("writing", &self.tmp, e))?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io("writing", &self.tmp, e.into_error()))?;
        f.sync_all()
            .map_err(|e| Error::io("syncing", &self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io("renaming", &self.tmp, e))?;
        Ok(self.dest.clone())
    }

    fn path(&self) -> &Path {
        &self.tmp
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a whole small file atomically.
pub fn atomic_write(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", dest, e))?;
    f.commit().map(|_| ())
}

/// Where valid rows go: shaped like arrow's `RecordBatchWriter` (`write`, then `finish`).
pub enum ValidSink {
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
        let file = AtomicFile::create(dest)?;
        Ok(match format {
            OutputFormat::Json => ValidSink::Json(WriterBuilder::new().build::<_, JsonArray>(file)),
            OutputFormat::Ndjson => {
                ValidSink::Ndjson(WriterBuilder::new().build::<_, LineDelimited>(file))
            }
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(parquet.zstd_level)?))
                    .set_max_row_group_row_count(Some(parquet.row_group_size))
                    .build();
                ValidSink::Parquet(Box::new(ArrowWriter::try_new(
                    file,
                    Arc::clone(schema),
                    Some(props),
                )?))
            }
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self {
            ValidSink::Json(w) => w.write(batch)?,
            ValidSink::Ndjson(w) => w.write(batch)?,
            ValidSink::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Completes the file and moves it into place.
    pub fn finish(self) -> Result<PathBuf> {
        let file = match self {
            ValidSink::Json(mut w) => {
                w.finish()?; // writes `[]` when there were no rows, as the original tool did
                w.into_inner()
            }
            ValidSink::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            ValidSink::Parquet(w) => w.into_inner()?,
        };
        file.commit()
    }
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
