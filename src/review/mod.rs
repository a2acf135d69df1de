//! Reviewing a source's mapping before it runs in production: the proposal (or the stored
//! document), what it makes of the source's first rows, every field's ranked candidates and
//! what they would make of the same rows, and the reviewer's decisions — applied to the
//! sample as often as wanted, written only when pinned.
//!
//! `conform review` serves this as a page on 127.0.0.1 ([`serve`]) or writes it as one
//! self-contained HTML file ([`page::render_static`]); a program can use [`ReviewBase`] and
//! [`SourceReview`] directly.

pub mod page;
pub mod sample;
mod server;

pub use server::{ServeOptions, serve};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::mapping::compile::{CompiledField, compile_field};
use crate::mapping::{Candidate, FieldMapping, MappingDocument, ReviewEntry};
use crate::pipeline::{MapperChoice, Pipeline};
use crate::schema::TargetField;
use sample::SampleRun;

/// Rows of the sample a review shows at most.
pub const MAX_ROWS: usize = 10_000;
/// Example rows shown per field and per candidate.
const EXAMPLES: usize = 5;
/// Candidates per field whose own sample run is shown.
const CANDIDATES: usize = 3;
/// Distinct source values listed in a field's value table at most.
const VALUE_ROWS: usize = 50;
/// Below this confidence a mapped field asks for a look.
pub const LOW_CONFIDENCE: f64 = 0.8;

/// A reviewer's decision on one field, as the page sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The expression to use; `None` leaves the field unmapped.
    pub expr: Option<String>,
    /// Value-table corrections: a source value → the allowed value it stands for.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// The reviewer looked at the field and keeps what it says.
    #[serde(default)]
    pub reviewed: bool,
}

/// Decisions by target field.
pub type Decisions = BTreeMap<String, Decision>;

/// Why a field asks for a reviewer's attention; the page lists fields in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Unmapped, though the matcher has candidates for it.
    Undecided,
    /// Mapped below [`LOW_CONFIDENCE`].
    LowConfidence,
    /// Its value table leaves source values unplaced.
    Unplaced,
    /// Rows of the sample fail on it.
    Failing,
    /// Mapped with confidence, and its rows pass.
    Fine,
    /// Unmapped, and no column is a candidate.
    NoCandidate,
}

impl Attention {
    /// The label the page shows.
    pub fn label(self) -> &'static str {
        match self {
            Attention::Undecided => "undecided",
            Attention::LowConfidence => "low confidence",
            Attention::Unplaced => "unplaced values",
            Attention::Failing => "rows fail",
            Attention::Fine => "fine",
            Attention::NoCandidate => "no candidate",
        }
    }
}

/// One row of a field as the page shows it: the source's value(s), what the expression made
/// of them, and the row's error on this field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// Source value(s) the expression reads (`a | b` for several columns).
    pub source: Option<String>,
    /// The mapped value.
    pub mapped: Option<String>,
    /// Why the row fails on this field, if it does.
    pub error: Option<String>,
}

/// Whose candidates a review runs on the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every field's (the static page, programs).
    Everything,
    /// The first `n` fields that need attention, and every decided one (the served page; the
    /// others are run when the reviewer unfolds them).
    FirstLook(usize),
}

/// A candidate with what it would make of the sample.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateReview {
    /// The candidate as the document ranks it.
    pub candidate: Candidate,
    /// Example rows under this candidate.
    pub examples: Vec<Example>,
    /// Sample rows that would fail on the field.
    pub failing: usize,
    /// Why the candidate does not compile, if it does not.
    pub error: Option<String>,
    /// Whether it was run on the sample (`examples` and `failing` are then its own).
    pub sampled: bool,
}

/// One distinct source value of an enum field: how often the sample has it and where the
/// expression puts it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueRow {
    /// The source value as text.
    pub value: String,
    /// Sample rows with it.
    pub count: usize,
    /// What the expression makes of it.
    pub mapped: Option<String>,
    /// Whether that is an allowed value.
    pub placed: bool,
}

/// Everything the page shows of one field.
#[derive(Debug, Clone, Serialize)]
pub struct FieldReview {
    /// Target field name.
    pub name: String,
    /// Its JSON type (`string`, `integer`, `date`, …).
    pub kind: String,
    /// Listed in `required`.
    pub required: bool,
    /// The schema's description.
    pub description: Option<String>,
    /// Allowed values, for an enum field.
    pub allowed: Vec<String>,
    /// The mapping as it stands with the decisions applied.
    pub mapping: FieldMapping,
    /// The expression the proposal or stored document had, before any decision.
    pub proposed: Option<String>,
    /// Why it asks for attention.
    pub attention: Attention,
    /// Sample rows with an error on the field.
    pub failing: usize,
    /// Its errors on the sample, by message, with counts.
    pub reasons: Vec<(String, usize)>,
    /// Example rows, failing ones first.
    pub examples: Vec<Example>,
    /// Ranked candidates with their own examples.
    pub candidates: Vec<CandidateReview>,
    /// For an enum field read from one column: its distinct source values.
    pub value_table: Vec<ValueRow>,
    /// The reviewer's decision, when there is one.
    pub decision: Option<Decision>,
    /// Why the decision's expression does not compile (the sample then runs without it).
    pub decision_error: Option<String>,
}

/// A source's mapping and sample as read once for a review: the base every set of decisions
/// is applied to.
#[derive(Debug, Clone)]
pub struct ReviewBase {
    /// The source.
    pub source: String,
    /// The stored document when it settles the source's mapping, else a new proposal (made
    /// in memory; nothing is written).
    pub document: MappingDocument,
    /// Where the document is pinned.
    pub path: PathBuf,
    /// The stored document's version when the base was read ([`version_of`]).
    pub version: String,
    /// Whether the document was read from the store.
    pub stored: bool,
    /// The source's columns (without provenance).
    pub data_schema: Arc<Schema>,
    /// The sample rows.
    pub rows: RecordBatch,
}

/// A review of one source with a set of decisions applied.
#[derive(Debug, Clone)]
pub struct SourceReview {
    /// What it was made from.
    pub base: Arc<ReviewBase>,
    /// The document with the decisions applied: what "Pin" writes.
    pub document: MappingDocument,
    /// The sample run of that document.
    pub run: SampleRun,
    /// Every target field, in attention order.
    pub fields: Vec<FieldReview>,
    /// The decisions applied.
    pub decisions: Decisions,
}

impl SourceReview {
    /// Sample rows.
    pub fn rows(&self) -> usize {
        self.base.rows.num_rows()
    }

    /// Fields with an expression.
    pub fn mapped(&self) -> usize {
        self.document
            .fields
            .values()
            .filter(|m| m.expr.is_some())
            .count()
    }

    /// Mean confidence of the mapped fields.
    pub fn mean_confidence(&self) -> f64 {
        let c: Vec<f64> = self
            .document
            .fields
            .values()
            .filter(|m| m.expr.is_some())
            .map(|m| m.confidence)
            .collect();
        if c.is_empty() {
            0.0
        } else {
            c.iter().sum::<f64>() / c.len() as f64
        }
    }

    /// The review as JSON, for programs (the Python package's `conform.review`): the source,
    /// the document's path and version, the summary, the document with the decisions applied,
    /// every field in attention order, and the sample's invalid rows.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.base.source,
            "path": self.base.path.display().to_string(),
            "base": self.base.version,
            "stored": self.base.stored,
            "summary": {
                "fields": self.fields.len(),
                "mapped": self.mapped(),
                "mean_confidence": self.mean_confidence(),
                "rows": self.rows(),
                "valid": self.run.valid_rows(),
                "invalid": self.rows() - self.run.valid_rows(),
            },
            "document": self.document,
            "fields": self.fields,
            "invalid_rows": self.run.invalid,
        })
    }

    /// Decisions whose expression does not compile.
    pub fn decision_errors(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter_map(|f| Some((f.name.as_str(), f.decision_error.as_deref()?)))
            .collect()
    }
}

/// Writes `sections` as the self-contained, read-only page of `conform review --html`
/// (atomically: an interrupted write leaves no half page).
pub fn write_html(
    path: &Path,
    sections: &[(String, std::result::Result<SourceReview, String>)],
    redact: bool,
) -> Result<()> {
    crate::fs::atomic_write(path, page::render_static(sections, redact).as_bytes())
}

/// What a pin wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pinned {
    /// The pinned document.
    pub path: PathBuf,
    /// Where the document it replaced was kept, if there was one.
    pub previous: Option<PathBuf>,
    /// The new document's version.
    pub version: String,
    /// The review entries added.
    pub entries: Vec<ReviewEntry>,
}

/// The version of the document stored at `path`: a hash of its text, `none` when there is
/// no document. A pin is refused when the version changed since its page was made.
pub fn version_of(path: &Path) -> Result<String> {
    Ok(
        match crate::store::read_text_optional("mapping document", path)? {
            Some(text) => {
                let hash = Sha256::digest(text.as_bytes());
                hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
            }
            None => "none".to_string(),
        },
    )
}

/// The reviewer's name: `given`, else the operating-system user, else `unknown`.
pub fn reviewer(given: Option<&str>) -> String {
    let named = |s: &String| !s.trim().is_empty();
    given
        .map(str::to_string)
        .filter(named)
        .or_else(|| std::env::var("USER").ok().filter(named))
        .or_else(|| std::env::var("LOGNAME").ok().filter(named))
        .or_else(|| std::env::var("USERNAME").ok().filter(named))
        .unwrap_or_else(|| "unknown".to_string())
}

impl ReviewBase {
    /// Reads source `name`'s mapping (stored, or proposed as `conform map` would, in memory)
    /// and its first `rows` rows. The pipeline should be made with
    /// [`Pipeline::without_learning`] so that proposing writes nothing.
    pub async fn load(
        pipeline: &Pipeline,
        name: &str,
        choice: MapperChoice,
        rows: usize,
    ) -> Result<ReviewBase> {
        let rows = rows.clamp(1, MAX_ROWS);
        let path = pipeline.mapping_path(name);
        let version = version_of(&path)?;
        let prepared = pipeline.prepare(name, choice).await?;
        let source = prepared.source.clone();
        let sample = tokio::task::spawn_blocking(move || source.sample(rows))
            .await
            .map_err(|e| Error::Internal(format!("a reader thread failed: {e}")))??;
        Ok(ReviewBase {
            source: name.to_string(),
            document: prepared.document,
            path,
            version,
            stored: prepared.stored,
            data_schema: prepared.source.data_schema(),
            rows: sample,
        })
    }

    /// Compiles one expression for a field, as the page asks while a reviewer types: the
    /// compiler's message (with its hints) when it fails, else the columns it reads.
    pub fn check(
        &self,
        pipeline: &Pipeline,
        field: &str,
        expr: &str,
    ) -> Result<std::result::Result<Vec<String>, String>> {
        let t = self.target_field(pipeline, field)?;
        Ok(compile_field(
            pipeline.session(),
            &self.data_schema,
            &t.name,
            &t.kind.data_type(),
            Some(expr),
        )
        .map(|c| c.sources))
    }

    fn target_field<'a>(&self, pipeline: &'a Pipeline, field: &str) -> Result<&'a TargetField> {
        pipeline.target().field(field).ok_or_else(|| {
            Error::mapping(
                &self.source,
                format!("`{field}` is not a field of the target schema"),
            )
        })
    }

    /// The ranked candidates of `names` (fields of `document`), each run on the sample: one
    /// plan per rank, holding only those fields' candidates, so that the cost follows what is
    /// shown and not the width of the target.
    pub async fn candidate_reviews(
        &self,
        pipeline: &Pipeline,
        document: &MappingDocument,
        names: &[&str],
    ) -> Result<BTreeMap<String, Vec<CandidateReview>>> {
        // Only the named fields are planned: a plan's cost follows its fields, and a wide
        // target's others would be nulls.
        let target = &pipeline.target().only(names);
        let ctx = pipeline.session();
        let ranks = names
            .iter()
            .filter_map(|n| document.fields.get(*n))
            .map(|m| m.candidates.len())
            .max()
            .unwrap_or(0)
            .min(CANDIDATES);
        let mut out: BTreeMap<String, Vec<CandidateReview>> = BTreeMap::new();
        for k in 0..ranks {
            let mut errors: BTreeMap<&str, String> = BTreeMap::new();
            let mut compiled = Vec::with_capacity(target.fields.len());
            for t in &target.fields {
                let text = names
                    .contains(&t.name.as_str())
                    .then(|| document.fields.get(&t.name))
                    .flatten()
                    .and_then(|m| m.candidates.get(k))
                    .map(|c| c.expr.as_str());
                let dt = t.kind.data_type();
                compiled.push(
                    compile_field(ctx, &self.data_schema, &t.name, &dt, text).unwrap_or_else(|e| {
                        errors.insert(t.name.as_str(), e);
                        compile_field(ctx, &self.data_schema, &t.name, &dt, None)
                            .expect("a null of the field's type compiles")
                    }),
                );
            }
            let run = sample::run(ctx, target, &self.data_schema, &self.rows, compiled).await?;
            for (i, t) in target.fields.iter().enumerate() {
                if !names.contains(&t.name.as_str()) {
                    continue;
                }
                let Some(c) = document
                    .fields
                    .get(&t.name)
                    .and_then(|m| m.candidates.get(k))
                else {
                    continue;
                };
                let values = sample::source_values(&self.rows, &c.sources)?;
                out.entry(t.name.clone())
                    .or_default()
                    .push(CandidateReview {
                        candidate: c.clone(),
                        examples: examples_of(&run, i, &t.name, &values),
                        failing: run.failing(&t.name),
                        error: errors.get(t.name.as_str()).cloned(),
                        sampled: true,
                    });
            }
        }
        // Candidates past the ranks that are run are listed without rows.
        for name in names {
            let Some(m) = document.fields.get(*name) else {
                continue;
            };
            let list = out.entry(name.to_string()).or_default();
            for c in m.candidates.iter().skip(list.len()) {
                list.push(CandidateReview {
                    candidate: c.clone(),
                    examples: vec![],
                    failing: 0,
                    error: None,
                    sampled: false,
                });
            }
        }
        Ok(out)
    }

    /// The review with `decisions` applied: the document they make and its sample run, with
    /// the candidates of the fields `scope` names run too. A decision naming no target field is an error; one
    /// whose expression does not compile is reported on its field and not applied.
    pub async fn review(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        decisions: &Decisions,
        scope: Scope,
    ) -> Result<SourceReview> {
        let target = pipeline.target();
        let ctx = pipeline.session();
        for name in decisions.keys() {
            self.target_field(pipeline, name)?;
        }
        let mut document = self.document.clone();
        let mut decision_errors: BTreeMap<String, String> = BTreeMap::new();
        let mut compiled: Vec<CompiledField> = Vec::with_capacity(target.fields.len());
        for t in &target.fields {
            let current = document.fields.get(&t.name).cloned();
            let compile = |text: Option<&str>| {
                compile_field(ctx, &self.data_schema, &t.name, &t.kind.data_type(), text)
            };
            let decided = decisions.get(&t.name).and_then(|d| {
                let text = with_values(ctx, d.expr.as_deref(), &d.values, t, &self.data_schema);
                match text {
                    Err(e) => {
                        decision_errors.insert(t.name.clone(), e);
                        None
                    }
                    Ok(text) => match compile(text.as_deref()) {
                        Ok(c) => Some((text, c)),
                        Err(e) => {
                            decision_errors.insert(t.name.clone(), e);
                            None
                        }
                    },
                }
            });
            let field = match decided {
                Some((text, c)) => {
                    let m = document
                        .fields
                        .entry(t.name.clone())
                        .or_insert_with(FieldMapping::unmapped);
                    if m.expr != text {
                        m.expr = text;
                        m.confidence = if m.expr.is_some() { 1.0 } else { 0.0 };
                        m.rationale = "chosen by a reviewer".to_string();
                        m.error = None;
                        m.value_coverage = None;
                        m.unplaced_values.clear();
                    }
                    m.sources = c.sources.clone();
                    c
                }
                None => {
                    let text = current.as_ref().and_then(|m| m.expr.clone());
                    compile(text.as_deref()).unwrap_or_else(|_| {
                        compile(None).expect("a null of the field's type compiles")
                    })
                }
            };
            compiled.push(field);
        }
        let run = sample::run(ctx, target, &self.data_schema, &self.rows, compiled).await?;

        let mut fields = Vec::with_capacity(target.fields.len());
        for (i, t) in target.fields.iter().enumerate() {
            let m = document
                .fields
                .get(&t.name)
                .cloned()
                .unwrap_or_else(FieldMapping::unmapped);
            let source_values = sample::source_values(&self.rows, &m.sources)?;
            // An unmapped field's rows are all null: its candidates' rows are what to look at.
            let examples = if m.expr.is_some() {
                examples_of(&run, i, &t.name, &source_values)
            } else {
                Vec::new()
            };
            let failing = run.failing(&t.name);
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            for (_, e) in run.errors_of(&t.name) {
                *reasons.entry(e.message.clone()).or_default() += 1;
            }
            let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            // Candidates' own sample rows are run below, for the fields `scope` asks for.
            let candidates = m
                .candidates
                .iter()
                .map(|c| CandidateReview {
                    candidate: c.clone(),
                    examples: vec![],
                    failing: 0,
                    error: None,
                    sampled: false,
                })
                .collect();
            let allowed: Vec<String> = t
                .constraints
                .enum_values
                .iter()
                .flatten()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let value_table = if allowed.is_empty() || m.sources.len() != 1 {
                vec![]
            } else {
                value_table(&run, i, &source_values, &allowed)
            };
            let unplaced = value_table.iter().any(|v| !v.placed) || !m.unplaced_values.is_empty();
            let attention = if m.expr.is_none() {
                if m.candidates.is_empty() {
                    Attention::NoCandidate
                } else {
                    Attention::Undecided
                }
            } else if m.confidence < LOW_CONFIDENCE {
                Attention::LowConfidence
            } else if unplaced {
                Attention::Unplaced
            } else if failing > 0 {
                Attention::Failing
            } else {
                Attention::Fine
            };
            fields.push(FieldReview {
                name: t.name.clone(),
                kind: t.kind.json_name().to_string(),
                required: t.required,
                description: t.description.clone(),
                allowed,
                proposed: self
                    .document
                    .fields
                    .get(&t.name)
                    .and_then(|m| m.expr.clone()),
                mapping: m,
                attention,
                failing,
                reasons,
                examples,
                candidates,
                value_table,
                decision: decisions.get(&t.name).cloned(),
                decision_error: decision_errors.remove(&t.name),
            });
        }
        // Attention first; within it, more failing rows, then the likeliest fix first: an
        // undecided field by its best candidate's score, a mapped one by its lowest
        // confidence; ties keep the schema's order (the sort is stable).
        let weight = |f: &FieldReview| match f.attention {
            Attention::Undecided => -f.mapping.candidates.first().map_or(0.0, |c| c.score),
            _ => f.mapping.confidence,
        };
        fields.sort_by(|a, b| {
            a.attention
                .cmp(&b.attention)
                .then(b.failing.cmp(&a.failing))
                .then(weight(a).total_cmp(&weight(b)))
        });
        let wanted: Vec<String> = match scope {
            Scope::Everything => fields.iter().map(|f| f.name.clone()).collect(),
            Scope::FirstLook(n) => {
                let mut wanted: Vec<String> = fields
                    .iter()
                    .filter(|f| f.attention < Attention::Fine && !f.candidates.is_empty())
                    .take(n)
                    .map(|f| f.name.clone())
                    .collect();
                for f in fields.iter().filter(|f| f.decision.is_some()) {
                    if !wanted.contains(&f.name) {
                        wanted.push(f.name.clone());
                    }
                }
                wanted
            }
        };
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut sampled = self.candidate_reviews(pipeline, &document, &wanted).await?;
        for f in &mut fields {
            if let Some(c) = sampled.remove(&f.name) {
                f.candidates = c;
            }
        }
        Ok(SourceReview {
            base: Arc::clone(self),
            document,
            run,
            fields,
            decisions: decisions.clone(),
        })
    }
}

/// A field's example rows: failing rows first, then others, [`EXAMPLES`] in all.
fn examples_of(run: &SampleRun, i: usize, field: &str, source: &[Option<String>]) -> Vec<Example> {
    // The first error of each failing row, in row order.
    let mut first: Vec<(usize, &str)> = Vec::new();
    for (r, e) in run.errors_of(field) {
        if first.last().is_none_or(|(last, _)| *last != r) {
            first.push((r, &e.message));
        }
    }
    let error_of = |r: usize| {
        first
            .binary_search_by_key(&r, |(row, _)| *row)
            .ok()
            .map(|k| first[k].1.to_string())
    };
    let failing = first.iter().map(|(r, _)| *r);
    let passing = (0..run.mapped.len()).filter(|&r| error_of(r).is_none());
    failing
        .take(EXAMPLES)
        .chain(passing)
        .take(EXAMPLES)
        .map(|r| Example {
            source: source.get(r).cloned().flatten(),
            mapped: run.mapped[r][i].clone(),
            error: error_of(r),
        })
        .collect()
}

/// The distinct source values of an enum field read from one column, most frequent first.
fn value_table(
    run: &SampleRun,
    i: usize,
    source: &[Option<String>],
    allowed: &[String],
) -> Vec<ValueRow> {
    let mut seen: BTreeMap<&str, (usize, Option<String>)> = BTreeMap::new();
    for (r, v) in source.iter().enumerate() {
        let Some(v) = v else { continue };
        let e = seen
            .entry(v.as_str())
            .or_insert((0, run.mapped[r][i].clone()));
        e.0 += 1;
    }
    let mut rows: Vec<ValueRow> = seen
        .into_iter()
        .map(|(value, (count, mapped))| ValueRow {
            value: value.to_string(),
            count,
            placed: mapped.as_ref().is_some_and(|m| allowed.contains(m)),
            mapped,
        })
        .collect();
    rows.sort_by(|a, b| a.placed.cmp(&b.placed).then(b.count.cmp(&a.count)));
    rows.truncate(VALUE_ROWS);
    rows
}

/// The decision's expression with its value corrections in front of it: a `CASE` over the
/// field's one source column that places the corrected values and leaves every other value
/// to the expression. `Ok(None)` leaves the field unmapped.
fn with_values(
    ctx: &datafusion::prelude::SessionContext,
    expr: Option<&str>,
    values: &BTreeMap<String, String>,
    t: &TargetField,
    data_schema: &Schema,
) -> std::result::Result<Option<String>, String> {
    let Some(expr) = expr.map(str::trim).filter(|e| !e.is_empty()) else {
        return if values.is_empty() {
            Ok(None)
        } else {
            Err("value corrections need an expression to correct".to_string())
        };
    };
    if values.is_empty() {
        return Ok(Some(expr.to_string()));
    }
    let allowed: Vec<String> = t
        .constraints
        .enum_values
        .iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for to in values.values() {
        if !allowed.contains(to) {
            return Err(format!("`{to}` is not an allowed value of `{}`", t.name));
        }
    }
    // The column the expression reads, as the compiler finds it.
    let sources =
        compile_field(ctx, data_schema, &t.name, &t.kind.data_type(), Some(expr))?.sources;
    let [column] = sources.as_slice() else {
        return Err("value corrections apply to an expression that reads one column".to_string());
    };
    let mut case = format!("CASE CAST({} AS VARCHAR)", crate::sql::quote(column));
    for (from, to) in values {
        case.push_str(&format!(
            " WHEN {} THEN {}",
            crate::sql::literal(from),
            crate::sql::literal(to)
        ));
    }
    case.push_str(&format!(" ELSE ({expr}) END"));
    Ok(Some(case))
}

/// The review entries a pin records: one per decision that changed or confirmed a field.
fn entries(review: &SourceReview, by: &str, at: &str) -> Vec<ReviewEntry> {
    let mut out = Vec::new();
    for (field, d) in &review.decisions {
        let before = review
            .base
            .document
            .fields
            .get(field)
            .and_then(|m| m.expr.clone());
        let after = review
            .document
            .fields
            .get(field)
            .and_then(|m| m.expr.clone());
        let mut changes = Vec::new();
        for (from, to) in &d.values {
            changes.push(format!(
                "value {} → {}",
                crate::sql::literal(from),
                crate::sql::literal(to)
            ));
        }
        let change = match (&before, &after) {
            (b, a) if b == a => {
                if changes.is_empty() {
                    if !d.reviewed {
                        continue;
                    }
                    "reviewed, kept".to_string()
                } else {
                    changes.join("; ")
                }
            }
            (Some(b), None) => format!("left unmapped (was `{b}`)"),
            (None, Some(a)) => format!("expr `{a}` (was unmapped)"),
            (Some(b), Some(a)) => {
                if changes.is_empty() {
                    format!("expr `{b}` → `{a}`")
                } else {
                    changes.join("; ")
                }
            }
            (None, None) => "left unmapped".to_string(),
        };
        out.push(ReviewEntry {
            field: field.clone(),
            by: by.to_string(),
            at: at.to_string(),
            change,
        });
    }
    out
}

/// Writes the reviewed document, pinned, to the base's path: refused when a decision does
/// not compile, or when the stored document changed since the base was read (another tab,
/// another process, `conform map`). The document it replaces is kept beside it as
/// `NAME.previous.json`. Callers serialise pins of one source ([`serve`] does).
pub fn pin(review: &SourceReview, by: &str) -> Result<Pinned> {
    let base = &review.base;
    let errors = review.decision_errors();
    if let Some((field, e)) = errors.first() {
        return Err(Error::mapping(
            &base.source,
            format!("not pinned: the expression for `{field}` does not compile: {e}"),
        ));
    }
    let now = version_of(&base.path)?;
    if now != base.version {
        return Err(Error::mapping(
            &base.source,
            format!(
                "not pinned: {} changed since this review was loaded (version {} → {now}); reload the page to review the document as it is now",
                base.path.display(),
                base.version
            ),
        ));
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let added = entries(review, by, &at);
    let mut doc = review.document.clone();
    doc.pinned = true;
    doc.reviews.extend(added.iter().cloned());
    let previous = match crate::store::read_text_optional("mapping document", &base.path)? {
        Some(text) => {
            let beside = base.path.with_extension("previous.json");
            crate::fs::atomic_write(&beside, text.as_bytes())?;
            Some(beside)
        }
        None => None,
    };
    doc.save(&base.path)?;
    Ok(Pinned {
        path: base.path.clone(),
        previous,
        version: version_of(&base.path)?,
        entries: added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    fn status_field() -> TargetField {
        let schema = crate::schema::TargetSchema::try_new(&serde_json::json!({
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["Active", "On hold"]}}
        }))
        .unwrap();
        schema.fields[0].clone()
    }

    fn columns() -> Schema {
        Schema::new(vec![
            Field::new("state", DataType::Utf8, true),
            Field::new("other", DataType::Utf8, true),
        ])
    }

    #[test]
    fn value_corrections_become_a_case_in_front_of_the_expression() {
        let ctx = crate::mapping::compile::session();
        let t = status_field();
        let values = BTreeMap::from([("it's held".to_string(), "On hold".to_string())]);
        let e = with_values(&ctx, Some("clean(\"state\")"), &values, &t, &columns()).unwrap();
        assert_eq!(
            e.as_deref(),
            Some(
                "CASE CAST(\"state\" AS VARCHAR) WHEN 'it''s held' THEN 'On hold' ELSE (clean(\"state\")) END"
            )
        );
        // What it writes compiles.
        compile_field(&ctx, &columns(), "status", &DataType::Utf8, e.as_deref()).unwrap();
        // Without corrections the expression is kept as it is; an empty one unmaps.
        let none = BTreeMap::new();
        assert_eq!(
            with_values(&ctx, Some(" lower(\"state\") "), &none, &t, &columns()).unwrap(),
            Some("lower(\"state\")".to_string())
        );
        assert_eq!(
            with_values(&ctx, Some(" "), &none, &t, &columns()).unwrap(),
            None
        );
    }

    #[test]
    fn value_corrections_are_refused_where_they_cannot_apply() {
        let ctx = crate::mapping::compile::session();
        let t = status_field();
        let bad = BTreeMap::from([("x".to_string(), "Gone".to_string())]);
        let e = with_values(&ctx, Some("clean(\"state\")"), &bad, &t, &columns()).unwrap_err();
        assert!(e.contains("`Gone` is not an allowed value"), "{e}");
        let ok = BTreeMap::from([("x".to_string(), "Active".to_string())]);
        let e = with_values(
            &ctx,
            Some("concat(\"state\", \"other\")"),
            &ok,
            &t,
            &columns(),
        )
        .unwrap_err();
        assert!(e.contains("reads one column"), "{e}");
        let e = with_values(&ctx, None, &ok, &t, &columns()).unwrap_err();
        assert!(e.contains("need an expression"), "{e}");
        let e = with_values(&ctx, Some("nope(\"state\")"), &ok, &t, &columns()).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn the_reviewer_is_named_or_taken_from_the_environment() {
        assert_eq!(reviewer(Some("ana")), "ana");
        // A blank name is no name: the environment's (or `unknown`) is used instead.
        assert_eq!(reviewer(Some("  ")), reviewer(None));
        assert!(!reviewer(None).trim().is_empty());
    }
}
