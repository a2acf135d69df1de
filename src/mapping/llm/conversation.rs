//! One conversation with the model: the opening, the requests, reading the replies, and the
//! repair rounds until every field compiles or the rounds run out.

use super::batch::{OVER_BUDGET, UNREADABLE};
use super::*;

/// The numbered candidates offered per field (see [`prompt::offered`]).
pub(super) type Offers = indexmap::IndexMap<String, Vec<prompt::Offered>>;

/// A reply entry as the field's mapping: the offered candidate it chose by number, else the
/// expression it wrote (bare column names quoted).
pub(super) fn answer(e: reply::ReplyField, offers: &Offers, columns: &[&str]) -> FieldMapping {
    let confidence = e.confidence.unwrap_or(0.5);
    let rationale = e.rationale.unwrap_or_default();
    let chosen = e
        .choice
        .filter(|c| c.fract() == 0.0 && *c >= 1.0)
        .and_then(|c| offers.get(&e.target)?.get(c as usize - 1));
    match chosen {
        Some(c) => FieldMapping {
            expr: Some(c.expr.clone()),
            sources: c.sources.clone(),
            confidence,
            rationale: format!(
                "chose candidate {} ({}){}{rationale}",
                e.choice.unwrap_or_default(),
                c.sources.join(" + "),
                if rationale.is_empty() { "" } else { ": " }
            ),
            ..FieldMapping::unmapped()
        },
        None => FieldMapping {
            expr: e.expr.map(|x| reply::quote_bare_columns(&x, columns)),
            sources: vec![],
            confidence,
            rationale,
            ..FieldMapping::unmapped()
        },
    }
}

impl LlmMapper {
    /// One chat completion over the conversation so far; the reply's text.
    /// `targets` are the fields the reply must answer (exactly one entry each when `exact`).
    pub(super) async fn ask(
        &self,
        source: &str,
        conversation: &[ChatCompletionRequestMessage],
        targets: &[&str],
        exact: bool,
        boost: u32,
        usage: &mut LlmUsage,
    ) -> Result<String> {
        let schema = prompt::response_schema(targets, exact, !self.openai);
        self.ask_with(source, conversation, schema, targets.len(), boost, usage)
            .await
    }

    /// One chat completion whose reply follows `schema`; `items` sizes the completion budget,
    /// doubled when `boost` is set (after a reply cut before its first complete entry).
    pub(super) async fn ask_with(
        &self,
        source: &str,
        conversation: &[ChatCompletionRequestMessage],
        schema: serde_json::Value,
        items: usize,
        boost: u32,
        usage: &mut LlmUsage,
    ) -> Result<String> {
        // The gate of `llm.max_prompt_tokens`: whatever the planner estimated, a request the
        // model would count over the budget is not sent (the caller asks in smaller parts).
        let size = self.count_tokens(conversation).await;
        if size > self.settings.max_prompt_tokens {
            return Err(Error::Llm {
                source_name: source.to_string(),
                message: format!(
                    "{OVER_BUDGET}: {size} prompt tokens, llm.max_prompt_tokens is {}",
                    self.settings.max_prompt_tokens
                ),
            });
        }
        let _permit = self.gate.acquire().await.map_err(|_| Error::Interrupted)?;
        loop {
            let structured = !self.json_object_only.load(Ordering::Relaxed);
            let response_format = if structured {
                ResponseFormat::JsonSchema {
                    json_schema: ResponseFormatJsonSchema {
                        description: Some("One SQL expression per target field".into()),
                        name: prompt::RESPONSE_NAME.into(),
                        schema: schema.clone(),
                        strict: Some(true),
                    },
                }
            } else {
                ResponseFormat::JsonObject
            };
            // A completion budget sized to the fields asked for: a server's default (often 512
            // tokens) cuts a wide reply, and without one a looping model runs on.
            let budget = (200 + 80 * items as u32)
                .saturating_mul(1 << boost.min(1))
                .min(self.settings.max_completion_tokens);
            #[allow(deprecated)]
            let request = CreateChatCompletionRequest {
                model: self.settings.model.clone(),
                messages: conversation.to_vec(),
                temperature: Some(self.settings.temperature),
                response_format: Some(response_format),
                max_tokens: Some(budget),
                ..Default::default()
            };
            // Request sizes at debug level (`-vv`): what a context or budget problem needs.
            let prompt_chars: usize = conversation
                .iter()
                .map(|m| serde_json::to_string(m).map_or(0, |t| t.len()))
                .sum();
            tracing::debug!(
                source,
                items,
                prompt_chars,
                prompt_tokens = size,
                max_tokens = budget,
                "Sending an LLM request."
            );
            let started = Instant::now();
            let result = self.client.chat().create(request).await;
            let ended = Instant::now();
            usage.latency_s += (ended - started).as_secs_f64();
            usage.spans.push((started, ended));
            match result {
                Ok(resp) => {
                    usage.requests += 1;
                    usage.response_format = if structured {
                        "json_schema"
                    } else {
                        "json_object"
                    }
                    .into();
                    if let Some(u) = &resp.usage {
                        self.counter
                            .observe(conversation, u64::from(u.prompt_tokens));
                        usage.prompt_tokens += u64::from(u.prompt_tokens);
                        usage.largest_prompt_tokens =
                            usage.largest_prompt_tokens.max(u64::from(u.prompt_tokens));
                        usage.completion_tokens += u64::from(u.completion_tokens);
                    }
                    let choice = resp.choices.into_iter().next();
                    if choice
                        .as_ref()
                        .is_some_and(|c| c.finish_reason == Some(FinishReason::Length))
                    {
                        // The complete entries before the cut are kept (see `reply::parse`);
                        // the fields after it are asked again.
                        tracing::warn!(
                            source,
                            budget,
                            "The LLM reply was cut at its token budget (finish_reason: length)."
                        );
                        usage.truncated_replies += 1;
                    }
                    let text = choice.and_then(|c| c.message.content).unwrap_or_default();
                    return Ok(text);
                }
                // Servers without structured output reject the request format; ask for a
                // plain JSON object instead (the prompt describes the shape).
                Err(OpenAIError::ApiError(a))
                    if structured && matches!(a.status_code.as_u16(), 400 | 422) =>
                {
                    tracing::warn!(source, endpoint = %self.endpoint, status = %a.status_code, "The LLM endpoint rejected json_schema output; asking for a JSON object instead.");
                    self.json_object_only.store(true, Ordering::Relaxed);
                    usage.requests += 1;
                }
                Err(e) => return Err(self.failure(source, e)),
            }
        }
    }

    /// The conversation's first two messages: the instructions and the mapping request.
    /// The opening messages, and the numbered candidates they offer per field.
    pub(super) fn opening(
        &self,
        req: &MappingRequest<'_>,
    ) -> (Vec<ChatCompletionRequestMessage>, Offers) {
        // The offline matcher's ranked expressions go in as numbered choices: the model
        // reranks them, and writes a conversion only where none is right. Choosing is what a
        // small model does well; writing SQL is where it goes wrong and runs long.
        let k = self.settings.candidates;
        let offered = (k > 0)
            .then(|| prompt::offered(&crate::mapping::heuristic::HeuristicMapper.map_now(req), k));
        let messages = vec![
            ChatCompletionRequestSystemMessage::from(prompt::SYSTEM).into(),
            ChatCompletionRequestUserMessage::from(prompt::mapping_request(
                req,
                self.settings.sample_rows,
                self.settings.redact_samples,
                offered.as_ref(),
            ))
            .into(),
        ];
        (messages, offered.unwrap_or_default())
    }

    /// Compile errors of the fields that have an expression: (field, expr, error). A date
    /// format that parses none of the sample's values counts as an error too: it would make
    /// every row invalid.
    pub(super) fn check(
        &self,
        req: &MappingRequest<'_>,
        fields: &IndexMap<String, FieldMapping>,
    ) -> Vec<(String, String, String)> {
        req.target
            .fields
            .iter()
            .filter_map(|t| {
                let expr = fields.get(&t.name)?.expr.as_deref()?;
                let compiled = crate::mapping::compile::compile_field(
                    &self.ctx,
                    &req.source_schema,
                    &t.name,
                    &t.kind.data_type(),
                    Some(expr),
                );
                let error = match compiled {
                    Err(e) => Some(e),
                    Ok(f) => formats_against_sample(req, expr, &f.sources),
                };
                error.map(|e| (t.name.clone(), expr.to_string(), e))
            })
            .collect()
    }

    /// The conversation: propose, check, repair; returns the document and what it cost.
    /// The usage is returned with a failure too: its requests were made and cost tokens.
    pub(super) async fn propose_one(
        &self,
        req: &MappingRequest<'_>,
    ) -> (Result<MappingDocument>, LlmUsage) {
        let mut usage = LlmUsage {
            model: self.settings.model.clone(),
            endpoint: self.endpoint.clone(),
            prompt_version: prompt::PROMPT_VERSION,
            ..Default::default()
        };
        let doc = self.converse(req, &mut usage).await;
        (doc, usage)
    }

    /// [`Self::propose_one`]'s conversation, counting into `usage`.
    pub(super) async fn converse(
        &self,
        req: &MappingRequest<'_>,
        usage: &mut LlmUsage,
    ) -> Result<MappingDocument> {
        let (mut conversation, offers) = self.opening(req);
        let mut fields = placeholders(req, "the model proposed no expression for this field");
        let mut any_reply_read = false;
        let mut last_unreadable = String::new();
        // The fields the next reply must answer: all of them first, then those a follow-up
        // asks about again.
        let mut asked: Vec<String> = req.target.fields.iter().map(|t| t.name.clone()).collect();
        // Fields some reply has named, and those the last follow-up asked for because no reply
        // had: an answer to one of those is progress even when the rest repeats.
        let mut answered_ever: std::collections::HashSet<String> = Default::default();
        let mut missing_asked: Vec<String> = Vec::new();
        // A reply cut before its first complete entry gets twice the completion budget next
        // time (a wordy model would be cut at the same place again); a second such cut ends
        // the conversation — a model that loops fills any budget, and fewer fields (the
        // caller's halves) is the better retry.
        let mut boost = 0u32;
        loop {
            let names: Vec<&str> = asked.iter().map(String::as_str).collect();
            let cut_before = usage.truncated_replies;
            let content = self
                .ask(req.source, &conversation, &names, true, boost, usage)
                .await?;
            conversation.push(ChatCompletionRequestAssistantMessage::from(content.as_str()).into());
            let follow_up = match reply::parse(&content) {
                Err(e) => {
                    tracing::warn!(source = req.source, error = %e, "The LLM reply could not be read.");
                    let msg = prompt::unreadable_reply(&e);
                    last_unreadable = e;
                    if usage.truncated_replies > cut_before {
                        boost += 1;
                    }
                    (boost < 2).then_some(msg)
                }
                Ok(entries) => {
                    // A repair reply that repeats the rejected expressions word for word will not
                    // converge: stop asking.
                    let known: Vec<&reply::ReplyField> = entries
                        .iter()
                        .filter(|e| fields.contains_key(&e.target))
                        .collect();
                    let columns: Vec<&str> = req.profiles.iter().map(|p| p.name.as_str()).collect();
                    let repeated = usage.repair_rounds > 0
                        && !known.is_empty()
                        && known.iter().all(|e| {
                            fields[&e.target].expr == answer((*e).clone(), &offers, &columns).expr
                        })
                        && !known.iter().any(|e| missing_asked.contains(&e.target));
                    any_reply_read = true;
                    let answered: Vec<String> = entries.iter().map(|e| e.target.clone()).collect();
                    answered_ever.extend(answered.iter().cloned());
                    for e in entries {
                        match fields.get_mut(&e.target) {
                            Some(f) => *f = answer(e, &offers, &columns),
                            None => {
                                tracing::warn!(source = req.source, target = %e.target, "The LLM mapped a field that is not in the target schema; ignored.")
                            }
                        }
                    }
                    let errors = self.check(req, &fields);
                    // Fields the reply left out are asked again, alone: silently leaving them
                    // unmapped would look like "nothing fits".
                    let missing: Vec<&str> = names
                        .iter()
                        .copied()
                        .filter(|n| !answered.iter().any(|a| a == n))
                        .collect();
                    missing_asked = missing.iter().map(|m| m.to_string()).collect();
                    let mut msg = String::new();
                    if !errors.is_empty() {
                        msg.push_str(&prompt::repair_request(&errors));
                    }
                    if !missing.is_empty() {
                        tracing::warn!(source = req.source, fields = ?missing, "The LLM reply has no entry for some fields; asking again for them.");
                        msg.push_str(&prompt::missing_request(&missing));
                    }
                    let next: Vec<String> = errors
                        .iter()
                        .map(|(f, _, _)| f.clone())
                        .chain(missing.iter().map(|m| m.to_string()))
                        .collect();
                    if !next.is_empty() {
                        asked = next;
                    }
                    if repeated {
                        tracing::warn!(
                            source = req.source,
                            "The LLM repeated its rejected expressions; no further repair rounds."
                        );
                        usage.repeated_replies += 1;
                        None
                    } else {
                        (!msg.is_empty()).then_some(msg)
                    }
                }
            };
            let Some(msg) = follow_up else { break };
            if usage.repair_rounds >= self.settings.max_repairs {
                break;
            }
            // A follow-up carries the opening, the latest reply and the new message only:
            // earlier rounds are superseded by the latest reply, and dropping them keeps every
            // request within the budget the batch was planned for.
            let latest = conversation.pop().expect("the reply was pushed above");
            conversation.truncate(2);
            conversation.push(latest);
            conversation.push(ChatCompletionRequestUserMessage::from(msg).into());
            let size = self.count_tokens(&conversation).await;
            if size > self.settings.max_prompt_tokens {
                tracing::warn!(
                    source = req.source,
                    prompt_tokens = size,
                    budget = self.settings.max_prompt_tokens,
                    "The follow-up request would exceed llm.max_prompt_tokens; not sent."
                );
                break;
            }
            usage.repair_rounds += 1;
        }
        if !any_reply_read {
            return Err(Error::Llm {
                source_name: req.source.to_string(),
                message: format!(
                    "the model at {} (model {}) {UNREADABLE} in {} replies: {}",
                    self.endpoint,
                    self.settings.model,
                    usage.repair_rounds + 1,
                    last_unreadable
                ),
            });
        }
        let failed = self.check(req, &fields);
        // Fields no reply named, after the follow-ups: the offline matcher answers for them
        // (or they stay unmapped, saying so) rather than looking like "nothing fits".
        let unanswered: Vec<String> = req
            .target
            .fields
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| !answered_ever.contains(n))
            .collect();
        // A field whose expression never compiled falls back to the offline matcher's choice,
        // when it has one above its threshold; otherwise it stays unmapped with the error.
        let offline = (!failed.is_empty() || !unanswered.is_empty())
            .then(|| crate::mapping::heuristic::HeuristicMapper.map_now(req));
        let requests = usage.repair_rounds + 1;
        for name in unanswered {
            usage.unanswered_fields.push(name.clone());
            let fallback = offline
                .as_ref()
                .and_then(|d| d.fields.get(&name))
                .filter(|m| m.expr.is_some());
            let Some(f) = fields.get_mut(&name) else {
                continue;
            };
            *f = match fallback {
                Some(m) => {
                    tracing::warn!(source = req.source, field = %name, "The LLM gave no entry for this field; the offline matcher's mapping is used.");
                    usage.fallback_fields.push(name.clone());
                    FieldMapping {
                        rationale: format!(
                            "heuristic (llm fallback): the model gave no entry for this field in {requests} request(s); {}",
                            m.rationale
                        ),
                        ..m.clone()
                    }
                }
                None => {
                    tracing::warn!(source = req.source, field = %name, "The LLM gave no entry for this field and the offline matcher has none; it is left unmapped.");
                    FieldMapping {
                        rationale: format!(
                            "unmapped: the model gave no entry for this field in {requests} request(s) and the offline matcher found no column"
                        ),
                        ..FieldMapping::unmapped()
                    }
                }
            };
        }
        for (name, expr, error) in failed {
            usage.failed_fields.push(name.clone());
            let fallback = offline
                .as_ref()
                .and_then(|d| d.fields.get(&name))
                .filter(|m| m.expr.is_some());
            if let Some(f) = fields.get_mut(&name) {
                *f = match fallback {
                    Some(m) => {
                        tracing::warn!(source = req.source, field = %name, %error, "The LLM's expression does not compile; the offline matcher's mapping is used for this field.");
                        usage.fallback_fields.push(name.clone());
                        FieldMapping {
                            rationale: format!(
                                "heuristic (llm fallback): the model's `{expr}` was rejected ({error}); {}",
                                m.rationale
                            ),
                            ..m.clone()
                        }
                    }
                    None => {
                        tracing::warn!(source = req.source, field = %name, %error, "The LLM's expression does not compile; the field is left unmapped.");
                        FieldMapping {
                            rationale: format!("rejected expression `{expr}`"),
                            error: Some(error),
                            ..FieldMapping::unmapped()
                        }
                    }
                };
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
        Ok(doc)
    }
}

/// When `expr` converts one column with `try_to_date`/`try_to_timestamp` and literal formats,
/// whether those formats parse any of the column's sample values; the error if none does.
pub(super) fn formats_against_sample(
    req: &MappingRequest<'_>,
    expr: &str,
    sources: &[String],
) -> Option<String> {
    let date_only = if expr.contains("try_to_date(") {
        true
    } else if expr.contains("try_to_timestamp(") {
        false
    } else {
        return None;
    };
    let [column] = sources else {
        return None;
    };
    // The quoted literals holding a %-code are the formats.
    let formats: Vec<&str> = expr
        .split('\'')
        .skip(1)
        .step_by(2)
        .filter(|f| f.contains('%'))
        .collect();
    if formats.is_empty() {
        return None;
    }
    let p = req.profiles.iter().find(|p| &p.name == column)?;
    let values: Vec<&str> = p.top_values.iter().map(|(v, _)| v.as_str()).collect();
    if crate::source::profile::any_format_parses(&values, &formats, date_only) {
        return None;
    }
    let examples: Vec<&str> = values.iter().copied().take(3).collect();
    Some(format!(
        "the format(s) {} parse none of the sample's values of `{column}` (for example {}); write the chrono format that matches them",
        formats
            .iter()
            .map(|f| format!("'{f}'"))
            .collect::<Vec<_>>()
            .join(", "),
        examples
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
