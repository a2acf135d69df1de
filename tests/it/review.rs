//! `conform review`: the served page's guards and decisions over raw HTTP, the static `--html`
//! file, and the page driven in Debian's headless Chromium (through playwright-core, both
//! installed by `scripts/install-test-deps browser`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{self, Workdir};
use serde_json::{Value, json};

const SCHEMA: &str = r#"{
    "type": "object",
    "required": ["order_id"],
    "properties": {
        "order_id": {"type": "integer", "minimum": 1},
        "email": {"type": ["string", "null"], "format": "email", "description": "The customer's e-mail address"},
        "status": {"type": ["string", "null"], "enum": ["Active", "Inactive", "Pending"]},
        "amount": {"type": ["number", "null"], "minimum": 0, "description": "Order total"},
        "shipped_on": {"type": ["string", "null"], "format": "date"}
    }
}"#;

/// Orders whose `state` spells one value the enum lacks (`on hold`), whose `amt` has a
/// negative refund, and whose date column has a name the matcher is unsure of.
fn orders() -> Workdir {
    let w = Workdir::new();
    w.write(
        "orders.csv",
        "order_id,mail,state,amt,dispatch\n\
         1,ada@example.com,active,10.50,2024-01-05\n\
         2,alan@example.com,inactive,-3.00,2024-01-06\n\
         3,grace@example.com,on hold,7.25,2024-01-07\n\
         4,edsger@example.com,active,12.00,2024-01-08\n\
         5,barbara@example.com,on hold,4.75,2024-01-09\n",
    );
    w.write(
        "config.json",
        harness::config(r#"{"orders": {"path": "orders.csv"}}"#, SCHEMA, ""),
    );
    w
}

/// `conform review` serving in the background, stopped with SIGINT when dropped.
struct Review {
    child: Child,
    port: u16,
    token: String,
}

impl Review {
    fn start(w: &Workdir, extra: &[&str]) -> Review {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conform"))
            .args(["review", "--config", "config.json", "--reviewer", "ana"])
            .args(extra)
            .current_dir(w.path())
            .env_remove("RUST_LOG")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start conform review");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("Review page: ")
            .unwrap_or_else(|| panic!("no URL: {line:?}"))
            .to_string();
        let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
        let (port, query) = rest.split_once("/?token=").unwrap();
        Review {
            port: port.parse().unwrap(),
            token: query.to_string(),
            child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/?token={}", self.port, self.token)
    }

    /// One HTTP/1.1 request; `headers` may replace `Host`.
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.port));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(head.as_bytes()).unwrap();
        // A refused body may be cut short by the server: what was sent is enough.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.http(
            "POST",
            &format!("{path}?token={}", self.token),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Stops the server as Ctrl-C would; its exit code.
    fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "review did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Review {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mapping_files(w: &Workdir) -> Vec<String> {
    let dir = w.join("out/mappings");
    if !dir.exists() {
        return vec![];
    }
    harness::walk(&dir)
}

/// The `data-base` version of the page's section.
fn base_of(html: &str) -> String {
    let at = html.find("data-base=\"").expect("a section with its base") + 11;
    html[at..].split('"').next().unwrap().to_string()
}

#[test]
fn the_served_page_refuses_strangers_and_writes_only_on_pin() {
    let w = orders();
    let review = Review::start(&w, &["--min-confidence", "0.9"]);
    let page = format!("/?token={}", review.token);

    // Guards: the token, the Host and the Origin.
    assert_eq!(review.http("GET", "/", &[], b"").0, 403);
    assert_eq!(review.http("GET", "/?token=wrong", &[], b"").0, 403);
    let evil_host = review.http("GET", &page, &[("Host", "attacker.example:80")], b"");
    assert_eq!(evil_host.0, 403, "{}", evil_host.1);
    let evil_origin = review.http("GET", &page, &[("Origin", "http://attacker.example")], b"");
    assert_eq!(evil_origin.0, 403);

    let (status, html) = review.http("GET", &page, &[], b"");
    assert_eq!(status, 200);
    for field in ["order_id", "email", "status", "amount", "shipped_on"] {
        assert!(html.contains(&format!("data-field=\"{field}\"")), "{field}");
    }
    // Fields needing attention come before fine ones.
    let first_fine = html.find("needs-fine").expect("a fine field");
    let unplaced = html
        .find("needs-unplaced-values")
        .expect("status's unplaced value");
    assert!(unplaced < first_fine);
    assert!(
        html.contains("on hold"),
        "the value table lists the unplaced value"
    );
    assert_eq!(base_of(&html), "none", "no document is stored yet");

    // The compiler's verdict on an expression, as the page asks while typing.
    let (s, body) = review.post(
        "/api/compile",
        &json!({"source": "orders", "field": "amount", "expr": "read_file('/etc/passwd')"}),
    );
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("read_file"), "{v}");
    let (_, body) = review.post(
        "/api/compile",
        &json!({"source": "orders", "field": "amount", "expr": "abs(parse_number(\"amt\"))"}),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"ok": true, "sources": ["amt"]}));

    // A field's candidates run on the sample (a folded field's, fetched when unfolded).
    let (s, list) = review.post(
        "/api/candidates",
        &json!({"source": "orders", "field": "amount"}),
    );
    assert_eq!(s, 200, "{list}");
    assert!(list.starts_with("<ol class=\"candidates\">"), "{list}");
    assert!(list.contains("<table class=\"examples\">"), "{list}");
    let (s, _) = review.post(
        "/api/candidates",
        &json!({"source": "orders", "field": "nope"}),
    );
    assert_eq!(s, 400);
    // The sample's invalid rows, as the download gives them.
    let (s, ndjson) = review.post("/api/invalid", &json!({"source": "orders"}));
    assert_eq!(s, 200);
    assert_eq!(ndjson.lines().count(), 3, "{ndjson}");
    let row: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert!(
        row["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{row}"
    );

    // Tampered requests change nothing.
    let (s, body) = review.post(
        "/api/apply",
        &json!({"source": "orders", "decisions": {"no_such_field": {"expr": "1"}}}),
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("no_such_field"), "{body}");
    let (s, _) = review.post(
        "/api/apply",
        &json!({"source": "elsewhere", "decisions": {}}),
    );
    assert_eq!(s, 404);
    let (s, body) = review.post("/api/apply", &json!({"source": "orders", "extra": 1}));
    assert_eq!(s, 400, "{body}");
    let huge = vec![b' '; 2 << 20];
    let (s, _) = review.http(
        "POST",
        &format!("/api/apply?token={}", review.token),
        &[("Content-Type", "application/json")],
        &huge,
    );
    assert_eq!(s, 413);

    // Apply: corrections run on the sample; nothing is written.
    let decisions = json!({
        "status": {"expr": "clean(\"state\")", "values": {"active": "Active", "inactive": "Inactive", "on hold": "Pending"}},
        "amount": {"expr": "abs(parse_number(\"amt\"))"},
        "email": {"expr": "lower(clean(\"mail\"))", "reviewed": true}
    });
    let (s, section) = review.post(
        "/api/apply",
        &json!({"source": "orders", "decisions": decisions}),
    );
    assert_eq!(s, 200, "{section}");
    assert!(
        section.contains("<dd class=\"invalid-count\">0</dd>"),
        "{section}"
    );
    assert!(section.contains("3 decision(s) applied"), "{section}");
    assert!(mapping_files(&w).is_empty(), "{:?}", mapping_files(&w));

    // A decision that does not compile is not pinned.
    let (s, body) = review.post(
        "/api/pin",
        &json!({"source": "orders", "base": "none", "decisions": {"amount": {"expr": "no_such_fn(\"amt\")"}}}),
    );
    assert_eq!(s, 400, "{body}");
    assert!(mapping_files(&w).is_empty());

    // Pin writes the document with the decisions and who made them.
    let (s, body) = review.post(
        "/api/pin",
        &json!({"source": "orders", "base": "none", "decisions": decisions}),
    );
    assert_eq!(s, 200, "{body}");
    let pinned: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pinned["previous"], Value::Null);
    let doc = w.json("out/mappings/orders.mapping.json");
    assert_eq!(doc["pinned"], true);
    let status_expr = doc["fields"]["status"]["expr"].as_str().unwrap();
    assert!(
        status_expr.contains("WHEN 'on hold' THEN 'Pending'"),
        "{status_expr}"
    );
    assert_eq!(
        doc["fields"]["amount"]["expr"],
        "abs(parse_number(\"amt\"))"
    );
    let reviews = doc["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 3, "{reviews:?}");
    assert!(
        reviews
            .iter()
            .all(|r| r["by"] == "ana" && r["at"].as_str().unwrap().ends_with('Z'))
    );
    let email = reviews.iter().find(|r| r["field"] == "email").unwrap();
    assert_eq!(email["change"], "reviewed, kept", "{email}");
    // The pinned document runs: every row valid.
    let run = w.run(&["run", "--config", "config.json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("Successfully validated 5 items"),
        "{}",
        run.stdout
    );

    // A page loaded before that pin is refused, and the document is unchanged.
    let before = w.read("out/mappings/orders.mapping.json");
    let (s, body) = review.post(
        "/api/pin",
        &json!({"source": "orders", "base": "none", "decisions": {"amount": {"expr": null}}}),
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("reload"), "{body}");
    assert_eq!(w.read("out/mappings/orders.mapping.json"), before);

    // A second pin from the fresh page keeps the document before it beside it.
    let (_, html) = review.http("GET", &page, &[], b"");
    let base = base_of(&html);
    assert_ne!(base, "none");
    let (s, body) = review.post(
        "/api/pin",
        &json!({"source": "orders", "base": base, "decisions": {"email": {"expr": null}}}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(w.read("out/mappings/orders.mapping.previous.json"), before);
    let doc = w.json("out/mappings/orders.mapping.json");
    assert_eq!(doc["fields"]["email"]["expr"], Value::Null);
    let reviews = doc["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 4, "{reviews:?}");
    assert_eq!(
        reviews[3]["change"],
        "left unmapped (was `lower(clean(\"mail\"))`)"
    );

    assert_eq!(review.stop(), 0, "Ctrl-C stops the server cleanly");
}

#[test]
fn the_static_page_is_self_contained_and_masks_values_when_asked() {
    let w = orders();
    let r = w.run(&["review", "--config", "config.json", "--html", "page.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("Review page written to page.html"),
        "{}",
        r.stdout
    );
    let html = w.read("page.html");
    assert!(html.contains("data-mode=\"static\""));
    assert!(html.contains("ada@example.com"));
    // Nothing fetched from elsewhere: no external script, style, image or link.
    for needle in ["src=", "<link", "http://", "https://"] {
        assert!(!html.contains(needle), "{needle}");
    }
    assert!(
        mapping_files(&w).is_empty(),
        "nothing written to the mappings directory"
    );

    let config = w.read("config.json").replacen(
        "\"output_directory\"",
        r#""llm": {"redact_samples": true}, "output_directory""#,
        1,
    );
    w.write("config.json", config);
    let r = w.run(&["review", "--config", "config.json", "--html", "masked.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = w.read("masked.html");
    assert!(!html.contains("ada@example.com"));
    assert!(html.contains("aaa@aaaaaaa.aaa"), "masked, shape kept");
}

#[test]
fn a_source_that_cannot_be_read_shows_its_error_beside_the_others() {
    let w = orders();
    w.write(
        "config.json",
        harness::config(
            r#"{"orders": {"path": "orders.csv"}, "gone": {"path": "missing.csv"}}"#,
            SCHEMA,
            "",
        ),
    );
    let r = w.run(&["review", "--config", "config.json", "--html", "page.html"]);
    assert_eq!(r.code, 1, "a source failed: {}", r.stderr);
    let html = w.read("page.html");
    assert!(html.contains("data-field=\"status\""));
    assert!(html.contains("This source could not be reviewed"), "{html}");
    assert!(r.stderr.contains("gone"), "{}", r.stderr);
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/browser")
}

/// The page in headless Chromium: fields ordered by attention, search, a value correction, the
/// compiler's hints while typing, a candidate taken with one click, Apply, then Pin.
#[test]
fn a_reviewer_corrects_and_pins_a_mapping_in_a_real_browser() {
    let deps = browser_dir();
    if !deps.join("node_modules/playwright-core").is_dir()
        || !Path::new("/usr/bin/chromium").exists()
    {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-deps");
        let status = Command::new(script).arg("browser").status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "scripts/install-test-deps browser failed"
        );
    }
    let w = orders();
    let review = Review::start(&w, &["--min-confidence", "0.9"]);
    let shot = w.join("review.png");
    // The static copy, written before anything is pinned: the proposal's invalid rows.
    let r = w.run(&["review", "--config", "config.json", "--html", "static.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let downloaded = w.join("invalid.ndjson");
    // An ES module finds its packages beside it: the script runs from the install directory.
    let script = deps.join("browser.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/review/browser.mjs"),
        &script,
    )
    .unwrap();
    let out = Command::new("node")
        .arg(&script)
        .arg(review.url())
        .arg(&shot)
        .arg(w.join("static.html"))
        .arg(&downloaded)
        .current_dir(&deps)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["errors"], json!([]), "no script error on the page: {v}");
    // Attention order: nothing fine before something that needs a look.
    let order: Vec<String> = v["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[1].as_str().unwrap().to_string())
        .collect();
    let first_fine = order
        .iter()
        .position(|a| a == "fine")
        .unwrap_or(order.len());
    assert!(
        order[first_fine..]
            .iter()
            .all(|a| a == "fine" || a == "no candidate"),
        "{order:?}"
    );
    assert!(first_fine > 0, "{order:?}");
    assert_eq!(v["search"], json!(["status"]));
    assert!(
        v["compile_error"].as_str().unwrap().contains("read_file"),
        "{v}"
    );
    assert!(
        v["compile_ok"]
            .as_str()
            .unwrap()
            .contains("compiles; reads amt"),
        "{v}"
    );
    assert_eq!(v["invalid_before"], "3", "{v}");
    assert_eq!(v["served_download"], 3, "{v}");
    assert_eq!(v["invalid_after_apply"], "0", "{v}");
    assert!(
        v["pinned"]
            .as_str()
            .unwrap()
            .contains("orders.mapping.json"),
        "{v}"
    );
    let doc = w.json("out/mappings/orders.mapping.json");
    assert_eq!(doc["pinned"], true);
    assert!(
        doc["fields"]["status"]["expr"]
            .as_str()
            .unwrap()
            .contains("'Pending'"),
        "{doc}"
    );
    assert_eq!(
        doc["fields"]["amount"]["expr"],
        "abs(parse_number(\"amt\"))"
    );
    let took = v["candidate_field"].as_str().unwrap();
    assert!(doc["fields"][took]["expr"].is_string(), "{took}: {doc}");
    assert!(doc["reviews"].as_array().unwrap().len() >= 3, "{doc}");
    // Production runs only pinned documents: this one.
    let run = w.run(&["run", "--config", "config.json", "--frozen"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("Successfully validated 5 items"),
        "{}",
        run.stdout
    );
    // The static copy from disk.
    assert_eq!(v["static_disabled"], true, "{v}");
    assert_eq!(v["static_search"], json!(["amount"]), "{v}");
    assert_eq!(v["static_groups"], json!(["status"]), "{v}");
    assert_eq!(v["download_name"], "orders_invalid_sample.ndjson");
    let lines: Vec<Value> = std::fs::read_to_string(&downloaded)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["source_file"].as_str().unwrap().ends_with("orders.csv"))
    );
    // The screenshot for the docs (docs/images/review.png is refreshed from it by hand).
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/review.png");
    std::fs::copy(&shot, &kept).unwrap();
    assert!(std::fs::metadata(&kept).unwrap().len() > 10_000);
    assert_eq!(review.stop(), 0);
}

#[test]
fn values_that_look_like_markup_stay_text() {
    let w = orders();
    w.write(
        "orders.csv",
        "order_id,mail,state,amt,dispatch\n\
         1,ada@example.com,<script>alert(1)</script>,10.50,2024-01-05\n\
         2,alan@example.com,active,-1,2024-01-06\n",
    );
    let r = w.run(&["review", "--config", "config.json", "--html", "page.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = w.read("page.html");
    assert!(!html.contains("<script>alert(1)"), "a value became markup");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The inlined invalid rows cannot end their script element either.
    assert!(
        html.contains("\\u003cscript>alert(1)\\u003c/script>"),
        "{html}"
    );
}

#[test]
fn two_tabs_pinning_at_once_leave_one_consistent_document() {
    let w = orders();
    let review = std::sync::Arc::new(Review::start(&w, &[]));
    let (_, html) = review.http("GET", &format!("/?token={}", review.token), &[], b"");
    let base = base_of(&html);
    let tabs: Vec<_> = ["lower(\"mail\")", "upper(\"mail\")"]
        .into_iter()
        .map(|expr| {
            let review = std::sync::Arc::clone(&review);
            let base = base.clone();
            std::thread::spawn(move || {
                let body = json!({"source": "orders", "base": base,
                                  "decisions": {"email": {"expr": expr}}});
                (expr, review.post("/api/pin", &body))
            })
        })
        .collect();
    let results: Vec<(&str, (u16, String))> = tabs.into_iter().map(|t| t.join().unwrap()).collect();
    let mut codes: Vec<u16> = results.iter().map(|(_, (c, _))| *c).collect();
    codes.sort();
    assert_eq!(codes, vec![200, 409], "{results:?}");
    let winner = results.iter().find(|(_, (c, _))| *c == 200).unwrap().0;
    let doc = w.json("out/mappings/orders.mapping.json");
    assert_eq!(doc["fields"]["email"]["expr"], winner);
    assert_eq!(doc["reviews"].as_array().unwrap().len(), 1, "{doc}");
    assert!(!w.join("out/mappings/orders.mapping.previous.json").exists());
}
