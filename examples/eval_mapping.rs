//! Scores a mapper on schema-matching cases (see `conform::pipeline::eval`).
//!
//! `cargo run --example eval_mapping -- [DIR] [--mapper heuristic|llm]`; the LLM mapper reads
//! its endpoint from OPENAI_API_KEY / OPENAI_BASE_URL and the model from CONFORM_EVAL_MODEL.

use std::io::Write;
use std::path::PathBuf;

use conform::MapperChoice;
use conform::pipeline::eval::{Score, evaluate_all};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/matching"));
    let mut choice = MapperChoice::Heuristic;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mapper" => match args.next().as_deref() {
                Some("heuristic") => choice = MapperChoice::Heuristic,
                Some("llm") => choice = MapperChoice::Llm,
                other => {
                    eprintln!("--mapper must be heuristic or llm, not {other:?}");
                    return std::process::ExitCode::from(2);
                }
            },
            _ => dir = PathBuf::from(a),
        }
    }
    let mut llm = serde_json::json!({});
    if let Ok(m) = std::env::var("CONFORM_EVAL_MODEL") {
        llm["model"] = m.into();
    }
    let results = match evaluate_all(&dir, choice, &llm).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eval_mapping: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<34} {:>4} {:>4} {:>4}  {:>6}",
        "case", "tp", "fp", "fn", "F1"
    );
    for r in &results {
        let s = Score::of(std::slice::from_ref(r));
        let _ = writeln!(
            out,
            "{:<34} {:>4} {:>4} {:>4}  {:>6.3}",
            r.name, r.true_positives, r.false_positives, r.false_negatives, s.f1
        );
        for m in &r.mistakes {
            let _ = writeln!(out, "    {m}");
        }
    }
    let s = Score::of(&results);
    let _ = writeln!(
        out,
        "\n{} cases: precision {:.3}  recall {:.3}  F1 {:.3}",
        results.len(),
        s.precision,
        s.recall,
        s.f1
    );
    std::process::ExitCode::SUCCESS
}
