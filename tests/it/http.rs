//! HTTP JSON API sources against a real server on 127.0.0.1 (wiremock): auth styles, every
//! pagination style, retries, malformed pages, gzip, timeouts, connection errors.

use std::io::Write;

use serde_json::json;
use wiremock::matchers::{
    basic_auth, bearer_token, header, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{ITEMS_SCHEMA, Run, Workdir, config, ids, items};

const SCHEMA: &str = ITEMS_SCHEMA;

fn workdir(sources: &str) -> Workdir {
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            sources,
            SCHEMA,
            r#""output_format": "ndjson", "max_concurrent_sources": 1,"#,
        ),
    );
    w.write("local.ndjson", "{\"id\": 7, \"name\": \"file\"}\n");
    w
}

async fn run(w: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Run {
    crate::harness::run_async(w, args, env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_auth_style_is_sent_and_a_rejection_stops_only_its_source() {
    let s = MockServer::start().await;
    Mock::given(path("/basic"))
        .and(basic_auth("ann", "pw-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
        .mount(&s)
        .await;
    // Extra headers from `http.headers` go along with the credentials.
    Mock::given(path("/bearer"))
        .and(bearer_token("tok-1"))
        .and(header("x-trace", "t1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(3, 4)))
        .mount(&s)
        .await;
    Mock::given(path("/key"))
        .and(header("x-api-key", "key-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(5, 6)))
        .mount(&s)
        .await;
    // Anything else is unauthorised.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(10)
        .mount(&s)
        .await;
    let u = s.uri();
    let sources = |pw: &str, tok: &str| {
        format!(
            r#"{{"basic": {{"url": "{u}/basic", "credentials": {{"username": "ann", "password": "{pw}"}}}},
                "bearer": {{"url": "{u}/bearer", "credentials": {{"token": "{tok}"}}, "http": {{"headers": {{"X-Trace": "t1"}}}}}},
                "key": {{"url": "{u}/key", "credentials": {{"header": "X-Api-Key", "key": "${{API_KEY}}"}}}},
                "file": {{"path": "local.ndjson"}}}}"#
        )
    };
    let w = workdir(&sources("pw-1", "tok-1"));
    let r = run(&w, &["run"], &[("API_KEY", "key-1")]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ids(&w, "basic"), vec![1, 2]);
    assert_eq!(ids(&w, "bearer"), vec![3, 4]);
    assert_eq!(ids(&w, "key"), vec![5, 6]);
    let row = &w.ndjson("out/basic_valid_data.ndjson")[0];
    assert_eq!(row["name"], "n1");

    let w = workdir(&sources("wrong-pw", "wrong-tok"));
    let r = run(&w, &["run"], &[("API_KEY", "wrong-key")]).await;
    assert_eq!(r.code, 1);
    for name in ["basic", "bearer", "key"] {
        assert!(
            r.stdout
                .contains(&format!("Invalid credentials for {name}")),
            "{}",
            r.stdout
        );
    }
    assert!(
        r.stdout
            .contains("Successfully validated 1 items from file"),
        "the file source still ran"
    );
    let summary = w.json("out/run_summary.json");
    assert!(
        summary["sources"]["basic"]["error"]
            .as_str()
            .unwrap()
            .contains("401")
    );
    for secret in ["wrong-pw", "wrong-tok", "wrong-key"] {
        assert!(!r.stdout.contains(secret) && !r.stderr.contains(secret));
        assert!(!w.read("out/run_summary.json").contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pagination_style_reads_every_page_in_order() {
    let s = MockServer::start().await;
    let u = s.uri();
    // link: /l → /l?p=2 → /l?p=3 (relative link on the last hop)
    Mock::given(path("/l"))
        .and(query_param_is_missing("p"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(items(1, 2))
                .insert_header("link", format!("<{u}/l?p=2>; rel=\"next\"").as_str()),
        )
        .mount(&s)
        .await;
    Mock::given(path("/l"))
        .and(query_param("p", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(items(3, 4))
                .insert_header("link", "</l?p=3>; rel=\"next\", </l>; rel=\"first\""),
        )
        .mount(&s)
        .await;
    Mock::given(path("/l"))
        .and(query_param("p", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(5, 5)))
        .mount(&s)
        .await;
    // page: 1, 2 full (size 2), 3 short
    for (p, (a, b)) in [(1, (1, 2)), (2, (3, 4)), (3, (5, 5))] {
        Mock::given(path("/p"))
            .and(query_param("page", p.to_string()))
            .and(query_param("per_page", "2"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"data": {"items": items(a, b)}})),
            )
            .mount(&s)
            .await;
    }
    // offset: 0, 2 full, 4 empty
    for (o, body) in [(0, items(1, 2)), (2, items(3, 4)), (4, json!([]))] {
        Mock::given(path("/o"))
            .and(query_param("offset", o.to_string()))
            .and(query_param("limit", "2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&s)
            .await;
    }
    // cursor: none → c1 → c2 → null
    Mock::given(path("/c"))
        .and(query_param_is_missing("cursor"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"rows": items(1, 2), "meta": {"next": "c1"}})),
        )
        .mount(&s)
        .await;
    Mock::given(path("/c"))
        .and(query_param("cursor", "c1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"rows": items(3, 3), "meta": {"next": "c2"}})),
        )
        .mount(&s)
        .await;
    Mock::given(path("/c"))
        .and(query_param("cursor", "c2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"rows": items(4, 4), "meta": {"next": null}})),
        )
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"link": {{"url": "{u}/l", "pagination": {{"type": "link"}}}},
            "page": {{"url": "{u}/p", "records": "data.items",
                      "pagination": {{"type": "page", "param": "page", "size_param": "per_page", "size": 2}}}},
            "offset": {{"url": "{u}/o", "pagination": {{"type": "offset", "size": 2}}}},
            "cursor": {{"url": "{u}/c", "records": "rows",
                        "pagination": {{"type": "cursor", "param": "cursor", "cursor_path": "meta.next"}}}},
            "capped": {{"url": "{u}/l", "pagination": {{"type": "link", "max_pages": 2}}}}}}"#
    ));
    let r = run(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(ids(&w, "link"), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&w, "page"), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&w, "offset"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&w, "cursor"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&w, "capped"), vec![1, 2, 3, 4], "max_pages");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_malformed_pages_and_gzip() {
    let s = MockServer::start().await;
    let u = s.uri();
    Mock::given(path("/r"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(path("/r"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 3)))
        .with_priority(2)
        .mount(&s)
        .await;
    // Page 2 of 3 is broken JSON: its text becomes one invalid row, pages 1 and 3 are kept.
    Mock::given(path("/m"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
        .mount(&s)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_string("[{\"id\": 3, \"name\": "))
        .mount(&s)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(5, 6)))
        .mount(&s)
        .await;
    Mock::given(path("/m"))
        .and(query_param("page", "4"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&s)
        .await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(items(1, 4).to_string().as_bytes()).unwrap();
    Mock::given(path("/z"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .insert_header("content-type", "application/json")
                .set_body_bytes(gz.finish().unwrap()),
        )
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"limited": {{"url": "{u}/r"}},
            "messy": {{"url": "{u}/m", "pagination": {{"type": "page"}}}},
            "zipped": {{"url": "{u}/z"}}}}"#
    ));
    let r = run(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ids(&w, "limited"), vec![1, 2, 3]);
    assert_eq!(ids(&w, "zipped"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&w, "messy"), vec![1, 2, 5, 6]);
    let bad = w.ndjson("out/messy_invalid_data.ndjson");
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["row"], 2, "the page number");
    assert!(
        bad[0]["source_file"]
            .as_str()
            .unwrap()
            .ends_with("/m?page=2"),
        "{}",
        bad[0]
    );
    assert_eq!(bad[0]["raw"], "[{\"id\": 3, \"name\": ");
    assert_eq!(bad[0]["errors"][0]["rule"], "malformed");
    assert!(
        r.stdout
            .contains("Successfully validated 4 items from messy")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_server_times_out_and_a_dead_one_is_a_connection_error() {
    let s = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(items(1, 1))
                .set_delay(std::time::Duration::from_secs(3)),
        )
        .mount(&s)
        .await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let w = workdir(&format!(
        r#"{{"slow": {{"url": "{}/slow", "http": {{"timeout_s": 0.3, "max_retries": 1}}}},
            "dead": {{"url": "http://127.0.0.1:{dead_port}/x", "http": {{"max_retries": 0}}}},
            "file": {{"path": "local.ndjson"}}}}"#,
        s.uri()
    ));
    let r = run(&w, &["run"], &[]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("timed out") && r.stderr.contains("after 2 attempts"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("could not connect"), "{}", r.stderr);
    assert!(
        !r.stdout.contains("Invalid credentials"),
        "a connection error is not a credential error"
    );
    assert!(
        r.stdout
            .contains("Successfully validated 1 items from file")
    );
    assert_eq!(s.received_requests().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_credentials_never_reach_the_llm_logs_or_documents() {
    let s = MockServer::start().await;
    Mock::given(path("/people"))
        .and(bearer_token("tok-SECRET-77"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
        .mount(&s)
        .await;
    let reply = json!({"fields": [
        {"target": "id", "expr": "CAST(\"id\" AS BIGINT)", "confidence": 1, "rationale": "id"},
        {"target": "name", "expr": "\"name\"", "confidence": 1, "rationale": "name"}]});
    Mock::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crate::harness::completion(&reply.to_string())),
        )
        .mount(&s)
        .await;
    let w = workdir(&format!(
        r#"{{"api": {{"url": "{}/people", "credentials": {{"token": "${{API_TOKEN}}"}}}}}}"#,
        s.uri()
    ));
    let base = format!("{}/v1", s.uri());
    let r = run(
        &w,
        &["-vv", "run", "--mapper", "llm", "--llm-base-url", &base],
        &[("API_TOKEN", "tok-SECRET-77")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ids(&w, "api"), vec![1, 2]);
    let requests = s.received_requests().await.unwrap();
    let llm: Vec<_> = requests
        .iter()
        .filter(|q| q.url.path().ends_with("/chat/completions"))
        .collect();
    assert_eq!(llm.len(), 1);
    assert!(
        !String::from_utf8_lossy(&llm[0].body).contains("tok-SECRET-77"),
        "prompt"
    );
    assert!(
        !r.stdout.contains("tok-SECRET-77") && !r.stderr.contains("tok-SECRET-77"),
        "logs"
    );
    for f in crate::harness::walk(w.path()) {
        if !f.ends_with("config.json") {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            assert!(!text.contains("tok-SECRET-77"), "{f}");
        }
    }
}
