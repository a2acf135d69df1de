//! The heuristic mapper on the schema-matching cases of `testdata/matching` (the same
//! evaluation `scripts/eval_mapping` prints).

use conform::MapperChoice;
use conform::pipeline::eval::{
    Inputs, Score, evaluate_all, evaluate_case, exact_score, value_score,
};

/// The heuristic mapper on every case of a group under `testdata/matching` (`""` for the
/// hand-made cases), each source named after its file and given its descriptions.
async fn heuristic_on(group: &str) -> Vec<conform::pipeline::eval::CaseResult> {
    heuristic_with(group, Inputs::default()).await
}

async fn heuristic_with(group: &str, inputs: Inputs) -> Vec<conform::pipeline::eval::CaseResult> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/matching")
        .join(group);
    evaluate_all(
        &root,
        MapperChoice::Heuristic,
        &serde_json::json!({}),
        inputs,
    )
    .await
    .unwrap()
}

/// Every pair the matcher chose (none held back): its confidence and whether it is right.
fn chosen_pairs(results: &[conform::pipeline::eval::CaseResult]) -> Vec<(f64, bool)> {
    results
        .iter()
        .flat_map(|r| &r.decisions)
        .flat_map(|(confidence, got, want, _)| got.iter().map(|g| (*confidence, want.contains(g))))
        .collect()
}

fn precision(pairs: &[(f64, bool)]) -> f64 {
    pairs.iter().filter(|p| p.1).count() as f64 / pairs.len().max(1) as f64
}

#[tokio::test]
async fn a_confidence_means_the_same_on_narrow_and_wide_targets() {
    // The same evidence score is right far less often among hundreds of fields than among a
    // dozen; the confidence is calibrated for the width, so that a threshold keeps pairs of the
    // same precision on both.
    let every_pair = Inputs {
        min_confidence: Some(0.0),
        ..Inputs::default()
    };
    let wide = chosen_pairs(&heuristic_with("wide", every_pair).await);
    let real = chosen_pairs(&heuristic_with("real", every_pair).await);
    let mean = |ps: &[(f64, bool)]| ps.iter().map(|p| p.0).sum::<f64>() / ps.len() as f64;
    // On the wide standards the mean confidence is the share of pairs that are right.
    assert!(
        (mean(&wide) - precision(&wide)).abs() <= 0.1,
        "mean confidence {} against precision {}",
        mean(&wide),
        precision(&wide)
    );
    // At 0.5 and above, pairs are right at least about half the time on both shapes; below
    // it, less often.
    let (high, low): (Vec<_>, Vec<_>) = wide.iter().partition(|p| p.0 >= 0.5);
    assert!(precision(&high) >= 0.45, "wide ≥ 0.5: {}", precision(&high));
    assert!(
        precision(&low) < precision(&high),
        "wide < 0.5: {}",
        precision(&low)
    );
    let real_high: Vec<_> = real.iter().copied().filter(|p| p.0 >= 0.5).collect();
    assert!(precision(&real_high) >= 0.9);
    // Narrow targets keep their scores: never more confident than they are right.
    assert!(
        mean(&real) <= precision(&real),
        "{} > {}",
        mean(&real),
        precision(&real)
    );
}

#[tokio::test]
async fn heuristic_mapper_scores_at_least_0_9_f1_on_the_matching_cases() {
    let results = heuristic_on("").await;
    assert!(results.len() >= 15, "{} cases", results.len());
    let s = Score::of(&results);
    let mistakes: Vec<String> = results
        .iter()
        .flat_map(|r| r.mistakes.iter().map(move |m| format!("{}: {m}", r.name)))
        .collect();
    assert!(
        s.f1 >= 0.9 && s.precision >= 0.9,
        "{s:?}\n{}",
        mistakes.join("\n")
    );
    // Fields with no counterpart stay unmapped rather than guessed.
    let noise = results
        .iter()
        .find(|r| r.name == "unmapped_fields_and_noise")
        .unwrap();
    assert_eq!(noise.false_positives, 0, "{:?}", noise.mistakes);
}

#[tokio::test]
async fn heuristic_mapper_holds_its_score_on_the_real_tables() {
    // The tuned group of real public tables (the frozen group is only reported, never
    // asserted on, so that nothing is tuned to it).
    let results = heuristic_on("real").await;
    assert!(results.len() >= 25, "{} cases", results.len());
    let s = Score::of(&results);
    assert!(s.f1 >= 0.85 && s.precision >= 0.95, "{s:?}");
    // The ranked candidates put the right column first for most fields.
    assert!(s.mrr >= 0.85 && s.recall_at_gt >= 0.75, "{s:?}");
}

#[tokio::test]
async fn heuristic_mapper_beats_exact_names_on_the_wide_standards() {
    // Sources mapped onto OMOP CDM, Darwin Core and FHIR (hundreds of fields in dozens of
    // tables): every table has a start date, a patient and a code, so a column's evidence
    // must be weighed against the whole target, and the source's name (each case's source is
    // named after its public file) says which table it fills.
    let results = heuristic_on("wide").await;
    assert!(results.len() >= 20, "{} cases", results.len());
    let s = Score::of(&results);
    let (_, _, exact) = exact_score(&results);
    assert!(s.f1 >= 0.26 && s.precision >= 0.3, "{s:?}");
    assert!(s.f1 >= exact + 0.2, "{s:?} against exact names {exact}");
    // Published value truth (the publishers' recodes) is scored too.
    let (vp, vr) = value_score(&results).unwrap();
    assert!(vp >= 0.8 && vr > 0.1, "value precision {vp}, recall {vr}");
}

#[tokio::test]
async fn value_truth_counts_what_the_expression_makes_of_each_source_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("source.csv"),
        "sex,score\nmale,1\nfemale,2\nmale,3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("target.schema.json"),
        r#"{"type": "object", "properties": {
            "sex": {"type": "string", "enum": ["M", "F"]},
            "score": {"type": "integer"}}}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("expected.json"),
        r#"{"sex": ["sex"], "score": ["score"]}"#,
    )
    .unwrap();
    // One entry the mapping gets right, one it places elsewhere, one absent from the rows.
    std::fs::write(
        d.join("case.json"),
        r#"{"values": {"sex": {"male": "M", "female": "X", "other": "O"}}}"#,
    )
    .unwrap();
    let r = evaluate_case(
        d,
        MapperChoice::Heuristic,
        &serde_json::json!({}),
        Inputs::default(),
    )
    .await
    .unwrap();
    assert_eq!(r.true_positives, 2, "{:?}", r.mistakes);
    assert_eq!(r.values, (1, 2, 2));
    assert_eq!(value_score(&[r]), Some((0.5, 0.5)));
}

#[test]
fn enum_values_are_mapped_by_a_reviewable_table_and_unknown_ones_stay_invalid() {
    use crate::harness::{Workdir, config};
    let w = Workdir::new();
    let mut csv = String::from("page_id,ID,ALIGN\n");
    for (i, (id, align)) in [
        ("Secret Identity", "Good Characters"),
        ("Public Identity", "Bad Characters"),
        ("Secret Identity", "Neutral Characters"),
        ("Public Identity", "Good Characters"),
        ("Secret Identity", "Bad Characters"),
        ("No Dual Identity", "Good Characters"),
    ]
    .iter()
    .enumerate()
    {
        csv.push_str(&format!("{},{id},{align}\n", 1000 + i));
    }
    w.write("chars.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"chars": {"path": "chars.csv"}}"#,
            r#"{"type": "object", "properties": {
                "character_id": {"type": "integer"},
                "identity": {"type": "string", "enum": ["secret", "public"]},
                "alignment": {"type": "string", "enum": ["good", "bad", "neutral"]}}}"#,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["map"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("value table covers 83% of the sample's values"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("values not placed: \"No Dual Identity\""),
        "the value the table could not place is named: {}",
        r.stdout
    );
    let doc = w.json("out/mappings/chars.mapping.json");
    assert_eq!(
        doc["fields"]["identity"]["unplaced_values"],
        serde_json::json!(["No Dual Identity"])
    );
    let expr = doc["fields"]["identity"]["expr"].as_str().unwrap();
    assert!(
        expr.starts_with("CASE lower(clean(\"ID\")) WHEN 'secret identity' THEN 'secret'"),
        "{expr}"
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let valid = w.ndjson("out/chars_valid_data.ndjson");
    assert_eq!(valid.len(), 5);
    assert_eq!(valid[0]["identity"], "secret");
    assert_eq!(valid[1]["alignment"], "bad");
    let invalid = w.ndjson("out/chars_invalid_data.ndjson");
    assert_eq!(invalid.len(), 1);
    let msg = invalid[0]["errors"].to_string();
    assert!(
        msg.contains("No Dual Identity") && msg.contains("identity"),
        "{msg}"
    );
}

/// `conform map` reads a source's own column descriptions: Parquet field metadata, and the
/// config's `descriptions` (which win), and the mapping follows them where names say nothing.
#[test]
fn column_descriptions_from_parquet_metadata_and_the_config_reach_the_mapping() {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::collections::HashMap;
    use std::sync::Arc;
    let w = crate::harness::Workdir::new();
    let described = |name: &str, t: DataType, key: &str, text: &str| {
        Field::new(name, t, true).with_metadata(HashMap::from([(key.into(), text.into())]))
    };
    let schema = Arc::new(Schema::new(vec![
        described(
            "k1",
            DataType::Int64,
            "description",
            "Membership number of the member",
        ),
        described("k2", DataType::Utf8, "comment", "Surname of the member"),
        described(
            "k3",
            DataType::Utf8,
            "description",
            "Town where the member lives",
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![17, 18, 19, 20])) as ArrayRef,
            Arc::new(StringArray::from(vec![
                "Lovelace", "Turing", "Hopper", "Noether",
            ])),
            Arc::new(StringArray::from(vec![
                "London",
                "Wilmslow",
                "Arlington",
                "Erlangen",
            ])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(w.join("members.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let target = r#"{"type": "object", "properties": {
        "membership_number": {"type": "integer"},
        "surname": {"type": "string"},
        "city": {"type": "string"},
        "country": {"type": "string"}
    }}"#;
    // The config's description of `k3` wins over the file's, and says it is the country.
    w.write(
        "config.json",
        crate::harness::config(
            r#"{"members": {"path": "members.parquet", "descriptions": {"k3": "Country of the member", "gone": "a column the file lacks"}}}"#,
            target,
            "",
        ),
    );
    let r = w.run(&["map", "--mapper", "heuristic"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("out/mappings/members.mapping.json");
    let sources = |f: &str| doc["fields"][f]["sources"].clone();
    assert_eq!(
        sources("membership_number"),
        serde_json::json!(["k1"]),
        "{doc:#}"
    );
    assert_eq!(sources("surname"), serde_json::json!(["k2"]), "{doc:#}");
    assert_eq!(sources("country"), serde_json::json!(["k3"]), "{doc:#}");
    assert_eq!(sources("city"), serde_json::json!([]), "{doc:#}");
    assert!(
        doc["fields"]["surname"]["rationale"]
            .as_str()
            .unwrap()
            .contains("is described as the field"),
        "{doc:#}"
    );
}
