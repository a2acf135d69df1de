//! conform's two plan nodes for a cluster: the scan of a source's files (one partition per
//! file) and the sink that splits each partition's rows and writes its part files. Both are
//! described by a serialisable spec, which is all that travels to an executor.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{decode_schema, encode_schema, external};
use crate::config::{CsvOptions, InputFormat, OutputFormat, ParquetOptions};
use crate::error::{Error, Result};
use crate::mapping::MappingDocument;
use crate::plan::Layout;
use crate::schema::TargetSchema;
use crate::sink::SplitWriter;
use crate::source::csv::split as csv_split;
use crate::source::json::split as json_split;
use crate::source::parquet::split as parquet_split;
use crate::source::{FileSource, with_provenance};
use crate::source::{Piece, PieceUnit};
use crate::split::split;
use crate::validate::report::{ErrorCounts, count_errors};
use crate::validate::{Check, Validator};

type DfResult<T> = datafusion::error::Result<T>;

/// What an executor needs to read a source's files (the same for every partition).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanSpec {
    /// Source name.
    pub source: String,
    /// Input format.
    pub format: InputFormat,
    /// CSV options.
    pub csv: CsvOptions,
    /// Rows per batch.
    pub batch_size: usize,
    /// The source's columns (without provenance), as fixed on the client.
    pub data_schema: Vec<u8>,
    /// `limits.max_record_bytes` of the client's config.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    crate::limits::DEFAULT_MAX_RECORD_BYTES
}

impl ScanSpec {
    /// The spec of a file source.
    pub fn new(source: &FileSource) -> Result<ScanSpec> {
        if !source.is_files() {
            return Err(Error::source(
                source.name(),
                "only file sources run on a cluster",
            ));
        }
        Ok(ScanSpec {
            source: source.name().to_string(),
            format: source.format(),
            csv: source.config().csv.clone(),
            batch_size: source.batch_size(),
            data_schema: encode_schema(&source.data_schema())?,
            max_record_bytes: source.config().max_record_bytes,
        })
    }
}

/// What one partition reads: a file, or a piece of one.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    /// The partition's number in the whole job (names its part files).
    pub part: u32,
    /// The file's path (the same on every executor).
    pub path: String,
    /// The piece of it (bytes of a CSV file, row groups of a Parquet file); `None` = the whole
    /// file.
    pub range: Option<Piece>,
}

/// The partitions of a file source: one per file, and uncompressed CSV files larger than
/// `split_bytes` cut into pieces of about that size at record boundaries (their records keep
/// their numbers in the file).
pub fn work_list(source: &FileSource, split_bytes: u64) -> Result<Vec<WorkItem>> {
    let mut out = Vec::new();
    for f in source.files() {
        let pieces = match source.format() {
            InputFormat::Csv => csv_split(f, &source.config().csv, split_bytes)?,
            InputFormat::Parquet => parquet_split(f, split_bytes)?,
            InputFormat::Ndjson => json_split(f, InputFormat::Ndjson, split_bytes)?,
            InputFormat::Json => None,
        };
        let path = f.display().to_string();
        match pieces {
            Some(ranges) => {
                for r in ranges {
                    out.push((path.clone(), Some(r)));
                }
            }
            None => out.push((path, None)),
        }
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, (path, range))| WorkItem {
            part: i as u32,
            path,
            range,
        })
        .collect())
}

fn work_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("row_groups", DataType::Boolean, true),
        Field::new("path", DataType::Utf8, false),
        Field::new("start", DataType::UInt64, true),
        Field::new("end", DataType::UInt64, true),
        Field::new("first_row", DataType::UInt64, true),
    ]))
}

/// The work list as an in-memory table with one partition per item. Ballista's scheduler
/// restricts an in-memory leaf to the partitions of each task, so a task's plan holds only its
/// own items; [`ScanExec`] reads them from whatever child it is given.
pub fn work_exec(items: &[WorkItem]) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = items
        .iter()
        .map(|w| {
            RecordBatch::try_new(
                work_schema(),
                vec![
                    Arc::new(UInt32Array::from(vec![w.part])),
                    Arc::new(BooleanArray::from(vec![
                        w.range.map(|r| r.unit == PieceUnit::RowGroups),
                    ])),
                    Arc::new(StringArray::from(vec![w.path.as_str()])),
                    Arc::new(UInt64Array::from(vec![w.range.map(|r| r.start)])),
                    Arc::new(UInt64Array::from(vec![w.range.map(|r| r.end)])),
                    Arc::new(UInt64Array::from(vec![w.range.map(|r| r.first_row)])),
                ],
            )
            .map(|b| vec![b])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MemorySourceConfig::try_new_exec(
        &partitions,
        work_schema(),
        None,
    )?)
}

/// The work items of an in-memory work list, one per partition.
fn items_of(plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<WorkItem>> {
    let internal = |m: &str| Error::Internal(format!("cluster: {m}"));
    let exec = (plan.as_ref() as &dyn std::any::Any)
        .downcast_ref::<DataSourceExec>()
        .ok_or_else(|| internal("the scan's input is not a work list"))?;
    let mem = (exec.data_source().as_ref() as &dyn std::any::Any)
        .downcast_ref::<MemorySourceConfig>()
        .ok_or_else(|| internal("the scan's input is not an in-memory work list"))?;
    let mut items = Vec::new();
    for batches in mem.partitions() {
        let mut item = None;
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let col = |n: &str| {
                b.column_by_name(n)
                    .ok_or_else(|| internal("work list column"))
            };
            let part = col("part")?.as_primitive::<UInt32Type>().value(0);
            let path = col("path")?.as_string::<i32>().value(0).to_string();
            let (start, end, first) = (
                col("start")?.as_primitive::<UInt64Type>(),
                col("end")?.as_primitive::<UInt64Type>(),
                col("first_row")?.as_primitive::<UInt64Type>(),
            );
            let row_groups = col("row_groups")?.as_boolean();
            let unit = if !row_groups.is_null(0) && row_groups.value(0) {
                PieceUnit::RowGroups
            } else {
                PieceUnit::Bytes
            };
            let range = (!start.is_null(0)).then(|| Piece {
                unit,
                start: start.value(0),
                end: end.value(0),
                first_row: first.value(0),
            });
            item = Some(WorkItem { part, path, range });
        }
        items.push(item.ok_or_else(|| internal("an empty work list partition"))?);
    }
    Ok(items)
}

/// The one input of conform's plan nodes (`node` names the node for the error).
pub(crate) fn one_input(
    children: &[Arc<dyn ExecutionPlan>],
    node: &str,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    match children {
        [only] => Ok(Arc::clone(only)),
        _ => Err(datafusion::error::DataFusionError::Internal(format!(
            "the conform {node} has one input, not {}",
            children.len()
        ))),
    }
}

fn properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// The table the client plans over: its scan is a [`ScanExec`] over the work list.
#[derive(Debug)]
pub struct ScanTable {
    spec: Arc<ScanSpec>,
    items: Vec<WorkItem>,
    schema: SchemaRef,
}

impl ScanTable {
    /// A table reading the work items with the spec.
    pub fn try_new(spec: Arc<ScanSpec>, items: Vec<WorkItem>) -> Result<ScanTable> {
        let data_schema = decode_schema(&spec.data_schema)?;
        let schema = with_provenance(&data_schema);
        Ok(ScanTable {
            spec,
            items,
            schema,
        })
    }
}

#[async_trait]
impl TableProvider for ScanTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let work = work_exec(&self.items).map_err(external)?;
        let scan: Arc<dyn ExecutionPlan> =
            Arc::new(ScanExec::try_new(Arc::clone(&self.spec), work).map_err(external)?);
        // The readers produce every column (the record column shares their buffers); the plan
        // needs only the mapped ones and the record, so a projection picks them.
        match projection {
            Some(p) if p.len() != self.schema.fields().len() => {
                let exprs = p.iter().map(|&i| {
                    let name = self.schema.field(i).name().clone();
                    let col: Arc<dyn datafusion::physical_plan::PhysicalExpr> = Arc::new(
                        datafusion::physical_expr::expressions::Column::new(&name, i),
                    );
                    (col, name)
                });
                Ok(Arc::new(
                    datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, scan)?,
                ))
            }
            _ => Ok(scan),
        }
    }
}

/// Reads a source's files with conform's own readers (provenance, malformed rows as rows with
/// a reason): partition `i` reads the `i`-th item of its work-list input.
#[derive(Debug)]
pub struct ScanExec {
    spec: Arc<ScanSpec>,
    data_schema: SchemaRef,
    work: Arc<dyn ExecutionPlan>,
    items: Vec<WorkItem>,
    props: Arc<PlanProperties>,
}

impl ScanExec {
    /// A scan of the items of the in-memory work list `work`.
    pub fn try_new(spec: Arc<ScanSpec>, work: Arc<dyn ExecutionPlan>) -> Result<ScanExec> {
        let data_schema = decode_schema(&spec.data_schema)?;
        let items = items_of(&work)?;
        let props = properties(with_provenance(&data_schema), items.len());
        Ok(ScanExec {
            spec,
            data_schema,
            work,
            items,
            props,
        })
    }

    /// What is sent to the executors besides the work list.
    pub fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    /// The job-wide number of local partition `i`.
    pub fn part(&self, i: usize) -> Option<u32> {
        self.items.get(i).map(|w| w.part)
    }
}

impl DisplayAs for ScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConformScanExec: source={}, partitions={}",
            self.spec.source,
            self.items.len()
        )
    }
}

impl ExecutionPlan for ScanExec {
    fn name(&self) -> &str {
        "ConformScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.work]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(
            ScanExec::try_new(Arc::clone(&self.spec), one_input(&children, "scan")?)
                .map_err(external)?,
        ))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let item = self.items.get(partition).ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!(
                "no partition {partition} in the conform scan"
            ))
        })?;
        let source = FileSource::for_files(
            &self.spec.source,
            self.spec.format,
            self.spec.csv.clone(),
            Arc::clone(&self.data_schema),
            vec![(PathBuf::from(&item.path), item.range)],
            self.spec.batch_size,
        )
        .with_max_record_bytes(self.spec.max_record_bytes);
        // One reader thread per partition, at most two batches ahead.
        source
            .streams(1, 2)
            .map_err(external)?
            .pop()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("no stream".into()))
    }
}

/// The job-wide partition number of local partition `i` of `plan`: found on the conform scan
/// below it (the nodes in between map partitions one to one).
fn part_of(plan: &Arc<dyn ExecutionPlan>, i: usize) -> Option<u32> {
    if let Some(scan) = (plan.as_ref() as &dyn std::any::Any).downcast_ref::<ScanExec>() {
        return scan.part(i);
    }
    match plan.children().as_slice() {
        [child] => part_of(child, i),
        _ => None,
    }
}

/// What an executor needs to split and write a source's partitions. The validator and the
/// plan layout are rebuilt from the mapping document and the target schema with the same code
/// the client used, so the executor's split reads exactly the columns the plan produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkSpec {
    /// Source name.
    pub source: String,
    /// The target JSON Schema.
    pub target: serde_json::Value,
    /// The mapping document.
    pub mapping: MappingDocument,
    /// The source's columns.
    pub data_schema: Vec<u8>,
    /// The output directory (shared by client and executors).
    pub out_dir: String,
    /// Valid-rows format.
    pub format: OutputFormat,
    /// Parquet settings.
    pub parquet: ParquetOptions,
    /// Where the plan puts each target value, check mask and provenance column: the client
    /// built the plan, so executors split its output without compiling the mapping again.
    pub layout: crate::plan::Layout,
    /// The source columns each target field reads, in target order (for the checks' error
    /// messages and presence rules).
    pub sources: Vec<Vec<String>>,
    /// Delta output: the run id and partition columns; the client commits what the
    /// partitions wrote.
    #[cfg(feature = "delta")]
    pub delta: Option<crate::sink::delta::DeltaWrite>,
}

impl SinkSpec {
    /// Directory of the valid part files (the valid table, for Delta output).
    pub fn valid_dir(&self) -> PathBuf {
        let suffix = match self.format {
            OutputFormat::Delta => "valid",
            _ => "valid_data",
        };
        PathBuf::from(&self.out_dir).join(format!("{}_{suffix}", self.source))
    }

    /// Directory of the invalid part files (the invalid table, for Delta output).
    pub fn invalid_dir(&self) -> PathBuf {
        let suffix = match self.format {
            OutputFormat::Delta => "invalid",
            _ => "invalid_data",
        };
        PathBuf::from(&self.out_dir).join(format!("{}_{suffix}", self.source))
    }
}

/// The pieces of a sink rebuilt from its spec.
#[derive(Debug)]
struct SinkParts {
    layout: Layout,
    checks: Vec<Check>,
    valid_schema: SchemaRef,
}

impl SinkParts {
    fn try_new(spec: &SinkSpec) -> Result<SinkParts> {
        let target = TargetSchema::try_new(&spec.target)?;
        let sources: Vec<&[String]> = spec.sources.iter().map(Vec::as_slice).collect();
        let validator = Validator::with_sources(&target, &sources);
        Ok(SinkParts {
            layout: spec.layout.clone(),
            checks: validator.checks,
            valid_schema: target.valid_arrow_schema(),
        })
    }
}

/// Splits each partition's plan output into valid and invalid rows and writes them as
/// `NAME_valid_data/part-NNNNN.EXT` and `NAME_invalid_data/part-NNNNN.ndjson` (atomically);
/// outputs one row per partition: `partition`, `valid`, `invalid`, `errors` (JSON: field →
/// rule → count).
#[derive(Debug)]
pub struct SinkExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<SinkSpec>,
    parts: Arc<SinkParts>,
    props: Arc<PlanProperties>,
}

/// Schema of the sink's output.
fn counts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("valid", DataType::UInt64, false),
        Field::new("invalid", DataType::UInt64, false),
        Field::new("errors", DataType::Utf8, false),
        // Delta output: the data files written (`DeltaFiles` as JSON), for the client's commit.
        Field::new("files", DataType::Utf8, true),
    ]))
}

impl SinkExec {
    /// A sink over `input` (the plan of `plan::build`).
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: Arc<SinkSpec>) -> Result<SinkExec> {
        let parts = Arc::new(SinkParts::try_new(&spec)?);
        Ok(SinkExec::over(input, spec, parts))
    }

    /// The sink with its pieces already built: one output row per input partition.
    fn over(input: Arc<dyn ExecutionPlan>, spec: Arc<SinkSpec>, parts: Arc<SinkParts>) -> SinkExec {
        let n = input.properties().output_partitioning().partition_count();
        SinkExec {
            input,
            spec,
            parts,
            props: properties(counts_schema(), n),
        }
    }

    /// What is sent to the executors.
    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }
}

impl DisplayAs for SinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConformSinkExec: source={}, out={}",
            self.spec.source, self.spec.out_dir
        )
    }
}

impl ExecutionPlan for SinkExec {
    fn name(&self) -> &str {
        "ConformSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SinkExec::over(
            one_input(&children, "sink")?,
            Arc::clone(&self.spec),
            Arc::clone(&self.parts),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        // Part files are named by the job-wide partition number: a task's plan holds only its
        // own partitions, numbered from 0.
        let part = part_of(&self.input, partition).unwrap_or(partition as u32);
        let (spec, parts) = (Arc::clone(&self.spec), Arc::clone(&self.parts));
        let out = futures::stream::once(async move {
            write_partition(part, input, &spec, &parts)
                .await
                .map_err(external)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            counts_schema(),
            out,
        )))
    }
}

/// Splits and writes one partition; its count row.
async fn write_partition(
    partition: u32,
    mut input: SendableRecordBatchStream,
    spec: &SinkSpec,
    parts: &SinkParts,
) -> Result<RecordBatch> {
    #[cfg(feature = "delta")]
    if let (OutputFormat::Delta, Some(delta)) = (spec.format, &spec.delta) {
        let mut out = crate::sink::delta::DeltaSplit::try_new(
            &spec.valid_dir(),
            &spec.invalid_dir(),
            &parts.valid_schema,
            partition,
            delta,
            &spec.parquet,
        )?;
        let mut counts = (0u64, 0u64, ErrorCounts::new());
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(|e| Error::source(&spec.source, e.to_string()))?;
            let (v, bad) = split(&batch, &parts.layout, &parts.checks, &parts.valid_schema)?;
            counts.0 += v.num_rows() as u64;
            counts.1 += bad.len() as u64;
            count_errors(&bad, &mut counts.2);
            out.write(&v, &bad)?;
        }
        let files = out.finish()?;
        let files = serde_json::to_string(&files)
            .map_err(|e| Error::source(&spec.source, format!("file list: {e}")))?;
        return counts_row(partition, counts, Some(files));
    }
    let part = format!("part-{partition:05}");
    let valid_path = spec
        .valid_dir()
        .join(format!("{part}.{}", spec.format.valid_extension()));
    let invalid_path = spec
        .invalid_dir()
        .join(format!("{part}.{}", spec.format.invalid_extension()));
    let mut out = SplitWriter::create(
        &valid_path,
        &invalid_path,
        spec.format,
        &parts.valid_schema,
        &spec.parquet,
    )?;
    let (mut n_valid, mut n_invalid) = (0u64, 0u64);
    let mut errors = ErrorCounts::new();
    while let Some(batch) = input.next().await {
        let batch = batch.map_err(|e| Error::source(&spec.source, e.to_string()))?;
        let (v, bad) = split(&batch, &parts.layout, &parts.checks, &parts.valid_schema)?;
        n_valid += v.num_rows() as u64;
        n_invalid += bad.len() as u64;
        count_errors(&bad, &mut errors);
        out.write(&v, &bad)?;
    }
    out.finish()?;
    counts_row(partition, (n_valid, n_invalid, errors), None)
}

/// One partition's row of the sink's output.
fn counts_row(
    partition: u32,
    (n_valid, n_invalid, errors): (u64, u64, ErrorCounts),
    files: Option<String>,
) -> Result<RecordBatch> {
    let errors = serde_json::to_string(&errors).unwrap_or_else(|_| "{}".into());
    Ok(RecordBatch::try_new(
        counts_schema(),
        vec![
            Arc::new(UInt32Array::from(vec![partition])),
            Arc::new(UInt64Array::from(vec![n_valid])),
            Arc::new(UInt64Array::from(vec![n_invalid])),
            Arc::new(StringArray::from(vec![errors])),
            Arc::new(StringArray::from(vec![files])),
        ],
    )?)
}
