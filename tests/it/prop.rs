//! Properties: whatever bytes a CSV or NDJSON file holds, every record comes out exactly once,
//! valid or invalid; whatever expression a mapping holds, compiling and evaluating it never
//! panics.

use proptest::prelude::*;

use conform::{Config, MapperChoice, Pipeline};
use futures::StreamExt;

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9]{1,4}",
        "-?[0-9]{1,3}\\.[0-9]{1,2}",
        "[a-zA-Z ]{0,8}",
        Just("N/A".to_string()),
        Just("\"quoted, with comma\"".to_string()),
        Just("é😀".to_string()),
        Just("2023-02-30".to_string()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    // 1 to 5 cells: the header has 3, so some lines are short or long (malformed).
    prop::collection::vec(cell(), 1..5).prop_map(|cells| cells.join(","))
}

fn count_rows(csv: impl AsRef<[u8]>) -> (u64, u64) {
    count_rows_in("p.csv", csv.as_ref())
}

fn count_rows_in(file: &str, contents: &[u8]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), contents).unwrap();
    let text = r#"{"output_directory": "out", "batch_size": 3, "data_sources": {"p": {"path": "FILE"}},
        "internal_schema": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer", "minimum": 0}, "amount": {"type": "number"}, "when": {"type": "string", "format": "date"}}}}"#;
    let text = text.replace("FILE", file);
    let config = Config::from_str_with_env(&text, dir.path(), &|_| None).unwrap();
    let pipeline = Pipeline::try_new(config).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prepared = pipeline
            .prepare("p", MapperChoice::Heuristic)
            .await
            .unwrap();
        let mut s = pipeline.execute(&prepared).await.unwrap();
        let (mut valid, mut invalid) = (0, 0);
        while let Some(split) = s.next().await {
            let (v, bad) = split.unwrap();
            valid += v.num_rows() as u64;
            invalid += bad.len() as u64;
            assert!(
                bad.iter().all(|b| !b.errors.is_empty()),
                "an invalid row always says why"
            );
        }
        (valid, invalid)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn rows_read_equal_valid_plus_invalid(lines in prop::collection::vec(line(), 0..20)) {
        let mut csv = String::from("id,amount,when\n");
        for l in &lines {
            csv.push_str(l);
            csv.push('\n');
        }
        // The oracle: the csv crate's own count of records after the header.
        let records = csv::ReaderBuilder::new().flexible(true).from_reader(csv.as_bytes()).records().count() as u64;
        let (valid, invalid) = count_rows(&csv);
        prop_assert_eq!(valid + invalid, records);
    }
}

/// A JSON value of random shape; `deep` wraps it in that many arrays or objects.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9 ]{0,6}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_line() -> impl Strategy<Value = String> {
    (json_value(), 0usize..700, any::<bool>(), any::<bool>()).prop_map(
        |(v, deep, arrays, object)| {
            let mut text = v.to_string();
            if deep > 400 {
                text = if arrays {
                    format!("{}{text}{}", "[".repeat(deep), "]".repeat(deep))
                } else {
                    format!("{}{text}{}", "{\"a\":".repeat(deep), "}".repeat(deep))
                };
            }
            if object {
                format!("{{\"id\": {text}, \"amount\": 1}}")
            } else {
                text
            }
        },
    )
}

/// Expression text from the allow-list's functions, columns, literals and operators: valid
/// or not, it must compile or be refused, and evaluate without a panic.
fn expression() -> impl Strategy<Value = String> {
    let funcs: Vec<&'static str> = conform::mapping::compile::ALLOWED_FUNCTIONS.to_vec();
    let atom = prop_oneof![
        Just("\"a\"".to_string()),
        Just("\"b\"".to_string()),
        Just("'('".to_string()),
        Just("'2024-13-45'".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("0".to_string()),
        Just("300000000".to_string()),
        Just("NULL".to_string()),
        "-?[0-9]{1,3}".prop_map(|s| s),
        "'[a-z%(]{0,4}'".prop_map(|s| s),
    ];
    atom.prop_recursive(4, 32, 3, move |inner| {
        let funcs = funcs.clone();
        prop_oneof![
            (
                prop::sample::select(funcs),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%", "||", "=", "<"]),
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            (
                inner.clone(),
                prop::sample::select(vec![
                    "BIGINT",
                    "INT",
                    "DOUBLE",
                    "DATE",
                    "DECIMAL(5, 2)",
                    "VARCHAR"
                ])
            )
                .prop_map(|(e, t)| format!("CAST({e} AS {t})")),
        ]
    })
}

/// Two text columns `a` and `b` of hostile values, one row per pair.
fn hostile_batch(
    a: &[Option<&str>],
    b: &[Option<&str>],
) -> (arrow::datatypes::Schema, arrow::array::RecordBatch) {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Schema::new(vec![
        Field::new("a", DataType::Utf8, true),
        Field::new("b", DataType::Utf8, true),
    ]);
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(schema.clone()),
        vec![
            std::sync::Arc::new(StringArray::from(a.to_vec())),
            std::sync::Arc::new(StringArray::from(b.to_vec())),
        ],
    )
    .unwrap();
    (schema, batch)
}

fn evaluate(text: &str) {
    use arrow::datatypes::DataType;
    let (schema, batch) = hostile_batch(
        &[Some("12"), Some("("), None, Some("-9223372036854775808")],
        &[Some("2024-01-31"), Some("x"), Some(""), None],
    );
    let ctx = conform::mapping::compile::session();
    for target in [
        DataType::Utf8,
        DataType::Int64,
        DataType::Float64,
        DataType::Date32,
    ] {
        let Ok(f) =
            conform::mapping::compile::compile_field(&ctx, &schema, "t", &target, Some(text))
        else {
            continue;
        };
        let df_schema = datafusion::common::DFSchema::try_from(schema.clone()).unwrap();
        let physical = ctx
            .state()
            .create_physical_expr(f.expr, &df_schema)
            .unwrap();
        if let Ok(v) = physical.evaluate(&batch) {
            assert_eq!(v.into_array(4).unwrap().len(), 4);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn random_csv_bytes_conserve_rows(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut csv = b"id,amount,when\n".to_vec();
        csv.extend_from_slice(&bytes);
        let records = csv::ReaderBuilder::new().flexible(true).from_reader(csv.as_slice()).byte_records().count() as u64;
        let (valid, invalid) = count_rows(&csv);
        prop_assert_eq!(valid + invalid, records);
    }

    #[test]
    fn random_nested_json_conserves_rows(lines in prop::collection::vec(json_line(), 1..8)) {
        // The first line is an object, so there are columns to infer.
        let text = format!("{{\"id\": 1}}\n{}", lines.join("\n"));
        let (valid, invalid) = count_rows_in("p.ndjson", text.as_bytes());
        prop_assert_eq!(valid + invalid, lines.len() as u64 + 1);
    }

    #[test]
    fn random_expressions_never_panic(text in expression()) {
        evaluate(&text);
    }
}

/// Every allow-listed function, called with hostile arguments of every arity it might take,
/// either is refused when the mapping compiles or evaluates without failing the batch: one bad
/// value makes a row invalid, never the whole batch.
#[test]
fn every_allowed_function_survives_hostile_arguments() {
    use arrow::datatypes::DataType;
    let (schema, batch) = hostile_batch(
        &[
            Some("12"),
            Some("("),
            None,
            Some("-9223372036854775808"),
            Some("2024-02-30"),
        ],
        &[
            Some("%Y-%m-%d"),
            Some("x"),
            Some(""),
            None,
            Some("300000000"),
        ],
    );
    let args = [
        "\"a\"",
        "\"b\"",
        "'('",
        "0",
        "-9223372036854775808",
        "300000000",
        "NULL",
        "'2024-13-45'",
        "CAST(\"a\" AS BIGINT)",
    ];
    let ctx = conform::mapping::compile::session();
    let mut calls = vec![];
    for f in conform::mapping::compile::ALLOWED_FUNCTIONS {
        calls.push(format!("{f}()"));
        for x in args {
            calls.push(format!("{f}({x})"));
            for y in args {
                calls.push(format!("{f}({x}, {y})"));
            }
            calls.push(format!("{f}({x}, \"b\", 300000000)"));
            calls.push(format!("{f}(\"a\", {x}, \"b\")"));
        }
    }
    // Evaluated as the pipeline does: a plan through DataFusion's optimizer (which, for
    // example, turns `coalesce` into CASE), over a batch of hostile values.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut compiled = 0;
    for text in &calls {
        for target in [DataType::Utf8, DataType::Int64] {
            let Ok(f) =
                conform::mapping::compile::compile_field(&ctx, &schema, "t", &target, Some(text))
            else {
                continue;
            };
            compiled += 1;
            let out = rt.block_on(async {
                ctx.read_batch(batch.clone())?
                    .select(vec![f.expr])?
                    .collect()
                    .await
            });
            assert!(
                out.is_ok(),
                "`{text}` as {target} failed the batch: {:?}",
                out.err()
            );
            let rows: usize = out.unwrap().iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 5, "{text}");
        }
    }
    assert!(compiled > 500, "only {compiled} calls compiled");
}
