//! Mappings: one SQL expression per target field, reviewable as a JSON document.
//!
//! A [`Mapper`] proposes a [`MappingDocument`] from the target schema, the source's schema and a
//! sample; [`compile()`] checks it against the source (columns, allowed functions, types) and turns
//! it into DataFusion expressions, once, before any data flows.

pub mod compile;
pub(crate) mod heuristic;
pub(crate) mod llm;
pub mod memory;
pub(crate) mod names;
mod vocabulary;

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::schema::TargetSchema;
use crate::source::ColumnProfile;

pub use compile::{CompiledField, CompiledMapping, compile};

/// Which mapper produced a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapperKind {
    /// The offline heuristic matcher.
    Heuristic,
    /// A language model.
    Llm,
    /// Written or edited by a person and pinned as a file.
    File,
}

impl MapperKind {
    /// Lower-case name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            MapperKind::Heuristic => "heuristic",
            MapperKind::Llm => "llm",
            MapperKind::File => "file",
        }
    }
}

/// The mapping of one target field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// DataFusion SQL expression over the source's columns; null leaves the field unmapped.
    pub expr: Option<String>,
    /// Source columns the expression reads (computed by the compiler).
    #[serde(default)]
    pub sources: Vec<String>,
    /// How sure the mapper is, 0..1.
    #[serde(default)]
    pub confidence: f64,
    /// Why this expression.
    #[serde(default)]
    pub rationale: String,
    /// Why a proposed expression was rejected (the field is then unmapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Share of the sample's values that the expression's value table (an enum's `CASE`)
    /// turns into allowed values; absent when the field has no table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_coverage: Option<f64>,
    /// Source values of the sample that the value table could not place among the field's
    /// allowed values (they become invalid rows until a value mapping places them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced_values: Vec<String>,
    /// The next best expressions, best first, so that a reviewer can switch with one edit
    /// (copy a candidate's `expr` into `expr`). Ignored when the mapping is compiled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
}

/// An alternative to a field's chosen expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The expression this alternative would use.
    pub expr: String,
    /// The column(s) it reads.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The matcher's score, 0..1 (the chosen expression's confidence is on the same scale).
    pub score: f64,
    /// The evidence for it.
    #[serde(default)]
    pub why: String,
}

impl FieldMapping {
    /// A field without an expression.
    pub fn unmapped() -> FieldMapping {
        FieldMapping {
            expr: None,
            sources: vec![],
            confidence: 0.0,
            rationale: String::new(),
            error: None,
            value_coverage: None,
            unplaced_values: vec![],
            candidates: vec![],
        }
    }
}

/// A source's mapping document, as stored under `mappings/<source>.mapping.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingDocument {
    /// Source name.
    pub source: String,
    /// Hash of the source's column names and types the mapping was made for.
    pub source_fingerprint: String,
    /// Who made it.
    pub mapper: MapperKind,
    /// Reviewed by a person: used as-is, never overwritten, required by `--frozen`.
    #[serde(default)]
    pub pinned: bool,
    /// The model that proposed it (LLM mappings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Target field → mapping, in target schema order.
    pub fields: IndexMap<String, FieldMapping>,
    /// Decisions a reviewer made on the review page (`conform review`), oldest first: who,
    /// when, which field, what changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewEntry>,
}

/// One reviewer's decision on one field, as recorded when the document was pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewEntry {
    /// The target field.
    pub field: String,
    /// The reviewer (`--reviewer`, else the operating-system user).
    pub by: String,
    /// When it was pinned (RFC 3339, UTC).
    pub at: String,
    /// What changed: `expr A → B`, `left unmapped`, `value 'x' → 'Y'`, `reviewed, kept`.
    pub change: String,
}

impl MappingDocument {
    /// Leaves every field whose confidence is below `min` unmapped: its expression becomes the
    /// first of its ranked candidates, for a reviewer to take with one edit. Returns the
    /// fields held back.
    pub fn hold_below(&mut self, min: f64) -> Vec<String> {
        self.hold_below_named(min, "confidence", "min_confidence")
    }

    /// [`Self::hold_below`], the rationale naming what is compared (`what`) and the
    /// threshold (`threshold`).
    pub fn hold_below_named(&mut self, min: f64, what: &str, threshold: &str) -> Vec<String> {
        let mut held = Vec::new();
        for (name, m) in self.fields.iter_mut() {
            if m.confidence >= min {
                continue;
            }
            let Some(expr) = m.expr.take() else { continue };
            m.candidates.insert(
                0,
                Candidate {
                    expr,
                    sources: std::mem::take(&mut m.sources),
                    score: m.confidence,
                    why: std::mem::take(&mut m.rationale),
                },
            );
            *m = FieldMapping {
                rationale: format!(
                    "undecided: the best candidate's {what} {:.2} is below {threshold} {min:.2}",
                    m.confidence
                ),
                candidates: std::mem::take(&mut m.candidates),
                ..FieldMapping::unmapped()
            };
            held.push(name.clone());
        }
        held
    }

    /// Reads a document from a file.
    pub fn load(path: &Path) -> Result<MappingDocument> {
        let text =
            crate::store::read_text_optional("mapping document", path)?.ok_or_else(|| {
                Error::io(
                    "reading",
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                )
            })?;
        MappingDocument::from_json(path, &text)
    }

    /// Parses a document read from `path` (named in the error).
    pub fn from_json(path: &Path, text: &str) -> Result<MappingDocument> {
        serde_json::from_str(text).map_err(|e| {
            Error::config(
                path.display().to_string(),
                format!("not a valid mapping document: {e}"),
            )
        })
    }

    /// Writes the document atomically (pretty JSON, for review and diffs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::fs::atomic_write(path, text.as_bytes())
    }

    /// Target fields left unmapped.
    pub fn unmapped(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(_, m)| m.expr.is_none())
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Stable hash of a source's column names and types.
pub fn fingerprint(schema: &arrow::datatypes::Schema) -> String {
    let mut h = Sha256::new();
    // Sorted by name: expressions refer to columns by name, so order does not matter (and JSON
    // sources list keys in first-seen order, which can differ between files).
    let mut fields: Vec<_> = schema.fields().iter().collect();
    fields.sort_by(|a, b| a.name().cmp(b.name()));
    for f in fields {
        if crate::source::PROVENANCE.contains(&f.name().as_str()) {
            continue;
        }
        h.update(f.name().as_bytes());
        h.update(b":");
        h.update(f.data_type().to_string().as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Everything a mapper may look at.
#[derive(Debug, Clone)]
pub struct MappingRequest<'a> {
    /// Source name.
    pub source: &'a str,
    /// The target.
    pub target: &'a TargetSchema,
    /// The source's columns (without provenance).
    pub source_schema: SchemaRef,
    /// The first rows.
    pub sample: &'a RecordBatch,
    /// Per-column evidence from the sample.
    pub profiles: &'a [ColumnProfile],
}

/// A mapper's answer: the document, and what the model calls cost (LLM mapper only).
#[derive(Debug, Clone)]
pub struct Proposal {
    /// One entry per target field.
    pub document: MappingDocument,
    /// Requests, tokens and latency of the LLM conversation.
    pub llm: Option<llm::LlmUsage>,
}

/// Proposes a mapping. Implementations: the offline matcher (`heuristic::HeuristicMapper`) and
/// the LLM client (`llm::LlmMapper`); stored documents are loaded by the pipeline. The future is
/// boxed so mappers can be chosen at run time (`dyn Mapper`) and can await network calls.
pub trait Mapper: Send + Sync {
    /// Which kind of mapper this is.
    fn kind(&self) -> MapperKind;
    /// Produces a document with one entry per target field.
    fn map<'a>(&'a self, request: &'a MappingRequest<'a>) -> BoxFuture<'a, Result<Proposal>>;
}
