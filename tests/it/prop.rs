//! Property: whatever bytes a CSV holds, every record comes out exactly once, valid or invalid.

use proptest::prelude::*;

use conform::{Config, MapperChoice, Pipeline};

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9]{1,4}",
        "-?[0-9]{1,3}\\.[0-9]{1,2}",
        "[a-zA-Z ]{0,8}",
        Just("N/A".to_string()),
        Just("\"quoted, with comma\"".to_string()),
        Just("é😀".to_string()),
        Just("2023-02-30".to_string()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    // 1 to 5 cells: the header has 3, so some lines are short or long (malformed).
    prop::collection::vec(cell(), 1..5).prop_map(|cells| cells.join(","))
}

fn count_rows(csv: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.csv"), csv).unwrap();
    let text = r#"{"output_directory": "out", "batch_size": 3, "data_sources": {"p": {"path": "p.csv"}},
        "internal_schema": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer", "minimum": 0}, "amount": {"type": "number"}, "when": {"type": "string", "format": "date"}}}}"#;
    let config = Config::from_str_with_env(text, dir.path(), &|_| None).unwrap();
    let pipeline = Pipeline::try_new(config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prepared = pipeline
            .prepare("p", MapperChoice::Heuristic)
            .await
            .unwrap();
        let mut s = pipeline.execute(&prepared).await.unwrap();
        let (mut valid, mut invalid) = (0, 0);
        while let Some(split) = s.next().await {
            let (v, bad) = split.unwrap();
            valid += v.num_rows() as u64;
            invalid += bad.len() as u64;
            assert!(
                bad.iter().all(|b| !b.errors.is_empty()),
                "an invalid row always says why"
            );
        }
        (valid, invalid)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn rows_read_equal_valid_plus_invalid(lines in prop::collection::vec(line(), 0..20)) {
        let mut csv = String::from("id,amount,when\n");
        for l in &lines {
            csv.push_str(l);
            csv.push('\n');
        }
        // The oracle: the csv crate's own count of records after the header.
        let records = csv::ReaderBuilder::new().flexible(true).from_reader(csv.as_bytes()).records().count() as u64;
        let (valid, invalid) = count_rows(&csv);
        prop_assert_eq!(valid + invalid, records);
    }
}
