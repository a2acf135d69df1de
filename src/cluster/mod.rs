//! Running a file source's plan on an Apache DataFusion Ballista cluster.
//!
//! The client builds the same logical plan as a local run (`plan::build`) over a scan
//! whose partitions are the source's files, plans it physically, puts a [`SinkExec`] on top
//! (split valid from invalid rows, write one part file per partition) and submits the physical
//! plan to the scheduler. Scheduler and executors decode conform's two plan nodes and its
//! functions with [`ConformCodec`]; everything between scan and sink is plain DataFusion, so the
//! executors evaluate exactly the expressions and checks a local run evaluates. Mapping (the
//! LLM call, the feedback probe) happens once, on the client, before the plan is sent.

mod exec;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef, UInt32Type, UInt64Type};
use ballista_core::config::BallistaConfig;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{LogicalPlanBuilder, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;
use prost::Message;

pub use exec::{ScanExec, ScanSpec, ScanTable, SinkExec, SinkSpec, WorkItem, work_exec, work_list};

use crate::config::OutputFormat;
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, PreparedSource, SourceReport};
use crate::validate::report::ErrorCounts;

type DfResult<T> = datafusion::error::Result<T>;

/// Payload prefixes that tell conform's nodes from Ballista's protobuf nodes.
const SCAN_TAG: &[u8] = b"conform-scan:";
const SINK_TAG: &[u8] = b"conform-sink:";

/// Encodes and decodes conform's plan nodes ([`ScanExec`], [`SinkExec`]) and functions;
/// everything else goes to Ballista's own codec. Client, scheduler and executors all use it.
#[derive(Debug, Default)]
pub struct ConformCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for ConformCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        conv: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(json) = buf.strip_prefix(SCAN_TAG) {
            let spec: ScanSpec = serde_json::from_slice(json).map_err(external)?;
            let work = exec::one_input(inputs, "scan")?;
            return Ok(Arc::new(
                ScanExec::try_new(Arc::new(spec), work).map_err(external)?,
            ));
        }
        if let Some(json) = buf.strip_prefix(SINK_TAG) {
            let spec: SinkSpec = serde_json::from_slice(json).map_err(external)?;
            let input = exec::one_input(inputs, "sink")?;
            return Ok(Arc::new(
                SinkExec::try_new(input, Arc::new(spec)).map_err(external)?,
            ));
        }
        self.ballista.try_decode(buf, inputs, ctx, conv)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        conv: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let any: &dyn std::any::Any = node.as_ref();
        if let Some(scan) = any.downcast_ref::<ScanExec>() {
            buf.extend_from_slice(SCAN_TAG);
            return serde_json::to_writer(buf, scan.spec()).map_err(external);
        }
        if let Some(sink) = any.downcast_ref::<SinkExec>() {
            buf.extend_from_slice(SINK_TAG);
            return serde_json::to_writer(buf, sink.spec()).map_err(external);
        }
        self.ballista.try_encode(node, buf, conv)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        // A process whose registry lacks conform's functions still decodes them by name.
        match crate::functions::all()
            .into_iter()
            .find(|f| f.name() == name)
        {
            Some(f) => Ok(Arc::new(f)),
            None => self.ballista.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.ballista.try_encode_udf(node, buf)
    }
}

fn external(
    e: impl std::error::Error + Send + Sync + 'static,
) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(e))
}

/// The session every cluster process uses: DataFusion's functions plus conform's, Ballista's
/// settings, and [`ConformCodec`] for plans.
pub fn session_state(config: SessionConfig) -> SessionState {
    let config = config
        .with_ballista_physical_extension_codec(Arc::new(ConformCodec::default()))
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let ctx = datafusion::prelude::SessionContext::new_with_state(state);
    crate::functions::register_all(&ctx);
    ctx.state()
}

/// The function registry an executor resolves plan functions in.
pub fn function_registry() -> BallistaFunctionRegistry {
    BallistaFunctionRegistry::from(&session_state(SessionConfig::new_with_ballista()))
}

/// Starts a scheduler and an executor inside this process (Ballista's standalone mode) with
/// conform's functions and codec; returns the `df://` address to run sources against.
pub async fn standalone(concurrent_tasks: usize) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| {
        Error::config("engine.cluster", format!("standalone cluster: {e}"))
    };
    let state = session_state(SessionConfig::new_with_ballista());
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(&state)
        .await
        .map_err(|e| failed(&e))?;
    let url = format!("http://localhost:{}", addr.port());
    let mut tries = 0;
    let client = loop {
        match ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient::connect(
            url.clone(),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) if tries > 100 => return Err(failed(&e)),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    ballista_executor::new_standalone_executor_from_state(client, concurrent_tasks.max(1), &state)
        .await
        .map_err(|e| failed(&e))?;
    Ok(format!("df://localhost:{}", addr.port()))
}

/// `df://host:port` → the scheduler's gRPC URL.
pub fn scheduler_url(cluster: &str) -> Result<String> {
    let rest = cluster.strip_prefix("df://").ok_or_else(|| {
        Error::config(
            "engine.cluster",
            format!("`{cluster}` is not a cluster address; write df://HOST:PORT"),
        )
    })?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| Error::config("engine.cluster", format!("`{cluster}` has no port")))?;
    let port: u16 = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| Error::config("engine.cluster", format!("`{cluster}` has no valid port")))?;
    Ok(format!("http://{host}:{port}"))
}

/// What the executors wrote for one source.
#[derive(Debug, Default)]
struct Merged {
    valid: u64,
    invalid: u64,
    errors: ErrorCounts,
    invalid_parts: usize,
    /// Delta output: the data files the partitions wrote.
    #[cfg(feature = "delta")]
    files: crate::sink::delta::DeltaFiles,
    /// Partitions counted. Each partition runs once, so its row arrives once; should a retried
    /// task deliver it again, it still counts once.
    seen: std::collections::BTreeSet<u32>,
}

/// Runs a prepared file source on the cluster: builds and submits the plan, merges the
/// partitions' counts into `report`.
/// Runs file sources on a Ballista cluster: the pipeline's [`RemoteEngine`](crate::pipeline::RemoteEngine).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ballista;

impl crate::pipeline::RemoteEngine for Ballista {
    fn transform<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        prepared: &'a PreparedSource,
        address: &'a str,
        report: &'a mut SourceReport,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(transform(pipeline, prepared, address, report))
    }
}

pub(crate) async fn transform(
    pipeline: &Pipeline,
    prepared: &PreparedSource,
    cluster: &str,
    report: &mut SourceReport,
) -> Result<()> {
    let name = prepared.source.name();
    let config = pipeline.config();
    let source = &prepared.source;
    // Partitions are files, and pieces of large CSV files cut at record boundaries; records keep
    // their numbers in the file, so provenance (file, row) is the same as in a local run.
    let split_bytes = (config.engine.partition_mb * 1024.0 * 1024.0).max(4096.0) as u64;
    let t0 = std::time::Instant::now();
    let items = work_list(source, split_bytes)?;
    let listed = t0.elapsed().as_secs_f64();
    let partitions = items.len();
    let table = ScanTable::try_new(Arc::new(ScanSpec::new(source)?), items)?;
    let builder = LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(table)), None)?;
    let (plan, layout) = crate::plan::build(
        builder,
        &source.data_schema(),
        &prepared.mapping,
        &prepared.validator,
    )?;
    // The plan maps partitions one to one; a repartition would add a shuffle for nothing.
    let planning = datafusion::prelude::SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(partitions.max(1))
            .with_round_robin_repartition(false)
            .with_repartition_file_scans(false),
    );
    crate::functions::register_all(&planning);
    let physical = planning.state().create_physical_plan(&plan).await?;
    let out_dir = config.output_dir();
    let spec = SinkSpec {
        source: name.to_string(),
        target: config.internal_schema.clone(),
        mapping: prepared.document.clone(),
        data_schema: encode_schema(&source.data_schema())?,
        out_dir: out_dir.display().to_string(),
        format: config.output_format,
        parquet: config.parquet.clone(),
        layout,
        sources: prepared
            .mapping
            .fields
            .iter()
            .map(|f| f.sources.clone())
            .collect(),
        #[cfg(feature = "delta")]
        delta: (config.output_format == OutputFormat::Delta).then(|| {
            crate::sink::delta::DeltaWrite {
                run_id: pipeline.run_id().to_string(),
                partition_by: config.delta.partition_by.clone(),
            }
        }),
    };
    let (valid_dir, invalid_dir) = (spec.valid_dir(), spec.invalid_dir());
    let delta = config.output_format == OutputFormat::Delta;
    #[cfg(feature = "delta")]
    let tables = if delta {
        let schema =
            crate::schema::TargetSchema::try_new(&config.internal_schema)?.valid_arrow_schema();
        // A table this run cannot commit to fails the source before the job is submitted.
        Some(
            pipeline
                .delta_tables(name, &valid_dir, &invalid_dir, &schema)
                .await?,
        )
    } else {
        None
    };
    // A table's files stay: the log says which are live. Part directories hold one run's.
    if !delta {
        for dir in [&valid_dir, &invalid_dir] {
            clear_parts(dir)?;
        }
    }
    let sink: Arc<dyn ExecutionPlan> = Arc::new(SinkExec::try_new(physical, Arc::new(spec))?);
    let codec = ConformCodec::default();
    let session_config = SessionConfig::new_with_ballista()
        .with_ballista_physical_extension_codec(Arc::new(ConformCodec::default()));
    let session_id = format!("conform-{}-{}", std::process::id(), name);
    let mut merged = Merged::default();
    let job = async {
        let mut stream = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
            scheduler_url(cluster)?,
            &BallistaConfig::default(),
            sink,
            &codec,
            session_id,
            session_config,
        )
        .await
        .map_err(|e| Error::source(name, format!("the cluster at {cluster} failed: {e}")))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| {
                Error::source(name, format!("the cluster at {cluster} failed: {e}"))
            })?;
            merge(&batch, &mut merged)?;
        }
        if merged.seen.len() != partitions {
            return Err(Error::source(
                name,
                format!(
                    "the cluster at {cluster} reported {} of {partitions} partitions",
                    merged.seen.len()
                ),
            ));
        }
        Ok(())
    };
    match job.await {
        Ok(()) => {}
        Err(e) => {
            // Parts of the partitions that did finish are whole files but not the whole
            // output: remove them, so a failed run leaves no output that looks complete (a
            // Delta table's log never referenced them).
            #[cfg(feature = "delta")]
            merged.files.remove();
            if !delta {
                for dir in [&valid_dir, &invalid_dir] {
                    let _ = clear_parts(dir);
                }
            }
            return Err(e);
        }
    }
    report.valid = merged.valid;
    report.invalid = merged.invalid;
    report.rows_read = merged.valid + merged.invalid;
    report.errors = std::mem::take(&mut merged.errors);
    report.notes.push(crate::pipeline::Note::Cluster {
        address: cluster.to_string(),
        partitions,
        files: source.files().len(),
        listed_s: listed,
    });
    // Every partition's files in one commit per table: the load is as atomic as a local one.
    #[cfg(feature = "delta")]
    if let Some(tables) = &tables {
        let files = std::mem::take(&mut merged.files);
        pipeline.commit_delta(name, tables, files, report).await?;
        let shown = |dir: &str| format!("{}/", config.output_directory.join(dir).display());
        report.saved(
            (shown(&format!("{name}_valid")), valid_dir),
            Some((shown(&format!("{name}_invalid")), invalid_dir)),
        );
        return Ok(());
    }
    // Directories are shown with a trailing slash: they hold one part per partition.
    let shown = |dir: &str| format!("{}/", config.output_directory.join(dir).display());
    report.saved(
        (shown(&format!("{name}_valid_data")), valid_dir),
        (merged.invalid_parts > 0).then(|| (shown(&format!("{name}_invalid_data")), invalid_dir)),
    );
    Ok(())
}

/// Adds one sink output batch (one row per partition) to the totals.
fn merge(batch: &RecordBatch, into: &mut Merged) -> Result<()> {
    let col = |n: &str| {
        batch
            .column_by_name(n)
            .ok_or_else(|| Error::source("(cluster)", format!("sink output lacks `{n}`")))
    };
    let valid = col("valid")?.as_primitive::<UInt64Type>();
    let invalid = col("invalid")?.as_primitive::<UInt64Type>();
    let errors = col("errors")?.as_string::<i32>();
    let partition = col("partition")?.as_primitive::<UInt32Type>();
    #[cfg(feature = "delta")]
    let files = col("files")?.as_string::<i32>();
    for i in 0..batch.num_rows() {
        if !into.seen.insert(partition.value(i)) {
            tracing::debug!(partition = partition.value(i), "partition reported again");
            continue;
        }
        #[cfg(feature = "delta")]
        if files.is_valid(i) {
            let f: crate::sink::delta::DeltaFiles = serde_json::from_str(files.value(i))
                .map_err(|e| Error::source("(cluster)", format!("a partition's file list: {e}")))?;
            into.files.valid.extend(f.valid);
            into.files.invalid.extend(f.invalid);
        }
        into.valid += valid.value(i);
        into.invalid += invalid.value(i);
        if invalid.value(i) > 0 {
            into.invalid_parts += 1;
        }
        let e: ErrorCounts = serde_json::from_str(errors.value(i)).unwrap_or_default();
        for (field, rules) in e {
            let slot = into.errors.entry(field).or_default();
            for (rule, n) in rules {
                *slot.entry(rule).or_default() += n;
            }
        }
    }
    Ok(())
}

/// Removes the part files of an earlier run, so the directory holds this run's parts only.
fn clear_parts(dir: &Path) -> Result<()> {
    crate::store::remove_files("output directory", dir, |n| n.starts_with("part-")).map(|_| ())
}

/// A schema as protobuf bytes (DataFusion's own encoding of Arrow schemas).
pub(crate) fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    let p: datafusion_proto::protobuf::Schema = schema
        .try_into()
        .map_err(|e| Error::source("(cluster)", format!("schema not encodable: {e}")))?;
    Ok(p.encode_to_vec())
}

/// The inverse of [`encode_schema`].
pub(crate) fn decode_schema(bytes: &[u8]) -> Result<SchemaRef> {
    let p = datafusion_proto::protobuf::Schema::decode(bytes)
        .map_err(|e| Error::source("(cluster)", format!("schema not decodable: {e}")))?;
    let s: Schema = (&p)
        .try_into()
        .map_err(|e| Error::source("(cluster)", format!("schema not decodable: {e}")))?;
    Ok(Arc::new(s))
}
