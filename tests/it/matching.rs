//! The heuristic mapper on the schema-matching cases of `testdata/matching` (the same
//! evaluation `scripts/eval_mapping` prints).

use conform::MapperChoice;
use conform::pipeline::eval::{Score, evaluate_all};

#[tokio::test]
async fn heuristic_mapper_scores_at_least_0_9_f1_on_the_matching_cases() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/matching");
    let results = evaluate_all(&root, MapperChoice::Heuristic, &serde_json::json!({}))
        .await
        .unwrap();
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
