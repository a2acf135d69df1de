//! Scores a mapper on schema-matching case groups (see `conform::pipeline::eval`).
//!
//! `cargo run --example eval_mapping -- [DIR ...] [--mapper heuristic|llm] [--summary]
//! [--unnamed-sources] [--no-source-descriptions] [--min-confidence X] [--decisions FILE]`
//!
//! Without directories it scores the five groups under `testdata/matching`: the hand-made
//! cases, `real/` (public tables), `frozen/` (public tables set aside, never tuned on), `wide/`
//! (tables mapped onto wide public standards) and `wide_frozen/`. Each group gets precision,
//! recall and F1 over (field, column) pairs, Recall@GT and MRR of the ranked candidates, the
//! mapping time per case, exact-name matching's F1 on the same cases, and the precision/recall
//! curve over confidence thresholds. The LLM mapper reads its endpoint from
//! OPENAI_API_KEY / OPENAI_BASE_URL, the model from CONFORM_EVAL_MODEL, and further `llm`
//! settings from CONFORM_EVAL_LLM (a JSON object, e.g. `{"max_prompt_tokens": 3000}` for a
//! small model's context).
//!
//! Each case's source is named after the public file it was taken from (`procedures` for
//! `…/procedures.csv`), as a user names a source after its table; `--unnamed-sources` names
//! every source `source` instead, to measure what the name adds. A case with
//! `source.descriptions.json` (the source's published data dictionary, column → text) gives it
//! as the source's `descriptions`; `--no-source-descriptions` leaves them out.

use std::io::Write;
use std::path::PathBuf;

use conform::MapperChoice;
use conform::pipeline::eval::{
    Inputs, Score, at_threshold, evaluate_all, exact_score, in_band, model_alone, value_score,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/matching"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut choice = MapperChoice::Heuristic;
    let mut summary = false;
    let mut inputs = Inputs::default();
    // Every field's decision as a JSON line (group, case, target width, confidence, columns
    // chosen and expected): the data `scripts/fit_calibration` fits the confidence on.
    let mut decisions: Option<PathBuf> = None;
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
            "--summary" => summary = true,
            "--unnamed-sources" => inputs.named = false,
            "--no-source-descriptions" => inputs.described = false,
            "--min-confidence" => match args.next().and_then(|v| v.parse::<f64>().ok()) {
                Some(min) => inputs.min_confidence = Some(min),
                None => {
                    eprintln!("--min-confidence needs a number");
                    return std::process::ExitCode::from(2);
                }
            },
            "--decisions" => match args.next() {
                Some(path) => decisions = Some(PathBuf::from(path)),
                None => {
                    eprintln!("--decisions needs a file");
                    return std::process::ExitCode::from(2);
                }
            },
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    if dirs.is_empty() {
        dirs = vec![
            root.clone(),
            root.join("real"),
            root.join("frozen"),
            root.join("wide"),
            root.join("wide_frozen"),
        ];
    }
    let mut llm = serde_json::json!({});
    if let Ok(m) = std::env::var("CONFORM_EVAL_MODEL") {
        llm["model"] = m.into();
    }
    if let Ok(text) = std::env::var("CONFORM_EVAL_LLM") {
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text) {
            Ok(settings) => settings.into_iter().for_each(|(k, v)| llm[k] = v),
            Err(e) => {
                eprintln!("CONFORM_EVAL_LLM must be a JSON object: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let mut totals = Vec::new();
    for dir in &dirs {
        let results = match evaluate_all(dir, choice, &llm, inputs).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("eval_mapping: {e}");
                return std::process::ExitCode::from(1);
            }
        };
        // A group under testdata/matching is named by its path there (the root itself holds
        // the hand-made cases); any other directory by its own name.
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        let group = match absolute.strip_prefix(&root) {
            Ok(p) if p.as_os_str().is_empty() => "hand-made".to_string(),
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => absolute.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        };
        if !summary {
            let _ = writeln!(
                out,
                "\n== {group}\n{:<34} {:>4} {:>4} {:>4}  {:>6} {:>7}",
                "case", "tp", "fp", "fn", "F1", "seconds"
            );
            for r in &results {
                let s = Score::of(std::slice::from_ref(r));
                // With the LLM mapper: requests, prompt and completion tokens of the case.
                let cost = r
                    .llm
                    .map(|(req, p, c)| format!("  {req} req, {p} + {c} tokens"))
                    .unwrap_or_default();
                let (right, placed, total) = r.values;
                let cost = if total > 0 {
                    format!("{cost}  values: {right} right, {placed} placed of {total}")
                } else {
                    cost
                };
                let _ = writeln!(
                    out,
                    "{:<34} {:>4} {:>4} {:>4}  {:>6.3} {:>7.3}{cost}",
                    r.name, r.true_positives, r.false_positives, r.false_negatives, s.f1, r.seconds
                );
                for m in &r.mistakes {
                    let _ = writeln!(out, "    {m}");
                }
            }
        }
        totals.push((group, results));
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:>5} {:>9} {:>6} {:>6} {:>9} {:>6} {:>9} {:>9} {:>8} {:>11}",
        "group",
        "cases",
        "precision",
        "recall",
        "F1",
        "Recall@GT",
        "MRR",
        "mean s",
        "max s",
        "exact F1",
        "values P/R"
    );
    for (group, results) in &totals {
        let s = Score::of(results);
        let (_, _, exact) = exact_score(results);
        // Value-level precision/recall, for groups with published value truth.
        let values =
            value_score(results).map_or_else(|| "-".to_string(), |(p, r)| format!("{p:.2}/{r:.2}"));
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:>9.3} {:>6.3} {:>6.3} {:>9.3} {:>6.3} {:>9.3} {:>9.3} {:>8.3} {:>11}",
            group,
            results.len(),
            s.precision,
            s.recall,
            s.f1,
            s.recall_at_gt,
            s.mrr,
            s.mean_seconds,
            s.max_seconds,
            exact,
            values
        );
    }
    if let Some(path) = &decisions {
        let mut lines = String::new();
        for (group, results) in &totals {
            for r in results {
                for ((confidence, got, want, by_model), (why, next)) in
                    r.decisions.iter().zip(&r.decision_notes)
                {
                    let line = serde_json::json!({
                        "group": group, "case": r.name, "target_fields": r.target_fields,
                        "confidence": confidence, "got": got, "want": want, "by_model": by_model,
                        "rationale": why, "next_score": next,
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
            }
        }
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("eval_mapping: writing {}: {e}", path.display());
            return std::process::ExitCode::from(1);
        }
    }
    // The precision/recall curve: what leaving fields below a confidence unmapped trades.
    let thresholds: Vec<f64> = (1..=9).map(|i| i as f64 / 10.0).collect();
    let _ = write!(
        out,
        "\nF1 (P/R) when fields below a confidence stay unmapped\n{:<12}",
        "group"
    );
    for t in &thresholds {
        let _ = write!(out, " {:>15}", format!("≥ {t:.2}"));
    }
    let _ = writeln!(out);
    for (group, results) in &totals {
        let _ = write!(out, "{group:<12}");
        for t in &thresholds {
            let (p, r, f1) = at_threshold(results, *t);
            let _ = write!(out, " {:>15}", format!("{f1:.2} ({p:.2}/{r:.2})"));
        }
        let _ = writeln!(out);
    }
    // What a confidence means: the precision of the pairs chosen in each band of confidence.
    let bands: [(f64, f64); 8] = [
        (0.0, 0.3),
        (0.3, 0.4),
        (0.4, 0.5),
        (0.5, 0.6),
        (0.6, 0.7),
        (0.7, 0.8),
        (0.8, 0.9),
        (0.9, 1.01),
    ];
    let _ = write!(
        out,
        "\nPrecision of the chosen pairs by confidence (pairs in the band)\n{:<12}",
        "group"
    );
    for (lo, hi) in &bands {
        let _ = write!(out, " {:>13}", format!("{lo:.1}–{:.1}", hi.min(1.0)));
    }
    let _ = writeln!(out);
    for (group, results) in &totals {
        let _ = write!(out, "{group:<12}");
        for (lo, hi) in &bands {
            let (right, wrong) = in_band(results, *lo, *hi);
            let cell = if right + wrong == 0 {
                "–".to_string()
            } else {
                format!(
                    "{:.2} ({})",
                    right as f64 / (right + wrong) as f64,
                    right + wrong
                )
            };
            let _ = write!(out, " {cell:>13}");
        }
        let _ = writeln!(out);
    }
    // The LLM mapper: the model's own answers scored alone, and where every field came from.
    for (group, results) in &totals {
        let origins = results
            .iter()
            .filter_map(|r| r.origins)
            .fold([0usize; 4], |a, b| {
                [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
            });
        if results.iter().any(|r| r.origins.is_some()) {
            let (p, r, f1) = model_alone(results);
            let _ = writeln!(
                out,
                "{group}: the model's answers alone F1 {f1:.3} (P {p:.3} / R {r:.3}); fields answered by the model {}, by the offline fallback {}, decided offline {}, unanswered {}",
                origins[0], origins[1], origins[2], origins[3]
            );
        }
    }
    // Every request must fit `llm.max_prompt_tokens` by the server's own count.
    let budget = llm
        .get("max_prompt_tokens")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(conform::config::LlmConfig::default().max_prompt_tokens as u64);
    let mut over = Vec::new();
    for (group, results) in &totals {
        let (req, p, c) = results
            .iter()
            .filter_map(|r| r.llm)
            .fold((0u32, 0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        if req > 0 {
            let largest = results.iter().map(|r| r.largest_prompt).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "{group}: {req} model requests, {p} prompt + {c} completion tokens; the largest request {largest} prompt tokens (budget {budget})"
            );
            over.extend(
                results
                    .iter()
                    .filter(|r| r.largest_prompt > budget)
                    .map(|r| format!("{group}/{} ({} tokens)", r.name, r.largest_prompt)),
            );
        }
    }
    if !over.is_empty() {
        eprintln!(
            "eval_mapping: requests over llm.max_prompt_tokens ({budget}) in {}",
            over.join(", ")
        );
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
