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
    /// Expected pairs the mapper proposed.
    pub true_positives: usize,
    /// Proposed pairs that were not expected.
    pub false_positives: usize,
    /// Expected pairs the mapper missed.
    pub false_negatives: usize,
    /// One line per wrong field: `field: expected [..], got [..]`.
    pub mistakes: Vec<String>,
}

/// Precision, recall and F1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Share of proposed pairs that are right.
    pub precision: f64,
    /// Share of expected pairs that were proposed.
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
}

impl Score {
    /// Micro-averaged score over cases.
    pub fn of(results: &[CaseResult]) -> Score {
        let tp: usize = results.iter().map(|r| r.true_positives).sum();
        let fp: usize = results.iter().map(|r| r.false_positives).sum();
        let fneg: usize = results.iter().map(|r| r.false_negatives).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fneg);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Score {
            precision,
            recall,
            f1,
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

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    Ok(serde_json::from_str(&text)?)
}

/// Maps one case with `choice` and compares the columns each field reads with the expected ones.
pub async fn evaluate_case(dir: &Path, choice: MapperChoice, llm: &Value) -> Result<CaseResult> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let schema = read_json(&dir.join("target.schema.json"))?;
    let expected = read_json(&dir.join("expected.json"))?;
    let config = json!({
        "output_directory": std::env::temp_dir(),
        "data_sources": {"source": {"path": source_file(dir)?}},
        "internal_schema": schema,
        "llm": llm,
    });
    let config =
        crate::Config::from_str_with_env(&config.to_string(), dir, &|k| std::env::var(k).ok())?;
    let pipeline = Pipeline::try_new(config)?;
    let prepared = pipeline.prepare_fresh("source", choice).await?;
    let mut result = CaseResult {
        name,
        ..Default::default()
    };
    let Value::Object(expected) = expected else {
        return Err(Error::config(
            dir.join("expected.json").display().to_string(),
            "must be an object of target field → [source columns]",
        ));
    };
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
        let hits = got.iter().filter(|g| want.contains(g)).count();
        result.true_positives += hits;
        result.false_positives += got.len() - hits;
        result.false_negatives += want.len() - hits;
        if got != want {
            result
                .mistakes
                .push(format!("{field}: expected {want:?}, got {got:?}"));
        }
    }
    Ok(result)
}

/// Every case under `root` (sorted by name).
pub async fn evaluate_all(
    root: &Path,
    choice: MapperChoice,
    llm: &Value,
) -> Result<Vec<CaseResult>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io("reading", root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").exists())
        .collect();
    dirs.sort();
    let mut out = Vec::with_capacity(dirs.len());
    for d in dirs {
        out.push(evaluate_case(&d, choice, llm).await?);
    }
    Ok(out)
}
