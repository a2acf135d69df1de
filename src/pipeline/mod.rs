//! Wires one source through to its outputs: open → sample → map → compile → plan → execute →
//! split → write. Reading, evaluation and writing run on different threads connected by bounded
//! channels, so memory is bounded by a few batches whatever the input size. Nothing here prints:
//! progress goes to a callback and the result is a [`SourceReport`].

pub mod eval;
pub mod explain;
pub mod feedback;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::{empty::EmptyTable, provider_as_source};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::anomaly::{self, AnomalyReport, Monitor, RunProfile};
use crate::config::{Config, LlmFallback, OutputFormat};
use crate::error::{Error, Result};
use crate::mapping::heuristic::HeuristicMapper;
use crate::mapping::llm::{LlmMapper, LlmUsage};
use crate::mapping::memory;
use crate::mapping::{
    CompiledMapping, Mapper, MapperKind, MappingDocument, MappingRequest, compile, fingerprint,
};
use crate::plan::Layout;
use crate::schema::TargetSchema;
use crate::sink::{InvalidSink, ValidSink};
use crate::source::{FileSource, profile::profile};
use crate::split::split;
use crate::validate::Validator;
use crate::validate::report::InvalidRow;
use feedback::FeedbackReport;

/// Rows sampled for mapping.
pub const SAMPLE_ROWS: usize = 1000;

/// How to get a source's mapping when no stored document settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MapperChoice {
    /// A stored document whose fingerprint matches; else the LLM when an endpoint is
    /// configured; else the heuristic mapper.
    #[default]
    Auto,
    /// Generate with the heuristic mapper (a pinned document still wins).
    Heuristic,
    /// Generate with the LLM (a pinned document still wins).
    Llm,
    /// Only a stored mapping document; it is an error if there is none.
    File,
}

/// A source ready to run: its mapping chosen, compiled and validated against the target.
#[derive(Debug, Clone)]
pub struct PreparedSource {
    /// The source.
    pub source: FileSource,
    /// The mapping document used.
    pub document: MappingDocument,
    /// The stored document's path (read from, or to be written to).
    pub document_path: PathBuf,
    /// Whether the document was read from the store rather than generated now.
    pub stored: bool,
    /// Where a generated document is saved: the store path, or a `.proposed.json` beside a
    /// pinned document (which is never overwritten). None when the document was read.
    pub save_to: Option<PathBuf>,
    /// What the LLM conversation cost, when the LLM mapped the source.
    pub llm: Option<LlmUsage>,
    /// What the feedback loop did, when it ran (newly generated mappings).
    pub feedback: Option<FeedbackReport>,
    /// Repairs learned on earlier runs that were applied to the new mapping.
    pub learned_applied: Vec<String>,
    /// One line saying where the mapping came from (printed on stderr by the CLI).
    pub origin: String,
    /// The compiled expressions.
    pub mapping: CompiledMapping,
    /// The compiled validation rules.
    pub validator: Validator,
}

impl PreparedSource {
    /// Saves a generated document for review (does nothing for a stored one).
    pub fn save(&self) -> Result<()> {
        match &self.save_to {
            Some(p) => self.document.save(p),
            None => Ok(()),
        }
    }
}

/// The conform engine for one configuration.
pub struct Pipeline {
    config: Arc<Config>,
    target: Arc<TargetSchema>,
    ctx: SessionContext,
    /// Plan partitions a source's batches are dealt over: one per core.
    partitions: usize,
    /// Built on first use, shared by all sources (its semaphore bounds requests in flight).
    llm: tokio::sync::OnceCell<Arc<LlmMapper>>,
    /// Refuse anything but a pinned document whose fingerprint matches.
    frozen: bool,
    /// Ballista scheduler (`df://host:port`) file sources run on, if any.
    cluster: Option<String>,
    /// The engine that runs them there (see [`Pipeline::with_remote_engine`]).
    remote: Option<Arc<dyn RemoteEngine>>,
}

impl Pipeline {
    /// Checks the target schema; fails before any data is read if it is unusable.
    pub fn try_new(config: Config) -> Result<Pipeline> {
        let target = TargetSchema::try_new(&config.internal_schema)?;
        Ok(Pipeline {
            target: Arc::new(target),
            ctx: crate::mapping::compile::session(),
            partitions: std::thread::available_parallelism().map_or(1, |n| n.get()),
            llm: tokio::sync::OnceCell::new(),
            frozen: false,
            cluster: config.engine.cluster.clone(),
            remote: None,
            config: Arc::new(config),
        })
    }

    /// The engine that runs file sources when a cluster is configured (`engine.cluster`,
    /// [`Pipeline::with_cluster`]); with the `ballista` feature, `conform::cluster::Ballista`.
    pub fn with_remote_engine(mut self, engine: Arc<dyn RemoteEngine>) -> Pipeline {
        self.remote = Some(engine);
        self
    }

    /// Production mode: every source needs a pinned mapping document made for its current
    /// columns; nothing is generated.
    pub fn with_frozen(mut self, frozen: bool) -> Pipeline {
        self.frozen = frozen;
        self
    }

    /// Runs file sources on the Ballista cluster at `cluster` (`df://host:port`) instead of
    /// locally; `None` runs everything locally. Fails when this build has no cluster support.
    pub fn with_cluster(mut self, cluster: Option<String>) -> Result<Pipeline> {
        if let Some(c) = cluster {
            self.cluster = Some(c);
        }
        if self.cluster.is_some() && !cfg!(feature = "ballista") {
            return Err(Error::config(
                "engine.cluster",
                "this conform was built without cluster support; build it with `cargo build --features ballista`",
            ));
        }
        Ok(self)
    }

    /// The LLM mapper for the configured endpoint.
    pub async fn llm(&self) -> Result<Arc<LlmMapper>> {
        self.llm
            .get_or_try_init(|| async { LlmMapper::new(&self.config.llm).map(Arc::new) })
            .await
            .cloned()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiled target schema.
    pub fn target(&self) -> &TargetSchema {
        &self.target
    }

    /// The DataFusion session, with conform's functions registered.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Opens a configured source (resolves files, reads the schema; for HTTP and PostgreSQL
    /// sources this connects and checks the credentials). Blocking.
    pub fn open(&self, name: &str) -> Result<FileSource> {
        Pipeline::open_with(&self.config, name)
    }

    fn open_with(config: &Config, name: &str) -> Result<FileSource> {
        let cfg = config.source_or_error(name)?;
        if cfg.path.is_some() && !cfg.credentials.is_empty() {
            tracing::warn!(
                source = name,
                "A file source does not use credentials; they are ignored."
            );
        }
        FileSource::try_new(name, cfg, &config.base_dir, config.batch_size)
    }

    /// Path of a source's mapping document in the mappings directory.
    pub fn mapping_path(&self, name: &str) -> PathBuf {
        match self.config.source(name).and_then(|s| s.mapping.as_ref()) {
            Some(p) => self.config.resolve(p),
            None => self
                .config
                .mappings_dir()
                .join(format!("{name}.mapping.json")),
        }
    }

    /// Opens, samples and maps a source, then compiles the mapping and the validator.
    pub async fn prepare(&self, name: &str, choice: MapperChoice) -> Result<PreparedSource> {
        self.prepare_with(name, choice, false).await
    }

    /// As [`Pipeline::prepare`], but always generates a new mapping (for `map --diff`): the
    /// stored document is neither used nor changed.
    pub async fn prepare_fresh(&self, name: &str, choice: MapperChoice) -> Result<PreparedSource> {
        self.prepare_with(name, choice, true).await
    }

    /// Picks the stored document if it settles the mapping (pinned, or made for these columns
    /// under `auto`), else generates one.
    fn stored_document(
        &self,
        name: &str,
        choice: MapperChoice,
        path: &std::path::Path,
        fp: &str,
    ) -> Result<Option<MappingDocument>> {
        let explicit = self
            .config
            .source(name)
            .and_then(|s| s.mapping.as_ref())
            .is_some();
        let stored = if path.exists() {
            Some(MappingDocument::load(path)?)
        } else {
            None
        };
        let shown = path.display();
        if self.frozen {
            return match stored {
                Some(d) if d.pinned && d.source_fingerprint == fp => Ok(Some(d)),
                Some(d) if !d.pinned => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen runs only reviewed mappings: {shown} is not pinned (review it, then set \"pinned\": true)"
                    ),
                )),
                Some(d) => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen: the source's columns changed since {shown} was pinned (fingerprint {} → {fp}); map again, review and pin",
                        d.source_fingerprint
                    ),
                )),
                None => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen: there is no mapping document at {shown}; run `conform map`, review it and pin it"
                    ),
                )),
            };
        }
        if explicit || choice == MapperChoice::File {
            let Some(d) = stored else {
                return Err(Error::mapping(
                    name,
                    format!("there is no mapping document at {shown}"),
                ));
            };
            if d.source_fingerprint != fp {
                tracing::warn!(source = name, document = %shown, "The mapping document was made for different source columns; using it as configured.");
            }
            return Ok(Some(d));
        }
        Ok(match stored {
            Some(d) if d.source_fingerprint == fp && (d.pinned || choice == MapperChoice::Auto) => {
                Some(d)
            }
            Some(d) if d.source_fingerprint != fp => {
                tracing::warn!(source = name, document = %shown, "The source's columns changed since the stored mapping was made (fingerprint {} → {fp}); mapping again.", d.source_fingerprint);
                None
            }
            _ => None,
        })
    }

    async fn prepare_with(
        &self,
        name: &str,
        choice: MapperChoice,
        fresh: bool,
    ) -> Result<PreparedSource> {
        // Opening and sampling read files or call a server: off the async threads, so that
        // other sources proceed meanwhile.
        let source = {
            let (config, name) = (Arc::clone(&self.config), name.to_string());
            blocking(move || Pipeline::open_with(&config, &name)).await?
        };
        let path = self.mapping_path(name);
        let fp = fingerprint(&source.data_schema());
        let stored = if fresh {
            None
        } else {
            self.stored_document(name, choice, &path, &fp)?
        };
        let mut feedback_report = None;
        let mut learned_applied = Vec::new();
        let (document, llm, origin, save_to) = match stored {
            Some(doc) => {
                let how = if doc.pinned { "pinned" } else { "stored" };
                let origin = format!("using the {how} mapping {}", path.display());
                (doc, None, origin, None)
            }
            None => {
                // One read serves the mapper's sample and the feedback probe (a second read of
                // an HTTP or database source would cost another round of requests).
                let probe_rows = if self.config.feedback.enabled {
                    self.config.feedback.probe_rows.max(1)
                } else {
                    0
                };
                let head = {
                    let source = source.clone();
                    let n = SAMPLE_ROWS.max(probe_rows);
                    blocking(move || source.sample(n)).await?
                };
                let sample = head.slice(0, SAMPLE_ROWS.min(head.num_rows()));
                let profiles = profile(&sample);
                let request = MappingRequest {
                    source: name,
                    target: &self.target,
                    source_schema: source.data_schema(),
                    sample: &sample,
                    profiles: &profiles,
                };
                let use_llm = match choice {
                    MapperChoice::Llm => true,
                    MapperChoice::Auto => self.config.llm.configured(),
                    MapperChoice::Heuristic | MapperChoice::File => false,
                };
                let (proposal, origin) = if use_llm {
                    let llm = self.llm().await?;
                    match llm.map(&request).await {
                        Ok(p) => {
                            let o = format!(
                                "mapping with the LLM (model {} at {})",
                                llm.model(),
                                llm.endpoint()
                            );
                            (p, o)
                        }
                        Err(e) if self.config.llm.fallback == LlmFallback::Heuristic => {
                            tracing::warn!(source = name, error = %e, "The LLM could not map the source; using the heuristic mapper (llm.fallback).");
                            let p = HeuristicMapper.map(&request).await?;
                            (
                                p,
                                format!("mapping with the heuristic mapper (LLM failed: {e})"),
                            )
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    let why = if choice == MapperChoice::Auto {
                        " (no LLM endpoint configured)"
                    } else {
                        ""
                    };
                    let p = HeuristicMapper.map(&request).await?;
                    (p, format!("mapping with the heuristic mapper{why}"))
                };
                tracing::info!(source = name, mapper = proposal.document.mapper.as_str(), unmapped = ?proposal.document.unmapped(), "Generated a mapping.");
                let mut proposal = proposal;
                // Repairs learned on earlier runs (of any source) for columns like these.
                for f in compile(
                    &self.ctx,
                    &proposal.document,
                    &source.data_schema(),
                    &self.target,
                )?
                .fields
                {
                    if let Some(m) = proposal.document.fields.get_mut(&f.name) {
                        m.sources = f.sources;
                    }
                }
                let learned = memory::load_repairs(&self.config.mappings_dir())?;
                learned_applied = memory::apply(&mut proposal.document, &learned)
                    .into_iter()
                    .map(|(field, r)| {
                        format!(
                            "{field}: {} (learned from `{}`)",
                            r.template, r.learned_from
                        )
                    })
                    .collect();
                if self.config.feedback.enabled {
                    let rows = head.slice(0, probe_rows.min(head.num_rows()));
                    let llm = match proposal.document.mapper {
                        MapperKind::Llm => Some(self.llm().await?),
                        _ => None,
                    };
                    let feedback = feedback::Loop {
                        ctx: &self.ctx,
                        target: &self.target,
                        request: &request,
                        rows: &rows,
                        config: &self.config.feedback,
                        llm: llm.as_deref(),
                        redact: self.config.llm.redact_samples,
                    };
                    let (doc, report) = feedback.run(proposal.document, &mut proposal.llm).await?;
                    // Kept repairs are remembered for the next source with such a column.
                    for round in report.rounds.iter().filter(|r| r.kept) {
                        for (field, change) in &round.changes {
                            let (Some(after), Some([column])) = (
                                change.after.as_deref(),
                                doc.fields.get(field).map(|m| m.sources.as_slice()),
                            ) else {
                                continue;
                            };
                            memory::remember(
                                &self.config.mappings_dir(),
                                name,
                                field,
                                column,
                                after,
                                &change.why,
                            )?;
                        }
                    }
                    proposal.document = doc;
                    feedback_report = Some(report);
                }
                // A reviewed document is never overwritten: the new proposal goes beside it.
                let pinned_exists = MappingDocument::load(&path).is_ok_and(|d| d.pinned);
                let save_to = if pinned_exists {
                    let beside = path.with_extension("proposed.json");
                    tracing::warn!(source = name, pinned = %path.display(), proposal = %beside.display(), "A pinned mapping exists; the new proposal is written beside it for review.");
                    beside
                } else {
                    path.clone()
                };
                (proposal.document, proposal.llm, origin, Some(save_to))
            }
        };
        let mapping = compile(&self.ctx, &document, &source.data_schema(), &self.target)?;
        // The document records the columns each expression reads, as the compiler found them.
        let mut document = document;
        for f in &mapping.fields {
            if let Some(m) = document.fields.get_mut(&f.name) {
                m.sources = f.sources.clone();
            }
        }
        let validator = Validator::new(&self.target, &mapping);
        Ok(PreparedSource {
            source,
            document,
            document_path: path,
            stored: save_to.is_none(),
            save_to,
            llm,
            feedback: feedback_report,
            learned_applied,
            origin,
            mapping,
            validator,
        })
    }

    /// The source's logical plan over a table with no rows (for `explain`).
    pub fn plan_without_data(&self, p: &PreparedSource) -> Result<(LogicalPlan, Layout)> {
        let table = Arc::new(EmptyTable::new(p.source.schema()));
        let scan = LogicalPlanBuilder::scan(p.source.name(), provider_as_source(table), None)?;
        crate::plan::build(scan, &p.source.data_schema(), &p.mapping, &p.validator)
    }

    /// Executes the source's plan over its data: a stream of (valid batch, invalid rows), in
    /// the source's order.
    ///
    /// The source's batches are dealt round-robin over one plan partition per core; each
    /// partition evaluates the mapping and the checks and splits its batches on its own task,
    /// and the stream takes the partitions' results in turn, which restores the input order
    /// (the plan maps batches one to one).
    pub async fn execute(&self, p: &PreparedSource) -> Result<SplitStream> {
        let n = self.partitions;
        let partitions: Vec<Arc<dyn PartitionStream>> = p
            .source
            .streams(n, 2)?
            .into_iter()
            .map(|s| Arc::new(OnceStream::new(s)) as Arc<dyn PartitionStream>)
            .collect();
        let table = StreamingTable::try_new(p.source.schema(), partitions)?;
        let scan =
            LogicalPlanBuilder::scan(p.source.name(), provider_as_source(Arc::new(table)), None)?;
        let (plan, layout) =
            crate::plan::build(scan, &p.source.data_schema(), &p.mapping, &p.validator)?;
        let physical = DataFrame::new(self.ctx.state(), plan)
            .create_physical_plan()
            .await?;
        let got = physical
            .properties()
            .output_partitioning()
            .partition_count();
        if got != n {
            // Round-robin order can only be restored if the plan kept the partitions as dealt.
            return Err(Error::Internal(format!(
                "the plan of source `{}` has {got} partitions, expected {n}",
                p.source.name()
            )));
        }
        let layout = Arc::new(layout);
        let checks = Arc::new(p.validator.checks.clone());
        let valid_schema = self.target.valid_arrow_schema();
        let task_ctx = self.ctx.task_ctx();
        let mut parts = Vec::with_capacity(n);
        for i in 0..n {
            let mut stream = physical.execute(i, Arc::clone(&task_ctx))?;
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let (layout, checks, valid_schema) = (
                Arc::clone(&layout),
                Arc::clone(&checks),
                Arc::clone(&valid_schema),
            );
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    let out = item
                        .map_err(unwrap_source_error)
                        .and_then(|b| split(&b, &layout, &checks, &valid_schema));
                    let failed = out.is_err();
                    if tx.send(out).await.is_err() || failed {
                        break;
                    }
                }
            });
            parts.push(rx);
        }
        Ok(SplitStream {
            parts,
            next: 0,
            done: false,
            valid_schema,
        })
    }

    /// Removes the temporary files that killed runs left in the output and mappings
    /// directories (see [`crate::fs::remove_stale_temp_files`]); returns them.
    pub fn remove_stale_temp_files(&self) -> Vec<PathBuf> {
        let mut removed = crate::fs::remove_stale_temp_files(&self.config.output_dir());
        removed.extend(crate::fs::remove_stale_temp_files(
            &self.config.mappings_dir(),
        ));
        removed
    }

    /// Runs one source end to end, writing its outputs. Never panics on bad data; errors fail
    /// this source only and are reported in the returned report.
    pub async fn run_source(
        &self,
        name: &str,
        choice: MapperChoice,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> SourceReport {
        let started = Instant::now();
        let mut report = SourceReport::new(name);
        report.console.push("*".repeat(40));
        report
            .console
            .push(format!("Starting to process for {name}"));
        report.console.push(format!("Loading raw data for {name}"));
        let result = self.run_inner(name, choice, progress, &mut report).await;
        if let Err(e) = result {
            // The original tool's wording for a source whose credentials are rejected.
            let line = match &e {
                Error::Credentials { .. } => format!("Invalid credentials for {name}"),
                _ => format!("Failed to process {name}: {e}"),
            };
            report.console.push(line);
            report.status = "failed".into();
            report.error = Some(e.to_string());
        }
        report.timings.total_s = started.elapsed().as_secs_f64();
        if let Err(e) = self.record_history(&report) {
            tracing::warn!(source = name, error = %e, "Could not append to the source's history.");
        }
        report
    }

    /// Appends the run to the source's history in the mapping store.
    fn record_history(&self, report: &SourceReport) -> Result<()> {
        let m = report.mapping.as_ref();
        let feedback = m.and_then(|m| m.feedback.as_ref());
        let mut repairs: Vec<String> = m
            .map(|m| m.learned_repairs_applied.clone())
            .unwrap_or_default();
        for round in feedback
            .iter()
            .flat_map(|f| f.rounds.iter())
            .filter(|r| r.kept)
        {
            for (field, c) in &round.changes {
                repairs.push(format!(
                    "{field}: {} ({} round {})",
                    c.after.as_deref().unwrap_or("null"),
                    round.by,
                    round.round
                ));
            }
        }
        let entry = memory::HistoryEntry {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            status: report.status.clone(),
            fingerprint: m.map(|m| m.fingerprint.clone()),
            mapper: m.map(|m| m.mapper.as_str().to_string()),
            stored: m.is_some_and(|m| m.stored),
            rows_read: report.rows_read,
            valid: report.valid,
            invalid: report.invalid,
            probe_invalid_share: feedback.map(|f| (f.invalid_share_initial, f.invalid_share_final)),
            repairs,
            expressions: m.map(|m| m.expressions.clone()).unwrap_or_default(),
            anomalies: report
                .anomalies
                .iter()
                .flat_map(|a| a.flags.iter().map(|f| f.message.clone()))
                .collect(),
        };
        memory::append_history(&self.config.mappings_dir(), &report.name, &entry)
    }

    async fn run_inner(
        &self,
        name: &str,
        choice: MapperChoice,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        report: &mut SourceReport,
    ) -> Result<()> {
        let t0 = Instant::now();
        let prepared = self.prepare(name, choice).await?;
        prepared.save()?;
        report.notes.push(prepared.origin.clone());
        report.mapping = Some(MappingInfo {
            mapper: prepared.document.mapper,
            stored: prepared.stored,
            pinned: prepared.document.pinned,
            llm: prepared.llm.clone(),
            feedback: prepared.feedback.clone(),
            learned_repairs_applied: prepared.learned_applied.clone(),
            expressions: prepared
                .document
                .fields
                .iter()
                .map(|(k, m)| (k.clone(), m.expr.clone()))
                .collect(),
            document: prepared
                .save_to
                .as_ref()
                .unwrap_or(&prepared.document_path)
                .display()
                .to_string(),
            fingerprint: fingerprint(&prepared.source.data_schema()),
            unmapped: prepared
                .document
                .unmapped()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
        report.timings.mapping_s = t0.elapsed().as_secs_f64();
        report.console.push(format!("Generated Mapping for {name}"));
        report
            .console
            .push(format!("Transforming data from {name}"));
        let t1 = Instant::now();
        if let Some(cluster) = self.cluster.as_deref() {
            if prepared.source.is_files() {
                self.transform_on_cluster(&prepared, cluster, report)
                    .await?;
                report.timings.transform_s = t1.elapsed().as_secs_f64();
                return Ok(());
            }
            report.notes.push(
                "runs locally: only file sources run on a cluster (HTTP and PostgreSQL sources are read here)"
                    .into(),
            );
        }
        let format = self.config.output_format;
        let out_dir = self.config.output_dir();
        let valid_name = format!("{name}_valid_data.{}", format.valid_extension());
        let invalid_name = format!("{name}_invalid_data.{}", format.invalid_extension());
        let mut stream = self.execute(&prepared).await?;
        let monitor = if self.config.anomalies.enabled {
            let previous = anomaly::load_profiles(
                &self.config.mappings_dir(),
                name,
                self.config.anomalies.history_runs.max(1),
            )?;
            Some(Monitor::new(
                &self.config.anomalies,
                stream.valid_schema(),
                previous,
            )?)
        } else {
            None
        };
        let valid_schema = monitor
            .as_ref()
            .map_or_else(|| stream.valid_schema(), Monitor::output_schema);
        // Splitting and writing run on a blocking thread, overlapping with evaluation.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(4);
        let writer = {
            let valid_path = out_dir.join(&valid_name);
            let invalid_path = out_dir.join(&invalid_name);
            let parquet = self.config.parquet.clone();
            tokio::task::spawn_blocking(move || -> Result<Written> {
                let mut valid = ValidSink::create(&valid_path, format, &valid_schema, &parquet)?;
                let mut invalid: Option<InvalidSink> = None;
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Message::Batch(v, bad) => {
                            valid.write(&v)?;
                            if !bad.is_empty() {
                                if invalid.is_none() {
                                    invalid = Some(InvalidSink::create(
                                        &invalid_path,
                                        format == OutputFormat::Json,
                                    )?);
                                }
                                invalid.as_mut().expect("created above").write(&bad)?;
                            }
                        }
                        Message::Done => {
                            let v = valid.finish()?;
                            let i = invalid.map(InvalidSink::finish).transpose()?;
                            return Ok(Written {
                                valid: v,
                                invalid: i,
                            });
                        }
                    }
                }
                // The sender went away without `Done`: the run failed; the sinks are dropped
                // and their temporary files removed.
                Err(Error::Closed)
            })
        };
        // The anomaly monitor runs on a thread of its own between the plan and the writer, so
        // profiling overlaps with encoding.
        let (tx, monitor) = match monitor {
            Some(m) => {
                let (to_monitor, from_plan) = tokio::sync::mpsc::channel::<Message>(4);
                (to_monitor, Some(monitor_stage(m, from_plan, tx)))
            }
            None => (tx, None),
        };
        let mut rows_read = 0u64;
        let mut send_failed = false;
        while let Some(item) = stream.next().await {
            let (v, bad) = match item {
                Ok(x) => x,
                Err(e) => {
                    // What was read before the failure is reported, consistently with the
                    // valid and invalid counts (nothing was written: the outputs are dropped).
                    report.rows_read = rows_read;
                    drop(tx);
                    let _ = writer.await;
                    return Err(e);
                }
            };
            rows_read += (v.num_rows() + bad.len()) as u64;
            report.rows_read = rows_read;
            report.valid += v.num_rows() as u64;
            report.invalid += bad.len() as u64;
            crate::validate::report::count_errors(&bad, &mut report.errors);
            if let Some(p) = progress {
                p(rows_read);
            }
            if tx.send(Message::Batch(v, bad)).await.is_err() {
                send_failed = true;
                break;
            }
        }
        if !send_failed {
            let _ = tx.send(Message::Done).await;
        }
        drop(tx);
        let anomalies = match monitor {
            Some(m) => m
                .await
                .map_err(|e| Error::source(name, format!("anomaly thread failed: {e}")))
                .and_then(|r| r),
            None => Ok(None),
        };
        let written = writer
            .await
            .map_err(|e| Error::source(name, format!("writer thread failed: {e}")))
            .and_then(|r| r);
        // A failing stage stops its neighbours, which then report `Closed`: the error that
        // says why is the other one (a full disk under the writer, a monitor failure).
        let (anomalies, written) = match (anomalies, written) {
            (Err(Error::Closed), Err(w)) => return Err(w),
            (Err(a), _) => return Err(a),
            (_, Err(w)) => return Err(w),
            (Ok(a), Ok(w)) => (a, w),
        };
        report.rows_read = rows_read;
        report.timings.transform_s = t1.elapsed().as_secs_f64();
        if let Some((profile, anomalies)) = anomalies {
            for f in &anomalies.flags {
                report.notes.push(format!("anomaly: {}", f.message));
            }
            report.anomalies = Some(anomalies);
            // The profile becomes the reference of later runs only once the outputs exist.
            if let Err(e) = anomaly::append_profile(&self.config.mappings_dir(), name, &profile) {
                tracing::warn!(source = name, error = %e, "Could not store the run's profile.");
            }
        }
        let shown = |file: &str| {
            self.config
                .output_directory
                .join(file)
                .display()
                .to_string()
        };
        report.saved(
            (shown(&valid_name), written.valid),
            written.invalid.map(|i| (shown(&invalid_name), i)),
        );
        Ok(())
    }
}

/// Runs a prepared file source's plan on another engine and writes its outputs: a cluster.
/// Defined here and implemented above (`crate::cluster`), so the pipeline does not depend on
/// the engines it can hand work to.
pub trait RemoteEngine: Send + Sync {
    /// Transforms `prepared` on the engine at `address`, filling `report`.
    fn transform<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        prepared: &'a PreparedSource,
        address: &'a str,
        report: &'a mut SourceReport,
    ) -> futures::future::BoxFuture<'a, Result<()>>;
}

impl Pipeline {
    async fn transform_on_cluster(
        &self,
        prepared: &PreparedSource,
        cluster: &str,
        report: &mut SourceReport,
    ) -> Result<()> {
        match &self.remote {
            Some(engine) => engine.transform(self, prepared, cluster, report).await,
            // `with_cluster` refuses a cluster in builds without the feature.
            None => Err(Error::config(
                "engine.cluster",
                "this conform was built without cluster support",
            )),
        }
    }
}

enum Message {
    Batch(RecordBatch, Vec<InvalidRow>),
    Done,
}

struct Written {
    valid: PathBuf,
    invalid: Option<PathBuf>,
}

/// The anomaly monitor's thread: takes split batches from the plan, profiles the valid rows
/// (adding the flags column when asked) and passes everything on to the writer in order; at
/// the end, the run's profile and flags.
fn monitor_stage(
    mut monitor: Monitor,
    mut from_plan: tokio::sync::mpsc::Receiver<Message>,
    to_writer: tokio::sync::mpsc::Sender<Message>,
) -> tokio::task::JoinHandle<Result<Option<(RunProfile, AnomalyReport)>>> {
    tokio::task::spawn_blocking(move || {
        let empty = RecordBatch::new_empty(monitor.output_schema());
        let send = |m: Message| to_writer.blocking_send(m).map_err(|_| Error::Closed);
        while let Some(msg) = from_plan.blocking_recv() {
            match msg {
                Message::Batch(v, bad) => {
                    // Held-back valid rows come out later; invalid rows go on at once.
                    let mut ready = monitor.push(v)?.into_iter();
                    send(Message::Batch(
                        ready.next().unwrap_or_else(|| empty.clone()),
                        bad,
                    ))?;
                    for b in ready {
                        send(Message::Batch(b, Vec::new()))?;
                    }
                }
                Message::Done => {
                    for b in monitor.flush()? {
                        send(Message::Batch(b, Vec::new()))?;
                    }
                    send(Message::Done)?;
                    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    return Ok(Some(monitor.finish(at)));
                }
            }
        }
        // The plan side went away without `Done`: the run failed.
        Err(Error::Closed)
    })
}

/// One split batch: the valid rows (target schema) and the invalid rows with their errors.
pub type SplitBatch = (RecordBatch, Vec<InvalidRow>);

/// A stream of split batches: valid rows (target schema) and invalid rows with errors, in the
/// source's order.
pub struct SplitStream {
    /// One receiver per plan partition; batch `k` of the source arrives on `parts[k % n]`.
    parts: Vec<tokio::sync::mpsc::Receiver<Result<SplitBatch>>>,
    next: usize,
    done: bool,
    valid_schema: SchemaRef,
}

impl SplitStream {
    /// The next split batch, or None at the end.
    pub async fn next(&mut self) -> Option<Result<SplitBatch>> {
        if self.done || self.parts.is_empty() {
            return None;
        }
        let i = self.next % self.parts.len();
        match self.parts[i].recv().await {
            Some(item) => {
                self.next += 1;
                self.done = item.is_err();
                Some(item)
            }
            // Batches are dealt in turn, so when partition `i` has nothing more, no later batch
            // exists in any partition.
            None => {
                self.done = true;
                None
            }
        }
    }

    /// Schema of the valid batches.
    pub fn valid_schema(&self) -> SchemaRef {
        Arc::clone(&self.valid_schema)
    }
}

/// A reader error travels through DataFusion wrapped; give the user the original message.
fn unwrap_source_error(e: datafusion::error::DataFusionError) -> Error {
    match e {
        datafusion::error::DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::DataFusion(datafusion::error::DataFusionError::External(other)),
        },
        other => Error::DataFusion(other),
    }
}

/// A partition that hands out one pre-built stream (the source reader) once.
struct OnceStream {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnceStream")
            .field("schema", &self.schema)
            .finish()
    }
}

impl OnceStream {
    fn new(stream: SendableRecordBatchStream) -> Self {
        OnceStream {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().expect("not poisoned").take() {
            Some(s) => s,
            None => {
                let err = datafusion::error::DataFusionError::Execution(
                    "a source stream can be read only once".into(),
                );
                Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        Arc::clone(&self.schema),
                        futures::stream::once(async move { Err(err) }),
                    ),
                )
            }
        }
    }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a reader thread failed: {e}")))?
}

/// Where a source's mapping came from.
#[derive(Debug, Clone, Serialize)]
pub struct MappingInfo {
    /// Who made the document: `heuristic`, `llm` or `file` (written by a person).
    pub mapper: MapperKind,
    /// Read from the mapping store rather than generated in this run.
    pub stored: bool,
    /// The document is marked as reviewed.
    pub pinned: bool,
    /// Requests, tokens and latency, when the LLM mapped the source in this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmUsage>,
    /// The feedback loop's probe, digest and rounds, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackReport>,
    /// Repairs learned on earlier runs applied to this source's new mapping.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learned_repairs_applied: Vec<String>,
    /// The expressions used (for the history).
    #[serde(skip)]
    pub expressions: indexmap::IndexMap<String, Option<String>>,
    /// The mapping document's path.
    pub document: String,
    /// The source fingerprint it was made for.
    pub fingerprint: String,
    /// Target fields without an expression.
    pub unmapped: Vec<String>,
}

/// Wall-clock phases of a source, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Opening, sampling, mapping and compiling.
    pub mapping_s: f64,
    /// Reading, transforming, validating and writing.
    pub transform_s: f64,
    /// Everything.
    pub total_s: f64,
}

/// Output files of a source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outputs {
    /// The valid-rows file.
    pub valid: Option<String>,
    /// The invalid-rows file (absent when every row was valid).
    pub invalid: Option<String>,
}

/// What happened to one source; also its entry in `run_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Source name.
    pub name: String,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rows read (= valid + invalid).
    pub rows_read: u64,
    /// Valid rows written.
    pub valid: u64,
    /// Invalid rows written.
    pub invalid: u64,
    /// Error counts: field (or `(record)` for malformed records) → rule → count.
    pub errors: BTreeMap<String, BTreeMap<String, u64>>,
    /// Phases.
    pub timings: Timings,
    /// The mapping used.
    pub mapping: Option<MappingInfo>,
    /// Files written.
    pub outputs: Outputs,
    /// Outliers, drift and new values found in the valid rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomalies: Option<AnomalyReport>,
    /// The console block, line by line (printed by the CLI).
    #[serde(skip)]
    pub console: Vec<String>,
    /// Notes for stderr (where the mapping came from).
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl SourceReport {
    fn new(name: &str) -> Self {
        SourceReport {
            name: name.to_string(),
            status: "ok".into(),
            error: None,
            rows_read: 0,
            valid: 0,
            invalid: 0,
            errors: BTreeMap::new(),
            timings: Timings::default(),
            mapping: None,
            outputs: Outputs::default(),
            anomalies: None,
            console: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The closing lines of the source's console block, in the original tool's words, and the
    /// output paths: `(as shown, path)` of the valid output and of the invalid one if written.
    pub(crate) fn saved(&mut self, valid: (String, PathBuf), invalid: Option<(String, PathBuf)>) {
        let name = &self.name;
        self.console.push(format!(
            "Successfully validated {} items from {name}",
            self.valid
        ));
        if self.invalid > 0 {
            self.console.push(format!(
                "{} validation errors occurred for {name}.",
                self.invalid
            ));
        }
        self.console.push(format!("Data saved to {}", valid.0));
        self.outputs.valid = Some(valid.1.display().to_string());
        if let Some((shown, path)) = invalid {
            self.console.push(format!("Data saved to {shown}"));
            self.outputs.invalid = Some(path.display().to_string());
        }
    }

    /// Whether the source ran to the end.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}
