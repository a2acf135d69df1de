//! HTTP for the model: one reqwest client with a request timeout, and retries with exponential
//! backoff and jitter on 429, 5xx and connection errors, honouring `Retry-After` (a timeout is
//! retried by the mapper, as smaller batches).
//!
//! async-openai accepts any tower service as its transport; this is that service. Its own retry
//! layer has a fixed attempt count, no jitter and does not retry timeouts, so it is replaced.

use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures::future::BoxFuture;
use reqwest::{Response, StatusCode};

use crate::net::{backoff, retry_after, without_url};

/// A reqwest client that retries what is worth retrying.
#[derive(Clone, Debug)]
pub struct RetryingHttp {
    client: reqwest::Client,
    max_retries: u32,
    max_wait: Duration,
}

impl RetryingHttp {
    /// A client whose requests time out after `timeout`, retried up to `max_retries` times
    /// while the request's attempts and waits stay within `max_wait` in all.
    pub fn new(
        timeout: Duration,
        max_retries: u32,
        max_wait: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Ok(RetryingHttp {
            client,
            max_retries,
            max_wait,
        })
    }
}

/// Whether a response status is worth another attempt.
fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
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
        let max_wait = self.max_wait;
        Box::pin(async move {
            let started = std::time::Instant::now();
            let mut attempt = 0u32;
            loop {
                let req = request.build().await?;
                let result = client.execute(req).await;
                if crate::net::stopping() {
                    // Ending on a signal: whatever happened, nothing is retried or reported.
                    return result.map_err(OpenAIError::Reqwest);
                }
                let wait = match &result {
                    Ok(resp) if retryable_status(resp.status()) => {
                        let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                        tracing::warn!(status = %resp.status(), attempt = attempt + 1, wait_s = wait.as_secs_f64(), "LLM endpoint answered with a retryable status.");
                        wait
                    }
                    Ok(_) => return result.map_err(OpenAIError::Reqwest),
                    // A timeout is not retried as it was: the mapper asks again in smaller
                    // batches (the server may still be working on the abandoned request).
                    Err(e) if !e.is_timeout() && (e.is_connect() || e.is_request()) => {
                        let wait = backoff(attempt);
                        tracing::warn!(error = %without_url(e), attempt = attempt + 1, wait_s = wait.as_secs_f64(), "LLM request failed; retrying.");
                        wait
                    }
                    Err(_) => return result.map_err(OpenAIError::Reqwest),
                };
                // A slow server keeps working on an abandoned request: retries stop when the
                // next wait would pass the request's total budget.
                if attempt >= max_retries || started.elapsed() + wait > max_wait {
                    return result.map_err(OpenAIError::Reqwest);
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        })
    }
}
