//! Profiles of the valid output and anomaly flags on them.
//!
//! Every run profiles each output column of a source's valid rows, batch by batch as they are
//! written (null share, approximate distinct count, min/max, mean/std, quantiles from a
//! t-digest, median absolute deviation, top values), and keeps the profile in the mapping store
//! (`profiles/SOURCE.ndjson`). Three kinds of flags are raised, none of which makes a row
//! invalid — anomalies in valid data are for a person to look at:
//!
//! - **outliers**: numbers whose robust z-score `0.6745·|x − median| / MAD` exceeds the
//!   threshold. The median and MAD come from the source's previous run when it has one, so a
//!   run is judged against what the source normally sends; on a first run they come from the
//!   first `reference_rows` valid rows, which are held back until the reference is known. A
//!   reference of fewer than 30 numbers, or a MAD of zero, judges nothing.
//! - **drift** against the source's earlier runs: a column's null share or mean moving beyond
//!   the configured limits, a category column's value shares shifting.
//! - **new values** in a category column (one with few distinct values in earlier runs).
//!
//! With `flag_rows`, each valid row carries a `_anomalies` list naming the rules it tripped
//! (`outlier:FIELD`, `new_value:FIELD`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListBuilder, RecordBatch, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::hash_utils::{HLL_RANDOM_STATE, create_hashes};
use datafusion_functions_aggregate_common::tdigest::TDigest;
use hyperloglogplus::{HyperLogLog, HyperLogLogPF};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::AnomalyConfig;
use crate::error::{Error, Result};

/// Name of the per-row flags column added with `flag_rows`.
pub const FLAGS_COL: &str = "_anomalies";
/// Example values kept per flag.
const EXAMPLES: usize = 5;
/// Distinct values counted exactly per column; beyond this only the estimate is kept.
const TOP_CAP: usize = 1_000;
/// Top values reported per column.
const TOP: usize = 5;
/// Centroids of the t-digest (more = finer quantiles).
const DIGEST_SIZE: usize = 200;
/// Values buffered before they are merged into the t-digest (merging sorts them).
const DIGEST_BUFFER: usize = 65_536;
/// Values a category column must average per distinct value: a column whose values rarely
/// repeat (names, e-mails) is not a category column, however few rows a run has.
const MIN_ROWS_PER_CATEGORY: u64 = 10;
/// Numbers a reference needs before outliers are judged against it.
const MIN_REFERENCE: usize = 30;
/// MAD of a normal distribution is 0.6745 σ; the robust z-score scales by it.
const MAD_SCALE: f64 = 0.6745;

/// The profile of one output column in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ColumnProfile {
    /// `number`, `text`, `boolean`, `date` or `other` (what was measured).
    pub kind: String,
    /// Null values.
    pub nulls: u64,
    /// Nulls / rows.
    pub null_share: f64,
    /// Distinct non-null values (exact up to 1,000 for text, else estimated by HyperLogLog;
    /// absent for lists and objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    /// Smallest value (numbers, dates and timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Value>,
    /// Largest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Value>,
    /// Mean of the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Standard deviation of the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// `p01`, `p05`, `p25`, `p50`, `p75`, `p95`, `p99` (t-digest estimates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantiles: BTreeMap<String, f64>,
    /// Median absolute deviation from the median (estimated from the t-digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mad: Option<f64>,
    /// The MAD of `ln(x)`, for columns of positive numbers (skewed columns are judged on a log
    /// scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_mad: Option<f64>,
    /// The most frequent values with their counts (columns with at most 1,000 distinct values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<(String, u64)>,
    /// Every value with its count, for category columns (at most `max_categories` values, each
    /// seen ten times on average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<BTreeMap<String, u64>>,
}

/// The profile of a source's valid output in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunProfile {
    /// When the run finished, RFC 3339 UTC.
    pub at: String,
    /// Valid rows profiled.
    pub rows: u64,
    /// Per output column, in schema order.
    pub columns: IndexMap<String, ColumnProfile>,
}

/// One anomaly flag.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flag {
    /// `outliers`, `null_share_drift`, `mean_drift`, `category_drift` or `new_values`.
    pub rule: &'static str,
    /// The output column.
    pub field: String,
    /// Rows concerned (outliers, new values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// This run's figure (null share, mean, distance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// What it is compared with (earlier runs' null share or mean, the reference median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// Example values; for outliers `{"value": …, "valid_row": n}` (0-based row of the valid
    /// output).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Value>,
    /// One line for a person.
    pub message: String,
}

/// What the anomaly pass found for a source, for `run_summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AnomalyReport {
    /// Where the outlier reference came from: `previous run`, `first N rows`, or `none (no
    /// numeric columns)`.
    pub reference: String,
    /// Earlier runs drift was measured against.
    pub compared_runs: usize,
    /// Valid rows that tripped at least one row rule.
    pub rows_flagged: u64,
    /// The flags.
    pub flags: Vec<Flag>,
}

/// Passes a precomputed 64-bit hash through unchanged, so HyperLogLog++ counts the hashes
/// Arrow's vectorized hashing already produced.
#[derive(Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else so the hasher stays total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Hll = HyperLogLogPF<u64, BuildHasherDefault<Passthrough>>;

/// What is measured of a column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// Cast to f64: mean, std, quantiles, outliers.
    Number,
    /// Counted by value: top values, categories.
    Text,
    /// Counted by value.
    Boolean,
    /// Min/max only.
    Temporal,
    /// Nulls and distinct count only.
    Other,
}

impl Measure {
    fn of(t: &DataType) -> Measure {
        match t {
            t if t.is_numeric() => Measure::Number,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Measure::Text,
            DataType::Boolean => Measure::Boolean,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => Measure::Temporal,
            _ => Measure::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Measure::Number => "number",
            Measure::Text => "text",
            Measure::Boolean => "boolean",
            Measure::Temporal => "date",
            Measure::Other => "other",
        }
    }
}

/// Running state of one column.
struct ColumnState {
    name: String,
    measure: Measure,
    nulls: u64,
    hll: Hll,
    /// Exact counts until more than `TOP_CAP` distinct values are seen.
    counts: Option<HashMap<String, u64>>,
    /// Numbers: count, mean and sum of squared deviations (Chan's parallel update).
    n: u64,
    mean: f64,
    m2: f64,
    min: Option<f64>,
    max: Option<f64>,
    digest: TDigest,
    pending: Vec<f64>,
    /// Temporal min/max as display text and the Arrow order key.
    tmin: Option<(i64, String)>,
    tmax: Option<(i64, String)>,
}

impl ColumnState {
    fn new(field: &Field) -> Result<ColumnState> {
        let measure = Measure::of(field.data_type());
        Ok(ColumnState {
            name: field.name().clone(),
            measure,
            nulls: 0,
            hll: Hll::new(14, BuildHasherDefault::default())
                .map_err(|e| Error::source("(profile)", format!("{e:?}")))?,
            counts: matches!(measure, Measure::Text | Measure::Boolean).then(HashMap::new),
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: None,
            max: None,
            digest: TDigest::new(DIGEST_SIZE),
            pending: Vec::new(),
            tmin: None,
            tmax: None,
        })
    }

    /// Adds the column's non-null values to the distinct-count sketch.
    fn sketch(&mut self, col: &dyn Array, hashes: &mut Vec<u64>) -> Result<()> {
        hashes.clear();
        hashes.resize(col.len(), 0);
        create_hashes([col], &HLL_RANDOM_STATE, hashes)?;
        for (i, h) in hashes.iter().enumerate() {
            if col.is_valid(i) {
                self.hll.insert(h);
            }
        }
        Ok(())
    }

    /// Adds a batch's column; `numbers` is the column cast to f64 for a numeric column (cast
    /// once per batch by the caller, which also judges outliers on it).
    fn observe(
        &mut self,
        col: &ArrayRef,
        numbers: Option<&Float64Array>,
        hashes: &mut Vec<u64>,
    ) -> Result<()> {
        self.nulls += col.null_count() as u64;
        // Text with few values is counted exactly; hashing every value for the sketch is
        // only needed once a column has too many values to count.
        if !matches!(self.measure, Measure::Boolean | Measure::Other)
            && (self.measure != Measure::Text || self.counts.is_none())
        {
            self.sketch(col.as_ref(), hashes)?;
        }
        match self.measure {
            Measure::Number => {
                if let Some(f) = numbers {
                    self.observe_numbers(f);
                }
            }
            Measure::Text => {
                if let Some(counts) = &mut self.counts {
                    let strings = cast(col, &DataType::Utf8)?;
                    for s in strings.as_string::<i32>().iter().flatten() {
                        match counts.get_mut(s) {
                            Some(c) => *c += 1,
                            None => {
                                counts.insert(s.to_string(), 1);
                            }
                        }
                    }
                    if counts.len() > TOP_CAP {
                        // Too many values to count: the sketch takes over, seeded with every
                        // value seen so far (hashed the same way as later batches).
                        let seen = arrow::array::StringArray::from_iter_values(counts.keys());
                        self.counts = None;
                        self.sketch(&seen, hashes)?;
                    }
                }
            }
            Measure::Boolean => {
                if let Some(counts) = &mut self.counts {
                    let b = col.as_boolean();
                    let t = b.true_count() as u64;
                    let f = (b.len() - b.null_count()) as u64 - t;
                    for (k, n) in [("true", t), ("false", f)] {
                        if n > 0 {
                            *counts.entry(k.to_string()).or_default() += n;
                        }
                    }
                }
            }
            Measure::Temporal => {
                // One pass for the positions of the smallest and largest non-null values;
                // only those two are turned into text.
                let keys = cast(col, &DataType::Int64)?;
                let keys = keys.as_primitive::<arrow::datatypes::Int64Type>();
                let mut lo: Option<(i64, usize)> = None;
                let mut hi: Option<(i64, usize)> = None;
                for (i, v) in keys.iter().enumerate() {
                    let Some(v) = v else { continue };
                    if lo.is_none_or(|(m, _)| v < m) {
                        lo = Some((v, i));
                    }
                    if hi.is_none_or(|(m, _)| v > m) {
                        hi = Some((v, i));
                    }
                }
                let text = |i: usize| -> String {
                    arrow::util::display::array_value_to_string(col, i).unwrap_or_default()
                };
                if let Some((v, i)) = lo
                    && self.tmin.as_ref().is_none_or(|(m, _)| v < *m)
                {
                    self.tmin = Some((v, text(i)));
                }
                if let Some((v, i)) = hi
                    && self.tmax.as_ref().is_none_or(|(m, _)| v > *m)
                {
                    self.tmax = Some((v, text(i)));
                }
            }
            Measure::Other => {}
        }
        Ok(())
    }

    fn observe_numbers(&mut self, f: &Float64Array) {
        let (mut n, mut sum) = (0u64, 0.0f64);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let start = self.pending.len();
        for x in f.iter().flatten() {
            if !x.is_finite() {
                continue;
            }
            n += 1;
            sum += x;
            lo = lo.min(x);
            hi = hi.max(x);
            self.pending.push(x);
        }
        if n == 0 {
            return;
        }
        // Chan et al.: combine this batch's mean and squared deviations with the running ones.
        let mean_b = sum / n as f64;
        let m2_b: f64 = self.pending[start..]
            .iter()
            .map(|x| (x - mean_b) * (x - mean_b))
            .sum();
        let total = self.n + n;
        let delta = mean_b - self.mean;
        self.mean += delta * n as f64 / total as f64;
        self.m2 += m2_b + delta * delta * self.n as f64 * n as f64 / total as f64;
        self.n = total;
        self.min = Some(self.min.map_or(lo, |m| m.min(lo)));
        self.max = Some(self.max.map_or(hi, |m| m.max(hi)));
        if self.pending.len() >= DIGEST_BUFFER {
            self.flush_digest();
        }
    }

    fn flush_digest(&mut self) {
        if !self.pending.is_empty() {
            self.digest = self
                .digest
                .merge_unsorted_f64(std::mem::take(&mut self.pending));
        }
    }

    fn finish(mut self, rows: u64, max_categories: usize) -> ColumnProfile {
        self.flush_digest();
        let counts = self.counts.take();
        let distinct = match (&counts, self.measure) {
            (_, Measure::Other) => None,
            (Some(c), _) => Some(c.len() as u64),
            (None, _) => Some(self.hll.count().round() as u64),
        };
        let mut p = ColumnProfile {
            kind: self.measure.name().into(),
            nulls: self.nulls,
            null_share: if rows == 0 {
                0.0
            } else {
                self.nulls as f64 / rows as f64
            },
            distinct,
            ..Default::default()
        };
        if self.measure == Measure::Number && self.n > 0 {
            p.min = self.min.map(Value::from);
            p.max = self.max.map(Value::from);
            p.mean = Some(self.mean);
            p.std = Some((self.m2 / self.n as f64).sqrt());
            for (k, q) in [
                ("p01", 0.01),
                ("p05", 0.05),
                ("p25", 0.25),
                ("p50", 0.5),
                ("p75", 0.75),
                ("p95", 0.95),
                ("p99", 0.99),
            ] {
                p.quantiles
                    .insert(k.into(), self.digest.estimate_quantile(q));
            }
            p.mad = Some(digest_mad(&self.digest, false));
            if self.min.is_some_and(|m| m > 0.0) {
                p.log_mad = Some(digest_mad(&self.digest, true));
            }
        }
        if self.measure == Measure::Temporal {
            p.min = self.tmin.map(|(_, s)| Value::from(s));
            p.max = self.tmax.map(|(_, s)| Value::from(s));
        }
        if let Some(c) = counts {
            let mut top: Vec<(String, u64)> = c.iter().map(|(k, v)| (k.clone(), *v)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(TOP);
            p.top = top;
            let seen = rows - self.nulls;
            if c.len() <= max_categories
                && !c.is_empty()
                && seen >= MIN_ROWS_PER_CATEGORY * c.len() as u64
            {
                p.categories = Some(c.into_iter().collect());
            }
        }
        p
    }
}

/// The median absolute deviation estimated from a t-digest: the weighted median of the
/// centroids' distances from the median (of their logarithms with `log`; quantiles commute
/// with the logarithm, so the log-scale median is the log of the median).
fn digest_mad(d: &TDigest, log: bool) -> f64 {
    let f = |x: f64| if log { x.ln() } else { x };
    let median = f(d.estimate_quantile(0.5));
    let mut dev: Vec<(f64, f64)> = d
        .centroids()
        .iter()
        .map(|c| ((f(c.mean()) - median).abs(), c.weight()))
        .collect();
    dev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = dev.iter().map(|x| x.1).sum::<f64>() / 2.0;
    let mut acc = 0.0;
    for (x, w) in dev {
        acc += w;
        if acc >= half {
            return x;
        }
    }
    0.0
}

/// Exact median and MAD of a set of numbers.
fn median_mad(mut xs: Vec<f64>) -> Option<(f64, f64)> {
    fn median(xs: &mut [f64]) -> f64 {
        let n = xs.len();
        xs.sort_by(f64::total_cmp);
        if n % 2 == 1 {
            xs[n / 2]
        } else {
            (xs[n / 2 - 1] + xs[n / 2]) / 2.0
        }
    }
    if xs.len() < MIN_REFERENCE {
        return None;
    }
    let m = median(&mut xs);
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - m).abs()).collect();
    Some((m, median(&mut dev)))
}

/// Robust centre and spread of a numeric column, of `ln(x)` when `log`.
#[derive(Debug, Clone, Copy)]
struct Reference {
    median: f64,
    mad: f64,
    log: bool,
}

/// A right-skewed column of positive numbers (amounts, sizes, durations): its long tail is its
/// normal shape, so it is judged on a log scale, where such data is roughly symmetric.
fn skewed(p01: f64, p50: f64, p99: f64) -> bool {
    p01 > 0.0 && (p99 - p50) > 3.0 * (p50 - p01)
}

/// An integer column whose values are almost all distinct is an identifier or a counter: its
/// spread says nothing about a single value, so it is not judged for outliers.
fn identifier(integer: bool, distinct: u64, values: u64) -> bool {
    integer && values > 0 && distinct as f64 > 0.95 * values as f64
}

/// The reference from a set of numbers (a first run's leading rows).
fn reference_of(mut xs: Vec<f64>, integer: bool) -> Option<Reference> {
    if xs.len() < MIN_REFERENCE {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let distinct = 1 + xs.windows(2).filter(|w| w[0] != w[1]).count();
    if identifier(integer, distinct as u64, xs.len() as u64) {
        return None;
    }
    let q = |p: f64| xs[((xs.len() - 1) as f64 * p).round() as usize];
    let log = skewed(q(0.01), q(0.5), q(0.99));
    if log {
        xs.iter_mut().for_each(|x| *x = x.ln());
    }
    median_mad(xs).map(|(median, mad)| Reference { median, mad, log })
}

/// The reference from an earlier run's profile of the column.
fn reference_from(c: &ColumnProfile, rows: u64, integer: bool) -> Option<Reference> {
    let values = rows.saturating_sub(c.nulls);
    if values < MIN_REFERENCE as u64 || identifier(integer, c.distinct.unwrap_or(0), values) {
        return None;
    }
    let (p01, p50, p99) = (
        *c.quantiles.get("p01")?,
        *c.quantiles.get("p50")?,
        *c.quantiles.get("p99")?,
    );
    match c.log_mad {
        Some(log_mad) if skewed(p01, p50, p99) => Some(Reference {
            median: p50.ln(),
            mad: log_mad,
            log: true,
        }),
        _ => Some(Reference {
            median: p50,
            mad: c.mad?,
            log: false,
        }),
    }
}

/// Per-field row-rule state.
struct RowRules {
    /// Outlier reference (numbers with a MAD above zero).
    reference: Option<Reference>,
    outliers: u64,
    outlier_examples: Vec<Value>,
    /// Values seen in earlier runs of a category column.
    known: Option<HashSet<String>>,
    new_values: BTreeMap<String, u64>,
}

/// Profiles the valid batches of one source run and raises the flags. Batches go in through
/// [`Monitor::push`] and come out (with the flags column when asked) ready to write; on a first
/// run the first `reference_rows` rows are held back until the outlier reference is known.
pub struct Monitor {
    config: AnomalyConfig,
    schema: SchemaRef,
    out_schema: SchemaRef,
    columns: Vec<ColumnState>,
    rules: Vec<RowRules>,
    previous: Vec<RunProfile>,
    /// Rows held back on a first run.
    held: Vec<RecordBatch>,
    held_rows: usize,
    reference_ready: bool,
    reference_from: String,
    rows: u64,
    rows_flagged: u64,
    hashes: Vec<u64>,
}

impl Monitor {
    /// A monitor for valid batches of `schema`, judged against the source's earlier profiles
    /// (oldest first; only the last `history_runs` count).
    pub fn new(
        config: &AnomalyConfig,
        schema: SchemaRef,
        mut previous: Vec<RunProfile>,
    ) -> Result<Monitor> {
        let keep = config.history_runs.max(1);
        if previous.len() > keep {
            previous.drain(..previous.len() - keep);
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnState::new(f))
            .collect::<Result<Vec<_>>>()?;
        let last = previous.last();
        let mut need_reference = false;
        let rules = schema
            .fields()
            .iter()
            .map(|f| {
                let before = last.and_then(|p| p.columns.get(f.name()));
                let integer = f.data_type().is_integer();
                let earlier =
                    before.and_then(|b| reference_from(b, last.map_or(0, |p| p.rows), integer));
                // A column an earlier run saw too few numbers of, or an identifier, has no
                // reference; one the earlier runs did not have gets one from the first rows.
                let reference = match Measure::of(f.data_type()) {
                    Measure::Number if before.is_none() => {
                        need_reference = true;
                        None
                    }
                    _ => earlier,
                };
                // A column is a category column when every earlier run saw few values.
                let known = if previous.is_empty() {
                    None
                } else {
                    previous
                        .iter()
                        .map(|p| p.columns.get(f.name()).and_then(|c| c.categories.as_ref()))
                        .collect::<Option<Vec<_>>>()
                        .map(|sets| sets.iter().flat_map(|s| s.keys().cloned()).collect())
                };
                RowRules {
                    reference,
                    outliers: 0,
                    outlier_examples: Vec::new(),
                    known,
                    new_values: BTreeMap::new(),
                }
            })
            .collect();
        let out_schema = if config.flag_rows {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(flags_field()));
            Arc::new(Schema::new(fields))
        } else {
            Arc::clone(&schema)
        };
        let reference_from = if need_reference {
            format!("first {} rows", config.reference_rows)
        } else if previous.is_empty() {
            "none (no numeric columns)".to_string()
        } else {
            "previous run".to_string()
        };
        Ok(Monitor {
            config: config.clone(),
            schema,
            out_schema,
            columns,
            rules,
            previous,
            held: Vec::new(),
            held_rows: 0,
            reference_ready: !need_reference,
            reference_from,
            rows: 0,
            rows_flagged: 0,
            hashes: Vec::new(),
        })
    }

    /// Schema of the batches [`Monitor::push`] returns.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.out_schema)
    }

    /// Takes one valid batch; returns the batches ready to be written, in order.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        if self.reference_ready {
            return Ok(vec![self.process(batch)?]);
        }
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        if self.held_rows < self.config.reference_rows {
            return Ok(vec![]);
        }
        self.release()
    }

    /// Releases the held rows (end of input); call before [`Monitor::finish`].
    pub fn flush(&mut self) -> Result<Vec<RecordBatch>> {
        if self.reference_ready {
            return Ok(vec![]);
        }
        self.release()
    }

    fn release(&mut self) -> Result<Vec<RecordBatch>> {
        for (i, f) in self.schema.fields().iter().enumerate() {
            if Measure::of(f.data_type()) != Measure::Number || self.rules[i].reference.is_some() {
                continue;
            }
            let mut xs = Vec::with_capacity(self.held_rows);
            for b in &self.held {
                let c = cast(b.column(i), &DataType::Float64)?;
                xs.extend(
                    c.as_primitive::<arrow::datatypes::Float64Type>()
                        .iter()
                        .flatten()
                        .filter(|x| x.is_finite()),
                );
            }
            self.rules[i].reference = reference_of(xs, f.data_type().is_integer());
        }
        self.reference_from = format!("first {} rows", self.held_rows);
        self.reference_ready = true;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|b| self.process(b))
            .collect()
    }

    /// Profiles a batch and applies the row rules.
    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut tripped: Vec<Vec<String>> = if self.config.flag_rows {
            vec![Vec::new(); n]
        } else {
            Vec::new()
        };
        let mut any = vec![false; n];
        for (i, col) in batch.columns().iter().enumerate() {
            let numbers = (self.columns[i].measure == Measure::Number)
                .then(|| cast(col, &DataType::Float64))
                .transpose()?;
            let numbers = numbers
                .as_ref()
                .map(|a| a.as_primitive::<arrow::datatypes::Float64Type>());
            self.columns[i].observe(col, numbers, &mut self.hashes)?;
            let field = self.schema.field(i).name();
            let rules = &mut self.rules[i];
            if let (Some(r), Some(f)) = (rules.reference.filter(|r| r.mad > 0.0), numbers) {
                let mask = outlier_mask(f, r, self.config.outlier_threshold);
                for (k, x) in f.iter().enumerate() {
                    if !mask.value(k) {
                        continue;
                    }
                    rules.outliers += 1;
                    any[k] = true;
                    if rules.outlier_examples.len() < EXAMPLES {
                        rules.outlier_examples.push(serde_json::json!({
                            "value": x,
                            "valid_row": self.rows + k as u64,
                        }));
                    }
                    if let Some(t) = tripped.get_mut(k) {
                        t.push(format!("outlier:{field}"));
                    }
                }
            }
            if let Some(known) = &rules.known {
                let strings = cast(col, &DataType::Utf8)?;
                for (k, v) in strings.as_string::<i32>().iter().enumerate() {
                    let Some(v) = v else { continue };
                    if known.contains(v) {
                        continue;
                    }
                    *rules.new_values.entry(v.to_string()).or_default() += 1;
                    any[k] = true;
                    if let Some(t) = tripped.get_mut(k) {
                        t.push(format!("new_value:{field}"));
                    }
                }
            }
        }
        self.rows += n as u64;
        self.rows_flagged += any.iter().filter(|x| **x).count() as u64;
        if !self.config.flag_rows {
            return Ok(batch);
        }
        let mut list = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            false,
        )));
        for t in tripped {
            for r in t {
                list.values().append_value(r);
            }
            list.append(true);
        }
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        cols.push(Arc::new(list.finish()));
        Ok(RecordBatch::try_new(Arc::clone(&self.out_schema), cols)?)
    }

    /// The run's profile and flags (call after the last batch was written).
    pub fn finish(self, at: String) -> (RunProfile, AnomalyReport) {
        let rows = self.rows;
        let max_categories = self.config.max_categories;
        let profile = RunProfile {
            at,
            rows,
            columns: self
                .columns
                .into_iter()
                .map(|c| (c.name.clone(), c.finish(rows, max_categories)))
                .collect(),
        };
        let mut flags = Vec::new();
        for (i, f) in self.schema.fields().iter().enumerate() {
            let name = f.name();
            let r = &self.rules[i];
            if r.outliers > 0 {
                let reference = r.reference.expect("outliers need a reference");
                let shown: Vec<String> = r
                    .outlier_examples
                    .iter()
                    .map(|e| e["value"].to_string())
                    .collect();
                flags.push(Flag {
                    rule: "outliers",
                    field: name.clone(),
                    count: Some(r.outliers),
                    value: None,
                    baseline: Some(if reference.log {
                        reference.median.exp()
                    } else {
                        reference.median
                    }),
                    examples: r.outlier_examples.clone(),
                    message: if reference.log {
                        format!(
                            "{name}: {} outliers (robust z > {} on a log scale; median {}, MAD of ln {}), e.g. {}",
                            r.outliers,
                            self.config.outlier_threshold,
                            round(reference.median.exp()),
                            round(reference.mad),
                            shown.join(", ")
                        )
                    } else {
                        format!(
                            "{name}: {} outliers (robust z > {}; median {}, MAD {}), e.g. {}",
                            r.outliers,
                            self.config.outlier_threshold,
                            round(reference.median),
                            round(reference.mad),
                            shown.join(", ")
                        )
                    },
                });
            }
            if !r.new_values.is_empty() {
                let count = r.new_values.values().sum();
                let mut values: Vec<(&String, &u64)> = r.new_values.iter().collect();
                values.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                flags.push(Flag {
                    rule: "new_values",
                    field: name.clone(),
                    count: Some(count),
                    value: None,
                    baseline: None,
                    examples: values
                        .iter()
                        .take(EXAMPLES)
                        .map(|(v, n)| serde_json::json!({"value": v, "rows": n}))
                        .collect(),
                    message: format!(
                        "{name}: {count} rows with values not seen in earlier runs: {}",
                        values
                            .iter()
                            .take(EXAMPLES)
                            .map(|(v, n)| format!("{v:?} ({n})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let recent: Vec<&RunProfile> = self.previous.iter().rev().collect();
        flags.extend(drift(&profile, &recent, &self.config));
        let report = AnomalyReport {
            reference: self.reference_from,
            compared_runs: recent.len(),
            rows_flagged: self.rows_flagged,
            flags,
        };
        (profile, report)
    }
}

/// The `_anomalies` column: a list of rule names, never null.
pub fn flags_field() -> Field {
    Field::new(
        FLAGS_COL,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
        false,
    )
}

/// True where the robust z-score exceeds the threshold (false for nulls).
fn outlier_mask(xs: &Float64Array, r: Reference, threshold: f64) -> BooleanArray {
    let limit = threshold * r.mad / MAD_SCALE;
    let values: Vec<bool> = if r.log {
        // A value that is not positive has no logarithm; in a column of positive numbers it is
        // an outlier by itself.
        xs.values()
            .iter()
            .map(|x| *x <= 0.0 || (x.ln() - r.median).abs() > limit)
            .collect()
    } else {
        xs.values()
            .iter()
            .map(|x| (x - r.median).abs() > limit)
            .collect()
    };
    let mask = BooleanArray::from(values);
    match xs.nulls() {
        Some(n) => {
            arrow::compute::and(&mask, &BooleanArray::new(n.inner().clone(), None)).unwrap_or(mask)
        }
        None => mask,
    }
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        (x * 100.0).round() / 100.0
    } else {
        let scale = 10f64.powi(4 - x.abs().log10().ceil().max(0.0) as i32);
        (x * scale).round() / scale
    }
}

/// Column-level drift of `now` against earlier runs (newest first).
fn drift(now: &RunProfile, earlier: &[&RunProfile], cfg: &AnomalyConfig) -> Vec<Flag> {
    let mut flags = Vec::new();
    if earlier.is_empty() {
        return flags;
    }
    for (name, c) in &now.columns {
        let before: Vec<&ColumnProfile> =
            earlier.iter().filter_map(|p| p.columns.get(name)).collect();
        if before.is_empty() || now.rows == 0 {
            continue;
        }
        let avg = |f: &dyn Fn(&ColumnProfile) -> Option<f64>| -> Option<f64> {
            let xs: Vec<f64> = before.iter().filter_map(|c| f(c)).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        };
        let null_before = avg(&|c| Some(c.null_share)).unwrap_or(0.0);
        if (c.null_share - null_before).abs() > cfg.max_null_share_change {
            flags.push(Flag {
                rule: "null_share_drift",
                field: name.clone(),
                count: Some(c.nulls),
                value: Some(c.null_share),
                baseline: Some(null_before),
                examples: vec![],
                message: format!(
                    "{name}: null share {:.1}% (earlier runs {:.1}%)",
                    c.null_share * 100.0,
                    null_before * 100.0
                ),
            });
        }
        if let (Some(mean), Some(mean_before), Some(std_before)) =
            (c.mean, avg(&|c| c.mean), avg(&|c| c.std))
        {
            let shift = (mean - mean_before).abs();
            let drifted = if std_before > 0.0 {
                shift / std_before > cfg.max_mean_shift
            } else {
                shift > 0.0
            };
            if drifted {
                flags.push(Flag {
                    rule: "mean_drift",
                    field: name.clone(),
                    count: None,
                    value: Some(mean),
                    baseline: Some(mean_before),
                    examples: vec![],
                    message: format!(
                        "{name}: mean {} (earlier runs {}, a shift of {:.2} standard deviations)",
                        round(mean),
                        round(mean_before),
                        if std_before > 0.0 {
                            shift / std_before
                        } else {
                            f64::INFINITY
                        }
                    ),
                });
            }
        }
        // Category shares against the newest earlier run.
        if let (Some(now_c), Some(prev_c)) = (&c.categories, before[0].categories.as_ref()) {
            let total_now: u64 = now_c.values().sum();
            let total_prev: u64 = prev_c.values().sum();
            if total_now > 0 && total_prev > 0 {
                let keys: HashSet<&String> = now_c.keys().chain(prev_c.keys()).collect();
                let share = |m: &BTreeMap<String, u64>, k: &String, t: u64| {
                    m.get(k).copied().unwrap_or(0) as f64 / t as f64
                };
                let distance = keys
                    .iter()
                    .map(|k| (share(now_c, k, total_now) - share(prev_c, k, total_prev)).abs())
                    .sum::<f64>()
                    / 2.0;
                if distance > cfg.max_category_shift {
                    let gone: Vec<&String> =
                        prev_c.keys().filter(|k| !now_c.contains_key(*k)).collect();
                    flags.push(Flag {
                        rule: "category_drift",
                        field: name.clone(),
                        count: None,
                        value: Some(distance),
                        baseline: None,
                        examples: gone.iter().map(|g| Value::from(g.as_str())).collect(),
                        message: format!(
                            "{name}: value shares moved by {:.1}% since the previous run{}",
                            distance * 100.0,
                            if gone.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "; no longer seen: {}",
                                    gone.iter()
                                        .map(|g| format!("{g:?}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ),
                    });
                }
            }
        }
    }
    flags
}

fn profiles_path(dir: &Path, source: &str) -> PathBuf {
    dir.join("profiles").join(format!("{source}.ndjson"))
}

/// The source's last `keep` stored profiles, oldest first (none if it has never run).
pub fn load_profiles(dir: &Path, source: &str, keep: usize) -> Result<Vec<RunProfile>> {
    let p = profiles_path(dir, source);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("reading", p, e)),
    };
    // A line that does not parse (a run killed mid-append) is skipped, not fatal. Only the
    // newest lines are parsed: the file grows by one line per run.
    let mut newest: Vec<RunProfile> = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(keep)
        .collect();
    newest.reverse();
    Ok(newest)
}

/// Appends a run's profile (one whole line per write).
pub fn append_profile(dir: &Path, source: &str, profile: &RunProfile) -> Result<()> {
    let p = profiles_path(dir, source);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
    }
    let mut line = serde_json::to_vec(profile)
        .map_err(|e| Error::source(source, format!("profile not serialisable: {e}")))?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| f.write_all(&line))
        .map_err(|e| Error::io("writing", &p, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    fn batch(xs: &[Option<f64>], cats: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("c", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(xs.to_vec())),
                Arc::new(StringArray::from(cats.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..xs.len() as i64)),
            ],
        )
        .unwrap()
    }

    fn run(
        cfg: &AnomalyConfig,
        previous: Vec<RunProfile>,
        batches: Vec<RecordBatch>,
    ) -> (Vec<RecordBatch>, RunProfile, AnomalyReport) {
        let mut m = Monitor::new(cfg, batches[0].schema(), previous).unwrap();
        let mut out = Vec::new();
        for b in batches {
            out.extend(m.push(b).unwrap());
        }
        out.extend(m.flush().unwrap());
        let (p, r) = m.finish("t".into());
        (out, p, r)
    }

    #[test]
    fn profile_figures_are_exact_where_they_can_be() {
        let xs: Vec<Option<f64>> = (0..1000)
            .map(|i| if i % 10 == 0 { None } else { Some(i as f64) })
            .collect();
        let cats: Vec<&str> = (0..1000).map(|i| ["a", "b", "b"][i % 3]).collect();
        let (_, p, _) = run(&AnomalyConfig::default(), vec![], vec![batch(&xs, &cats)]);
        let x = &p.columns["x"];
        assert_eq!((x.nulls, x.kind.as_str()), (100, "number"));
        assert!((x.null_share - 0.1).abs() < 1e-12);
        assert_eq!(x.min, Some(Value::from(1.0)));
        assert_eq!(x.max, Some(Value::from(999.0)));
        let vals: Vec<f64> = (0..1000)
            .filter(|i| i % 10 != 0)
            .map(|i| i as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert!((x.mean.unwrap() - mean).abs() < 1e-9);
        assert!(
            (x.quantiles["p50"] - 500.0).abs() < 10.0,
            "{:?}",
            x.quantiles
        );
        assert!((x.mad.unwrap() - 250.0).abs() < 15.0, "{:?}", x.mad);
        assert!(
            (x.distinct.unwrap() as i64 - 900).abs() < 20,
            "{:?}",
            x.distinct
        );
        let c = &p.columns["c"];
        assert_eq!(c.distinct, Some(2));
        assert_eq!(c.top[0], ("b".to_string(), 666));
        assert_eq!(c.categories.as_ref().unwrap()["a"], 334);
    }

    #[test]
    fn outliers_are_flagged_against_the_first_rows_and_marked_per_row() {
        let mut xs: Vec<Option<f64>> = (0..2000).map(|i| Some(100.0 + (i % 21) as f64)).collect();
        xs[1500] = Some(10_000.0);
        xs[1700] = Some(-400.0);
        let cats = vec!["a"; 2000];
        let cfg = AnomalyConfig {
            flag_rows: true,
            reference_rows: 1000,
            ..Default::default()
        };
        let b = batch(&xs, &cats);
        let (out, _, r) = run(&cfg, vec![], vec![b.slice(0, 800), b.slice(800, 1200)]);
        assert_eq!(r.reference, "first 2000 rows");
        let f = r.flags.iter().find(|f| f.rule == "outliers").unwrap();
        assert_eq!((f.field.as_str(), f.count), ("x", Some(2)));
        assert_eq!(f.examples[0]["valid_row"], 1500);
        assert_eq!(r.rows_flagged, 2);
        let rows: usize = out.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2000);
        let flags = out[1].column_by_name(FLAGS_COL).unwrap().as_list::<i32>();
        assert_eq!(flags.value(700).as_string::<i32>().value(0), "outlier:x");
        assert_eq!(flags.value(0).len(), 0);
    }

    #[test]
    fn drift_and_new_values_are_flagged_against_earlier_runs() {
        let cfg = AnomalyConfig::default();
        let xs: Vec<Option<f64>> = (0..1000).map(|i| Some((i % 50) as f64)).collect();
        let cats: Vec<&str> = (0..1000).map(|i| ["a", "b"][i % 2]).collect();
        let (_, first, r) = run(&cfg, vec![], vec![batch(&xs, &cats)]);
        assert!(r.flags.is_empty(), "{:?}", r.flags);
        // Same data again: nothing.
        let (_, _, r) = run(&cfg, vec![first.clone()], vec![batch(&xs, &cats)]);
        assert!(r.flags.is_empty(), "{:?}", r.flags);
        assert_eq!(r.reference, "previous run");
        // Shifted mean, more nulls, a new category and changed shares.
        let xs2: Vec<Option<f64>> = (0..1000)
            .map(|i| {
                if i % 4 == 0 {
                    None
                } else {
                    Some((i % 50) as f64 + 30.0)
                }
            })
            .collect();
        let cats2: Vec<&str> = (0..1000).map(|i| ["a", "c", "c", "c"][i % 4]).collect();
        let (_, _, r) = run(&cfg, vec![first], vec![batch(&xs2, &cats2)]);
        let rules: Vec<(&str, &str)> = r.flags.iter().map(|f| (f.rule, f.field.as_str())).collect();
        for want in [
            ("null_share_drift", "x"),
            ("mean_drift", "x"),
            ("new_values", "c"),
            ("category_drift", "c"),
        ] {
            assert!(rules.contains(&want), "{want:?} missing from {rules:?}");
        }
        let nv = r.flags.iter().find(|f| f.rule == "new_values").unwrap();
        assert_eq!(nv.count, Some(750));
    }

    #[test]
    fn skewed_columns_are_judged_on_a_log_scale_and_identifiers_not_at_all() {
        // Amount-like values spread evenly in ln(x) over 0..5 (1 to 148): a long right tail that
        // is the column's normal shape; one absurd value.
        let mut xs: Vec<Option<f64>> = (0..3000)
            .map(|i| Some(((i % 100) as f64 / 20.0).exp()))
            .collect();
        xs[2222] = Some(1.0e6);
        let cats = vec!["a"; 3000];
        let (_, p, r) = run(&AnomalyConfig::default(), vec![], vec![batch(&xs, &cats)]);
        let f: Vec<&Flag> = r.flags.iter().filter(|f| f.rule == "outliers").collect();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].field.as_str(), f[0].count), ("x", Some(1)));
        assert!(f[0].message.contains("on a log scale"), "{}", f[0].message);
        // The next run is judged against this run's profile, on the same scale.
        assert!(p.columns["x"].log_mad.is_some());
        let (_, _, r) = run(&AnomalyConfig::default(), vec![p], vec![batch(&xs, &cats)]);
        assert_eq!(r.reference, "previous run");
        let f: Vec<&Flag> = r.flags.iter().filter(|f| f.rule == "outliers").collect();
        assert_eq!((f.len(), f[0].count), (1, Some(1)), "{f:?}");
    }

    #[test]
    fn dates_report_min_and_max_of_the_values_not_of_null_slots() {
        // A null's slot holds 0 (1970-01-01), the same number as a real value later on.
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        let dates = arrow::array::Date32Array::from(vec![None, Some(19_000), Some(0), None]);
        let b = RecordBatch::try_new(schema, vec![Arc::new(dates)]).unwrap();
        let (_, p, _) = run(&AnomalyConfig::default(), vec![], vec![b]);
        let d = &p.columns["d"];
        assert_eq!(d.min, Some(Value::from("1970-01-01")));
        assert_eq!(d.max, Some(Value::from("2022-01-08")));
        assert_eq!(d.nulls, 2);
    }

    #[test]
    fn new_values_are_judged_against_the_last_history_runs_only() {
        let cfg = AnomalyConfig {
            history_runs: 2,
            ..Default::default()
        };
        let xs: Vec<Option<f64>> = (0..100).map(|i| Some(i as f64)).collect();
        let profile = |cats: &[&str]| {
            let c: Vec<&str> = (0..100).map(|i| cats[i % cats.len()]).collect();
            run(&cfg, vec![], vec![batch(&xs, &c)]).1
        };
        // The oldest run had `z`; the two newest did not.
        let earlier = vec![profile(&["a", "z"]), profile(&["a"]), profile(&["a"])];
        let (_, _, r) = run(&cfg, earlier, vec![batch(&xs, &vec!["z"; 100])]);
        assert_eq!(r.compared_runs, 2);
        let nv = r.flags.iter().find(|f| f.rule == "new_values").unwrap();
        assert_eq!(nv.count, Some(100));
    }
}
