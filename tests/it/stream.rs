//! In-memory sources through the library: a DataFusion plan's stream and hand-built batches of
//! every kind of Arrow type go through mapping, validation and the split as files do; a
//! document made once maps later partitions without a mapper; a stream is read once.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Decimal128Array, DictionaryArray, Int32Array, LargeStringArray, ListBuilder,
    RecordBatch, StringArray, StringBuilder, StringViewArray, StructArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use conform::{Config, MapperChoice, Pipeline, StreamSource};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use futures::StreamExt;
use serde_json::json;

fn demo_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/demo"))
}

/// The split of a prepared source: valid rows, and the invalid rows' (file, row) positions.
async fn split(p: &Pipeline, name: &str, choice: MapperChoice) -> (usize, Vec<(String, u64)>) {
    let prepared = p.prepare(name, choice).await.unwrap();
    let mut s = p.execute(&prepared).await.unwrap();
    let (mut valid, mut invalid) = (0, Vec::new());
    while let Some(b) = s.next().await {
        let (good, bad) = b.unwrap();
        valid += good.num_rows();
        invalid.extend(bad.iter().map(|r| (r.source_file.clone(), r.row)));
    }
    (valid, invalid)
}

/// A CRM export with rows that break the demo schema's rules in several ways (shared with the
/// Python tests).
const CRM: &str = include_str!("../../testdata/stream/crm.csv");

#[tokio::test(flavor = "multi_thread")]
async fn a_query_stream_splits_as_its_file_does() {
    let w = crate::harness::Workdir::new();
    w.write("crm.csv", CRM);
    let schema = std::fs::read_to_string(demo_dir().join("config.json")).unwrap();
    let schema = &schema[schema.find("\"internal_schema\"").unwrap()..];
    let config = format!(
        "{{\"output_directory\": \"out\", \"data_sources\": {{\"crm\": {{\"path\": \"crm.csv\"}}}}, {schema}"
    );
    // The file run.
    let file = Pipeline::try_new(Config::from_str_with_env(&config, w.path(), &|_| None).unwrap())
        .unwrap();
    let (file_valid, file_invalid) = split(&file, "crm", MapperChoice::Heuristic).await;
    assert_eq!((file_valid, file_invalid.len()), (4, 3), "{file_invalid:?}");

    // The same rows, typed by DataFusion's CSV inference (the ids become integers, the
    // mixed date column stays text), as a plan's stream: the same rows are valid.
    let ctx = SessionContext::new();
    let df = ctx
        .read_csv(w.join("crm.csv").to_str().unwrap(), CsvReadOptions::new())
        .await
        .unwrap();
    let stream = df.execute_stream().await.unwrap();
    assert_eq!(stream.schema().field(0).data_type(), &DataType::Int64);
    let mut p = Pipeline::try_new(
        Config::for_data(Some(&config), Default::default(), w.path(), &|_| None).unwrap(),
    )
    .unwrap();
    p.add_stream(
        "crm",
        StreamSource::from_stream(stream).with_label("crm-query"),
    )
    .unwrap();
    let (valid, invalid) = split(&p, "crm", MapperChoice::Heuristic).await;
    assert_eq!(valid, file_valid);
    let rows = |v: &[(String, u64)]| v.iter().map(|(_, r)| *r).collect::<Vec<_>>();
    assert_eq!(rows(&invalid), rows(&file_invalid));
    assert!(invalid.iter().all(|(f, _)| f == "crm-query"), "{invalid:?}");
}

/// One row of every kind of column a job hands over, and a second row whose values break
/// the schema's rules.
fn typed_batch() -> RecordBatch {
    let id = Decimal128Array::from(vec![Some(7), Some(8)])
        .with_precision_and_scale(10, 0)
        .unwrap();
    let amount = Decimal128Array::from(vec![Some(1999), Some(-250)])
        .with_precision_and_scale(12, 2)
        .unwrap();
    let name = DictionaryArray::<Int32Type>::try_new(
        Int32Array::from(vec![0, 1]),
        Arc::new(StringArray::from(vec!["Ada Lovelace", ""])),
    )
    .unwrap();
    let city = StringViewArray::from(vec!["London", "Paris"]);
    let notes = LargeStringArray::from(vec![Some("first order"), None]);
    let seen = TimestampMicrosecondArray::from(vec![1_700_000_000_000_000, 1_700_000_100_000_000])
        .with_timezone("Europe/Paris");
    let street = Arc::new(StringArray::from(vec!["1 High St", "2 Rue X"])) as ArrayRef;
    let zip = Arc::new(StringArray::from(vec!["N1 9GU", "75001"])) as ArrayRef;
    let address = StructArray::from(vec![
        (Arc::new(Field::new("street", DataType::Utf8, true)), street),
        (Arc::new(Field::new("zip", DataType::Utf8, true)), zip),
    ]);
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("vip");
    tags.values().append_value("eu");
    tags.append(true);
    tags.append(true);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id),
        Arc::new(name),
        Arc::new(city),
        Arc::new(notes),
        Arc::new(seen),
        Arc::new(address),
        Arc::new(tags.finish()),
        Arc::new(amount),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .zip([
                "id", "name", "city", "notes", "seen_at", "address", "tags", "amount",
            ])
            .map(|(c, n)| Field::new(n, c.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

fn typed_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string", "minLength": 1},
            "city": {"type": "string"},
            "notes": {"type": ["string", "null"]},
            "seen_at": {"type": "string", "format": "date-time"},
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "amount": {"type": "number", "minimum": 0}
        }
    })
}

fn typed_pipeline(out: &Path) -> Pipeline {
    let mut over = serde_json::Map::new();
    over.insert("internal_schema".into(), typed_schema());
    over.insert("output_directory".into(), json!(out));
    let config = Config::for_data(None, over, out, &|_| None).unwrap();
    Pipeline::try_new(config).unwrap()
}

fn reader(batches: Vec<RecordBatch>) -> StreamSource {
    let schema: SchemaRef = batches[0].schema();
    StreamSource::new(schema, Box::new(batches.into_iter().map(Ok)))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_arrow_column_is_mapped_and_validated() {
    let w = crate::harness::Workdir::new();
    let mut p = typed_pipeline(w.path());
    p.add_stream("typed", reader(vec![typed_batch()])).unwrap();
    let prepared = p.prepare("typed", MapperChoice::Heuristic).await.unwrap();
    for (field, m) in &prepared.document.fields {
        assert!(m.expr.is_some(), "{field} is unmapped: {m:?}");
    }
    let mut s = p.execute(&prepared).await.unwrap();
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    while let Some(b) = s.next().await {
        let (good, bad) = b.unwrap();
        valid.push(good);
        invalid.extend(bad);
    }
    let valid = arrow::compute::concat_batches(&valid[0].schema(), &valid).unwrap();
    assert_eq!(valid.num_rows(), 1, "{invalid:?}");
    let col = |n: &str| valid.column_by_name(n).unwrap();
    assert_eq!(
        col("id")
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        7
    );
    assert_eq!(col("name").as_string::<i32>().value(0), "Ada Lovelace");
    assert_eq!(col("city").as_string::<i32>().value(0), "London");
    assert_eq!(col("notes").as_string::<i32>().value(0), "first order");
    assert_eq!(
        col("amount")
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        19.99
    );
    let seen = arrow::util::display::array_value_to_string(col("seen_at"), 0).unwrap();
    assert!(seen.starts_with("2023-11-14T22:13:20"), "{seen}");
    let address = col("address").as_struct();
    assert_eq!(
        address
            .column_by_name("zip")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "N1 9GU"
    );
    let tags = col("tags").as_list::<i32>().value(0);
    assert_eq!(tags.as_string::<i32>().value(1), "eu");

    // The second row breaks two rules, reported with the row's position in the stream.
    assert_eq!(invalid.len(), 1);
    let bad = &invalid[0];
    assert_eq!((bad.source_file.as_str(), bad.row), ("<memory>", 2));
    let mut rules: Vec<_> = bad
        .errors
        .iter()
        .map(|e| format!("{}:{}", e.field.as_deref().unwrap_or(""), e.rule))
        .collect();
    rules.sort();
    assert_eq!(rules, ["amount:minimum", "name:required"], "{bad:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_made_once_maps_later_partitions_and_names_missing_columns() {
    let w = crate::harness::Workdir::new();
    let mut first = typed_pipeline(w.path());
    first
        .add_stream("part", reader(vec![typed_batch()]))
        .unwrap();
    let mut doc = first
        .prepare("part", MapperChoice::Heuristic)
        .await
        .unwrap()
        .document;
    doc.pinned = true;

    // A later partition with the same columns: the document is used as it is (`File` would
    // fail if a mapper were needed).
    for _ in 0..2 {
        let mut p = typed_pipeline(w.path()).with_document("part", doc.clone());
        p.add_stream("part", reader(vec![typed_batch(), typed_batch()]))
            .unwrap();
        let prepared = p.prepare("part", MapperChoice::File).await.unwrap();
        assert_eq!(prepared.document, doc);
        let (valid, invalid) = split(&p, "part", MapperChoice::File).await;
        assert_eq!((valid, invalid.len()), (2, 2));
        assert_eq!(
            invalid[1].1, 4,
            "rows are numbered across the stream's batches"
        );
    }

    // A partition that lost two columns the document reads.
    let b = typed_batch();
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|i| !["city", "amount"].contains(&b.schema().field(*i).name().as_str()))
        .collect();
    let narrower = b.project(&keep).unwrap();
    let mut p = typed_pipeline(w.path()).with_document("part", doc.clone());
    p.add_stream("part", reader(vec![narrower])).unwrap();
    let e = p
        .prepare("part", MapperChoice::Auto)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`city`") && e.contains("`amount`"), "{e}");
    assert!(e.contains("no column"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_read_once_and_a_failing_stream_keeps_its_rows() {
    let w = crate::harness::Workdir::new();
    let mut p = typed_pipeline(w.path());
    let batches = vec![
        Ok(typed_batch()),
        Err(arrow::error::ArrowError::ComputeError(
            "the upstream job was cancelled".into(),
        )),
    ];
    p.add_stream(
        "s",
        StreamSource::new(typed_batch().schema(), Box::new(batches.into_iter())),
    )
    .unwrap();
    let prepared = p.prepare("s", MapperChoice::Heuristic).await.unwrap();
    let mut s = p.execute(&prepared).await.unwrap();
    let (good, bad) = s.next().await.unwrap().unwrap();
    assert_eq!((good.num_rows(), bad.len()), (1, 1));
    let e = s.next().await.unwrap().unwrap_err().to_string();
    assert!(
        e.contains("after 2 rows") && e.contains("the upstream job was cancelled"),
        "{e}"
    );
    assert!(s.next().await.is_none());
    let again = match p.execute(&prepared).await {
        Ok(mut s) => s.next().await.unwrap().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(again.contains("read only once"), "{again}");

    // A name that is not a source name, or is taken, is refused.
    let e = p
        .add_stream("s", reader(vec![typed_batch()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data_sources.s"), "{e}");
    let e = p
        .add_stream("bad name!", reader(vec![typed_batch()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad name!"), "{e}");
}
