//! Delta Lake output: a source's valid rows go to the table `NAME_valid` and its invalid rows
//! to `NAME_invalid`, each committed once per run.
//!
//! The data files are written by conform's own Parquet writer, streaming and bounded like the
//! `parquet` output, under names that carry the run id and a random tag of the writer
//! (`part-PPPPP-SSSSS-RUN-TAG.zstd.parquet`), so no two runs, no two attempts of a run and no two
//! partitions of a cluster run share a file. Nothing references a file
//! until the commit: a run that stops before it leaves the table at its previous version, and
//! the files it wrote are removed (a killed process leaves them unreferenced, for Delta's own
//! vacuum). The transaction log, the schema contract and the commit come from delta-rs.
//!
//! A commit carries an application transaction (`txn`) whose app id names the run, so a run
//! retried with the same run id (`--run-id`) finds its commit and does not add its rows twice.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake_core::logstore::{LogStoreRef, StorageConfig};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::config::{DeltaMode, DeltaOptions, DeltaSchemaMode, ParquetOptions};
use crate::error::{Error, Result};
use crate::fs::AtomicFile;
use crate::validate::report::InvalidRow;

/// Data files of one partition value set open at once at most: each holds up to a row group
/// in memory. Beyond it, the least recently written file is completed (a partition then has
/// several files, which Delta allows).
const MAX_OPEN_FILES: usize = 16;

/// Strings longer than this get no min/max statistics (a cut string is no upper bound).
const MAX_STAT_STRING: usize = 32;

/// Per run settings every writer of a source's tables shares (also sent to cluster executors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaWrite {
    /// The run id, in every data file's name and in the commit.
    pub run_id: String,
    /// Partition columns of the valid table.
    pub partition_by: Vec<String>,
}

/// A data file written and not yet committed: what its `add` action needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    /// Path relative to the table's root (delta-rs URI-encodes it in the log).
    pub path: String,
    /// The file's full path or URL (to remove it if the run fails).
    pub location: String,
    /// Bytes.
    pub size: i64,
    /// Partition column → value (as Delta serialises it; null for a null value).
    pub partition_values: BTreeMap<String, Option<String>>,
    /// Rows.
    pub rows: u64,
    /// Delta's per-file statistics (JSON): row count, null counts, min and max where exact.
    pub stats: String,
}

/// The files a run wrote for its two tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeltaFiles {
    /// Files of the valid table.
    pub valid: Vec<DataFile>,
    /// Files of the invalid table.
    pub invalid: Vec<DataFile>,
}

impl DeltaFiles {
    /// Removes every file (a failed run's); errors are logged, not returned: the files are
    /// unreferenced either way.
    pub fn remove(&self) {
        for f in self.valid.iter().chain(&self.invalid) {
            if let Err(e) = crate::store::remove("output directory", Path::new(&f.location)) {
                tracing::warn!(file = %f.location, error = %e, "Could not remove an uncommitted data file.");
            }
        }
    }
}

/// The Arrow schema of the invalid-rows table: the same fields as the NDJSON output, with the
/// record as JSON text.
pub fn invalid_schema() -> SchemaRef {
    let error = crate::RowError::arrow_fields();
    Arc::new(Schema::new(vec![
        Field::new("source_file", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
        Field::new(
            "errors",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(error.clone()),
                false,
            ))),
            false,
        ),
    ]))
}

/// Invalid rows as a batch of [`invalid_schema`].
fn invalid_batch(rows: &[InvalidRow]) -> Result<RecordBatch> {
    let schema = invalid_schema();
    let DataType::List(item) = schema.field(4).data_type() else {
        unreachable!("errors is a list")
    };
    let DataType::Struct(error_fields) = item.data_type() else {
        unreachable!("an error is a struct")
    };
    let mut errors = ListBuilder::new(StructBuilder::from_fields(error_fields.clone(), rows.len()))
        .with_field(Arc::clone(item));
    for r in rows {
        let s = errors.values();
        for e in &r.errors {
            s.field_builder::<StringBuilder>(0)
                .expect("field is a string")
                .append_option(e.field.as_deref());
            s.field_builder::<StringBuilder>(1)
                .expect("rule is a string")
                .append_value(&e.rule);
            s.field_builder::<StringBuilder>(2)
                .expect("message is a string")
                .append_value(&e.message);
            s.append(true);
        }
        errors.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.source_file.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter()
                .map(|r| i64::try_from(r.row).unwrap_or(i64::MAX)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.record.json.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.raw.as_deref()),
        )),
        Arc::new(errors.finish()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A byte-counting writer: a data file's size for its `add` action without asking the store.
struct Counted {
    file: AtomicFile,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One data file being written.
struct OpenFile {
    key: Vec<Option<String>>,
    writer: ArrowWriter<Counted>,
    relative: String,
    location: PathBuf,
    stats: Stats,
    last_used: u64,
}

/// Exact statistics of one data file's top-level columns.
struct Stats {
    rows: u64,
    nulls: Vec<Option<i64>>,
    min: Vec<Option<serde_json::Value>>,
    max: Vec<Option<serde_json::Value>>,
    /// Whether min/max are still exact for the column (false once a value could not be
    /// compared, e.g. a long string).
    bounded: Vec<bool>,
}

impl Stats {
    fn new(schema: &Schema) -> Stats {
        let n = schema.fields().len();
        let bounded = schema
            .fields()
            .iter()
            .map(|f| {
                matches!(
                    f.data_type(),
                    DataType::Int64 | DataType::Date32 | DataType::Utf8
                )
            })
            .collect();
        Stats {
            rows: 0,
            nulls: schema
                .fields()
                .iter()
                .map(|f| f.data_type().is_primitive() || *f.data_type() == DataType::Utf8)
                .map(|counted| counted.then_some(0))
                .collect(),
            min: vec![None; n],
            max: vec![None; n],
            bounded,
        }
    }

    fn update(&mut self, batch: &RecordBatch) {
        use serde_json::Value;
        self.rows += batch.num_rows() as u64;
        for (i, col) in batch.columns().iter().enumerate() {
            if let Some(n) = &mut self.nulls[i] {
                *n += col.null_count() as i64;
            }
            if !self.bounded[i] {
                continue;
            }
            let (lo, hi): (Option<Value>, Option<Value>) = match col.data_type() {
                DataType::Int64 => {
                    let a = col.as_primitive::<Int64Type>();
                    (
                        arrow::compute::min(a).map(Value::from),
                        arrow::compute::max(a).map(Value::from),
                    )
                }
                DataType::Date32 => {
                    let a = col.as_primitive::<Date32Type>();
                    let day = |d: i32| {
                        arrow::temporal_conversions::date32_to_datetime(d)
                            .map(|t| Value::from(t.format("%Y-%m-%d").to_string()))
                    };
                    (
                        arrow::compute::min(a).and_then(day),
                        arrow::compute::max(a).and_then(day),
                    )
                }
                DataType::Utf8 => {
                    let a = col.as_string::<i32>();
                    if a.iter().flatten().any(|s| s.len() > MAX_STAT_STRING) {
                        self.bounded[i] = false;
                        self.min[i] = None;
                        self.max[i] = None;
                        continue;
                    }
                    (
                        arrow::compute::min_string(a).map(Value::from),
                        arrow::compute::max_string(a).map(Value::from),
                    )
                }
                _ => (None, None),
            };
            let better = |old: &Option<Value>, new: &Value, less: bool| match old {
                None => true,
                Some(o) => {
                    let ord = match (o, new) {
                        (Value::Number(a), Value::Number(b)) => a.as_i64().cmp(&b.as_i64()),
                        (Value::String(a), Value::String(b)) => a.cmp(b),
                        _ => std::cmp::Ordering::Equal,
                    };
                    if less {
                        ord == std::cmp::Ordering::Greater
                    } else {
                        ord == std::cmp::Ordering::Less
                    }
                }
            };
            if let Some(v) = lo
                && better(&self.min[i], &v, true)
            {
                self.min[i] = Some(v);
            }
            if let Some(v) = hi
                && better(&self.max[i], &v, false)
            {
                self.max[i] = Some(v);
            }
        }
    }

    fn to_json(&self, schema: &Schema) -> String {
        let mut nulls = serde_json::Map::new();
        let mut min = serde_json::Map::new();
        let mut max = serde_json::Map::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if let Some(n) = self.nulls[i] {
                nulls.insert(f.name().clone(), n.into());
            }
            if self.bounded[i] {
                if let Some(v) = &self.min[i] {
                    min.insert(f.name().clone(), v.clone());
                }
                if let Some(v) = &self.max[i] {
                    max.insert(f.name().clone(), v.clone());
                }
            }
        }
        serde_json::json!({
            "numRecords": self.rows,
            "minValues": min,
            "maxValues": max,
            "nullCount": nulls,
        })
        .to_string()
    }
}

/// Writes one table's data files: streaming, split by the partition columns' values, at
/// most [`MAX_OPEN_FILES`] open. Blocking (a writer thread, an executor's task).
pub struct TableWriter {
    dir: PathBuf,
    /// Columns of the data files (the table's without its partition columns).
    file_schema: SchemaRef,
    partition_columns: Vec<(usize, String)>,
    kept: Vec<usize>,
    stem: String,
    run_id: String,
    nonce: String,
    props: WriterProperties,
    open: Vec<OpenFile>,
    done: Vec<DataFile>,
    files_made: u32,
    tick: u64,
    finished: bool,
}

impl TableWriter {
    /// A writer of data files for the table at `dir` whose rows have `schema`; `part` tells
    /// apart the writers of one run (a cluster partition's number; 0 locally).
    pub fn try_new(
        dir: &Path,
        schema: &SchemaRef,
        partition_by: &[String],
        part: u32,
        write: &DeltaWrite,
        parquet: &ParquetOptions,
    ) -> Result<TableWriter> {
        let mut partition_columns = Vec::new();
        for name in partition_by {
            let i = schema.index_of(name).map_err(|_| {
                Error::config(
                    "delta.partition_by",
                    format!("`{name}` is not a field of the output"),
                )
            })?;
            partition_columns.push((i, name.clone()));
        }
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_columns.iter().any(|(p, _)| p == i))
            .collect();
        let file_schema = Arc::new(schema.project(&kept)?);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(parquet.zstd_level)?))
            .set_max_row_group_row_count(Some(parquet.row_group_size))
            .build();
        Ok(TableWriter {
            dir: dir.to_path_buf(),
            file_schema,
            partition_columns,
            kept,
            stem: format!("part-{part:05}"),
            props,
            open: Vec::new(),
            done: Vec::new(),
            files_made: 0,
            tick: 0,
            finished: false,
            run_id: write.run_id.clone(),
            nonce: {
                let mut bytes = [0u8; 4];
                // Without randomness, the time of day still tells attempts apart.
                if getrandom::fill(&mut bytes).is_err() {
                    bytes = chrono::Utc::now().timestamp_subsec_nanos().to_be_bytes();
                }
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            },
        })
    }

    /// Appends a batch's rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.partition_columns.is_empty() {
            return self.write_to(Vec::new(), batch.clone());
        }
        // Partition values as Delta serialises them: the value cast to text.
        let keys: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|(i, _)| arrow::compute::cast(batch.column(*i), &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        // Rows grouped by their keys' row-format bytes: one allocation per group, not per row.
        let converter = arrow::row::RowConverter::new(
            keys.iter()
                .map(|_| arrow::row::SortField::new(DataType::Utf8))
                .collect(),
        )?;
        let encoded = converter.convert_columns(&keys)?;
        let mut groups: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        for (row, key) in encoded.iter().enumerate() {
            let g = *index.entry(key.data()).or_insert_with(|| {
                groups.push((row, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(row as u32);
        }
        for (first, rows) in groups {
            // The group's key as Delta serialises it, read from its first row.
            let key: Vec<Option<String>> = keys
                .iter()
                .map(|k| {
                    let k = k.as_string::<i32>();
                    k.is_valid(first).then(|| k.value(first).to_string())
                })
                .collect();
            let rows = UInt32Array::from(rows);
            let taken = arrow::compute::take_record_batch(batch, &rows)?;
            self.write_to(key, taken)?;
        }
        Ok(())
    }

    fn write_to(&mut self, key: Vec<Option<String>>, batch: RecordBatch) -> Result<()> {
        let batch = batch.project(&self.kept)?;
        self.tick += 1;
        let at = match self.open.iter().position(|f| f.key == key) {
            Some(i) => i,
            None => {
                if self.open.len() >= MAX_OPEN_FILES {
                    let oldest = (0..self.open.len())
                        .min_by_key(|&i| self.open[i].last_used)
                        .expect("files are open");
                    let file = self.open.swap_remove(oldest);
                    self.close(file)?;
                }
                let file = self.open_file(key)?;
                self.open.push(file);
                self.open.len() - 1
            }
        };
        let file = &mut self.open[at];
        file.last_used = self.tick;
        file.stats.update(&batch);
        let location = file.location.clone();
        file.writer
            .write(&batch)
            .map_err(|e| crate::sink::write_error(&location, e.into()))
    }

    fn open_file(&mut self, key: Vec<Option<String>>) -> Result<OpenFile> {
        self.files_made += 1;
        // Unique per run (run id), per writer of the run (cluster partition), per attempt of
        // the run (a retry of a run id must not overwrite the files its first attempt
        // committed) and per file.
        let name = format!(
            "{}-{:05}-{}-{}.zstd.parquet",
            self.stem, self.files_made, self.run_id, self.nonce
        );
        // Hive-style directories, the layout every Delta reader expects: `col=value/`.
        let mut dirs: Vec<String> = Vec::new();
        for ((_, col), value) in self.partition_columns.iter().zip(&key) {
            let v = match value {
                Some(v) => escape_partition(v),
                None => "__HIVE_DEFAULT_PARTITION__".to_string(),
            };
            dirs.push(format!("{col}={v}"));
        }
        dirs.push(name);
        let on_disk = dirs.join("/");
        let mut location = self.dir.clone();
        for part in &dirs {
            location = location.join(part);
        }
        let file = AtomicFile::create(&location)?;
        let writer = ArrowWriter::try_new(
            Counted { file, bytes: 0 },
            Arc::clone(&self.file_schema),
            Some(self.props.clone()),
        )?;
        Ok(OpenFile {
            key,
            writer,
            relative: on_disk,
            location,
            stats: Stats::new(&self.file_schema),
            last_used: self.tick,
        })
    }

    fn close(&mut self, file: OpenFile) -> Result<()> {
        let location = file.location;
        let counted = file
            .writer
            .into_inner()
            .map_err(|e| crate::sink::write_error(&location, e.into()))?;
        let size = counted.bytes as i64;
        counted.file.commit()?;
        let partition_values = self
            .partition_columns
            .iter()
            .map(|(_, c)| c.clone())
            .zip(file.key)
            .collect();
        self.done.push(DataFile {
            path: file.relative,
            location: location.display().to_string(),
            size,
            partition_values,
            rows: file.stats.rows,
            stats: file.stats.to_json(&self.file_schema),
        });
        Ok(())
    }

    /// Completes every open file; the files written, none yet referenced by the table.
    pub fn finish(mut self) -> Result<Vec<DataFile>> {
        while let Some(file) = self.open.pop() {
            self.close(file)?;
        }
        self.finished = true;
        Ok(std::mem::take(&mut self.done))
    }
}

impl Drop for TableWriter {
    /// Unfinished (an error, Ctrl-C): the files it completed are removed; its open files
    /// are removed by their own `Drop`.
    fn drop(&mut self) {
        if !self.finished {
            DeltaFiles {
                valid: std::mem::take(&mut self.done),
                invalid: Vec::new(),
            }
            .remove();
        }
    }
}

/// A partition value as a directory name: characters other than letters, digits, `_`, `-`
/// and `.` as `%XX` (Hive's escaping, which Delta readers undo).
fn escape_partition(v: &str) -> String {
    if v.is_empty() {
        return "__HIVE_DEFAULT_PARTITION__".into();
    }
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The two tables of one split stream (a local source, or one cluster partition).
pub struct DeltaSplit {
    valid: TableWriter,
    invalid: TableWriter,
}

impl DeltaSplit {
    /// Writers for the tables at `valid_dir` and `invalid_dir`.
    pub fn try_new(
        valid_dir: &Path,
        invalid_dir: &Path,
        valid_schema: &SchemaRef,
        part: u32,
        write: &DeltaWrite,
        parquet: &ParquetOptions,
    ) -> Result<DeltaSplit> {
        Ok(DeltaSplit {
            valid: TableWriter::try_new(
                valid_dir,
                valid_schema,
                &write.partition_by,
                part,
                write,
                parquet,
            )?,
            invalid: TableWriter::try_new(
                invalid_dir,
                &invalid_schema(),
                &[],
                part,
                write,
                parquet,
            )?,
        })
    }

    /// Appends one split batch.
    pub fn write(&mut self, valid: &RecordBatch, invalid: &[InvalidRow]) -> Result<()> {
        self.valid.write(valid)?;
        if !invalid.is_empty() {
            self.invalid.write(&invalid_batch(invalid)?)?;
        }
        Ok(())
    }

    /// Completes every file.
    pub fn finish(self) -> Result<DeltaFiles> {
        let valid = self.valid.finish()?;
        let invalid = self.invalid.finish()?;
        Ok(DeltaFiles { valid, invalid })
    }
}

/// What one commit records about the run, beside Delta's own commit info (under `conform`).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// The run id.
    pub run_id: String,
    /// The source.
    pub source: String,
    /// `valid` or `invalid`.
    pub table: &'static str,
    /// Fingerprint of the source's columns the mapping was made for.
    pub mapping_fingerprint: Option<String>,
    /// Which mapper made the mapping.
    pub mapper: Option<String>,
    /// Rows read, valid and invalid.
    pub rows_read: u64,
    /// Valid rows.
    pub valid: u64,
    /// Invalid rows.
    pub invalid: u64,
    /// conform's version.
    pub conform_version: &'static str,
}

/// The outcome of one table's commit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Committed {
    /// The table version holding the run's rows.
    pub version: u64,
    /// Whether an earlier attempt of the same run had committed already (nothing was added).
    pub already: bool,
}

/// The table at `dir` (a local directory or a store URL), created empty in the log's sense
/// if missing (nothing is written until a commit).
async fn open_table(who: &str, dir: &Path) -> Result<(DeltaTable, LogStoreRef)> {
    let fail = |e: DeltaTableError| table_error(who, dir, e);
    let log_store = if crate::store::is_remote(dir) {
        let text = format!("{}/", dir.display().to_string().trim_end_matches('/'));
        let url = url::Url::parse(&text)
            .map_err(|e| Error::source(who, format!("{text} is not a valid URL: {e}")))?;
        let (root, key) = crate::store::Object::at(who, dir)?.parts();
        let prefixed: deltalake_core::logstore::ObjectStoreRef = Arc::new(
            object_store::prefix::PrefixStore::new(Arc::clone(&root), key),
        );
        deltalake_core::logstore::default_logstore(prefixed, root, &url, &StorageConfig::default())
    } else {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| Error::io("reading", dir, e))?;
        let url = url::Url::from_directory_path(&abs)
            .map_err(|_| Error::source(who, format!("{} is not a usable path", dir.display())))?;
        deltalake_core::logstore::logstore_for(&url, StorageConfig::default()).map_err(fail)?
    };
    let mut table = DeltaTable::new(log_store.clone());
    // A new table is told apart by its empty log before loading: loading a missing table
    // makes delta-rs log an error line of its own, which would read as a failure.
    if !log_store.is_delta_table_location().await.map_err(fail)? {
        return Ok((table, log_store));
    }
    match table.load().await {
        Ok(()) => {}
        Err(DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(fail(e)),
    }
    Ok((table, log_store))
}

fn table_error(who: &str, dir: &Path, e: DeltaTableError) -> Error {
    Error::source(who, format!("Delta table {}: {e}", dir.display()))
}

/// The table's schema after this run's commit, or why the run may not write to it: the
/// schema contract between the internal schema (`ours`) and an existing table.
fn contract(
    table: &StructType,
    table_partitions: &[String],
    ours: &StructType,
    options: &DeltaOptions,
    partition_by: &[String],
) -> std::result::Result<Option<StructType>, String> {
    if table_partitions != partition_by {
        return Err(format!(
            "the table is partitioned by [{}] and `delta.partition_by` is [{}]; a table's partition columns are fixed when it is created",
            table_partitions.join(", "),
            partition_by.join(", ")
        ));
    }
    let mut added = Vec::new();
    for f in ours.fields() {
        match table.field(f.name()) {
            Some(t) if t.data_type() != f.data_type() => {
                return Err(format!(
                    "field `{}` is {} in the table and {} in the internal schema; a type change needs a new table",
                    f.name(),
                    t.data_type(),
                    f.data_type()
                ));
            }
            Some(t) if !t.is_nullable() && f.is_nullable() => {
                return Err(format!(
                    "field `{}` is required in the table and optional in the internal schema",
                    f.name()
                ));
            }
            Some(_) => {}
            None if options.schema == DeltaSchemaMode::Freeze => {
                return Err(format!(
                    "field `{}` is not in the table and `delta.schema` is `freeze`",
                    f.name()
                ));
            }
            None if !f.is_nullable() => {
                return Err(format!(
                    "field `{}` is new and required; the table's earlier rows have no value for it (make it optional to add it)",
                    f.name()
                ));
            }
            None => added.push(f.clone()),
        }
    }
    for t in table.fields() {
        if ours.field(t.name()).is_some() {
            continue;
        }
        if !t.is_nullable() {
            return Err(format!(
                "field `{}` is required in the table and no longer in the internal schema",
                t.name()
            ));
        }
        if options.schema == DeltaSchemaMode::Freeze {
            return Err(format!(
                "field `{}` of the table is not in the internal schema and `delta.schema` is `freeze`",
                t.name()
            ));
        }
    }
    if added.is_empty() {
        return Ok(None);
    }
    let fields = table.fields().cloned().chain(added);
    StructType::try_new(fields)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// One table of a source: where it is and the rows' schema.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The source (for messages).
    pub source: String,
    /// The table's directory.
    pub dir: PathBuf,
    /// The rows' Arrow schema.
    pub schema: SchemaRef,
    /// Partition columns.
    pub partition_by: Vec<String>,
    /// Mode and schema contract.
    pub options: DeltaOptions,
}

impl TableSpec {
    fn kernel_schema(&self) -> Result<StructType> {
        self.schema.as_ref().try_into_kernel().map_err(|e| {
            Error::source(
                &self.source,
                format!("the output schema has no Delta equivalent: {e}"),
            )
        })
    }

    /// Checks the schema contract against the table as it is now, before any data is
    /// written: a source that cannot commit fails without writing.
    pub async fn check(&self) -> Result<()> {
        let spec = self.clone();
        crate::store::on_io(async move {
            let (table, _) = open_table(&spec.source, &spec.dir).await?;
            spec.contract_with(&table).map(|_| ())
        })
        .await
    }

    fn contract_with(&self, table: &DeltaTable) -> Result<Option<StructType>> {
        let Ok(state) = table.snapshot() else {
            return Ok(None);
        };
        let ours = self.kernel_schema()?;
        contract(
            &state.schema(),
            state.metadata().partition_columns(),
            &ours,
            &self.options,
            &self.partition_by,
        )
        .map_err(|m| {
            Error::source(
                &self.source,
                format!(
                    "cannot write to the Delta table {}: {m}",
                    self.dir.display()
                ),
            )
        })
    }

    /// Commits `files` as one version of the table (creating it on the first run), with
    /// `info` in the commit. A run id already committed adds nothing.
    pub async fn commit(&self, files: Vec<DataFile>, info: RunInfo) -> Result<Committed> {
        let spec = self.clone();
        crate::store::on_io(async move { spec.commit_inner(files, info).await }).await
    }

    async fn commit_inner(&self, files: Vec<DataFile>, info: RunInfo) -> Result<Committed> {
        let app_id = format!("conform-{}", info.run_id);
        let now = chrono::Utc::now().timestamp_millis();
        let adds: Vec<Action> = files
            .iter()
            .map(|f| {
                Action::Add(Add {
                    path: f.path.clone(),
                    partition_values: f
                        .partition_values
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    size: f.size,
                    modification_time: now,
                    data_change: true,
                    stats: Some(f.stats.clone()),
                    ..Default::default()
                })
            })
            .collect();
        let info_value = serde_json::to_value(&info).unwrap_or_default();
        let properties = || {
            CommitProperties::default()
                .with_metadata([("conform".to_string(), info_value.clone())])
                .with_application_transaction(Transaction::new_with_last_update(
                    &app_id,
                    1,
                    Some(now),
                ))
        };
        let fail = |e: DeltaTableError| table_error(&self.source, &self.dir, e);
        // Two attempts: a table another run created between our load and our commit is
        // loaded again and written to as an existing table.
        for attempt in 0..2 {
            let (table, log_store) = open_table(&self.source, &self.dir).await?;
            let evolved = self.contract_with(&table)?;
            let Ok(state) = table.snapshot() else {
                let create = deltalake_core::operations::create::CreateBuilder::new()
                    .with_log_store(log_store)
                    .with_columns(self.kernel_schema()?.fields().cloned())
                    .with_partition_columns(self.partition_by.clone())
                    .with_save_mode(SaveMode::ErrorIfExists)
                    .with_actions(adds.clone())
                    .with_commit_properties(properties())
                    .await;
                match create {
                    Ok(t) => {
                        return Ok(Committed {
                            version: t.version().unwrap_or(0),
                            already: false,
                        });
                    }
                    Err(_) if attempt == 0 => continue,
                    Err(e) => return Err(fail(e)),
                }
            };
            if let Some(version) = state
                .snapshot()
                .transaction_version(log_store.as_ref(), &app_id)
                .await
                .map_err(fail)?
                && version >= 1
            {
                return Ok(Committed {
                    version: state.version(),
                    already: true,
                });
            }
            let mut actions = Vec::new();
            if let Some(schema) = evolved {
                actions.push(Action::Metadata(
                    state
                        .metadata()
                        .clone()
                        .with_schema(&schema)
                        .map_err(|e| fail(e.into()))?,
                ));
            }
            let mode = match self.options.mode {
                DeltaMode::Append => SaveMode::Append,
                DeltaMode::Overwrite => {
                    let removes: Vec<Action> = state
                        .snapshot()
                        .file_views(log_store.as_ref(), None)
                        .map_ok(|f| f.remove_action(true).into())
                        .try_collect()
                        .await
                        .map_err(fail)?;
                    actions.extend(removes);
                    SaveMode::Overwrite
                }
            };
            actions.extend(adds.clone());
            let operation = DeltaOperation::Write {
                mode,
                partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
                predicate: None,
            };
            let done = CommitBuilder::from(properties())
                .with_actions(actions)
                .build(Some(state), log_store.clone(), operation)
                .await
                .map_err(fail)?;
            return Ok(Committed {
                version: done.version(),
                already: false,
            });
        }
        unreachable!("the second attempt returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake_core::kernel::{DataType as K, StructField};

    fn st(fields: Vec<StructField>) -> StructType {
        StructType::try_new(fields).unwrap()
    }

    #[test]
    fn the_schema_contract_names_the_field() {
        let table = st(vec![
            StructField::new("id", K::LONG, false),
            StructField::new("name", K::STRING, true),
        ]);
        let evolve = DeltaOptions::default();
        let freeze = DeltaOptions {
            schema: DeltaSchemaMode::Freeze,
            ..DeltaOptions::default()
        };
        // The same schema: nothing to do.
        assert_eq!(contract(&table, &[], &table, &evolve, &[]), Ok(None));
        // A new optional field: evolved under `evolve`, refused under `freeze`.
        let wider = st(vec![
            StructField::new("id", K::LONG, false),
            StructField::new("name", K::STRING, true),
            StructField::new("email", K::STRING, true),
        ]);
        let evolved = contract(&table, &[], &wider, &evolve, &[])
            .unwrap()
            .unwrap();
        assert_eq!(evolved.fields().count(), 3);
        let e = contract(&table, &[], &wider, &freeze, &[]).unwrap_err();
        assert!(e.contains("`email`") && e.contains("freeze"), "{e}");
        // A changed type.
        let retyped = st(vec![
            StructField::new("id", K::STRING, false),
            StructField::new("name", K::STRING, true),
        ]);
        let e = contract(&table, &[], &retyped, &evolve, &[]).unwrap_err();
        assert!(e.contains("`id`") && e.contains("type"), "{e}");
        // A required field removed.
        let fewer = st(vec![StructField::new("name", K::STRING, true)]);
        let e = contract(&table, &[], &fewer, &evolve, &[]).unwrap_err();
        assert!(e.contains("`id`") && e.contains("required"), "{e}");
        // An optional field removed: its column reads as null.
        let fewer = st(vec![StructField::new("id", K::LONG, false)]);
        assert_eq!(contract(&table, &[], &fewer, &evolve, &[]), Ok(None));
        // A new required field.
        let required = st(vec![
            StructField::new("id", K::LONG, false),
            StructField::new("name", K::STRING, true),
            StructField::new("score", K::LONG, false),
        ]);
        let e = contract(&table, &[], &required, &evolve, &[]).unwrap_err();
        assert!(e.contains("`score`") && e.contains("required"), "{e}");
        // Other partition columns.
        let e = contract(&table, &[], &table, &evolve, &["name".into()]).unwrap_err();
        assert!(e.contains("partition"), "{e}");
    }

    #[test]
    fn partition_values_become_safe_directory_names() {
        assert_eq!(escape_partition("2024-01-02"), "2024-01-02");
        assert_eq!(escape_partition("a b/c=d"), "a%20b%2Fc%3Dd");
        assert_eq!(escape_partition(""), "__HIVE_DEFAULT_PARTITION__");
    }

    #[test]
    fn statistics_are_exact_or_absent() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(5), None, Some(-2)])),
                Arc::new(StringArray::from(vec![Some("b"), Some("a"), None])),
                Arc::new(arrow::array::Float64Array::from(vec![1.0, 2.0, 3.0])),
            ],
        )
        .unwrap();
        let mut stats = Stats::new(&schema);
        stats.update(&batch);
        let long = "z".repeat(MAX_STAT_STRING + 1);
        let second = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(9)])),
                Arc::new(StringArray::from(vec![Some(long.as_str())])),
                Arc::new(arrow::array::Float64Array::from(vec![0.5])),
            ],
        )
        .unwrap();
        stats.update(&second);
        let v: serde_json::Value = serde_json::from_str(&stats.to_json(&schema)).unwrap();
        assert_eq!(v["numRecords"], 4);
        assert_eq!(v["minValues"]["n"], -2);
        assert_eq!(v["maxValues"]["n"], 9);
        assert_eq!(v["nullCount"]["n"], 1);
        // A string too long to bound, and floats, get no min/max.
        assert!(v["minValues"].get("s").is_none() && v["maxValues"].get("x").is_none());
        assert_eq!(v["nullCount"]["s"], 1);
    }
}
