//! Bad input is data: malformed records become invalid rows with a reason; nothing is lost.

use crate::harness::{PEOPLE_SCHEMA, Workdir, config};

/// Writes a config of `sources` against the people schema (plus `extra` top-level keys) and
/// runs it; the run must succeed (bad rows are data, not failures).
fn run_ok(w: &Workdir, sources: &str, extra: &str) {
    w.write("config.json", config(sources, PEOPLE_SCHEMA, extra));
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn summary_counts(w: &Workdir, source: &str) -> (u64, u64, u64) {
    let s = w.json("out/run_summary.json");
    let e = &s["sources"][source];
    (
        e["rows_read"].as_u64().unwrap(),
        e["valid"].as_u64().unwrap(),
        e["invalid"].as_u64().unwrap(),
    )
}

#[test]
fn malformed_csv_records_are_invalid_rows() {
    let w = Workdir::new();
    let mut data =
        b"id,name,email,age\n1,Ann,ann@example.com,30\n2,Bob\n3,Cy,cy@example.com,40,extra\n"
            .to_vec();
    data.extend_from_slice(
        b"4,D\xffe,d@example.com,5\n5,Eve,eve@example.com,abc\n6,\"Multi\nline\",f@example.com,7\n",
    );
    w.write("p.csv", data);
    run_ok(
        &w,
        r#"{"p": {"path": "p.csv"}}"#,
        r#""output_format": "ndjson","#,
    );
    let (read, valid, invalid) = summary_counts(&w, "p");
    assert_eq!((read, valid, invalid), (6, 2, 4));
    let bad = w.ndjson("out/p_invalid_data.ndjson");
    let by_row = |n: u64| {
        bad.iter()
            .find(|b| b["row"] == n)
            .unwrap_or_else(|| panic!("row {n} missing"))
    };
    assert_eq!(by_row(2)["errors"][0]["rule"], "malformed");
    assert!(
        by_row(2)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expected 4 fields, found 2")
    );
    assert_eq!(by_row(3)["errors"][0]["rule"], "malformed");
    assert!(
        by_row(4)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid UTF-8")
    );
    assert_eq!(by_row(5)["errors"][0]["field"], "age");
    assert_eq!(by_row(5)["errors"][0]["rule"], "type");
    assert!(
        by_row(5)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"abc\"")
    );
    let valid = w.ndjson("out/p_valid_data.ndjson");
    assert_eq!(
        valid[1]["name"], "Multi\nline",
        "a quoted newline stays inside its record"
    );
}

#[test]
fn broken_json_lines_and_arrays_keep_their_raw_text() {
    let w = Workdir::new();
    w.write(
        "p.ndjson",
        "{\"id\": 1, \"name\": \"Ann\"}\n{\"id\": 2, \"name\": \n\n[1,2]\n{\"id\": 3, \"name\": \"Cy\", \"surprise\": 1}\n{\"id\": \"4\", \"name\": \"Di\", \"age\": 200}\n",
    );
    w.write(
        "q.json",
        "[{\"id\": 1, \"name\": \"A\"}, {\"id\": 2, \"name\": \"B\", \"age\": -1}, {\"id\": 3, ",
    );
    run_ok(
        &w,
        r#"{"p": {"path": "p.ndjson"}, "q": {"path": "q.json"}}"#,
        r#""output_format": "ndjson","#,
    );
    // Row 5's extra key is among the first records, so it became a column: the row is valid.
    assert_eq!(summary_counts(&w, "p"), (5, 2, 3));
    let bad = w.ndjson("out/p_invalid_data.ndjson");
    assert_eq!(bad[0]["row"], 2);
    assert_eq!(bad[0]["errors"][0]["rule"], "malformed");
    assert!(
        bad[0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    assert_eq!(bad[0]["raw"], "{\"id\": 2, \"name\": ");
    assert_eq!(bad[1]["row"], 4, "line numbers count blank lines");
    assert!(
        bad[1]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a JSON object")
    );
    assert_eq!(bad[2]["row"], 6);
    assert_eq!(bad[2]["errors"][0]["rule"], "maximum");
    assert_eq!(summary_counts(&w, "q"), (3, 1, 2));
    let q = w.ndjson("out/q_invalid_data.ndjson");
    assert_eq!(q[0]["errors"][0]["rule"], "minimum");
    assert_eq!(
        q[1]["errors"][0]["rule"], "malformed",
        "a truncated array's last element"
    );
}

#[test]
fn a_key_not_seen_when_columns_were_inferred_is_malformed() {
    let w = Workdir::new();
    // Columns are inferred from the first 1,000 records; the 1,201st brings a new key.
    let mut text: String = (1..=1200)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
        .collect();
    text.push_str("{\"id\": 1201, \"name\": \"late\", \"surprise\": true}\n");
    w.write("p.ndjson", text);
    run_ok(
        &w,
        r#"{"p": {"path": "p.ndjson"}}"#,
        r#""output_format": "ndjson","#,
    );
    assert_eq!(summary_counts(&w, "p"), (1201, 1200, 1));
    let bad = w.ndjson("out/p_invalid_data.ndjson");
    assert_eq!(bad[0]["row"], 1201);
    assert_eq!(bad[0]["errors"][0]["rule"], "malformed");
    assert!(bad[0]["raw"].as_str().unwrap().contains("surprise"));
}

#[test]
fn compressed_inputs_and_globs() {
    use std::io::Write;
    let w = Workdir::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"id,name\n1,a\n2,b\n").unwrap();
    w.write("in/part1.csv.gz", gz.finish().unwrap());
    w.write(
        "in/part2.csv.zst",
        zstd::encode_all(&b"id,name\n3,c\n"[..], 3).unwrap(),
    );
    run_ok(&w, r#"{"p": {"path": "in/part*", "format": "csv"}}"#, "");
    assert_eq!(summary_counts(&w, "p"), (3, 3, 0));
    let v = w.json("out/p_valid_data.json");
    assert_eq!(v[2]["name"], "c");
}

#[test]
fn nested_schema_keywords_fall_back_to_per_row_validation() {
    let w = Workdir::new();
    w.write(
        "p.ndjson",
        "{\"id\": 1, \"name\": \"a\", \"address\": {\"city\": \"Oslo\", \"zip\": \"0150\"}}\n{\"id\": 2, \"name\": \"b\", \"address\": {\"city\": \"\", \"zip\": \"x\"}}\n",
    );
    let schema = r#"{"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "address": {"type": "object", "properties": {"city": {"type": "string", "minLength": 1}, "zip": {"type": "string", "pattern": "^[0-9]{4}$"}}}
    }}"#;
    w.write(
        "config.json",
        config(
            r#"{"p": {"path": "p.ndjson"}}"#,
            schema,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(summary_counts(&w, "p"), (2, 1, 1));
    let bad = w.ndjson("out/p_invalid_data.ndjson");
    assert_eq!(bad[0]["errors"][0]["rule"], "schema");
    let msg = bad[0]["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("/city") && msg.contains("/zip"), "{msg}");
}

#[test]
fn ctrl_c_leaves_no_file_under_a_final_name() {
    interrupted_run_leaves_no_half_file("-INT");
}

#[test]
fn sigterm_leaves_no_file_under_a_final_name() {
    interrupted_run_leaves_no_half_file("-TERM");
}

fn interrupted_run_leaves_no_half_file(signal: &str) {
    let w = Workdir::new();
    // Large enough that the run is still going when the signal arrives.
    let mut text = String::from("id,name,email,age\n");
    for i in 1..=400_000 {
        text.push_str(&format!("{i},name {i},user{i}@example.com,{}\n", i % 120));
    }
    w.write("p.csv", text);
    w.write(
        "config.json",
        config(r#"{"p": {"path": "p.csv"}}"#, PEOPLE_SCHEMA, ""),
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_conform"))
        .args(["run", "--progress", "never"])
        .current_dir(w.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the output file is being written, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while w.temp_files().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!w.temp_files().is_empty(), "the run started writing");
    let killed = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // The signal may land after the file was renamed into place (the run is fast); then it
    // must be whole. Either way no half file exists under the final name.
    if w.join("out/p_valid_data.json").exists() {
        let rows = w.json("out/p_valid_data.json");
        assert_eq!(
            rows.as_array().map(Vec::len),
            Some(400_000),
            "a file under its final name is complete"
        );
    }
    assert!(
        w.temp_files().is_empty(),
        "temporary files removed: {:?}",
        w.temp_files()
    );
}

#[test]
fn output_keeps_the_input_order_across_batches_and_partitions() {
    let w = Workdir::new();
    let mut text = String::from("id,name,age\n");
    for i in 1..=500 {
        // Every 7th row is invalid (age out of range), so both sides span many batches.
        let age = if i % 7 == 0 { 999 } else { i % 100 };
        text.push_str(&format!("{i},n{i},{age}\n"));
    }
    w.write("p.csv", text);
    run_ok(
        &w,
        r#"{"p": {"path": "p.csv"}}"#,
        r#""batch_size": 16, "output_format": "ndjson","#,
    );
    let ids: Vec<i64> = w
        .ndjson("out/p_valid_data.ndjson")
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=500).filter(|i| i % 7 != 0).collect();
    assert_eq!(ids, expected);
    let rows: Vec<u64> = w
        .ndjson("out/p_invalid_data.ndjson")
        .iter()
        .map(|v| v["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, (1..=500).filter(|i| i % 7 == 0).collect::<Vec<u64>>());
}

#[test]
fn empty_inputs_are_empty_sources_not_failures() {
    let w = Workdir::new();
    w.write("header_only.csv", "id,name\n");
    w.write("zero.csv", "");
    w.write("arr.json", "[]");
    w.write("lines.ndjson", "\n\n");
    let sources = r#"{"h": {"path": "header_only.csv"}, "z": {"path": "zero.csv"}, "a": {"path": "arr.json"}, "n": {"path": "lines.ndjson"}}"#;
    w.write(
        "config.json",
        config(sources, PEOPLE_SCHEMA, r#""output_format": "parquet","#),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for s in ["h", "z", "a", "n"] {
        assert!(
            r.stdout
                .contains(&format!("Successfully validated 0 items from {s}")),
            "{}",
            r.stdout
        );
        assert_eq!(summary_counts(&w, s), (0, 0, 0));
        let (_, batches) = w.parquet(&format!("out/{s}_valid_data.parquet"));
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
        assert!(!w.join(&format!("out/{s}_invalid_data.ndjson")).exists());
    }
}

#[test]
fn a_character_split_across_two_rows_of_a_column_is_invalid_utf8() {
    // "é" is C3 A9. A column's values share one buffer, which here is valid UTF-8 as a whole;
    // the value boundary falls inside the character, so both values are invalid.
    let w = Workdir::new();
    w.write("p.csv", b"id,name\n1,Ann\n2,x\xc3\n3,\xa9y\n4,Di\n");
    run_ok(
        &w,
        r#"{"p": {"path": "p.csv"}}"#,
        r#""output_format": "ndjson","#,
    );
    assert_eq!(summary_counts(&w, "p"), (4, 2, 2));
    let bad = w.ndjson("out/p_invalid_data.ndjson");
    for (b, row) in bad.iter().zip([2, 3]) {
        assert_eq!(b["row"], row);
        assert_eq!(b["errors"][0]["rule"], "malformed");
        assert!(
            b["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("invalid UTF-8 in column `name`")
        );
    }
}
