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
    pub(super) fn new(name: &str) -> Self {
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
