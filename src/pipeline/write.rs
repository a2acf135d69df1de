//! A source end to end: prepare, then the plan feeding the anomaly monitor and the writer on
//! threads of their own, the report, and the source's history.

use super::*;
use crate::config::OutputFormat;
use crate::sink::{SplitWriter, Written};

impl Pipeline {
    /// Removes the temporary files that killed runs left in the output and mappings
    /// directories (see `fs::remove_stale_temp_files`); returns them.
    pub fn remove_stale_temp_files(&self) -> Vec<PathBuf> {
        let mut removed = crate::fs::remove_stale_temp_files(&self.config.output_dir());
        removed.extend(crate::fs::remove_stale_temp_files(
            &self.config.mappings_dir(),
        ));
        removed
    }

    /// Runs one source end to end, writing its outputs. Never panics on bad data; errors fail
    /// this source only and are reported in the returned report.
    pub async fn run_source(
        &self,
        name: &str,
        choice: MapperChoice,
        progress: Option<&(dyn Fn(u64) + Sync)>,
    ) -> SourceReport {
        let started = Instant::now();
        let mut report = SourceReport::new(name);
        let result = self.run_inner(name, choice, progress, &mut report).await;
        if let Err(e) = result {
            report.failure = Some(match &e {
                Error::Credentials { .. } => FailureKind::Credentials,
                _ => FailureKind::Other,
            });
            report.status = Status::Failed;
            report.error = Some(e.to_string());
        }
        report.timings.total_s = started.elapsed().as_secs_f64();
        if let Err(e) = self.record_history(&report) {
            tracing::warn!(source = name, error = %e, "Could not append to the source's history.");
        }
        report
    }

    /// Appends the run to the source's history in the mapping store.
    fn record_history(&self, report: &SourceReport) -> Result<()> {
        let m = report.mapping.as_ref();
        let feedback = m.and_then(|m| m.feedback.as_ref());
        let mut repairs: Vec<String> = m
            .map(|m| m.learned_repairs_applied.clone())
            .unwrap_or_default();
        for round in feedback
            .iter()
            .flat_map(|f| f.rounds.iter())
            .filter(|r| r.kept)
        {
            for (field, c) in &round.changes {
                repairs.push(format!(
                    "{field}: {} ({} round {})",
                    c.after.as_deref().unwrap_or("null"),
                    round.by,
                    round.round
                ));
            }
        }
        let entry = memory::HistoryEntry {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            status: report.status.as_str().to_string(),
            fingerprint: m.map(|m| m.fingerprint.clone()),
            mapper: m.map(|m| m.mapper.as_str().to_string()),
            stored: m.is_some_and(|m| m.stored),
            rows_read: report.rows_read,
            valid: report.valid,
            invalid: report.invalid,
            probe_invalid_share: feedback.map(|f| (f.invalid_share_initial, f.invalid_share_final)),
            repairs,
            expressions: m.map(|m| m.expressions.clone()).unwrap_or_default(),
            anomalies: report
                .anomalies
                .iter()
                .flat_map(|a| a.flags.iter().map(|f| f.message.clone()))
                .collect(),
        };
        memory::append_history(&self.config.mappings_dir(), &report.name, &entry)
    }

    async fn run_inner(
        &self,
        name: &str,
        choice: MapperChoice,
        progress: Option<&(dyn Fn(u64) + Sync)>,
        report: &mut SourceReport,
    ) -> Result<()> {
        let t0 = Instant::now();
        let prepared = self.prepare(name, choice).await?;
        prepared.save()?;
        report.notes.push(Note::Origin(prepared.origin.clone()));
        report.mapping = Some(MappingInfo {
            mapper: prepared.document.mapper,
            stored: prepared.stored,
            pinned: prepared.document.pinned,
            llm: prepared.llm.clone(),
            feedback: prepared.feedback.clone(),
            learned_repairs_applied: prepared.learned_applied.clone(),
            expressions: prepared
                .document
                .fields
                .iter()
                .map(|(k, m)| (k.clone(), m.expr.clone()))
                .collect(),
            document: prepared
                .save_to
                .as_ref()
                .unwrap_or(&prepared.document_path)
                .display()
                .to_string(),
            fingerprint: fingerprint(&prepared.source.data_schema()),
            unmapped: prepared
                .document
                .unmapped()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
        report.timings.mapping_s = t0.elapsed().as_secs_f64();
        report.stage = Stage::Transforming;
        let t1 = Instant::now();
        if let Some(cluster) = self.cluster.as_deref() {
            if prepared.source.is_files() {
                self.transform_on_cluster(&prepared, cluster, report)
                    .await?;
                report.timings.transform_s = t1.elapsed().as_secs_f64();
                return Ok(());
            }
            report.notes.push(Note::RanLocally);
        }
        let format = self.config.output_format;
        let out_dir = self.config.output_dir();
        let (valid_name, invalid_name) = if format == OutputFormat::Delta {
            (format!("{name}_valid"), format!("{name}_invalid"))
        } else {
            (
                format!("{name}_valid_data.{}", format.valid_extension()),
                format!("{name}_invalid_data.{}", format.invalid_extension()),
            )
        };
        let mut stream = self.execute(&prepared).await?;
        let monitor = if self.config.anomalies.enabled {
            let previous = anomaly::load_profiles(
                &self.config.mappings_dir(),
                name,
                self.config.anomalies.history_runs.max(1),
            )?;
            Some(Monitor::new(
                &self.config.anomalies,
                stream.valid_schema(),
                previous,
            )?)
        } else {
            None
        };
        let valid_schema = monitor
            .as_ref()
            .map_or_else(|| stream.valid_schema(), Monitor::output_schema);
        let (valid_path, invalid_path) = (out_dir.join(&valid_name), out_dir.join(&invalid_name));
        #[cfg(feature = "delta")]
        let tables = if format == OutputFormat::Delta {
            Some(
                self.delta_tables(name, &valid_path, &invalid_path, &valid_schema)
                    .await?,
            )
        } else {
            None
        };
        // Splitting and writing run on a blocking thread, overlapping with evaluation.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(4);
        let writer = {
            let (valid_path, invalid_path) = (valid_path.clone(), invalid_path.clone());
            let parquet = self.config.parquet.clone();
            #[cfg(feature = "delta")]
            let delta = crate::sink::delta::DeltaWrite {
                run_id: self.run_id.clone(),
                partition_by: self.config.delta.partition_by.clone(),
            };
            tokio::task::spawn_blocking(move || -> Result<Finished> {
                let mut out = match format {
                    #[cfg(feature = "delta")]
                    OutputFormat::Delta => {
                        Out::Delta(Box::new(crate::sink::delta::DeltaSplit::try_new(
                            &valid_path,
                            &invalid_path,
                            &valid_schema,
                            0,
                            &delta,
                            &parquet,
                        )?))
                    }
                    _ => Out::Files(Box::new(SplitWriter::create(
                        &valid_path,
                        &invalid_path,
                        format,
                        &valid_schema,
                        &parquet,
                    )?)),
                };
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Message::Batch(v, bad) => out.write(&v, &bad)?,
                        Message::Done => return out.finish(),
                    }
                }
                // The sender went away without `Done`: the run failed; the sinks are dropped
                // and their temporary files removed.
                Err(Error::Closed)
            })
        };
        // The anomaly monitor runs on a thread of its own between the plan and the writer, so
        // profiling overlaps with encoding.
        let (tx, monitor) = match monitor {
            Some(m) => {
                let (to_monitor, from_plan) = tokio::sync::mpsc::channel::<Message>(4);
                (to_monitor, Some(monitor_stage(m, from_plan, tx)))
            }
            None => (tx, None),
        };
        let mut rows_read = 0u64;
        let mut send_failed = false;
        while let Some(item) = stream.next().await {
            let (v, bad) = match item {
                Ok(x) => x,
                Err(e) => {
                    // What was read before the failure is reported, consistently with the
                    // valid and invalid counts (nothing was written: the outputs are dropped).
                    report.rows_read = rows_read;
                    drop(tx);
                    let _ = writer.await;
                    return Err(e);
                }
            };
            rows_read += (v.num_rows() + bad.len()) as u64;
            report.rows_read = rows_read;
            report.valid += v.num_rows() as u64;
            report.invalid += bad.len() as u64;
            crate::validate::report::count_errors(&bad, &mut report.errors);
            if let Some(p) = progress {
                p(rows_read);
            }
            if tx.send(Message::Batch(v, bad)).await.is_err() {
                send_failed = true;
                break;
            }
        }
        if !send_failed {
            let _ = tx.send(Message::Done).await;
        }
        drop(tx);
        let anomalies = match monitor {
            Some(m) => m
                .await
                .map_err(|e| Error::source(name, format!("anomaly thread failed: {e}")))
                .and_then(|r| r),
            None => Ok(None),
        };
        let written = writer
            .await
            .map_err(|e| Error::source(name, format!("writer thread failed: {e}")))
            .and_then(|r| r);
        // A failing stage stops its neighbours, which then report `Closed`: the error that
        // says why is the other one (a full disk under the writer, a monitor failure).
        let (anomalies, written) = match (anomalies, written) {
            (Err(Error::Closed), Err(w)) => return Err(w),
            (Err(a), _) => return Err(a),
            (_, Err(w)) => return Err(w),
            (Ok(a), Ok(w)) => (a, w),
        };
        report.rows_read = rows_read;
        let written = match written {
            Finished::Files(w) => w,
            #[cfg(feature = "delta")]
            Finished::Delta(files) => {
                let tables = tables.expect("Delta output has its tables");
                self.commit_delta(name, &tables, files, report).await?;
                Written {
                    valid: valid_path,
                    invalid: Some(invalid_path),
                }
            }
        };
        report.timings.transform_s = t1.elapsed().as_secs_f64();
        if let Some((profile, anomalies)) = anomalies {
            for f in &anomalies.flags {
                report.notes.push(Note::Anomaly(f.message.clone()));
            }
            report.anomalies = Some(anomalies);
            // The profile becomes the reference of later runs only once the outputs exist.
            if let Err(e) = anomaly::append_profile(&self.config.mappings_dir(), name, &profile) {
                tracing::warn!(source = name, error = %e, "Could not store the run's profile.");
            }
        }
        let shown = |file: &str| {
            self.config
                .output_directory
                .join(file)
                .display()
                .to_string()
        };
        // A table is a directory: shown with a trailing slash, as a cluster's part directories.
        let shown = |file: &str| match format {
            OutputFormat::Delta => format!("{}/", shown(file)),
            _ => shown(file),
        };
        report.saved(
            (shown(&valid_name), written.valid),
            written.invalid.map(|i| (shown(&invalid_name), i)),
        );
        Ok(())
    }

    /// The two Delta tables of source `name`, checked against the schema contract.
    #[cfg(feature = "delta")]
    pub(crate) async fn delta_tables(
        &self,
        name: &str,
        valid: &std::path::Path,
        invalid: &std::path::Path,
        valid_schema: &SchemaRef,
    ) -> Result<[crate::sink::delta::TableSpec; 2]> {
        use crate::sink::delta::{TableSpec, invalid_schema};
        let options = self.config.delta.clone();
        let tables = [
            TableSpec {
                source: name.to_string(),
                dir: valid.to_path_buf(),
                schema: Arc::clone(valid_schema),
                partition_by: options.partition_by.clone(),
                options: options.clone(),
            },
            TableSpec {
                source: name.to_string(),
                dir: invalid.to_path_buf(),
                schema: invalid_schema(),
                partition_by: Vec::new(),
                options,
            },
        ];
        // A table this run cannot commit to fails the source before anything is written.
        for t in &tables {
            t.check().await?;
        }
        Ok(tables)
    }

    /// Commits a run's files to the source's two tables, one commit each; on a failure, the
    /// files not committed are removed. The versions go into the report.
    #[cfg(feature = "delta")]
    pub(crate) async fn commit_delta(
        &self,
        name: &str,
        tables: &[crate::sink::delta::TableSpec; 2],
        files: crate::sink::delta::DeltaFiles,
        report: &mut SourceReport,
    ) -> Result<()> {
        use crate::sink::delta::{DeltaFiles, RunInfo};
        let m = report.mapping.as_ref();
        let info = |table: &'static str| RunInfo {
            run_id: self.run_id.clone(),
            source: name.to_string(),
            table,
            mapping_fingerprint: m.map(|m| m.fingerprint.clone()),
            mapper: m.map(|m| m.mapper.as_str().to_string()),
            rows_read: report.rows_read,
            valid: report.valid,
            invalid: report.invalid,
            conform_version: env!("CARGO_PKG_VERSION"),
        };
        let started = Instant::now();
        let DeltaFiles { valid, invalid } = files;
        let unreferenced = |files: Vec<_>| DeltaFiles {
            valid: files,
            invalid: Vec::new(),
        };
        let mut versions = Vec::new();
        let mut pending = vec![
            (&tables[1], invalid, "invalid"),
            (&tables[0], valid, "valid"),
        ];
        while let Some((table, files, which)) = pending.pop() {
            match table.commit(files.clone(), info(which)).await {
                Ok(c) => {
                    if c.already {
                        // An earlier attempt of this run committed: this attempt's copies go.
                        unreferenced(files).remove();
                    }
                    report.notes.push(Note::Delta {
                        table: table.dir.display().to_string(),
                        version: c.version,
                        already: c.already,
                        run_id: self.run_id.clone(),
                    });
                    versions.push(c);
                }
                Err(e) => {
                    // Nothing references this table's files, nor those of a table not
                    // committed yet.
                    unreferenced(files).remove();
                    for (_, files, _) in pending {
                        unreferenced(files).remove();
                    }
                    return Err(e);
                }
            }
        }
        report.timings.commit_s = Some(started.elapsed().as_secs_f64());
        report.outputs.delta = Some(crate::pipeline::report::DeltaVersions {
            run_id: self.run_id.clone(),
            valid: versions[0].version,
            invalid: versions[1].version,
        });
        Ok(())
    }
}

/// The writer thread's outputs.
enum Out {
    Files(Box<SplitWriter>),
    #[cfg(feature = "delta")]
    Delta(Box<crate::sink::delta::DeltaSplit>),
}

/// What the writer thread completed.
enum Finished {
    Files(Written),
    #[cfg(feature = "delta")]
    Delta(crate::sink::delta::DeltaFiles),
}

impl Out {
    fn write(&mut self, valid: &RecordBatch, invalid: &[InvalidRow]) -> Result<()> {
        match self {
            Out::Files(w) => w.write(valid, invalid),
            #[cfg(feature = "delta")]
            Out::Delta(w) => w.write(valid, invalid),
        }
    }

    fn finish(self) -> Result<Finished> {
        match self {
            Out::Files(w) => w.finish().map(Finished::Files),
            #[cfg(feature = "delta")]
            Out::Delta(w) => w.finish().map(Finished::Delta),
        }
    }
}

enum Message {
    Batch(RecordBatch, Vec<InvalidRow>),
    Done,
}

/// The anomaly monitor's thread: takes split batches from the plan, profiles the valid rows
/// (adding the flags column when asked) and passes everything on to the writer in order; at
/// the end, the run's profile and flags.
fn monitor_stage(
    mut monitor: Monitor,
    mut from_plan: tokio::sync::mpsc::Receiver<Message>,
    to_writer: tokio::sync::mpsc::Sender<Message>,
) -> tokio::task::JoinHandle<Result<Option<(RunProfile, AnomalyReport)>>> {
    tokio::task::spawn_blocking(move || {
        let empty = RecordBatch::new_empty(monitor.output_schema());
        let send = |m: Message| to_writer.blocking_send(m).map_err(|_| Error::Closed);
        while let Some(msg) = from_plan.blocking_recv() {
            match msg {
                Message::Batch(v, bad) => {
                    // Held-back valid rows come out later; invalid rows go on at once.
                    let mut ready = monitor.push(v)?.into_iter();
                    send(Message::Batch(
                        ready.next().unwrap_or_else(|| empty.clone()),
                        bad,
                    ))?;
                    for b in ready {
                        send(Message::Batch(b, Vec::new()))?;
                    }
                }
                Message::Done => {
                    for b in monitor.flush()? {
                        send(Message::Batch(b, Vec::new()))?;
                    }
                    send(Message::Done)?;
                    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    return Ok(Some(monitor.finish(at)));
                }
            }
        }
        // The plan side went away without `Done`: the run failed.
        Err(Error::Closed)
    })
}
