//! HTTP for the model: one reqwest client with a request timeout, and retries with exponential
//! backoff and jitter on 429, 5xx, timeouts and connection errors, honouring `Retry-After`.
//!
//! async-openai accepts any tower service as its transport; this is that service. Its own retry
//! layer has a fixed attempt count, no jitter and does not retry timeouts, so it is replaced.

use std::hash::{BuildHasher, Hasher};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures::future::BoxFuture;
use reqwest::{Response, StatusCode};

/// First backoff delay; doubled per attempt.
const BASE_DELAY: Duration = Duration::from_millis(250);
/// Longest backoff delay (and longest `Retry-After` honoured).
const MAX_DELAY: Duration = Duration::from_secs(60);

/// A reqwest client that retries what is worth retrying.
#[derive(Clone, Debug)]
pub struct RetryingHttp {
    client: reqwest::Client,
    max_retries: u32,
}

impl RetryingHttp {
    /// A client whose requests time out after `timeout`, retried up to `max_retries` times.
    pub fn new(timeout: Duration, max_retries: u32) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(RetryingHttp {
            client,
            max_retries,
        })
    }
}

/// Whether a response status is worth another attempt.
fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// `Retry-After` as seconds or an HTTP date, at most 60 s.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return None,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_DELAY))
}

/// Backoff before retry number `attempt` (0-based): exponential, capped, with jitter between
/// half and the whole delay so that many clients do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let full = BASE_DELAY
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_DELAY);
    // A fresh RandomState is randomly seeded: enough randomness for jitter without a crate.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let frac = 0.5 + (r % 1000) as f64 / 2000.0;
    full.mul_f64(frac)
}

impl tower::Service<HttpRequestFactory> for RetryingHttp {
    type Response = Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        let max_retries = self.max_retries;
        Box::pin(async move {
            let mut attempt = 0u32;
            loop {
                let req = request.build().await?;
                let result = client.execute(req).await;
                let wait = match &result {
                    Ok(resp) if retryable_status(resp.status()) => {
                        let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                        tracing::warn!(status = %resp.status(), attempt = attempt + 1, wait_s = wait.as_secs_f64(), "LLM endpoint answered with a retryable status.");
                        wait
                    }
                    Ok(_) => return result.map_err(OpenAIError::Reqwest),
                    Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                        let wait = backoff(attempt);
                        tracing::warn!(error = %without_url(e), attempt = attempt + 1, wait_s = wait.as_secs_f64(), "LLM request failed; retrying.");
                        wait
                    }
                    Err(_) => return result.map_err(OpenAIError::Reqwest),
                };
                if attempt >= max_retries {
                    return result.map_err(OpenAIError::Reqwest);
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// A reqwest error's text without its URL (which may carry credentials in its user-info part).
pub fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_decode() {
        "could not decode the response"
    } else if e.is_body() {
        "the response body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 0..20 {
            let d = backoff(a);
            let full = BASE_DELAY
                .saturating_mul(2u32.saturating_pow(a))
                .min(MAX_DELAY);
            assert!(d >= full / 2 && d <= full, "attempt {a}: {d:?} vs {full:?}");
        }
        assert!(backoff(30) <= MAX_DELAY);
    }
}
