//! PostgreSQL sources against a real, throwaway server (see `pg.rs`): types, NULLs, credentials,
//! connection errors, streaming a million rows, and a mixed config through the binary.

use serde_json::json;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Workdir, config, run_async};
use crate::pg::{PASSWORD, Pg, USER};

const TYPES_TABLE: &str = "
CREATE TABLE typed (
    small_n int2, int_n int4, big_n int8, real_n float4, dbl_n float8, price numeric(12,2),
    title text, code varchar(20), active bool, born date, seen_at timestamp,
    paid_at timestamptz, uid uuid, doc jsonb);
INSERT INTO typed VALUES
 (1, 70000, 9000000000, 1.5, 2.25, 1234.50, 'Tea', 'T-1', true, '1990-05-17',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{\"k\": [1, 2]}'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);";

const TYPES_SCHEMA: &str = r#"{"type": "object", "required": ["small_n"], "properties": {
    "small_n": {"type": "integer"}, "int_n": {"type": ["integer", "null"]},
    "big_n": {"type": ["integer", "null"]}, "real_n": {"type": ["number", "null"]},
    "dbl_n": {"type": ["number", "null"]}, "price": {"type": ["number", "null"]},
    "title": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
    "active": {"type": ["boolean", "null"]}, "born": {"type": ["string", "null"], "format": "date"},
    "seen_at": {"type": ["string", "null"], "format": "date-time"},
    "paid_at": {"type": ["string", "null"], "format": "date-time"},
    "uid": {"type": ["string", "null"], "format": "uuid"}, "doc": {"type": ["object", "null"]}}}"#;

fn pg_source(pg: &Pg, table: &str, password: &str) -> String {
    format!(
        r#"{{"postgres": {{"host": "127.0.0.1", "port": {}, "database": "postgres", "table": "{table}"}},
            "credentials": {{"username": "{USER}", "password": "{password}"}}}}"#,
        pg.port
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_supported_type_and_null_round_trips_into_parquet() {
    let pg = Pg::start();
    pg.exec(TYPES_TABLE).await;
    // The source's Arrow types are the query's column types.
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            &format!(r#"{{"db": {}}}"#, pg_source(&pg, "typed", "${PGPASS}")),
            TYPES_SCHEMA,
            r#""output_format": "parquet","#,
        ),
    );
    let cfg = conform::Config::from_str_with_env(&w.read("config.json"), w.path(), &|k| {
        (k == "PGPASS").then(|| PASSWORD.to_string())
    })
    .unwrap();
    let p = conform::Pipeline::try_new(cfg).unwrap();
    let source = p.open("db").unwrap();
    let types: Vec<String> = source
        .data_schema()
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            "small_n:Int16",
            "int_n:Int32",
            "big_n:Int64",
            "real_n:Float32",
            "dbl_n:Float64",
            "price:Decimal128(12, 2)",
            "title:Utf8",
            "code:Utf8",
            "active:Boolean",
            "born:Date32",
            "seen_at:Timestamp(µs)",
            "paid_at:Timestamp(µs, \"UTC\")",
            "uid:Utf8",
            "doc:Utf8"
        ]
    );
    assert_eq!(
        source.location(),
        format!("postgres://127.0.0.1:{}/postgres", pg.port)
    );

    let r = run_async(&w, &["run"], &[("PGPASS", PASSWORD)]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Successfully validated 2 items from db"),
        "{}",
        r.stdout
    );
    let (schema, batches) = w.parquet("out/db_valid_data.parquet");
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let json = {
        let mut buf = Vec::new();
        let mut wr = arrow::json::ArrayWriter::new(&mut buf);
        wr.write(&batch).unwrap();
        wr.finish().unwrap();
        serde_json::from_slice::<serde_json::Value>(&buf).unwrap()
    };
    let first = &json[0];
    assert_eq!(first["small_n"], 1);
    assert_eq!(first["big_n"], 9000000000i64);
    assert_eq!(first["price"], 1234.5);
    assert_eq!(first["active"], true);
    assert_eq!(first["born"], "1990-05-17");
    assert!(
        first["seen_at"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-02T03:04:05.123456"),
        "{first}"
    );
    assert!(
        first["paid_at"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-02T01:04:05"),
        "{first}"
    );
    assert_eq!(first["uid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(first["doc"].as_str().unwrap()).unwrap(),
        json!({"k": [1, 2]})
    );
    let second = json[1].as_object().unwrap();
    assert_eq!(second["small_n"], 2);
    assert!(
        !second.contains_key("title") || second["title"].is_null(),
        "NULLs stay null"
    );
    assert_eq!(
        schema
            .field_with_name("paid_at")
            .unwrap()
            .data_type()
            .to_string(),
        "Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        schema
            .field_with_name("big_n")
            .unwrap()
            .data_type()
            .to_string(),
        "Int64"
    );
    assert!(!w.read("out/run_summary.json").contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_rows_stream_with_bounded_memory() {
    let pg = Pg::start();
    // ~400 MB of text in the table; reading it whole would need at least that much memory.
    pg.exec(
        "CREATE TABLE big AS SELECT i AS id, repeat(md5(i::text), 12) AS payload
         FROM generate_series(1, 1000000) AS i;",
    )
    .await;
    let w = Workdir::new();
    w.write(
        "config.json",
        config(
            &format!(r#"{{"big": {}}}"#, pg_source(&pg, "big", PASSWORD)),
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "payload": {"type": "string"}}}"#,
            r#""output_format": "parquet", "parquet": {"row_group_size": 65536},"#,
        ),
    );
    let r = run_async(&w, &["run"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = w.json("out/run_summary.json");
    assert_eq!(summary["totals"]["valid"], 1_000_000);
    let peak = summary["peak_rss_mb"].as_f64().unwrap();
    assert!(peak < 300.0, "peak RSS {peak} MiB for ~400 MB of rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_sources_with_bad_credentials_run_end_to_end() {
    let pg = Pg::start();
    pg.exec("CREATE TABLE people AS SELECT 1 AS id, 'Ann' AS name UNION ALL SELECT 2, 'Bo';")
        .await;
    let api = MockServer::start().await;
    Mock::given(path("/people"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 3, "name": "Cy"}])))
        .mount(&api)
        .await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let w = Workdir::new();
    w.write("people.csv", "id,name\n4,Di\n");
    let sources = format!(
        r#"{{"file": {{"path": "people.csv"}},
            "api": {{"url": "{}/people"}},
            "db": {},
            "db_wrong": {},
            "db_dsn": {{"postgres": {{"dsn": "host=127.0.0.1 port={} user={USER} password=${{PGPW}} dbname=postgres", "table": "people"}}}},
            "db_down": {{"postgres": {{"host": "127.0.0.1", "port": {dead_port}, "table": "people"}},
                        "credentials": {{"username": "x", "password": "y"}}}}}}"#,
        api.uri(),
        pg_source(&pg, "people", PASSWORD),
        pg_source(&pg, "people", "not-the-password"),
        pg.port,
    );
    w.write(
        "config.json",
        config(&sources, r#"{"type": "object", "required": ["id", "name"], "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}"#, ""),
    );
    let r = run_async(&w, &["run"], &[("PGPW", PASSWORD)]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Successfully validated 1 items from file")
    );
    assert!(r.stdout.contains("Successfully validated 1 items from api"));
    assert!(
        r.stdout.contains("Successfully validated 2 items from db"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Invalid credentials for db_wrong"),
        "{}",
        r.stdout
    );
    // A connection string works as well as the separate keys.
    assert!(
        r.stdout
            .contains("Successfully validated 2 items from db_dsn"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("Invalid credentials for db_down"),
        "a connection error is not a credential error"
    );
    assert!(
        r.stderr.contains("cannot connect to postgres://127.0.0.1"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("not-the-password") && !r.stderr.contains("not-the-password"));
    assert_eq!(w.json("out/db_valid_data.json")[1]["name"], "Bo");
    let summary = w.json("out/run_summary.json");
    assert_eq!(summary["totals"]["sources_failed"], 2);
    assert!(!w.read("out/run_summary.json").contains("not-the-password"));
}
