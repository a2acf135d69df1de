//! Measuring a mapper on schema-matching cases: a directory per case holding `source.csv` (or
//! `.ndjson`, `.json`, `.parquet`), `target.schema.json` and `expected.json` (target field →
//! the source columns it should read; `[]` for fields that must stay unmapped). Scores are
//! precision, recall and F1 over (target field, source column) pairs, micro-averaged.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{MapperChoice, Pipeline};
use crate::error::{Error, Result};

/// Pairs found, missed and wrongly proposed for one case.
#[derive(Debug, Clone, Default)]
pub struct CaseResult {
    /// The case's directory name.
    pub name: String,
    /// The target's fields (nested fields counted one by one): the width the matcher's
    /// confidence is calibrated for.
    pub target_fields: usize,
    /// Expected pairs the mapper proposed.
    pub true_positives: usize,
    /// Proposed pairs that were not expected.
    pub false_positives: usize,
    /// Expected pairs the mapper missed.
    pub false_negatives: usize,
    /// One line per wrong field: `field: expected [..], got [..]`.
    pub mistakes: Vec<String>,
    /// Expected (field, column) pairs: the ground truth's size.
    pub ground_truth: usize,
    /// Expected pairs among the `ground_truth` best-scored pairs of the ranked candidates.
    pub hits_at_ground_truth: usize,
    /// 1/rank of the first expected column in each mapped field's ranked candidates (0 when
    /// absent), for fields with an expected column.
    pub reciprocal_ranks: Vec<f64>,
    /// Wall time of mapping the case.
    pub seconds: f64,
    /// Model requests, prompt tokens and completion tokens (LLM mapper).
    pub llm: Option<(u32, u64, u64)>,
    /// The largest prompt of any one model request, as the server counted it (LLM mapper).
    pub largest_prompt: u64,
    /// True positives, false positives and false negatives of exact-name matching on the same
    /// case: a field takes the column whose name equals its own after Unicode NFKD,
    /// lower-casing and removing every non-alphanumeric character.
    pub exact: (usize, usize, usize),
    /// Per field with an expected column or a chosen one: the mapping's confidence, the columns
    /// chosen and the columns expected (for the precision/recall curve over thresholds), and
    /// whether the field is the model's own answer (LLM mapper; false otherwise).
    pub decisions: Vec<(f64, Vec<String>, Vec<String>, bool)>,
    /// Per decision (same order): the field's rationale and the score of its best alternative
    /// (0 without one), for studying what a confidence leaves out.
    pub decision_notes: Vec<(String, f64)>,
    /// LLM mapper: fields answered by the model, filled by the offline fallback, decided
    /// offline (certain enough, or no plausible column), and never answered.
    pub origins: Option<[usize; 4]>,
    /// Value truth (`values` in `case.json`: field → source value → target value) against what
    /// the field's expression makes of the source's rows: entries right, entries given a value
    /// (right or wrong), and entries whose source value occurs in the case's rows.
    pub values: (usize, usize, usize),
}

/// `a / b`, or 1 when there is nothing to divide (no pairs proposed: nothing was wrong).
fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Value-level precision and recall over the cases with value truth: an entry is right when
/// the field's expression turns the source value into the published target value. `None`
/// when no case has value truth.
pub fn value_score(results: &[CaseResult]) -> Option<(f64, f64)> {
    let (right, placed, total) = results.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.values.0, a.1 + r.values.1, a.2 + r.values.2)
    });
    (total > 0).then(|| (ratio(right, placed), ratio(right, total)))
}

/// Scores the document's value mappings against the case's value truth (see
/// [`CaseResult::values`]). A field that does not read the column the truth is about places
/// nothing, so its entries count as missed.
async fn value_truth(
    truth: &serde_json::Map<String, Value>,
    expected: &serde_json::Map<String, Value>,
    prepared: &super::PreparedSource,
    target: &crate::schema::TargetSchema,
) -> Result<(usize, usize, usize)> {
    use arrow::array::Array;
    let sample = prepared.source.sample(10_000)?;
    let ctx = crate::mapping::compile::session();
    let text = |a: &arrow::array::ArrayRef| -> Result<Vec<Option<String>>> {
        let s = arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8)?;
        let s = s
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| Error::config("value truth", "cast to text failed"))?;
        Ok((0..s.len())
            .map(|i| (!s.is_null(i)).then(|| s.value(i).trim().to_string()))
            .collect())
    };
    let (mut right, mut placed, mut total) = (0, 0, 0);
    for (field, entries) in truth {
        let Some(entries) = entries.as_object() else {
            continue;
        };
        let Some(column) = expected
            .get(field)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(index) = sample.schema().index_of(column).ok() else {
            continue;
        };
        let inputs = text(sample.column(index))?;
        let present: Vec<(&String, &Value)> = entries
            .iter()
            .filter(|(from, _)| inputs.iter().flatten().any(|v| v == from.trim()))
            .collect();
        total += present.len();
        let m = prepared.document.fields.get(field);
        let (Some(m), Some(t)) = (m, target.field(field)) else {
            continue;
        };
        if !m.sources.iter().any(|s| s == column) {
            continue;
        }
        let compiled = crate::mapping::compile::compile_field(
            &ctx,
            sample.schema().as_ref(),
            field,
            &t.kind.data_type(),
            m.expr.as_deref(),
        )
        .map_err(|e| Error::config(field.clone(), e))?;
        let out = ctx
            .read_batch(sample.clone())?
            .select(vec![compiled.expr])?
            .collect()
            .await?;
        let outputs: Vec<Option<String>> = out
            .iter()
            .map(|b| text(b.column(0)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        for (from, to) in present {
            let Some(row) = inputs
                .iter()
                .position(|v| v.as_deref() == Some(from.trim()))
            else {
                continue;
            };
            if let Some(Some(got)) = outputs.get(row) {
                placed += 1;
                let want = match to {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                right += usize::from(*got == want);
            }
        }
    }
    Ok((right, placed, total))
}

/// Precision, recall and F1 of the model's own answers alone: fields the offline matcher
/// decided or filled in count as unmapped.
pub fn model_alone(results: &[CaseResult]) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    for r in results {
        for (_, got, want, by_model) in &r.decisions {
            let kept: &[String] = if *by_model { got } else { &[] };
            let hits = kept.iter().filter(|g| want.contains(g)).count();
            tp += hits;
            fp += kept.len() - hits;
            fneg += want.len() - hits;
        }
    }
    prf(tp, fp, fneg)
}

/// A name as exact-name matching compares it: NFKD, lower case, alphanumerics only.
pub fn exact_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfkd()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Precision, recall and F1 from pair counts.
pub fn prf(tp: usize, fp: usize, fneg: usize) -> (f64, f64, f64) {
    let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fneg));
    let f1 = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f1)
}

/// Exact-name matching's precision, recall and F1 over the cases.
pub fn exact_score(results: &[CaseResult]) -> (f64, f64, f64) {
    let (tp, fp, fneg) = results.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.exact.0, a.1 + r.exact.1, a.2 + r.exact.2)
    });
    prf(tp, fp, fneg)
}

/// Precision, recall and F1 when fields whose confidence is below `threshold` are left
/// unmapped: one point of the curve that shows what a threshold trades.
pub fn at_threshold(results: &[CaseResult], threshold: f64) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    for r in results {
        for (confidence, got, want, _) in &r.decisions {
            let kept: &[String] = if *confidence >= threshold { got } else { &[] };
            let hits = kept.iter().filter(|g| want.contains(g)).count();
            tp += hits;
            fp += kept.len() - hits;
            fneg += want.len() - hits;
        }
    }
    prf(tp, fp, fneg)
}

/// The chosen pairs of fields whose confidence is in `[low, high)`: how many were expected and
/// how many were not. The precision of each band shows what a confidence means on a group of
/// cases; a calibrated matcher's bands hold the same precision on narrow and wide targets.
pub fn in_band(results: &[CaseResult], low: f64, high: f64) -> (usize, usize) {
    let (mut right, mut wrong) = (0, 0);
    for r in results {
        for (confidence, got, want, _) in &r.decisions {
            if *confidence >= low && *confidence < high {
                let hits = got.iter().filter(|g| want.contains(g)).count();
                right += hits;
                wrong += got.len() - hits;
            }
        }
    }
    (right, wrong)
}

/// The source's column names, read from its header (CSV) or first record (NDJSON/JSON).
fn column_names(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .next()
            .and_then(|r| r.ok())
            .map(|r| {
                r.iter()
                    .map(|s| s.trim_start_matches('\u{feff}').to_string())
                    .collect()
            })
            .unwrap_or_default(),
        _ => {
            let first = text.lines().next().unwrap_or_default();
            let v: Value = serde_json::from_str(first)
                .or_else(|_| serde_json::from_str::<Value>(&text).map(|v| v[0].clone()))
                .unwrap_or_default();
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        }
    }
}

/// Exact-name matching on one case: (tp, fp, fn).
fn exact_baseline(
    columns: &[String],
    expected: &serde_json::Map<String, Value>,
) -> (usize, usize, usize) {
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    for (field, want) in expected {
        let want: Vec<&str> = want
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let key = exact_key(field);
        let got: Vec<&str> = columns
            .iter()
            .filter(|c| exact_key(c) == key)
            .map(String::as_str)
            .take(1)
            .collect();
        let hits = got.iter().filter(|g| want.contains(g)).count();
        tp += hits;
        fp += got.len() - hits;
        fneg += want.len() - hits;
    }
    (tp, fp, fneg)
}

/// Precision, recall and F1 of the chosen mapping; Recall@GT and MRR of the ranked
/// candidates; mapping time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Share of proposed pairs that are right.
    pub precision: f64,
    /// Share of expected pairs that were proposed.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
    /// Share of expected pairs among the |ground truth| best-scored candidate pairs of each
    /// case (the schema-matching literature's Recall@GT).
    pub recall_at_gt: f64,
    /// Mean reciprocal rank of the first right column in each field's ranked candidates.
    pub mrr: f64,
    /// Mean mapping time per case, seconds.
    pub mean_seconds: f64,
    /// Slowest case, seconds.
    pub max_seconds: f64,
}

impl Score {
    /// Micro-averaged score over cases.
    pub fn of(results: &[CaseResult]) -> Score {
        let tp: usize = results.iter().map(|r| r.true_positives).sum();
        let fp: usize = results.iter().map(|r| r.false_positives).sum();
        let fneg: usize = results.iter().map(|r| r.false_negatives).sum();
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fneg);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        let gt: usize = results.iter().map(|r| r.ground_truth).sum();
        let hits: usize = results.iter().map(|r| r.hits_at_ground_truth).sum();
        let rr: Vec<f64> = results
            .iter()
            .flat_map(|r| r.reciprocal_ranks.iter().copied())
            .collect();
        let n = results.len().max(1) as f64;
        Score {
            precision,
            recall,
            f1,
            recall_at_gt: ratio(hits, gt),
            mrr: if rr.is_empty() {
                1.0
            } else {
                rr.iter().sum::<f64>() / rr.len() as f64
            },
            mean_seconds: results.iter().map(|r| r.seconds).sum::<f64>() / n,
            max_seconds: results.iter().map(|r| r.seconds).fold(0.0, f64::max),
        }
    }
}

fn source_file(dir: &Path) -> Result<PathBuf> {
    for ext in ["csv", "ndjson", "json", "parquet"] {
        let p = dir.join(format!("source.{ext}"));
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::source(
        dir.display().to_string(),
        "no source.csv, source.ndjson, source.json or source.parquet",
    ))
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(serde_json::from_str(&text)?)
}

/// The name a case's source gets in its config: the stem of the public file it was taken from
/// (`case.json` `source`, e.g. `…/seeds/synthea/procedures.csv` → `procedures`), as a user
/// names a source after its table; `source` when the case records none, or when `named` is
/// false (to measure what the name adds).
pub fn case_source_name(dir: &Path, named: bool) -> String {
    let from_case = || -> Option<String> {
        let case = read_json(&dir.join("case.json")).ok()?;
        let url = case.get("source")?.as_str()?;
        let file = url.rsplit(['/', '\\']).next()?;
        let stem = file.split('.').next()?;
        let name: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(128)
            .collect();
        (!name.is_empty()).then_some(name)
    };
    named
        .then(from_case)
        .flatten()
        .unwrap_or_else(|| "source".into())
}

/// What the mapper is given of each case besides its source's rows and its target, as a user
/// would configure it; each can be turned off to measure what it adds.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// The source is named after its public file ([`case_source_name`]), not `source`.
    pub named: bool,
    /// The source's published column descriptions (`source.descriptions.json`, column →
    /// text, where the case has one) are the source's `descriptions`.
    pub described: bool,
    /// `min_confidence` for the mapping (the configuration's default when `None`); 0 keeps
    /// every pair the matcher chose, which is what the calibration is fitted on.
    pub min_confidence: Option<f64>,
}

impl Default for Inputs {
    fn default() -> Inputs {
        Inputs {
            named: true,
            described: true,
            min_confidence: None,
        }
    }
}

/// Maps one case with `choice` and compares the columns each field reads with the expected ones.
pub async fn evaluate_case(
    dir: &Path,
    choice: MapperChoice,
    llm: &Value,
    inputs: Inputs,
) -> Result<CaseResult> {
    // Source paths in the config are relative to the config's directory, so the case
    // directory itself must not be relative too.
    let dir = &std::path::absolute(dir).map_err(|e| Error::io("resolving", dir, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let schema = read_json(&dir.join("target.schema.json"))?;
    let expected = read_json(&dir.join("expected.json"))?;
    // A fresh output directory per case: repairs learned while mapping one case (kept under
    // `mappings/`) must not leak into the next.
    let out_dir = std::env::temp_dir().join(format!(
        "conform-eval-{}-{}-{}",
        std::process::id(),
        name,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let _cleanup = RemoveOnDrop(out_dir.clone());
    let source = source_file(dir)?;
    let columns = column_names(&source);
    let source_name = case_source_name(dir, inputs.named);
    let descriptions_file = dir.join("source.descriptions.json");
    let descriptions = if inputs.described && descriptions_file.exists() {
        read_json(&descriptions_file)?
    } else {
        json!({})
    };
    let mut config = json!({
        "output_directory": out_dir,
        "data_sources": {source_name.as_str(): {"path": source, "descriptions": descriptions}},
        "internal_schema": schema,
        "llm": llm,
    });
    if let Some(min) = inputs.min_confidence {
        config["min_confidence"] = min.into();
    }
    let config =
        crate::Config::from_str_with_env(&config.to_string(), dir, &|k| std::env::var(k).ok())?;
    let pipeline = Pipeline::try_new(config)?;
    let started = std::time::Instant::now();
    let prepared = pipeline.prepare_fresh(&source_name, choice).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut result = CaseResult {
        name,
        target_fields: pipeline.target().fields.len(),
        seconds,
        llm: prepared
            .llm
            .as_ref()
            .map(|u| (u.requests, u.prompt_tokens, u.completion_tokens)),
        largest_prompt: prepared.llm.as_ref().map_or(0, |u| u.largest_prompt_tokens),
        origins: prepared.llm.as_ref().map(|u| {
            [
                u.model_fields.len(),
                u.fallback_fields.len(),
                u.offline_fields.len() + u.not_sent_fields.len(),
                u.unanswered_fields
                    .iter()
                    .filter(|f| !u.fallback_fields.contains(f))
                    .count(),
            ]
        }),
        ..Default::default()
    };
    // Every ranked pair: the chosen column first, then the alternatives.
    let mut pairs: Vec<(f64, String, String)> = Vec::new();
    let Value::Object(expected) = expected else {
        return Err(Error::config(
            dir.join("expected.json").display().to_string(),
            "must be an object of target field → [source columns]",
        ));
    };
    result.exact = exact_baseline(&columns, &expected);
    let case = read_json(&dir.join("case.json")).unwrap_or_default();
    if let Some(truth) = case.get("values").and_then(Value::as_object) {
        result.values = value_truth(truth, &expected, &prepared, pipeline.target()).await?;
    }
    for (field, want) in &expected {
        let mut want: Vec<String> = want
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut got = prepared
            .document
            .fields
            .get(field)
            .map(|m| m.sources.clone())
            .unwrap_or_default();
        want.sort();
        got.sort();
        let m = prepared.document.fields.get(field);
        let mut ranked: Vec<(f64, Vec<String>)> = Vec::new();
        if let Some(m) = m {
            if m.expr.is_some() {
                ranked.push((m.confidence, m.sources.clone()));
            }
            ranked.extend(m.candidates.iter().map(|c| (c.score, c.sources.clone())));
        }
        for (score, cols) in &ranked {
            for c in cols {
                pairs.push((*score, field.clone(), c.clone()));
            }
        }
        if !want.is_empty() {
            result.ground_truth += want.len();
            let rank = ranked
                .iter()
                .position(|(_, cols)| cols.iter().any(|c| want.contains(c)));
            result
                .reciprocal_ranks
                .push(rank.map_or(0.0, |r| 1.0 / (r + 1) as f64));
        }
        if !want.is_empty() || !got.is_empty() {
            let confidence = m.map_or(0.0, |m| m.confidence);
            let by_model = prepared
                .llm
                .as_ref()
                .is_some_and(|u| u.model_fields.contains(field));
            result
                .decisions
                .push((confidence, got.clone(), want.clone(), by_model));
            result.decision_notes.push((
                m.map(|m| m.rationale.clone()).unwrap_or_default(),
                m.and_then(|m| m.candidates.first())
                    .map_or(0.0, |c| c.score),
            ));
        }
        let hits = got.iter().filter(|g| want.contains(g)).count();
        result.true_positives += hits;
        result.false_positives += got.len() - hits;
        result.false_negatives += want.len() - hits;
        if got != want {
            let alternatives: Vec<String> = ranked
                .iter()
                .map(|(s, c)| format!("{}:{s:.2}", c.join("+")))
                .collect();
            result.mistakes.push(format!(
                "{field}: expected {want:?}, got {got:?} (ranked {})",
                alternatives.join(" ")
            ));
        }
    }
    // Recall@GT: the |GT| best pairs over all fields.
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    result.hits_at_ground_truth = pairs
        .iter()
        .take(result.ground_truth)
        .filter(|(_, f, c)| {
            expected
                .get(f.as_str())
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(c.as_str())))
        })
        .count();
    Ok(result)
}

/// Every case under `root` (sorted by name).
pub async fn evaluate_all(
    root: &Path,
    choice: MapperChoice,
    llm: &Value,
    inputs: Inputs,
) -> Result<Vec<CaseResult>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io("reading", root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    let mut out = Vec::with_capacity(dirs.len());
    for d in dirs {
        // A case that cannot be mapped at all counts as all pairs missed, with the reason.
        let r = match evaluate_case(&d, choice, llm, inputs).await {
            Ok(r) => r,
            Err(e) => {
                let expected = read_json(&d.join("expected.json")).unwrap_or_default();
                let missed = expected
                    .as_object()
                    .map(|o| o.values().filter_map(Value::as_array).map(Vec::len).sum())
                    .unwrap_or(0);
                CaseResult {
                    name: d
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    false_negatives: missed,
                    ground_truth: missed,
                    mistakes: vec![format!("could not be mapped: {e}")],
                    ..Default::default()
                }
            }
        };
        out.push(r);
    }
    Ok(out)
}
