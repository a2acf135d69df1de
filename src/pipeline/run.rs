//! A whole run: the selected sources, `max_concurrent_sources` at a time, then
//! `run_summary.json`. The CLI's `run` and the Python package's `conform.run` are this.

use futures::StreamExt;

use super::*;
use crate::summary::RunSummary;

/// A row counter for one source's progress display.
pub type Tick = Box<dyn Fn(u64) + Send + Sync>;

impl Pipeline {
    /// The configured source names in `wanted` (all sources when it is empty), in config
    /// order; an unknown name is a config error listing the valid ones.
    pub fn select(&self, wanted: &[String]) -> Result<Vec<String>> {
        let all = self.config.source_names();
        for w in wanted {
            self.config.source_or_error(w)?;
        }
        Ok(all
            .into_iter()
            .filter(|n| wanted.is_empty() || wanted.contains(n))
            .collect())
    }

    /// Runs `names` (from [`Pipeline::select`]) with at most `max_concurrent_sources` at once:
    /// creates the output directory, removes temporary files a killed run left there, hands
    /// each source's report to `finished` as the source ends, and writes `run_summary.json`
    /// with the sources in config order. `progress(name)` may give a row counter for a
    /// source. A failing source is a failed report, not an error: the error is for what stops
    /// the whole run (the output directory cannot be written).
    pub async fn run(
        &self,
        names: &[String],
        choice: MapperChoice,
        progress: &(dyn Fn(&str) -> Option<Tick> + Sync),
        finished: &mut (dyn FnMut(&SourceReport) + Send),
    ) -> Result<RunSummary> {
        let out_dir = self.config.output_dir();
        // A store has no directories: its objects' keys carry the path.
        if !crate::store::is_remote(&out_dir) {
            std::fs::create_dir_all(&out_dir)
                .map_err(|e| Error::io("creating directory", &out_dir, e))?;
        }
        for stale in self.remove_stale_temp_files() {
            tracing::info!(file = %stale.display(), "Removed a temporary file left by a killed run.");
        }
        let started = chrono::Utc::now();
        let mut running = futures::stream::iter(names.iter().cloned())
            .map(|name| async move {
                let tick = progress(&name);
                let tick = tick.as_ref().map(|t| t as &(dyn Fn(u64) + Sync));
                self.run_source(&name, choice, tick).await
            })
            .buffer_unordered(self.config.max_concurrent_sources());
        let mut reports = Vec::new();
        while let Some(report) = running.next().await {
            finished(&report);
            reports.push(report);
        }
        drop(running);
        reports.sort_by_key(|r| names.iter().position(|n| *n == r.name));
        let summary = RunSummary::new(started, self.config.output_format, &self.run_id, &reports);
        summary.write(&out_dir)?;
        Ok(summary)
    }
}
