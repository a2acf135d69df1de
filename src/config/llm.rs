//! The `llm` object: the OpenAI-compatible endpoint of the LLM mapper.

use serde::Deserialize;

use super::Secret;
use crate::error::{Error, Result};

/// What to do when the language model cannot produce a mapping for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmFallback {
    /// The source fails with the model's error. Default.
    #[default]
    None,
    /// The heuristic mapper maps the source instead, with a warning.
    Heuristic,
}

/// The `llm` object: an OpenAI-compatible chat-completions endpoint that proposes mappings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Model name. Default `gpt-4o-mini`.
    pub model: String,
    /// API base URL ending in `/v1`, e.g. a local vLLM/Ollama/llama.cpp server. Default: OpenAI.
    pub base_url: Option<String>,
    /// API key; usually `${OPENAI_API_KEY}`. Never logged or written anywhere.
    pub api_key: Option<Secret>,
    /// Sampling temperature. Default 0, for repeatable mappings.
    pub temperature: f32,
    /// Seconds before one request is abandoned (and retried). Default 60.
    pub timeout_s: f64,
    /// Retries of one request on 429, 5xx, timeouts and connection errors. Default 3.
    pub max_retries: u32,
    /// Sample rows shown to the model. Default 20.
    pub sample_rows: usize,
    /// Send column shapes and masked examples instead of real values. Default false.
    pub redact_samples: bool,
    /// Follow-up rounds that send compile errors back to the model. Default 2.
    pub max_repairs: u32,
    /// Completion budget per request (`max_tokens`): the request asks for about 80 tokens per
    /// field it names, at most this many.
    pub max_completion_tokens: u32,
    /// Ranked candidate columns per field from the offline matcher shown in the prompt (0: none).
    pub candidates: usize,
    /// Prompt size above which the fields go in batches (estimated tokens per request).
    pub max_prompt_tokens: usize,
    /// Total seconds one request may take with its retries and waits.
    pub max_wait_s: f64,
    /// `none` (default) or `heuristic`: what to do when the model fails.
    pub fallback: LlmFallback,
    /// Most LLM requests in flight at once, over all sources. Default 4.
    pub max_concurrent: usize,
    /// Fields whose offline choice is less uncertain than this (0..1) are decided without the
    /// model. Default 0: every field with a plausible column goes to the model.
    pub min_uncertainty: f64,
    /// Prices per million tokens, for `estimated_cost` in the summary. Default none.
    pub price_per_million_tokens: Option<TokenPrice>,
}

/// `llm.price_per_million_tokens`: what the endpoint charges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrice {
    /// Per million prompt (input) tokens.
    pub prompt: f64,
    /// Per million completion (output) tokens.
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
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", "must be between 0 and 2");
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return bad("timeout_s", "must be a positive number of seconds");
        }
        if self.max_concurrent == 0 {
            return bad("max_concurrent", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.min_uncertainty) {
            return bad("min_uncertainty", "must be between 0 and 1");
        }
        if let Some(p) = &self.price_per_million_tokens
            && !(p.prompt >= 0.0
                && p.completion >= 0.0
                && p.prompt.is_finite()
                && p.completion.is_finite())
        {
            return bad(
                "price_per_million_tokens",
                "prices must be non-negative numbers",
            );
        }
        if let Some(u) = &self.base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("base_url", "must start with http:// or https://");
        }
        Ok(())
    }
}
