//! Command-line interface: clap definitions, console output, logging, exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[cfg(feature = "ballista")]
pub mod cluster;
mod console;

use conform::config::OutputFormat;
use conform::{Config, Error, MapperChoice, Pipeline};

/// Conform records from many differently shaped sources to one internal JSON Schema.
#[derive(Debug, Parser)]
#[command(name = "conform", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options every command that reads a config shares.
#[derive(Debug, Args)]
pub struct Common {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "config.json")]
    pub config: PathBuf,
    /// Process only this source (repeatable). Default: all sources, in config order.
    #[arg(long = "source", short = 's')]
    pub sources: Vec<String>,
    /// Where mappings come from. A pinned document always wins; `auto` also reuses a stored
    /// document made for the same columns, else asks the LLM when an endpoint is configured,
    /// else the heuristic mapper.
    #[arg(long, value_enum, default_value_t = MapperArg::Auto)]
    pub mapper: MapperArg,
    /// Model for the LLM mapper (overrides `llm.model`).
    #[arg(long)]
    pub llm_model: Option<String>,
    /// OpenAI-compatible endpoint, e.g. `http://127.0.0.1:8000/v1` (overrides `llm.base_url`
    /// and OPENAI_BASE_URL).
    #[arg(long)]
    pub llm_base_url: Option<String>,
    /// Production mode: run only pinned mapping documents made for the source's current
    /// columns; never generate one.
    #[arg(long)]
    pub frozen: bool,
    /// Leave fields whose mapping confidence is below this (0 to 1) unmapped in a newly
    /// generated mapping, their best column kept as a candidate (overrides `min_confidence`).
    #[arg(long, value_parser = confidence)]
    pub min_confidence: Option<f64>,
}

/// A confidence between 0 and 1.
fn confidence(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

impl Common {
    /// Loads the config and applies the flags that override it.
    fn load(&self) -> Result<Config, Error> {
        let mut config = Config::load(&self.config)?;
        if let Some(m) = &self.llm_model {
            config.llm.model = m.clone();
        }
        if let Some(u) = &self.llm_base_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Error::config(
                    "--llm-base-url",
                    "must start with http:// or https://",
                ));
            }
            config.llm.base_url = Some(u.clone());
        }
        if let Some(m) = self.min_confidence {
            config.min_confidence = m;
        }
        Ok(config)
    }

    fn pipeline(&self, config: Config) -> Result<Pipeline, Error> {
        Ok(Pipeline::try_new(config)?.with_frozen(self.frozen))
    }
}

/// `--mapper` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MapperArg {
    /// Stored document if its fingerprint matches, else the LLM if configured, else heuristic.
    Auto,
    /// The offline heuristic mapper.
    Heuristic,
    /// The LLM mapper (needs `llm.api_key` or `llm.base_url`).
    Llm,
    /// Only a stored mapping document.
    File,
}

impl From<MapperArg> for MapperChoice {
    fn from(m: MapperArg) -> Self {
        match m {
            MapperArg::Auto => MapperChoice::Auto,
            MapperArg::Heuristic => MapperChoice::Heuristic,
            MapperArg::Llm => MapperChoice::Llm,
            MapperArg::File => MapperChoice::File,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read, map, validate and write every source.
    Run {
        #[command(flatten)]
        common: Common,
        /// Output format of valid rows (overrides `output_format`).
        #[arg(long, value_parser = parse_format)]
        format: Option<OutputFormat>,
        /// Output directory (overrides `output_directory`).
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Show a progress bar on stderr: `auto` when stderr is a terminal.
        #[arg(long, value_enum, default_value_t = Progress::Auto)]
        progress: Progress,
        /// Run file sources on a Ballista cluster, `df://HOST:PORT` (overrides
        /// `engine.cluster`; needs a build with `--features ballista`).
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
        /// Names this run in Delta commits and data files (1–64 letters, digits, `_`, `-`,
        /// `.`). A run id already committed to a table adds nothing to it again: give a
        /// retried run the id of the run it retries. Default: a new id per run.
        #[arg(long, env = "CONFORM_RUN_ID", value_name = "ID")]
        run_id: Option<String>,
    },
    /// Write each source's mapping document for review and print it as a table, without
    /// transforming data.
    Map {
        #[command(flatten)]
        common: Common,
        /// Generate a new mapping and show how it differs from the stored one; writes nothing.
        #[arg(long)]
        diff: bool,
    },
    /// Review each source's mapping in the browser: a page on 127.0.0.1 that lists the fields
    /// needing attention first, with sample rows, candidates and invalid rows. Decisions are
    /// applied to the sample; only "Pin" writes the document.
    ///
    /// The page shows, per source, the fields in order of need (undecided, low confidence,
    /// unplaced enum values, failing rows, fine, no candidate), each with its type, description
    /// and allowed values, its expression and rationale, sample rows (source value → mapped
    /// value → valid or the error), its ranked candidates with their own sample rows, and an
    /// enum field's value table; then the sample's invalid rows by field and rule.
    ///
    /// "Use" takes a candidate, the expression box is compiled as you type, a value table's
    /// choices correct values, "Leave unmapped" and "reviewed" say the rest: none of them
    /// writes anything. "Apply" runs the sample again with the decisions; it writes nothing.
    /// "Pin" writes the mapping document with the decisions and "pinned": true (atomically; the
    /// document it replaces is kept as NAME.mapping.previous.json) and records each decision
    /// with the reviewer and the time in its "reviews"; it is refused if the document changed
    /// since the page was loaded. The URL carries a per-run token; Ctrl-C stops the server.
    Review {
        #[command(flatten)]
        common: Common,
        /// Port on 127.0.0.1; by default a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Write the page as one self-contained, read-only HTML file instead of serving it.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// The name the document's review entries record (default: the operating-system user).
        #[arg(long)]
        reviewer: Option<String>,
        /// Sample rows per source (at most 10,000).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        rows: u64,
    },
    /// Check the config, the schema, every source and its mapping; writes nothing.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Print each source's compiled mapping and validation as SQL.
    Explain {
        #[command(flatten)]
        common: Common,
    },
    /// Print a source's history: one line per run (mapping, rows, feedback repairs).
    History {
        /// The configuration file.
        #[arg(long, short = 'c', default_value = "config.json")]
        config: PathBuf,
        /// The source.
        source: String,
    },
    /// Print the Arrow schema the internal JSON Schema becomes.
    Schema {
        /// The configuration file.
        #[arg(long, short = 'c', default_value = "config.json")]
        config: PathBuf,
    },
    /// Run a Ballista scheduler or executor for `run --cluster`.
    #[cfg(feature = "ballista")]
    Cluster {
        /// Which process.
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

/// `--progress` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn parse_format(s: &str) -> Result<OutputFormat, String> {
    s.parse()
}

/// Sets up tracing on stderr.
pub fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("conform={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Console output: the original tool's lines go to stdout; a closed pipe ends output quietly.
struct Console {
    out: std::io::Stdout,
    closed: bool,
}

impl Console {
    fn line(&mut self, s: &str) {
        if self.closed {
            return;
        }
        let mut lock = self.out.lock();
        if writeln!(lock, "{s}").and_then(|_| lock.flush()).is_err() {
            self.closed = true; // BrokenPipe: stop printing, keep working.
        }
    }
}

/// Resolves when the user asks a long-running command to stop (Ctrl-C, SIGTERM).
pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Whether the command serves until it is stopped, handling the stop itself (`review`).
pub fn serves(cli: &Cli) -> bool {
    matches!(&cli.command, Command::Review { html: None, .. })
}

/// Runs a command; returns the exit code. `stop` is given to a command that [`serves`].
pub async fn execute(cli: Cli, stop: Option<Stop>) -> Result<u8, Error> {
    let quiet = cli.quiet;
    let mut console = Console {
        out: std::io::stdout(),
        closed: false,
    };
    match cli.command {
        // `main` starts cluster processes before any of this; nothing to do here.
        #[cfg(feature = "ballista")]
        Command::Cluster { .. } => Err(Error::config(
            "cluster",
            "cluster processes are started directly by the binary",
        )),
        Command::Schema { config } => {
            let config = Config::load(&config)?;
            let target = conform::TargetSchema::try_new(&config.internal_schema)?;
            for f in target.fields.iter() {
                let field = f.arrow_field(false);
                let null = if field.is_nullable() {
                    "nullable"
                } else {
                    "not null"
                };
                console.line(&format!("{}: {} {null}", f.name, field.data_type()));
            }
            Ok(0)
        }
        Command::History { config, source } => {
            let config = Config::load(&config)?;
            config.source_or_error(&source)?;
            let entries = conform::mapping::memory::history(&config.mappings_dir(), &source)?;
            if entries.is_empty() {
                console.line(&format!("{source}: no runs recorded yet"));
            }
            for e in entries {
                let mapping = match (&e.mapper, e.stored) {
                    (Some(m), true) => format!("stored {m} mapping"),
                    (Some(m), false) => format!("new {m} mapping"),
                    (None, _) => "no mapping".to_string(),
                };
                let probe = e
                    .probe_invalid_share
                    .map(|(a, b)| format!(", probe invalid {:.1}% → {:.1}%", a * 100.0, b * 100.0))
                    .unwrap_or_default();
                console.line(&format!(
                    "{} {} {mapping} ({}): {} read, {} valid, {} invalid{probe}",
                    e.at,
                    e.status,
                    e.fingerprint.as_deref().unwrap_or("-"),
                    e.rows_read,
                    e.valid,
                    e.invalid
                ));
                for r in &e.repairs {
                    console.line(&format!("    repair {r}"));
                }
                for a in &e.anomalies {
                    console.line(&format!("    anomaly {a}"));
                }
            }
            Ok(0)
        }
        Command::Run {
            common,
            format,
            output_dir,
            progress,
            cluster,
            run_id,
        } => {
            let mut config = common.load()?;
            if let Some(f) = format {
                config.output_format = f;
            }
            if let Some(d) = output_dir {
                config.set_output_directory(d);
            }
            let mut pipeline = common.pipeline(config)?.with_cluster(cluster)?;
            if let Some(id) = run_id {
                pipeline = pipeline.with_run_id(&id)?;
            }
            #[cfg(feature = "ballista")]
            let pipeline =
                pipeline.with_remote_engine(std::sync::Arc::new(conform::cluster::Ballista));
            let names = pipeline.select(&common.sources)?;
            let show_bar = match progress {
                Progress::Always => true,
                Progress::Never => false,
                Progress::Auto => std::io::stderr().is_terminal(),
            };
            let multi = indicatif::MultiProgress::new();
            let bars = std::sync::Mutex::new(std::collections::HashMap::new());
            let progress = |name: &str| -> Option<conform::pipeline::Tick> {
                if !show_bar {
                    return None;
                }
                let b = multi.add(indicatif::ProgressBar::new_spinner());
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {prefix} {human_pos} rows ({per_sec}) {elapsed}",
                    )
                    .expect("valid template"),
                );
                b.set_prefix(name.to_string());
                bars.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), b.clone());
                Some(Box::new(move |rows| b.set_position(rows)))
            };
            // Sources run concurrently; each block is printed whole when its source finishes.
            let mut printed = 0;
            let mut finished = |report: &conform::SourceReport| {
                let name = &report.name;
                if let Some(b) = bars.lock().unwrap_or_else(|e| e.into_inner()).remove(name) {
                    b.finish_and_clear();
                }
                for n in &report.notes {
                    note(quiet, name, &console::note(n));
                }
                if printed > 0 {
                    console.line("");
                }
                printed += 1;
                for l in console::block(report) {
                    console.line(&l);
                }
                if let Some(e) = &report.error {
                    eprintln!("conform: source `{name}` failed: {e}");
                }
            };
            let summary = pipeline
                .run(&names, common.mapper.into(), &progress, &mut finished)
                .await?;
            Ok(if summary.sources.values().all(|r| r.ok()) {
                0
            } else {
                1
            })
        }
        Command::Map { common, diff } => {
            let mode = if diff { Mode::Diff } else { Mode::Map };
            per_source(mode, common, quiet, &mut console).await
        }
        Command::Review {
            common,
            port,
            html,
            reviewer,
            rows,
        } => {
            let config = common.load()?;
            let redact = config.llm.redact_samples;
            let pipeline = common.pipeline(config)?.without_learning();
            let sources = pipeline.select(&common.sources)?;
            let rows = rows as usize;
            if let Some(file) = html {
                let mut sections = Vec::new();
                for name in sources {
                    let review = conform::review::ReviewBase::load(
                        &pipeline,
                        &name,
                        common.mapper.into(),
                        rows,
                    )
                    .await;
                    let review = match review {
                        Ok(base) => std::sync::Arc::new(base)
                            .review(
                                &pipeline,
                                &conform::review::Decisions::new(),
                                conform::review::Scope::Everything,
                            )
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = &review {
                        eprintln!("conform: source `{name}`: {e}");
                    }
                    sections.push((name, review));
                }
                conform::review::write_html(&file, &sections, redact)?;
                console.line(&format!("Review page written to {}", file.display()));
                // As for every command: a source that failed is exit code 1, the others done.
                let failed = sections.iter().any(|(_, r)| r.is_err());
                return Ok(if failed { 1 } else { 0 });
            }
            let options = conform::review::ServeOptions {
                sources,
                port,
                reviewer: conform::review::reviewer(reviewer.as_deref()),
                rows,
                mapper: common.mapper.into(),
            };
            let stop = stop.unwrap_or_else(|| Box::pin(std::future::pending()));
            conform::review::serve(
                pipeline,
                options,
                |url| {
                    console.line(&format!("Review page: {url}"));
                    console.line("Press Ctrl-C to stop.");
                },
                stop,
            )
            .await?;
            Ok(0)
        }
        Command::Check { common } => per_source(Mode::Check, common, quiet, &mut console).await,
        Command::Explain { common } => per_source(Mode::Explain, common, quiet, &mut console).await,
    }
}

/// Where a source's mapping came from, on stderr (the console on stdout keeps the original
/// tool's wording).
fn note(quiet: bool, source: &str, text: &str) {
    if !quiet {
        eprintln!("conform: {source}: {text}");
    }
}

/// `map`, `map --diff`, `check` and `explain`: prepare each source and report on it.
async fn per_source(
    mode: Mode,
    common: Common,
    quiet: bool,
    console: &mut Console,
) -> Result<u8, Error> {
    let config = common.load()?;
    let pipeline = common.pipeline(config)?;
    let names = pipeline.select(&common.sources)?;
    let mut failed = false;
    for (i, name) in names.iter().enumerate() {
        let prepared = match mode {
            Mode::Diff => pipeline.prepare_fresh(name, common.mapper.into()).await,
            _ => pipeline.prepare(name, common.mapper.into()).await,
        };
        let p = match prepared {
            Ok(p) => p,
            Err(e) => {
                failed = true;
                eprintln!("conform: source `{name}`: {e}");
                continue;
            }
        };
        note(quiet, name, &console::origin(&p.origin));
        if i > 0 && !matches!(mode, Mode::Check) {
            console.line("");
        }
        match mode {
            Mode::Map => {
                p.save()?;
                match &p.save_to {
                    Some(path) => {
                        console.line(&format!("{name}: mapping written to {}", path.display()))
                    }
                    None => console.line(&format!(
                        "{name}: {} mapping {} is current",
                        if p.document.pinned {
                            "pinned"
                        } else {
                            "stored"
                        },
                        p.document_path.display()
                    )),
                }
                console.line(conform::pipeline::explain::table(&p.document).trim_end());
            }
            Mode::Diff => {
                let stored = conform::mapping::MappingDocument::load(&p.document_path).ok();
                let text = match &stored {
                    Some(old) => conform::pipeline::explain::diff(old, &p.document),
                    None => format!(
                        "no stored mapping at {}; everything would be new\n",
                        p.document_path.display()
                    ),
                };
                console.line(&format!("{name}: {}", console::origin(&p.origin)));
                console.line(text.trim_end());
            }
            Mode::Check => {
                let how = if p.stored {
                    "stored mapping"
                } else {
                    "generated mapping"
                };
                console.line(&format!(
                    "{name}: ok ({}, {} columns, {how}, {} checks)",
                    p.source.location(),
                    p.source.data_schema().fields().len(),
                    p.validator.checks.len()
                ));
            }
            Mode::Explain => {
                console.line(conform::pipeline::explain::explain(&p).trim_end());
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

enum Mode {
    Map,
    Diff,
    Check,
    Explain,
}
