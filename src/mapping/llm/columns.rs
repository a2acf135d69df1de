//! Column by column: a wide target (more fields than `llm.by_column_above`) asked from the
//! source's side. A standard of hundreds of fields, each a few percent filled by a source of a
//! dozen columns, would be hundreds of questions field by field (a 1.5B model on two cores
//! answers about one a minute); column by column it is one question per column, each with the
//! fields the offline matcher ranks best for it, and the model picks the ones the column fills.
//! The expression of a picked pair is the matcher's, so a small model never writes SQL here.

use super::batch::{NOT_SENT, UNREADABLE, absorb_usage, over_budget, timed_out, unreadable};
use super::*;
use crate::mapping::heuristic::HeuristicMapper;

/// One target field offered for a column: the matcher's expression reading that column alone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FieldOffer {
    pub field: String,
    pub expr: String,
    pub score: f64,
    pub why: String,
}

/// The fields offered per column (best first, at most `k` each), from the offline matcher's
/// chosen and candidate expressions that read one column; fields in `skip` (decided offline)
/// are not offered. Columns without a field are left out.
pub(super) fn column_offers(
    offline: &MappingDocument,
    columns: &[String],
    k: usize,
    skip: &std::collections::HashSet<String>,
) -> IndexMap<String, Vec<FieldOffer>> {
    let mut by_column: IndexMap<String, Vec<FieldOffer>> =
        columns.iter().map(|c| (c.clone(), Vec::new())).collect();
    for (field, m) in &offline.fields {
        if skip.contains(field) {
            continue;
        }
        let chosen = m
            .expr
            .as_ref()
            .map(|e| (e, &m.sources, m.confidence, &m.rationale));
        let rest = m
            .candidates
            .iter()
            .map(|c| (&c.expr, &c.sources, c.score, &c.why));
        for (expr, sources, score, why) in chosen.into_iter().chain(rest) {
            let [column] = sources.as_slice() else {
                continue;
            };
            let Some(list) = by_column.get_mut(column) else {
                continue;
            };
            // A field is offered once per column, with its best expression for it.
            match list.iter_mut().find(|o| &o.field == field) {
                Some(o) if o.score >= score => {}
                Some(o) => {
                    o.expr = expr.clone();
                    o.score = score;
                    o.why = why.clone();
                }
                None => list.push(FieldOffer {
                    field: field.clone(),
                    expr: expr.clone(),
                    score,
                    why: why.clone(),
                }),
            }
        }
    }
    for list in by_column.values_mut() {
        list.retain(|o| o.score > 0.0);
        // Best first; the target's order among equals keeps the prompt repeatable.
        list.sort_by(|a, b| b.score.total_cmp(&a.score));
        list.truncate(k.clamp(1, prompt::MAX_CHOICES));
    }
    by_column.retain(|_, list| !list.is_empty());
    by_column
}

/// The columns of a batch in groups whose requests fit `budget` tokens by `size`, in order; a
/// column whose request alone does not fit is returned apart (the caller answers it offline).
pub(super) fn pack(
    columns: &[String],
    budget: usize,
    size: &dyn Fn(&[String]) -> usize,
) -> (Vec<Vec<String>>, Vec<String>) {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut alone = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for c in columns {
        if size(std::slice::from_ref(c)) > budget {
            alone.push(c.clone());
            continue;
        }
        current.push(c.clone());
        if current.len() > 1 && size(&current) > budget {
            let last = current.pop().unwrap_or_default();
            batches.push(std::mem::take(&mut current));
            current.push(last);
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    (batches, alone)
}

/// A request of at least this many columns answered with no field at all is asked again in
/// halves (see [`LlmMapper::propose_by_column`]).
const SILENT_SPLIT: usize = 4;

/// How many of `cols` the offline matcher chose a field for.
fn accepted(offline: &MappingDocument, cols: &[String]) -> usize {
    cols.iter()
        .filter(|c| {
            offline
                .fields
                .values()
                .any(|m| m.expr.is_some() && m.sources.as_slice() == [(*c).clone()])
        })
        .count()
}

/// Tokens of a column-by-column reply per column (its name, a field's name, the JSON around
/// them): the completion budget of the request.
const REPLY_TOKENS_PER_COLUMN: u32 = 40;

impl LlmMapper {
    /// [`Self::propose`] for a wide target: one question per source column.
    pub(super) async fn propose_by_column(
        &self,
        req: &MappingRequest<'_>,
    ) -> Result<(MappingDocument, LlmUsage)> {
        // The model chooses among the matcher's candidates as the matcher ranks them, on their
        // evidence; the confidences for the target's width come last.
        let offline = HeuristicMapper.map_evidence(req);
        let floor = self.settings.min_uncertainty;
        let mut usage = LlmUsage {
            model: self.settings.model.clone(),
            endpoint: self.endpoint.clone(),
            prompt_version: prompt::COLUMN_PROMPT_VERSION,
            ..Default::default()
        };
        // Decided offline: a certain, unrivalled choice (`llm.min_uncertainty`), and a choice
        // the model cannot pick column by column (an expression over several columns).
        let decided: std::collections::HashSet<String> = offline
            .fields
            .iter()
            .filter(|(_, m)| {
                m.expr.is_some()
                    && ((floor > 0.0 && batch::uncertainty(m) < floor) || m.sources.len() > 1)
            })
            .map(|(f, _)| f.clone())
            .collect();
        // A column whose field was decided offline for certain is not asked about at all: the
        // model would only be offered that column's weaker fields.
        let certain: std::collections::HashSet<&String> = decided
            .iter()
            .filter_map(|f| offline.fields.get(f))
            .filter(|m| m.sources.len() == 1)
            .flat_map(|m| &m.sources)
            .collect();
        let columns: Vec<String> = req
            .profiles
            .iter()
            .map(|p| p.name.clone())
            .filter(|c| !certain.contains(c))
            .collect();
        let offers = column_offers(&offline, &columns, self.settings.candidates, &decided);
        let size = |cols: &[String]| self.tokens(&self.column_conversation(req, &offers, cols));
        let (mut pending, alone) = pack(
            &offers.keys().cloned().collect::<Vec<_>>(),
            self.settings.max_prompt_tokens,
            &size,
        );
        usage.batches = pending.len() as u32;
        // Column → the numbers it chose; `lost` holds the columns the model could not answer,
        // with the reason.
        let mut chosen: IndexMap<String, Vec<usize>> = IndexMap::new();
        let mut lost: Vec<(String, String)> = alone
            .into_iter()
            .map(|c| (c, OVER_BUDGET_ALONE.to_string()))
            .collect();
        let mut first_error: Option<Error> = None;
        // A batch that times out, goes over the budget by the model's count, cannot be read or
        // is answered with no field at all goes again in halves; a column that fails alone is
        // answered offline. Every round halves a batch or drops a column, so this ends.
        for _round in 0..=usize::BITS {
            if pending.is_empty() {
                break;
            }
            let runs = pending
                .iter()
                .map(|cols| self.ask_columns(req, &offers, cols));
            let results = futures::future::join_all(runs).await;
            let mut next = Vec::new();
            for (cols, (r, u)) in pending.drain(..).zip(results) {
                absorb_usage(&mut usage, u);
                match r {
                    // Not one field for any of several columns, though the matcher accepted
                    // one for most of them: a small model that answers a long list with
                    // "none" throughout is stuck in a pattern, not judging each column. The
                    // halves are asked again; their answers stand, whatever they are.
                    Ok(answers)
                        if cols.len() >= SILENT_SPLIT
                            && answers.values().all(Vec::is_empty)
                            && 2 * accepted(&offline, &cols) >= cols.len() =>
                    {
                        tracing::debug!(
                            source = req.source,
                            columns = cols.len(),
                            "The model chose no field for any column of a request; asking again in halves."
                        );
                        let mid = cols.len().div_ceil(2);
                        next.push(cols[..mid].to_vec());
                        next.push(cols[mid..].to_vec());
                        usage.batches += 1;
                    }
                    Ok(answers) => {
                        let missing: Vec<String> = cols
                            .iter()
                            .filter(|c| !answers.contains_key(*c))
                            .cloned()
                            .collect();
                        chosen.extend(answers);
                        // Columns a readable reply left out (cut at its budget) are asked
                        // again, once, in a batch of their own.
                        if !missing.is_empty() && missing.len() < cols.len() {
                            next.push(missing);
                        } else if !missing.is_empty() {
                            lost.extend(missing.into_iter().map(|c| {
                                (c, "the model gave no entry for this column".to_string())
                            }));
                        }
                    }
                    Err(e)
                        if (timed_out(&e) || over_budget(&e) || unreadable(&e))
                            && cols.len() > 1 =>
                    {
                        let mid = cols.len().div_ceil(2);
                        next.push(cols[..mid].to_vec());
                        next.push(cols[mid..].to_vec());
                        usage.batches += 1;
                    }
                    Err(e) if timed_out(&e) || over_budget(&e) || unreadable(&e) => {
                        let why = match &e {
                            Error::Llm { message, .. } => message.clone(),
                            other => other.to_string(),
                        };
                        lost.extend(cols.into_iter().map(|c| (c, why.clone())));
                        // A column too large for the budget is the matcher's to answer, not
                        // a failure of the model.
                        if !over_budget(&e) {
                            first_error.get_or_insert(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            pending = next;
        }
        if chosen.is_empty()
            && !lost.is_empty()
            && let Some(e) = first_error
        {
            // Nothing the model said could be used: the source's mapping failed
            // (`llm.fallback` decides what happens next).
            return Err(e);
        }
        let mut doc =
            self.column_document(req, &offline, &offers, &decided, &chosen, &lost, &mut usage);
        // A pick the matcher's evidence does not accept stays undecided, the pick first among
        // its candidates, as the matcher holds back such a pair of its own (21 such picks of
        // the 1.5B model on the wide group's subset were all wrong). Every other field the
        // matcher decided itself, at or above acceptance.
        doc.hold_below_named(
            crate::mapping::heuristic::ACCEPT,
            "evidence score",
            "the matcher's acceptance score",
        );
        crate::mapping::heuristic::calibrate_document(&mut doc, req.target.fields.len());
        Ok((doc, usage))
    }

    /// The opening of a column-by-column request for `cols`.
    fn column_conversation(
        &self,
        req: &MappingRequest<'_>,
        offers: &IndexMap<String, Vec<FieldOffer>>,
        cols: &[String],
    ) -> Vec<ChatCompletionRequestMessage> {
        let parts: Vec<String> = cols
            .iter()
            .filter_map(|c| {
                let p = req.profiles.iter().find(|p| &p.name == c)?;
                let fields: Vec<&crate::schema::TargetField> = offers
                    .get(c)?
                    .iter()
                    .filter_map(|o| req.target.fields.iter().find(|t| t.name == o.field))
                    .collect();
                Some(prompt::column_request_part(
                    p,
                    &fields,
                    self.settings.redact_samples,
                ))
            })
            .collect();
        vec![
            ChatCompletionRequestSystemMessage::from(prompt::COLUMN_SYSTEM).into(),
            ChatCompletionRequestUserMessage::from(prompt::column_request(req.source, &parts))
                .into(),
        ]
    }

    /// One column-by-column request: the numbers each column chose (a number outside its list
    /// is dropped). An unreadable reply is an [`UNREADABLE`] error.
    async fn ask_columns(
        &self,
        req: &MappingRequest<'_>,
        offers: &IndexMap<String, Vec<FieldOffer>>,
        cols: &[String],
    ) -> (Result<IndexMap<String, Vec<usize>>>, LlmUsage) {
        let mut usage = LlmUsage::default();
        let conversation = self.column_conversation(req, offers, cols);
        let names: Vec<&str> = cols.iter().map(String::as_str).collect();
        let mut fields: Vec<&str> = cols
            .iter()
            .filter_map(|c| offers.get(c))
            .flatten()
            .map(|o| o.field.as_str())
            .collect();
        fields.sort_unstable();
        fields.dedup();
        let schema = prompt::column_schema(&names, &fields);
        // The completion budget: `ask_with` gives 200 + 80 per item; a column's entry is its
        // name and a field's, so the items are counted in shares of a field's 80.
        let items = (cols.len() as u32 * REPLY_TOKENS_PER_COLUMN).div_ceil(80) as usize;
        let content = match self
            .ask_with(req.source, &conversation, schema, items, 0, &mut usage)
            .await
        {
            Ok(c) => c,
            Err(e) => return (Err(e), usage),
        };
        match reply::parse_columns(&content) {
            Ok(entries) => {
                // An answer names one of the column's own fields (or gives its number); a
                // field listed under another column, "none" or anything else is no pick.
                let answers = entries
                    .into_iter()
                    .filter(|(c, _)| cols.contains(c))
                    .filter_map(|(c, answer)| {
                        let list = offers.get(&c)?;
                        let n = list
                            .iter()
                            .position(|o| o.field == answer)
                            .map(|i| i + 1)
                            .or_else(|| answer.parse::<usize>().ok())
                            .filter(|n| (1..=list.len()).contains(n));
                        Some((c, n.into_iter().collect()))
                    })
                    .collect();
                (Ok(answers), usage)
            }
            Err(e) => (
                Err(Error::Llm {
                    source_name: req.source.to_string(),
                    message: format!("the model at {} {UNREADABLE}: {e}", self.endpoint),
                }),
                usage,
            ),
        }
    }

    /// The document of a column-by-column conversation: a field picked by a column takes the
    /// matcher's expression for that column (the best-scored one when several columns picked
    /// it; the others stay as candidates); a field offered but picked by no column is
    /// unmapped (the model's answer), unless the matcher accepts it for a column the model
    /// picked nothing for; the fields of columns the model could not answer, and fields
    /// decided offline, keep the matcher's mapping.
    #[allow(clippy::too_many_arguments)]
    fn column_document(
        &self,
        req: &MappingRequest<'_>,
        offline: &MappingDocument,
        offers: &IndexMap<String, Vec<FieldOffer>>,
        decided: &std::collections::HashSet<String>,
        chosen: &IndexMap<String, Vec<usize>>,
        lost: &[(String, String)],
        usage: &mut LlmUsage,
    ) -> MappingDocument {
        // Field → the (column, offer) pairs the model picked for it.
        let mut picked: IndexMap<&str, Vec<(&str, &FieldOffer, usize)>> = IndexMap::new();
        for (column, numbers) in chosen {
            for &n in numbers {
                if let Some(o) = offers.get(column).and_then(|l| l.get(n - 1)) {
                    picked
                        .entry(o.field.as_str())
                        .or_default()
                        .push((column.as_str(), o, n));
                }
            }
        }
        // Fields shown to the model in an answered column.
        let asked: std::collections::HashSet<&str> = chosen
            .keys()
            .filter_map(|c| offers.get(c))
            .flatten()
            .map(|o| o.field.as_str())
            .collect();
        let lost_columns: IndexMap<&str, &str> = lost
            .iter()
            .map(|(c, why)| (c.as_str(), why.as_str()))
            .collect();
        let mut fields = IndexMap::new();
        for t in &req.target.fields {
            let off = offline.fields.get(&t.name);
            let m = if decided.contains(&t.name) {
                usage.offline_fields.push(t.name.clone());
                let m = off.cloned().unwrap_or_else(FieldMapping::unmapped);
                FieldMapping {
                    rationale: format!(
                        "heuristic (decided offline: {}): {}",
                        if m.sources.len() > 1 {
                            "an expression over several columns"
                        } else {
                            "certain, below llm.min_uncertainty"
                        },
                        m.rationale
                    ),
                    ..m
                }
            } else if let Some(list) = picked.get_mut(t.name.as_str()) {
                list.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
                let (column, o, n) = list[0];
                let others: Vec<crate::mapping::Candidate> = list[1..]
                    .iter()
                    .map(|(c, o, _)| crate::mapping::Candidate {
                        expr: o.expr.clone(),
                        sources: vec![c.to_string()],
                        score: o.score,
                        why: format!("also chosen by the model for column {c:?}"),
                    })
                    .chain(
                        off.into_iter()
                            .flat_map(|m| m.candidates.iter())
                            .filter(|c| c.sources.as_slice() != [column.to_string()])
                            .cloned(),
                    )
                    .take(self.settings.candidates.max(1))
                    .collect();
                FieldMapping {
                    expr: Some(o.expr.clone()),
                    sources: vec![column.to_string()],
                    confidence: o.score,
                    rationale: format!(
                        "chose field {n} for column {column:?} (column by column): {}",
                        o.why
                    ),
                    candidates: others,
                    ..FieldMapping::unmapped()
                }
            } else if let Some(why) = offered_in(offers, &t.name)
                .into_iter()
                .find_map(|c| lost_columns.get(c).copied())
                .filter(|_| !asked.contains(t.name.as_str()))
            {
                // Offered only in columns the model could not answer: the matcher decides.
                usage.unanswered_fields.push(t.name.clone());
                match off.filter(|m| m.expr.is_some()) {
                    Some(m) => {
                        usage.fallback_fields.push(t.name.clone());
                        FieldMapping {
                            rationale: format!("heuristic (llm fallback): {why}; {}", m.rationale),
                            ..m.clone()
                        }
                    }
                    None => FieldMapping {
                        rationale: format!(
                            "unmapped: {why}, and the offline matcher found no column"
                        ),
                        candidates: off.map(|m| m.candidates.clone()).unwrap_or_default(),
                        ..FieldMapping::unmapped()
                    },
                }
            } else if let Some(m) = off.filter(|m| {
                m.expr.is_some()
                    && m.confidence >= crate::mapping::heuristic::ACCEPT
                    && m.sources.len() == 1
                    && chosen.get(&m.sources[0]).is_some_and(Vec::is_empty)
            }) {
                // The model answered "none" for the column the matcher accepts this field
                // for: a small model's "none" on a long list is a pattern as often as a
                // judgement (see `propose_by_column`), so only a pick of another field for
                // that column overrules the matcher; its choice stands, decided offline.
                usage.offline_fields.push(t.name.clone());
                FieldMapping {
                    rationale: format!(
                        "heuristic (decided offline: the model chose no field for column {:?}, which the matcher accepts for this field): {}",
                        m.sources[0], m.rationale
                    ),
                    ..m.clone()
                }
            } else if asked.contains(t.name.as_str()) {
                FieldMapping {
                    rationale: "unmapped: no column chose this field (column by column)".into(),
                    candidates: off
                        .map(|m| {
                            let mut c: Vec<crate::mapping::Candidate> = m
                                .expr
                                .iter()
                                .map(|e| crate::mapping::Candidate {
                                    expr: e.clone(),
                                    sources: m.sources.clone(),
                                    score: m.confidence,
                                    why: m.rationale.clone(),
                                })
                                .collect();
                            c.extend(m.candidates.iter().cloned());
                            c
                        })
                        .unwrap_or_default(),
                    ..FieldMapping::unmapped()
                }
            } else {
                match off.filter(|m| m.expr.is_some()) {
                    // The matcher's choice reads a column for which other fields rank higher:
                    // the model was not asked about it.
                    Some(m) => {
                        usage.offline_fields.push(t.name.clone());
                        FieldMapping {
                            rationale: format!(
                                "heuristic (decided offline: not among its column's {} best-ranked fields): {}",
                                self.settings.candidates, m.rationale
                            ),
                            ..m.clone()
                        }
                    }
                    None => FieldMapping {
                        rationale: NOT_SENT.into(),
                        candidates: off.map(|m| m.candidates.clone()).unwrap_or_default(),
                        ..FieldMapping::unmapped()
                    },
                }
            };
            fields.insert(t.name.clone(), m);
        }
        MappingDocument {
            fields,
            ..self.empty_document(req)
        }
    }
}

/// The columns whose offers include `field`.
fn offered_in<'a>(offers: &'a IndexMap<String, Vec<FieldOffer>>, field: &str) -> Vec<&'a str> {
    offers
        .iter()
        .filter(|(_, l)| l.iter().any(|o| o.field == field))
        .map(|(c, _)| c.as_str())
        .collect()
}

/// Why a column was answered offline: its request alone is over the budget.
const OVER_BUDGET_ALONE: &str =
    "the column's request alone would exceed llm.max_prompt_tokens; the offline matcher decides";

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of the matcher's document: its name, its choice (column, score) and its
    /// candidates.
    type Field<'a> = (&'a str, Option<(&'a str, f64)>, &'a [(&'a str, f64)]);

    fn doc(fields: &[Field<'_>]) -> MappingDocument {
        MappingDocument {
            reviews: vec![],
            source: "s".into(),
            source_fingerprint: String::new(),
            mapper: MapperKind::Heuristic,
            pinned: false,
            model: None,
            fields: fields
                .iter()
                .map(|(f, chosen, cands)| {
                    let mut m = FieldMapping::unmapped();
                    if let Some((c, s)) = chosen {
                        m.expr = Some(format!("\"{c}\""));
                        m.sources = vec![c.to_string()];
                        m.confidence = *s;
                    }
                    m.candidates = cands
                        .iter()
                        .map(|(c, s)| crate::mapping::Candidate {
                            expr: format!("\"{c}\""),
                            sources: vec![c.to_string()],
                            score: *s,
                            why: String::new(),
                        })
                        .collect();
                    (f.to_string(), m)
                })
                .collect(),
        }
    }

    #[test]
    fn each_column_is_offered_its_best_ranked_fields() {
        let d = doc(&[
            ("a.start", Some(("START", 0.9)), &[("STOP", 0.4)]),
            ("a.end", Some(("STOP", 0.8)), &[("START", 0.5)]),
            ("b.start", None, &[("START", 0.6)]),
            ("c.note", None, &[("START", 0.1), ("STOP", 0.0)]),
        ]);
        let cols = vec!["START".to_string(), "STOP".to_string(), "CODE".to_string()];
        let offers = column_offers(&d, &cols, 3, &Default::default());
        let start: Vec<(&str, f64)> = offers["START"]
            .iter()
            .map(|o| (o.field.as_str(), o.score))
            .collect();
        assert_eq!(start, [("a.start", 0.9), ("b.start", 0.6), ("a.end", 0.5)]);
        let stop: Vec<&str> = offers["STOP"].iter().map(|o| o.field.as_str()).collect();
        // A zero score is no offer; a column with nothing offered is not asked about.
        assert_eq!(stop, ["a.end", "a.start"]);
        assert!(!offers.contains_key("CODE"));
        let skip = ["a.start".to_string()].into_iter().collect();
        let offers = column_offers(&d, &cols, 1, &skip);
        assert_eq!(offers["START"][0].field, "b.start");
        assert_eq!(offers["START"].len(), 1);
    }

    #[test]
    fn columns_are_packed_into_requests_that_fit() {
        let cols: Vec<String> = ["a", "b", "c", "d", "huge"].map(String::from).to_vec();
        // Each ordinary column costs 10 tokens, the huge one 500, the opening 5.
        let size = |c: &[String]| {
            5 + c
                .iter()
                .map(|c| if c == "huge" { 500 } else { 10 })
                .sum::<usize>()
        };
        let (batches, alone) = pack(&cols, 30, &size);
        assert_eq!(batches, [vec!["a", "b"], vec!["c", "d"]]);
        assert_eq!(alone, ["huge"]);
        let (batches, alone) = pack(&cols[..4], 1000, &size);
        assert_eq!(batches, [vec!["a", "b", "c", "d"]]);
        assert!(alone.is_empty());
    }
}
