//! Wires one source through to its outputs: open → sample → map → compile → plan → execute →
//! split → write. Reading, evaluation and writing run on different threads connected by bounded
//! channels, so memory is bounded by a few batches whatever the input size. Nothing here prints:
//! progress goes to a callback and the result is a [`SourceReport`].

pub mod eval;
pub mod explain;
pub mod feedback;
mod local;
mod prepare;
mod report;
mod write;

pub use local::{SplitBatch, SplitStream};
pub use report::{MappingInfo, Outputs, SourceReport, Timings};

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
