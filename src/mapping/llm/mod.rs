//! The LLM mapper: asks an OpenAI-compatible chat-completions endpoint for one expression per
//! target field, checks every expression with the compiler, and sends compile errors back for a
//! bounded number of repair rounds. The reply is untrusted input: a field whose expression still
//! does not compile is left unmapped with its error recorded, never run.

pub mod prompt;
pub mod reply;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, FinishReason, ResponseFormat, ResponseFormatJsonSchema,
};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{FieldMapping, Mapper, MapperKind, MappingDocument, MappingRequest, Proposal};
use crate::config::LlmConfig;
use crate::error::{Error, Result};

/// The default endpoint when no base URL is configured.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// What the model calls for one source cost, for `run_summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LlmUsage {
    /// Model asked.
    pub model: String,
    /// Endpoint (without credentials).
    pub endpoint: String,
    /// Prompt wording version.
    pub prompt_version: &'static str,
    /// `json_schema`, or `json_object` when the server rejected structured output.
    pub response_format: String,
    /// Chat-completion requests answered (retries of one request count once).
    pub requests: u32,
    /// Prompt tokens, as reported by the server.
    pub prompt_tokens: u64,
    /// Completion tokens, as reported by the server.
    pub completion_tokens: u64,
    /// Seconds spent waiting for the endpoint, including retries.
    pub latency_s: f64,
    /// Follow-up rounds that sent compile errors (or an unreadable reply) back.
    pub repair_rounds: u32,
    /// Fields left unmapped because their expression never compiled.
    pub failed_fields: Vec<String>,
    /// Replies cut at their token budget (`finish_reason: length`).
    #[serde(skip_serializing_if = "is_zero")]
    pub truncated_replies: u32,
    /// Enum value tables completed by the model.
    #[serde(skip_serializing_if = "is_zero")]
    pub value_tables: u32,
    /// Batches the request was split into to fit `llm.max_prompt_tokens` (0: one request).
    #[serde(skip_serializing_if = "is_zero")]
    pub batches: u32,
    /// Repair replies that repeated the rejected expressions (the repair loop then stops).
    #[serde(skip_serializing_if = "is_zero")]
    pub repeated_replies: u32,
    /// Fields the model was not asked about: the offline matcher's choice was certain enough
    /// (uncertainty under `llm.min_uncertainty`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offline_fields: Vec<String>,
    /// Cost of the tokens at `llm.price_per_million_tokens`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    /// Fields no reply named, even when asked again (the offline matcher answers for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered_fields: Vec<String>,
    /// Fields whose expression never compiled and that the offline matcher mapped instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_fields: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The LLM mapper. One per pipeline: its semaphore limits requests in flight over all sources.
pub struct LlmMapper {
    client: Client<OpenAIConfig>,
    settings: LlmConfig,
    endpoint: String,
    ctx: SessionContext,
    gate: Arc<Semaphore>,
    /// Set once a server rejected `json_schema`; later requests ask for `json_object`.
    json_object_only: AtomicBool,
    /// The model's own tokenizer, for OpenAI's models at OpenAI's endpoint; otherwise prompt
    /// sizes are estimated from their length.
    tokenizer: Option<&'static tiktoken_rs::CoreBPE>,
}

impl std::fmt::Debug for LlmMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmMapper")
            .field("endpoint", &self.endpoint)
            .field("model", &self.settings.model)
            .finish_non_exhaustive()
    }
}

use crate::net::display_url;

impl LlmMapper {
    /// A mapper for the configured endpoint. Fails if no key and no base URL is configured
    /// (OpenAI itself needs a key).
    pub fn new(settings: &LlmConfig) -> Result<LlmMapper> {
        if !settings.configured() {
            return Err(Error::config(
                "llm",
                "the LLM mapper needs an API key (`llm.api_key` or OPENAI_API_KEY) or a local \
                 endpoint (`llm.base_url`, OPENAI_BASE_URL or --llm-base-url)",
            ));
        }
        let base = settings
            .base_url
            .clone()
            .unwrap_or_else(|| OPENAI_BASE_URL.to_string());
        let base = base.trim_end_matches('/').to_string();
        let mut config = OpenAIConfig::new().with_api_base(&base);
        // Local servers often need no key; async-openai then sends an empty bearer token.
        config = config.with_api_key(
            settings
                .api_key
                .as_ref()
                .map(|k| k.expose().to_string())
                .unwrap_or_default(),
        );
        let http = transport::RetryingHttp::new(
            Duration::from_secs_f64(settings.timeout_s),
            settings.max_retries,
            Duration::from_secs_f64(settings.max_wait_s.max(0.0)),
        )
        .map_err(|e| Error::config("llm", format!("cannot build the HTTP client: {e}")))?;
        let client = Client::with_config(config).with_http_service(http);
        // Only OpenAI's endpoint is known to run OpenAI's tokenizers: a local server answering
        // to the default model name runs a model of its own.
        let openai = url::Url::parse(&base)
            .ok()
            .and_then(|u| u.host_str().map(|h| h == "api.openai.com"))
            .unwrap_or(false);
        let tokenizer = openai
            .then(|| tiktoken_rs::bpe_for_model(&settings.model).ok())
            .flatten();
        Ok(LlmMapper {
            client,
            settings: settings.clone(),
            endpoint: display_url(&base),
            ctx: super::compile::session(),
            gate: Arc::new(Semaphore::new(settings.max_concurrent)),
            json_object_only: AtomicBool::new(false),
            tokenizer,
        })
    }

    /// Prompt tokens of a conversation: counted with the model's tokenizer when it is known
    /// (plus the chat format's few tokens per message), estimated otherwise.
    fn tokens(&self, conversation: &[ChatCompletionRequestMessage]) -> usize {
        match self.tokenizer {
            Some(bpe) => {
                conversation
                    .iter()
                    .map(|m| bpe.encode_ordinary(&message_text(m)).len() + 4)
                    .sum::<usize>()
                    + 3
            }
            None => approx_tokens(conversation),
        }
    }

    /// What the tokens so far cost, when `llm.price_per_million_tokens` is set.
    fn price(&self, usage: &mut LlmUsage) {
        if let Some(p) = &self.settings.price_per_million_tokens {
            usage.estimated_cost = Some(
                (usage.prompt_tokens as f64 * p.prompt
                    + usage.completion_tokens as f64 * p.completion)
                    / 1e6,
            );
        }
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    fn failure(&self, source: &str, e: OpenAIError) -> Error {
        let detail = match e {
            OpenAIError::ApiError(a) => {
                let mut msg = a.api_error.message.clone();
                if msg.len() > 300 {
                    msg.truncate(msg.floor_char_boundary(300));
                    msg.push('…');
                }
                format!("HTTP {}: {}", a.status_code, msg.trim())
            }
            OpenAIError::Reqwest(r) => crate::net::without_url(&r),
            OpenAIError::JSONDeserialize(err, body) => match server_error(&body) {
                // An error body async-openai cannot read (llama.cpp sends `code` as a
                // number): its message is the useful part.
                Some(msg) => msg,
                None => format!("the response is not a chat completion ({err})"),
            },
            other => other.to_string(),
        };
        Error::Llm {
            source_name: source.to_string(),
            message: format!(
                "request to {} (model {}) failed: {detail}",
                self.endpoint, self.settings.model
            ),
        }
    }

    /// One chat completion over the conversation so far; the reply's text.
    /// `targets` are the fields the reply must answer (exactly one entry each when `exact`).
    async fn ask(
        &self,
        source: &str,
        conversation: &[ChatCompletionRequestMessage],
        targets: &[&str],
        exact: bool,
        boost: u32,
        usage: &mut LlmUsage,
    ) -> Result<String> {
        let schema = prompt::response_schema(targets, exact);
        self.ask_with(source, conversation, schema, targets.len(), boost, usage)
            .await
    }

    /// One chat completion whose reply follows `schema`; `items` sizes the completion budget,
    /// doubled `boost` times (after replies cut before their first complete entry).
    async fn ask_with(
        &self,
        source: &str,
        conversation: &[ChatCompletionRequestMessage],
        schema: serde_json::Value,
        items: usize,
        boost: u32,
        usage: &mut LlmUsage,
    ) -> Result<String> {
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
                .saturating_mul(1 << boost.min(4))
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
                prompt_tokens = self.tokens(conversation),
                max_tokens = budget,
                "Sending an LLM request."
            );
            let started = Instant::now();
            let result = self.client.chat().create(request).await;
            usage.latency_s += started.elapsed().as_secs_f64();
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
                        usage.prompt_tokens += u64::from(u.prompt_tokens);
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
    fn opening(&self, req: &MappingRequest<'_>) -> Vec<ChatCompletionRequestMessage> {
        // The offline matcher's ranked columns go in as evidence: the model reranks and writes
        // the conversion instead of searching every column for every field.
        let k = self.settings.candidates;
        let offline = (k > 0).then(|| super::heuristic::HeuristicMapper.map_now(req));
        vec![
            ChatCompletionRequestSystemMessage::from(prompt::SYSTEM).into(),
            ChatCompletionRequestUserMessage::from(prompt::mapping_request(
                req,
                self.settings.sample_rows,
                self.settings.redact_samples,
                offline.as_ref(),
                k,
            ))
            .into(),
        ]
    }

    /// Compile errors of the fields that have an expression: (field, expr, error). A date
    /// format that parses none of the sample's values counts as an error too: it would make
    /// every row invalid.
    fn check(
        &self,
        req: &MappingRequest<'_>,
        fields: &IndexMap<String, FieldMapping>,
    ) -> Vec<(String, String, String)> {
        req.target
            .fields
            .iter()
            .filter_map(|t| {
                let expr = fields.get(&t.name)?.expr.as_deref()?;
                let compiled = super::compile::compile_field(
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

    /// Proposes a mapping: in one conversation when the request fits `llm.max_prompt_tokens`;
    /// otherwise in batches of fields, each with only the columns the offline matcher ranks for
    /// them, run concurrently (under `llm.max_concurrent`). Fields for which the matcher finds
    /// no plausible column are left unmapped without asking.
    pub async fn propose(&self, req: &MappingRequest<'_>) -> Result<(MappingDocument, LlmUsage)> {
        let floor = self.settings.min_uncertainty;
        if floor <= 0.0 {
            return self.propose_fields(req).await;
        }
        // Fields whose offline choice is certain and unrivalled are decided without the model.
        let offline = super::heuristic::HeuristicMapper.map_now(req);
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
            let (target, profiles, sample) = batch_parts(req, &names, &columns)?;
            let sub = MappingRequest {
                source: req.source,
                target: &target,
                source_schema: req.source_schema.clone(),
                sample: &sample,
                profiles: &profiles,
            };
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
    fn empty_document(&self, req: &MappingRequest<'_>) -> MappingDocument {
        MappingDocument {
            source: req.source.to_string(),
            source_fingerprint: super::fingerprint(&req.source_schema),
            mapper: MapperKind::Llm,
            pinned: false,
            model: Some(self.settings.model.clone()),
            fields: IndexMap::new(),
        }
    }

    /// [`Self::propose`] for every field of `req`.
    async fn propose_fields(
        &self,
        req: &MappingRequest<'_>,
    ) -> Result<(MappingDocument, LlmUsage)> {
        let whole = self.tokens(&self.opening(req));
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
                Err(e) if (timed_out(&e) || unreadable(&e)) && req.target.fields.len() > 1 => {
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
                other => return other.map(|doc| (doc, u)),
            }
        } else {
            let offline = super::heuristic::HeuristicMapper.map_now(req);
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
        if let Some(u) = spent {
            absorb_usage(&mut usage, u);
        }
        let mut fields: IndexMap<String, FieldMapping> = req
            .target
            .fields
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    FieldMapping {
                        rationale:
                            "the offline matcher found no plausible column; not sent to the model"
                                .into(),
                        ..FieldMapping::unmapped()
                    },
                )
            })
            .collect();
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
                    Err(e) if timed_out(&e) && batch.len() > 1 => {
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
                    Err(e) if unreadable(&e) => {
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
            let offline = super::heuristic::HeuristicMapper.map_now(req);
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
            source: req.source.to_string(),
            source_fingerprint: super::fingerprint(&req.source_schema),
            mapper: MapperKind::Llm,
            pinned: false,
            model: Some(self.settings.model.clone()),
            fields,
        };
        Ok((doc, usage))
    }

    /// One batch: the fields `fields` with the columns `columns` (and their sample values).
    async fn run_batch(
        &self,
        req: &MappingRequest<'_>,
        fields: &[String],
        columns: &[String],
    ) -> (Result<MappingDocument>, LlmUsage) {
        let (target, profiles, sample) = match batch_parts(req, fields, columns) {
            Ok(parts) => parts,
            Err(e) => return (Err(e), LlmUsage::default()),
        };
        let sub = MappingRequest {
            source: req.source,
            target: &target,
            source_schema: req.source_schema.clone(),
            sample: &sample,
            profiles: &profiles,
        };
        self.propose_one(&sub).await
    }

    /// Estimated prompt tokens of a batch's first request.
    fn batch_tokens(
        &self,
        req: &MappingRequest<'_>,
        fields: &[String],
        columns: &[String],
    ) -> Result<usize> {
        let (target, profiles, sample) = batch_parts(req, fields, columns)?;
        let sub = MappingRequest {
            source: req.source,
            target: &target,
            source_schema: req.source_schema.clone(),
            sample: &sample,
            profiles: &profiles,
        };
        Ok(self.tokens(&self.opening(&sub)))
    }

    /// The batches, each split in halves until its prompt, plus `reserve(fields)` tokens for
    /// what follows the opening, fits the budget (or it is one field); `columns_for` gives a
    /// half its columns.
    fn fit(
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
    fn batches(
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

    /// The conversation: propose, check, repair; returns the document and what it cost.
    /// The usage is returned with a failure too: its requests were made and cost tokens.
    async fn propose_one(
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
    async fn converse(
        &self,
        req: &MappingRequest<'_>,
        usage: &mut LlmUsage,
    ) -> Result<MappingDocument> {
        let mut conversation = self.opening(req);
        let mut fields: IndexMap<String, FieldMapping> = req
            .target
            .fields
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    FieldMapping {
                        rationale: "the model proposed no expression for this field".into(),
                        ..FieldMapping::unmapped()
                    },
                )
            })
            .collect();
        let mut any_reply_read = false;
        let mut last_unreadable = String::new();
        // The fields the next reply must answer: all of them first, then those a follow-up
        // asks about again.
        let mut asked: Vec<String> = req.target.fields.iter().map(|t| t.name.clone()).collect();
        // Fields some reply has named, and those the last follow-up asked for because no reply
        // had: an answer to one of those is progress even when the rest repeats.
        let mut answered_ever: std::collections::HashSet<String> = Default::default();
        let mut missing_asked: Vec<String> = Vec::new();
        // Doublings of the completion budget: a reply cut before its first complete entry
        // (a wordy model) gets more room next time rather than being cut at the same place.
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
                    if usage.truncated_replies > cut_before {
                        boost += 1;
                    }
                    tracing::warn!(source = req.source, error = %e, "The LLM reply could not be read.");
                    let msg = prompt::unreadable_reply(&e);
                    last_unreadable = e;
                    Some(msg)
                }
                Ok(entries) => {
                    // A repair reply that repeats the rejected expressions word for word will not
                    // converge: stop asking.
                    let known: Vec<&reply::ReplyField> = entries
                        .iter()
                        .filter(|e| fields.contains_key(&e.target))
                        .collect();
                    let repeated = usage.repair_rounds > 0
                        && !known.is_empty()
                        && known.iter().all(|e| fields[&e.target].expr == e.expr)
                        && !known.iter().any(|e| missing_asked.contains(&e.target));
                    any_reply_read = true;
                    let answered: Vec<String> = entries.iter().map(|e| e.target.clone()).collect();
                    answered_ever.extend(answered.iter().cloned());
                    for e in entries {
                        match fields.get_mut(&e.target) {
                            Some(f) => {
                                *f = FieldMapping {
                                    expr: e.expr,
                                    sources: vec![],
                                    confidence: e.confidence.unwrap_or(0.5),
                                    rationale: e.rationale.unwrap_or_default(),
                                    ..FieldMapping::unmapped()
                                };
                            }
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
            let size = self.tokens(&conversation);
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
            .then(|| super::heuristic::HeuristicMapper.map_now(req));
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
            source: req.source.to_string(),
            source_fingerprint: super::fingerprint(&req.source_schema),
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
fn formats_against_sample(
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

impl LlmMapper {
    /// For enum fields read plainly from one column whose sample values the offline value
    /// matching does not all cover, asks the model for the missing entries (source value →
    /// allowed value or null), keeps those that name an allowed value, and writes the table
    /// into the expression (`CASE … END`, `value_coverage`).
    async fn value_tables(
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
            let Ok(compiled) = super::compile::compile_field(
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
            let Some((_, _, unmatched)) = super::heuristic::enum_table(t, p, &[]) else {
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
            if let Some((Some(case), coverage, _)) = super::heuristic::enum_table(t, p, &extra)
                && let Some(f) = doc.fields.get_mut(&t.name)
            {
                f.expr = Some(case);
                f.value_coverage = Some((coverage * 100.0).round() / 100.0);
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

/// The columns the offline matcher ranks for `fields` (chosen and alternatives), in order.
fn candidate_columns(offline: &MappingDocument, fields: &[String]) -> Vec<String> {
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
fn batch_parts(
    req: &MappingRequest<'_>,
    fields: &[String],
    columns: &[String],
) -> Result<(
    crate::schema::TargetSchema,
    Vec<crate::source::ColumnProfile>,
    arrow::array::RecordBatch,
)> {
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
    Ok((target, profiles, sample))
}

/// Whether the endpoint failed by timing out.
fn timed_out(e: &Error) -> bool {
    matches!(e, Error::Llm { message, .. } if message.contains("timed out"))
}

/// A conversation none of whose replies could be read.
fn unreadable(e: &Error) -> bool {
    matches!(e, Error::Llm { message, .. } if message.contains(UNREADABLE))
}

/// How the error of a conversation whose replies could never be read begins.
const UNREADABLE: &str = "gave no readable mapping";

/// A batch in two halves (the first one the larger).
fn halves(batch: &[String]) -> Vec<Vec<String>> {
    let mid = batch.len().div_ceil(2);
    vec![batch[..mid].to_vec(), batch[mid..].to_vec()]
}

/// Adds one conversation's costs and field lists to the whole.
fn absorb_usage(usage: &mut LlmUsage, u: LlmUsage) {
    usage.requests += u.requests;
    usage.prompt_tokens += u.prompt_tokens;
    usage.completion_tokens += u.completion_tokens;
    usage.latency_s = usage.latency_s.max(u.latency_s);
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
fn uncertainty(m: &FieldMapping) -> f64 {
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
const FOLLOW_UP_TOKENS_PER_FIELD: usize =
    80 + (prompt::REPAIR_EXPR_CHARS + prompt::REPAIR_ERROR_CHARS + 40) / CHARS_PER_TOKEN;

/// Tokens a follow-up of `fields` fields may add to the opening: their share and the
/// follow-up's own wording.
fn follow_up_tokens(fields: usize) -> usize {
    300 + FOLLOW_UP_TOKENS_PER_FIELD * fields
}

/// Characters per token of the estimate. Small open models' tokenizers (SmolLM2's, measured
/// on conform's prompts: 3.2) split JSON, sample values and identifiers finer than English
/// prose; three keeps the estimate above the real count.
const CHARS_PER_TOKEN: usize = 3;

/// Estimated prompt tokens of a conversation: its text at three characters per token, plus a
/// few tokens per message for the chat template.
fn approx_tokens(conversation: &[ChatCompletionRequestMessage]) -> usize {
    conversation
        .iter()
        .map(|m| message_text(m).len().div_ceil(CHARS_PER_TOKEN) + 8)
        .sum()
}

/// The text of one message.
fn message_text(m: &ChatCompletionRequestMessage) -> String {
    use async_openai::types::chat::{
        ChatCompletionRequestAssistantMessageContent as A,
        ChatCompletionRequestSystemMessageContent as S,
        ChatCompletionRequestUserMessageContent as U,
    };
    match m {
        ChatCompletionRequestMessage::System(s) => match &s.content {
            S::Text(t) => t.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        },
        ChatCompletionRequestMessage::User(u) => match &u.content {
            U::Text(t) => t.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        },
        ChatCompletionRequestMessage::Assistant(a) => match &a.content {
            Some(A::Text(t)) => t.clone(),
            Some(other) => serde_json::to_string(other).unwrap_or_default(),
            None => String::new(),
        },
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// The message of an OpenAI-style or llama.cpp-style error body (`{"error": {"message": …}}`),
/// with a plain statement when the request did not fit the model's context.
fn server_error(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    let mut msg = e.get("message")?.as_str()?.trim().to_string();
    if msg.len() > 300 {
        msg.truncate(msg.floor_char_boundary(300));
        msg.push('…');
    }
    let kind = e.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let code = e.get("code").map(|c| c.to_string()).unwrap_or_default();
    let context = kind.contains("context")
        || msg.contains("context size")
        || msg.contains("context length")
        || msg.contains("maximum context");
    Some(if context {
        let sizes = match (e.get("n_prompt_tokens"), e.get("n_ctx")) {
            (Some(p), Some(c)) => format!(" ({p} prompt tokens, context {c})"),
            _ => String::new(),
        };
        format!("the request does not fit the model's context{sizes}: {msg}")
    } else if code.is_empty() {
        format!("server error: {msg}")
    } else {
        format!("server error {}: {msg}", code.trim_matches('"'))
    })
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
        let offline = super::heuristic::HeuristicMapper.map_now(req);
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
            let (target, profiles, sample) = batch_parts(req, &fields, &columns)?;
            let sub = MappingRequest {
                source: req.source,
                target: &target,
                source_schema: req.source_schema.clone(),
                sample: &sample,
                profiles: &profiles,
            };
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
            let mut conversation = self.opening(&sub);
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
                if current.expr == e.expr {
                    continue;
                }
                let compiles = super::compile::compile_field(
                    &self.ctx,
                    &req.source_schema,
                    &t.name,
                    &t.kind.data_type(),
                    e.expr.as_deref(),
                );
                match compiles {
                    Ok(_) => {
                        current.expr = e.expr;
                        current.confidence = e.confidence.unwrap_or(current.confidence);
                        current.rationale = e.rationale.unwrap_or_default();
                        changed.push(e.target);
                    }
                    Err(err) => {
                        tracing::warn!(source = req.source, field = %e.target, error = %err, "The model's revised expression does not compile; the field keeps its expression.");
                    }
                }
            }
        }
        self.price(usage);
        Ok((revised, changed))
    }
}

impl Mapper for LlmMapper {
    fn kind(&self) -> MapperKind {
        MapperKind::Llm
    }

    fn map<'a>(&'a self, request: &'a MappingRequest<'a>) -> BoxFuture<'a, Result<Proposal>> {
        Box::pin(async move {
            let (mut document, mut usage) = self.propose(request).await?;
            self.value_tables(request, &mut document, &mut usage)
                .await?;
            self.price(&mut usage);
            Ok(Proposal {
                document,
                llm: Some(usage),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper(base_url: &str, model: &str) -> LlmMapper {
        LlmMapper::new(&LlmConfig {
            base_url: Some(base_url.into()),
            model: model.into(),
            price_per_million_tokens: Some(crate::config::TokenPrice {
                prompt: 2.0,
                completion: 8.0,
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn hello() -> Vec<ChatCompletionRequestMessage> {
        vec![ChatCompletionRequestUserMessage::from("hello world").into()]
    }

    #[test]
    fn openais_models_at_openai_are_counted_with_their_tokenizer() {
        let m = mapper("https://api.openai.com/v1", "gpt-4o-mini");
        assert!(m.tokenizer.is_some());
        // "hello world" is two tokens, plus the chat format's per-message and reply priming.
        assert_eq!(m.tokens(&hello()), 2 + 4 + 3);
    }

    #[test]
    fn other_servers_are_estimated_from_the_text() {
        // A local server answering to an OpenAI model name runs a model of its own.
        let m = mapper("http://127.0.0.1:8080/v1", "gpt-4o-mini");
        assert!(m.tokenizer.is_none());
        assert_eq!(
            m.tokens(&hello()),
            "hello world".len().div_ceil(CHARS_PER_TOKEN) + 8
        );
    }

    #[test]
    fn the_cost_is_priced_per_million_tokens() {
        let m = mapper("http://127.0.0.1:8080/v1", "local");
        let mut usage = LlmUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
            ..Default::default()
        };
        m.price(&mut usage);
        assert_eq!(usage.estimated_cost, Some(2.0 + 4.0));
    }

    #[test]
    fn uncertainty_is_the_doubt_or_the_rivals_closeness() {
        let mut m = FieldMapping {
            expr: Some("a".into()),
            confidence: 0.9,
            ..FieldMapping::unmapped()
        };
        assert!((uncertainty(&m) - 0.1).abs() < 1e-9);
        m.candidates = vec![super::super::Candidate {
            expr: "b".into(),
            sources: vec!["b".into()],
            score: 0.45,
            why: String::new(),
        }];
        assert!((uncertainty(&m) - 0.5).abs() < 1e-9);
        m.confidence = 0.0;
        assert_eq!(uncertainty(&m), 1.0);
    }
}
