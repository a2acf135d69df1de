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

/// Removes the temporary files (`.NAME.tmp-PID-N`) that a killed conform process left in
/// `dir`: those whose process is gone. Files of a live process (another run writing to the
/// same directory) and files of any other naming are left alone. Returns the files removed.
/// Where processes cannot be looked up (no `/proc`), nothing is removed.
pub fn remove_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        if pid == own || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The process id in a temporary file name of [`AtomicFile`]'s pattern, `.NAME.tmp-PID-N`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (stem, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (!stem.is_empty() && digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Writes a whole small file atomically.
pub fn atomic_write(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", dest, e))?;
    f.commit().map(|_| ())
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
        let file = AtomicFile::create(dest)?;
        let writer = match format {
            OutputFormat::Json => {
                ValidWriter::Json(WriterBuilder::new().build::<_, JsonArray>(file))
            }
            OutputFormat::Ndjson => {
                ValidWriter::Ndjson(WriterBuilder::new().build::<_, LineDelimited>(file))
            }
            OutputFormat::Parquet => {
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
fn write_error(dest: &Path, e: Error) -> Error {
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

    #[test]
    fn temp_files_of_dead_processes_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (2^22) never names a live process.
        let dead = dir.path().join(".s_valid_data.json.tmp-4194400-0");
        let live = dir
            .path()
            .join(format!(".s_valid_data.json.tmp-{}-3", std::process::id()));
        let other = dir.path().join(".notes.tmp-1-x");
        let plain = dir.path().join("s_valid_data.json");
        for p in [&dead, &live, &other, &plain] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temp_files(dir.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && plain.exists());
        assert_eq!(temp_file_pid(".a.b.tmp-12-3"), Some(12));
        assert_eq!(temp_file_pid("a.tmp-12-3"), None);
        assert_eq!(temp_file_pid(".a.tmp-12-"), None);
    }

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
