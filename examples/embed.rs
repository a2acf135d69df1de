//! Embedding conform in a data-platform job: run the pipeline from Rust, consume the valid rows
//! as Arrow record batches and the invalid rows with their reasons, without the CLI.
//!
//! ```sh
//! cargo run --example embed -- testdata/demo/config.json
//! ```

#![allow(clippy::print_stdout)] // an example program reports on stdout

use std::collections::BTreeMap;
use std::path::PathBuf;

use conform::{Config, MapperChoice, Pipeline};
use futures::StreamExt;

#[tokio::main]
async fn main() -> conform::Result<()> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config.json".into())
        .into();
    let pipeline = Pipeline::try_new(Config::load(&path)?)?;
    for name in pipeline.config().source_names() {
        // Mapping (pinned document or heuristic) is chosen and compiled before any data flows.
        let prepared = pipeline.prepare(&name, MapperChoice::Auto).await?;
        let mut batches = pipeline.execute(&prepared).await?;
        let (mut valid, mut invalid) = (0usize, 0usize);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(split) = batches.next().await {
            let (good, bad) = split?;
            // `good` is a RecordBatch in the target's Arrow schema: hand it to any Arrow sink.
            valid += good.num_rows();
            invalid += bad.len();
            for row in &bad {
                for e in &row.errors {
                    let field = e.field.as_deref().unwrap_or("(record)");
                    *reasons.entry(format!("{field}:{}", e.rule)).or_default() += 1;
                }
            }
        }
        println!("{name}: {valid} valid, {invalid} invalid");
        for (reason, n) in reasons {
            println!("  {reason}: {n}");
        }
    }
    Ok(())
}
