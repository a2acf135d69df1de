//! The benchmark job on a Ballista cluster gives the same rows as the local run: in Ballista's
//! standalone mode (scheduler and executor in this process) and with real `conform cluster`
//! scheduler and executor processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use serde_json::Value;

use crate::harness::{Workdir, run_async};

/// The 1,028-row fixture split into three CSV files (three partitions on the cluster).
fn split_fixture(w: &Workdir) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench/orders_small.csv");
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&src)
        .unwrap();
    let header = reader.headers().unwrap().clone();
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    std::fs::create_dir_all(w.join("in")).unwrap();
    for (k, chunk) in records.chunks(records.len().div_ceil(3)).enumerate() {
        let mut out = csv::WriterBuilder::new()
            .flexible(true)
            .from_path(w.join(&format!("in/part-{k}.csv")))
            .unwrap();
        out.write_record(&header).unwrap();
        for r in chunk {
            out.write_record(r).unwrap();
        }
        out.flush().unwrap();
    }
    w.copy_testdata("bench/orders.mapping.json", "orders.mapping.json");
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench/config.json"),
    )
    .unwrap();
    w.write("config.json", config);
}

fn env(w: &Workdir, out: &str) -> Vec<(String, String)> {
    vec![
        (
            "CONFORM_BENCH_INPUT".into(),
            w.join("in/part-*.csv").display().to_string(),
        ),
        (
            "CONFORM_BENCH_OUT".into(),
            w.join(out).display().to_string(),
        ),
    ]
}

async fn run(w: &Workdir, out: &str, extra: &[&str]) -> crate::harness::Run {
    let env = env(w, out);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut args = vec!["run", "--config", "config.json"];
    args.extend_from_slice(extra);
    let r = run_async(w, &args, &env).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

/// Valid rows as sorted JSON lines, from a Parquet file or a directory of part files.
fn valid_rows(path: &Path) -> Vec<String> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut f: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let mut lines: Vec<String> = String::from_utf8(w.into_inner())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Invalid rows keyed by provenance (file, row).
fn invalid_rows(path: &Path) -> BTreeMap<(String, u64), Value> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = BTreeMap::new();
    for f in files {
        for l in std::fs::read_to_string(&f).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let key = (
                v["source_file"].as_str().unwrap().to_string(),
                v["row"].as_u64().unwrap(),
            );
            assert!(out.insert(key, v).is_none(), "a row written twice");
        }
    }
    out
}

fn same_answers(w: &Workdir, cluster_out: &str, partitions: usize) {
    let local = valid_rows(&w.join("local/orders_valid_data.parquet"));
    let remote = valid_rows(&w.join(&format!("{cluster_out}/orders_valid_data")));
    assert_eq!(local.len(), 954);
    assert_eq!(local, remote, "valid rows differ");
    let local = invalid_rows(&w.join("local/orders_invalid_data.ndjson"));
    let remote = invalid_rows(&w.join(&format!("{cluster_out}/orders_invalid_data")));
    assert_eq!(local.len(), 74);
    assert_eq!(local, remote, "invalid rows differ");
    let parts: Vec<String> = std::fs::read_dir(w.join(&format!("{cluster_out}/orders_valid_data")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), partitions, "one part per partition: {parts:?}");
    let summary: Value =
        serde_json::from_str(&w.read(&format!("{cluster_out}/run_summary.json"))).unwrap();
    let s = &summary["sources"]["orders"];
    assert_eq!(
        (s["valid"].as_u64(), s["invalid"].as_u64()),
        (Some(954), Some(74))
    );
    let local: Value = serde_json::from_str(&w.read("local/run_summary.json")).unwrap();
    assert_eq!(s["errors"], local["sources"]["orders"]["errors"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_cluster_gives_the_local_answers() {
    let w = Workdir::new();
    split_fixture(&w);
    run(&w, "local", &[]).await;
    let url = conform::cluster::standalone(2).await.unwrap();
    let r = run(&w, "cluster", &["--cluster", &url]).await;
    assert!(
        r.stderr.contains("ran on the cluster at df://localhost:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout
            .contains("Successfully validated 954 items from orders")
    );
    assert!(
        r.stdout
            .contains("74 validation errors occurred for orders.")
    );
    same_answers(&w, "cluster", 3);
}

/// A child process stopped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port whose successor is free too (an executor listens on both).
fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Starts `conform cluster ARGS` and waits for its ready line.
fn start(args: &[String]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conform"))
        .arg("cluster")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(" ready on ") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("conform cluster {args:?} did not get ready"));
    assert!(line.starts_with("conform cluster "), "{line}");
    Process(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_two_executor_processes_give_the_local_answers() {
    let w = Workdir::new();
    split_fixture(&w);
    run(&w, "local", &[]).await;
    let sp = free_port_pair();
    let _scheduler = start(&[
        "scheduler".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        sp.to_string(),
    ]);
    let mut executors = Vec::new();
    for _ in 0..2 {
        let ep = free_port_pair();
        executors.push(start(&[
            "executor".into(),
            "--scheduler-host".into(),
            "127.0.0.1".into(),
            "--scheduler-port".into(),
            sp.to_string(),
            "--port".into(),
            ep.to_string(),
            "--concurrent-tasks".into(),
            "1".into(),
        ]));
    }
    let url = format!("df://127.0.0.1:{sp}");
    // This time the cluster comes from the config (`engine.cluster`) rather than `--cluster`.
    let config = w.read("config.json").replacen(
        "\"output_directory\"",
        &format!("\"engine\": {{\"cluster\": \"{url}\"}}, \"output_directory\""),
        1,
    );
    w.write("config.json", config);
    // Executors register with the scheduler shortly after they listen; a job submitted before
    // waits for them.
    let started = Instant::now();
    let r = run(&w, "cluster", &[]).await;
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        r.stderr.contains(&format!("ran on the cluster at {url}")),
        "{}",
        r.stderr
    );
    same_answers(&w, "cluster", 3);
}

/// Runs the job on one fixture file locally and on a standalone cluster that cuts it into
/// pieces of `partition_mb`; the answers must match. Returns the number of partitions.
async fn one_file_in_pieces(w: &Workdir, input: &Path, partition_mb: f64) -> usize {
    let config = w.read("config.json").replacen(
        "\"output_directory\"",
        &format!("\"engine\": {{\"partition_mb\": {partition_mb}}}, \"output_directory\""),
        1,
    );
    w.write("config.json", config);
    let input = input.display().to_string();
    let url = conform::cluster::standalone(2).await.unwrap();
    for (out_dir, cluster) in [("local", false), ("cluster", true)] {
        let out_path = w.join(out_dir).display().to_string();
        let env = [
            ("CONFORM_BENCH_INPUT", input.as_str()),
            ("CONFORM_BENCH_OUT", out_path.as_str()),
        ];
        let mut args = vec!["run", "--config", "config.json"];
        if cluster {
            args.extend(["--cluster", url.as_str()]);
        }
        let r = run_async(w, &args, &env).await;
        assert_eq!(r.code, 0, "{}", r.stderr);
        if cluster {
            assert!(
                r.stderr.contains(" partition(s) from 1 file(s)"),
                "{}",
                r.stderr
            );
        }
    }
    let parts = std::fs::read_dir(w.join("cluster/orders_valid_data"))
        .unwrap()
        .count();
    same_answers(w, "cluster", parts);
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_csv_file_is_cut_into_pieces_at_record_boundaries() {
    // One 124 KB file with quoted multi-line fields, cut into pieces of about 30 KB.
    let w = Workdir::new();
    split_fixture(&w);
    w.copy_testdata("bench/orders_small.csv", "whole.csv");
    assert_eq!(one_file_in_pieces(&w, &w.join("whole.csv"), 0.03).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ndjson_file_is_cut_into_pieces_at_line_boundaries() {
    let w = Workdir::new();
    split_fixture(&w);
    w.copy_testdata("bench/orders_small.ndjson", "whole.ndjson");
    let size = std::fs::metadata(w.join("whole.ndjson")).unwrap().len();
    let parts = one_file_in_pieces(&w, &w.join("whole.ndjson"), 0.03).await;
    assert_eq!(parts as u64, size.div_ceil(31_457), "{size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_fails_the_source_and_leaves_no_parts() {
    let w = Workdir::new();
    split_fixture(&w);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = env(&w, "cluster");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let url = format!("df://127.0.0.1:{port}");
    let r = run_async(
        &w,
        &["run", "--config", "config.json", "--cluster", &url],
        &env,
    )
    .await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "Failed to process orders: source `orders`: the cluster at {url} failed"
        )),
        "{}",
        r.stdout
    );
    assert!(
        !w.join("cluster/orders_valid_data").exists()
            || std::fs::read_dir(w.join("cluster/orders_valid_data"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_file_is_cut_into_runs_of_row_groups() {
    // The fixture as a Parquet file of text columns with row groups of 100 rows.
    let w = Workdir::new();
    split_fixture(&w);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench/orders_small.csv");
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&src)
        .unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(
        header
            .iter()
            .map(|h| arrow::datatypes::Field::new(h, arrow::datatypes::DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<arrow::array::ArrayRef> = (0..header.len())
        .map(|i| {
            std::sync::Arc::new(arrow::array::StringArray::from(
                records
                    .iter()
                    .map(|r| r.get(i).filter(|v| !v.is_empty()))
                    .collect::<Vec<_>>(),
            )) as arrow::array::ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut out = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(w.join("in/whole.parquet")).unwrap(),
        schema,
        Some(props),
    )
    .unwrap();
    out.write(&batch).unwrap();
    out.close().unwrap();
    let parts = one_file_in_pieces(&w, &w.join("in/whole.parquet"), 0.001).await;
    assert!(parts > 3, "row groups become partitions: {parts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_limit_reaches_the_executors() {
    let w = Workdir::new();
    let big = "x".repeat(200_000);
    w.write("s.csv", format!("id,name\n1,a\n2,\"{big}\"\n3,c\n"));
    // Absolute paths: the in-process executor does not share the binary's working directory.
    let config = serde_json::json!({
        "output_directory": w.join("out"),
        "output_format": "ndjson",
        "limits": {"max_record_bytes": 65536},
        "data_sources": {"s": {"path": w.join("s.csv")}},
        "internal_schema": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}}}
    });
    w.write("config.json", config.to_string());
    let url = conform::cluster::standalone(1).await.unwrap();
    let r = run_async(&w, &["run", "--cluster", &url], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("ran on the cluster"), "{}", r.stderr);
    let part = w.read("out/s_invalid_data/part-00000.ndjson");
    assert!(part.contains("65536-byte limit"), "{part}");
    assert!(part.len() < 10_000, "the record's values are not kept");
}
