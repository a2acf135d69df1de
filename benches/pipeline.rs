//! Throughput of the hot pieces, in rows per second, on the orders benchmark source (13 messy
//! text columns, ~7% invalid rows): reading CSV, the whole plan (mapping projection +
//! validation + split), each validator rule family alone, and the Parquet/NDJSON writers.
//!
//! `cargo bench --bench pipeline` (or `-- read_csv` for one group).

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use conform::config::{OutputFormat, ParquetOptions};
use conform::{Config, MapperChoice, Pipeline};
use conform::{InvalidRow, InvalidSink, ValidSink};
use futures::StreamExt;

const ROWS: usize = 50_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The 1,028-row fixture repeated to `ROWS` data rows in a scratch directory.
fn input(dir: &Path) -> PathBuf {
    let fixture = std::fs::read_to_string(root().join("testdata/bench/orders_small.csv")).unwrap();
    let (header, body) = fixture.split_once('\n').unwrap();
    let records: Vec<String> = csv::ReaderBuilder::new()
        .from_reader(body.as_bytes())
        .into_records()
        .map(|r| {
            let mut w = csv::Writer::from_writer(vec![]);
            w.write_record(&r.unwrap()).unwrap();
            String::from_utf8(w.into_inner().unwrap()).unwrap()
        })
        .collect();
    let mut out = format!("{header}\n");
    for i in 0..ROWS {
        out.push_str(&records[i % records.len()]);
    }
    let path = dir.join("orders.csv");
    std::fs::write(&path, out).unwrap();
    path
}

/// The bench job's config , or with its target cut down to one field (`only_field`).
fn pipeline(dir: &Path, input: &Path, only_field: Option<&str>) -> Pipeline {
    let text = std::fs::read_to_string(root().join("testdata/bench/config.json")).unwrap();
    let env = |k: &str| match k {
        "CONFORM_BENCH_INPUT" => Some(input.display().to_string()),
        "CONFORM_BENCH_OUT" => Some(dir.join("out").display().to_string()),
        _ => None,
    };
    let mut config =
        Config::from_str_with_env(&text, &root().join("testdata/bench"), &env).unwrap();
    if let Some(field) = only_field {
        let schema = &mut config.internal_schema;
        let props = schema["properties"].as_object().unwrap().clone();
        schema["properties"] = serde_json::json!({ field: props[field].clone() });
        schema["required"] = serde_json::json!([]);
        // The pinned mapping maps every target field; this target has one.
        let doc =
            std::fs::read_to_string(root().join("testdata/bench/orders.mapping.json")).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let fields = doc["fields"].as_object().unwrap().clone();
        doc["fields"] = serde_json::json!({ field: fields[field].clone() });
        let path = dir.join(format!("{field}.mapping.json"));
        std::fs::write(&path, doc.to_string()).unwrap();
        config.data_sources[0].1.mapping = Some(path);
    }
    Pipeline::try_new(config).unwrap()
}

fn run_plan(rt: &tokio::runtime::Runtime, p: &Pipeline) -> (Vec<RecordBatch>, Vec<InvalidRow>) {
    rt.block_on(async {
        let prepared = p.prepare("orders", MapperChoice::File).await.unwrap();
        let mut s = p.execute(&prepared).await.unwrap();
        let (mut valid, mut invalid) = (vec![], vec![]);
        while let Some(split) = s.next().await {
            let (v, bad) = split.unwrap();
            valid.push(v);
            invalid.extend(bad);
        }
        (valid, invalid)
    })
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let full = pipeline(dir.path(), &input, None);

    let mut g = c.benchmark_group("read_csv");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    g.bench_function("orders", |b| {
        let source = full.open("orders").unwrap();
        b.iter(|| {
            source
                .batches()
                .unwrap()
                .map(|r| r.unwrap().num_rows())
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    g.bench_function("map_validate_split", |b| b.iter(|| run_plan(&rt, &full)));
    g.finish();

    // One target field at a time: its mapping expression plus its rule family.
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    for (field, family) in [
        ("order_id", "minimum"),
        ("customer_email", "pattern_maxLength"),
        ("order_date", "date_format"),
        ("country", "enum"),
        ("quantity", "minimum_maximum"),
        ("customer_name", "maxLength"),
    ] {
        let p = pipeline(dir.path(), &input, Some(field));
        g.bench_function(format!("{field}_{family}"), |b| {
            b.iter(|| run_plan(&rt, &p))
        });
    }
    g.finish();

    let (valid, invalid) = run_plan(&rt, &full);
    let valid_rows: usize = valid.iter().map(RecordBatch::num_rows).sum();
    let schema = full.target().valid_arrow_schema();
    let mut g = c.benchmark_group("write");
    g.sample_size(10);
    g.throughput(Throughput::Elements(valid_rows as u64));
    for format in [OutputFormat::Parquet, OutputFormat::Ndjson] {
        let dest = dir
            .path()
            .join(format!("valid.{}", format.valid_extension()));
        g.bench_function(format!("valid_{}", format.valid_extension()), |b| {
            b.iter(|| {
                let mut sink =
                    ValidSink::create(&dest, format, &schema, &ParquetOptions::default()).unwrap();
                for batch in &valid {
                    sink.write(batch).unwrap();
                }
                sink.finish().unwrap()
            })
        });
    }
    g.throughput(Throughput::Elements(invalid.len() as u64));
    g.bench_function("invalid_rows_ndjson", |b| {
        let dest = dir.path().join("invalid.ndjson");
        b.iter(|| {
            let mut sink = InvalidSink::create(&dest, false).unwrap();
            sink.write(&invalid).unwrap();
            sink.finish().unwrap()
        })
    });
    g.finish();
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);
