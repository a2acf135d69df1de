//! Feeding conform from memory: a DataFusion plan's output stream is the source, mapped onto
//! the demo's internal schema, validated and split, with no file in between.
//!
//! ```sh
//! cargo run --example stream -- testdata/demo/config.json
//! ```
//!
//! The config file gives the internal schema and the settings (LLM, limits, feedback); its
//! `data_sources` are not read. The rows come from a query, as they would from any
//! `SendableRecordBatchStream` of a Rust service.

#![allow(clippy::print_stdout)] // an example program reports on stdout

use std::path::PathBuf;

use conform::{Config, MapperChoice, Pipeline, StreamSource};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

#[tokio::main]
async fn main() -> conform::Result<()> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testdata/demo/config.json".into())
        .into();
    let text =
        std::fs::read_to_string(&path).map_err(|e| conform::Error::io("reading", &path, e))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let config = Config::for_data(Some(&text), Default::default(), base, &|k| {
        std::env::var(k).ok()
    })?;

    // Any plan will do: here a few rows of a CRM export, typed as a query types them.
    let ctx = SessionContext::new();
    let rows = ctx
        .sql(
            "SELECT * FROM (VALUES \
               (101, 'Ada Lovelace', 'ada@example.com', DATE '2023-01-15', 1250.0), \
               (102, 'Alan Turing', 'alan@example.org', DATE '2023-02-01', 310.5), \
               (103, '', 'not-an-email', DATE '2023-03-09', -5.0)) \
             AS t(customer_number, customer_name, email_address, signed_up_on, lifetime_value)",
        )
        .await?;
    let stream = rows.execute_stream().await?;

    let mut pipeline = Pipeline::try_new(config)?;
    pipeline.add_stream(
        "crm",
        StreamSource::from_stream(stream).with_label("crm-query"),
    )?;
    let prepared = pipeline.prepare("crm", MapperChoice::Heuristic).await?;
    for (field, m) in &prepared.document.fields {
        println!("{field} <- {}", m.expr.as_deref().unwrap_or("(unmapped)"));
    }
    let mut split = pipeline.execute(&prepared).await?;
    let (mut valid, mut invalid) = (0usize, 0usize);
    while let Some(batch) = split.next().await {
        let (good, bad) = batch?;
        valid += good.num_rows();
        for row in &bad {
            let reasons: Vec<String> = row
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or("(record)"), e.rule))
                .collect();
            println!(
                "invalid: {} row {}: {}",
                row.source_file,
                row.row,
                reasons.join(", ")
            );
        }
        invalid += bad.len();
    }
    println!("crm: {valid} valid, {invalid} invalid");
    Ok(())
}
