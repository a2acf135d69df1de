//! Delta Lake output (`output_format: "delta"`): one commit per run per table, append and
//! overwrite, the schema contract, idempotent retries of a run id, partitions, a run killed
//! mid-write, and config errors. The tables are read back with delta-rs; the Python tests read
//! them with the `deltalake` and Polars packages.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{PEOPLE_SCHEMA, Workdir, config, demo, walk};

/// The table at `dir` as delta-rs loads it: version, the live files (paths relative to the
/// table) and their rows.
struct Table {
    version: u64,
    files: Vec<String>,
    rows: Vec<Value>,
    schema: Vec<(String, String, bool)>,
    partitions: Vec<String>,
    history: Vec<Value>,
}

fn load(dir: &Path) -> Table {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(std::fs::canonicalize(dir).unwrap()).unwrap();
        let table = deltalake_core::DeltaTableBuilder::from_url(url)
            .unwrap()
            .load()
            .await
            .unwrap();
        let state = table.snapshot().unwrap();
        let schema = state
            .schema()
            .fields()
            .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
            .collect();
        let partitions = state.metadata().partition_columns().to_vec();
        let uris: Vec<String> = table.get_file_uris().unwrap().collect();
        let mut rows = Vec::new();
        let mut files = Vec::new();
        for uri in &uris {
            let path = url::Url::parse(uri)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .unwrap_or_else(|| uri.into());
            assert!(path.exists(), "the log references a missing file: {uri}");
            files.push(path.display().to_string());
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            for b in reader {
                w.write(&b.unwrap()).unwrap();
            }
            w.finish().unwrap();
            for line in String::from_utf8(w.into_inner()).unwrap().lines() {
                rows.push(serde_json::from_str(line).unwrap());
            }
        }
        use futures::StreamExt;
        let history: Vec<Value> = table
            .history(None)
            .map(|c| serde_json::to_value(c.unwrap()).unwrap())
            .collect()
            .await;
        Table {
            version: table.version().unwrap(),
            files,
            rows,
            schema,
            partitions,
            history,
        }
    })
}

/// [`load`] from an async test (it runs its own runtime).
async fn load_async(dir: std::path::PathBuf) -> Table {
    tokio::task::spawn_blocking(move || load(&dir))
        .await
        .unwrap()
}

/// Data files under `dir` that are whole (not a writer's temporary file).
fn data_files(dir: &Path) -> BTreeSet<String> {
    if !dir.exists() {
        return BTreeSet::new();
    }
    walk(dir)
        .into_iter()
        .filter(|p| p.ends_with(".parquet") && !p.contains("/_delta_log/"))
        .filter(|p| {
            !Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect()
}

/// The demo schema's top-level fields, in order.
fn summary_fields(w: &Workdir) -> Vec<String> {
    let config = read_config(w);
    config["internal_schema"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// `config.json` without its `//` comment lines.
fn read_config(w: &Workdir) -> Value {
    let text: Vec<String> = w
        .read("config.json")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(String::from)
        .collect();
    serde_json::from_str(&text.join("\n")).unwrap()
}

fn demo_delta(extra: &str) -> Workdir {
    let w = demo();
    let mut config = read_config(&w);
    config["output_format"] = "delta".into();
    config["output_directory"] = "out".into();
    if !extra.is_empty() {
        config["delta"] = serde_json::from_str(extra).unwrap();
    }
    w.write("config.json", config.to_string());
    w
}

fn ok(w: &Workdir, args: &[&str]) -> crate::harness::Run {
    let r = w.run(args);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

#[test]
fn runs_append_then_overwrite_with_one_commit_each_that_records_the_run() {
    let w = demo_delta("");
    let first = ok(&w, &["run", "--run-id", "first-run"]);
    assert!(
        first.stdout.contains("Data saved to out/source1_valid/")
            && first.stdout.contains("Data saved to out/source1_invalid/"),
        "{}",
        first.stdout
    );
    assert!(
        first.stderr.contains("committed version 0 (run first-run)"),
        "{}",
        first.stderr
    );
    // Creating a table is not a failure: no error line from the Delta library.
    assert!(!first.stderr.contains("ERROR"), "{}", first.stderr);
    let valid = load(&w.join("out/source1_valid"));
    let invalid = load(&w.join("out/source2_invalid"));
    let summary = w.json("out/run_summary.json");
    let s1 = &summary["sources"]["source1"];
    let n_valid = s1["valid"].as_u64().unwrap();
    let n_invalid = summary["sources"]["source2"]["invalid"].as_u64().unwrap();
    assert!(n_valid > 0 && n_invalid > 0, "{summary}");
    assert_eq!(valid.rows.len() as u64, n_valid);
    assert_eq!(invalid.rows.len() as u64, n_invalid);
    // A source without invalid rows still commits its (empty) invalid table.
    assert_eq!(load(&w.join("out/source1_invalid")).rows.len(), 0);
    assert_eq!(summary["run_id"], "first-run");
    assert_eq!(
        s1["outputs"]["delta"],
        json!({"run_id": "first-run", "valid": 0, "invalid": 0})
    );
    // The table's schema is the internal schema's, as the Parquet output's.
    let names: Vec<&str> = valid.schema.iter().map(|(n, _, _)| n.as_str()).collect();
    let expected: Vec<String> = summary_fields(&w);
    assert_eq!(names, expected);
    // An invalid row keeps its provenance, record and reasons.
    let bad = &invalid.rows[0];
    assert!(
        bad["source_file"]
            .as_str()
            .unwrap()
            .ends_with("source2.json"),
        "{bad}"
    );
    assert!(bad["row"].as_i64().unwrap() >= 1);
    assert!(serde_json::from_str::<Value>(bad["record"].as_str().unwrap()).is_ok());
    assert!(!bad["errors"].as_array().unwrap().is_empty());
    assert!(bad["errors"][0]["message"].is_string());

    // A second run appends in one more commit.
    ok(&w, &["run"]);
    let valid = load(&w.join("out/source1_valid"));
    assert_eq!(valid.version, 1);
    assert_eq!(valid.rows.len() as u64, 2 * n_valid);
    assert_eq!(
        load(&w.join("out/source2_invalid")).rows.len() as u64,
        2 * n_invalid
    );
    // Each commit carries conform's record of the run.
    let conform: Vec<&Value> = valid.history.iter().map(|c| &c["conform"]).collect();
    assert_eq!(conform.len(), 2);
    for c in &conform {
        assert_eq!(c["source"], "source1");
        assert_eq!(c["table"], "valid");
        assert_eq!(c["valid"].as_u64(), Some(n_valid));
        assert!(c["mapping_fingerprint"].is_string(), "{c}");
    }
    let runs: BTreeSet<&str> = conform
        .iter()
        .map(|c| c["run_id"].as_str().unwrap())
        .collect();
    assert!(runs.contains("first-run") && runs.len() == 2, "{runs:?}");

    // Overwrite: the table holds this run's rows only; earlier versions stay readable.
    let mut config = read_config(&w);
    config["delta"] = json!({"mode": "overwrite"});
    w.write("config.json", config.to_string());
    ok(&w, &["run"]);
    let valid = load(&w.join("out/source1_valid"));
    assert_eq!(valid.version, 2);
    assert_eq!(valid.rows.len() as u64, n_valid);
    assert_eq!(
        load(&w.join("out/source2_invalid")).rows.len() as u64,
        n_invalid
    );
    assert_eq!(
        data_files(&w.join("out/source1_valid")).len(),
        3,
        "removed files stay for time travel"
    );
}

#[test]
fn a_retried_run_id_adds_nothing_and_leaves_no_copies() {
    let w = demo_delta("");
    ok(&w, &["run", "--run-id", "nightly-7"]);
    let before = load(&w.join("out/source2_valid"));
    let files = data_files(&w.join("out/source2_valid"));
    let again = w.run_env(&["run"], &[("CONFORM_RUN_ID", "nightly-7")]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("run nightly-7 was committed already (version 0); nothing added"),
        "{}",
        again.stderr
    );
    let after = load(&w.join("out/source2_valid"));
    assert_eq!(
        (after.version, after.rows.len()),
        (before.version, before.rows.len())
    );
    assert_eq!(
        data_files(&w.join("out/source2_valid")),
        files,
        "the retry's files are removed"
    );
    // A run id goes into file names: one that is not a plain name is refused.
    let r = w.run(&["run", "--run-id", "../x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("run_id"), "{}", r.stderr);
}

#[test]
fn the_schema_contract_evolves_or_fails_naming_the_field_before_writing() {
    let w = demo_delta("");
    ok(&w, &["run", "--source", "source1"]);
    let dir = w.join("out/source1_valid");
    let files = data_files(&dir);
    let mut config = read_config(&w);

    // A changed type fails the source before anything is written.
    let mut retyped = config.clone();
    retyped["internal_schema"]["properties"]["lifetime_value"] =
        json!({"type": ["string", "null"]});
    w.write("config.json", retyped.to_string());
    let r = w.run(&["run", "--source", "source1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("field `lifetime_value`") && r.stdout.contains("type"),
        "{}",
        r.stdout
    );
    assert_eq!(data_files(&dir), files, "nothing written");
    assert_eq!(load(&dir).version, 0);

    // A new optional field under `freeze`: refused, naming it.
    config["internal_schema"]["properties"]["nickname"] = json!({"type": ["string", "null"]});
    config["delta"] = json!({"schema": "freeze"});
    w.write("config.json", config.to_string());
    let r = w.run(&["run", "--source", "source1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("`nickname`") && r.stdout.contains("freeze"),
        "{}",
        r.stdout
    );
    assert_eq!(data_files(&dir), files);

    // Under `evolve` (the default) the commit adds it; earlier rows read it as null.
    config["delta"] = json!({"schema": "evolve"});
    w.write("config.json", config.to_string());
    ok(&w, &["run", "--source", "source1"]);
    let t = load(&dir);
    assert_eq!(t.version, 1);
    assert!(
        t.schema
            .iter()
            .any(|(n, _, nullable)| n == "nickname" && *nullable),
        "{:?}",
        t.schema
    );

    // A required field removed from the schema fails.
    let mut fewer = config.clone();
    fewer["internal_schema"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("full_name");
    fewer["internal_schema"]["required"] = json!(["customer_id", "email", "signup_date"]);
    w.write("config.json", fewer.to_string());
    // The saved mapping names the removed field: map again for the narrower schema.
    std::fs::remove_dir_all(w.join("out/mappings")).unwrap();
    let r = w.run(&["run", "--source", "source1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("field `full_name` is required in the table"),
        "{}",
        r.stdout
    );
    assert_eq!(load(&dir).version, 1);
}

#[test]
fn bad_delta_settings_are_config_errors_naming_the_key() {
    for (delta, key, words) in [
        (r#"{"mode": "merge"}"#, "delta.mode", "merge"),
        (
            r#"{"partition_by": ["country"]}"#,
            "delta.partition_by",
            "`country`",
        ),
        (
            r#"{"partition_by": ["email", "email"]}"#,
            "delta.partition_by",
            "twice",
        ),
        (r#"{"schema": "loose"}"#, "delta.schema", "loose"),
        (r#"{"mode": "append", "vacuum": true}"#, "delta", "vacuum"),
    ] {
        let w = demo_delta(delta);
        let r = w.run(&["run"]);
        assert_eq!(r.code, 2, "{delta}: {}", r.stderr);
        assert!(
            r.stderr.contains(key) && r.stderr.contains(words),
            "{delta}: {}",
            r.stderr
        );
        assert!(!w.join("out/source1_valid").exists(), "nothing written");
    }
    // A number is no partition column.
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv"}}"#,
            r#"{"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "string"}}}"#,
            r#""output_format": "delta", "delta": {"partition_by": ["x"]},"#,
        ),
    );
    w.write("s.csv", "x,y\n1.5,a\n");
    let r = w.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("delta.partition_by") && r.stderr.contains("number"),
        "{}",
        r.stderr
    );
}

#[test]
fn partitions_are_directories_and_values_round_trip() {
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            r#"{"s": {"path": "s.csv"}}"#,
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "region": {"type": ["string", "null"]}}}"#,
            r#""output_format": "delta", "delta": {"partition_by": ["region"]},"#,
        ),
    );
    w.write("s.csv", "id,region\n1,north\n2,south east/2\n3,north\n4,\n");
    ok(&w, &["run", "--mapper", "heuristic"]);
    let t = load(&w.join("out/s_valid"));
    assert_eq!(t.partitions, ["region"]);
    assert_eq!(t.rows.len(), 4);
    let dirs: BTreeSet<String> = t
        .files
        .iter()
        .map(|f| {
            Path::new(f)
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        dirs,
        [
            "region=__HIVE_DEFAULT_PARTITION__",
            "region=north",
            "region=south%20east%2F2"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    // Data files hold the other columns; the partition value is in the log.
    assert!(
        t.rows
            .iter()
            .all(|r| r.get("region").is_none() && r["id"].is_i64())
    );
}

/// `id,name` rows whose names fall in 20 groups, cycling: every batch has rows of every group.
fn grouped_csv(from: u64, to: u64) -> String {
    let mut out = String::from("id,name\n");
    for i in from..=to {
        out.push_str(&format!("{i},g{}\n", i % 20));
    }
    out
}

#[test]
fn a_run_killed_mid_write_leaves_the_table_at_its_previous_version() {
    let w = Workdir::new();
    let schema = r#"{"type": "object", "required": ["id", "name"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}"#;
    // 20 partition values and at most 16 open files: whole data files are completed from the
    // first batches on, long before the commit.
    let settings = r#""output_format": "delta", "delta": {"partition_by": ["name"]}, "parquet": {"row_group_size": 16}, "batch_size": 200,"#;
    w.write("seed.csv", grouped_csv(1, 40));
    w.write(
        "config.json",
        config(r#"{"s": {"path": "seed.csv"}}"#, schema, settings),
    );
    ok(&w, &["run", "--mapper", "heuristic"]);
    let dir = w.join("out/s_valid");
    let before = load(&dir);
    assert_eq!((before.version, before.rows.len()), (0, 40));
    let committed = data_files(&dir);

    w.write("big.csv", grouped_csv(1, 2_000_000));
    w.write(
        "config.json",
        config(r#"{"s": {"path": "big.csv"}}"#, schema, settings),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_conform"))
        .args(["run", "--mapper", "heuristic"])
        .current_dir(w.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed, hard, as soon as the run has whole files of its own.
    let started = Instant::now();
    while data_files(&dir).len() <= committed.len() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no file was written"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let uncommitted: Vec<String> = data_files(&dir).difference(&committed).cloned().collect();
    assert!(!uncommitted.is_empty());
    let after = load(&dir);
    assert_eq!(after.version, 0, "no commit");
    assert_eq!(after.rows.len(), 40);
    let referenced: BTreeSet<String> = after.files.iter().cloned().collect();
    for f in &uncommitted {
        assert!(!referenced.contains(f), "{f} is referenced");
    }
    assert!(
        !w.join("out/s_invalid/_delta_log/00000000000000000001.json")
            .exists()
    );
}

#[cfg(feature = "ballista")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_run_commits_every_partition_in_one_commit_like_the_local_run() {
    let w = Workdir::new();
    let people: Vec<String> = (1..=30)
        .map(|i| {
            format!(
                "{i},name{i},p{i}@example.com,{}",
                if i % 7 == 0 {
                    "-3".into()
                } else {
                    (20 + i).to_string()
                }
            )
        })
        .collect();
    for (k, chunk) in people.chunks(10).enumerate() {
        w.write(
            &format!("in/p{k}.csv"),
            format!("id,name,email,age\n{}\n", chunk.join("\n")),
        );
    }
    w.write(
        "config.json",
        config(
            &format!(
                r#"{{"people": {{"path": "{}/p*.csv"}}}}"#,
                w.join("in").display()
            ),
            PEOPLE_SCHEMA,
            r#""output_format": "delta","#,
        ),
    );
    let r = crate::harness::run_async(
        &w,
        &["run", "--mapper", "heuristic", "--output-dir", "local"],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let url = conform::cluster::standalone(2).await.unwrap();
    let r = crate::harness::run_async(
        &w,
        &[
            "run",
            "--mapper",
            "heuristic",
            "--output-dir",
            "cluster",
            "--cluster",
            &url,
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("3 partition(s)"), "{}", r.stderr);
    let sorted = |t: &Table| {
        let mut rows: Vec<String> = t.rows.iter().map(Value::to_string).collect();
        rows.sort();
        rows
    };
    for table in ["people_valid", "people_invalid"] {
        let local = load_async(w.join(&format!("local/{table}"))).await;
        let cluster = load_async(w.join(&format!("cluster/{table}"))).await;
        assert_eq!(cluster.version, 0, "{table}: one commit");
        assert!(!local.rows.is_empty(), "{table}");
        assert_eq!(sorted(&local), sorted(&cluster), "{table}");
        assert_eq!(local.schema, cluster.schema);
    }
    assert_eq!(
        load_async(w.join("cluster/people_valid")).await.files.len(),
        3,
        "a file per partition"
    );
}
