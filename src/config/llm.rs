//! The `llm` object: the OpenAI-compatible endpoint of the LLM mapper.

use serde::Deserialize;

use super::Secret;
use crate::error::{Error, Result};

/// What to do when the language model cannot produce a mapping for a source.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LlmFallback {
    /// The source fails with the model's error. Default.
    #[default]
    None,
    /// The heuristic mapper maps the source instead, with a warning.
    Heuristic,
}

/// The `llm` object: an OpenAI-compatible chat-completions endpoint that proposes mappings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Model name. Default `gpt-4o-mini`.
    pub model: String,
    /// API base URL ending in `/v1`, e.g. a local vLLM/Ollama/llama.cpp server. Default: OpenAI.
    pub base_url: Option<String>,
    /// API key; usually `${OPENAI_API_KEY}`. Never logged or written anywhere.
    pub api_key: Option<Secret>,
    /// Sampling temperature. Default 0, for repeatable mappings.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f32,
    /// Seconds before one request is abandoned (and retried). Default 60.
    #[schemars(range(min = 0.001, max = 86_400.0))]
    pub timeout_s: f64,
    /// Retries of one request on 429, 5xx, timeouts and connection errors. Default 3.
    #[schemars(range(min = 0, max = 100))]
    pub max_retries: u32,
    /// Sample rows shown to the model. Default 20.
    #[schemars(range(min = 0, max = 10_000))]
    pub sample_rows: usize,
    /// Send column shapes and masked examples instead of real values. Default false.
    pub redact_samples: bool,
    /// Follow-up rounds that send compile errors back to the model. Default 2.
    #[schemars(range(min = 0, max = 20))]
    pub max_repairs: u32,
    /// Completion budget per request (`max_tokens`): the request asks for about 80 tokens per
    /// field it names, at most this many. Default 8192.
    #[schemars(range(min = 16, max = 1_000_000))]
    pub max_completion_tokens: u32,
    /// Ranked candidate columns per field from the offline matcher shown in the prompt (0: none).
    /// Default 5.
    #[schemars(range(min = 0, max = 100))]
    pub candidates: usize,
    /// Largest prompt of one request, in the model's tokens (counted by the server's `/tokenize`
    /// where it offers one, estimated otherwise); larger requests go in batches. Default 12,000.
    #[schemars(range(min = 256, max = 10_000_000))]
    pub max_prompt_tokens: usize,
    /// Total seconds one request may take with its retries and waits. Default 600.
    #[schemars(range(min = 0.0, max = 604_800.0))]
    pub max_wait_s: f64,
    /// `none` (default) or `heuristic`: what to do when the model fails.
    pub fallback: LlmFallback,
    /// Most LLM requests in flight at once, over all sources. Default 4.
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent: usize,
    /// Fields whose offline choice is less uncertain than this (0..1) are decided without the
    /// model. Default 0: every field with a plausible column goes to the model.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_uncertainty: f64,
    /// A target with more fields than this is asked column by column: each source column with
    /// the `candidates` target fields the offline matcher ranks best for it, the model picking
    /// the ones the column fills (or none). Field by field, a wide standard's hundreds of
    /// fields would each be a question. Default 100; 0 asks every target column by column.
    #[schemars(range(min = 0, max = 1_000_000))]
    pub by_column_above: usize,
    /// Prices per million tokens, for `estimated_cost` in the summary. Default none.
    pub price_per_million_tokens: Option<TokenPrice>,
}

/// `llm.price_per_million_tokens`: what the endpoint charges.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPrice {
    /// Per million prompt (input) tokens.
    #[schemars(range(min = 0.0, max = 1e9))]
    pub prompt: f64,
    /// Per million completion (output) tokens.
    #[schemars(range(min = 0.0, max = 1e9))]
    pub completion: f64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            model: "gpt-4o-mini".into(),
            base_url: None,
            api_key: None,
            temperature: 0.0,
            timeout_s: 60.0,
            max_retries: 3,
            sample_rows: 20,
            redact_samples: false,
            max_repairs: 2,
            max_completion_tokens: 8192,
            candidates: 5,
            max_prompt_tokens: 12_000,
            max_wait_s: 600.0,
            fallback: LlmFallback::None,
            max_concurrent: 4,
            min_uncertainty: 0.0,
            by_column_above: 100,
            price_per_million_tokens: None,
        }
    }
}

impl LlmConfig {
    /// Whether an endpoint is configured: a key or a base URL. `--mapper auto` then uses the
    /// model.
    pub fn configured(&self) -> bool {
        self.api_key.is_some() || self.base_url.is_some()
    }

    /// `OPENAI_API_KEY` and `OPENAI_BASE_URL` override the file's values (blank values are
    /// ignored, as is a blank key in the file).
    pub(super) fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        if let Some(k) = set(env("OPENAI_API_KEY")) {
            self.api_key = Some(Secret::new(k));
        }
        if let Some(u) = set(env("OPENAI_BASE_URL")) {
            self.base_url = Some(u);
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            self.api_key = None;
        }
        if self.base_url.as_ref().is_some_and(|u| u.trim().is_empty()) {
            self.base_url = None;
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        let bad = |key: &str, msg: &str| Err(Error::config(format!("llm.{key}"), msg));
        if self.model.trim().is_empty() {
            return bad("model", "must not be empty");
        }
        // Numeric ranges are checked at load from the schema (`reference::check_ranges`).
        if let Some(u) = &self.base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("base_url", "must start with http:// or https://");
        }
        Ok(())
    }
}
