//! What happened to one source: its entry in `run_summary.json`.

use super::*;

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
    /// Reading, transforming, validating and writing (with Delta output, the commits too).
    pub transform_s: f64,
    /// Delta output: the two tables' commits (part of `transform_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_s: Option<f64>,
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
    /// The Delta tables' versions holding this run's rows (`output_format: "delta"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaVersions>,
}

/// The versions of a source's two Delta tables after its run's commits.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaVersions {
    /// The run id the commits carry.
    pub run_id: String,
    /// Version of `NAME_valid`.
    pub valid: u64,
    /// Version of `NAME_invalid`.
    pub invalid: u64,
}

/// Whether a source ran to the end (`ok`) or stopped (`failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran to the end; its outputs are written.
    Ok,
    /// It stopped; `error` says why.
    Failed,
}

impl Status {
    /// `ok` or `failed`, as the summary and the history write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }
}

/// How far a source got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Stage {
    /// Opening and mapping it.
    #[default]
    Loading,
    /// Its mapping is ready; rows are being transformed.
    Transforming,
    /// Its outputs are written.
    Saved,
}

/// Why a source failed, as far as its presentation differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The source rejected its credentials.
    Credentials,
    /// Anything else (`error` says what).
    Other,
}

/// Something worth telling about how a source ran (the CLI shows notes on stderr).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Where the mapping came from.
    Origin(MappingOrigin),
    /// A cluster was configured but this source is not made of files, so it ran here.
    RanLocally,
    /// It ran on a cluster.
    Cluster {
        /// The scheduler.
        address: String,
        /// Partitions made.
        partitions: usize,
        /// Files listed.
        files: usize,
        /// Seconds the listing took.
        listed_s: f64,
    },
    /// An anomaly flag raised on the valid rows.
    Anomaly(String),
    /// A Delta table committed (or found committed by an earlier attempt of the run).
    Delta {
        /// The table.
        table: String,
        /// The version holding the run's rows.
        version: u64,
        /// An earlier attempt of the run had committed; nothing was added.
        already: bool,
        /// The run id.
        run_id: String,
    },
}

/// What happened to one source; also its entry in `run_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Source name.
    pub name: String,
    /// `ok` or `failed`.
    pub status: Status,
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
    /// How far it got.
    #[serde(skip)]
    pub stage: Stage,
    /// Why it failed, when it did.
    #[serde(skip)]
    pub failure: Option<FailureKind>,
    /// The outputs as the config names them (relative to the config's directory): the valid
    /// file and the invalid one if written.
    #[serde(skip)]
    pub shown_outputs: Option<(String, Option<String>)>,
    /// Notes on how it ran.
    #[serde(skip)]
    pub notes: Vec<Note>,
}

impl SourceReport {
    pub(super) fn new(name: &str) -> Self {
        SourceReport {
            name: name.to_string(),
            status: Status::Ok,
            error: None,
            rows_read: 0,
            valid: 0,
            invalid: 0,
            errors: BTreeMap::new(),
            timings: Timings::default(),
            mapping: None,
            outputs: Outputs::default(),
            anomalies: None,
            stage: Stage::Loading,
            failure: None,
            shown_outputs: None,
            notes: Vec::new(),
        }
    }

    /// The outputs are written: `(as shown, path)` of the valid output and of the invalid one
    /// if written.
    pub(crate) fn saved(&mut self, valid: (String, PathBuf), invalid: Option<(String, PathBuf)>) {
        self.stage = Stage::Saved;
        self.outputs.valid = Some(valid.1.display().to_string());
        self.outputs.invalid = invalid.as_ref().map(|(_, p)| p.display().to_string());
        self.shown_outputs = Some((valid.0, invalid.map(|(shown, _)| shown)));
    }

    /// Whether the source ran to the end.
    pub fn ok(&self) -> bool {
        self.status == Status::Ok
    }
}
