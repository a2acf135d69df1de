//! Preparing a source: the stored-document policy, the mapper choice with the LLM fallback,
//! learned repairs and the feedback loop, ending in a compiled [`PreparedSource`].

use super::*;

impl Pipeline {
    /// Opens, samples and maps a source, then compiles the mapping and the validator.
    pub async fn prepare(&self, name: &str, choice: MapperChoice) -> Result<PreparedSource> {
        self.prepare_with(name, choice, false).await
    }

    /// As [`Pipeline::prepare`], but always generates a new mapping (for `map --diff`): the
    /// stored document is neither used nor changed.
    pub async fn prepare_fresh(&self, name: &str, choice: MapperChoice) -> Result<PreparedSource> {
        self.prepare_with(name, choice, true).await
    }

    /// Picks the stored document if it settles the mapping (pinned, or made for these columns
    /// under `auto`), else generates one.
    fn stored_document(
        &self,
        name: &str,
        choice: MapperChoice,
        path: &std::path::Path,
        fp: &str,
        columns: &arrow::datatypes::Schema,
    ) -> Result<Option<MappingDocument>> {
        let given = self.documents.get(name);
        let explicit = given.is_some()
            || self
                .config
                .source(name)
                .and_then(|s| s.mapping.as_ref())
                .is_some();
        let stored = match given {
            Some(d) => Some(d.clone()),
            None => match crate::store::read_text_optional(name, path)? {
                Some(text) => Some(MappingDocument::from_json(path, &text)?),
                None => None,
            },
        };
        let shown = match given {
            Some(_) => "the mapping document given".to_string(),
            None => path.display().to_string(),
        };
        if self.frozen {
            return match stored {
                Some(d) if d.pinned && d.source_fingerprint == fp => Ok(Some(d)),
                Some(d) if !d.pinned => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen runs only reviewed mappings: {shown} is not pinned (review it, then set \"pinned\": true)"
                    ),
                )),
                Some(d) => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen: the source's columns changed since {shown} was pinned (fingerprint {} → {fp}); map again, review and pin",
                        d.source_fingerprint
                    ),
                )),
                None => Err(Error::mapping(
                    name,
                    format!(
                        "--frozen: there is no mapping document at {shown}; run `conform map`, review it and pin it"
                    ),
                )),
            };
        }
        if explicit || choice == MapperChoice::File {
            let Some(d) = stored else {
                return Err(Error::mapping(
                    name,
                    format!("there is no mapping document at {shown}"),
                ));
            };
            if d.source_fingerprint != fp {
                let missing = missing_columns(&d, columns);
                if !missing.is_empty() {
                    return Err(Error::mapping(
                        name,
                        format!(
                            "the source has no column {} that {shown} reads; the source's columns are {}. Map it again, review and pin",
                            quoted(&missing),
                            quoted(
                                &columns
                                    .fields()
                                    .iter()
                                    .map(|f| f.name().as_str())
                                    .collect::<Vec<_>>()
                            )
                        ),
                    ));
                }
                tracing::warn!(source = name, document = %shown, "The mapping document was made for different source columns; using it as configured.");
            }
            return Ok(Some(d));
        }
        Ok(match stored {
            Some(d) if d.source_fingerprint == fp && (d.pinned || choice == MapperChoice::Auto) => {
                Some(d)
            }
            Some(d) if d.source_fingerprint != fp => {
                tracing::warn!(source = name, document = %shown, "The source's columns changed since the stored mapping was made (fingerprint {} → {fp}); mapping again.", d.source_fingerprint);
                None
            }
            _ => None,
        })
    }

    async fn prepare_with(
        &self,
        name: &str,
        choice: MapperChoice,
        fresh: bool,
    ) -> Result<PreparedSource> {
        // Opening and sampling read files or call a server: off the async threads, so that
        // other sources proceed meanwhile.
        let source = match self.streams.get(name) {
            Some(s) => s.clone(),
            None => {
                let (config, name) = (Arc::clone(&self.config), name.to_string());
                blocking(move || Pipeline::open_with(&config, &name)).await?
            }
        };
        let path = self.mapping_path(name);
        let fp = fingerprint(&source.data_schema());
        let stored = if fresh {
            None
        } else {
            self.stored_document(name, choice, &path, &fp, &source.data_schema())?
        };
        let mut feedback_report = None;
        let mut learned_applied = Vec::new();
        let (document, llm, origin, save_to) = match stored {
            Some(doc) => {
                let origin = MappingOrigin::Stored {
                    path: path.clone(),
                    pinned: doc.pinned,
                };
                (doc, None, origin, None)
            }
            None => {
                // One read serves the mapper's sample and the feedback probe (a second read of
                // an HTTP or database source would cost another round of requests).
                // Bounded by cells, not rows: a 20,000-column source profiles and probes a few
                // hundred rows, which is evidence enough, instead of tens of millions of cells.
                let columns = source.data_schema().fields().len().max(1);
                let sample_rows = (SAMPLE_CELLS / columns).clamp(MIN_SAMPLE_ROWS, SAMPLE_ROWS);
                let probe_rows = if self.config.feedback.enabled {
                    let cap = (PROBE_CELLS / columns).max(MIN_SAMPLE_ROWS);
                    self.config.feedback.probe_rows.clamp(1, cap)
                } else {
                    0
                };
                let head = {
                    let source = source.clone();
                    let n = sample_rows.max(probe_rows);
                    blocking(move || source.sample(n)).await?
                };
                let sample = head.slice(0, sample_rows.min(head.num_rows()));
                let mut profiles = profile(&sample);
                if let Some((_, c)) = self.config.data_sources.iter().find(|(n, _)| n == name) {
                    describe(name, &mut profiles, &c.descriptions);
                }
                let request = MappingRequest {
                    source: name,
                    target: &self.target,
                    source_schema: source.data_schema(),
                    sample: &sample,
                    profiles: &profiles,
                };
                let use_llm = match choice {
                    MapperChoice::Llm => true,
                    MapperChoice::Auto => self.config.llm.configured(),
                    MapperChoice::Heuristic | MapperChoice::File => false,
                };
                let (proposal, origin) = if use_llm {
                    let llm = self.llm().await?;
                    match llm.map(&request).await {
                        Ok(p) => {
                            let o = MappingOrigin::Llm {
                                model: llm.model().to_string(),
                                endpoint: llm.endpoint().to_string(),
                            };
                            (p, o)
                        }
                        Err(e) if self.config.llm.fallback == LlmFallback::Heuristic => {
                            tracing::warn!(source = name, error = %e, "The LLM could not map the source; using the heuristic mapper (llm.fallback).");
                            let p = HeuristicMapper.map(&request).await?;
                            (
                                p,
                                MappingOrigin::LlmFallback {
                                    error: e.to_string(),
                                },
                            )
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    let p = HeuristicMapper.map(&request).await?;
                    let no_endpoint = choice == MapperChoice::Auto;
                    (p, MappingOrigin::Heuristic { no_endpoint })
                };
                let mut proposal = proposal;
                // The offline matcher's scores are what the threshold is calibrated on; a
                // model's own confidence is on no common scale, so its answers are kept.
                // Column by column the model picks and the matcher scores: a field's
                // confidence is the matcher's score of the pair picked, and the threshold
                // holds as for the matcher's own document.
                let by_column = proposal.llm.as_ref().is_some_and(|u| {
                    u.prompt_version == crate::mapping::llm::prompt::COLUMN_PROMPT_VERSION
                });
                let held = if by_column {
                    proposal.document.hold_below(self.config.min_confidence)
                } else if proposal.document.mapper == MapperKind::Heuristic {
                    let min = self.config.min_confidence;
                    let floor =
                        crate::mapping::heuristic::lowest_confidence(self.target.fields.len());
                    if min < floor && min != crate::config::default_min_confidence() {
                        // The threshold filters what the matcher proposes; the matcher itself
                        // proposes nothing below its acceptance score, which on this target's
                        // width is a confidence of `floor`.
                        tracing::warn!(
                            source = name,
                            min_confidence = min,
                            lowest = floor,
                            "min_confidence below the offline matcher's lowest confidence on this target maps nothing more."
                        );
                    }
                    proposal.document.hold_below(min)
                } else {
                    Vec::new()
                };
                tracing::info!(source = name, mapper = proposal.document.mapper.as_str(), unmapped = ?proposal.document.unmapped(), undecided = ?held, "Generated a mapping.");
                // Repairs learned on earlier runs (of any source) for columns like these.
                for f in compile(
                    &self.ctx,
                    &proposal.document,
                    &source.data_schema(),
                    &self.target,
                )?
                .fields
                {
                    if let Some(m) = proposal.document.fields.get_mut(&f.name) {
                        m.sources = f.sources;
                    }
                }
                let learned = memory::load_repairs(&self.config.mappings_dir())?;
                learned_applied = memory::apply(&mut proposal.document, &learned)
                    .into_iter()
                    .map(|(field, r)| {
                        format!(
                            "{field}: {} (learned from `{}`)",
                            r.template, r.learned_from
                        )
                    })
                    .collect();
                if self.config.feedback.enabled {
                    let rows = head.slice(0, probe_rows.min(head.num_rows()));
                    let llm = match proposal.document.mapper {
                        MapperKind::Llm => Some(self.llm().await?),
                        _ => None,
                    };
                    let feedback = feedback::Loop {
                        ctx: &self.ctx,
                        target: &self.target,
                        request: &request,
                        rows: &rows,
                        config: &self.config.feedback,
                        llm: llm.as_deref(),
                        redact: self.config.llm.redact_samples,
                    };
                    let (doc, report) = feedback.run(proposal.document, &mut proposal.llm).await?;
                    // Kept repairs are remembered for the next source with such a column.
                    for round in report.rounds.iter().filter(|r| r.kept && self.learn) {
                        for (field, change) in &round.changes {
                            let (Some(after), Some([column])) = (
                                change.after.as_deref(),
                                doc.fields.get(field).map(|m| m.sources.as_slice()),
                            ) else {
                                continue;
                            };
                            memory::remember(
                                &self.config.mappings_dir(),
                                name,
                                field,
                                column,
                                after,
                                &change.why,
                            )?;
                        }
                    }
                    proposal.document = doc;
                    feedback_report = Some(report);
                }
                // A reviewed document is never overwritten: the new proposal goes beside it.
                let pinned_exists = MappingDocument::load(&path).is_ok_and(|d| d.pinned);
                let save_to = if pinned_exists {
                    let beside = path.with_extension("proposed.json");
                    tracing::warn!(source = name, pinned = %path.display(), proposal = %beside.display(), "A pinned mapping exists; the new proposal is written beside it for review.");
                    beside
                } else {
                    path.clone()
                };
                (proposal.document, proposal.llm, origin, Some(save_to))
            }
        };
        let mapping = compile(&self.ctx, &document, &source.data_schema(), &self.target)?;
        // The document records the columns each expression reads, as the compiler found them.
        let mut document = document;
        for f in &mapping.fields {
            if let Some(m) = document.fields.get_mut(&f.name) {
                m.sources = f.sources.clone();
            }
        }
        let validator = Validator::for_mapping(&self.target, &mapping);
        Ok(PreparedSource {
            source,
            document,
            document_path: path,
            stored: save_to.is_none(),
            save_to,
            llm,
            feedback: feedback_report,
            learned_applied,
            origin,
            mapping,
            validator,
        })
    }
}

/// Runs blocking work on tokio's blocking pool.
/// The columns `doc`'s expressions read that `columns` lacks, in field order.
fn missing_columns<'a>(
    doc: &'a MappingDocument,
    columns: &arrow::datatypes::Schema,
) -> Vec<&'a str> {
    let mut missing: Vec<&str> = Vec::new();
    for m in doc.fields.values() {
        for c in &m.sources {
            if columns.field_with_name(c).is_err() && !missing.contains(&c.as_str()) {
                missing.push(c);
            }
        }
    }
    missing
}

/// `a`, `b`, `c` for a message.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a reader thread failed: {e}")))?
}

/// Puts the config's `descriptions` on the profiled columns they name; they win over what the
/// source's own metadata says. A description of a column the source does not have is noted
/// and left alone: the source may have dropped the column, and the run goes on.
fn describe(
    source: &str,
    profiles: &mut [crate::source::ColumnProfile],
    descriptions: &std::collections::BTreeMap<String, String>,
) {
    for (column, text) in descriptions {
        match profiles.iter_mut().find(|p| &p.name == column) {
            Some(p) => {
                if let Some(d) = crate::source::profile::bounded_description(text) {
                    p.description = Some(d);
                }
            }
            None => {
                tracing::warn!(source, column = %column, "`descriptions` names a column the source does not have; ignored.")
            }
        }
    }
}
