//! The run configuration: the original tool's `config.json`, extended.
//!
//! Loading is strict: unknown keys are errors reported with their full path, `${VAR}` in any
//! string is replaced from the environment (a missing variable is an error naming it), and
//! `//`/`/* */` comments and trailing commas are accepted.

mod checks;
mod llm;
pub mod reference;
mod secret;
mod sources;
mod storage;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub(crate) use checks::check_source_name;
use checks::{duplicate_keys, interpolate};
pub use llm::{LlmConfig, LlmFallback, TokenPrice};
pub use secret::Secret;
pub use sources::{CsvOptions, HttpOptions, InputFormat, Pagination, PostgresConfig, SourceConfig};

use crate::error::{Error, Result};

/// Format of the valid-rows output file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON array per file (the original tool's output). Default.
    #[default]
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet, zstd-compressed. Invalid rows are then written as NDJSON.
    Parquet,
    /// Delta Lake tables `NAME_valid` and `NAME_invalid`, one commit to each per run (see
    /// `delta`). Needs the `delta` cargo feature (on by default).
    Delta,
}

impl OutputFormat {
    /// File extension of the valid-rows file.
    pub fn valid_extension(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet | OutputFormat::Delta => "parquet",
        }
    }

    /// File extension of the invalid-rows file (Parquet runs write NDJSON; Delta tables hold
    /// Parquet files).
    pub fn invalid_extension(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Ndjson | OutputFormat::Parquet => "ndjson",
            OutputFormat::Delta => "parquet",
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(OutputFormat::Json),
            "ndjson" => Ok(OutputFormat::Ndjson),
            "parquet" => Ok(OutputFormat::Parquet),
            "delta" => Ok(OutputFormat::Delta),
            other => Err(format!(
                "unknown output format `{other}`; valid formats are `json`, `ndjson`, `parquet`, `delta`"
            )),
        }
    }
}

/// Parquet output settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetOptions {
    /// Maximum rows per row group. Default 1,048,576. Smaller groups bound the writer's memory.
    #[schemars(range(min = 1, max = 64 * 1024 * 1024))]
    pub row_group_size: usize,
    /// zstd compression level, 1–22. Default 3.
    #[schemars(range(min = 1, max = 22))]
    pub zstd_level: i32,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            row_group_size: 1024 * 1024,
            zstd_level: 3,
        }
    }
}

/// The feedback loop that validates a new mapping on a probe and repairs it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Run the loop for newly generated mappings. Default true.
    pub enabled: bool,
    /// Rows the mapping is validated on. Default 10,000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub probe_rows: usize,
    /// Invalid share above which repairs are tried. Default 0.02.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_invalid_ratio: f64,
    /// Rounds at most. Default 3.
    #[schemars(range(min = 0, max = 20))]
    pub max_rounds: u32,
    /// A mapped field that is null after conversion in more than this share of the probe rows
    /// although its source columns have values there triggers repairs too. Default 0.5.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_null_ratio: f64,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: true,
            probe_rows: 10_000,
            max_invalid_ratio: 0.02,
            max_rounds: 3,
            max_null_ratio: 0.5,
        }
    }
}

/// Profiles of the valid output and the anomaly flags raised on them.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Profile every run's valid output and flag anomalies. Default true.
    pub enabled: bool,
    /// Add a `_anomalies` list column to the valid output naming the rules each row tripped.
    /// Default false.
    pub flag_rows: bool,
    /// A number is an outlier when its robust z-score, 0.6745·|x − median| / MAD, exceeds
    /// this. Default 3.5.
    #[schemars(range(min = 0.0, max = 1e6))]
    pub outlier_threshold: f64,
    /// Valid rows the median and MAD are taken from on a source's first run. Default 10,000.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub reference_rows: usize,
    /// Earlier runs of the same source that drift and new values are measured against.
    /// Default 5.
    #[schemars(range(min = 1, max = 1000))]
    pub history_runs: usize,
    /// Largest change of a column's null share (absolute, 0–1) that is not drift. Default 0.1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_null_share_change: f64,
    /// Largest change of a numeric column's mean, in standard deviations of the earlier runs,
    /// that is not drift. Default 0.5.
    #[schemars(range(min = 0.0, max = 1e6))]
    pub max_mean_shift: f64,
    /// A text or boolean column with at most this many distinct values is a category column:
    /// its value set is compared across runs. Default 20.
    #[schemars(range(min = 1, max = 100_000))]
    pub max_categories: usize,
    /// Largest total-variation distance between a category column's value shares and the
    /// previous run's that is not drift (0–1). Default 0.2.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_category_shift: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            flag_rows: false,
            outlier_threshold: 3.5,
            reference_rows: 10_000,
            history_runs: 5,
            max_null_share_change: 0.1,
            max_mean_shift: 0.5,
            max_categories: 20,
            max_category_shift: 0.2,
        }
    }
}

/// Where plans run.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// A Ballista scheduler, `df://HOST:PORT`: file sources run on that cluster (`--cluster`
    /// overrides). Absent: everything runs in this process.
    pub cluster: Option<String>,
    /// On a cluster, uncompressed CSV files larger than this many MiB are cut into pieces of
    /// about this size (at record boundaries), each a partition. Default 128.
    #[schemars(range(min = 0.001, max = 1_048_576.0))]
    pub partition_mb: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cluster: None,
            partition_mb: 128.0,
        }
    }
}

/// How a run's rows enter an existing Delta table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    /// Each run adds its rows. Default.
    #[default]
    Append,
    /// Each run replaces the table's rows (earlier versions stay readable until vacuumed).
    Overwrite,
}

/// What a run does when the internal schema and an existing table's schema differ.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeltaSchemaMode {
    /// A field new to the table and optional in the schema is added to the table by the
    /// run's commit. Default. A changed type, a field the table requires that the schema no
    /// longer has, or a new required field still fail the source.
    #[default]
    Evolve,
    /// Any difference fails the source before anything is written.
    Freeze,
}

/// Delta Lake output settings (`output_format: "delta"`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeltaOptions {
    /// `append` (default) or `overwrite`: how each run's commit treats the rows already in
    /// the tables.
    pub mode: DeltaMode,
    /// Top-level fields of `internal_schema` (string, integer, boolean or date) the valid
    /// table is partitioned by, in directory order. Fixed when the table is created.
    pub partition_by: Vec<String>,
    /// `evolve` (default) or `freeze`: the schema contract with an existing table.
    pub schema: DeltaSchemaMode,
}

/// Limits on input sizes.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest record (a CSV record, a JSON line or array element) in bytes; a longer record is
    /// a malformed row whose values are not kept, and is never held in memory whole.
    /// Default 16 MiB.
    #[schemars(range(min = 1024, max = 2 * 1024 * 1024 * 1024_u64))]
    pub max_record_bytes: usize,
    /// Largest HTTP response body in bytes; a larger page fails its source, and is never held
    /// in memory whole. Default 256 MiB.
    #[schemars(range(min = 1024, max = 16 * 1024 * 1024 * 1024_u64))]
    pub max_page_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: crate::limits::DEFAULT_MAX_RECORD_BYTES,
            max_page_bytes: crate::limits::DEFAULT_MAX_PAGE_BYTES,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for all outputs; created if missing. Relative to the config file.
    pub output_directory: PathBuf,
    /// Format of the valid-rows files: `json` (default), `ndjson`, `parquet`, or `delta`
    /// (Delta Lake tables for valid and invalid rows).
    #[serde(default)]
    pub output_format: OutputFormat,
    /// Where mapping documents are read and written. Default `<output_directory>/mappings`.
    pub mappings_dir: Option<PathBuf>,
    /// A mapping newly generated by the offline matcher leaves a field unmapped when its
    /// confidence is below this; the field's best column is then its first candidate, for
    /// review (`conform map` lists such undecided fields first). The matcher's confidence is
    /// calibrated for the target's width: the chance that the pair is right, so one value
    /// means the same on a 5-field and a 700-field target (0.5: as likely right as wrong). A
    /// model's own confidence is on no common scale, so LLM answers are kept field by field;
    /// column by column (targets wider than `llm.by_column_above`) a model's pick carries the
    /// matcher's confidence of that pair, and is held below this like the matcher's own (and
    /// below the matcher's acceptance of the pair's evidence, whatever this is). On a
    /// target of up to 22 fields the matcher proposes nothing below 0.5, so a lower value
    /// holds nothing more there (a value other than the default says so in a warning).
    /// `--min-confidence` overrides it for one run. Default 0.2: the best
    /// F1 on the tuned groups (narrow targets are the same from 0 to 0.5; see
    /// docs/mapping.md).
    #[serde(default = "default_min_confidence")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_confidence: f64,
    /// Rows per Arrow record batch. Default 8192.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = crate::limits::MAX_BATCH_ROWS))]
    pub batch_size: usize,
    /// Parquet output settings (also the Delta tables' data files).
    #[serde(default)]
    pub parquet: ParquetOptions,
    /// Delta Lake output settings, for `output_format: "delta"`.
    #[serde(default)]
    pub delta: DeltaOptions,
    /// Sources processed at once. Default: the number of cores.
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_sources: Option<usize>,
    /// The language model that proposes mappings.
    #[serde(default)]
    pub llm: LlmConfig,
    /// Validate new mappings on a probe and repair them.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// Profiles of the valid output and anomaly flags.
    #[serde(default)]
    pub anomalies: AnomalyConfig,
    /// Where plans run (locally, or on a Ballista cluster).
    #[serde(default)]
    pub engine: EngineConfig,
    /// Limits on input sizes.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Object-store settings by URL prefix (`s3://bucket`): `endpoint`, `region`,
    /// `allow_http`, credentials (`access_key_id`, `secret_access_key`, …). Values are never
    /// printed. Each cloud's standard environment variables apply beneath them.
    #[serde(default, deserialize_with = "storage::deserialize")]
    #[schemars(
        with = "std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>"
    )]
    pub storage: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Secret>>,
    /// The sources, in the order they are processed. Filled from the JSON object in order.
    #[serde(skip)]
    pub data_sources: Vec<(String, SourceConfig)>,
    /// The target JSON Schema.
    pub internal_schema: Value,
    /// Directory of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `min_confidence` when the configuration does not set it.
pub(crate) fn default_min_confidence() -> f64 {
    0.2
}

fn default_batch_size() -> usize {
    8192
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let (text, base) = Config::read(path)?;
        Config::from_str_with_env(&text, &base, &|k| std::env::var(k).ok()).map_err(|e| match e {
            Error::Config { path: p, message } => Error::config(
                format!(
                    "{}{}",
                    path.display(),
                    if p.is_empty() {
                        String::new()
                    } else {
                        format!(" at `{p}`")
                    }
                ),
                message,
            ),
            other => other,
        })
    }

    /// Parses config text; `env` resolves `${VAR}` references; `base_dir` anchors relative paths.
    pub fn from_str_with_env(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        Config::from_value(parse_text(text)?, base_dir, env, true)
    }

    /// A config file's text and the directory its relative paths resolve against.
    pub fn read(path: &Path) -> Result<(String, PathBuf)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                path.display().to_string(),
                format!("cannot read the file: {e}"),
            )
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((text, base))
    }

    /// Settings for data the caller hands over in memory (an Arrow stream) rather than names
    /// in `data_sources`: the config text, if any, with `overrides` replacing its top-level
    /// keys (`internal_schema`, `llm`, `limits`, …). Its `data_sources` are left out (the
    /// caller adds its streams with [`Pipeline::add_stream`](crate::Pipeline::add_stream)),
    /// and `output_directory` defaults to `base_dir`.
    pub fn for_data(
        text: Option<&str>,
        overrides: serde_json::Map<String, Value>,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let value = match text {
            Some(t) => parse_text(t)?,
            None => Value::Object(Default::default()),
        };
        let Value::Object(mut top) = value else {
            return Err(Error::config("", "the top level must be a JSON object"));
        };
        top.extend(overrides);
        top.entry("output_directory").or_insert_with(|| ".".into());
        // The data is the caller's: sources configured for the command line are not read.
        top.insert("data_sources".into(), Value::Object(Default::default()));
        Config::from_value(Value::Object(top), base_dir, env, false)
    }

    fn from_value(
        mut value: Value,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        sources_required: bool,
    ) -> Result<Config> {
        interpolate(&mut value, "", env)?;
        reference::check_ranges(&value)?;
        let Value::Object(mut top) = value else {
            return Err(Error::config("", "the top level must be a JSON object"));
        };
        let sources = top
            .remove("data_sources")
            .ok_or_else(|| Error::config("data_sources", "missing required key"))?;
        if !top.contains_key("internal_schema") {
            return Err(Error::config("internal_schema", "missing required key"));
        }
        let mut config: Config = deserialize_at("", Value::Object(top))?;
        let Value::Object(sources) = sources else {
            return Err(Error::config(
                "data_sources",
                "must be an object of source name → source settings",
            ));
        };
        if sources.is_empty() && sources_required {
            return Err(Error::config(
                "data_sources",
                "no sources: add at least one source",
            ));
        }
        for (name, v) in sources {
            check_source_name(&name)?;
            let mut src: SourceConfig = deserialize_at(&format!("data_sources.{name}"), v)?;
            src.max_record_bytes = config.limits.max_record_bytes;
            src.max_page_bytes = config.limits.max_page_bytes;
            let at = format!("data_sources.{name}");
            let kinds = [
                src.path.is_some(),
                src.url.is_some(),
                src.postgres.is_some(),
            ]
            .iter()
            .filter(|k| **k)
            .count();
            if kinds != 1 {
                return Err(Error::config(
                    at,
                    "a source needs exactly one of `path` (a file or glob pattern), `url` (an HTTP JSON API) or `postgres` (a database query)",
                ));
            }
            if let Some(pg) = &src.postgres
                && pg.query.is_some() == pg.table.is_some()
            {
                return Err(Error::config(
                    format!("{at}.postgres"),
                    "needs exactly one of `query` or `table`",
                ));
            }
            match (&src.path, &src.url) {
                (None, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(Error::config(
                        format!("{at}.url"),
                        "must start with http:// or https://",
                    ));
                }
                (Some(_), None) if src.pagination.is_some() || src.records.is_some() => {
                    return Err(Error::config(
                        at,
                        "`records` and `pagination` apply to `url` sources only",
                    ));
                }
                _ => {}
            }
            if let Some(d) = src.csv.delimiter
                && !d.is_ascii()
            {
                return Err(Error::config(
                    format!("{at}.csv.delimiter"),
                    format!("{d:?} is not an ASCII character; the CSV reader splits on one byte"),
                ));
            }
            config.data_sources.push((name, src));
        }
        config.llm.apply_env(env);
        config.llm.check()?;
        config.base_dir = base_dir.to_path_buf();
        Ok(config)
    }

    /// Resolves a path from the config against the config file's directory; absolute paths
    /// and object-store URLs stay as they are.
    pub fn resolve(&self, p: impl AsRef<Path>) -> PathBuf {
        crate::store::anchor(&self.base_dir, p.as_ref())
    }

    /// Hands the `storage` settings, and each object-store source's `credentials`, to the
    /// object-store clients: a source's credentials apply to the objects under its `path`
    /// (up to its first glob character), over the `storage` entry of that location.
    pub fn register_storage(&self) -> Result<()> {
        let exposed = |m: &std::collections::BTreeMap<String, Secret>| -> Vec<(String, String)> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect()
        };
        for (prefix, options) in &self.storage {
            crate::store::register(prefix, exposed(options))?;
        }
        for (name, src) in &self.data_sources {
            let Some(path) = src.path.as_deref() else {
                continue;
            };
            if src.credentials.is_empty() || !crate::store::is_remote(Path::new(path)) {
                continue;
            }
            let literal = &path[..path.find(['*', '?', '[']).unwrap_or(path.len())];
            let prefix = match literal.rfind('/') {
                Some(i) if i > literal.find("://").map_or(0, |j| j + 2) => &literal[..i],
                _ => literal,
            };
            // The storage entry this source's location falls under, then its credentials.
            let mut options: Vec<(String, String)> = self
                .storage
                .iter()
                .filter(|(p, _)| {
                    prefix
                        .strip_prefix(p.trim_end_matches('/'))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
                .max_by_key(|(p, _)| p.len())
                .map(|(_, o)| exposed(o))
                .unwrap_or_default();
            options.retain(|(k, _)| !src.credentials.contains_key(k));
            options.extend(exposed(&src.credentials));
            crate::store::register(prefix, options).map_err(|e| match e {
                Error::Config { message, .. } => {
                    Error::config(format!("data_sources.{name}.credentials"), message)
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// Sets the output directory given at run time (a command-line flag, a Python argument):
    /// a relative path is relative to the working directory, not to the config file; an
    /// absolute path or a store URL is kept as it is.
    pub fn set_output_directory(&mut self, dir: PathBuf) {
        self.output_directory = match std::env::current_dir() {
            Ok(cwd) => crate::store::anchor(&cwd, &dir),
            Err(_) => dir,
        };
    }

    /// The output directory, resolved.
    pub fn output_dir(&self) -> PathBuf {
        self.resolve(&self.output_directory)
    }

    /// Sources processed at once: `max_concurrent_sources`, else the number of cores.
    pub fn max_concurrent_sources(&self) -> usize {
        self.max_concurrent_sources
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The mapping documents' directory, resolved.
    pub fn mappings_dir(&self) -> PathBuf {
        match &self.mappings_dir {
            Some(d) => self.resolve(d),
            None => self.output_dir().join("mappings"),
        }
    }

    /// Looks up a source by name.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.data_sources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// Looks a source up by name; the error lists the valid names.
    pub fn source_or_error(&self, name: &str) -> Result<&SourceConfig> {
        self.source(name).ok_or_else(|| {
            Error::config(
                "--source",
                format!(
                    "no source named `{name}`. Valid sources are {}",
                    self.data_sources
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Names of all sources, in config order.
    pub fn source_names(&self) -> Vec<String> {
        self.data_sources.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Config text (JSON with comments and trailing commas) as a value: nesting bounded first,
/// duplicate keys refused.
fn parse_text(text: &str) -> Result<Value> {
    let opts = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_loose_object_property_names: false,
        allow_trailing_commas: true,
    };
    // The parsers and schema walks recurse: nesting is bounded before any of them runs.
    let depth = crate::limits::json_text_depth(text.as_bytes());
    if depth > crate::limits::MAX_CONFIG_DEPTH {
        return Err(Error::config(
            "",
            format!(
                "nested {depth} levels deep; a config file may nest at most {} levels",
                crate::limits::MAX_CONFIG_DEPTH
            ),
        ));
    }
    let ast = jsonc_parser::parse_to_ast(
        text,
        &jsonc_parser::CollectOptions {
            comments: jsonc_parser::CommentCollectionStrategy::Off,
            tokens: false,
        },
        &opts,
    )
    .map_err(|e| Error::config("", format!("not valid JSON: {e}")))?;
    if let Some(jsonc_parser::ast::Value::Object(top)) = &ast.value {
        duplicate_keys(top, "")?;
    }
    jsonc_parser::parse_to_serde_value(text, &opts)
        .map_err(|e| Error::config("", format!("not valid JSON: {e}")))?
        .ok_or_else(|| Error::config("", "the file is empty"))
}

/// Deserializes `value`, reporting an error with its full key path under `prefix`.
fn deserialize_at<T: serde::de::DeserializeOwned>(prefix: &str, value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        Error::config(path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let env = |k: &str| match k {
            "TOKEN" => Some("s3cr3t".to_string()),
            "DIR" => Some("out".to_string()),
            _ => None,
        };
        Config::from_str_with_env(text, Path::new("/base"), &env)
    }

    const MINIMAL: &str = r#"{
        // the original tool's example carries a comment
        "output_directory": "${DIR}",
        "data_sources": {
            "b": {"path": "b.csv", "credentials": {"token": "${TOKEN}"}},
            "a": {"path": "/abs/a.ndjson"},
        },
        /* block comment */
        "internal_schema": {"type": "object", "properties": {}},
    }"#;

    #[test]
    fn an_output_directory_given_at_run_time_is_relative_to_the_working_directory() {
        let mut c = parse(MINIMAL).unwrap();
        assert_eq!(c.output_dir(), Path::new("/base/out"));
        c.set_output_directory(PathBuf::from("elsewhere"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.output_dir(), cwd.join("elsewhere"));
        c.set_output_directory(PathBuf::from("s3://bucket/out"));
        assert_eq!(c.output_dir(), Path::new("s3://bucket/out"));
        c.set_output_directory(PathBuf::from("/abs/out"));
        assert_eq!(c.output_dir(), Path::new("/abs/out"));
    }

    #[test]
    fn seed_format_with_comments_and_trailing_commas() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.output_dir(), PathBuf::from("/base/out"));
        assert_eq!(c.source_names(), vec!["b", "a"], "config order is kept");
        assert_eq!(c.output_format, OutputFormat::Json);
        assert_eq!(
            c.source("b").unwrap().credentials["token"].expose(),
            "s3cr3t"
        );
        assert_eq!(c.mappings_dir(), PathBuf::from("/base/out/mappings"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn unknown_keys_report_their_path() {
        let e = parse(r#"{"output_directory": "o", "internal_schema": {}, "data_sources": {"s1": {"path": "x.csv", "fromat": "csv"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_sources.s1"), "{e}");
        assert!(e.contains("fromat"), "{e}");
        let e = parse(r#"{"output_directory": "o", "internal_schema": {}, "data_sources": {}, "output_fromat": "json"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output_fromat"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let e = parse(
            r#"{"output_directory": "${NOPE_X}", "internal_schema": {}, "data_sources": {}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("NOPE_X") && e.contains("output_directory"),
            "{e}"
        );
    }

    #[test]
    fn escaped_dollar_is_literal() {
        assert_eq!(
            checks::expand("a$${b}$c", "", &|_| None).unwrap(),
            "a${b}$c"
        );
    }

    #[test]
    fn bad_output_format_lists_choices() {
        let e = parse(r#"{"output_directory": "o", "output_format": "xml", "internal_schema": {}, "data_sources": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output_format") && e.contains("parquet"), "{e}");
    }

    #[test]
    fn format_inferred_through_compression_suffix() {
        assert_eq!(
            InputFormat::from_path(Path::new("a/b.CSV.gz")),
            Some(InputFormat::Csv)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("b.jsonl.zst")),
            Some(InputFormat::Ndjson)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("b.parquet")),
            Some(InputFormat::Parquet)
        );
        assert_eq!(InputFormat::from_path(Path::new("b.txt")), None);
    }
}
