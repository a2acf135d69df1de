//! Hostile and careless input, kept as a permanent suite: credentials stay with their origin,
//! source names stay file names, no input or mapping aborts the process, every loop ends, and
//! every failure says what happened. HTTP servers listen on 127.0.0.1 and 127.0.0.2 (both
//! loopback), so "another host" is real.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{ITEMS_SCHEMA, Run, Workdir, config, ids, items, pinned, walk};

const SCHEMA: &str = ITEMS_SCHEMA;

fn workdir(sources: &str) -> Workdir {
    let w = Workdir::new();
    w.write(
        "config.json",
        config(sources, SCHEMA, r#""output_format": "ndjson","#),
    );
    w
}

async fn run(w: &Workdir, args: &[&str]) -> Run {
    crate::harness::run_async(w, args, &[]).await
}

/// A server on 127.0.0.1 and one on 127.0.0.2: two hosts, two origins.
async fn two_hosts() -> (MockServer, MockServer) {
    let a = MockServer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback");
    let b = MockServer::builder().listener(listener).start().await;
    (a, b)
}

/// Every credential kind, with the secret it carries.
const KINDS: [(&str, &str); 4] = [
    (
        r#"{"username": "ann", "password": "SECRET-PW"}"#,
        "SECRET-PW",
    ),
    (r#"{"token": "SECRET-TOK"}"#, "SECRET-TOK"),
    (
        r#"{"header": "X-Api-Key", "key": "SECRET-KEY"}"#,
        "SECRET-KEY",
    ),
    (r#"{"query": "api_key", "key": "SECRET-Q"}"#, "SECRET-Q"),
];

/// No request that reached `server` carried a credential of any kind.
async fn no_credentials_reached(server: &MockServer, secret: &str) {
    for r in server.received_requests().await.unwrap_or_default() {
        assert!(r.headers.get("authorization").is_none(), "{r:?}");
        assert!(r.headers.get("x-api-key").is_none(), "{r:?}");
        assert!(!r.url.as_str().contains(secret), "{}", r.url);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_follow_a_next_link_to_another_origin() {
    for (creds, secret) in KINDS {
        let (a, b) = two_hosts().await;
        Mock::given(path("/items"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(items(1, 2))
                    .insert_header("link", format!("<{}/more>; rel=\"next\"", b.uri())),
            )
            .mount(&a)
            .await;
        Mock::given(path("/more"))
            .respond_with(ResponseTemplate::new(200).set_body_json(items(3, 4)))
            .mount(&b)
            .await;
        let src = |extra: &str| {
            format!(
                r#"{{"s": {{"url": "{}/items", "pagination": {{"type": "link"}}, "credentials": {creds} {extra}}}}}"#,
                a.uri()
            )
        };
        // Refused by default, naming both origins; the other host is never asked.
        let w = workdir(&src(""));
        let r = run(&w, &["run"]).await;
        assert_eq!(r.code, 1, "{creds}: {}", r.stderr);
        let host = |s: &MockServer| s.uri().replace("http://", "");
        assert!(
            r.stderr.contains(&host(&a)) && r.stderr.contains(&host(&b)),
            "{creds}: both origins named: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("allow_cross_origin_pages"),
            "{}",
            r.stderr
        );
        assert!(
            b.received_requests().await.unwrap_or_default().is_empty(),
            "{creds}: the other origin was asked"
        );
        // Allowed: followed, without any credential.
        let w = workdir(&src(r#", "http": {"allow_cross_origin_pages": true}"#));
        let r = run(&w, &["run"]).await;
        assert_eq!(r.code, 0, "{creds}: {}", r.stderr);
        assert_eq!(ids(&w, "s"), vec![1, 2, 3, 4]);
        assert!(!b.received_requests().await.unwrap().is_empty());
        no_credentials_reached(&b, secret).await;
        for text in [&r.stdout, &r.stderr] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credentialed_source_refuses_redirects_to_another_origin() {
    for (creds, secret) in KINDS {
        let (a, b) = two_hosts().await;
        Mock::given(path("/items"))
            .respond_with(
                ResponseTemplate::new(302).insert_header("location", format!("{}/items", b.uri())),
            )
            .mount(&a)
            .await;
        // A redirect within the origin is fine.
        Mock::given(path("/old"))
            .respond_with(ResponseTemplate::new(301).insert_header("location", "/same"))
            .mount(&a)
            .await;
        Mock::given(path("/same"))
            .respond_with(ResponseTemplate::new(200).set_body_json(items(5, 6)))
            .mount(&a)
            .await;
        Mock::given(path("/items"))
            .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
            .mount(&b)
            .await;
        let w = workdir(&format!(
            r#"{{"s": {{"url": "{a}/items", "credentials": {creds}}},
                 "same": {{"url": "{a}/old", "credentials": {creds}}}}}"#,
            a = a.uri()
        ));
        let r = run(&w, &["run"]).await;
        assert_eq!(r.code, 1, "{creds}: {}", r.stderr);
        assert!(r.stderr.contains("refused a redirect"), "{}", r.stderr);
        assert!(b.received_requests().await.unwrap_or_default().is_empty());
        assert_eq!(ids(&w, "same"), vec![5, 6], "{creds}: same-origin redirect");
        assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
    }
    // Without credentials there is nothing to leak: the redirect is followed.
    let (a, b) = two_hosts().await;
    Mock::given(path("/items"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", format!("{}/items", b.uri())),
        )
        .mount(&a)
        .await;
    Mock::given(path("/items"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
        .mount(&b)
        .await;
    let w = workdir(&format!(r#"{{"s": {{"url": "{}/items"}}}}"#, a.uri()));
    let r = run(&w, &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ids(&w, "s"), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_string_secrets_are_sent_but_never_shown() {
    let s = MockServer::start().await;
    Mock::given(path("/items"))
        .and(query_param("token", "QUERY-SECRET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"id": 1, "name": "a"}, {"id": 2, "name": ""}])),
        )
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .with_priority(10)
        .mount(&s)
        .await;
    let u = s.uri();
    let w = workdir(&format!(
        r#"{{"s": {{"url": "{u}/items?api_key=URL-SECRET&x=1", "credentials": {{"query": "token", "key": "QUERY-SECRET"}}}},
             "gone": {{"url": "{u}/missing?access_token=URL-SECRET-2"}}}}"#
    ));
    let r = crate::harness::run_async(&w, &["-vv", "run"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        ids(&w, "s"),
        vec![1],
        "the key was sent as a query parameter"
    );
    let bad = w.ndjson("out/s_invalid_data.ndjson");
    let file = bad[0]["source_file"].as_str().unwrap();
    assert!(
        file.contains("api_key=***") && file.contains("x=1"),
        "{file}"
    );
    assert!(r.stderr.contains("access_token=***"), "{}", r.stderr);
    let mut texts = vec![r.stdout.clone(), r.stderr.clone()];
    for f in walk(&w.join("out")) {
        texts.push(std::fs::read_to_string(&f).unwrap_or_default());
    }
    for t in &texts {
        for secret in ["URL-SECRET", "QUERY-SECRET"] {
            assert!(!t.contains(secret), "{secret} shown in: {t}");
        }
    }
}

#[test]
fn source_names_must_be_safe_file_name_components() {
    let bad = [
        "../escape",
        "/abs/x",
        "a/b",
        "",
        ".hidden",
        "a\\u0000b",
        "a\\nforged line",
        "a\\u001b[31mred",
    ];
    for name in bad {
        let w = Workdir::new();
        w.write("x.csv", "id,name\n1,a\n");
        w.write(
            "config.json",
            config(&format!(r#"{{"{name}": {{"path": "x.csv"}}}}"#), SCHEMA, ""),
        );
        let r = w.run(&["run"]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("invalid source name"),
            "{name}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains('\u{1b}'), "escape printed raw");
        assert!(!r.stdout.contains("forged"), "{}", r.stdout);
        assert!(!w.join("out").exists(), "{name}: nothing written");
        assert!(
            !w.path()
                .parent()
                .unwrap()
                .join("escape_valid_data.json")
                .exists()
        );
    }
    let w = Workdir::new();
    w.write("x.csv", "id,name\n1,a\n");
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "x.csv"}, "s": {"path": "y.csv"}}"#,
            SCHEMA,
            "",
        ),
    );
    let r = w.run(&["check"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("data_sources.s") && r.stderr.contains("twice"),
        "{}",
        r.stderr
    );
    w.write("config.json", config("{}", SCHEMA, ""));
    let r = w.run(&["check"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no sources"), "{}", r.stderr);
    // The rule admits ordinary names.
    w.write(
        "config.json",
        config(r#"{"Orders-2024.v2_eu": {"path": "x.csv"}}"#, SCHEMA, ""),
    );
    assert_eq!(w.run(&["run"]).code, 0);
    assert!(w.join("out/Orders-2024.v2_eu_valid_data.json").exists());
}

/// A record nested `depth` levels deep: `{"a":{"a":…}}`.
fn deep_object(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_nesting_is_a_malformed_row_not_a_crash() {
    let deep_obj = format!(r#"{{"id": 2, "name": {}}}"#, deep_object(30_000));
    let deep_arr = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let w = Workdir::new();
    w.write(
        "d.ndjson",
        format!("{{\"id\": 1, \"name\": \"a\"}}\n{deep_obj}\n{deep_arr}\n{{\"id\": 4, \"name\": \"d\"}}\n"),
    );
    w.write(
        "d.json",
        format!("[{{\"id\": 1, \"name\": \"a\"}}, {deep_obj}, {deep_arr}, {{\"id\": 4, \"name\": \"d\"}}]"),
    );
    let s = MockServer::start().await;
    Mock::given(path("/deep"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!("[{deep_obj}]")))
        .mount(&s)
        .await;
    w.write(
        "config.json",
        config(
            &format!(
                r#"{{"nd": {{"path": "d.ndjson"}}, "arr": {{"path": "d.json"}}, "web": {{"url": "{}/deep"}}}}"#,
                s.uri()
            ),
            SCHEMA,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = run(&w, &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for src in ["nd", "arr"] {
        assert_eq!(ids(&w, src), vec![1, 4], "{src}");
        let bad = w.ndjson(&format!("out/{src}_invalid_data.ndjson"));
        assert_eq!(bad.len(), 2, "{src}");
        for b in &bad {
            let e = &b["errors"][0];
            assert_eq!(e["rule"], "malformed", "{b}");
            assert!(
                e["message"].as_str().unwrap().contains("deeper than 512"),
                "{e}"
            );
        }
    }
    let web = w.ndjson("out/web_invalid_data.ndjson");
    assert_eq!(web.len(), 1, "the page is kept as one malformed row");
    let summary = w.json("out/run_summary.json");
    assert_eq!(summary["sources"]["nd"]["rows_read"], 4);

    // A schema nested 5,000 levels deep is a config error.
    let mut schema = r#"{"type": "string"}"#.to_string();
    for _ in 0..5_000 {
        schema = format!(r#"{{"type": "object", "properties": {{"x": {schema}}}}}"#);
    }
    w.write(
        "config.json",
        config(r#"{"nd": {"path": "d.ndjson"}}"#, &schema, ""),
    );
    let r = w.run(&["check"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("levels"), "{}", r.stderr);
}

#[test]
fn long_and_deep_expressions_are_refused_without_being_echoed() {
    let w = Workdir::new();
    w.write("s.csv", "id,name\n1,a\n");
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv", "mapping": "m.json"}}"#,
            SCHEMA,
            "",
        ),
    );
    let terms = vec!["1"; 10_000].join(" + ");
    let chain = vec!["\"name\""; 25_000].join(" || ");
    let parens = format!("{}\"name\"{}", "(".repeat(5_000), ")".repeat(5_000));
    for (expr, says) in [
        (terms.as_str(), "bytes long"),
        (&vec!["1"; 3_000].join("+"), "nests"),
        (chain.as_str(), "bytes long"),
        (parens.as_str(), "nests"),
        (
            &format!("{}\"name\"{}", "(".repeat(100), ")".repeat(100)),
            "nests",
        ),
    ] {
        pinned(&w, &[("id", expr), ("name", "\"name\"")]);
        for cmd in ["check", "run"] {
            let r = w.run(&[cmd]);
            assert_eq!(r.code, 1, "{cmd}: {}", r.stderr);
            assert!(r.stderr.contains("field `id`"), "{}", r.stderr);
            assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
            assert!(
                r.stderr.len() < 4_000,
                "echoed in full: {} bytes",
                r.stderr.len()
            );
            assert!(r.stdout.len() < 4_000);
        }
        let summary = w.read("out/run_summary.json");
        assert!(summary.len() < 8_000, "summary holds the expression");
    }
}

#[test]
fn failing_functions_fail_their_rows_not_the_source() {
    let w = Workdir::new();
    // Row 1 holds ordinary values, row 2 hostile ones for every function.
    w.write(
        "s.csv",
        "y,m,d,c,s,n,pat,v,k\n\
         2024,1,31,65,a-b,1,b,-5,3\n\
         2024,13,1,99999999999,a-b,0,(,-9223372036854775808,300000000\n",
    );
    let schema = r#"{"type": "object", "properties": {
        "when": {"type": "string", "format": "date"}, "ch": {"type": "string"},
        "part": {"type": "string"}, "rx": {"type": "string"}, "a": {"type": "integer"},
        "rep": {"type": "string"}, "pad": {"type": "string"}, "rp": {"type": "string"}}}"#;
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv", "mapping": "m.json"}}"#,
            schema,
            r#""output_format": "ndjson","#,
        ),
    );
    pinned(
        &w,
        &[
            (
                "when",
                "make_date(CAST(y AS INT), CAST(m AS INT), CAST(d AS INT))",
            ),
            ("ch", "chr(CAST(c AS BIGINT))"),
            ("part", "split_part(s, '-', CAST(n AS INT))"),
            ("rx", "regexp_replace(s, pat, 'x')"),
            ("a", "abs(CAST(v AS BIGINT))"),
            ("rep", "repeat(s, CAST(k AS BIGINT))"),
            ("pad", "lpad(s, CAST(k AS BIGINT))"),
            ("rp", "rpad(s, CAST(k AS BIGINT) * 1000, 'xy')"),
        ],
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let valid = w.ndjson("out/s_valid_data.ndjson");
    assert_eq!(valid.len(), 1, "{valid:?}");
    assert_eq!(valid[0]["when"], "2024-01-31");
    assert_eq!(valid[0]["ch"], "A");
    assert_eq!(valid[0]["rep"], "a-ba-ba-b");
    let bad = w.ndjson("out/s_invalid_data.ndjson");
    assert_eq!(bad.len(), 1);
    let fields: Vec<&str> = bad[0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["when", "ch", "part", "rx", "a", "rep", "pad", "rp"] {
        assert!(fields.contains(&f), "{f} not reported: {}", bad[0]);
    }
    // A negative-scale DECIMAL is refused when the mapping compiles.
    pinned(&w, &[("a", "CAST(v AS DECIMAL(10, -2))")]);
    let r = w.run(&["check"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("field `a`") && r.stderr.contains("negative scale"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pagination_loop_ends() {
    let s = MockServer::start().await;
    // A cursor that repeats for ever.
    Mock::given(path("/cursor"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"items": items(1, 2), "next": "c1"})),
        )
        .mount(&s)
        .await;
    // A link to the page itself.
    Mock::given(path("/self"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(items(3, 4))
                .insert_header("link", format!("<{}/self>; rel=\"next\"", s.uri())),
        )
        .mount(&s)
        .await;
    // A page API that ignores the page parameter: the same full page every time.
    Mock::given(path("/same"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(5, 6)))
        .mount(&s)
        .await;
    let u = s.uri();
    let w = workdir(&format!(
        r#"{{"cursor": {{"url": "{u}/cursor", "records": "items", "pagination": {{"type": "cursor", "cursor_path": "next"}}}},
             "self": {{"url": "{u}/self", "pagination": {{"type": "link"}}}},
             "same": {{"url": "{u}/same", "pagination": {{"type": "page", "size": 2}}}}}}"#
    ));
    let r = run(&w, &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ids(&w, "cursor"),
        vec![1, 2, 1, 2],
        "two pages, then the repeat ends it"
    );
    assert_eq!(ids(&w, "self"), vec![3, 4]);
    assert_eq!(ids(&w, "same"), vec![5, 6]);
    assert!(
        r.stderr.contains("repeats"),
        "a warning says why: {}",
        r.stderr
    );
    let requests = s.received_requests().await.unwrap().len();
    assert!(requests < 40, "{requests} requests");

    // An API that always answers a new full page stops at the safety limit, with an error.
    let s = MockServer::start().await;
    for page in 1..=100u64 {
        Mock::given(path("/endless"))
            .and(query_param("page", page.to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_json(items(page * 2 - 1, page * 2)))
            .mount(&s)
            .await;
    }
    let w = workdir(&format!(
        r#"{{"endless": {{"url": "{}/endless", "pagination": {{"type": "page", "size": 2}}, "http": {{"max_pages": 20}}}}}}"#,
        s.uri()
    ));
    let r = run(&w, &["run"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("stopped after 20 pages"), "{}", r.stderr);
    let requests = s.received_requests().await.unwrap().len();
    assert!(requests <= 25, "{requests} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_slow_request_exits_130_without_a_panic() {
    let s = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(items(1, 2))
                .set_delay(Duration::from_secs(20)),
        )
        .mount(&s)
        .await;
    // The first request fails fast so that the source sleeps in a retry when the signal comes.
    let w = workdir(&format!(
        r#"{{"slow": {{"url": "{}/slow", "http": {{"timeout_s": 0.3, "max_retries": 20}}}}}}"#,
        s.uri()
    ));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_conform"))
        .args(["run"])
        .current_dir(w.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(w.temp_files().is_empty());
}

#[test]
fn a_full_disk_fails_the_source_with_the_system_error_and_the_file() {
    let w = Workdir::new();
    let out = w.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&out)
        .output();
    if !matches!(&mounted, Ok(o) if o.status.success()) {
        eprintln!("skipped: a small tmpfs cannot be mounted here (the test needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(out.clone());
    let mut csv = String::from("id,name\n");
    for i in 1..=20_000 {
        csv.push_str(&format!("{i},name number {i} with some padding text\n"));
    }
    w.write("big.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"big": {"path": "big.csv"}}"#,
            SCHEMA,
            r#""mappings_dir": "maps", "anomalies": {"enabled": false},"#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(r.stderr.contains("big_valid_data.json"), "{}", r.stderr);
    assert!(!r.stderr.contains("interrupted"), "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let s = &summary["sources"]["big"];
    let (read, valid, invalid) = (
        s["rows_read"].as_u64().unwrap(),
        s["valid"].as_u64().unwrap(),
        s["invalid"].as_u64().unwrap(),
    );
    assert!(read >= valid + invalid, "{s}");
    assert_eq!(s["status"], "failed");
    assert!(w.temp_files().is_empty(), "{:?}", w.temp_files());
}

#[test]
fn temporary_files_of_killed_runs_are_removed_at_start() {
    let w = Workdir::new();
    w.write("s.csv", "id,name\n1,a\n");
    w.write(
        "config.json",
        config(r#"{"s": {"path": "s.csv"}}"#, SCHEMA, ""),
    );
    // 4194400 is above the kernel's largest pid: no such process is alive.
    let dead = [
        "out/.s_valid_data.json.tmp-4194400-0",
        "out/mappings/.s.mapping.json.tmp-4194400-7",
    ];
    let live = format!("out/.s_valid_data.json.tmp-{}-0", std::process::id());
    for f in dead
        .iter()
        .copied()
        .chain([live.as_str(), "out/.keep.tmp-x"])
    {
        w.write(f, "partial");
    }
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in dead {
        assert!(!w.join(f).exists(), "{f} is still there");
    }
    assert!(w.join(&live).exists(), "a live process's file is kept");
    assert!(w.join("out/.keep.tmp-x").exists(), "other names are kept");
}

#[test]
fn a_corrupt_parquet_file_reports_consistent_counts() {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let w = Workdir::new();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(1000))
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let file = std::fs::File::create(w.join("c.parquet")).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    for g in 0..4i64 {
        let ids: Vec<i64> = (g * 1000 + 1..=g * 1000 + 1000).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name-{i}")).collect();
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(Int64Array::from(ids)),
                std::sync::Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.flush().unwrap();
    }
    writer.close().unwrap();
    // Scramble the middle of the data (the third row group), keep the footer.
    let mut bytes = std::fs::read(w.join("c.parquet")).unwrap();
    let at = bytes.len() * 5 / 8;
    for b in &mut bytes[at..at + 2_000] {
        *b = 0xA5;
    }
    std::fs::write(w.join("c.parquet"), bytes).unwrap();
    w.write(
        "config.json",
        config(
            r#"{"c": {"path": "c.parquet"}}"#,
            SCHEMA,
            r#""batch_size": 500,"#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let s = &summary["sources"]["c"];
    let (read, valid, invalid) = (
        s["rows_read"].as_u64().unwrap(),
        s["valid"].as_u64().unwrap(),
        s["invalid"].as_u64().unwrap(),
    );
    assert!(read >= valid + invalid && read < 4_000, "{s}");
    // The error names the file.
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("c.parquet"), "{error}");
}

#[test]
fn a_wide_input_maps_and_runs() {
    let w = Workdir::new();
    let cols = 20_000;
    let mut csv = (0..cols)
        .map(|i| format!("col_{i}"))
        .collect::<Vec<_>>()
        .join(",");
    csv.push('\n');
    for r in 0..50 {
        let row: Vec<String> = (0..cols).map(|i| format!("{}", r * cols + i)).collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    w.write("wide.csv", csv);
    let schema = r#"{"type": "object", "properties": {"col_0": {"type": "integer"}, "col_19999": {"type": "integer"}}}"#;
    w.write(
        "config.json",
        config(
            r#"{"wide": {"path": "wide.csv"}}"#,
            schema,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = w.ndjson("out/wide_valid_data.ndjson");
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[1]["col_19999"], 39_999);
}

#[test]
fn an_oversized_record_is_malformed_and_its_neighbours_survive() {
    let w = Workdir::new();
    let big = "x".repeat(1 << 20);
    w.write("s.csv", format!("id,name\n1,a\n2,\"{big}\"\n3,c\n"));
    w.write(
        "s.ndjson",
        format!("{{\"id\": 1, \"name\": \"a\"}}\n{{\"id\": 2, \"name\": \"{big}\"}}\n{{\"id\": 3, \"name\": \"c\"}}\n"),
    );
    w.write(
        "s.json",
        format!("[{{\"id\": 1, \"name\": \"a\"}}, {{\"id\": 2, \"name\": \"{big}\"}}, {{\"id\": 3, \"name\": \"c\"}}]"),
    );
    w.write(
        "config.json",
        config(
            r#"{"csv": {"path": "s.csv"}, "nd": {"path": "s.ndjson"}, "arr": {"path": "s.json"}}"#,
            SCHEMA,
            r#""output_format": "ndjson", "limits": {"max_record_bytes": 65536},"#,
        ),
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for src in ["csv", "nd", "arr"] {
        assert_eq!(ids(&w, src), vec![1, 3], "{src}");
        let bad = w.ndjson(&format!("out/{src}_invalid_data.ndjson"));
        assert_eq!(bad.len(), 1, "{src}");
        assert_eq!(bad[0]["row"], 2, "{src}");
        let e = &bad[0]["errors"][0];
        assert_eq!(e["rule"], "malformed");
        assert!(
            e["message"].as_str().unwrap().contains("65536-byte limit"),
            "{e}"
        );
        assert!(w.read(&format!("out/{src}_invalid_data.ndjson")).len() < 10_000);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_page_fails_its_source_only() {
    let s = MockServer::start().await;
    let big: Vec<Value> = (1..=5_000)
        .map(|i| json!({"id": i, "name": "x".repeat(50)}))
        .collect();
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(big)))
        .mount(&s)
        .await;
    Mock::given(path("/small"))
        .respond_with(ResponseTemplate::new(200).set_body_json(items(1, 2)))
        .mount(&s)
        .await;
    let u = s.uri();
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            &format!(r#"{{"big": {{"url": "{u}/big"}}, "small": {{"url": "{u}/small"}}}}"#),
            SCHEMA,
            r#""output_format": "ndjson", "limits": {"max_page_bytes": 65536},"#,
        ),
    );
    let r = run(&w, &["run"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("larger than 65536 bytes") && r.stderr.contains("max_page_bytes"),
        "{}",
        r.stderr
    );
    assert_eq!(ids(&w, "small"), vec![1, 2]);
}
