//! What the mapping store remembers across runs: repairs that fixed a column (offered first the
//! next time any source has a column of the same normalised name for the same target field), and
//! per source a history of runs (`conform history SOURCE`).
//!
//! Files in the mappings directory: `learned_repairs.json` (one list for all sources) and
//! `history/SOURCE.ndjson` (one line per run). Both are written atomically or appended whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::tokens;
use super::{FieldMapping, MappingDocument};
use crate::error::{Error, Result};
use crate::sql::quote;

/// A repair that fixed a column once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedRepair {
    /// The column's normalised name (`created`, `order date` → `order date`).
    pub column_key: String,
    /// The target field it fed.
    pub target: String,
    /// The expression with the column written as `{column}`.
    pub template: String,
    /// Why it was made.
    pub why: String,
    /// The source it was learned on.
    pub learned_from: String,
}

/// A column name's key: its canonical tokens, so `Order_Date` and `orderDate` share one.
pub fn column_key(column: &str) -> String {
    tokens(column).join(" ")
}

fn repairs_path(dir: &Path) -> PathBuf {
    dir.join("learned_repairs.json")
}

/// The learned repairs (none if the file does not exist yet).
pub fn load_repairs(dir: &Path) -> Result<Vec<LearnedRepair>> {
    let p = repairs_path(dir);
    match crate::store::read_text_optional("mappings directory", &p)? {
        Some(t) => serde_json::from_str(&t).map_err(|e| {
            Error::config(
                p.display().to_string(),
                format!("not a learned-repairs file: {e}"),
            )
        }),
        None => Ok(vec![]),
    }
}

/// Remembers the repair of `target` (reading the single column `column`) as `expr`; a newer
/// repair for the same column key and target replaces the older one.
pub fn remember(
    dir: &Path,
    source: &str,
    target: &str,
    column: &str,
    expr: &str,
    why: &str,
) -> Result<()> {
    let quoted = quote(column);
    if !expr.contains(&quoted) {
        return Ok(());
    }
    let mut all = load_repairs(dir)?;
    let key = column_key(column);
    all.retain(|r| !(r.column_key == key && r.target == target));
    all.push(LearnedRepair {
        column_key: key,
        target: target.to_string(),
        template: expr.replace(&quoted, "{column}"),
        why: why.to_string(),
        learned_from: source.to_string(),
    });
    let mut text = serde_json::to_string_pretty(&all)?;
    text.push('\n');
    crate::fs::atomic_write(&repairs_path(dir), text.as_bytes())
}

/// Applies learned repairs to a new document: a field reading one column whose key matches a
/// learned repair for that field gets the repair's expression. Returns the fields changed.
pub fn apply(doc: &mut MappingDocument, repairs: &[LearnedRepair]) -> Vec<(String, LearnedRepair)> {
    let mut applied = Vec::new();
    for (field, m) in doc.fields.iter_mut() {
        let [column] = m.sources.as_slice() else {
            continue;
        };
        let key = column_key(column);
        if let Some(r) = repairs
            .iter()
            .rev()
            .find(|r| r.column_key == key && &r.target == field)
        {
            let expr = r.template.replace("{column}", &quote(column));
            if m.expr.as_deref() != Some(expr.as_str()) {
                *m = FieldMapping {
                    expr: Some(expr),
                    sources: vec![column.clone()],
                    confidence: m.confidence,
                    rationale: format!(
                        "{} (learned repair from source `{}`: {})",
                        m.rationale, r.learned_from, r.why
                    ),
                    // The learned repair replaces the conversion, so the alternatives and any
                    // value table described the old expression.
                    ..FieldMapping::unmapped()
                };
                applied.push((field.clone(), r.clone()));
            }
        }
    }
    applied
}

/// One run of a source, as kept in its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the run finished (RFC 3339).
    pub at: String,
    /// `ok` or `failed`.
    pub status: String,
    /// Source fingerprint.
    pub fingerprint: Option<String>,
    /// Who made the mapping, and whether it was read from the store.
    pub mapper: Option<String>,
    /// Read from the store.
    pub stored: bool,
    /// Rows read, valid, invalid.
    pub rows_read: u64,
    /// Valid rows.
    pub valid: u64,
    /// Invalid rows.
    pub invalid: u64,
    /// Probe invalid share before and after the feedback loop, when it ran.
    pub probe_invalid_share: Option<(f64, f64)>,
    /// Repairs made in this run (field: after), and learned repairs applied.
    pub repairs: Vec<String>,
    /// The expressions used, field → expression.
    pub expressions: indexmap::IndexMap<String, Option<String>>,
    /// The anomaly flags raised on the run's valid rows (their messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
}

fn history_path(dir: &Path, source: &str) -> PathBuf {
    dir.join("history").join(format!("{source}.ndjson"))
}

/// Appends one run to a source's history.
pub fn append_history(dir: &Path, source: &str, entry: &HistoryEntry) -> Result<()> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    // One write of one whole line: a crash leaves the earlier lines intact.
    crate::store::append(source, &history_path(dir, source), &line)
}

/// A source's history, oldest first.
pub fn history(dir: &Path, source: &str) -> Result<Vec<HistoryEntry>> {
    let p = history_path(dir, source);
    let Some(text) = crate::store::read_text_optional(source, &p)? else {
        return Ok(vec![]);
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(Error::from))
        .collect()
}
