//! conform reads records from differently shaped sources and conforms them to one internal
//! JSON Schema.
//!
//! Every source is read as a stream of Arrow record batches (`source`); a [`mapping`] — one SQL
//! expression per target field, proposed by a mapper and reviewable as a JSON document — is
//! compiled once into DataFusion expressions with try-semantics; the JSON Schema is compiled once
//! into vectorized checks (`validate`); `plan` puts scan, mapping and checks into one
//! DataFusion plan; each output batch is split into valid rows (columnar, written as JSON,
//! NDJSON or Parquet by `sink`) and invalid rows with their reasons. For every source,
//! rows read = valid + invalid: bad data is data, never a crash. `anomaly` profiles the valid
//! rows of each run and flags outliers and drift against the source's earlier runs.
//!
//! ```no_run
//! # async fn demo() -> conform::Result<()> {
//! use conform::{Config, MapperChoice, Pipeline};
//! use futures::StreamExt;
//!
//! let config = Config::load(std::path::Path::new("config.json"))?;
//! let pipeline = Pipeline::try_new(config)?;
//! let prepared = pipeline.prepare("source1", MapperChoice::Auto).await?;
//! let mut batches = pipeline.execute(&prepared).await?;
//! while let Some(split) = batches.next().await {
//!     let (valid, invalid) = split?;
//!     println!("{} valid rows, {} invalid rows", valid.num_rows(), invalid.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The public API is what this page lists: the re-exported types, and the modules a program
//! needs to configure a run, review its mappings and read its summary. Readers, the plan, the
//! checks, the split, the matchers, the LLM client and the anomaly monitor are crate-private.

#![warn(missing_docs)]

pub(crate) mod anomaly;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod config;
pub mod error;
pub(crate) mod format;
pub(crate) mod fs;
pub(crate) mod functions;
pub(crate) mod limits;
pub mod mapping;
pub(crate) mod net;
pub mod pipeline;
pub(crate) mod plan;
pub mod review;
pub mod schema;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod split;
pub(crate) mod sql;
pub mod store;
pub mod summary;
pub(crate) mod validate;

pub use config::Config;
pub use error::{Error, Result};
pub use fs::wait_for_open_outputs;
pub use mapping::MappingDocument;
pub use pipeline::{MapperChoice, Pipeline, PreparedSource, SourceReport, SplitBatch, SplitStream};
pub use schema::TargetSchema;
pub use sink::{InvalidSink, ValidSink};
pub use source::stream::{BatchIterator, StreamSource};
pub use validate::report::{InvalidRow, Record, RowError};

/// Tells the library that the process is stopping on a signal (Ctrl-C, SIGTERM): requests that
/// fail from then on are the shutdown's doing, and are neither retried nor reported as failures.
pub fn stop_requested() {
    net::set_stopping();
}
