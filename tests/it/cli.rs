//! The CLI contract: console output, output files, exit codes, config errors, secrets.

use crate::harness::{PEOPLE_SCHEMA, Workdir, config, demo};

#[test]
fn demo_console_output_is_the_original_tools_words() {
    let w = demo();
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let expected = "\
****************************************
Starting to process for source1
Loading raw data for source1
Generated Mapping for source1
Transforming data from source1
Successfully validated 2 items from source1
Data saved to output/source1_valid_data.json

****************************************
Starting to process for source2
Loading raw data for source2
Generated Mapping for source2
Transforming data from source2
Successfully validated 1 items from source2
1 validation errors occurred for source2.
Data saved to output/source2_valid_data.json
Data saved to output/source2_invalid_data.json
";
    // Sources run concurrently and each block is printed whole when its source finishes, so
    // the blocks may come in either order; each one is intact.
    let blocks = |t: &str| {
        let mut b: Vec<String> = t.split("\n\n").map(|b| b.trim_end().to_string()).collect();
        b.sort();
        b
    };
    assert_eq!(blocks(&r.stdout), blocks(expected), "{}", r.stdout);
    // One at a time, they come in config order.
    w.write(
        "config.json",
        w.read("config.json").replace(
            "\"data_sources\"",
            "\"max_concurrent_sources\": 1, \"data_sources\"",
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.stdout, expected);
}

#[test]
fn demo_outputs_hold_the_mapped_rows_and_reasons() {
    let w = demo();
    assert_eq!(w.run(&["run"]).code, 0);
    let v1 = w.json("output/source1_valid_data.json");
    assert_eq!(
        v1,
        serde_json::json!([
            {"customer_id": 101, "full_name": "Ada Lovelace", "email": "ada@example.com", "signup_date": "2023-01-15", "lifetime_value": 1250.0, "is_active": true},
            {"customer_id": 102, "full_name": "Alan Turing", "email": "alan.turing@example.org", "signup_date": "2023-02-01", "lifetime_value": 310.5, "is_active": false}
        ])
    );
    assert!(
        !w.join("output/source1_invalid_data.json").exists(),
        "no invalid rows, no invalid file"
    );
    let v2 = w.json("output/source2_valid_data.json");
    assert_eq!(v2[0]["full_name"], "Grace Hopper");
    assert_eq!(
        v2[0]["signup_date"], "2023-03-15",
        "day-first date detected from the sample"
    );
    let bad = w.json("output/source2_invalid_data.json");
    let bad = bad.as_array().unwrap();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["row"], 2);
    assert_eq!(bad[0]["record"]["mail"], "edsger.example.com");
    assert_eq!(bad[0]["errors"][0]["field"], "email");
    assert_eq!(bad[0]["errors"][0]["rule"], "format");
    let summary = w.json("output/run_summary.json");
    assert_eq!(summary["totals"]["rows_read"], 4);
    assert_eq!(
        summary["sources"]["source2"]["errors"]["email"]["format"],
        1
    );
    let doc = w.json("output/mappings/source2.mapping.json");
    assert_eq!(doc["mapper"], "heuristic");
    assert_eq!(
        doc["fields"]["full_name"]["sources"],
        serde_json::json!(["first_name", "last_name"])
    );
    assert!(w.temp_files().is_empty(), "{:?}", w.temp_files());
}

#[test]
fn pinned_mapping_is_used_and_edits_take_effect() {
    let w = demo();
    assert_eq!(w.run(&["map"]).code, 0);
    let path = "output/mappings/source1.mapping.json";
    let mut doc = w.json(path);
    doc["fields"]["full_name"]["expr"] = serde_json::json!("upper(\"Full Name\")");
    w.write(path, serde_json::to_string_pretty(&doc).unwrap());
    let r = w.run(&["run", "--source", "source1", "--mapper", "file"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = w.json("output/source1_valid_data.json");
    assert_eq!(v[0]["full_name"], "ADA LOVELACE");
    let s = w.json("output/run_summary.json");
    assert_eq!(s["sources"]["source1"]["mapping"]["stored"], true);
    assert_eq!(s["sources"]["source1"]["mapping"]["mapper"], "heuristic");
}

#[test]
fn fields_below_min_confidence_are_left_undecided_and_listed_first() {
    let w = demo();
    let r = w.run(&["map", "--source", "source1", "--min-confidence", "0.99"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("output/mappings/source1.mapping.json");
    let fields = doc["fields"].as_object().unwrap();
    let undecided: Vec<&String> = fields
        .iter()
        .filter(|(_, m)| m["expr"].is_null() && m["candidates"].is_array())
        .map(|(k, _)| k)
        .collect();
    assert!(!undecided.is_empty(), "{doc:#}");
    for name in &undecided {
        let m = &fields[name.as_str()];
        assert!(
            m["rationale"].as_str().unwrap().starts_with("undecided"),
            "{m}"
        );
        // The column it would have taken is its first candidate.
        assert!(m["candidates"][0]["score"].as_f64().unwrap() < 0.99, "{m}");
        assert!(!m["candidates"][0]["expr"].as_str().unwrap().is_empty());
    }
    // The review table starts with them.
    let first_row = r
        .stdout
        .lines()
        .skip_while(|l| !l.contains("expression"))
        .nth(1);
    assert!(
        first_row.is_some_and(
            |l| l.trim_start().starts_with(undecided[0].as_str()) && l.contains("(unmapped)")
        ),
        "{}",
        r.stdout
    );
    // A new mapping at the default keeps them mapped; the range is checked.
    let r = w.run(&["map", "--source", "source1", "--mapper", "heuristic"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("output/mappings/source1.mapping.json");
    assert!(
        doc["fields"][undecided[0].as_str()]["expr"].is_string(),
        "{doc:#}"
    );
    let r = w.run(&["map", "--min-confidence", "1.5"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("from 0 to 1"), "{}", r.stderr);
    // Below the matcher's own acceptance score a threshold maps nothing more, and says so.
    let r = w.run(&[
        "map",
        "--source",
        "source1",
        "--mapper",
        "heuristic",
        "--min-confidence",
        "0.1",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("maps nothing more"), "{}", r.stderr);
    // The default says nothing, though it is below that score on a narrow target.
    let r = w.run(&["map", "--source", "source1", "--mapper", "heuristic"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("maps nothing more"), "{}", r.stderr);
}

#[test]
fn bad_expression_fails_only_its_source_with_the_field_named() {
    let w = demo();
    assert_eq!(w.run(&["map"]).code, 0);
    let path = "output/mappings/source1.mapping.json";
    let mut doc = w.json(path);
    doc["fields"]["email"]["expr"] = serde_json::json!("lower(\"Emial\")");
    w.write(path, serde_json::to_string_pretty(&doc).unwrap());
    let r = w.run(&["run"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("field `email`") && r.stderr.contains("`Emial`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Did you mean `E-mail`?"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Successfully validated 1 items from source2"),
        "the other source still ran"
    );
    let mut doc = w.json(path);
    doc["fields"]["email"]["expr"] = serde_json::json!("random()");
    w.write(path, serde_json::to_string_pretty(&doc).unwrap());
    let r = w.run(&["check"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("function `random` is not allowed"),
        "{}",
        r.stderr
    );
}

#[test]
fn formats_ndjson_and_parquet() {
    let w = demo();
    let r = w.run(&["run", "--format", "ndjson"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(w.ndjson("output/source1_valid_data.ndjson").len(), 2);
    assert_eq!(w.ndjson("output/source2_invalid_data.ndjson").len(), 1);
    let r = w.run(&["run", "--format", "parquet", "--output-dir", "pq"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Data saved to "), "{}", r.stdout);
    let (schema, batches) = w.parquet("pq/source1_valid_data.parquet");
    assert_eq!(
        schema.field_with_name("customer_id").unwrap().data_type(),
        &arrow::datatypes::DataType::Int64
    );
    assert!(
        !schema.field_with_name("customer_id").unwrap().is_nullable(),
        "required fields are non-null"
    );
    assert_eq!(
        schema.field_with_name("signup_date").unwrap().data_type(),
        &arrow::datatypes::DataType::Date32
    );
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);
    assert!(w.join("pq/source2_invalid_data.ndjson").exists());
}

#[test]
fn config_errors_exit_2_and_name_the_problem() {
    let w = Workdir::new();
    w.write("a.csv", "id,name\n1,x\n");
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "a.csv", "fromat": "csv"}}"#,
            PEOPLE_SCHEMA,
            "",
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("data_sources.s") && r.stderr.contains("fromat"),
        "{}",
        r.stderr
    );

    w.write(
        "config.json",
        config(r#"{"s": {"path": "${NO_SUCH_VAR_XY}"}}"#, PEOPLE_SCHEMA, ""),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("NO_SUCH_VAR_XY"), "{}", r.stderr);

    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "a.csv"}}"#,
            r#"{"type": "object", "properties": {"id": {"type": "intger"}}}"#,
            "",
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("internal_schema"), "{}", r.stderr);
    assert!(
        !w.join("out").exists(),
        "nothing is written before the config is valid"
    );

    let r = w.run(&["run", "--config", "missing.json"]);
    assert_eq!(r.code, 2);
    let r = w.run(&["frobnicate"]);
    assert_eq!(r.code, 2, "usage errors exit 2");
}

#[test]
fn env_interpolation_and_secrets_stay_hidden() {
    let w = Workdir::new();
    w.write("a.csv", "id,name\n1,x\n");
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "${IN_FILE}", "credentials": {"password": "${SECRET_PW}"}}}"#,
            PEOPLE_SCHEMA,
            "",
        ),
    );
    let r = w.run_env(
        &["-vv", "run"],
        &[("IN_FILE", "a.csv"), ("SECRET_PW", "hunter2-very-secret")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("does not use credentials"),
        "a one-line warning: {}",
        r.stderr
    );
    let mut everything = r.stdout + &r.stderr;
    for f in [
        "out/run_summary.json",
        "out/s_valid_data.json",
        "out/mappings/s.mapping.json",
    ] {
        everything.push_str(&w.read(f));
    }
    assert!(!everything.contains("hunter2-very-secret"));
}

#[test]
fn a_missing_file_fails_its_source_only() {
    let w = Workdir::new();
    w.write("a.csv", "id,name\n1,x\n");
    w.write(
        "config.json",
        config(
            r#"{"gone": {"path": "nope.csv"}, "ok": {"path": "a.csv"}}"#,
            PEOPLE_SCHEMA,
            "",
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("conform: source `gone` failed") && r.stderr.contains("nope.csv"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("Successfully validated 1 items from ok"));
    let s = w.json("out/run_summary.json");
    assert_eq!(s["sources"]["gone"]["status"], "failed");
    assert_eq!(s["sources"]["ok"]["status"], "ok");
}

#[test]
fn schema_explain_and_check_commands() {
    let w = demo();
    let r = w.run(&["schema"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("customer_id: Int64 not null"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("signup_date: Date32 not null"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("lifetime_value: Float64 nullable"),
        "{}",
        r.stdout
    );
    let r = w.run(&["explain", "--source", "source2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("try_to_date(created, '%d/%m/%Y') AS \"signup_date\""),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("-- email:format"), "{}", r.stdout);
    let r = w.run(&["check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("source1: ok"), "{}", r.stdout);
    assert!(!w.join("output").exists(), "check writes nothing");
    let r = w.run(&["run", "--source", "nope"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("Valid sources are `source1`, `source2`"),
        "{}",
        r.stderr
    );
}
