//! The orders benchmark job on its 1,028-row fixture: the same split and the same error codes
//! per row as the reference engines (`testdata/bench/expected_invalid.ndjson`).

use std::collections::BTreeMap;

use crate::harness::Workdir;

fn expected() -> BTreeMap<u64, Vec<String>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/bench/expected_invalid.ndjson"
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let codes = v["_errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (v["_row"].as_u64().unwrap(), codes)
        })
        .collect()
}

fn run_job(input: &str) -> Workdir {
    let w = Workdir::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let input = format!("{root}/testdata/bench/{input}");
    let out = w.join("out");
    let r = w.run_env(
        &[
            "run",
            "--config",
            &format!("{root}/testdata/bench/config.json"),
        ],
        &[
            ("CONFORM_BENCH_INPUT", &input),
            ("CONFORM_BENCH_OUT", out.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Successfully validated 954 items from orders"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("74 validation errors occurred for orders."),
        "{}",
        r.stdout
    );
    assert!(
        !r.stderr.contains("WARN"),
        "the pinned mapping matches the source: {}",
        r.stderr
    );
    w
}

fn check_codes(w: &Workdir) {
    let got: BTreeMap<u64, Vec<String>> = w
        .ndjson("out/orders_invalid_data.ndjson")
        .iter()
        .map(|v| {
            let codes = v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{}:{}",
                        e["field"].as_str().unwrap(),
                        e["rule"].as_str().unwrap()
                    )
                })
                .collect();
            (v["row"].as_u64().unwrap() - 1, codes)
        })
        .collect();
    assert_eq!(got, expected());
}

fn valid_rows(w: &Workdir) -> Vec<arrow::array::RecordBatch> {
    w.parquet("out/orders_valid_data.parquet").1
}

#[test]
fn csv_matches_reference_error_codes() {
    let w = run_job("orders_small.csv");
    check_codes(&w);
    let batches = valid_rows(&w);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 954);
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "order_id",
            "customer_email",
            "customer_name",
            "order_date",
            "amount",
            "country",
            "status",
            "quantity",
            "weight_kg",
            "notes",
            "is_gift"
        ]
    );
    // Row 2 of the fixture: padded, mixed case, day-first date, pounds, multi-line comment.
    let b = &batches[0];
    let text = arrow::util::pretty::pretty_format_batches(&[b.slice(1, 1)])
        .unwrap()
        .to_string();
    assert!(text.contains("alan.turing@example.org"), "{text}");
    assert!(text.contains("Alan Turing"), "{text}");
    assert!(text.contains("2023-04-05"), "{text}");
    assert!(text.contains("| GB "), "{text}");
    assert!(text.contains("shipped"), "{text}");
}

#[test]
fn ndjson_matches_reference_error_codes_and_csv_output() {
    let w = run_job("orders_small.ndjson");
    check_codes(&w);
    let from_json = valid_rows(&w);
    let from_csv = valid_rows(&run_job("orders_small.csv"));
    let a = arrow::compute::concat_batches(&from_json[0].schema(), &from_json).unwrap();
    let b = arrow::compute::concat_batches(&from_csv[0].schema(), &from_csv).unwrap();
    assert_eq!(a, b, "CSV and NDJSON inputs give the same valid rows");
}
