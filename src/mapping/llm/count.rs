//! Counting a request's prompt tokens as the model will, before it is sent.
//!
//! `llm.max_prompt_tokens` is a promise about the model's own count, and a length-based estimate
//! cannot keep it: small open models' tokenizers split numbers, JSON and identifiers at very
//! different rates (one digit per token in some), and a follow-up request carries the model's
//! own reply, whose text nobody can predict. So a request is counted, in order of preference:
//! 1. with the model's tokenizer when it is known here (OpenAI's models at OpenAI);
//! 2. by the server's tokenizer, where the server offers llama.cpp's `POST /tokenize` (llama.cpp,
//!    and servers that mimic it): each message's text, plus the chat template's tokens;
//! 3. by the length estimate, scaled by the largest ratio of the server's reported
//!    `usage.prompt_tokens` to the estimate seen so far in this run.
//!
//! The batch planner keeps using the (scaled) estimate, which is cheap; the exact count is the
//! gate in front of every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_openai::types::chat::ChatCompletionRequestMessage;

use super::{CHARS_PER_TOKEN, message_text};
use crate::config::Secret;

/// Tokens the chat template adds around one message (ChatML: `<|im_start|>role\n` and
/// `<|im_end|>\n` are five; other templates are of the same size), with a margin.
pub(super) const TEMPLATE_TOKENS_PER_MESSAGE: usize = 8;
/// Tokens that prime the reply (`<|im_start|>assistant\n`).
const REPLY_PRIMING_TOKENS: usize = 4;
/// Message texts whose counts are remembered (the instructions repeat in every request).
const CACHE_ENTRIES: usize = 4096;
/// Longest wait for the server's count; past it the estimate is used.
const COUNT_TIMEOUT: Duration = Duration::from_secs(20);

const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// The server's tokenizer, where it offers one, and the estimate's learned scale.
pub(super) struct TokenCounter {
    client: reqwest::Client,
    /// `…/tokenize` at the endpoint's origin; `None` for endpoints known to have none.
    url: Option<String>,
    key: Option<Secret>,
    state: AtomicU8,
    cache: Mutex<HashMap<u64, usize>>,
    /// Largest ratio of a server-reported prompt size to the estimate, ×1000 (1000 = 1.0).
    scale_milli: std::sync::atomic::AtomicU64,
}

impl TokenCounter {
    /// A counter for the endpoint at `base` (`…/v1`); `ask_server` false for endpoints known
    /// not to offer `/tokenize`.
    pub(super) fn new(base: &str, key: Option<Secret>, ask_server: bool) -> TokenCounter {
        let root = base.trim_end_matches('/');
        let root = root.strip_suffix("/v1").unwrap_or(root);
        let client = reqwest::Client::builder()
            .timeout(COUNT_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // The key goes to the configured origin only: never follow a redirect with it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        TokenCounter {
            client,
            url: ask_server.then(|| format!("{root}/tokenize")),
            key,
            state: AtomicU8::new(UNKNOWN),
            cache: Mutex::new(HashMap::new()),
            scale_milli: std::sync::atomic::AtomicU64::new(1000),
        }
    }

    /// The length estimate of a conversation, scaled by what the server has reported so far.
    pub(super) fn estimate(&self, conversation: &[ChatCompletionRequestMessage]) -> usize {
        let raw = raw_estimate(conversation);
        let scale = self.scale_milli.load(Ordering::Relaxed).max(1000) as usize;
        raw.saturating_mul(scale).div_ceil(1000)
    }

    /// Learns from a reply: the server counted `reported` prompt tokens for `conversation`.
    /// Later estimates are at least as large relative to the text, with a 5% margin.
    pub(super) fn observe(&self, conversation: &[ChatCompletionRequestMessage], reported: u64) {
        let raw = raw_estimate(conversation) as u64;
        if raw == 0 || reported == 0 {
            return;
        }
        // Bounded: a server reporting nonsense cannot make every request look enormous.
        let ratio = (reported.saturating_mul(1050) / raw).min(8000);
        self.scale_milli.fetch_max(ratio, Ordering::Relaxed);
    }

    /// The prompt tokens of `conversation` by the server's tokenizer, or `None` when the server
    /// offers none (then it is not asked again in this run).
    pub(super) async fn server_count(
        &self,
        conversation: &[ChatCompletionRequestMessage],
    ) -> Option<usize> {
        let url = self.url.as_deref()?;
        if self.state.load(Ordering::Relaxed) == UNAVAILABLE {
            return None;
        }
        let mut total = REPLY_PRIMING_TOKENS;
        for m in conversation {
            let text = message_text(m);
            let key = hash(&text);
            let cached = self.cache.lock().ok().and_then(|c| c.get(&key).copied());
            let n = match cached {
                Some(n) => n,
                None => match self.tokenize(url, &text).await {
                    Some(n) => {
                        if let Ok(mut c) = self.cache.lock() {
                            if c.len() >= CACHE_ENTRIES {
                                c.clear();
                            }
                            c.insert(key, n);
                        }
                        n
                    }
                    None => {
                        // Only a server that never answered is written off: one failed count
                        // after good ones falls back to the estimate for that request only.
                        if self.state.load(Ordering::Relaxed) == UNKNOWN {
                            self.state.store(UNAVAILABLE, Ordering::Relaxed);
                            tracing::debug!(
                                "The LLM server offers no /tokenize; prompt sizes are estimated."
                            );
                        }
                        return None;
                    }
                },
            };
            total += n + TEMPLATE_TOKENS_PER_MESSAGE;
        }
        self.state.store(AVAILABLE, Ordering::Relaxed);
        Some(total)
    }

    /// One `/tokenize` call: llama.cpp's `{"content": …}` → `{"tokens": […]}` (vLLM's
    /// `{"count": n}` is read too).
    async fn tokenize(&self, url: &str, text: &str) -> Option<usize> {
        let mut request = self.client.post(url).json(&serde_json::json!({
            "content": text,
            "add_special": false,
        }));
        if let Some(k) = &self.key
            && !k.expose().is_empty()
        {
            request = request.bearer_auth(k.expose());
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        // Bounded: a token list is a few bytes per character of the text sent.
        let body = response.bytes().await.ok()?;
        if body.len() > 64 * text.len() + 4096 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v.get("tokens")
            .and_then(|t| t.as_array())
            .map(|t| t.len())
            .or_else(|| v.get("count").and_then(|c| c.as_u64()).map(|c| c as usize))
    }
}

/// The unscaled estimate: the text at [`CHARS_PER_TOKEN`] characters per token, plus the chat
/// template's tokens per message.
pub(super) fn raw_estimate(conversation: &[ChatCompletionRequestMessage]) -> usize {
    conversation
        .iter()
        .map(|m| message_text(m).len().div_ceil(CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE)
        .sum()
}

/// An upper bound of the prompt tokens: one per byte of text, plus the template's tokens.
pub(super) fn byte_bound(conversation: &[ChatCompletionRequestMessage]) -> usize {
    conversation
        .iter()
        .map(|m| message_text(m).len() + TEMPLATE_TOKENS_PER_MESSAGE)
        .sum::<usize>()
        + REPLY_PRIMING_TOKENS
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    text.len().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_openai::types::chat::ChatCompletionRequestUserMessage;

    #[test]
    fn the_estimate_grows_to_what_the_server_reported_and_never_shrinks() {
        let c = TokenCounter::new("http://127.0.0.1:9/v1", None, true);
        let conv: Vec<ChatCompletionRequestMessage> =
            vec![ChatCompletionRequestUserMessage::from("x".repeat(3000)).into()];
        let raw = raw_estimate(&conv);
        assert_eq!(c.estimate(&conv), raw);
        // The server counted twice the estimate: later estimates are at least that, plus 5%.
        c.observe(&conv, 2 * raw as u64);
        let scaled = c.estimate(&conv);
        assert!(
            scaled >= 2 * raw && scaled <= 2 * raw * 106 / 100,
            "{scaled} vs {raw}"
        );
        // A smaller report does not lower it.
        c.observe(&conv, raw as u64 / 2);
        assert_eq!(c.estimate(&conv), scaled);
        // Nonsense is bounded: at most eight times the estimate.
        c.observe(&conv, u64::MAX);
        assert!(c.estimate(&conv) <= 8 * raw + 1);
        assert_eq!(c.url.as_deref(), Some("http://127.0.0.1:9/tokenize"));
    }

    #[test]
    fn the_byte_bound_is_never_below_a_byte_level_count() {
        let conv: Vec<ChatCompletionRequestMessage> =
            vec![ChatCompletionRequestUserMessage::from("1234567890".repeat(100)).into()];
        // One token per byte is the finest a byte-level tokenizer splits.
        assert!(byte_bound(&conv) >= 1000 + TEMPLATE_TOKENS_PER_MESSAGE);
    }
}
