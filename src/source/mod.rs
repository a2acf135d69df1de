//! Sources: every input is read as a stream of Arrow record batches.
//!
//! A batch holds the source's columns as read plus provenance columns: [`FILE_COL`] (the file),
//! [`ROW_COL`] (1-based record number in that file: the CSV record after the header, the NDJSON
//! line, the JSON array element), [`ERROR_COL`] (why the record is malformed, null when it is
//! not) and [`RAW_COL`] (the raw text of a record that could not be parsed at all). Malformed
//! records are rows like any other, so `rows read = valid + invalid` always holds.
//!
//! CSV columns are text as written (an empty field is null); JSON scalars are read as text
//! (numbers and booleans as their JSON text), so a value of an unexpected type is never a
//! decoding error: the mapping decides how to convert it. Parquet columns keep their types.

pub mod csv;
mod files;
pub mod http;
pub mod json;
pub(crate) mod limit;
pub mod parquet;
pub mod postgres;
pub mod profile;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::config::{InputFormat, SourceConfig};
use crate::error::{Error, Result};

use files::Files;
pub use files::open_decompressed;
pub use profile::{ColumnProfile, ValueShape};

/// Provenance column: the file a row came from.
pub const FILE_COL: &str = "__file";
/// Provenance column: 1-based record number within its file.
pub const ROW_COL: &str = "__row";
/// Why a record is malformed; null for well-formed records.
pub const ERROR_COL: &str = "__error";
/// Raw text of a record that could not be parsed into columns.
pub const RAW_COL: &str = "__raw";

/// All the source's columns as one struct column: what the invalid output shows of a row.
/// Carried through the plan as one column, so that a source with tens of thousands of columns
/// costs the planner one column, not tens of thousands (DataFusion resolves columns by name
/// with linear searches, which makes wide projections quadratic).
pub const RECORD_COL: &str = "__record";

/// Names reserved for provenance.
pub const PROVENANCE: [&str; 5] = [FILE_COL, ROW_COL, ERROR_COL, RAW_COL, RECORD_COL];

/// What a source reads.
#[derive(Debug, Clone)]
enum Kind {
    /// Files (`path`), listed in `files`.
    Files,
    /// An HTTP JSON API (`url`); `files` is empty.
    Http(Arc<http::HttpSpec>),
    /// A PostgreSQL query (`postgres`); `files` is empty.
    Postgres(Arc<postgres::PgSpec>),
    /// Batches the caller holds in memory, read once; `files` is empty.
    Stream(Arc<stream::StreamInput>),
}

/// A configured source: one or more files of one format, an HTTP JSON API or a PostgreSQL
/// query.
#[derive(Debug, Clone)]
pub struct FileSource {
    name: String,
    files: Vec<PathBuf>,
    format: InputFormat,
    /// Files, an HTTP API or a database.
    kind: Kind,
    config: SourceConfig,
    /// The source's own columns (without provenance).
    data_schema: SchemaRef,
    batch_size: usize,
    /// Per file, the piece to read (a cluster partition's share); empty = whole files.
    ranges: Vec<Option<Piece>>,
}

impl FileSource {
    /// Resolves the files (glob), picks the format and reads the schema (header, inference
    /// from the first records, or Parquet metadata). `base` anchors relative paths.
    pub fn try_new(
        name: &str,
        config: &SourceConfig,
        base: &std::path::Path,
        batch_size: usize,
    ) -> Result<FileSource> {
        if config.url.is_some() {
            let spec = Arc::new(http::HttpSpec::try_new(name, config)?);
            // Fetching the first pages is also the credential check.
            let data_schema = http::infer_schema(&spec)?;
            check_reserved(name, &data_schema)?;
            return Ok(FileSource {
                name: name.to_string(),
                files: vec![],
                format: InputFormat::Json,
                kind: Kind::Http(spec),
                config: config.clone(),
                data_schema,
                batch_size,
                ranges: Vec::new(),
            });
        }
        if config.postgres.is_some() {
            let spec = Arc::new(postgres::PgSpec::try_new(name, config)?);
            // Connecting and describing the query is also the credential check.
            let data_schema = postgres::infer_schema(&spec)?;
            check_reserved(name, &data_schema)?;
            return Ok(FileSource {
                name: name.to_string(),
                files: vec![],
                format: InputFormat::Parquet,
                kind: Kind::Postgres(spec),
                config: config.clone(),
                data_schema,
                batch_size,
                ranges: Vec::new(),
            });
        }
        let pattern = config
            .path
            .as_deref()
            .ok_or_else(|| Error::source(name, "no `path` configured"))?;
        let files = files::resolve(name, pattern, base)?;
        let format = match config.format {
            Some(f) => f,
            None => InputFormat::from_path(&files[0]).ok_or_else(|| {
                Error::source(
                    name,
                    format!(
                        "cannot tell the format of {} from its extension; set `format` to one of `csv`, `ndjson`, `json`, `parquet`",
                        files[0].display()
                    ),
                )
            })?,
        };
        let data_schema = match format {
            InputFormat::Csv => {
                csv::infer_schema(name, &files, &config.csv, config.max_record_bytes)?
            }
            InputFormat::Ndjson | InputFormat::Json => {
                json::infer_schema(name, &files, format, config.max_record_bytes)?
            }
            InputFormat::Parquet => parquet::infer_schema(name, &files)?,
        };
        check_reserved(name, &data_schema)?;
        Ok(FileSource {
            name: name.to_string(),
            files,
            format,
            kind: Kind::Files,
            config: config.clone(),
            data_schema,
            batch_size,
            ranges: Vec::new(),
        })
    }

    /// A source over batches the caller holds in memory (see [`stream`]): read once, the
    /// mapper's sample buffered and replayed.
    pub fn from_stream(
        name: &str,
        source: stream::StreamSource,
        batch_size: usize,
    ) -> Result<FileSource> {
        let input = stream::StreamInput::try_new(name, source)?;
        let data_schema = input.data_schema();
        check_reserved(name, &data_schema)?;
        Ok(FileSource {
            name: name.to_string(),
            files: vec![],
            format: InputFormat::Parquet,
            kind: Kind::Stream(Arc::new(input)),
            config: crate::config::SourceConfig::bare(None),
            data_schema,
            batch_size,
            ranges: Vec::new(),
        })
    }

    /// A file source over the given files with a schema already known: one partition of a
    /// source on a cluster executor, which reads with the schema fixed on the client instead
    /// of inferring it again.
    pub fn for_files(
        name: &str,
        format: InputFormat,
        csv: crate::config::CsvOptions,
        data_schema: SchemaRef,
        files: Vec<(PathBuf, Option<Piece>)>,
        batch_size: usize,
    ) -> FileSource {
        let (files, ranges) = files.into_iter().unzip();
        FileSource {
            name: name.to_string(),
            files,
            ranges,
            format,
            kind: Kind::Files,
            config: SourceConfig {
                csv,
                ..SourceConfig::bare(Some(format))
            },
            data_schema,
            batch_size,
        }
    }

    /// The largest record read whole (`limits.max_record_bytes`); a cluster partition gets the
    /// client's value through its scan spec.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> FileSource {
        self.config.max_record_bytes = bytes;
        self
    }

    /// The piece of file `i` to read (on a cluster), or `None` for all of it.
    pub(crate) fn range(&self, i: usize) -> Option<Piece> {
        self.ranges.get(i).copied().flatten()
    }

    /// Whether the source reads files (not an HTTP API or a database).
    pub fn is_files(&self) -> bool {
        matches!(self.kind, Kind::Files)
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The resolved input files (none for an HTTP source).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Where the data comes from, for messages: the URL, or the file count.
    pub fn location(&self) -> String {
        match &self.kind {
            Kind::Http(h) => h.display(),
            Kind::Postgres(p) => p.display().to_string(),
            Kind::Stream(s) => format!("the in-memory stream `{}`", s.label()),
            Kind::Files => format!("{} file(s)", self.files.len()),
        }
    }

    /// The input format.
    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// The source's own columns, without provenance.
    pub fn data_schema(&self) -> SchemaRef {
        Arc::clone(&self.data_schema)
    }

    /// The schema of the batches this source yields: its columns, then provenance.
    pub fn schema(&self) -> SchemaRef {
        with_provenance(&self.data_schema)
    }

    /// Opens a blocking iterator over all batches.
    pub fn batches(&self) -> Result<BatchIter> {
        let schema = self.schema();
        if let Kind::Http(spec) = &self.kind {
            return Ok(BatchIter {
                inner: Box::new(http::HttpBatches::new(
                    Arc::clone(spec),
                    schema,
                    self.data_schema(),
                    self.batch_size,
                )),
                failed: false,
            });
        }
        if let Kind::Postgres(spec) = &self.kind {
            return Ok(BatchIter {
                inner: Box::new(postgres::PgBatches::new(
                    Arc::clone(spec),
                    schema,
                    self.data_schema(),
                    self.batch_size,
                )),
                failed: false,
            });
        }
        if let Kind::Stream(input) = &self.kind {
            return Ok(BatchIter {
                inner: Box::new(input.take(schema)?),
                failed: false,
            });
        }
        let inner: Box<dyn ReadBatch> = match self.format {
            InputFormat::Csv => Box::new(Files::<csv::OpenFile>::new(self.clone(), schema)),
            InputFormat::Ndjson | InputFormat::Json => {
                Box::new(Files::<json::JsonFile>::new(self.clone(), schema))
            }
            InputFormat::Parquet => {
                Box::new(Files::<parquet::ParquetFile>::new(self.clone(), schema))
            }
        };
        Ok(BatchIter {
            inner,
            failed: false,
        })
    }

    /// The first `n` rows (fewer if the source is shorter), read from the start.
    pub fn sample(&self, n: usize) -> Result<RecordBatch> {
        if let Kind::Stream(input) = &self.kind {
            return input.sample(n, &self.schema());
        }
        let mut batches = Vec::new();
        let mut rows = 0;
        for b in self.batches()? {
            // A file's read error after some rows (a truncated compressed file) leaves the
            // sample at what was read: the full pass then reads those rows again and reports
            // the error after them. An API or a database fails at once: asking it again for
            // the same pages would only repeat the failure.
            let file = !matches!(self.kind, Kind::Http(_) | Kind::Postgres(_));
            let b = match b {
                Ok(b) => b,
                Err(e) if rows == 0 || !file => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "The sample ends at a read error.");
                    break;
                }
            };
            rows += b.num_rows();
            batches.push(b);
            if rows >= n {
                break;
            }
        }
        let all = arrow::compute::concat_batches(&self.schema(), &batches)?;
        Ok(all.slice(0, n.min(all.num_rows())))
    }

    /// All batches dealt round-robin over `n` streams: batch `k` goes to stream `k % n`, so
    /// reading the streams in turn gives back the source's order. One blocking thread reads and
    /// parses; each stream holds at most `capacity` batches, so memory stays bounded.
    pub fn streams(&self, n: usize, capacity: usize) -> Result<Vec<SendableRecordBatchStream>> {
        let n = n.max(1);
        let iter = self.batches()?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| tokio::sync::mpsc::channel(capacity.max(1)))
            .unzip();
        tokio::task::spawn_blocking(move || {
            for (k, item) in iter.enumerate() {
                let item =
                    item.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)));
                if senders[k % n].blocking_send(item).is_err() {
                    break; // The consumer is gone (cancelled or failed): stop reading.
                }
            }
        });
        Ok(receivers
            .into_iter()
            .map(|rx| {
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream))
                    as SendableRecordBatchStream
            })
            .collect())
    }

    pub(crate) fn config(&self) -> &SourceConfig {
        &self.config
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// A piece of one file, read by one cluster partition: bytes `[start, end)` of an uncompressed
/// CSV file (starting at a record boundary), or row groups `[start, end)` of a Parquet file.
/// `first_row` is the number of its first record in the file (1-based, header not counted), so
/// provenance is the same as when the whole file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// What `start` and `end` count.
    pub unit: PieceUnit,
    /// First byte or row group.
    pub start: u64,
    /// One past the last byte or row group.
    pub end: u64,
    /// Number of the piece's first record in the file.
    pub first_row: u64,
}

/// The unit of a [`Piece`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceUnit {
    /// Bytes of a CSV file.
    Bytes,
    /// Row groups of a Parquet file.
    RowGroups,
}

/// Column names of the data may not collide with provenance columns.
fn check_reserved(name: &str, data_schema: &Schema) -> Result<()> {
    match data_schema
        .fields()
        .iter()
        .find(|f| PROVENANCE.contains(&f.name().as_str()))
    {
        Some(bad) => Err(Error::source(
            name,
            format!("column name `{}` is reserved for provenance", bad.name()),
        )),
        None => Ok(()),
    }
}

/// A blocking iterator over a source's batches.
pub struct BatchIter {
    inner: Box<dyn ReadBatch>,
    /// After an error the reader's position is unknown: stop rather than guess.
    failed: bool,
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.inner.read_batch().transpose();
        self.failed = matches!(r, Some(Err(_)));
        r
    }
}

/// Appends the provenance columns to a data schema.
pub fn with_provenance(data: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = data
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(FILE_COL, DataType::Utf8, false));
    fields.push(Field::new(ROW_COL, DataType::UInt64, false));
    fields.push(Field::new(ERROR_COL, DataType::Utf8, true));
    fields.push(Field::new(RAW_COL, DataType::Utf8, true));
    let data: Vec<Field> = fields[..data.fields().len()].to_vec();
    fields.push(Field::new(RECORD_COL, DataType::Struct(data.into()), false));
    Arc::new(Schema::new(fields))
}

/// Builds a batch from data columns plus provenance values.
pub(crate) fn assemble(
    schema: &SchemaRef,
    mut columns: Vec<ArrayRef>,
    file: &str,
    rows: Vec<u64>,
    errors: Vec<Option<String>>,
    raw: Vec<Option<String>>,
) -> Result<RecordBatch> {
    let n = rows.len();
    // The struct shares the data columns' buffers.
    let record: ArrayRef = match schema.field_with_name(RECORD_COL)?.data_type() {
        DataType::Struct(fields) if fields.is_empty() => {
            Arc::new(StructArray::new_empty_fields(n, None))
        }
        DataType::Struct(fields) => {
            Arc::new(StructArray::try_new(fields.clone(), columns.clone(), None)?)
        }
        other => {
            return Err(Error::Internal(format!(
                "the record column has type {other}"
            )));
        }
    };
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(file, n),
    )));
    columns.push(Arc::new(UInt64Array::from(rows)));
    columns.push(Arc::new(StringArray::from(errors)));
    columns.push(Arc::new(StringArray::from(raw)));
    columns.push(record);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// One reader of a source format: the next batch, `None` at the end.
pub(crate) trait ReadBatch: Send {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>>;
}
