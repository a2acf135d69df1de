//! The LLM mapper: asks an OpenAI-compatible chat-completions endpoint for one expression per
//! target field, checks every expression with the compiler, and sends compile errors back for a
//! bounded number of repair rounds. The reply is untrusted input: a field whose expression still
//! does not compile is left unmapped with its error recorded, never run.

mod batch;
mod columns;
mod conversation;
mod count;
pub mod prompt;
pub mod reply;
mod revise;
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
    /// The largest prompt of any one request, as reported by the server: what
    /// `llm.max_prompt_tokens` bounds.
    pub largest_prompt_tokens: u64,
    /// Seconds during which at least one request was waiting for the endpoint, including
    /// retries: requests in flight at the same time count once.
    pub latency_s: f64,
    /// When each request was in flight, to count overlapping requests once.
    #[serde(skip)]
    pub(crate) spans: Vec<(Instant, Instant)>,
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
    /// Fields the offline matcher decided: its choice was certain enough (uncertainty under
    /// `llm.min_uncertainty`) or, column by column, not among its column's best-ranked fields,
    /// or accepted for a column the model picked no field for.
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
    /// Fields whose mapping is the model's own answer (an expression, or its null): what the
    /// model is measured on, apart from what the offline matcher decided or filled in.
    pub model_fields: Vec<String>,
    /// Fields not sent to the model because the offline matcher found no plausible column
    /// (left unmapped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_sent_fields: Vec<String>,
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
    /// Counts prompts with the server's tokenizer where it offers one (see `count`).
    counter: count::TokenCounter,
    /// The endpoint is OpenAI's: its strict structured output gets no extra bounds.
    openai: bool,
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
        if let Some(k) = &settings.api_key {
            crate::net::register_secret_value(k.expose());
        }
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
        let counter = count::TokenCounter::new(&base, settings.api_key.clone(), !openai);
        Ok(LlmMapper {
            client,
            settings: settings.clone(),
            endpoint: display_url(&base),
            ctx: super::compile::session(),
            gate: Arc::new(Semaphore::new(settings.max_concurrent)),
            json_object_only: AtomicBool::new(false),
            tokenizer,
            counter,
            openai,
        })
    }

    /// Prompt tokens of a conversation for planning batches: counted with the model's
    /// tokenizer when it is known (plus the chat format's few tokens per message), estimated
    /// otherwise (scaled by what the server has reported).
    fn tokens(&self, conversation: &[ChatCompletionRequestMessage]) -> usize {
        match self.tokenizer {
            Some(bpe) => {
                conversation
                    .iter()
                    .map(|m| bpe.encode_ordinary(&message_text(m)).len() + 4)
                    .sum::<usize>()
                    + 3
            }
            None => self.counter.estimate(conversation),
        }
    }

    /// Prompt tokens of a conversation about to be sent, as exactly as the endpoint allows:
    /// the model's tokenizer, the server's `/tokenize`, or the scaled estimate.
    async fn count_tokens(&self, conversation: &[ChatCompletionRequestMessage]) -> usize {
        if self.tokenizer.is_some() {
            return self.tokens(conversation);
        }
        // Every token of a byte-level tokenizer stands for at least one byte: a prompt whose
        // bytes (plus the template's tokens) fit the budget fits it whatever the model, and
        // needs no count from the server.
        if count::byte_bound(conversation) <= self.settings.max_prompt_tokens {
            return self.tokens(conversation);
        }
        match self.counter.server_count(conversation).await {
            Some(n) => n,
            None => self.counter.estimate(conversation),
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
}

/// Characters per token of the estimate. Small open models' tokenizers (SmolLM2's, measured
/// on conform's prompts: 3.2) split JSON, sample values and identifiers finer than English
/// prose; three keeps the estimate near the real count, and the gate before each request
/// counts exactly where the server allows (`count`).
const CHARS_PER_TOKEN: usize = 3;

/// Every target field of `req`, unmapped with `why`, until an answer replaces it.
fn placeholders(req: &MappingRequest<'_>, why: &str) -> IndexMap<String, FieldMapping> {
    req.target
        .fields
        .iter()
        .map(|t| {
            let m = FieldMapping {
                rationale: why.into(),
                ..FieldMapping::unmapped()
            };
            (t.name.clone(), m)
        })
        .collect()
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

impl Mapper for LlmMapper {
    fn kind(&self) -> MapperKind {
        MapperKind::Llm
    }

    fn map<'a>(&'a self, request: &'a MappingRequest<'a>) -> BoxFuture<'a, Result<Proposal>> {
        Box::pin(async move {
            let (mut document, mut usage) = self.propose(request).await?;
            self.value_tables(request, &mut document, &mut usage)
                .await?;
            let elsewhere: std::collections::HashSet<&String> = usage
                .offline_fields
                .iter()
                .chain(&usage.fallback_fields)
                .chain(&usage.unanswered_fields)
                .collect();
            let mut not_sent = Vec::new();
            let mut model = Vec::new();
            for (name, m) in &document.fields {
                if elsewhere.contains(name) {
                    continue;
                }
                if m.rationale == batch::NOT_SENT {
                    not_sent.push(name.clone());
                } else {
                    model.push(name.clone());
                }
            }
            usage.not_sent_fields = not_sent;
            usage.model_fields = model;
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
    use super::batch::uncertainty;
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
    fn overlapping_requests_count_once() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut spans = vec![(at(5), at(6)), (at(0), at(2)), (at(1), at(3))];
        assert_eq!(super::batch::in_flight(&mut spans), 4.0);
        assert_eq!(super::batch::in_flight(&mut []), 0.0);
    }

    /// A document of `(field, column read, confidence)`; `None` leaves the field unmapped.
    fn document(fields: &[(&str, Option<&str>, f64)]) -> MappingDocument {
        MappingDocument {
            reviews: vec![],
            source: "s".into(),
            source_fingerprint: String::new(),
            mapper: MapperKind::Llm,
            pinned: false,
            model: None,
            fields: fields
                .iter()
                .map(|(f, c, score)| {
                    let m = match c {
                        Some(c) => FieldMapping {
                            expr: Some(format!("clean(\"{c}\")")),
                            sources: vec![c.to_string()],
                            confidence: *score,
                            rationale: "model".into(),
                            ..FieldMapping::unmapped()
                        },
                        None => FieldMapping::unmapped(),
                    };
                    (f.to_string(), m)
                })
                .collect(),
        }
    }

    #[test]
    fn a_column_the_model_gives_two_fields_stays_with_the_matchers_choice() {
        let columns = ["price", "win", "a", "b", "shared"];
        // The model: `price` for both the price and the win rate; `a` for two fields the
        // matcher scores alike; `shared` for two fields the matcher itself lets share it; `b`
        // for the field whose own column another field keeps.
        let mut doc = document(&[
            ("price_pct", Some("price"), 0.9),
            ("win_pct", Some("price"), 0.9),
            ("x", Some("a"), 0.9),
            ("y", Some("a"), 0.9),
            ("age", Some("shared"), 0.9),
            ("age_days", Some("shared"), 0.9),
            ("z", Some("b"), 0.9),
            ("w", Some("b"), 0.9),
        ]);
        let mut offline = document(&[
            ("price_pct", Some("price"), 0.95),
            ("win_pct", Some("win"), 0.9),
            ("x", None, 0.0),
            ("y", None, 0.0),
            ("age", Some("shared"), 0.8),
            ("age_days", Some("shared"), 0.8),
            ("z", Some("b"), 0.7),
            ("w", Some("price"), 0.6),
        ]);
        // The matcher's alternatives: the price column for the win rate, weaker; `a` alike.
        let alt = |c: &str, score: f64| super::super::Candidate {
            expr: format!("clean(\"{c}\")"),
            sources: vec![c.into()],
            score,
            why: String::new(),
        };
        offline.fields["win_pct"].candidates = vec![alt("price", 0.4)];
        offline.fields["x"].candidates = vec![alt("a", 0.3)];
        offline.fields["y"].candidates = vec![alt("a", 0.3)];
        let mut usage = LlmUsage::default();
        super::batch::one_column_one_field(&mut doc, &offline, &columns, &mut usage);
        let f = &doc.fields;
        assert_eq!(f["price_pct"].sources, ["price"]);
        // The loser takes the matcher's own mapping, its column free.
        assert_eq!(f["win_pct"].sources, ["win"]);
        assert!(
            f["win_pct"].rationale.starts_with(
                "heuristic (llm fallback): the model gave column `price` to `price_pct` too"
            ),
            "{}",
            f["win_pct"].rationale
        );
        // A tie keeps the column for neither; the pick is each one's first candidate.
        for field in ["x", "y"] {
            assert!(f[field].expr.is_none(), "{field}");
            assert!(
                f[field].rationale.starts_with("undecided"),
                "{}",
                f[field].rationale
            );
            assert_eq!(f[field].candidates[0].sources, ["a"]);
            assert_eq!(f[field].candidates[0].score, 0.3);
        }
        // What the matcher shares stays shared.
        assert_eq!(f["age"].sources, ["shared"]);
        assert_eq!(f["age_days"].sources, ["shared"]);
        // `w` loses `b` to `z`; its own mapping reads `price`, which `price_pct` keeps.
        assert_eq!(f["z"].sources, ["b"]);
        assert!(f["w"].expr.is_none() && f["w"].candidates[0].sources == ["b"]);
        assert_eq!(usage.fallback_fields, ["win_pct"]);
    }

    #[test]
    fn an_expression_the_model_wrote_claims_the_columns_it_names() {
        let mut doc = document(&[("name", None, 0.0), ("fruity", Some("fruity"), 0.9)]);
        doc.fields["name"].expr = Some("parse_bool(\"fruity\")".into());
        let offline = document(&[("name", None, 0.0), ("fruity", Some("fruity"), 0.9)]);
        let mut usage = LlmUsage::default();
        super::batch::one_column_one_field(&mut doc, &offline, &["fruity", "name_col"], &mut usage);
        assert!(doc.fields["name"].expr.is_none());
        assert_eq!(doc.fields["name"].candidates[0].sources, ["fruity"]);
        assert_eq!(doc.fields["fruity"].sources, ["fruity"]);
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
