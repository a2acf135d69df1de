//! After the first mapping: enum value tables completed by the model, and the feedback
//! revision of failing fields.

use super::batch::{batch_parts, candidate_columns};
use super::*;

impl LlmMapper {
    /// For enum fields read plainly from one column whose sample values the offline value
    /// matching does not all cover, asks the model for the missing entries (source value →
    /// allowed value or null), keeps those that name an allowed value, and writes the table
    /// into the expression (`CASE … END`, `value_coverage`).
    pub(super) async fn value_tables(
        &self,
        req: &MappingRequest<'_>,
        doc: &mut MappingDocument,
        usage: &mut LlmUsage,
    ) -> Result<()> {
        for t in &req.target.fields {
            let Some(m) = doc.fields.get(&t.name) else {
                continue;
            };
            let Some(expr) = m.expr.as_deref().filter(|e| !e.contains("CASE")) else {
                continue;
            };
            let Ok(compiled) = crate::mapping::compile::compile_field(
                &self.ctx,
                &req.source_schema,
                &t.name,
                &t.kind.data_type(),
                Some(expr),
            ) else {
                continue;
            };
            let [column] = compiled.sources.as_slice() else {
                continue;
            };
            let Some(p) = req.profiles.iter().find(|p| &p.name == column) else {
                continue;
            };
            let Some((_, _, unmatched)) = crate::mapping::heuristic::enum_table(t, p, &[]) else {
                continue;
            };
            if unmatched.is_empty() {
                continue;
            }
            let allowed: Vec<&str> = t
                .constraints
                .enum_values
                .iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            let asked: Vec<&str> = unmatched.iter().map(String::as_str).take(50).collect();
            let shown: Vec<String> = asked
                .iter()
                .map(|v| {
                    if self.settings.redact_samples {
                        prompt::mask(v)
                    } else {
                        v.to_string()
                    }
                })
                .collect();
            let conversation = vec![
                ChatCompletionRequestSystemMessage::from(prompt::VALUE_SYSTEM).into(),
                ChatCompletionRequestUserMessage::from(prompt::value_request(
                    &t.name, column, &allowed, &shown,
                ))
                .into(),
            ];
            let schema = prompt::value_schema(&shown, &allowed);
            let content = match self
                .ask_with(req.source, &conversation, schema, asked.len(), 0, usage)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    // The mapping stands without the table; unmatched values stay invalid.
                    tracing::warn!(source = req.source, field = %t.name, error = %e, "The LLM value table request failed.");
                    continue;
                }
            };
            let extra: Vec<(String, String)> = reply::parse_values(&content)
                .into_iter()
                .filter_map(|(from, to)| {
                    let i = shown.iter().position(|s| *s == from)?;
                    Some((asked[i].to_string(), to?))
                })
                .collect();
            if extra.is_empty() {
                continue;
            }
            if let Some((Some(case), coverage, still)) =
                crate::mapping::heuristic::enum_table(t, p, &extra)
                && let Some(f) = doc.fields.get_mut(&t.name)
            {
                f.expr = Some(case);
                f.value_coverage = Some((coverage * 100.0).round() / 100.0);
                f.unplaced_values = still;
                f.rationale = format!(
                    "{} (value table: {} value(s) mapped by the model)",
                    f.rationale,
                    extra.len()
                );
                usage.value_tables += 1;
            }
        }
        Ok(())
    }
}

impl LlmMapper {
    /// Asks the model to revise the failing fields of `doc` given the probe's error digest
    /// (`head` and one entry per failing field in `lines`). Only the failing fields are asked
    /// about, each with the columns it reads and the offline matcher's candidates, in batches
    /// that fit `llm.max_prompt_tokens`: the instructions, the request for those fields, the
    /// model's current entries for them, then their digest. Revised expressions that do not
    /// compile are dropped (the field keeps its expression). Returns the revised document and
    /// the fields that changed.
    pub async fn revise(
        &self,
        req: &MappingRequest<'_>,
        doc: &MappingDocument,
        head: &str,
        lines: &IndexMap<String, String>,
        usage: &mut LlmUsage,
    ) -> Result<(MappingDocument, Vec<String>)> {
        let failing: Vec<String> = lines
            .keys()
            .filter(|f| doc.fields.contains_key(*f) && req.target.field(f).is_some())
            .cloned()
            .collect();
        let mut revised = doc.clone();
        let mut changed = Vec::new();
        if failing.is_empty() {
            return Ok((revised, changed));
        }
        let offline = crate::mapping::heuristic::HeuristicMapper.map_now(req);
        let columns_for = |fields: &[String]| {
            let mut cols = candidate_columns(&offline, fields);
            for f in fields {
                for c in doc
                    .fields
                    .get(f)
                    .map(|m| m.sources.as_slice())
                    .unwrap_or(&[])
                {
                    if !cols.contains(c) {
                        cols.push(c.clone());
                    }
                }
            }
            cols
        };
        // What follows the opening: the current entries and the digest, at most this much for
        // any batch (all failing fields together).
        let follow = head.len()
            + failing
                .iter()
                .map(|f| lines[f].len() + 200 + doc.fields[f].rationale.len())
                .sum::<usize>();
        let reserve = follow / CHARS_PER_TOKEN + 200;
        let batches = self.fit(
            req,
            &columns_for,
            vec![(failing.clone(), columns_for(&failing))],
            &|_| reserve,
        )?;
        if batches.len() > 1 {
            usage.batches += batches.len() as u32;
        }
        for (fields, columns) in batches {
            let parts = batch_parts(req, &fields, &columns)?;
            let sub = parts.request(req);
            let previous = serde_json::json!({"fields": fields.iter().map(|t| {
                let m = &doc.fields[t];
                serde_json::json!({
                    "target": t, "expr": m.expr, "confidence": m.confidence, "rationale": m.rationale,
                })
            }).collect::<Vec<_>>()});
            let mut digest = head.to_string();
            for f in &fields {
                digest.push_str(&lines[f]);
            }
            let (mut conversation, offers) = self.opening(&sub);
            conversation
                .push(ChatCompletionRequestAssistantMessage::from(previous.to_string()).into());
            conversation.push(
                ChatCompletionRequestUserMessage::from(prompt::revision_request(&digest)).into(),
            );
            let names: Vec<&str> = fields.iter().map(String::as_str).collect();
            let content = self
                .ask(req.source, &conversation, &names, true, 0, usage)
                .await?;
            let entries = reply::parse(&content).map_err(|e| Error::Llm {
                source_name: req.source.to_string(),
                message: format!("the revision could not be read: {e}"),
            })?;
            let columns: Vec<&str> = req.profiles.iter().map(|p| p.name.as_str()).collect();
            for e in entries {
                let Some(t) = req.target.field(&e.target) else {
                    continue;
                };
                if !fields.contains(&e.target) {
                    continue;
                }
                let Some(current) = revised.fields.get_mut(&e.target) else {
                    continue;
                };
                let target = e.target.clone();
                let proposed = super::conversation::answer(e, &offers, &columns);
                if current.expr == proposed.expr {
                    continue;
                }
                let compiles = crate::mapping::compile::compile_field(
                    &self.ctx,
                    &req.source_schema,
                    &t.name,
                    &t.kind.data_type(),
                    proposed.expr.as_deref(),
                );
                match compiles {
                    Ok(_) => {
                        current.expr = proposed.expr;
                        current.confidence = proposed.confidence;
                        current.rationale = proposed.rationale;
                        changed.push(target);
                    }
                    Err(err) => {
                        tracing::warn!(source = req.source, field = %target, error = %err, "The model's revised expression does not compile; the field keeps its expression.");
                    }
                }
            }
        }
        self.price(usage);
        Ok((revised, changed))
    }
}
