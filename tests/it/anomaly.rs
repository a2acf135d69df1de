//! Anomaly flags on valid data: outliers against a robust reference, drift against the source's
//! earlier runs, new category values, and the per-row `_anomalies` column.

use arrow::array::AsArray;
use serde_json::Value;

use crate::harness::{Run, Workdir, config};

const SCHEMA: &str = r#"{"type": "object", "required": ["order_id", "amount", "status"],
    "properties": {"order_id": {"type": "integer"}, "amount": {"type": "number"},
                   "status": {"type": "string", "enum": ["paid", "shipped", "cancelled", "refunded"]},
                   "coupon": {"type": ["string", "null"]}}}"#;

/// 2,000 orders with amounts spread evenly over 90..110 (+ `shift`), three statuses, a coupon on
/// every row but each `coupon_gap`-th; `outliers` rows get absurd amounts and `refunds` rows
/// the status `refunded`.
fn orders(w: &Workdir, shift: f64, coupon_gap: u32, outliers: &[u32], refunds: &[u32]) {
    let mut csv = String::from("order_id,amount,status,coupon\n");
    for i in 1..=2000u32 {
        let amount = if outliers.contains(&i) {
            if i % 2 == 0 { 99_999.0 } else { -5_000.0 }
        } else {
            90.0 + f64::from(i * 8 % 21) + shift
        };
        let status = if refunds.contains(&i) {
            "refunded"
        } else {
            ["paid", "shipped", "cancelled"][(i % 3) as usize]
        };
        let coupon = if i % coupon_gap == 0 {
            String::new()
        } else {
            format!("C{}", i % 40)
        };
        csv.push_str(&format!("{i},{amount},{status},{coupon}\n"));
    }
    w.write("orders.csv", csv);
}

fn setup(format: &str) -> Workdir {
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}}"#,
            SCHEMA,
            &format!(r#""output_format": "{format}", "anomalies": {{"flag_rows": true}},"#),
        ),
    );
    w
}

/// `conform run`, which must succeed: its output and the summary it wrote.
fn run_ok(w: &Workdir) -> (Run, Value) {
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    (r, summary)
}

fn flags(summary: &Value) -> Vec<Value> {
    summary["sources"]["orders"]["anomalies"]["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn flag<'a>(flags: &'a [Value], rule: &str, field: &str) -> Option<&'a Value> {
    flags
        .iter()
        .find(|f| f["rule"] == rule && f["field"] == field)
}

#[test]
fn injected_outliers_are_flagged_and_marked_on_their_rows() {
    let w = setup("ndjson");
    orders(&w, 0.0, 1_000_000, &[500, 1501, 1777], &[]);
    let (r, summary) = run_ok(&w);
    let a = &summary["sources"]["orders"]["anomalies"];
    assert_eq!(a["reference"], "first 2000 rows", "{a}");
    assert_eq!(a["rows_flagged"], 3, "{a}");
    let fl = flags(&summary);
    let o = flag(&fl, "outliers", "amount").unwrap_or_else(|| panic!("{a}"));
    assert_eq!(o["count"], 3);
    assert_eq!(o["examples"][0]["value"], 99_999.0);
    assert_eq!(o["examples"][0]["valid_row"], 499);
    // A first run has nothing to drift from, and the evenly spread order ids are no outliers.
    assert_eq!(fl.len(), 1, "{fl:?}");
    assert!(
        r.stderr
            .contains("conform: orders: anomaly: amount: 3 outliers"),
        "{}",
        r.stderr
    );
    // Anomalies do not make rows invalid; the flags column names the rule per row.
    assert_eq!(summary["sources"]["orders"]["valid"], 2000);
    let rows = w.ndjson("out/orders_valid_data.ndjson");
    let flagged: Vec<i64> = rows
        .iter()
        .filter(|r| r["_anomalies"] != serde_json::json!([]))
        .map(|r| {
            assert_eq!(r["_anomalies"], serde_json::json!(["outlier:amount"]));
            r["order_id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(flagged, vec![500, 1501, 1777]);
    assert!(w.join("out/mappings/profiles/orders.ndjson").exists());
}

#[test]
fn drift_and_new_values_are_flagged_against_the_previous_run() {
    let w = setup("parquet");
    orders(&w, 0.0, 1_000_000, &[], &[]);
    assert!(flags(&run_ok(&w).1).is_empty());
    // The same source a day later: amounts up by 8 (σ ≈ 6), half the coupons missing, and a
    // status never seen before on 40 rows.
    let refunds: Vec<u32> = (1..=40).map(|k| k * 50).collect();
    orders(&w, 8.0, 2, &[], &refunds);
    let (r, summary) = run_ok(&w);
    let a = &summary["sources"]["orders"]["anomalies"];
    assert_eq!(a["reference"], "previous run", "{a}");
    assert_eq!(a["compared_runs"], 1, "{a}");
    let fl = flags(&summary);
    let mean = flag(&fl, "mean_drift", "amount").unwrap_or_else(|| panic!("{a}"));
    assert!(
        (mean["baseline"].as_f64().unwrap() - 100.0).abs() < 0.5,
        "{mean}"
    );
    assert!(
        (mean["value"].as_f64().unwrap() - 108.0).abs() < 0.5,
        "{mean}"
    );
    let nulls = flag(&fl, "null_share_drift", "coupon").unwrap_or_else(|| panic!("{a}"));
    assert_eq!(nulls["value"], 0.5);
    let new = flag(&fl, "new_values", "status").unwrap_or_else(|| panic!("{a}"));
    assert_eq!(new["count"], 40);
    assert_eq!(new["examples"][0]["value"], "refunded");
    // Amounts moved by less than the outlier limit: no outliers, and the order ids did not
    // drift.
    assert!(flag(&fl, "outliers", "amount").is_none(), "{fl:?}");
    assert!(flag(&fl, "mean_drift", "order_id").is_none(), "{fl:?}");
    assert!(
        r.stderr
            .contains("anomaly: status: 40 rows with values not seen in earlier runs")
    );
    // Parquet output carries the flags as a list column.
    let (schema, batches) = w.parquet("out/orders_valid_data.parquet");
    assert_eq!(schema.fields().last().unwrap().name(), "_anomalies");
    let mut marked = 0;
    for b in &batches {
        let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let list = b.column_by_name("_anomalies").unwrap().as_list::<i32>();
        for i in 0..b.num_rows() {
            let v = list.value(i);
            let names: Vec<&str> = v.as_string::<i32>().iter().flatten().collect();
            if ids.value(i) % 50 == 0 && ids.value(i) <= 2000 {
                assert_eq!(names, vec!["new_value:status"], "row {}", ids.value(i));
                marked += 1;
            } else {
                assert!(names.is_empty(), "row {}: {names:?}", ids.value(i));
            }
        }
    }
    assert_eq!(marked, 40);
    // Two profiles stored; `history` lists the second run's flags.
    assert_eq!(
        w.read("out/mappings/profiles/orders.ndjson")
            .lines()
            .count(),
        2
    );
    let h = w.run(&["history", "orders"]);
    assert_eq!(h.code, 0, "{}", h.stderr);
    let lines: Vec<&str> = h.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("    anomaly status: 40 rows with values not seen")),
        "{}",
        h.stdout
    );
    assert!(
        !lines[1].starts_with("    anomaly"),
        "the first run raised nothing: {}",
        h.stdout
    );
}

#[test]
fn anomalies_can_be_turned_off() {
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}}"#,
            SCHEMA,
            r#""output_format": "ndjson", "anomalies": {"enabled": false},"#,
        ),
    );
    orders(&w, 0.0, 1_000_000, &[500], &[]);
    let (_, summary) = run_ok(&w);
    assert!(summary["sources"]["orders"].get("anomalies").is_none());
    assert!(!w.join("out/mappings/profiles").exists());
    assert!(
        w.ndjson("out/orders_valid_data.ndjson")[0]
            .get("_anomalies")
            .is_none()
    );
}
