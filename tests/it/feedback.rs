//! The feedback loop: a new mapping is validated on a probe, the failures are digested, and
//! repairs (offline rules, or the model's revision) are kept only when they raise the valid share.

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Workdir, completion, config, run_async};

const SCHEMA: &str = r#"{"type": "object", "required": ["order_id", "placed", "total"],
    "properties": {"order_id": {"type": "integer"}, "placed": {"type": "string", "format": "date"},
                   "total": {"type": "number", "minimum": 0}, "email": {"type": ["string", "null"], "format": "email"}}}"#;

/// 3,000 orders: the first 1,000 (the mapper's sample) have ISO dates and plain amounts, the rest
/// day-first dates and `$1,234.50` amounts; row 2,500 has a bad e-mail (a data error).
fn orders(w: &Workdir) {
    let mut csv = String::from("order_id,placed,total,email\n");
    for i in 1..=3000u32 {
        let (d, m) = (1 + i % 28, 1 + i % 12);
        let (date, total) = if i <= 1000 {
            (format!("2024-{m:02}-{d:02}"), format!("{}.50", i))
        } else {
            (
                format!("{d:02}/{m:02}/2024"),
                format!("\"${},{:03}.50\"", i / 1000, i % 1000),
            )
        };
        let email = if i == 2500 {
            "nobody.example.com".to_string()
        } else {
            format!("u{i}@example.com")
        };
        csv.push_str(&format!("{i},{date},{total},{email}\n"));
    }
    w.write("orders.csv", csv);
}

#[test]
fn heuristic_repairs_fix_conversions_but_not_bad_data() {
    let w = Workdir::new();
    orders(&w);
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}}"#,
            SCHEMA,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let fb = &summary["sources"]["orders"]["mapping"]["feedback"];
    assert_eq!(fb["probe_rows"], 3000);
    assert!(fb["invalid_share_initial"].as_f64().unwrap() > 0.6, "{fb}");
    assert!(fb["invalid_share_final"].as_f64().unwrap() < 0.001, "{fb}");
    assert_eq!(fb["digest"]["placed"]["rules"]["format"], 2000, "{fb}");
    assert!(
        fb["digest"]["placed"]["examples"][0]
            .as_str()
            .unwrap()
            .contains("/2024"),
        "{fb}"
    );
    let round = &fb["rounds"][0];
    assert_eq!(round["by"], "heuristic");
    assert_eq!(round["kept"], true);
    assert!(
        round["changes"]["placed"]["after"]
            .as_str()
            .unwrap()
            .contains("%d/%m/%Y"),
        "{round}"
    );
    assert!(
        round["changes"]["total"]["after"]
            .as_str()
            .unwrap()
            .contains("parse_number"),
        "{round}"
    );
    // The bad e-mail is data: it stays invalid.
    assert_eq!(summary["sources"]["orders"]["valid"], 2999);
    let bad = w.ndjson("out/orders_invalid_data.ndjson");
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["errors"][0]["field"], "email");
    // The repaired mapping is the stored document.
    let doc = w.json("out/mappings/orders.mapping.json");
    assert!(
        doc["fields"]["placed"]["expr"]
            .as_str()
            .unwrap()
            .contains("%d/%m/%Y")
    );
}

fn mapping(placed: &str) -> String {
    json!({"fields": [
        {"target": "order_id", "expr": "CAST(\"order_id\" AS BIGINT)", "confidence": 1, "rationale": "id"},
        {"target": "placed", "expr": placed, "confidence": 0.9, "rationale": "date"},
        {"target": "total", "expr": "parse_number(\"total\")", "confidence": 0.9, "rationale": "amount"},
        {"target": "email", "expr": "\"email\"", "confidence": 0.9, "rationale": "email"}]})
    .to_string()
}

/// A local LLM server that maps `orders` with an ISO-only date format and answers the feedback
/// revision with `revised` as the `placed` expression; and a workdir using it.
async fn llm_with_revision(revised: &str) -> (MockServer, Workdir) {
    let s = MockServer::start().await;
    let revision = json!({"fields": [
        {"target": "placed", "expr": revised, "confidence": 0.9, "rationale": "revised"}]});
    Mock::given(method("POST"))
        .and(body_string_contains("was run on the source and validated"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion(&revision.to_string())))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion(&mapping("try_to_date(\"placed\", '%Y-%m-%d')"))),
        )
        .with_priority(2)
        .mount(&s)
        .await;
    let w = Workdir::new();
    orders(&w);
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}}"#,
            SCHEMA,
            &format!(
                r#""output_format": "ndjson", "llm": {{"base_url": "{}/v1"}},"#,
                s.uri()
            ),
        ),
    );
    (s, w)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_gets_the_digest_and_its_revision_is_used() {
    let (s, w) = llm_with_revision("try_to_date(\"placed\", '%Y-%m-%d', '%d/%m/%Y')").await;
    let r = run_async(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let requests = s.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let second: Value = serde_json::from_slice(&requests[1].body).unwrap();
    let digest = second["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        digest.contains("placed (format)") && digest.contains("/2024"),
        "{digest}"
    );
    // Only the failing fields are asked about, one entry each.
    let fields = &second["response_format"]["json_schema"]["schema"]["properties"]["fields"];
    let asked: Vec<&str> = crate::harness::reply_entry(&second)["target"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(asked, ["placed", "email"], "{second}");
    assert_eq!(fields["maxItems"], 2);
    let fb = &w.json("out/run_summary.json")["sources"]["orders"]["mapping"]["feedback"];
    assert_eq!(fb["rounds"][0]["by"], "llm");
    assert_eq!(fb["rounds"][0]["kept"], true);
    assert!(
        fb["invalid_share_final"].as_f64().unwrap() < fb["invalid_share_initial"].as_f64().unwrap()
    );
    let doc = w.json("out/mappings/orders.mapping.json");
    assert!(
        doc["fields"]["placed"]["expr"]
            .as_str()
            .unwrap()
            .contains("%d/%m/%Y")
    );
    assert_eq!(
        w.json("out/run_summary.json")["sources"]["orders"]["valid"],
        2999
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_does_not_help_is_dropped_and_the_offline_repairs_follow() {
    let (s, w) = llm_with_revision("try_to_date(\"placed\", '%m-%Y-%d')").await;
    let r = run_async(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        s.received_requests().await.unwrap().len(),
        2,
        "one revision, not asked again"
    );
    let fb = &w.json("out/run_summary.json")["sources"]["orders"]["mapping"]["feedback"];
    let rounds = fb["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{fb}");
    assert_eq!(rounds[0]["by"], "llm");
    assert_eq!(rounds[0]["kept"], false);
    // The offline date-format repair then fixes what the model did not.
    assert_eq!(rounds[1]["by"], "heuristic");
    assert_eq!(rounds[1]["kept"], true);
    let doc = w.json("out/mappings/orders.mapping.json");
    let placed = doc["fields"]["placed"]["expr"].as_str().unwrap();
    assert!(
        placed.contains("%d/%m/%Y") && !placed.contains("%m-%Y-%d"),
        "the model's unhelpful revision is not kept: {placed}"
    );
}

#[test]
fn a_second_source_with_the_same_mess_reuses_the_learned_repairs() {
    let w = Workdir::new();
    orders(&w);
    std::fs::copy(w.join("orders.csv"), w.join("more_orders.csv")).unwrap();
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}, "more": {"path": "more_orders.csv"}}"#,
            SCHEMA,
            r#""max_concurrent_sources": 1,"#,
        ),
    );
    let r = w.run(&["run", "--source", "orders"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let learned = w.json("out/mappings/learned_repairs.json");
    assert!(
        learned
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["target"] == "placed"),
        "{learned}"
    );
    let r = w.run(&["run", "--source", "more"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m = &w.json("out/run_summary.json")["sources"]["more"]["mapping"];
    let applied = m["learned_repairs_applied"].as_array().unwrap();
    assert!(
        applied
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("placed:")),
        "{m}"
    );
    assert_eq!(
        m["feedback"]["rounds"],
        json!([]),
        "no probe round needed: {m}"
    );
    assert!(m["feedback"]["invalid_share_initial"].as_f64().unwrap() < 0.001);
    assert_eq!(
        w.json("out/run_summary.json")["sources"]["more"]["valid"],
        2999
    );

    let r = w.run(&["history", "orders"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].contains(" ok new heuristic mapping")
            && lines[0].contains("2999 valid, 1 invalid"),
        "{}",
        r.stdout
    );
    assert!(
        lines[0].contains("probe invalid 66.7% → 0.0%"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("repair placed: try_to_date"),
        "{}",
        r.stdout
    );
    let r = w.run(&["history", "more"]);
    assert!(r.stdout.contains("learned from `orders`"), "{}", r.stdout);
}

#[test]
fn a_mapped_field_that_is_mostly_null_is_filled_from_an_unused_column() {
    // `email` names the field exactly but is filled on one row in ten; `contact_email` holds
    // the addresses. Nothing is invalid (the field is optional), so only the null share shows
    // that the mapping misses data.
    let w = Workdir::new();
    let mut csv = String::from("id,email,contact_email\n");
    for i in 1..=1000u32 {
        let e = if i % 10 == 0 {
            format!("old{i}@example.com")
        } else {
            String::new()
        };
        csv.push_str(&format!("{i},{e},Person{i}@Example.com\n"));
    }
    w.write("people.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"people": {"path": "people.csv"}}"#,
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"},
                "email": {"type": ["string", "null"], "format": "email"}}}"#,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let fb = &summary["sources"]["people"]["mapping"]["feedback"];
    assert_eq!(fb["invalid_share_initial"], 0.0, "{fb}");
    assert_eq!(fb["digest"]["email"]["rules"]["mostly_null"], 900, "{fb}");
    let round = &fb["rounds"][0];
    assert_eq!(round["kept"], true, "{fb}");
    let after = round["changes"]["email"]["after"].as_str().unwrap();
    assert!(
        after.starts_with("coalesce(") && after.contains("contact_email"),
        "{after}"
    );
    let rows = w.ndjson("out/people_valid_data.ndjson");
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[0]["email"], "person1@example.com");
    assert_eq!(rows[9]["email"], "old10@example.com");
}

#[test]
fn a_sparse_field_is_never_filled_from_a_column_of_another_kind() {
    // `religionLabel` is filled on one row in ten; `genreLabel` is full but holds music genres.
    // Merging them would invent data: the field stays as it is and no round is kept.
    let w = Workdir::new();
    let mut csv = String::from("id,religionLabel,genreLabel\n");
    for i in 1..=500u32 {
        let religion = if i % 10 == 0 { "Buddhism" } else { "" };
        let genre = ["rock", "jazz", "folk", "soul"][i as usize % 4];
        csv.push_str(&format!("{i},{religion},{genre}\n"));
    }
    w.write("artists.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"artists": {"path": "artists.csv"}}"#,
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"},
                "religionLabel": {"type": ["string", "null"]}}}"#,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let fb = &summary["sources"]["artists"]["mapping"]["feedback"];
    assert_eq!(
        fb["digest"]["religionLabel"]["rules"]["mostly_null"], 450,
        "{fb}"
    );
    let kept = fb["rounds"]
        .as_array()
        .map(|rs| rs.iter().any(|r| r["kept"] == true))
        .unwrap_or(false);
    assert!(!kept, "{fb}");
    let doc = w.json("out/mappings/artists.mapping.json");
    let expr = doc["fields"]["religionLabel"]["expr"].as_str().unwrap();
    assert!(!expr.contains("genreLabel"), "{expr}");
    let rows = w.ndjson("out/artists_valid_data.ndjson");
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[9]["religionLabel"], "Buddhism");
    assert!(rows[0]["religionLabel"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_cannot_be_read_keeps_the_first_mapping() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("was run on the source and validated"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(completion("Sorry, I cannot help with that.")),
        )
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion(&mapping("try_to_date(\"placed\", '%Y-%m-%d')"))),
        )
        .with_priority(2)
        .mount(&s)
        .await;
    let w = Workdir::new();
    orders(&w);
    w.write(
        "config.json",
        config(
            r#"{"orders": {"path": "orders.csv"}}"#,
            SCHEMA,
            &format!(
                r#""output_format": "ndjson", "llm": {{"base_url": "{}/v1"}},"#,
                s.uri()
            ),
        ),
    );
    let r = run_async(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.received_requests().await.unwrap().len(), 2);
    let summary = w.json("out/run_summary.json");
    let mapping = &summary["sources"]["orders"]["mapping"];
    assert!(
        mapping["feedback"]["revision_error"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{mapping}"
    );
    assert!(
        mapping["llm"]["requests"].as_u64().unwrap() >= 2,
        "{mapping}"
    );
    let doc = w.json("out/mappings/orders.mapping.json");
    assert_eq!(doc["mapper"], "llm");
    // The first mapping is kept, and the offline repairs still fix its date format.
    assert_eq!(
        doc["fields"]["placed"]["expr"],
        "try_to_date(clean(\"placed\"), '%d/%m/%Y', '%Y-%m-%d')"
    );
    assert_eq!(mapping["feedback"]["rounds"][0]["by"], "heuristic");
    assert!(summary["sources"]["orders"]["valid"].as_u64().unwrap() > 2000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_changes_nothing_is_a_round_in_the_summary() {
    // The model answers the digest with the expression it already gave.
    let (s, w) = llm_with_revision("try_to_date(\"placed\", '%Y-%m-%d')").await;
    let r = run_async(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.received_requests().await.unwrap().len(), 2);
    let fb = &w.json("out/run_summary.json")["sources"]["orders"]["mapping"]["feedback"];
    let rounds = fb["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{fb}");
    assert_eq!(rounds[0]["by"], "llm");
    assert_eq!(rounds[0]["kept"], false);
    assert_eq!(rounds[0]["changes"], json!({}));
    assert_eq!(rounds[1]["by"], "heuristic");
    assert_eq!(rounds[1]["kept"], true);
}
