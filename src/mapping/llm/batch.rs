//! Sizing the request: certain fields decided offline, batches that fit
//! `llm.max_prompt_tokens`, halving on timeouts and unreadable replies, and merging the
//! batches' answers.

use super::*;

impl LlmMapper {
    /// Proposes a mapping: in one conversation when the request fits `llm.max_prompt_tokens`;
    /// otherwise in batches of fields, each with only the columns the offline matcher ranks for
    /// them, run concurrently (under `llm.max_concurrent`). Fields for which the matcher finds
    /// no plausible column are left unmapped without asking.
    pub async fn propose(&self, req: &MappingRequest<'_>) -> Result<(MappingDocument, LlmUsage)> {
        if req.target.fields.len() > self.settings.by_column_above {
            return self.propose_by_column(req).await;
        }
        // The matcher's document serves twice: it decides the certain fields, and it settles a
        // column the model gives to several fields.
        let offline = crate::mapping::heuristic::HeuristicMapper.map_now(req);
        let (mut doc, mut usage) = self.propose_field_by_field(req, &offline).await?;
        let columns: Vec<&str> = req.profiles.iter().map(|p| p.name.as_str()).collect();
        one_column_one_field(&mut doc, &offline, &columns, &mut usage);
        Ok((doc, usage))
    }

    /// [`Self::propose`] field by field: certain fields decided offline (`llm.min_uncertainty`),
    /// the rest asked.
    async fn propose_field_by_field(
        &self,
        req: &MappingRequest<'_>,
        offline: &MappingDocument,
    ) -> Result<(MappingDocument, LlmUsage)> {
        let floor = self.settings.min_uncertainty;
        if floor <= 0.0 {
            return self.propose_fields(req).await;
        }
        // Fields whose offline choice is certain and unrivalled are decided without the model.
        let (decided, asked): (Vec<&crate::schema::TargetField>, Vec<_>) =
            req.target.fields.iter().partition(|t| {
                offline
                    .fields
                    .get(&t.name)
                    .is_some_and(|m| m.expr.is_some() && uncertainty(m) < floor)
            });
        if decided.is_empty() {
            return self.propose_fields(req).await;
        }
        let (mut doc, mut usage) = if asked.is_empty() {
            let doc = MappingDocument {
                reviews: vec![],
                fields: IndexMap::new(),
                ..self.empty_document(req)
            };
            let usage = LlmUsage {
                model: self.settings.model.clone(),
                endpoint: self.endpoint.clone(),
                prompt_version: prompt::PROMPT_VERSION,
                ..Default::default()
            };
            (doc, usage)
        } else {
            let names: Vec<String> = asked.iter().map(|t| t.name.clone()).collect();
            let columns: Vec<String> = req.profiles.iter().map(|p| p.name.clone()).collect();
            let parts = batch_parts(req, &names, &columns)?;
            let sub = parts.request(req);
            self.propose_fields(&sub).await?
        };
        for t in decided {
            let m = &offline.fields[&t.name];
            usage.offline_fields.push(t.name.clone());
            doc.fields.insert(
                t.name.clone(),
                FieldMapping {
                    rationale: format!(
                        "heuristic (decided offline, uncertainty {:.2} < llm.min_uncertainty {floor}): {}",
                        uncertainty(m),
                        m.rationale
                    ),
                    ..m.clone()
                },
            );
        }
        // The document lists the fields in the target's order.
        doc.fields = req
            .target
            .fields
            .iter()
            .filter_map(|t| {
                doc.fields
                    .shift_remove(&t.name)
                    .map(|m| (t.name.clone(), m))
            })
            .collect();
        Ok((doc, usage))
    }

    /// An LLM document for `req` with no fields yet.
    pub(super) fn empty_document(&self, req: &MappingRequest<'_>) -> MappingDocument {
        MappingDocument {
            reviews: vec![],
            source: req.source.to_string(),
            source_fingerprint: crate::mapping::fingerprint(&req.source_schema),
            mapper: MapperKind::Llm,
            pinned: false,
            model: Some(self.settings.model.clone()),
            fields: IndexMap::new(),
        }
    }

    /// [`Self::propose`] for every field of `req`.
    pub(super) async fn propose_fields(
        &self,
        req: &MappingRequest<'_>,
    ) -> Result<(MappingDocument, LlmUsage)> {
        let whole = self.tokens(&self.opening(req).0);
        let all_columns: Vec<String> = req.profiles.iter().map(|p| p.name.clone()).collect();
        let n = req.target.fields.len();
        // Set when the batches are the halves of a whole request that failed.
        let mut halved_whole = false;
        // What the whole request cost when it failed and goes again in halves.
        let mut spent: Option<LlmUsage> = None;
        let batches = if whole + follow_up_tokens(n) <= self.settings.max_prompt_tokens || n <= 1 {
            let (r, u) = self.propose_one(req).await;
            match r {
                // A request that times out, or whose replies cannot be read, is asked again in
                // halves, not as it was: a slow server answers smaller requests in time, and a
                // small model writes a shorter reply for fewer fields.
                Err(e)
                    if (timed_out(&e) || unreadable(&e) || over_budget(&e))
                        && req.target.fields.len() > 1 =>
                {
                    tracing::warn!(
                        source = req.source,
                        error = %e,
                        "The LLM request failed; asking again in smaller batches."
                    );
                    let names: Vec<String> =
                        req.target.fields.iter().map(|t| t.name.clone()).collect();
                    halved_whole = true;
                    spent = Some(u);
                    halves(&names)
                        .into_iter()
                        .map(|h| (h, all_columns.clone()))
                        .collect()
                }
                // One field that alone would exceed the budget: the offline matcher answers
                // for it below, as for any field the model could not answer.
                Err(e) if over_budget(&e) => {
                    spent = Some(u);
                    let names: Vec<String> =
                        req.target.fields.iter().map(|t| t.name.clone()).collect();
                    vec![(names, all_columns.clone())]
                }
                other => return other.map(|doc| (doc, u)),
            }
        } else {
            let offline = crate::mapping::heuristic::HeuristicMapper.map_now(req);
            let planned = self.batches(req, &offline);
            self.fit(
                req,
                &|half: &[String]| candidate_columns(&offline, half),
                planned,
                &follow_up_tokens,
            )?
        };
        tracing::debug!(
            source = req.source,
            approx_prompt_tokens = whole,
            batches = batches.len(),
            "The mapping request is split into batches."
        );
        let runs = batches
            .iter()
            .map(|(fields, columns)| self.run_batch(req, fields, columns));
        let results = futures::future::join_all(runs).await;
        let mut usage = LlmUsage {
            model: self.settings.model.clone(),
            endpoint: self.endpoint.clone(),
            prompt_version: prompt::PROMPT_VERSION,
            batches: batches.len() as u32,
            ..Default::default()
        };
        let mut fields = placeholders(req, NOT_SENT);
        // Batches that timed out go again in halves, one at a time, until a single field
        // times out (the server is too slow for anything: the source fails). A batch whose
        // replies could not be read goes again in halves once; when a half fails too, its
        // fields are lost to the model alone and the other batches' answers stand. Every split
        // halves a batch, so this ends.
        let mut again: Vec<(Vec<String>, Vec<String>, bool)> = Vec::new();
        let mut lost: Vec<(String, String)> = Vec::new();
        let mut answered_batches = 0usize;
        let mut settled: Vec<_> = results
            .into_iter()
            .zip(batches.iter().cloned())
            .map(|((r, u), (b, c))| (r, u, b, c, halved_whole))
            .collect();
        loop {
            for (r, u, batch, columns, halved) in settled.drain(..) {
                absorb_usage(&mut usage, u);
                match r {
                    Ok(doc) => {
                        answered_batches += 1;
                        fields.extend(doc.fields);
                    }
                    // Over the budget by the model's count: halves until each fits.
                    Err(e) if (timed_out(&e) || over_budget(&e)) && batch.len() > 1 => {
                        again.extend(
                            halves(&batch)
                                .into_iter()
                                .map(|h| (h, columns.clone(), halved)),
                        );
                    }
                    Err(e) if unreadable(&e) && batch.len() > 1 && !halved => {
                        again.extend(
                            halves(&batch)
                                .into_iter()
                                .map(|h| (h, columns.clone(), true)),
                        );
                    }
                    Err(e) if unreadable(&e) || over_budget(&e) => {
                        let why = match e {
                            Error::Llm { message, .. } => message,
                            other => other.to_string(),
                        };
                        lost.extend(batch.into_iter().map(|f| (f, why.clone())));
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((batch, columns, halved)) = again.pop() else {
                break;
            };
            usage.batches += 1;
            let (r, u) = self.run_batch(req, &batch, &columns).await;
            settled.push((r, u, batch, columns, halved));
        }
        // The whole request that failed before its halves were asked.
        if let Some(u) = spent {
            absorb_usage(&mut usage, u);
        }
        if let Some((_, why)) = lost.first()
            && answered_batches == 0
        {
            // Nothing the model said could be used: the source's mapping failed
            // (`llm.fallback` decides what happens next).
            return Err(Error::Llm {
                source_name: req.source.to_string(),
                message: why.clone(),
            });
        }
        if !lost.is_empty() {
            let offline = crate::mapping::heuristic::HeuristicMapper.map_now(req);
            for (name, why) in lost {
                usage.unanswered_fields.push(name.clone());
                let fallback = offline.fields.get(&name).filter(|m| m.expr.is_some());
                tracing::warn!(source = req.source, field = %name, error = %why, "The LLM could not answer for this field; the offline matcher decides it.");
                let m = match fallback {
                    Some(m) => {
                        usage.fallback_fields.push(name.clone());
                        FieldMapping {
                            rationale: format!("heuristic (llm fallback): {why}; {}", m.rationale),
                            ..m.clone()
                        }
                    }
                    None => FieldMapping {
                        rationale: format!(
                            "unmapped: {why}, and the offline matcher found no column"
                        ),
                        ..FieldMapping::unmapped()
                    },
                };
                fields.insert(name, m);
            }
        }
        let doc = MappingDocument {
            reviews: vec![],
            source: req.source.to_string(),
            source_fingerprint: crate::mapping::fingerprint(&req.source_schema),
            mapper: MapperKind::Llm,
            pinned: false,
            model: Some(self.settings.model.clone()),
            fields,
        };
        Ok((doc, usage))
    }

    /// One batch: the fields `fields` with the columns `columns` (and their sample values).
    pub(super) async fn run_batch(
        &self,
        req: &MappingRequest<'_>,
        fields: &[String],
        columns: &[String],
    ) -> (Result<MappingDocument>, LlmUsage) {
        let parts = match batch_parts(req, fields, columns) {
            Ok(parts) => parts,
            Err(e) => return (Err(e), LlmUsage::default()),
        };
        let sub = parts.request(req);
        self.propose_one(&sub).await
    }

    /// Estimated prompt tokens of a batch's first request.
    pub(super) fn batch_tokens(
        &self,
        req: &MappingRequest<'_>,
        fields: &[String],
        columns: &[String],
    ) -> Result<usize> {
        let parts = batch_parts(req, fields, columns)?;
        let sub = parts.request(req);
        Ok(self.tokens(&self.opening(&sub).0))
    }

    /// The batches, each split in halves until its prompt, plus `reserve(fields)` tokens for
    /// what follows the opening, fits the budget (or it is one field); `columns_for` gives a
    /// half its columns.
    pub(super) fn fit(
        &self,
        req: &MappingRequest<'_>,
        columns_for: &dyn Fn(&[String]) -> Vec<String>,
        batches: Vec<(Vec<String>, Vec<String>)>,
        reserve: &dyn Fn(usize) -> usize,
    ) -> Result<Vec<(Vec<String>, Vec<String>)>> {
        let mut todo = batches;
        let mut out = Vec::new();
        // Every split halves a batch, so this ends.
        while let Some((fields, columns)) = todo.pop() {
            if fields.len() > 1
                && self.batch_tokens(req, &fields, &columns)? + reserve(fields.len())
                    > self.settings.max_prompt_tokens
            {
                for half in halves(&fields) {
                    let cols = columns_for(&half);
                    todo.push((half, cols));
                }
            } else {
                out.push((fields, columns));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Batches of (fields, columns) whose prompts fit `llm.max_prompt_tokens`: each field with
    /// the columns the offline matcher ranks for it; fields with none are not sent.
    pub(super) fn batches(
        &self,
        req: &MappingRequest<'_>,
        offline: &MappingDocument,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let base = (prompt::SYSTEM.len() + prompt::expression_language().len()) / CHARS_PER_TOKEN
            + 200
            + follow_up_tokens(0);
        let budget = self
            .settings
            .max_prompt_tokens
            .saturating_sub(base)
            .max(500);
        let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        let mut cost = 0usize;
        for t in &req.target.fields {
            let Some(m) = offline.fields.get(&t.name) else {
                continue;
            };
            let mut cols: Vec<String> = m.sources.clone();
            for c in &m.candidates {
                cols.extend(c.sources.iter().cloned());
            }
            cols.dedup();
            if cols.is_empty() {
                continue;
            }
            // The field's schema, its candidate line, (at most) its columns with samples, and
            // its share of a follow-up (its entry in the reply and a repair line).
            let field_cost = (serde_json::to_string_pretty(&t.schema).map_or(200, |s| s.len())
                + 80
                + 300 * cols.len())
                / CHARS_PER_TOKEN
                + FOLLOW_UP_TOKENS_PER_FIELD;
            let start_new = match out.last() {
                None => true,
                Some(_) => cost + field_cost > budget,
            };
            if start_new {
                out.push((Vec::new(), Vec::new()));
                cost = 0;
            }
            let (fs, cs) = out.last_mut().expect("pushed above");
            fs.push(t.name.clone());
            for c in cols {
                if !cs.contains(&c) {
                    cs.push(c);
                }
            }
            cost += field_cost;
        }
        out
    }
}

/// The matcher's score of `column` for `field`: its chosen pair's confidence when it reads
/// the column, else the best of its candidates that do; 0 when the matcher has no such pair.
fn matcher_score(offline: &MappingDocument, field: &str, column: &str) -> f64 {
    let Some(m) = offline.fields.get(field) else {
        return 0.0;
    };
    if m.expr.is_some() && m.sources.iter().any(|s| s == column) {
        return m.confidence;
    }
    m.candidates
        .iter()
        .filter(|c| c.sources.iter().any(|s| s == column))
        .map(|c| c.score)
        .fold(0.0, f64::max)
}

/// A column feeds one field, as in the matcher's own assignment. A small model asked field by
/// field gives one column to several fields (the price column to both the price and the win
/// rate, the one fruit flag to the candy's name too); each such column stays with the field
/// the matcher scores highest for it, or with the fields the matcher itself lets share it
/// (both pairs strong). A tie between the best keeps it for none. A field that loses its
/// column takes the matcher's own mapping when that reads no column another field keeps,
/// and is otherwise left undecided, the model's pick its first candidate.
pub(super) fn one_column_one_field(
    doc: &mut MappingDocument,
    offline: &MappingDocument,
    columns: &[&str],
    usage: &mut LlmUsage,
) {
    // An expression the model wrote itself has no sources yet (the compiler finds them
    // later): the columns it names, quoted, are what it reads.
    let reads = |m: &FieldMapping| -> Vec<String> {
        if !m.sources.is_empty() {
            return m.sources.clone();
        }
        let expr = m.expr.as_deref().unwrap_or_default();
        columns
            .iter()
            .filter(|c| expr.contains(&crate::sql::quote(c)))
            .map(|c| c.to_string())
            .collect()
    };
    let offline_reads = |field: &str, column: &str| {
        offline
            .fields
            .get(field)
            .is_some_and(|m| m.expr.is_some() && m.sources.iter().any(|s| s == column))
    };
    let mut claims: IndexMap<String, Vec<&str>> = IndexMap::new();
    for (name, m) in &doc.fields {
        if m.expr.is_some() {
            for c in reads(m) {
                claims.entry(c).or_default().push(name.as_str());
            }
        }
    }
    // Field → (the column it loses, the fields that keep it).
    let mut losers: IndexMap<String, (String, Vec<String>)> = IndexMap::new();
    for (column, fields) in &claims {
        if fields.len() < 2 {
            continue;
        }
        let shared: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| offline_reads(f, column))
            .collect();
        let keep: Vec<&str> = if shared.len() >= 2 {
            shared
        } else {
            let scores: Vec<f64> = fields
                .iter()
                .map(|f| matcher_score(offline, f, column))
                .collect();
            let best = scores.iter().copied().fold(f64::MIN, f64::max);
            let top: Vec<&str> = fields
                .iter()
                .zip(&scores)
                .filter(|(_, s)| (**s - best).abs() < 1e-9)
                .map(|(f, _)| *f)
                .collect();
            if top.len() == 1 { top } else { Vec::new() }
        };
        for f in fields {
            if !keep.contains(f) {
                losers.entry(f.to_string()).or_insert_with(|| {
                    (
                        column.to_string(),
                        keep.iter().map(|k| k.to_string()).collect(),
                    )
                });
            }
        }
    }
    // Columns kept by the fields that lose nothing; a loser's own mapping may not read them.
    let mut taken: std::collections::HashSet<String> = doc
        .fields
        .iter()
        .filter(|(name, m)| m.expr.is_some() && !losers.contains_key(name.as_str()))
        .flat_map(|(_, m)| reads(m))
        .collect();
    for (name, (column, keepers)) in losers {
        let Some(m) = doc.fields.get_mut(&name) else {
            continue;
        };
        let why = if keepers.is_empty() {
            format!("the model gave column `{column}` to several fields the matcher scores alike")
        } else {
            format!(
                "the model gave column `{column}` to `{}` too, which the matcher scores higher for it",
                keepers.join("`, `")
            )
        };
        tracing::info!(field = %name, column = %column, "The model gave one column to several fields; the matcher decides.");
        let own = offline
            .fields
            .get(&name)
            .filter(|o| o.expr.is_some() && o.sources.iter().all(|s| !taken.contains(s)));
        if let Some(o) = own {
            taken.extend(o.sources.iter().cloned());
            usage.fallback_fields.push(name.clone());
            *m = FieldMapping {
                rationale: format!("heuristic (llm fallback): {why}; {}", o.rationale),
                ..o.clone()
            };
            continue;
        }
        let pick = crate::mapping::Candidate {
            score: matcher_score(offline, &name, &column),
            sources: reads(m),
            expr: m.expr.take().unwrap_or_default(),
            why: std::mem::take(&mut m.rationale),
        };
        let mut candidates = vec![pick];
        candidates.append(&mut m.candidates);
        *m = FieldMapping {
            rationale: format!("undecided: {why}"),
            candidates,
            ..FieldMapping::unmapped()
        };
    }
}

/// The columns the offline matcher ranks for `fields` (chosen and alternatives), in order.
pub(super) fn candidate_columns(offline: &MappingDocument, fields: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in fields {
        let Some(m) = offline.fields.get(f) else {
            continue;
        };
        for c in m
            .sources
            .iter()
            .chain(m.candidates.iter().flat_map(|c| c.sources.iter()))
        {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// The target, columns and sample rows of a batch.
pub(super) fn batch_parts(
    req: &MappingRequest<'_>,
    fields: &[String],
    columns: &[String],
) -> Result<BatchParts> {
    let names: Vec<&str> = fields.iter().map(String::as_str).collect();
    let target = req.target.only(&names);
    let profiles: Vec<crate::source::ColumnProfile> = req
        .profiles
        .iter()
        .filter(|p| columns.contains(&p.name))
        .cloned()
        .collect();
    let indices: Vec<usize> = columns
        .iter()
        .filter_map(|c| req.sample.schema().index_of(c).ok())
        .collect();
    let sample = req.sample.project(&indices)?;
    Ok(BatchParts {
        target,
        profiles,
        sample,
    })
}

/// What a batch's request is made of: its fields, its columns' profiles and sample values.
pub(super) struct BatchParts {
    target: crate::schema::TargetSchema,
    profiles: Vec<crate::source::ColumnProfile>,
    sample: arrow::array::RecordBatch,
}

impl BatchParts {
    /// The mapping request of these parts, for the source of `req`.
    pub(super) fn request<'a>(&'a self, req: &MappingRequest<'a>) -> MappingRequest<'a> {
        MappingRequest {
            source: req.source,
            target: &self.target,
            source_schema: req.source_schema.clone(),
            sample: &self.sample,
            profiles: &self.profiles,
        }
    }
}

/// Whether the endpoint failed by timing out.
pub(super) fn timed_out(e: &Error) -> bool {
    matches!(e, Error::Llm { message, .. } if message.contains("timed out"))
}

/// The rationale of a field the model was not asked about: no plausible column.
pub(super) const NOT_SENT: &str =
    "the offline matcher found no plausible column; not sent to the model";

/// A request the model would count over `llm.max_prompt_tokens`, not sent.
pub(super) fn over_budget(e: &Error) -> bool {
    matches!(e, Error::Llm { message, .. } if message.contains(OVER_BUDGET))
}

/// How the error of a request over the prompt budget begins.
pub(super) const OVER_BUDGET: &str = "the request would exceed the prompt budget";

/// A conversation none of whose replies could be read.
pub(super) fn unreadable(e: &Error) -> bool {
    matches!(e, Error::Llm { message, .. } if message.contains(UNREADABLE))
}

/// How the error of a conversation whose replies could never be read begins.
pub(super) const UNREADABLE: &str = "gave no readable mapping";

/// A batch in two halves (the first one the larger).
pub(super) fn halves(batch: &[String]) -> Vec<Vec<String>> {
    let mid = batch.len().div_ceil(2);
    vec![batch[..mid].to_vec(), batch[mid..].to_vec()]
}

/// Adds one conversation's costs and field lists to the whole.
pub(super) fn absorb_usage(usage: &mut LlmUsage, u: LlmUsage) {
    usage.requests += u.requests;
    usage.prompt_tokens += u.prompt_tokens;
    usage.largest_prompt_tokens = usage.largest_prompt_tokens.max(u.largest_prompt_tokens);
    usage.completion_tokens += u.completion_tokens;
    usage.spans.extend(u.spans);
    usage.latency_s = in_flight(&mut usage.spans);
    usage.repair_rounds += u.repair_rounds;
    usage.failed_fields.extend(u.failed_fields);
    usage.fallback_fields.extend(u.fallback_fields);
    usage.unanswered_fields.extend(u.unanswered_fields);
    usage.truncated_replies += u.truncated_replies;
    usage.repeated_replies += u.repeated_replies;
    if !u.response_format.is_empty() {
        usage.response_format = u.response_format;
    }
}

/// How unsure the offline matcher is of a mapped field: one minus its confidence, or the
/// best alternative's score relative to the choice when that is higher. 0 for a certain,
/// unrivalled choice; 1 for a tie.
pub(super) fn uncertainty(m: &FieldMapping) -> f64 {
    let rival = m.candidates.iter().map(|c| c.score).fold(0.0_f64, f64::max);
    let relative = if m.confidence > 0.0 {
        (rival / m.confidence).min(1.0)
    } else {
        1.0
    };
    (1.0 - m.confidence).max(relative).clamp(0.0, 1.0)
}

/// Tokens a follow-up (the reply to one field and its repair line) may add to a batch's
/// prompt: the reply is bounded by its completion budget (80 tokens per field), the repair line
/// by `prompt::REPAIR_*_CHARS`.
pub(super) const FOLLOW_UP_TOKENS_PER_FIELD: usize =
    80 + (prompt::REPAIR_EXPR_CHARS + prompt::REPAIR_ERROR_CHARS + 40) / CHARS_PER_TOKEN;

/// Tokens a follow-up of `fields` fields may add to the opening: their share and the
/// follow-up's own wording.
pub(super) fn follow_up_tokens(fields: usize) -> usize {
    300 + FOLLOW_UP_TOKENS_PER_FIELD * fields
}

/// Seconds covered by at least one of `spans` (sorted in place).
pub(super) fn in_flight(spans: &mut [(Instant, Instant)]) -> f64 {
    spans.sort_unstable();
    let mut total = std::time::Duration::ZERO;
    let mut current: Option<(Instant, Instant)> = None;
    for &(start, end) in spans.iter() {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((s, e)) = current {
        total += e - s;
    }
    total.as_secs_f64()
}
