//! One error type for the whole crate.
//!
//! Row-level problems (a value that does not convert, a malformed CSV line) are *data*, carried
//! as [`crate::RowError`]s in the invalid output; they never become an [`Error`]. An
//! `Error` stops a command (config, schema) or a single source (unreadable file, bad mapping).

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a command or a source. New kinds may be added: match with a
/// wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file is missing, malformed or inconsistent.
    #[error("config {path}: {message}")]
    Config {
        /// The config file, or the key path inside it.
        path: String,
        /// What is wrong and, where possible, the valid choices.
        message: String,
    },
    /// The internal JSON Schema cannot be used.
    #[error("internal_schema: {0}")]
    Schema(String),
    /// A mapping document or one of its expressions is unusable.
    #[error("mapping for source `{source_name}`: {message}")]
    Mapping {
        /// The source whose mapping failed.
        source_name: String,
        /// What failed, naming the target field.
        message: String,
    },
    /// The language model could not produce a mapping (endpoint, status and model named).
    #[error("LLM mapping for source `{source_name}`: {message}")]
    Llm {
        /// The source being mapped.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// A source rejected its credentials (HTTP 401/403, a database authentication failure).
    #[error("source `{source_name}`: invalid credentials ({message})")]
    Credentials {
        /// The source.
        source_name: String,
        /// What the server said (never the credentials).
        message: String,
    },
    /// A source could not be read.
    #[error("source `{source_name}`: {message}")]
    Source {
        /// The source that failed.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", "renaming").
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error from DataFusion while planning or executing a source's plan.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// An error from an Arrow kernel or reader.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// An error from the Parquet writer or reader.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An error serialising or parsing JSON outside of a source's data.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The run was interrupted (Ctrl-C, SIGTERM).
    #[error("interrupted")]
    Interrupted,
    /// A stage of a source's pipeline stopped because the stage it feeds or reads from
    /// stopped; that stage's own error says why.
    #[error("a pipeline stage stopped early")]
    Closed,
    /// A broken invariant of conform itself (a bug), not a problem of the input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code this error implies: 2 for usage and configuration errors,
    /// 1 for everything that happens while running sources.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config { .. } | Error::Schema(_) => 2,
            _ => 1,
        }
    }

    /// Shorthand for a config error at a key path.
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a source error.
    pub fn source(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Source {
            source_name: source_name.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a mapping error.
    pub fn mapping(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Mapping {
            source_name: source_name.into(),
            message: message.into(),
        }
    }

    /// Wraps an I/O error with the file and the action.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
