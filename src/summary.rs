//! `run_summary.json`: what a run did, per source.

use std::path::Path;

use indexmap::IndexMap;
use serde::Serialize;

use crate::error::Result;
use crate::pipeline::SourceReport;

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// conform's version.
    pub conform_version: &'static str,
    /// The run's id (`--run-id`; Delta commits carry it).
    pub run_id: String,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC.
    pub finished_at: String,
    /// Wall-clock seconds.
    pub duration_s: f64,
    /// Output format of valid rows.
    pub output_format: crate::config::OutputFormat,
    /// Peak resident memory of the process so far, in MiB (Linux; absent elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Totals over all sources.
    pub totals: Totals,
    /// Per source, in processing order.
    pub sources: IndexMap<String, SourceReport>,
}

/// Totals over all sources.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Sources that ran to the end.
    pub sources_ok: usize,
    /// Sources that failed.
    pub sources_failed: usize,
    /// Rows read.
    pub rows_read: u64,
    /// Valid rows.
    pub valid: u64,
    /// Invalid rows.
    pub invalid: u64,
}

/// `VmHWM` of `/proc/self/status`: the process's peak resident set, in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

impl RunSummary {
    /// Builds the summary from the source reports.
    pub fn new(
        started: chrono::DateTime<chrono::Utc>,
        output_format: crate::config::OutputFormat,
        run_id: &str,
        reports: &[SourceReport],
    ) -> RunSummary {
        let finished = chrono::Utc::now();
        let mut totals = Totals::default();
        for r in reports {
            if r.ok() {
                totals.sources_ok += 1;
            } else {
                totals.sources_failed += 1;
            }
            totals.rows_read += r.rows_read;
            totals.valid += r.valid;
            totals.invalid += r.invalid;
        }
        RunSummary {
            conform_version: env!("CARGO_PKG_VERSION"),
            run_id: run_id.to_string(),
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_s: (finished - started).num_milliseconds() as f64 / 1000.0,
            output_format,
            peak_rss_mb: peak_rss_mb(),
            totals,
            sources: reports
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
        }
    }

    /// Writes `run_summary.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        crate::fs::atomic_write(&dir.join("run_summary.json"), text.as_bytes())
    }
}
