//! The feedback loop: a candidate mapping is validated on a probe of the source (its first rows),
//! the failures are summarised in an error digest (per field and rule: count, share, failing
//! source values, the expression), and repairs are tried — offline repair rules, or a revision
//! by the model. A repair is kept only if it raises the probe's valid share: the loop changes the
//! mapping, never individual rows, so rows whose data is wrong stay invalid.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{DataFrame, SessionContext};
use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::mapping::{MappingDocument, compile};
use crate::schema::{FieldKind, TargetField, TargetSchema};
use crate::source::profile::detect_formats;
use crate::split::split;
use crate::sql::{literal, quote};
use crate::validate::Validator;

/// The digest's rule for a mapped field that is mostly null after conversion.
pub const MOSTLY_NULL: &str = "mostly_null";
/// Failing source values kept per field in the digest.
const EXAMPLES: usize = 5;
/// Failing values looked at to choose a repair.
const EVIDENCE: usize = 200;

/// What failed for one target field on the probe.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FieldDigest {
    /// Rows with at least one error on this field.
    pub rows: usize,
    /// Share of probe rows.
    pub share: f64,
    /// Rule → rows.
    pub rules: BTreeMap<String, usize>,
    /// A few distinct failing source values (masked when samples are redacted).
    pub examples: Vec<String>,
    /// Probe rows where the field is null after conversion (counted for mapped fields that
    /// are mostly null).
    #[serde(skip_serializing_if = "is_zero")]
    pub nulls: usize,
    /// The field's expression.
    pub expr: Option<String>,
    /// More failing values, for choosing a repair (not reported).
    #[serde(skip)]
    pub evidence: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The result of validating a mapping on the probe.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probe {
    /// Rows probed.
    pub rows: usize,
    /// Invalid rows.
    pub invalid: usize,
    /// Per target field with failures, in target order.
    pub fields: IndexMap<String, FieldDigest>,
    /// Values lost to null over the mapped fields that are mostly null (ties between candidates
    /// with the same valid share go to fewer).
    pub nulls: usize,
    /// Fields the probed document maps.
    pub mapped: usize,
}

impl Probe {
    /// Share of valid rows (1 for an empty probe).
    pub fn valid_share(&self) -> f64 {
        if self.rows == 0 {
            1.0
        } else {
            1.0 - self.invalid as f64 / self.rows as f64
        }
    }

    /// Share of invalid rows.
    pub fn invalid_share(&self) -> f64 {
        1.0 - self.valid_share()
    }

    /// Whether the loop should try to do better: too many invalid rows, or a mapped field that
    /// is mostly null.
    pub fn needs_repair(&self, max_invalid_ratio: f64) -> bool {
        self.invalid_share() > max_invalid_ratio || self.nulls > 0
    }

    /// Whether this probe is better than `other`: more valid rows; or as many, and more fields
    /// mapped (a revision that maps fields the first answer left out is progress, though its
    /// new fields may be null on some rows); or as many of both and fewer values lost to null.
    pub fn better_than(&self, other: &Probe) -> bool {
        if self.invalid != other.invalid {
            return self.invalid < other.invalid;
        }
        if self.mapped != other.mapped {
            return self.mapped > other.mapped;
        }
        self.nulls < other.nulls
    }

    /// The digest as one text (the revision sends it in parts: [`Self::digest_parts`]).
    #[cfg(test)]
    pub fn digest_text(&self, redact: bool) -> String {
        let (mut s, lines) = self.digest_parts(redact);
        for l in lines.values() {
            s.push_str(l);
        }
        s
    }

    /// The digest's first line, and each failing field's lines (one per rule): what a
    /// revision of some of the fields needs.
    pub fn digest_parts(&self, redact: bool) -> (String, IndexMap<String, String>) {
        let head = format!(
            "Validation of the mapping on the first {} rows: {} invalid ({:.1}%).\n",
            self.rows,
            self.invalid,
            self.invalid_share() * 100.0
        );
        let mut lines = IndexMap::new();
        for (field, d) in &self.fields {
            let mut s = String::new();
            let examples: Vec<String> = d
                .examples
                .iter()
                .map(|e| {
                    if redact {
                        crate::mapping::llm::prompt::mask(e)
                    } else {
                        e.clone()
                    }
                })
                .collect();
            for (rule, n) in &d.rules {
                let values = if rule == MOSTLY_NULL {
                    "null after conversion although the field is mapped".to_string()
                } else {
                    format!(
                        "failing source values {}",
                        serde_json::to_string(&examples).unwrap_or_default()
                    )
                };
                s.push_str(&format!(
                    "- {field} ({rule}): {n} rows ({:.1}%); expression `{}`; {values}\n",
                    *n as f64 * 100.0 / self.rows.max(1) as f64,
                    d.expr.as_deref().unwrap_or("null"),
                ));
            }
            lines.insert(field.clone(), s);
        }
        (head, lines)
    }
}

/// Validates `doc` on the probe rows. A document that does not compile is an error. A mapped
/// field that is null in more than `max_null_ratio` of the rows gets a `mostly_null` entry.
pub async fn probe(
    ctx: &SessionContext,
    target: &TargetSchema,
    data_schema: &Schema,
    rows: &RecordBatch,
    doc: &MappingDocument,
    max_null_ratio: f64,
) -> Result<Probe> {
    let mapping = compile(ctx, doc, data_schema, target)?;
    let validator = Validator::for_mapping(target, &mapping);
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?;
    let scan = LogicalPlanBuilder::scan("probe", provider_as_source(Arc::new(table)), None)?;
    let (plan, layout) = crate::plan::build(scan, data_schema, &mapping, &validator)?;
    let batches = DataFrame::new(ctx.state(), plan).collect().await?;
    let valid_schema = target.valid_arrow_schema();
    let mut out = Probe {
        rows: rows.num_rows(),
        mapped: doc.fields.values().filter(|m| m.expr.is_some()).count(),
        ..Default::default()
    };
    let mut fields: BTreeMap<String, FieldDigest> = BTreeMap::new();
    let mut nulls = vec![0usize; layout.n_targets];
    for b in &batches {
        for (i, n) in nulls.iter_mut().enumerate() {
            *n += b.column(i).null_count();
        }
        let (_, invalid) = split(b, &layout, &validator.checks, &valid_schema)?;
        out.invalid += invalid.len();
        for row in invalid {
            let record = row.record.to_map();
            let mut seen_fields: Vec<&str> = Vec::new();
            for e in &row.errors {
                let Some(f) = e.field.as_deref() else {
                    continue;
                };
                let d = fields.entry(f.to_string()).or_default();
                *d.rules.entry(e.rule.clone()).or_default() += 1;
                if seen_fields.contains(&f) {
                    continue;
                }
                seen_fields.push(f);
                d.rows += 1;
                let sources = mapping
                    .fields
                    .iter()
                    .find(|c| c.name == f)
                    .map(|c| c.sources.as_slice())
                    .unwrap_or(&[]);
                let value: Vec<String> = sources
                    .iter()
                    .filter_map(|c| record.get(c))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                let value = value.join(" | ");
                if !value.is_empty() && d.evidence.len() < EVIDENCE && !d.evidence.contains(&value)
                {
                    if d.examples.len() < EXAMPLES {
                        d.examples.push(value.clone());
                    }
                    d.evidence.push(value);
                }
            }
        }
    }
    for (name, n) in layout.targets.iter().zip(nulls) {
        let mapped = doc.fields.get(name).is_some_and(|m| m.expr.is_some());
        if mapped && out.rows > 0 && n as f64 > max_null_ratio * out.rows as f64 {
            let d = fields.entry(name.clone()).or_default();
            d.rules.insert(MOSTLY_NULL.into(), n);
            d.nulls = n;
            out.nulls += n;
        }
    }
    for t in &target.fields {
        if let Some(mut d) = fields.remove(&t.name) {
            d.share = d.rows as f64 / out.rows.max(1) as f64;
            d.expr = doc.fields.get(&t.name).and_then(|m| m.expr.clone());
            out.fields.insert(t.name.clone(), d);
        }
    }
    Ok(out)
}

/// Offline repairs for a failing field, most specific first: a date format read from the failing
/// values, `parse_number` for amounts with currency signs and separators, `parse_bool` for
/// yes/no words, case folding for enums, empty strings as null. Each is an expression over the
/// field's one source column.
pub fn repairs(t: &TargetField, column: &str, column_values: &[&str]) -> Vec<(String, String)> {
    let c = quote(column);
    let mut out = Vec::new();
    match &t.kind {
        FieldKind::Date | FieldKind::DateTime => {
            let formats = detect_formats(column_values, t.kind == FieldKind::Date);
            if !formats.is_empty() {
                let f = formats
                    .iter()
                    .map(|f| literal(f))
                    .collect::<Vec<_>>()
                    .join(", ");
                let func = if t.kind == FieldKind::Date {
                    "try_to_date"
                } else {
                    "try_to_timestamp"
                };
                out.push((
                    format!("{func}(clean({c}), {f})"),
                    format!("date formats {} read from the values", formats.join(", ")),
                ));
            }
        }
        FieldKind::Integer => {
            out.push((
                format!("CAST(parse_number({c}) AS BIGINT)"),
                "numbers with signs or separators".into(),
            ));
        }
        FieldKind::Number => out.push((
            format!("parse_number({c})"),
            "numbers with currency signs or separators".into(),
        )),
        FieldKind::Boolean => out.push((format!("parse_bool({c})"), "yes/no words".into())),
        FieldKind::String => {
            if t.constraints.enum_values.is_some() {
                out.push((
                    format!("lower(clean({c}))"),
                    "enum values lower-cased".into(),
                ));
                out.push((
                    format!("upper(clean({c}))"),
                    "enum values upper-cased".into(),
                ));
            }
            out.push((
                format!("nullif(clean({c}), '')"),
                "trimmed, empty as null".into(),
            ));
        }
        _ => {}
    }
    out
}

/// One round of the loop, for `run_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: u32,
    /// Who proposed the change: `heuristic` or `llm`.
    pub by: &'static str,
    /// Field → (expression before, after, why).
    pub changes: IndexMap<String, Change>,
    /// Invalid share of the probe before the round.
    pub invalid_share_before: f64,
    /// Invalid share with the round's changes.
    pub invalid_share_after: f64,
    /// Whether the changes were kept (they lowered the invalid share).
    pub kept: bool,
}

/// A changed expression.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Before.
    pub before: Option<String>,
    /// After.
    pub after: Option<String>,
    /// Why.
    pub why: String,
}

/// What the loop did for a source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedbackReport {
    /// Rows probed.
    pub probe_rows: usize,
    /// Invalid share of the first candidate.
    pub invalid_share_initial: f64,
    /// Invalid share of the kept mapping.
    pub invalid_share_final: f64,
    /// The digest of the first candidate (per failing field).
    pub digest: IndexMap<String, FieldDigest>,
    /// Every round, kept or not.
    pub rounds: Vec<Round>,
    /// Why the model's revision failed (timeout, unreadable reply), when it did: the loop then
    /// keeps the best mapping it has instead of failing the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_error: Option<String>,
}

/// The values of one column of the probe, as text.
fn column_text(rows: &RecordBatch, column: &str) -> Vec<String> {
    let Some(col) = rows.column_by_name(column) else {
        return vec![];
    };
    crate::functions::column_to_json(col)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

/// Everything the loop needs.
pub struct Loop<'a> {
    /// The session with conform's functions.
    pub ctx: &'a SessionContext,
    /// The target.
    pub target: &'a TargetSchema,
    /// What the mapper looked at (for the model's revision).
    pub request: &'a super::MappingRequest<'a>,
    /// The probe rows (source columns and provenance).
    pub rows: &'a RecordBatch,
    /// Settings.
    pub config: &'a crate::config::FeedbackConfig,
    /// The model, for LLM-made documents.
    pub llm: Option<&'a crate::mapping::llm::LlmMapper>,
    /// Mask sample values in what goes to the model.
    pub redact: bool,
}

impl Loop<'_> {
    /// Probes `doc` and, while too many rows are invalid, tries repairs; returns the best
    /// document found (the input if nothing helped) and what happened.
    pub async fn run(
        &self,
        doc: MappingDocument,
        usage: &mut Option<crate::mapping::llm::LlmUsage>,
    ) -> Result<(MappingDocument, FeedbackReport)> {
        let data_schema = self.request.source_schema.as_ref();
        let mut best = doc;
        // The columns each expression reads, as the compiler finds them (repairs need them).
        for f in compile(self.ctx, &best, data_schema, self.target)?.fields {
            if let Some(m) = best.fields.get_mut(&f.name) {
                m.sources = f.sources;
            }
        }
        let limit = self.config.max_null_ratio;
        let mut best_probe =
            probe(self.ctx, self.target, data_schema, self.rows, &best, limit).await?;
        let mut report = FeedbackReport {
            probe_rows: best_probe.rows,
            invalid_share_initial: best_probe.invalid_share(),
            invalid_share_final: best_probe.invalid_share(),
            digest: best_probe.fields.clone(),
            rounds: vec![],
            revision_error: None,
        };
        // An LLM mapping is revised by the model first; once a revision fails, changes nothing
        // or does not help, the offline repairs get their turn (they fix what they know, such as
        // a date format read from the failing values, without another request).
        let mut model_done = false;
        for round in 1..=self.config.max_rounds {
            if !best_probe.needs_repair(self.config.max_invalid_ratio) {
                break;
            }
            let before = best_probe.invalid_share();
            let (candidate, changes, by) = match (self.llm, best.mapper) {
                (Some(llm), super::MapperKind::Llm) if !model_done => {
                    let usage = usage.get_or_insert_with(Default::default);
                    let (head, lines) = best_probe.digest_parts(self.redact);
                    let (revised, changed) = match llm
                        .revise(self.request, &best, &head, &lines, usage)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            // The first mapping compiled and was probed; a revision that
                            // times out or cannot be read must not cost the source.
                            tracing::warn!(error = %e, "The model's revision failed; keeping the best mapping so far.");
                            report.revision_error = Some(e.to_string());
                            model_done = true;
                            continue;
                        }
                    };
                    let changes = changed
                        .iter()
                        .map(|f| {
                            (
                                f.clone(),
                                Change {
                                    before: best.fields[f].expr.clone(),
                                    after: revised.fields[f].expr.clone(),
                                    why: revised.fields[f].rationale.clone(),
                                },
                            )
                        })
                        .collect::<IndexMap<_, _>>();
                    (revised, changes, "llm")
                }
                _ => {
                    let (doc, changes) = self.heuristic_round(&best, &best_probe).await?;
                    (doc, changes, "heuristic")
                }
            };
            if changes.is_empty() {
                if by == "llm" {
                    // A revision that changes nothing is a round too: the summary shows that
                    // the model was asked and what came of it.
                    report.rounds.push(Round {
                        round,
                        by,
                        changes,
                        invalid_share_before: before,
                        invalid_share_after: before,
                        kept: false,
                    });
                    model_done = true;
                    continue;
                }
                break;
            }
            let after = probe(
                self.ctx,
                self.target,
                data_schema,
                self.rows,
                &candidate,
                limit,
            )
            .await?;
            let kept = after.better_than(&best_probe);
            report.rounds.push(Round {
                round,
                by,
                changes,
                invalid_share_before: before,
                invalid_share_after: after.invalid_share(),
                kept,
            });
            if !kept {
                if by == "llm" {
                    model_done = true;
                    continue;
                }
                break;
            }
            best = candidate;
            best_probe = after;
        }
        report.invalid_share_final = best_probe.invalid_share();
        Ok((best, report))
    }

    /// Tries the offline repairs field by field, keeping each one that raises the valid share.
    async fn heuristic_round(
        &self,
        doc: &MappingDocument,
        current: &Probe,
    ) -> Result<(MappingDocument, IndexMap<String, Change>)> {
        let data_schema = self.request.source_schema.as_ref();
        let mut best = doc.clone();
        // A repair is judged by its own field's failures (fewer, with the field checked
        // alone); the round as a whole must then raise the probe's valid share to be kept.
        let mut changes = IndexMap::new();
        for (field, d) in &current.fields {
            let mostly_null = d.rules.contains_key(MOSTLY_NULL);
            if !mostly_null && !d.rules.keys().any(|r| r == "type" || r == "format") {
                continue; // Range, length or pattern failures are data, not conversions.
            }
            // A conversion that does not fit the data fails on many rows; a few scattered
            // failures are bad values, and trying repairs for them costs probes for nothing.
            if !mostly_null && d.share < self.config.max_invalid_ratio / 2.0 {
                continue;
            }
            let (Some(t), Some(m)) = (self.target.field(field), best.fields.get(field)) else {
                continue;
            };
            let [column] = m.sources.as_slice() else {
                continue;
            };
            let values = column_text(self.rows, column);
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let mut candidates = repairs(t, column, &values);
            if mostly_null && let Some(current) = &m.expr {
                let used: Vec<&str> = best
                    .fields
                    .values()
                    .flat_map(|f| f.sources.iter().map(String::as_str))
                    .collect();
                candidates.extend(crate::mapping::heuristic::fill_ins(
                    t,
                    current,
                    column,
                    self.request.profiles,
                    &used,
                ));
            }
            // Trials plan this field alone: on a wide target, re-planning every field's
            // conversion and checks for each trial would cost far more than the repair.
            let alone = self.target.only(&[field.as_str()]);
            let limit = self.config.max_null_ratio;
            let failing = |p: &Probe| p.fields.get(field).map_or(0, |d| d.rows + d.nulls);
            let one = |expr: Option<String>| {
                let mut doc = best.clone();
                doc.fields.retain(|k, _| k == field);
                doc.fields[field].expr = expr;
                doc
            };
            let Ok(before) = probe(
                self.ctx,
                &alone,
                data_schema,
                self.rows,
                &one(m.expr.clone()),
                limit,
            )
            .await
            else {
                continue;
            };
            for (expr, why) in candidates {
                if m.expr.as_deref() == Some(expr.as_str()) {
                    continue;
                }
                let Ok(p) = probe(
                    self.ctx,
                    &alone,
                    data_schema,
                    self.rows,
                    &one(Some(expr.clone())),
                    limit,
                )
                .await
                else {
                    continue;
                };
                if failing(&p) < failing(&before) {
                    let mut trial = best.clone();
                    trial.fields[field].expr = Some(expr.clone());
                    changes.insert(
                        field.clone(),
                        Change {
                            before: best.fields[field].expr.clone(),
                            after: Some(expr),
                            why: why.clone(),
                        },
                    );
                    trial.fields[field].rationale =
                        format!("{} (repaired: {why})", best.fields[field].rationale);
                    best = trial;
                    break;
                }
            }
        }
        Ok((best, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names_mostly_null_fields_and_candidates_compare_by_nulls_on_ties() {
        let mut fields = IndexMap::new();
        let mut rules = BTreeMap::new();
        rules.insert(MOSTLY_NULL.to_string(), 90);
        fields.insert(
            "email".to_string(),
            FieldDigest {
                rules,
                nulls: 90,
                expr: Some("lower(clean(\"email\"))".into()),
                ..Default::default()
            },
        );
        let p = Probe {
            rows: 100,
            invalid: 0,
            fields,
            nulls: 90,
            mapped: 1,
        };
        let text = p.digest_text(false);
        assert!(
            text.contains("- email (mostly_null): 90 rows (90.0%); expression `lower(clean(\"email\"))`; null after conversion"),
            "{text}"
        );
        assert!(p.needs_repair(0.02));
        let fewer_nulls = Probe {
            nulls: 0,
            ..p.clone()
        };
        assert!(fewer_nulls.better_than(&p) && !p.better_than(&fewer_nulls));
        let fewer_valid = Probe {
            invalid: 1,
            nulls: 0,
            ..p.clone()
        };
        assert!(p.better_than(&fewer_valid));
        assert!(!fewer_nulls.needs_repair(0.02));
        // From an all-unmapped start, mapping fields with no new invalid rows is progress even
        // when the new fields are null on some rows.
        let none_mapped = Probe {
            nulls: 0,
            mapped: 0,
            ..p.clone()
        };
        let four_mapped = Probe {
            nulls: 30,
            mapped: 4,
            ..p.clone()
        };
        assert!(four_mapped.better_than(&none_mapped));
        assert!(!none_mapped.better_than(&four_mapped));
    }
}
