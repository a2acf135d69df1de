//! The second adversarial round: a query key under any name stays secret, the output of an
//! expression is bounded per row and per batch, every numeric setting has a range checked at
//! load (and no value in range aborts the process), the schema depth limit is one number, and
//! the smaller failures of that round each say what happened.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{ITEMS_SCHEMA, Run, Workdir, config, pinned, walk};

const KEY: &str = "Kq8-custom-param-key";

/// Every text the run left: its console output and every file under `out/`.
fn texts(w: &Workdir, r: &Run) -> Vec<String> {
    let mut t = vec![r.stdout.clone(), r.stderr.clone()];
    for f in walk(&w.join("out")) {
        t.push(std::fs::read_to_string(&f).unwrap_or_default());
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_key_under_a_custom_name_is_masked_everywhere_and_sent_once() {
    let s = MockServer::start().await;
    let u = s.uri();
    // The API echoes the query string in its next link, key included (common).
    Mock::given(path("/ok"))
        .and(wiremock::matchers::query_param_is_missing("n"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    format!("<{u}/ok?myparam={KEY}&n=2>; rel=\"next\"").as_str(),
                )
                .set_body_json(json!([{"id": 1, "name": "a"}])),
        )
        .mount(&s)
        .await;
    Mock::given(path("/ok"))
        .and(wiremock::matchers::query_param("n", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 2, "name": ""}])))
        .mount(&s)
        .await;
    // The same API whose second page fails.
    Mock::given(path("/fails"))
        .and(wiremock::matchers::query_param_is_missing("n"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "link",
                    format!("<{u}/fails?myparam={KEY}&n=2>; rel=\"next\"").as_str(),
                )
                .set_body_json(json!([{"id": 1, "name": "a"}])),
        )
        .mount(&s)
        .await;
    Mock::given(path("/fails"))
        .and(wiremock::matchers::query_param("n", "2"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&s)
        .await;
    let creds = format!(r#"{{"query": "myparam", "key": "{KEY}"}}"#);
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            &format!(
                r#"{{"ok": {{"url": "{u}/ok", "credentials": {creds}, "pagination": {{"type": "link"}}}},
                    "fails": {{"url": "{u}/fails", "credentials": {creds}, "pagination": {{"type": "link"}},
                               "http": {{"max_retries": 0}}}}}}"#
            ),
            ITEMS_SCHEMA,
            r#""output_format": "ndjson","#,
        ),
    );
    let r = crate::harness::run_async(&w, &["-vv", "run"], &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let bad = w.ndjson("out/ok_invalid_data.ndjson");
    let file = bad[0]["source_file"].as_str().unwrap();
    assert!(
        file.contains("myparam=***") && file.contains("n=2"),
        "{file}"
    );
    assert!(r.stderr.contains("HTTP 500"), "{}", r.stderr);
    for t in texts(&w, &r) {
        assert!(!t.contains(KEY), "the key is shown in: {t}");
    }
    // Every request carried the key exactly once, with the configured value.
    for req in s.received_requests().await.unwrap() {
        let keys: Vec<String> = req
            .url
            .query_pairs()
            .filter(|(k, _)| k == "myparam")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(keys, vec![KEY.to_string()], "{}", req.url);
    }
}

#[test]
fn growing_calls_share_one_output_budget_per_row() {
    let w = Workdir::new();
    w.write("s.csv", "id,name\n1,a\n2,bb\n3,c\n");
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv", "mapping": "m.json"}}"#,
            ITEMS_SCHEMA,
            r#""output_format": "ndjson","#,
        ),
    );
    // 150 calls of about 1 MB each: under the per-call limit one by one, 150 MB per row
    // together.
    let calls = vec![r#"repeat("name", 1048000)"#; 150].join(", ");
    pinned(&w, &[("id", "id"), ("name", &format!("concat({calls})"))]);
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bad = w.ndjson("out/s_invalid_data.ndjson");
    assert_eq!(bad.len(), 3, "every row is over the budget");
    let message = bad[0]["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("budget") && message.contains("1048576"),
        "the reason is named: {message}"
    );
    assert!(
        !w.join("out/s_valid_data.ndjson").exists()
            || w.ndjson("out/s_valid_data.ndjson").is_empty()
    );
    // Within the budget, the same expression works: two calls of 4 bytes.
    pinned(
        &w,
        &[
            ("id", "id"),
            ("name", r#"concat(repeat("name", 2), repeat("name", 2))"#),
        ],
    );
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let valid = w.ndjson("out/s_valid_data.ndjson");
    assert_eq!(valid[1]["name"], "bbbbbbbb");
    // On literals, the size is known when the mapping compiles: refused there.
    pinned(&w, &[("id", "id"), ("name", "repeat('x', 1e9)")]);
    for cmd in ["check", "run"] {
        let r = w.run(&[cmd]);
        assert_eq!(r.code, 1, "{cmd}: {}", r.stderr);
        assert!(
            r.stderr.contains("field `name`") && r.stderr.contains("bytes per row"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_batch_is_bounded_as_well_as_a_row() {
    // 300 rows whose repeat is within the row budget (1 MB each) but 300 MB together: the
    // rows past the batch's budget are refused, not allocated.
    let w = Workdir::new();
    let mut csv = String::from("id,name\n");
    for i in 1..=300 {
        csv.push_str(&format!("{i},x\n"));
    }
    w.write("s.csv", csv);
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv", "mapping": "m.json"}}"#,
            ITEMS_SCHEMA,
            r#""output_format": "ndjson", "batch_size": 1000, "anomalies": {"enabled": false},"#,
        ),
    );
    pinned(&w, &[("id", "id"), ("name", r#"repeat("name", 1000000)"#)]);
    let r = w.run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    let s = &summary["sources"]["s"];
    let (valid, invalid) = (s["valid"].as_u64().unwrap(), s["invalid"].as_u64().unwrap());
    assert_eq!(valid + invalid, 300, "{s}");
    assert!((200..=268).contains(&valid), "{s}");
    assert!(invalid >= 32, "{s}");
}

fn run_config(w: &Workdir, cfg: &Value, cmd: &str) -> Run {
    w.write("config.json", cfg.to_string());
    w.run(&[cmd])
}

fn base_config() -> Value {
    json!({
        "output_directory": "out",
        "data_sources": {"s": {"path": "s.ndjson"}},
        "internal_schema": serde_json::from_str::<Value>(ITEMS_SCHEMA).unwrap()
    })
}

#[test]
fn a_huge_batch_size_is_a_config_error_not_an_abort() {
    let w = Workdir::new();
    w.write("s.ndjson", "{\"id\": 1, \"name\": \"a\"}\n");
    w.write("s.csv", "id,name\n1,a\n");
    for (format, size) in [
        ("s.ndjson", json!(200_000_000u64)),
        ("s.csv", json!(2_147_483_648u64)),
        ("s.csv", json!(18_446_744_073_709_551_615u64)),
    ] {
        let mut cfg = base_config();
        cfg["batch_size"] = size.clone();
        cfg["data_sources"]["s"]["path"] = json!(format);
        for cmd in ["check", "run"] {
            let r = run_config(&w, &cfg, cmd);
            assert_eq!(r.code, 2, "{format} {size} {cmd}: {}", r.stderr);
            assert!(
                r.stderr.contains("batch_size") && r.stderr.contains("1048576"),
                "{}",
                r.stderr
            );
        }
    }
}

#[test]
fn durations_ratios_sizes_and_pages_out_of_range_name_their_key() {
    let w = Workdir::new();
    w.write("s.ndjson", "{\"id\": 1, \"name\": \"a\"}\n");
    let http = |extra: Value| {
        let mut cfg = base_config();
        let mut src = json!({"url": "http://127.0.0.1:9/x"});
        for (k, v) in extra.as_object().unwrap() {
            src[k] = v.clone();
        }
        cfg["data_sources"]["s"] = src;
        cfg
    };
    let top = |key: &str, sub: &str, v: Value| {
        let mut cfg = base_config();
        cfg[key] = json!({ sub: v });
        cfg
    };
    for (cfg, key) in [
        (
            http(json!({"http": {"timeout_s": 1e300}})),
            "data_sources.s.http.timeout_s",
        ),
        (
            http(json!({"http": {"timeout_s": -1}})),
            "data_sources.s.http.timeout_s",
        ),
        (
            http(json!({"http": {"timeout_s": 0}})),
            "data_sources.s.http.timeout_s",
        ),
        (
            http(json!({"pagination": {"type": "page", "size_param": "n", "size": 0}})),
            "data_sources.s.pagination.size",
        ),
        (
            top("feedback", "max_invalid_ratio", json!(2)),
            "feedback.max_invalid_ratio",
        ),
        (
            top("engine", "partition_mb", json!(-1)),
            "engine.partition_mb",
        ),
        (top("llm", "timeout_s", json!(-1)), "llm.timeout_s"),
    ] {
        let r = run_config(&w, &cfg, "check");
        assert_eq!(r.code, 2, "{key}: {}", r.stderr);
        assert!(r.stderr.contains(key), "{key}: {}", r.stderr);
        assert!(r.stderr.contains("out of range"), "{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[test]
fn a_non_ascii_delimiter_is_a_config_error() {
    let w = Workdir::new();
    w.write("s.csv", "id§name\n1§a\n");
    let mut cfg = base_config();
    cfg["data_sources"]["s"] = json!({"path": "s.csv", "csv": {"delimiter": "§"}});
    let r = run_config(&w, &cfg, "run");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("data_sources.s.csv.delimiter"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_plain_http_store_path_says_that_allow_http_is_needed() {
    let w = Workdir::new();
    let mut cfg = base_config();
    cfg["data_sources"]["s"] = json!({"path": "http://127.0.0.1:9/data/s.ndjson"});
    let r = run_config(&w, &cfg, "run");
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("allow_http") && r.stderr.contains("http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("builder error"), "{}", r.stderr);
}

/// A schema with `depth` nested object fields `a`, the innermost a string, and a record with
/// the same nesting.
fn nested(depth: usize) -> (Value, String) {
    let mut schema = json!({"type": "string"});
    let mut record = json!("leaf");
    for _ in 0..depth {
        schema = json!({"type": "object", "properties": {"a": schema}});
        record = json!({ "a": record });
    }
    (schema, record.to_string())
}

#[test]
fn the_schema_depth_limit_is_checked_at_load_and_the_validator_takes_it() {
    let w = Workdir::new();
    // 100 nested objects: past serde_json's 128 levels of JSON, within conform's limit.
    let (schema, record) = nested(100);
    w.write("s.ndjson", format!("{record}\n"));
    let mut cfg = base_config();
    cfg["internal_schema"] = schema;
    let r = run_config(&w, &cfg, "run");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    assert_eq!(summary["sources"]["s"]["valid"], 1, "{summary}");
    // Past the limit: refused when the config is loaded, with the number.
    let (schema, _) = nested(140);
    cfg["internal_schema"] = schema;
    for cmd in ["check", "run"] {
        let r = run_config(&w, &cfg, cmd);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("256"), "{}", r.stderr);
    }
}

#[test]
fn a_directory_with_the_outputs_name_leaves_no_temporary_file() {
    let w = Workdir::new();
    w.write("s.ndjson", "{\"id\": 1, \"name\": \"a\"}\n");
    std::fs::create_dir_all(w.join("out/s_valid_data.json")).unwrap();
    let r = run_config(&w, &base_config(), "run");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("s_valid_data.json"), "{}", r.stderr);
    assert!(w.temp_files().is_empty(), "{:?}", w.temp_files());
}

#[test]
fn a_truncated_gzip_counts_the_rows_read_before_the_cut() {
    let w = Workdir::new();
    let mut csv = String::from("id,name\n");
    for i in 1..=50 {
        csv.push_str(&format!("{i},name-{i}\n"));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(csv.as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    // The trailer and the end of the deflate stream are cut.
    w.write("s.csv.gz", &bytes[..bytes.len() - 12]);
    let mut cfg = base_config();
    cfg["data_sources"]["s"] = json!({"path": "s.csv.gz"});
    let r = run_config(&w, &cfg, "run");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let s = &w.json("out/run_summary.json")["sources"]["s"];
    assert!(s["rows_read"].as_u64().unwrap() > 0, "{s}");
    assert!(s["error"].as_str().unwrap().contains("s.csv.gz"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_request_in_flight_logs_no_retry() {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&s)
        .await;
    let w = Workdir::new();
    let mut cfg = base_config();
    cfg["data_sources"]["s"] = json!({"url": format!("{}/slow", s.uri())});
    w.write("config.json", cfg.to_string());
    let child = Command::new(env!("CARGO_BIN_EXE_conform"))
        .args(["run"])
        .current_dir(w.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Command::new("kill")
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
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `conform ARGS` in `dir` as a child process, killed after `limit`: an abort or a hang
/// is observed instead of ending the test process. The exit code (`None`: killed by a signal
/// or the time limit) and stderr.
fn run_bounded(dir: &std::path::Path, args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conform"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return (status.code(), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, format!("still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A setting's path as an error names it in the test config (`data_sources.h.pagination.size`).
fn shown_path(setting: &str) -> String {
    setting
        .split('.')
        .map(|p| match p {
            "*" => "h",
            other => other.split("[type=").next().unwrap_or(other),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Sets `value` at a setting's path (`a.b`, `data_sources.*.http.x`,
/// `data_sources.*.pagination[type=page].size`) in a config with an HTTP source `h`.
fn set_path(cfg: &mut Value, setting: &str, value: Value) {
    let mut at = cfg;
    let parts: Vec<&str> = setting.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, variant) = match part.split_once("[type=") {
            Some((k, v)) => (k, Some(v.trim_end_matches(']'))),
            None => (*part, None),
        };
        let key = if key == "*" {
            if parts[0] == "storage" {
                "s3://bucket"
            } else {
                "h"
            }
        } else {
            key
        };
        if i + 1 == parts.len() {
            at[key] = value;
            return;
        }
        if !at[key].is_object() {
            at[key] = json!({});
        }
        at = &mut at[key];
        if let Some(v) = variant {
            at["type"] = json!(v);
            if v == "cursor" {
                at["cursor_path"] = json!("next");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_value_of_any_numeric_setting_aborts_or_panics() {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 1, "name": "a"}])))
        .mount(&s)
        .await;
    let uri = s.uri();
    let settings = conform::config::reference::numeric_settings();
    assert!(settings.len() > 30);
    let w = Workdir::new();
    w.write("f.csv", "id,name\n1,a\n2,\n");
    let dir = w.path().to_path_buf();
    let base = json!({
        "output_directory": "out",
        "output_format": "ndjson",
        "data_sources": {
            "f": {"path": "f.csv"},
            // Pages end after five at most, whatever pagination a setting turns on.
            "h": {"url": format!("{uri}/items"), "http": {"max_pages": 5}}
        },
        "internal_schema": serde_json::from_str::<Value>(ITEMS_SCHEMA).unwrap()
    });
    let (failures, runs) = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        let mut runs = 0usize;
        for setting in &settings {
            if setting.path.starts_with("data_sources.*.postgres") {
                // A PostgreSQL source needs a server; its ranges are checked at load all the
                // same (below: out-of-range values).
                continue;
            }
            let (min, max) = (setting.range.min.unwrap(), setting.range.max.unwrap());
            let outside = [
                json!(min - 1.0),
                json!(max * 10.0 + 1.0),
                json!(-1),
                json!(1e300),
                json!(18_446_744_073_709_551_615u64),
            ];
            let inside = if setting.range.integer {
                vec![json!(min as i64), json!(max as u64)]
            } else {
                vec![json!(min), json!(max)]
            };
            for (value, in_range) in outside
                .iter()
                .map(|v| (v.clone(), false))
                .chain(inside.into_iter().map(|v| (v, true)))
            {
                let mut cfg = base.clone();
                set_path(&mut cfg, &setting.path, value.clone());
                std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
                let (code, stderr) = run_bounded(&dir, &["run"], Duration::from_secs(120));
                runs += 1;
                let label = format!("{} = {value}", setting.path);
                match code {
                    None => failures.push(format!("{label}: no exit status ({stderr})")),
                    Some(c) if !(0..=2).contains(&c) => {
                        failures.push(format!("{label}: exit {c}: {stderr}"))
                    }
                    Some(_) if stderr.contains("panicked") => {
                        failures.push(format!("{label}: panic: {stderr}"))
                    }
                    Some(c) if !in_range && value.as_f64().is_some_and(|v| v < min || v > max) => {
                        if c != 2 || !stderr.contains(&shown_path(&setting.path)) {
                            failures.push(format!("{label}: out of range, exit {c}: {stderr}"));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        (failures, runs)
    })
    .await
    .unwrap();
    assert!(runs > 200, "{runs} runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_s3_source_without_credentials_says_so() {
    let w = Workdir::new();
    let mut cfg = base_config();
    cfg["data_sources"]["s"] = json!({"path": "s3://bucket/s.ndjson"});
    cfg["storage"] = json!({"s3://bucket": {"endpoint": "http://127.0.0.1:9", "allow_http": true,
        "region": "us-east-1"}});
    w.write("config.json", cfg.to_string());
    // The credential chain's last step, the instance metadata service, is a closed local port
    // here, so that it fails at once.
    let r = w.run_env(&["run"], &[("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("no credentials were found"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("api/token"), "{}", r.stderr);
}
