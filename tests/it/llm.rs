//! The LLM mapper against a real HTTP server on 127.0.0.1 (wiremock): the request it sends, and
//! how it handles rate limits, server errors, timeouts, unreadable replies and bad expressions.

use std::path::Path;

use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Run, Workdir, completion, config};

const KEY: &str = "sk-test-0123456789abcdef";

const SCHEMA: &str = r#"{
    "type": "object",
    "required": ["customer_id", "full_name", "email", "signup_date"],
    "properties": {
        "customer_id": {"type": "integer", "minimum": 1},
        "full_name": {"type": "string", "minLength": 1, "maxLength": 100, "description": "Given and family name"},
        "email": {"type": "string", "format": "email"},
        "signup_date": {"type": "string", "format": "date"},
        "lifetime_value": {"type": ["number", "null"], "minimum": 0},
        "is_active": {"type": ["boolean", "null"]}
    }
}"#;

/// The demo's two sources with an `llm` block.
fn workdir(llm: &str) -> Workdir {
    let w = Workdir::new();
    w.copy_testdata("demo/source1.csv", "source1.csv");
    w.copy_testdata("demo/source2.json", "source2.json");
    w.write(
        "config.json",
        config(
            r#"{"source1": {"path": "source1.csv"}, "source2": {"path": "source2.json"}}"#,
            SCHEMA,
            &format!(r#""llm": {llm},"#),
        ),
    );
    w
}

fn fields(entries: &[(&str, Option<&str>)]) -> String {
    json!({"fields": entries.iter().map(|(t, e)| json!({
        "target": t, "expr": e, "confidence": 0.9, "rationale": "test"
    })).collect::<Vec<_>>()})
    .to_string()
}

/// A correct mapping of source1, with `upper` so the output shows the reply was used.
fn source1_reply() -> String {
    fields(&[
        ("customer_id", Some(r#"CAST("CustomerID" AS BIGINT)"#)),
        ("full_name", Some(r#"upper(clean("Full Name"))"#)),
        ("email", Some(r#"lower(clean("E-mail"))"#)),
        (
            "signup_date",
            Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
        ),
        ("lifetime_value", Some(r#"parse_number("Lifetime Value")"#)),
        ("is_active", Some(r#"parse_bool("Active")"#)),
        ("not_a_field", Some("1")),
    ])
}

fn ok(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(completion(content))
}

async fn server() -> MockServer {
    MockServer::start().await
}

/// Runs the binary off the async runtime.
async fn run(w: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Run {
    crate::harness::run_async(w, args, env).await
}

/// The chat-completion requests the server received (not the token counts asked of it).
async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/chat/completions"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn prompt_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_secret(w: &Workdir, r: &Run) {
    assert!(!r.stdout.contains(KEY) && !r.stderr.contains(KEY));
    for f in crate::harness::walk(w.path()) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if f.ends_with("config.json") {
                continue;
            }
            assert!(!text.contains(KEY), "{f} contains the API key");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reply_drives_the_output_and_the_request_is_complete() {
    let s = server().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ok(&source1_reply()))
        .expect(1)
        .mount(&s)
        .await;
    let w = workdir(r#"{"model": "test-model", "api_key": "${MY_KEY}"}"#);
    let base = format!("{}/v1", s.uri());
    let r = run(
        &w,
        &[
            "run",
            "--source",
            "source1",
            "--mapper",
            "llm",
            "--llm-base-url",
            &base,
            // The model's answers (confidence 0.5 when it gives none) are kept whatever the
            // offline matcher's threshold.
            "--min-confidence",
            "0.99",
        ],
        &[("MY_KEY", KEY)],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("mapping with the LLM (model test-model at http://127.0.0.1:"),
        "{}",
        r.stderr
    );
    let valid = w.json("out/source1_valid_data.json");
    assert_eq!(valid[0]["full_name"], "ADA LOVELACE");
    assert_eq!(valid[1]["email"], "alan.turing@example.org");
    assert_eq!(valid[0]["lifetime_value"], 1250.0);

    let requests = s.received_requests().await.unwrap();
    let auth = requests[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, format!("Bearer {KEY}"));
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["temperature"], 0.0);
    let rf = &body["response_format"];
    assert_eq!(rf["type"], "json_schema");
    assert_eq!(rf["json_schema"]["name"], "mapping");
    assert_eq!(rf["json_schema"]["strict"], true);
    let shapes = &rf["json_schema"]["schema"]["properties"]["fields"]["items"]["oneOf"];
    assert_eq!(
        shapes[1]["properties"]["expr"]["type"],
        json!(["string", "null"]),
        "{rf}"
    );
    let prompt = prompt_text(&body);
    for needle in [
        "\"maxLength\": 100",       // the schema with its constraints
        "Given and family name",    // descriptions
        "\"Lifetime Value\": Utf8", // columns with their Arrow types
        "Ada Lovelace",             // sample rows
        "try_to_date(text, format", // the expression language
        "concat_ws",
        "Never invent a column", // the rules
    ] {
        assert!(
            prompt.contains(needle),
            "prompt lacks {needle:?}:\n{prompt}"
        );
    }

    let summary = w.json("out/run_summary.json");
    let llm = &summary["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["requests"], 1);
    assert_eq!(llm["prompt_tokens"], 1200);
    assert_eq!(llm["largest_prompt_tokens"], 1200);
    assert_eq!(llm["completion_tokens"], 300);
    assert_eq!(llm["response_format"], "json_schema");
    assert!(llm["latency_s"].as_f64().unwrap() > 0.0);
    // Every field is the model's own answer.
    assert_eq!(
        llm["model_fields"],
        json!([
            "customer_id",
            "full_name",
            "email",
            "signup_date",
            "lifetime_value",
            "is_active"
        ])
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(doc["mapper"], "llm");
    assert_eq!(doc["model"], "test-model");
    assert!(
        doc["fields"].get("not_a_field").is_none(),
        "unknown targets are ignored"
    );
    assert_no_secret(&w, &r);

    // The stored mapping is reused on the next run: no second request.
    let r = run(
        &w,
        &["run", "--source", "source1", "--llm-base-url", &base],
        &[("MY_KEY", KEY)],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("using the stored mapping"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redacted_samples_keep_shapes_not_values() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "redact_samples": true}}"#,
        s.uri()
    ));
    let r = run(&w, &["map", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let prompt = prompt_text(&bodies(&s).await[0]);
    assert!(
        !prompt.contains("Lovelace") && !prompt.contains("ada@example.com"),
        "{prompt}"
    );
    assert!(
        prompt.contains("aaa@aaaaaaa.aaa") && prompt.contains("9999-99-99"),
        "{prompt}"
    );
    // `map` prints the review table.
    assert!(
        r.stdout
            .contains("full_name      ← upper(clean(\"Full Name\"))"),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_retried_after_the_servers_delay() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": {"message": "slow down", "type": "rate_limit"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let started = std::time::Instant::now();
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.received_requests().await.unwrap().len(), 2);
    assert!(
        started.elapsed().as_secs_f64() >= 1.0,
        "Retry-After: 1 was honoured"
    );
    assert_eq!(
        w.json("out/source1_valid_data.json")[0]["full_name"],
        "ADA LOVELACE"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_storm_fails_only_that_source() {
    let s = server().await;
    // source1's prompts name its columns and only get errors; source2's get an answer.
    Mock::given(method("POST"))
        .and(body_string_contains("CustomerID"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream overloaded"))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&fields(&[
            ("customer_id", Some(r#""cust_id""#)),
            (
                "full_name",
                Some(r#"concat_ws(' ', "first_name", "last_name")"#),
            ),
            ("email", Some(r#""mail""#)),
            ("signup_date", Some(r#"try_to_date("created", '%d/%m/%Y')"#)),
        ])))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "model": "m-1", "max_retries": 2}}"#,
        s.uri()
    ));
    let r = run(&w, &["run"], &[("OPENAI_API_KEY", KEY)]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let failures = bodies(&s)
        .await
        .iter()
        .filter(|b| prompt_text(b).contains("CustomerID"))
        .count();
    assert_eq!(failures, 3, "one request and two retries");
    assert!(
        r.stderr.contains("source `source1` failed")
            && r.stderr.contains("503")
            && r.stderr.contains("model m-1")
            && r.stderr.contains(&format!("{}/v1", s.uri())),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .contains("Successfully validated 1 items from source2"),
        "{}",
        r.stdout
    );
    let summary = w.json("out/run_summary.json");
    assert_eq!(summary["sources"]["source1"]["status"], "failed");
    assert_no_secret(&w, &r);

    // With the heuristic fallback the source runs anyway, and says how it was mapped.
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "max_retries": 0, "fallback": "heuristic"}}"#,
        s.uri()
    ));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("mapping with the heuristic mapper (LLM failed"),
        "{}",
        r.stderr
    );
    assert_eq!(
        w.json("out/mappings/source1.mapping.json")["mapper"],
        "heuristic"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_is_retried_in_smaller_batches_then_reported() {
    // Every request times out: the six fields are asked again in halves (3 + 3, then smaller),
    // never the same request twice; when a single field times out the source fails with the
    // timeout rather than looking mapped.
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()).set_delay(std::time::Duration::from_secs(3)))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "timeout_s": 0.3, "max_retries": 1}}"#,
        s.uri()
    ));
    let r = run(&w, &["map", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    let b = bodies(&s).await;
    let mut sizes: Vec<usize> = b
        .iter()
        .map(|x| {
            x["response_format"]["json_schema"]["schema"]["properties"]["fields"]["minItems"]
                .as_u64()
                .unwrap() as usize
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 3, 3, 6], "the whole, two halves, then one field");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_times_out_succeeds_in_halves() {
    // A server too slow for six fields at once answers three in time.
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("\"minItems\":6"))
        .respond_with(ok(&source1_reply()).set_delay(std::time::Duration::from_secs(3)))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "timeout_s": 0.5, "max_retries": 1}}"#,
        s.uri()
    ));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        bodies(&s).await.len(),
        3,
        "the whole request, then two halves"
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(
        doc["fields"]["is_active"]["expr"],
        r#"parse_bool("Active")"#
    );
    assert_eq!(
        doc["fields"]["customer_id"]["expr"],
        r#"CAST("CustomerID" AS BIGINT)"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_reply_is_asked_again() {
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("could not be read"))
        .respond_with(ok(&format!("```json\n{}\n```", source1_reply())))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(
            "Sure! Here is the mapping: {fields: [customer_id = CustomerID",
        ))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["requests"], 2);
    assert_eq!(llm["repair_rounds"], 1);
    // Two requests of 1,200 prompt tokens: the total and the largest one.
    assert_eq!(llm["prompt_tokens"], 2400);
    assert_eq!(llm["largest_prompt_tokens"], 1200);

    // A model that never answers in JSON fails the source with a clear message.
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok("I cannot do that."))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "max_repairs": 1}}"#,
        s.uri()
    ));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no readable mapping in 2 replies"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_column_is_sent_back_and_repaired() {
    let s = server().await;
    let bad = source1_reply().replace(r#"lower(clean(\"E-mail\"))"#, r#"lower(\"Emial\")"#);
    assert!(bad.contains("Emial"));
    Mock::given(method("POST"))
        .and(body_string_contains("rejected by the compiler"))
        .respond_with(ok(&fields(&[("email", Some(r#"lower(clean("E-mail"))"#))])))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&bad))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    let follow_up = prompt_text(&b[1]);
    assert!(
        follow_up.contains("email")
            && follow_up.contains("Emial")
            && follow_up.contains("Did you mean `E-mail`?"),
        "{follow_up}"
    );
    // The conversation keeps the earlier turns.
    assert_eq!(b[1]["messages"].as_array().unwrap().len(), 4);
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(doc["fields"]["email"]["expr"], r#"lower(clean("E-mail"))"#);
    assert_eq!(
        doc["fields"]["full_name"]["expr"], r#"upper(clean("Full Name"))"#,
        "other fields kept"
    );
    assert_eq!(
        w.json("out/source1_valid_data.json")[1]["email"],
        "alan.turing@example.org"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_rejected_answer_ends_the_repairs_and_the_matcher_fills_the_field() {
    // The model answers `random() * 100` for lifetime_value every time: the repeat ends the
    // repair loop after one round, and the offline matcher's mapping replaces the rejected
    // expression (the error stays in the rationale and in the summary).
    let s = server().await;
    let bad = source1_reply().replace(r#"parse_number(\"Lifetime Value\")"#, "random() * 100");
    Mock::given(method("POST"))
        .respond_with(ok(&bad))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "max_repairs": 2}}"#,
        s.uri()
    ));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        s.received_requests().await.unwrap().len(),
        2,
        "one repair round, then the repeat stops the loop"
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    let f = &doc["fields"]["lifetime_value"];
    assert_eq!(f["expr"], r#"parse_number("Lifetime Value")"#, "{f}");
    let why = f["rationale"].as_str().unwrap();
    assert!(
        why.starts_with("heuristic (llm fallback)")
            && why.contains("function `random` is not allowed"),
        "{why}"
    );
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["failed_fields"], json!(["lifetime_value"]));
    assert_eq!(llm["fallback_fields"], json!(["lifetime_value"]));
    // The fallback's field is not counted as the model's answer.
    let own: Vec<&str> = llm["model_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !own.contains(&"lifetime_value") && own.contains(&"full_name"),
        "{own:?}"
    );
    assert_eq!(llm["repeated_replies"], 1);
    let valid = w.json("out/source1_valid_data.json");
    assert_eq!(valid[0]["lifetime_value"], 1250.0);
    assert_eq!(valid[0]["full_name"], "ADA LOVELACE");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_json_schema_gets_json_object() {
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("\"json_schema\""))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}
        })))
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("\"json_object\""))
        .respond_with(ok(&format!("```json\n{}\n```", source1_reply())))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2, "one rejected request, one answered");
    assert_eq!(b[1]["response_format"], json!({"type": "json_object"}));
    assert_eq!(b[0]["messages"], b[1]["messages"], "the same conversation");
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["response_format"], "json_object");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_uses_the_llm_only_when_an_endpoint_is_configured() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s)
        .await;
    let w = workdir("{}");
    let r = run(&w, &["map", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("heuristic mapper (no LLM endpoint configured)"),
        "{}",
        r.stderr
    );
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("OPENAI_API_KEY"), "{}", r.stderr);
    // OPENAI_BASE_URL alone selects the LLM (a new mapping: the stored one is heuristic's).
    std::fs::remove_dir_all(w.join("out/mappings")).unwrap();
    let base = format!("{}/v1", s.uri());
    let r = run(
        &w,
        &["map", "--source", "source1"],
        &[("OPENAI_BASE_URL", &base)],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("mapping with the LLM"), "{}", r.stderr);
    assert_eq!(s.received_requests().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_requests_in_flight_are_limited_across_sources() {
    let s = server().await;
    let delay = std::time::Duration::from_millis(400);
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()).set_delay(delay))
        .mount(&s)
        .await;
    let prepare_both = |limit: usize| {
        let text = config(
            r#"{"a": {"path": "source1.csv"}, "b": {"path": "source1.csv"}}"#,
            SCHEMA,
            &format!(
                r#""llm": {{"base_url": "{}/v1", "max_concurrent": {limit}}},"#,
                s.uri()
            ),
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/demo");
        let config = conform::Config::from_str_with_env(&text, &dir, &|_| None).unwrap();
        async move {
            let p = conform::Pipeline::try_new(config).unwrap();
            let started = std::time::Instant::now();
            let (a, b) = tokio::join!(
                p.prepare_fresh("a", conform::MapperChoice::Llm),
                p.prepare_fresh("b", conform::MapperChoice::Llm)
            );
            assert!(a.is_ok() && b.is_ok());
            started.elapsed()
        }
    };
    // One request at a time: the second source waits for the first reply.
    assert!(prepare_both(1).await >= delay * 2);
    assert_eq!(s.received_requests().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reply_schema_names_the_fields_and_fixes_their_count() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    let fields = &b[0]["response_format"]["json_schema"]["schema"]["properties"]["fields"];
    assert_eq!(fields["minItems"], 6, "{fields}");
    assert_eq!(fields["maxItems"], 6);
    assert_eq!(
        crate::harness::reply_entry(&b[0])["target"]["enum"],
        json!([
            "customer_id",
            "full_name",
            "email",
            "signup_date",
            "lifetime_value",
            "is_active"
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_left_out_of_a_reply_are_asked_again_alone() {
    // The first reply answers four of the six fields; the follow-up names the other two, and
    // its reply schema asks for exactly those.
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("has no entry for these fields"))
        .respond_with(ok(&fields(&[
            ("lifetime_value", Some(r#"parse_number("Lifetime Value")"#)),
            ("is_active", Some(r#"parse_bool("Active")"#)),
        ])))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&fields(&[
            ("customer_id", Some(r#"CAST("CustomerID" AS BIGINT)"#)),
            ("full_name", Some(r#"upper(clean("Full Name"))"#)),
            ("email", Some(r#"lower(clean("E-mail"))"#)),
            (
                "signup_date",
                Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
            ),
        ])))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    let prompt = prompt_text(&b[1]);
    assert!(
        prompt.contains("has no entry for these fields: lifetime_value, is_active"),
        "{prompt}"
    );
    let schema = &b[1]["response_format"]["json_schema"]["schema"]["properties"]["fields"];
    assert_eq!(schema["minItems"], 2);
    assert_eq!(
        crate::harness::reply_entry(&b[1])["target"]["enum"],
        json!(["lifetime_value", "is_active"])
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(
        doc["fields"]["is_active"]["expr"],
        r#"parse_bool("Active")"#
    );
    assert_eq!(
        doc["fields"]["customer_id"]["expr"],
        r#"CAST("CustomerID" AS BIGINT)"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_size_error_with_a_numeric_code_is_reported_as_such() {
    // llama.cpp answers an oversized prompt with an error whose `code` is a number.
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": 200034, "n_ctx": 8192}
        })))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("does not fit the model's context (200034 prompt tokens, context 8192)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not a chat completion"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_cut_at_its_budget_keeps_its_complete_entries_and_asks_for_the_rest() {
    let s = server().await;
    let full = fields(&[
        ("customer_id", Some(r#"CAST("CustomerID" AS BIGINT)"#)),
        ("full_name", Some(r#"upper(clean("Full Name"))"#)),
        ("email", Some(r#"lower(clean("E-mail"))"#)),
        (
            "signup_date",
            Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
        ),
    ]);
    // Cut inside the fifth entry, as a server does at `max_tokens`.
    let cut = format!(
        "{}, {{\"target\": \"lifetime_value\", \"expr\": \"CAST(CAST(",
        &full[..full.len() - 2]
    );
    let mut truncated = completion(&cut);
    truncated["choices"][0]["finish_reason"] = json!("length");
    Mock::given(method("POST"))
        .and(body_string_contains("has no entry for these fields"))
        .respond_with(ok(&fields(&[
            ("lifetime_value", Some(r#"parse_number("Lifetime Value")"#)),
            ("is_active", Some(r#"parse_bool("Active")"#)),
        ])))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(truncated))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    // The completion budget is sized to the fields asked for.
    assert_eq!(b[0]["max_tokens"], 200 + 80 * 6);
    assert_eq!(b[1]["max_tokens"], 200 + 80 * 2);
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(
        doc["fields"]["signup_date"]["expr"],
        r#"try_to_date("Signup Date", '%Y-%m-%d')"#
    );
    assert_eq!(
        doc["fields"]["lifetime_value"]["expr"],
        r#"parse_number("Lifetime Value")"#
    );
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["truncated_replies"], 1, "{llm}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_date_format_that_parses_no_sample_value_is_sent_back() {
    // `%d.%m.%Y` compiles but matches none of source1's ISO dates: every row would be invalid.
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("parse none of the sample's values"))
        .respond_with(ok(&fields(&[(
            "signup_date",
            Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
        )])))
        .with_priority(1)
        .mount(&s)
        .await;
    let first = source1_reply().replace("%Y-%m-%d", "%d.%m.%Y");
    Mock::given(method("POST"))
        .respond_with(ok(&first))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    let follow_up = prompt_text(&b[1]);
    assert!(
        follow_up.contains("'%d.%m.%Y' parse none of the sample's values of `Signup Date`"),
        "{follow_up}"
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(
        doc["fields"]["signup_date"]["expr"],
        r#"try_to_date("Signup Date", '%Y-%m-%d')"#
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prompt_carries_the_offline_matchers_ranked_candidates() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let prompt = prompt_text(&bodies(&s).await[0]);
    assert!(
        prompt.contains("## Candidate columns per field"),
        "{prompt}"
    );
    assert!(
        prompt.contains("- customer_id: 1. \"CustomerID\" (1.00)"),
        "{prompt}"
    );
    // Turned off with `llm.candidates: 0`.
    let s2 = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s2)
        .await;
    let w2 = workdir(&format!(
        r#"{{"base_url": "{}/v1", "candidates": 0}}"#,
        s2.uri()
    ));
    let r = run(&w2, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!prompt_text(&bodies(&s2).await[0]).contains("Candidate columns"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_field_answered_by_a_candidates_number_gets_that_candidates_expression() {
    let s = server().await;
    // The model picks the first candidate for two fields, writes its own expression for one,
    // gives an out-of-range number with an expression for another (the expression counts),
    // and leaves the rest unmapped.
    let reply = json!({"fields": [
        {"target": "customer_id", "choice": 1, "expr": null, "confidence": 0.9, "rationale": "the id"},
        {"target": "email", "choice": "1", "expr": null, "confidence": 0.8, "rationale": ""},
        {"target": "full_name", "choice": 0, "expr": "upper(clean(\"Full Name\"))", "confidence": 0.7, "rationale": "own"},
        {"target": "signup_date", "choice": 99, "expr": "try_to_date(\"Signup Date\", '%Y-%m-%d')", "confidence": 0.7, "rationale": "date"},
        {"target": "lifetime_value", "choice": 0, "expr": null, "confidence": 0.5, "rationale": "none"},
        {"target": "is_active", "choice": 0, "expr": null, "confidence": 0.5, "rationale": "none"}
    ]});
    Mock::given(method("POST"))
        .respond_with(ok(&reply.to_string()))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("out/mappings/source1.mapping.json");
    let f = &doc["fields"];
    // The matcher's own first candidates: what `--mapper heuristic` chooses.
    let h = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(
        &h,
        &["map", "--source", "source1", "--mapper", "heuristic"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let offline = h.json("out/mappings/source1.mapping.json");
    for field in ["customer_id", "email"] {
        assert_eq!(
            f[field]["expr"], offline["fields"][field]["expr"],
            "{field}"
        );
        assert!(f[field]["expr"].is_string(), "{doc}");
    }
    assert_eq!(f["customer_id"]["sources"], json!(["CustomerID"]));
    assert!(
        f["customer_id"]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("chose candidate 1 (CustomerID): the id"),
        "{doc}"
    );
    assert_eq!(f["full_name"]["expr"], r#"upper(clean("Full Name"))"#);
    assert_eq!(
        f["signup_date"]["expr"],
        r#"try_to_date("Signup Date", '%Y-%m-%d')"#
    );
    assert_eq!(f["lifetime_value"]["expr"], Value::Null);
    // The reply schema asks for the number, bounded: a candidate's number leaves no room for
    // an expression of the model's own.
    let body = &bodies(&s).await[0];
    let shapes =
        &body["response_format"]["json_schema"]["schema"]["properties"]["fields"]["items"]["oneOf"];
    let chosen = &shapes[0]["properties"];
    assert_eq!(chosen["choice"]["type"], "integer", "{shapes}");
    assert_eq!(chosen["choice"]["minimum"], 1, "{shapes}");
    assert_eq!(chosen["expr"]["type"], "null", "{shapes}");
    assert_eq!(shapes[1]["properties"]["choice"]["const"], 0, "{shapes}");
    assert_eq!(chosen["rationale"]["maxLength"], 48);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_the_model_gives_two_fields_goes_to_the_one_the_matcher_scores_higher() {
    let s = server().await;
    // The model reads the name column for the e-mail address too.
    let reply = fields(&[
        ("customer_id", Some(r#"CAST("CustomerID" AS BIGINT)"#)),
        ("full_name", Some(r#"clean("Full Name")"#)),
        ("email", Some(r#"clean("Full Name")"#)),
        (
            "signup_date",
            Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
        ),
        ("lifetime_value", Some(r#"parse_number("Lifetime Value")"#)),
        ("is_active", Some(r#"parse_bool("Active")"#)),
    ]);
    Mock::given(method("POST"))
        .respond_with(ok(&reply))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("out/mappings/source1.mapping.json");
    let f = &doc["fields"];
    assert_eq!(f["full_name"]["sources"], json!(["Full Name"]), "{doc:#}");
    // The e-mail field takes the matcher's own column, and says why.
    assert_eq!(f["email"]["sources"], json!(["E-mail"]), "{doc:#}");
    let why = f["email"]["rationale"].as_str().unwrap();
    assert!(
        why.starts_with(
            "heuristic (llm fallback): the model gave column `Full Name` to `full_name` too"
        ),
        "{why}"
    );
    let summary = w.json("out/run_summary.json");
    let llm = &summary["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(llm["fallback_fields"], json!(["email"]), "{llm:#}");
    assert!(
        !llm["model_fields"]
            .as_array()
            .unwrap()
            .contains(&json!("email"))
    );
}

/// Answers every field a request's reply schema asks for: the column of the same name when
/// there is one, null otherwise.
struct EchoTargets(Vec<String>);

impl wiremock::Respond for EchoTargets {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let targets = crate::harness::reply_entry(&body)["target"]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let entries: Vec<Value> = targets
            .iter()
            .map(|t| {
                let t = t.as_str().unwrap();
                let expr = self
                    .0
                    .contains(&t.to_string())
                    .then(|| format!("clean(\"{t}\")"));
                json!({"target": t, "expr": expr, "confidence": 0.9, "rationale": "echo"})
            })
            .collect();
        ok(&json!({ "fields": entries }).to_string())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wide_schema_goes_in_batches_within_the_prompt_budget() {
    // Field by field (`by_column_above` above the target's width): the batching of fields.
    let s = server().await;
    let columns: Vec<String> = (0..30).map(|i| format!("reading_{i:03}")).collect();
    Mock::given(method("POST"))
        .respond_with(EchoTargets(columns.clone()))
        .mount(&s)
        .await;
    let mut props = serde_json::Map::new();
    for i in 0..200 {
        props.insert(
            format!("reading_{i:03}"),
            json!({"type": ["string", "null"], "description": format!(
                "Measured value number {i} of the instrument panel, as reported by the station \
                 operator at the end of the shift, before any correction is applied")}),
        );
    }
    let schema = json!({"type": "object", "properties": props}).to_string();
    let w = Workdir::new();
    let mut csv = columns.join(",");
    csv.push('\n');
    for r in 0..20 {
        csv.push_str(
            &(0..30)
                .map(|c| format!("v{r}_{c}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    w.write("wide.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"wide": {"path": "wide.csv"}}"#,
            &schema,
            &format!(
                r#""llm": {{"base_url": "{}/v1", "max_prompt_tokens": 4000, "by_column_above": 1000}},"#,
                s.uri()
            ),
        ),
    );
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert!(b.len() >= 2, "{} requests", b.len());
    for body in &b {
        let chars: usize = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.to_string().len())
            .sum();
        assert!(chars / 4 <= 4000, "a request of about {} tokens", chars / 4);
    }
    let doc = w.json("out/mappings/wide.mapping.json");
    for i in 0..30 {
        let f = format!("reading_{i:03}");
        assert_eq!(
            doc["fields"][&f]["expr"],
            format!("clean(\"{f}\")"),
            "{f}: {}",
            doc["fields"][&f]
        );
    }
    // Every field was either answered or decided offline; none silently dropped.
    for (name, m) in doc["fields"].as_object().unwrap() {
        let why = m["rationale"].as_str().unwrap();
        assert!(
            why == "echo" || why.contains("not sent to the model"),
            "{name}: {m}"
        );
    }
    let r = run(&w, &["run", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let llm = &w.json("out/run_summary.json")["sources"]["wide"]["mapping"]["llm"];
    assert!(llm["batches"].as_u64().unwrap() >= 2, "{llm}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_requests_total_wait() {
    // A storm of 503s with ten retries allowed: `max_wait_s` ends the retries early.
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "max_retries": 10, "max_wait_s": 1.5}}"#,
        s.uri()
    ));
    let started = std::time::Instant::now();
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("503"), "{}", r.stderr);
    let requests = s.received_requests().await.unwrap().len();
    assert!(requests < 11, "{requests} requests");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_completes_an_enum_value_table() {
    // `frozen` and `closed` are no allowed value and nothing offline maps them: the model is
    // asked for those values only, and its table is compiled into the expression.
    let s = server().await;
    Mock::given(method("POST"))
        .and(body_string_contains("holds these values"))
        .respond_with(ok(&json!({"values": [
            {"source": "frozen", "target": "suspended"},
            {"source": "closed", "target": "terminated"}
        ]})
        .to_string()))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok(&fields(&[
            ("id", Some(r#"CAST("id" AS BIGINT)"#)),
            ("status", Some(r#"clean("status")"#)),
        ])))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = Workdir::new();
    let mut csv = String::from("id,status\n");
    for (i, st) in ["active", "frozen", "closed", "active", "frozen"]
        .iter()
        .enumerate()
    {
        csv.push_str(&format!("{},{st}\n", i + 1));
    }
    w.write("accounts.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"accounts": {"path": "accounts.csv"}}"#,
            r#"{"type": "object", "properties": {"id": {"type": "integer"},
                "status": {"type": "string", "enum": ["active", "suspended", "terminated"]}}}"#,
            &format!(
                r#""output_format": "ndjson", "llm": {{"base_url": "{}/v1"}},"#,
                s.uri()
            ),
        ),
    );
    let r = run(&w, &["run", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    let value_request = b
        .iter()
        .find(|x| prompt_text(x).contains("holds these values"))
        .expect("a value table request");
    let text = prompt_text(value_request);
    assert!(text.contains(r#"["frozen","closed"]"#), "{text}");
    let doc = w.json("out/mappings/accounts.mapping.json");
    let expr = doc["fields"]["status"]["expr"].as_str().unwrap();
    assert!(
        expr.contains("WHEN 'frozen' THEN 'suspended'")
            && expr.contains("WHEN 'closed' THEN 'terminated'"),
        "{expr}"
    );
    assert_eq!(doc["fields"]["status"]["value_coverage"], 1.0);
    let rows = w.ndjson("out/accounts_valid_data.ndjson");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[1]["status"], "suspended");
    let llm = &w.json("out/run_summary.json")["sources"]["accounts"]["mapping"]["llm"];
    assert_eq!(llm["value_tables"], 1, "{llm}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_a_model_never_names_are_asked_again_then_answered_offline() {
    // A small model under a grammar that bounds the entry count but not uniqueness names one
    // field twice and leaves the rest out, every time.
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&fields(&[
            ("customer_id", Some(r#""CustomerID""#)),
            ("customer_id", Some(r#""CustomerID""#)),
        ])))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let requests = bodies(&s).await;
    // Asked once again for the five, then the repeat ends it (a feedback revision may follow).
    assert!(requests.len() >= 2);
    assert!(!prompt_text(&requests[1]).contains("was run on the source"));
    let asked_again: Vec<&str> = crate::harness::reply_entry(&requests[1])["target"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        asked_again,
        [
            "full_name",
            "email",
            "signup_date",
            "lifetime_value",
            "is_active"
        ]
    );
    let summary = w.json("out/run_summary.json");
    let llm = &summary["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(
        llm["unanswered_fields"].as_array().unwrap().len(),
        5,
        "{llm}"
    );
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(doc["fields"]["customer_id"]["expr"], r#""CustomerID""#);
    let email = &doc["fields"]["email"];
    assert!(
        email["rationale"]
            .as_str()
            .unwrap()
            .starts_with("heuristic (llm fallback): the model gave no entry"),
        "{email}"
    );
    assert_eq!(email["expr"], r#"lower(clean("E-mail"))"#);
    assert_eq!(summary["sources"]["source1"]["valid"], 2, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_cut_before_its_first_entry_gets_a_doubled_budget() {
    // A wordy model spends its budget before closing one entry: asking again with the same
    // budget would be cut at the same place.
    let s = server().await;
    let mut cut = completion(r#"{"fields": [{"target": "customer_id", "expr": "CAST(CAST("#);
    cut["choices"][0]["finish_reason"] = json!("length");
    Mock::given(method("POST"))
        .and(body_string_contains("could not be read"))
        .respond_with(ok(&source1_reply()))
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(cut))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["max_tokens"], 200 + 80 * 6);
    assert_eq!(b[1]["max_tokens"], 2 * (200 + 80 * 6));
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(
        doc["fields"]["full_name"]["expr"],
        r#"upper(clean("Full Name"))"#
    );
}

/// A reply mock for requests whose reply schema asks for exactly `targets`.
fn asking(targets: &[&str]) -> impl wiremock::Match + use<> {
    body_string_contains(format!(
        r#""enum":{}"#,
        serde_json::to_string(targets).unwrap()
    ))
}

/// Each scripted reply's delay, where the test counts the time spent waiting.
const DELAY: std::time::Duration = std::time::Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_replies_cannot_be_read_is_halved_once_then_left_to_the_matcher() {
    // The model answers three of the six fields readably and garbles the other three: the
    // answered half stands, the garbled half goes to the offline matcher, and the source is
    // mapped (not failed).
    let s = server().await;
    Mock::given(method("POST"))
        .and(asking(&["signup_date", "lifetime_value", "is_active"]))
        .respond_with(
            ok(&fields(&[
                (
                    "signup_date",
                    Some(r#"try_to_date("Signup Date", '%Y-%m-%d')"#),
                ),
                ("lifetime_value", Some(r#"parse_number("Lifetime Value")"#)),
                ("is_active", Some(r#"parse_bool("Active")"#)),
            ]))
            .set_delay(DELAY),
        )
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok("I think the mapping is: customer id → CustomerID").set_delay(DELAY))
        .with_priority(2)
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["run", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut sizes: Vec<u64> = bodies(&s)
        .await
        .iter()
        .map(|x| {
            x["response_format"]["json_schema"]["schema"]["properties"]["fields"]["minItems"]
                .as_u64()
                .unwrap()
        })
        .collect();
    sizes.sort_unstable();
    // Three replies for the whole, three for the garbled half, one for the answered half:
    // the garbled half is not split again.
    assert_eq!(sizes, [3, 3, 3, 3, 6, 6, 6]);
    let doc = w.json("out/mappings/source1.mapping.json");
    assert_eq!(doc["mapper"], "llm");
    assert_eq!(
        doc["fields"]["is_active"]["expr"],
        r#"parse_bool("Active")"#
    );
    for f in ["customer_id", "full_name", "email"] {
        let m = &doc["fields"][f];
        assert!(
            m["rationale"]
                .as_str()
                .unwrap()
                .starts_with("heuristic (llm fallback): the model at"),
            "{m}"
        );
        assert!(m["expr"].is_string(), "{m}");
    }
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    assert_eq!(
        llm["unanswered_fields"],
        json!(["customer_id", "full_name", "email"]),
        "{llm}"
    );
    assert_eq!(llm["requests"], 7, "{llm}");
    // The whole request's three replies came before the halves, and the garbled half's three
    // replies one after another: at least six waits, not the longest batch's three.
    assert!(
        llm["latency_s"].as_f64().unwrap() >= 6.0 * DELAY.as_secs_f64(),
        "{llm}"
    );
    // Every row still converts: the matcher's choices for the garbled half are right.
    assert!(r.stdout.contains("Successfully validated"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_that_can_never_be_read_fail_the_source_with_the_reason() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok("no JSON here"))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("gave no readable mapping in 3 replies"),
        "{}",
        r.stderr
    );
    // The whole request, then each half once: nothing smaller.
    assert_eq!(bodies(&s).await.len(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn certain_fields_are_decided_offline_and_the_cost_is_estimated() {
    let s = server().await;
    Mock::given(method("POST"))
        .respond_with(ok(&source1_reply()))
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "min_uncertainty": 0.5,
            "price_per_million_tokens": {{"prompt": 2.5, "completion": 10}}}}"#,
        s.uri()
    ));
    let r = run(&w, &["run", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let llm = &w.json("out/run_summary.json")["sources"]["source1"]["mapping"]["llm"];
    let offline: Vec<String> = serde_json::from_value(llm["offline_fields"].clone()).unwrap();
    assert!(!offline.is_empty(), "{llm}");
    let b = bodies(&s).await;
    assert_eq!(llm["requests"].as_u64().unwrap() as usize, b.len(), "{llm}");
    // The model is asked only about the others, and never about an offline field.
    let asked: Vec<String> = b
        .iter()
        .flat_map(|x| {
            serde_json::from_value::<Vec<String>>(
                crate::harness::reply_entry(x)["target"]["enum"].clone(),
            )
            .unwrap()
        })
        .collect();
    assert!(
        offline.iter().all(|f| !asked.contains(f)),
        "{asked:?} {offline:?}"
    );
    assert!(!asked.is_empty() || offline.len() == 6, "{llm}");
    let doc = w.json("out/mappings/source1.mapping.json");
    let names: Vec<&String> = doc["fields"].as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "customer_id",
            "full_name",
            "email",
            "signup_date",
            "lifetime_value",
            "is_active"
        ],
        "the document keeps the target's order"
    );
    for f in &offline {
        let why = doc["fields"][f]["rationale"].as_str().unwrap();
        assert!(
            why.starts_with("heuristic (decided offline, uncertainty 0."),
            "{why}"
        );
    }
    // 1,200 prompt and 300 completion tokens per scripted reply.
    let n = b.len() as f64;
    let cost = llm["estimated_cost"].as_f64().unwrap();
    assert!(
        (cost - n * (1200.0 * 2.5 + 300.0 * 10.0) / 1e6).abs() < 1e-9,
        "{llm}"
    );

    // At 1, every field the matcher maps is decided offline: the model is not asked at all.
    let w = workdir(&format!(
        r#"{{"base_url": "{}/v1", "min_uncertainty": 1}}"#,
        s.uri()
    ));
    let before = b.len();
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(bodies(&s).await.len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_settings_out_of_range_are_config_errors() {
    for (llm, key) in [
        (
            r#"{"base_url": "http://127.0.0.1:9/v1", "min_uncertainty": 1.5}"#,
            "min_uncertainty",
        ),
        (
            r#"{"base_url": "http://127.0.0.1:9/v1", "price_per_million_tokens": {"prompt": -1, "completion": 1}}"#,
            "price_per_million_tokens",
        ),
    ] {
        let w = workdir(llm);
        let r = run(&w, &["map", "--source", "source1"], &[]).await;
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(key), "{}", r.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_runs_to_every_budget_is_split_not_given_more() {
    // A looping model fills any budget: after the doubled budget is cut too, the conversation
    // ends and its fields go again as halves (each with one doubling), then the source fails.
    let s = server().await;
    let mut cut = completion(r#"{"fields": [{"target": "customer_id", "expr": "CAST(CAST(CAST("#);
    cut["choices"][0]["finish_reason"] = json!("length");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(cut))
        .mount(&s)
        .await;
    let w = workdir(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--source", "source1", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("gave no readable mapping in 2 replies"),
        "{}",
        r.stderr
    );
    let mut budgets: Vec<u64> = bodies(&s)
        .await
        .iter()
        .map(|b| b["max_tokens"].as_u64().unwrap())
        .collect();
    // The halves run side by side.
    budgets[2..].sort_unstable();
    assert_eq!(budgets, [680, 1360, 440, 440, 880, 880]);
}

/// llama.cpp's `/tokenize` as a tokenizer that makes one token of every byte: the finest any
/// model can split, far past the mapper's estimate of three characters per token.
struct BytesAreTokens;

impl wiremock::Respond for BytesAreTokens {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let n = body["content"].as_str().unwrap_or_default().len();
        ResponseTemplate::new(200).set_body_json(json!({ "tokens": vec![1; n] }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_own_token_count_keeps_every_request_within_the_budget() {
    let s = server().await;
    let columns: Vec<String> = (0..60).map(|i| format!("gauge_{i:03}")).collect();
    Mock::given(method("POST"))
        .and(path("/tokenize"))
        .respond_with(BytesAreTokens)
        .mount(&s)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(EchoTargets(columns.clone()))
        .mount(&s)
        .await;
    let mut props = serde_json::Map::new();
    for c in &columns {
        props.insert(
            c.clone(),
            json!({"type": ["string", "null"], "description": format!(
                "Reading of {c} on the control panel, taken by the operator at the end of each \
                 shift and entered before any correction")}),
        );
    }
    let schema = json!({"type": "object", "properties": props}).to_string();
    let w = Workdir::new();
    let mut csv = columns.join(",");
    csv.push('\n');
    for r in 0..5 {
        csv.push_str(
            &(0..60)
                .map(|c| format!("{r}.{c}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    w.write("g.csv", csv);
    const BUDGET: usize = 10_000;
    w.write(
        "config.json",
        config(
            r#"{"g": {"path": "g.csv"}}"#,
            &schema,
            &format!(
                r#""llm": {{"base_url": "{}/v1", "max_prompt_tokens": {BUDGET}}},"#,
                s.uri()
            ),
        ),
    );
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let requests = s.received_requests().await.unwrap();
    let b = bodies(&s).await;
    let sizes: Vec<usize> = b
        .iter()
        .map(|body| {
            body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap_or_default().len())
                .sum()
        })
        .collect();
    assert!(
        requests.iter().any(|r| r.url.path() == "/tokenize"),
        "the server's tokenizer was asked; request sizes {sizes:?}"
    );
    assert!(b.len() >= 2, "split to fit: {} requests", b.len());
    for body in &b {
        let messages = body["messages"].as_array().unwrap();
        let tokens: usize = messages
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().len() + 8)
            .sum::<usize>()
            + 4;
        assert!(
            tokens <= BUDGET,
            "a request of {tokens} tokens by the server's count"
        );
    }
    let doc = w.json("out/mappings/g.mapping.json");
    for c in &columns {
        assert_eq!(doc["fields"][c]["expr"], format!("clean(\"{c}\")"), "{c}");
    }
}

/// Answers a column-by-column request: for each column asked, the field listed under it in the
/// prompt that the picks name for it ("none" for a column they do not name). A
/// request asking about the column of the second member gets prose instead of JSON.
struct PickFields(
    Vec<(&'static str, &'static [&'static str])>,
    Option<&'static str>,
);

impl wiremock::Respond for PickFields {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let columns = asked_columns(&body);
        let text = prompt_text(&body);
        let garbled = self.1.is_some_and(|g| columns.iter().any(|c| c == g));
        let entries: Vec<Value> = columns
            .iter()
            .map(|c| {
                let c = c.as_str().unwrap();
                // The column's part of the prompt: its heading, then "N. field (type…".
                let part = text
                    .split("\n### ")
                    .find(|p| p.starts_with(&format!("{c:?}:")))
                    .unwrap_or_else(|| panic!("no part for {c} in {text}"));
                let wanted = self
                    .0
                    .iter()
                    .find(|(col, _)| *col == c)
                    .map_or(&[][..], |(_, f)| *f);
                let field = part
                    .lines()
                    .find_map(|l| {
                        let (_, rest) = l.split_once(". ")?;
                        let field = rest.split(" (").next()?;
                        wanted.contains(&field).then_some(field)
                    })
                    .unwrap_or("none");
                json!({"column": c, "field": field})
            })
            .collect();
        // The prompt's size as the mapper estimates it (three characters per token), so that
        // the reported usage does not scale the mapper's later estimates.
        let content = if garbled {
            "I think that column is the home city.".to_string()
        } else {
            json!({ "columns": entries }).to_string()
        };
        let mut reply = completion(&content);
        reply["usage"]["prompt_tokens"] = json!(text.len().div_ceil(3));
        ResponseTemplate::new(200).set_body_json(reply)
    }
}

/// The picks of the column-by-column tests: the e-mail, signup and points columns name their
/// fields; the city column names none (`garbled`: the column whose requests get prose).
fn three_picks(garbled: Option<&'static str>) -> PickFields {
    PickFields(
        vec![
            ("email", &["email_address"]),
            ("signup", &["signup_date"]),
            ("points", &["loyalty_points"]),
        ],
        garbled,
    )
}

/// The columns a column-by-column request asks about, as its reply's grammar lists them.
fn asked_columns(body: &Value) -> Vec<Value> {
    body["response_format"]["json_schema"]["schema"]["properties"]["columns"]["items"]["properties"]
        ["column"]["enum"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// [`PickFields`], except that a request about more than `self.1` columns gets "none" for
/// every column: a small model stuck in a pattern on a long list.
struct SilentWhenLong(PickFields, usize);

impl wiremock::Respond for SilentWhenLong {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let columns = asked_columns(&body);
        if columns.len() <= self.1 {
            return self.0.respond(request);
        }
        let entries: Vec<Value> = columns
            .iter()
            .map(|c| json!({"column": c, "field": "none"}))
            .collect();
        let mut reply = completion(&json!({ "columns": entries }).to_string());
        reply["usage"]["prompt_tokens"] = json!(prompt_text(&body).len().div_ceil(3));
        ResponseTemplate::new(200).set_body_json(reply)
    }
}

/// A 150-field target of which a 4-column source fills four: `email_address`,
/// `signup_date`, `home_city`, `loyalty_points`; `secondary_email` resembles the e-mail column
/// too, and the rest are measurements nothing resembles.
fn column_case(llm: &str) -> Workdir {
    let w = Workdir::new();
    let mut csv = String::from("email,signup,city,points\n");
    for i in 0..20 {
        csv.push_str(&format!(
            "user{i}@example.com,2024-03-{:02},{},{}\n",
            i + 1,
            ["London", "Paris", "Oslo", "Lima"][i % 4],
            100 + i * 7
        ));
    }
    w.write("members.csv", csv);
    let mut props = serde_json::Map::new();
    props.insert(
        "email_address".into(),
        json!({"type": "string", "format": "email", "description": "Contact e-mail of the member"}),
    );
    props.insert(
        "signup_date".into(),
        json!({"type": "string", "format": "date", "description": "Day the member signed up"}),
    );
    props.insert(
        "home_city".into(),
        json!({"type": ["string", "null"], "description": "City the member lives in"}),
    );
    props.insert(
        "loyalty_points".into(),
        json!({"type": ["integer", "null"], "description": "Points collected"}),
    );
    props.insert(
        "secondary_email".into(),
        json!({"type": ["string", "null"], "format": "email", "description": "Another e-mail address of the member"}),
    );
    let things = [
        "turbine",
        "reactor",
        "boiler",
        "valve",
        "pump",
        "rotor",
        "kiln",
        "furnace",
        "condenser",
        "impeller",
    ];
    let measures = [
        "vibration_mm_s",
        "coolant_temp_k",
        "pressure_kpa",
        "torque_nm",
        "viscosity_cst",
        "voltage_kv",
        "humidity_pct",
        "rpm",
        "corrosion_um",
        "noise_db",
        "oil_ppm",
        "stroke_mm",
        "amperage",
        "duty_cycles",
        "inlet_temp_k",
    ];
    'outer: for t in things {
        for m in measures {
            if props.len() == 150 {
                break 'outer;
            }
            props.insert(format!("{t}_{m}"), json!({"type": ["number", "null"]}));
        }
    }
    assert_eq!(props.len(), 150);
    let schema = json!({"type": "object", "properties": props}).to_string();
    w.write(
        "config.json",
        config(
            r#"{"members": {"path": "members.csv"}}"#,
            &schema,
            &format!(r#""llm": {llm},"#),
        ),
    );
    w
}

/// [`column_case`] against a scripted server answering with `picks`, and the fields the
/// offline matcher maps for it (`--mapper heuristic`, its output removed afterwards).
async fn column_case_served(
    picks: impl wiremock::Respond + 'static,
) -> (MockServer, Workdir, Value) {
    let s = server().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(picks)
        .mount(&s)
        .await;
    let w = column_case(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let offline = run(&w, &["map", "--mapper", "heuristic"], &[]).await;
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    let fields = w.json("out/mappings/members.mapping.json")["fields"].clone();
    std::fs::remove_dir_all(w.path().join("out")).unwrap();
    (s, w, fields)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wide_target_is_asked_column_by_column_and_the_models_picks_decide() {
    // The model picks the field of three columns and none for `city`: the picked fields take
    // the matcher's expressions, `home_city` keeps the matcher's choice (a "none" does not
    // overrule a pair the matcher accepts; a pick of another field does, below), and the 145
    // measurement fields are never shown to it.
    let (s, w, offline) = column_case_served(three_picks(None)).await;
    // Without the model, the matcher maps the city.
    assert_eq!(
        offline["home_city"]["sources"],
        json!(["city"]),
        "{}",
        offline["home_city"]
    );

    let r = run(&w, &["run", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    assert_eq!(b.len(), 1, "one request for four columns");
    let text = prompt_text(&b[0]);
    assert!(text.contains("Source table: \"members\""), "{text}");
    for c in ["email", "signup", "city", "points"] {
        assert!(
            text.contains(&format!("### {c:?}:")),
            "{c} is not asked about: {text}"
        );
    }
    assert!(
        !text.contains("turbine"),
        "a field no column ranks was shown: {text}"
    );
    let schema = &b[0]["response_format"]["json_schema"]["schema"]["properties"]["columns"];
    assert_eq!(schema["minItems"], 4);
    // The answers the grammar allows: the fields offered in the request, or none.
    let names = schema["items"]["properties"]["field"]["enum"]
        .as_array()
        .unwrap();
    assert!(
        names.contains(&json!("email_address")) && names.contains(&json!("none")),
        "{names:?}"
    );
    assert!(!names.contains(&json!("turbine_rpm")), "{names:?}");

    let doc = w.json("out/mappings/members.mapping.json");
    assert_eq!(doc["mapper"], "llm");
    let f = &doc["fields"];
    assert_eq!(
        f["email_address"]["sources"],
        json!(["email"]),
        "{}",
        f["email_address"]
    );
    assert_eq!(
        f["signup_date"]["sources"],
        json!(["signup"]),
        "{}",
        f["signup_date"]
    );
    assert_eq!(
        f["loyalty_points"]["sources"],
        json!(["points"]),
        "{}",
        f["loyalty_points"]
    );
    assert!(
        f["email_address"]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("chose field 1 for column \"email\""),
        "{}",
        f["email_address"]
    );
    assert_eq!(
        f["home_city"]["sources"],
        json!(["city"]),
        "{}",
        f["home_city"]
    );
    assert!(
        f["home_city"]["rationale"].as_str().unwrap().starts_with(
            "heuristic (decided offline: the model chose no field for column \"city\""
        ),
        "{}",
        f["home_city"]
    );
    assert!(
        f["turbine_rpm"]["rationale"]
            .as_str()
            .unwrap()
            .contains("not sent to the model"),
        "{}",
        f["turbine_rpm"]
    );
    let llm = &w.json("out/run_summary.json")["sources"]["members"]["mapping"]["llm"];
    assert_eq!(llm["prompt_version"], "conform-columns-v1", "{llm}");
    let mut model: Vec<&str> = llm["model_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    model.sort_unstable();
    assert_eq!(
        model,
        [
            "email_address",
            "loyalty_points",
            "secondary_email",
            "signup_date"
        ],
        "{llm}"
    );
    assert_eq!(llm["offline_fields"], json!(["home_city"]), "{llm}");
    assert_eq!(
        llm["not_sent_fields"].as_array().unwrap().len(),
        145,
        "{llm}"
    );
    assert!(
        f["secondary_email"]["expr"].is_null(),
        "{}",
        f["secondary_email"]
    );
    // The picked fields convert every row: the matcher's expressions were used.
    let valid = w.json("out/members_valid_data.json");
    assert_eq!(valid.as_array().unwrap().len(), 20, "{}", r.stdout);
    assert_eq!(valid[3]["email_address"], "user3@example.com");
    assert_eq!(valid[3]["loyalty_points"], 121);
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_go_in_requests_within_the_budget_and_a_garbled_one_is_left_to_the_matcher() {
    // A budget that holds two columns: the four go in two requests, each within it. The
    // server garbles every request that asks about `city`: that batch goes again in halves,
    // and the column that still gets no readable reply alone leaves its field to the matcher
    // (listed as unanswered); the other answers stand.
    let s = server().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(three_picks(Some("city")))
        .mount(&s)
        .await;
    let w = column_case(&format!(
        r#"{{"base_url": "{}/v1", "max_prompt_tokens": 450}}"#,
        s.uri()
    ));
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    let mut asked: Vec<String> = b
        .iter()
        .map(|x| Value::Array(asked_columns(x)).to_string())
        .collect();
    // [email, signup] and [city, points]; the garbled batch again as [city] and [points]
    // (batches run concurrently, in either order).
    asked[..2].sort();
    asked[2..].sort();
    assert_eq!(
        asked,
        [
            r#"["city","points"]"#,
            r#"["email","signup"]"#,
            r#"["city"]"#,
            r#"["points"]"#
        ],
        "{}",
        r.stderr
    );
    for body in &b {
        let chars: usize = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().len())
            .sum();
        // Three characters per token, and eight per message for the chat template.
        assert!(
            chars.div_ceil(3) + 16 <= 700,
            "a request of about {} tokens",
            chars / 3
        );
    }
    let doc = w.json("out/mappings/members.mapping.json");
    let f = &doc["fields"];
    assert_eq!(
        f["email_address"]["sources"],
        json!(["email"]),
        "{}",
        f["email_address"]
    );
    assert_eq!(
        f["loyalty_points"]["sources"],
        json!(["points"]),
        "{}",
        f["loyalty_points"]
    );
    assert_eq!(
        f["home_city"]["sources"],
        json!(["city"]),
        "{}",
        f["home_city"]
    );
    assert!(
        f["home_city"]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("heuristic (llm fallback): the model at"),
        "{}",
        f["home_city"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_answered_none_throughout_is_asked_again_in_halves() {
    // Four columns in one request, the matcher sure of a field for each, and the model says
    // "none" for every one: it is asked again about two columns at a time, and those answers
    // stand — a "none" that the halves give again (`city`) leaves the matcher's choice.
    let s = server().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(SilentWhenLong(three_picks(None), 2))
        .mount(&s)
        .await;
    let w = column_case(&format!(r#"{{"base_url": "{}/v1"}}"#, s.uri()));
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bodies(&s).await;
    let mut asked: Vec<String> = b
        .iter()
        .map(|x| Value::Array(asked_columns(x)).to_string())
        .collect();
    asked[1..].sort();
    assert_eq!(
        asked,
        [
            r#"["email","signup","city","points"]"#,
            r#"["city","points"]"#,
            r#"["email","signup"]"#
        ],
        "{}",
        r.stderr
    );
    let f = &w.json("out/mappings/members.mapping.json")["fields"];
    for (field, column) in [
        ("email_address", "email"),
        ("signup_date", "signup"),
        ("loyalty_points", "points"),
        ("home_city", "city"),
    ] {
        assert_eq!(f[field]["sources"], json!([column]), "{}", f[field]);
    }
    let picked = |field: &str| {
        f[field]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("chose field")
    };
    assert!(picked("email_address") && !picked("home_city"), "{f}");
}

#[tokio::test(flavor = "multi_thread")]
async fn column_by_column_a_pick_of_another_field_overrules_the_matchers_choice() {
    // The model gives the e-mail column to `secondary_email`, not to the matcher's
    // `email_address`: the matcher's choice is overruled (unmapped, kept first among its
    // candidates), where a "none" for the column would have left it standing.
    let picks = PickFields(
        vec![
            ("email", &["secondary_email"]),
            ("signup", &["signup_date"]),
            ("points", &["loyalty_points"]),
        ],
        None,
    );
    let (_s, w, offline) = column_case_served(picks).await;
    assert_eq!(offline["email_address"]["sources"], json!(["email"]));
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let f = &w.json("out/mappings/members.mapping.json")["fields"];
    let e = &f["email_address"];
    assert!(e["expr"].is_null(), "{e}");
    assert!(
        e["rationale"]
            .as_str()
            .unwrap()
            .contains("no column chose this field"),
        "{e}"
    );
    assert_eq!(e["candidates"][0]["sources"], json!(["email"]), "{e}");
    assert_eq!(
        f["home_city"]["sources"],
        json!(["city"]),
        "{}",
        f["home_city"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn column_by_column_a_pick_below_min_confidence_is_held_for_review() {
    // Column by column the model picks and the matcher scores: a field whose picked pair the
    // matcher scores under `min_confidence` stays undecided, the pick its first candidate.
    let (_s, w, f) = column_case_served(three_picks(None)).await;
    let score = |field: &str| f[field]["confidence"].as_f64().unwrap();
    let (low, high) = ["email_address", "signup_date", "loyalty_points"]
        .into_iter()
        .map(|x| (score(x), x))
        .fold(((2.0, ""), (-1.0, "")), |(lo, hi), s| {
            (
                if s.0 < lo.0 { s } else { lo },
                if s.0 > hi.0 { s } else { hi },
            )
        });
    assert!(low.0 < high.0, "{f}");
    let min = (low.0 + high.0) / 2.0;
    let r = run(
        &w,
        &[
            "map",
            "--mapper",
            "llm",
            "--min-confidence",
            &min.to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let f = &w.json("out/mappings/members.mapping.json")["fields"];
    assert!(f[low.1]["expr"].is_null(), "{}", f[low.1]);
    assert!(
        f[low.1]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("undecided: the best candidate's confidence"),
        "{}",
        f[low.1]
    );
    assert!(
        f[low.1]["candidates"][0]["why"]
            .as_str()
            .unwrap()
            .contains("(column by column)"),
        "the model's pick is the first candidate: {}",
        f[low.1]
    );
    assert!(f[high.1]["expr"].is_string(), "{}", f[high.1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_whose_field_is_certain_is_decided_offline_and_not_asked() {
    // With `min_uncertainty`, the matcher's certain, unrivalled pairs stand without the model,
    // and their columns are left out of the question; the others are asked as before.
    let s = server().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(PickFields(vec![("points", &["loyalty_points"])], None))
        .mount(&s)
        .await;
    let w = column_case(&format!(
        r#"{{"base_url": "{}/v1", "min_uncertainty": 0.15}}"#,
        s.uri()
    ));
    let r = run(&w, &["map", "--mapper", "llm"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = w.json("out/mappings/members.mapping.json");
    let f = &doc["fields"];
    let offline: Vec<&str> = [
        "email_address",
        "signup_date",
        "home_city",
        "loyalty_points",
    ]
    .into_iter()
    .filter(|n| {
        f[*n]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("heuristic (decided offline: certain")
    })
    .collect();
    assert!(!offline.is_empty(), "nothing was certain: {doc}");
    let text: String = bodies(&s).await.iter().map(prompt_text).collect();
    for field in &offline {
        let column = f[*field]["sources"][0].as_str().unwrap();
        assert!(
            !text.contains(&format!("### {column:?}:")),
            "{column} was asked about although {field} is certain: {text}"
        );
    }
    // `email_address` is certain: the e-mail column is not asked about, although
    // `secondary_email` ranks it too.
    assert!(offline.contains(&"email_address"), "{doc}");
    assert!(
        !f["secondary_email"]["rationale"]
            .as_str()
            .unwrap()
            .starts_with("heuristic (decided offline: certain"),
        "{}",
        f["secondary_email"]
    );
    assert!(
        text.contains("### \"points\":"),
        "the uncertain columns were not asked: {text}"
    );
}
