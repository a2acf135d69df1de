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

mod drift;
mod monitor;
mod reference;
mod statistics;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
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

use drift::drift;
pub use monitor::Monitor;
use monitor::round;
use reference::digest_mad;
use reference::{Reference, reference_from, reference_of};
use statistics::{ColumnState, Measure};
pub use store::{append_profile, load_profiles};

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
