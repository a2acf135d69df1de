//! The settings of one source (`data_sources.NAME`): files, HTTP APIs, PostgreSQL queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Secret;

/// Format of a file source.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Comma-separated values with a header line (RFC 4180).
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    Json,
    /// Apache Parquet.
    Parquet,
}

impl InputFormat {
    /// Infers the format from a file name, looking through `.gz`/`.zst` suffixes.
    pub fn from_path(path: &Path) -> Option<InputFormat> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".zst"))
            .unwrap_or(&name);
        let ext = name.rsplit_once('.')?.1;
        match ext {
            "csv" | "tsv" => Some(InputFormat::Csv),
            "ndjson" | "jsonl" => Some(InputFormat::Ndjson),
            "json" => Some(InputFormat::Json),
            "parquet" | "pq" => Some(InputFormat::Parquet),
            _ => None,
        }
    }
}

/// CSV reading options of a source.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CsvOptions {
    /// Field delimiter, one ASCII character. Default `,` (`\t` for `.tsv` files).
    pub delimiter: Option<char>,
    /// Whether the first line names the columns. Default true.
    pub has_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: None,
            has_header: true,
        }
    }
}

/// How an HTTP source's pages follow one another.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Pagination {
    /// Follow the `Link: <…>; rel="next"` response header.
    Link {
        /// Stop after this many pages.
        #[schemars(range(min = 1, max = 1_000_000_000))]
        max_pages: Option<u64>,
    },
    /// `?page=1,2,…` until a short or empty page.
    Page {
        /// Query parameter of the page number. Default `page`.
        #[serde(default = "default_page_param")]
        param: String,
        /// Query parameter of the page size, if the API takes one.
        size_param: Option<String>,
        /// Page size: sent with `size_param`; a page with fewer records is the last.
        #[schemars(range(min = 1, max = 1_000_000))]
        size: Option<u64>,
        /// Stop after this many pages.
        #[schemars(range(min = 1, max = 1_000_000_000))]
        max_pages: Option<u64>,
    },
    /// `?offset=0,size,2·size,…&limit=size` until a short or empty page.
    Offset {
        /// Query parameter of the offset. Default `offset`.
        #[serde(default = "default_offset_param")]
        param: String,
        /// Query parameter of the page size. Default `limit`.
        #[serde(default = "default_limit_param")]
        size_param: String,
        /// Records per page. Default 100.
        #[serde(default = "default_page_size")]
        #[schemars(range(min = 1, max = 1_000_000))]
        size: u64,
        /// Stop after this many pages.
        #[schemars(range(min = 1, max = 1_000_000_000))]
        max_pages: Option<u64>,
    },
    /// `?cursor=…` with the next cursor read from each response body.
    Cursor {
        /// Query parameter of the cursor. Default `cursor`.
        #[serde(default = "default_cursor_param")]
        param: String,
        /// Dot path of the next cursor in the body (`meta.next_cursor`); null or absent = last.
        cursor_path: String,
        /// Stop after this many pages.
        #[schemars(range(min = 1, max = 1_000_000_000))]
        max_pages: Option<u64>,
    },
}

fn default_page_param() -> String {
    "page".into()
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_cursor_param() -> String {
    "cursor".into()
}
fn default_page_size() -> u64 {
    100
}

impl Pagination {
    /// The page limit, if any.
    pub fn max_pages(&self) -> Option<u64> {
        match self {
            Pagination::Link { max_pages }
            | Pagination::Page { max_pages, .. }
            | Pagination::Offset { max_pages, .. }
            | Pagination::Cursor { max_pages, .. } => *max_pages,
        }
    }
}

/// Request settings of an HTTP source.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Seconds before a request is abandoned (and retried). Default 30.
    #[schemars(range(min = 0.001, max = 86_400.0))]
    pub timeout_s: f64,
    /// Retries of a request on 429, 5xx, timeouts and connection errors. Default 3.
    #[schemars(range(min = 0, max = 100))]
    pub max_retries: u32,
    /// Extra request headers (not secrets: use `credentials`).
    pub headers: BTreeMap<String, String>,
    /// Follow a `Link` next page on another origin (scheme, host, port), without credentials.
    /// Default false: such a link fails the source, naming both origins.
    pub allow_cross_origin_pages: bool,
    /// Safety limit on the pages one walk requests; reaching it fails the source with a clear
    /// error (`pagination.max_pages` is the quiet, intended stop). Default 100,000.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub max_pages: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout_s: 30.0,
            max_retries: 3,
            headers: BTreeMap::new(),
            allow_cross_origin_pages: false,
            max_pages: 100_000,
        }
    }
}

/// A PostgreSQL source: a query (or a whole table) read through a server-side cursor.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Server host. Default `localhost`.
    pub host: Option<String>,
    /// Server port. Default 5432.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Database name. Default: the user name.
    pub database: Option<String>,
    /// The query whose rows are the source's records.
    pub query: Option<String>,
    /// A table (optionally `schema.table`) read whole; instead of `query`.
    pub table: Option<String>,
    /// A connection string (`host=… user=… password=…` or `postgresql://…`) instead of the
    /// separate keys; treated as a secret.
    pub dsn: Option<Secret>,
    /// Seconds to wait for a connection. Default 10.
    #[schemars(range(min = 0.001, max = 3600.0))]
    pub connect_timeout_s: Option<f64>,
}

/// One entry of `data_sources`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// File or glob pattern; relative paths are resolved against the config file's directory.
    pub path: Option<String>,
    /// An HTTP(S) JSON API returning records.
    pub url: Option<String>,
    /// Dot path of the records array in each response body (`data.items`); default: the body.
    pub records: Option<String>,
    /// How pages follow one another; absent = one request.
    pub pagination: Option<Pagination>,
    /// Request settings of an HTTP source.
    #[serde(default)]
    pub http: HttpOptions,
    /// A PostgreSQL query or table.
    pub postgres: Option<PostgresConfig>,
    /// `csv`, `ndjson`, `json` or `parquet`; inferred from the extension when absent.
    pub format: Option<InputFormat>,
    /// CSV reading options.
    #[serde(default)]
    pub csv: CsvOptions,
    /// Credentials for the source (`username`, `password`, `token`, …). Never printed.
    #[serde(default)]
    pub credentials: BTreeMap<String, Secret>,
    /// A mapping document to use for this source instead of generating one.
    pub mapping: Option<PathBuf>,
    /// What each column holds, by column name (`{"DOD": "Date of death"}`): a data
    /// dictionary the mapper weighs against the target's names and descriptions. Adds to, and
    /// wins over, descriptions the source carries itself (Parquet or Arrow field metadata
    /// `description`, `comment` or `doc`). Each is cut to 500 characters.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// Largest record, from the config's `limits.max_record_bytes`.
    #[serde(skip, default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Largest HTTP response body, from the config's `limits.max_page_bytes`.
    #[serde(skip, default = "default_max_page_bytes")]
    pub max_page_bytes: usize,
}

impl SourceConfig {
    /// Settings with nothing configured: the source's data comes from elsewhere (a cluster
    /// partition's files, an in-memory stream).
    pub fn bare(format: Option<InputFormat>) -> SourceConfig {
        SourceConfig {
            path: None,
            url: None,
            records: None,
            pagination: None,
            http: Default::default(),
            postgres: None,
            format,
            csv: Default::default(),
            credentials: Default::default(),
            mapping: None,
            descriptions: Default::default(),
            max_record_bytes: crate::limits::DEFAULT_MAX_RECORD_BYTES,
            max_page_bytes: crate::limits::DEFAULT_MAX_PAGE_BYTES,
        }
    }
}

fn default_max_page_bytes() -> usize {
    crate::limits::DEFAULT_MAX_PAGE_BYTES
}

fn default_max_record_bytes() -> usize {
    crate::limits::DEFAULT_MAX_RECORD_BYTES
}
