//! HTTP JSON API sources: GET requests with the source's credentials, records found at a path in
//! each response, pages followed by link header, page number, offset or cursor, each page turned
//! into Arrow batches as it arrives (memory holds one page, not the whole result).
//!
//! Provenance: a row's file is the URL of its page (without credentials) and its row is the
//! record's 1-based position in that page. A page whose body is not the expected JSON becomes one
//! malformed row carrying the page number and the raw body, so nothing is lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::json::{decode_records, schema_of_objects};
use crate::config::{HttpOptions, Pagination, Secret, SourceConfig};
use crate::error::{Error, Result};
use crate::net::{backoff, display_url, origin, retry_after, same_origin, without_url};

/// Records read to infer an HTTP source's columns (over the first pages).
const INFER_RECORDS: usize = 1000;
/// Pages read at most to infer the columns.
const INFER_PAGES: u64 = 5;
/// Consecutive malformed pages after which page-number/offset paging stops.
const MAX_BAD_PAGES: u32 = 2;

/// How requests authenticate.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic(String, Secret),
    Bearer(Secret),
    Header(String, Secret),
    /// A query parameter added to each request (never part of a shown URL).
    Query(String, Secret),
}

/// Redirects a request follows at most.
const MAX_REDIRECTS: usize = 10;

/// An HTTP source's settings, checked.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    name: String,
    url: Url,
    records: Option<String>,
    pagination: Option<Pagination>,
    options: HttpOptions,
    auth: Auth,
    client: reqwest::Client,
    /// Largest response body (`limits.max_page_bytes`).
    max_page_bytes: usize,
}

impl HttpSpec {
    /// Checks the source's settings; credentials pick the auth style: `username` + `password`
    /// (basic), `token` (bearer), `header` + `key` (an API-key header) or `query` + `key` (an
    /// API-key query parameter).
    pub fn try_new(name: &str, config: &SourceConfig) -> Result<HttpSpec> {
        let raw = config.url.as_deref().unwrap_or_default();
        let url = Url::parse(raw).map_err(|e| {
            Error::config(
                format!("data_sources.{name}.url"),
                format!("not a URL: {e}"),
            )
        })?;
        let c = &config.credentials;
        let keys: Vec<&str> = c.keys().map(String::as_str).collect();
        let auth = match keys.as_slice() {
            [] => Auth::None,
            ["password", "username"] => {
                Auth::Basic(c["username"].expose().to_string(), c["password"].clone())
            }
            ["token"] => Auth::Bearer(c["token"].clone()),
            ["header", "key"] => Auth::Header(c["header"].expose().to_string(), c["key"].clone()),
            ["key", "query"] => Auth::Query(c["query"].expose().to_string(), c["key"].clone()),
            _ => {
                return Err(Error::config(
                    format!("data_sources.{name}.credentials"),
                    "an HTTP source takes `username` + `password` (basic auth), `token` (bearer), `header` + `key` (API-key header) or `query` + `key` (API-key query parameter)",
                ));
            }
        };
        // Every credential is masked in the URLs this source shows (invalid rows' `source_file`,
        // errors, the summary), whatever parameter carries it.
        for (k, v) in c {
            match k.as_str() {
                "query" => crate::net::register_secret_param(v.expose()),
                "header" | "username" => {}
                _ => crate::net::register_secret_value(v.expose()),
            }
        }
        if let Auth::Query(q, _) = &auth
            && q.trim().is_empty()
        {
            return Err(Error::config(
                format!("data_sources.{name}.credentials.query"),
                "must name the query parameter that carries the key",
            ));
        }
        if let Auth::Header(h, _) = &auth
            && reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(Error::config(
                format!("data_sources.{name}.credentials.header"),
                "not a valid HTTP header name",
            ));
        }
        let client = client(name, &config.http, &url, !matches!(auth, Auth::None))?;
        Ok(HttpSpec {
            name: name.to_string(),
            url,
            records: config.records.clone(),
            pagination: config.pagination.clone(),
            options: config.http.clone(),
            auth,
            client,
            max_page_bytes: config.max_page_bytes,
        })
    }

    /// The configured URL, for messages (without credentials).
    pub fn display(&self) -> String {
        display_url(self.url.as_str())
    }

    /// One GET with retries on 429, 5xx, timeouts and connection errors (honouring
    /// `Retry-After`). 401/403 are [`Error::Credentials`]; other failures name the URL.
    /// Credentials go only to the configured origin: `credentialed` is false for a page on
    /// another origin (followed only when `http.allow_cross_origin_pages` is set).
    async fn get(
        &self,
        url: &Url,
        credentialed: bool,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap)> {
        let client = &self.client;
        let shown = display_url(url.as_str());
        let mut attempt = 0u32;
        loop {
            let mut target = url.clone();
            if credentialed && let Auth::Query(q, k) = &self.auth {
                // A next-page link that echoes the key already carries the parameter: it is
                // replaced, not sent twice (and an echoed value is never trusted over ours).
                let kept: Vec<(String, String)> = target
                    .query_pairs()
                    .filter(|(name, _)| name.as_ref() != q.as_str())
                    .map(|(a, b)| (a.into_owned(), b.into_owned()))
                    .collect();
                target.set_query(None);
                if !kept.is_empty() {
                    target.query_pairs_mut().extend_pairs(kept);
                }
                target.query_pairs_mut().append_pair(q, k.expose());
            }
            let mut req = client.get(target).header("accept", "application/json");
            for (k, v) in &self.options.headers {
                req = req.header(k, v);
            }
            if credentialed {
                req = match &self.auth {
                    Auth::None | Auth::Query(..) => req,
                    Auth::Basic(u, p) => req.basic_auth(u, Some(p.expose())),
                    Auth::Bearer(t) => req.bearer_auth(t.expose()),
                    Auth::Header(h, k) => req.header(h.as_str(), k.expose()),
                };
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let headers = resp.headers().clone();
                        match self.body(resp, &shown).await? {
                            Ok(b) => return Ok((b, headers)),
                            Err(e) if e.is_timeout() && attempt < self.options.max_retries => {
                                Err(without_url(&e))
                            }
                            Err(e) => {
                                return Err(Error::source(
                                    &self.name,
                                    format!("reading {shown}: {}", without_url(&e)),
                                ));
                            }
                        }
                    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
                    {
                        return Err(Error::Credentials {
                            source_name: self.name.clone(),
                            message: format!("HTTP {status} from {shown}"),
                        });
                    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        Ok((status, retry_after(resp.headers())))
                    } else {
                        return Err(Error::source(
                            &self.name,
                            format!("HTTP {status} from {shown}"),
                        ));
                    }
                }
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                    Err(without_url(&e))
                }
                Err(e) => {
                    return Err(Error::source(
                        &self.name,
                        format!("{shown}: {}", without_url(&e)),
                    ));
                }
            };
            if crate::net::stopping() {
                // The run is ending on a signal: the failure is the shutdown's, not the API's.
                return Err(Error::Interrupted);
            }
            if attempt >= self.options.max_retries {
                let why = match outcome {
                    Ok((status, _)) => format!("HTTP {status}"),
                    Err(e) => e,
                };
                return Err(Error::source(
                    &self.name,
                    format!(
                        "{shown}: {why} (after {} attempts)",
                        self.options.max_retries + 1
                    ),
                ));
            }
            let wait = match &outcome {
                Ok((_, Some(d))) => *d,
                _ => backoff(attempt),
            };
            tracing::warn!(source = %self.name, url = %shown, attempt = attempt + 1, wait_s = wait.as_secs_f64(), "HTTP request failed; retrying.");
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }
}

impl HttpSpec {
    /// A response body, read chunk by chunk up to `limits.max_page_bytes`: a larger page fails
    /// the source (it is never held whole). The inner error is a transport error to retry or
    /// report.
    async fn body(
        &self,
        mut resp: reqwest::Response,
        shown: &str,
    ) -> Result<std::result::Result<Vec<u8>, reqwest::Error>> {
        let max = self.max_page_bytes;
        let too_big = |n: u64| {
            Error::source(
                &self.name,
                format!(
                    "the page {shown} is larger than {max} bytes ({n} bytes or more); raise `limits.max_page_bytes` or ask the API for smaller pages"
                ),
            )
        };
        if let Some(n) = resp.content_length()
            && n > max as u64
        {
            return Err(too_big(n));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > max {
                        return Err(too_big((body.len() + c.len()) as u64));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => return Ok(Ok(body)),
                Err(e) => return Ok(Err(e)),
            }
        }
    }
}

/// The source's HTTP client. A credentialed source follows redirects only within its origin:
/// reqwest drops `Authorization` on a cross-origin redirect but keeps custom headers such as
/// `X-Api-Key`, and a query-parameter key would travel with the URL, so such redirects are
/// refused with the two origins named.
fn client(
    name: &str,
    options: &HttpOptions,
    url: &Url,
    credentialed: bool,
) -> Result<reqwest::Client> {
    let home = url.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if credentialed && !same_origin(attempt.url(), &home) {
            let msg = format!(
                "refused a redirect from {} to {}: credentials are sent only to the configured origin",
                origin(&home),
                origin(attempt.url())
            );
            attempt.error(msg)
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(options.timeout_s.max(0.001)))
        .redirect(policy)
        .build()
        .map_err(|e| Error::source(name, format!("cannot build an HTTP client: {e}")))
}

/// The `rel="next"` target of a `Link` header.
fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let rel_next = params.split(';').any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            let t = target.trim();
            (rel_next && t.starts_with('<') && t.ends_with('>'))
                .then(|| t[1..t.len() - 1].to_string())
        })
}

/// The value at a dot path (`data.items`).
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(v, |cur, key| match cur {
            Value::Object(m) => m.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
}

/// Where the next page is.
#[derive(Debug, Clone)]
enum Next {
    Url(Url),
    Page(u64),
    Offset(u64),
    Cursor(Option<String>),
    Done,
}

/// One fetched page.
pub(crate) struct Page {
    /// The page's URL, for provenance.
    pub url: String,
    /// 1-based page number.
    pub number: u64,
    /// The records, or why the body could not be read (with the raw body).
    pub records: std::result::Result<Vec<Value>, (String, String)>,
}

/// Walks the pages of a source. Every walk ends: a URL, cursor or page body seen before ends
/// it with a warning, `pagination.max_pages` ends it quietly, and the safety limit
/// `http.max_pages` ends it with an error.
pub(crate) struct Pager {
    spec: Arc<HttpSpec>,
    next: Next,
    fetched: u64,
    bad_in_a_row: u32,
    /// URLs (link paging) or cursors already requested.
    seen: std::collections::HashSet<String>,
    /// Hash of the previous page's body: an API that ignores the page or offset parameter
    /// answers the same full page for ever.
    last_body: Option<u64>,
}

impl Pager {
    pub(crate) fn new(spec: Arc<HttpSpec>) -> Pager {
        let next = match &spec.pagination {
            None | Some(Pagination::Link { .. }) => Next::Url(spec.url.clone()),
            Some(Pagination::Page { .. }) => Next::Page(1),
            Some(Pagination::Offset { .. }) => Next::Offset(0),
            Some(Pagination::Cursor { .. }) => Next::Cursor(None),
        };
        Pager {
            spec,
            next,
            fetched: 0,
            bad_in_a_row: 0,
            seen: std::collections::HashSet::new(),
            last_body: None,
        }
    }

    /// Ends the walk with a warning when this page's URL or cursor was requested before.
    fn repeats(&mut self) -> bool {
        let key = match &self.next {
            Next::Url(u) => u.to_string(),
            Next::Cursor(Some(c)) => format!("cursor {c}"),
            _ => return false,
        };
        if self.seen.insert(key) {
            return false;
        }
        let what = match &self.next {
            Next::Url(u) => format!("the next page link repeats {}", display_url(u.as_str())),
            _ => "the next cursor repeats one already followed".to_string(),
        };
        tracing::warn!(source = %self.spec.name, pages = self.fetched, "{what}; the source ends here.");
        true
    }

    fn url_for(&self, next: &Next) -> Option<Url> {
        let mut url = self.spec.url.clone();
        match (next, &self.spec.pagination) {
            (Next::Url(u), _) => return Some(u.clone()),
            (Next::Done, _) => return None,
            (
                Next::Page(n),
                Some(Pagination::Page {
                    param,
                    size_param,
                    size,
                    ..
                }),
            ) => {
                url.query_pairs_mut().append_pair(param, &n.to_string());
                if let (Some(sp), Some(sz)) = (size_param, size) {
                    url.query_pairs_mut().append_pair(sp, &sz.to_string());
                }
            }
            (
                Next::Offset(o),
                Some(Pagination::Offset {
                    param,
                    size_param,
                    size,
                    ..
                }),
            ) => {
                url.query_pairs_mut()
                    .append_pair(param, &o.to_string())
                    .append_pair(size_param, &size.to_string());
            }
            (Next::Cursor(c), Some(Pagination::Cursor { param, .. })) => {
                if let Some(c) = c {
                    url.query_pairs_mut().append_pair(param, c);
                }
            }
            _ => return None,
        }
        Some(url)
    }

    /// The next page, or None after the last one.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Page>> {
        if let Some(max) = self
            .spec
            .pagination
            .as_ref()
            .and_then(Pagination::max_pages)
            && self.fetched >= max
        {
            return Ok(None);
        }
        if self.repeats() {
            return Ok(None);
        }
        let Some(url) = self.url_for(&self.next) else {
            return Ok(None);
        };
        if self.fetched >= self.spec.options.max_pages {
            return Err(Error::source(
                &self.spec.name,
                format!(
                    "stopped after {} pages at {} (the `http.max_pages` safety limit); set `pagination.max_pages` to read fewer pages or raise `http.max_pages`",
                    self.fetched,
                    display_url(url.as_str())
                ),
            ));
        }
        let credentialed = same_origin(&url, &self.spec.url);
        let (body, headers) = self.spec.get(&url, credentialed).await?;
        self.fetched += 1;
        let body_hash = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(&body)
        };
        let same_body = self.last_body.replace(body_hash) == Some(body_hash);
        let paged = matches!(self.next, Next::Page(_) | Next::Offset(_));
        let parsed: std::result::Result<Value, String> =
            serde_json::from_slice(&body).map_err(|e| format!("not valid JSON: {e}"));
        let records = parsed.and_then(|v| {
            let found = match &self.spec.records {
                Some(p) => at_path(&v, p).ok_or_else(|| format!("no `{p}` in the response"))?,
                None => &v,
            };
            match found {
                Value::Array(items) => Ok(items.clone()),
                _ => Err(match &self.spec.records {
                    Some(p) => format!("`{p}` is not an array"),
                    None => "the response is not a JSON array; set `records` to the path of the records (`data.items`)".to_string(),
                }),
            }
        });
        let count = records.as_ref().map(Vec::len).ok();
        // The same full page twice: the API ignores the paging parameter; its records were
        // already read, so the walk ends without them.
        let repeated = paged && same_body && count.is_some_and(|n| n > 0);
        self.bad_in_a_row = if count.is_none() {
            self.bad_in_a_row + 1
        } else {
            0
        };
        // A short page ends page/offset paging; a malformed one is skipped (its text is kept as
        // an invalid row) unless several in a row say the API is not answering in JSON.
        let short = |size: Option<u64>| match (count, size) {
            (Some(0), _) => true,
            (Some(n), Some(s)) => (n as u64) < s,
            (None, _) => self.bad_in_a_row >= MAX_BAD_PAGES,
            _ => false,
        };
        self.next = match (&self.next, &self.spec.pagination) {
            (_, None) => Next::Done,
            (_, Some(Pagination::Link { .. })) => match next_link(&headers) {
                Some(n) => match url.join(&n) {
                    Ok(next) if same_origin(&next, &self.spec.url) => Next::Url(next),
                    Ok(next) if self.spec.options.allow_cross_origin_pages => {
                        tracing::warn!(source = %self.spec.name, from = %origin(&self.spec.url), to = %origin(&next), "The next page is on another origin; it is requested without credentials.");
                        Next::Url(next)
                    }
                    Ok(next) => {
                        return Err(Error::source(
                            &self.spec.name,
                            format!(
                                "the next page link leads from {} to another origin, {}; credentials are sent only to the configured origin (set `http.allow_cross_origin_pages` to follow such links without credentials)",
                                origin(&self.spec.url),
                                origin(&next)
                            ),
                        ));
                    }
                    Err(_) => Next::Done,
                },
                None => Next::Done,
            },
            (Next::Page(_) | Next::Offset(_), _) if repeated => Next::Done,
            (Next::Page(n), Some(Pagination::Page { size, .. })) => {
                if short(*size) {
                    Next::Done
                } else {
                    Next::Page(n + 1)
                }
            }
            (Next::Offset(o), Some(Pagination::Offset { size, .. })) => {
                if short(Some(*size)) {
                    Next::Done
                } else {
                    Next::Offset(o + size)
                }
            }
            (Next::Cursor(_), Some(Pagination::Cursor { cursor_path, .. })) => {
                let cursor = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| at_path(&v, cursor_path).cloned());
                match cursor {
                    _ if count == Some(0) => Next::Done,
                    Some(Value::String(s)) if !s.is_empty() => Next::Cursor(Some(s)),
                    Some(Value::Number(n)) => Next::Cursor(Some(n.to_string())),
                    _ => Next::Done,
                }
            }
            _ => Next::Done,
        };
        if repeated {
            tracing::warn!(source = %self.spec.name, pages = self.fetched, "A page repeats the previous page word for word: the API ignores the paging parameter; the source ends here.");
            return Ok(None);
        }
        let records = records.map_err(|e| (e, String::from_utf8_lossy(&body).into_owned()));
        Ok(Some(Page {
            url: display_url(url.as_str()),
            number: self.fetched,
            records,
        }))
    }
}

/// Runs a future to completion from synchronous code (the batch readers are blocking
/// iterators), whichever kind of thread this is.
pub(crate) fn run_sync<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    use tokio::runtime::{Builder, Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        // Inside a single-threaded runtime this thread cannot block: use a helper thread.
        Ok(_) => std::thread::scope(|s| {
            s.spawn(|| {
                Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime")
                    .block_on(f)
            })
            .join()
            .expect("HTTP helper thread")
        }),
        Err(_) => Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f),
    }
}

/// Fetches the first pages (this is also the credential check) and infers the columns.
pub(crate) fn infer_schema(spec: &Arc<HttpSpec>) -> Result<SchemaRef> {
    run_sync(async {
        let mut pager = Pager::new(Arc::clone(spec));
        let mut objects = Vec::new();
        while objects.len() < INFER_RECORDS && pager.fetched < INFER_PAGES {
            let Some(page) = pager.next_page().await? else {
                break;
            };
            if let Ok(records) = page.records {
                objects.extend(records.into_iter().filter(Value::is_object));
            }
        }
        Ok(schema_of_objects(&objects).unwrap_or_else(|| Arc::new(Schema::empty())))
    })
}

/// The batches of an HTTP source, page by page.
pub(crate) struct HttpBatches {
    pager: Pager,
    schema: SchemaRef,
    data_schema: SchemaRef,
    batch_size: usize,
    /// The current page's URL and its remaining records with their 1-based positions.
    current: Option<(String, VecDeque<(u64, Value)>)>,
}

impl HttpBatches {
    pub(crate) fn new(
        spec: Arc<HttpSpec>,
        schema: SchemaRef,
        data_schema: SchemaRef,
        batch_size: usize,
    ) -> Self {
        HttpBatches {
            pager: Pager::new(spec),
            schema,
            data_schema,
            batch_size: batch_size.max(1),
            current: None,
        }
    }
}

impl super::ReadBatch for HttpBatches {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some((url, records)) = &mut self.current
                && !records.is_empty()
            {
                let take = records.len().min(self.batch_size);
                let mut text = Vec::with_capacity(take * 128);
                let mut spans = Vec::with_capacity(take);
                let mut rows = Vec::with_capacity(take);
                for (row, v) in records.drain(..take) {
                    let start = text.len();
                    serde_json::to_writer(&mut text, &v)?;
                    spans.push(start..text.len());
                    text.push(b'\n');
                    rows.push(row);
                }
                let (columns, errors, raw) =
                    decode_records(&self.data_schema, &text, &spans, vec![None; spans.len()])?;
                let url = url.clone();
                return super::assemble(&self.schema, columns, &url, rows, errors, raw).map(Some);
            }
            let Some(page) = run_sync(self.pager.next_page())? else {
                return Ok(None);
            };
            match page.records {
                Ok(records) => {
                    let numbered = (1u64..).zip(records).collect();
                    self.current = Some((page.url, numbered));
                }
                Err((error, raw)) => {
                    tracing::warn!(source = %self.pager.spec.name, page = page.number, %error, "A page could not be read; its body is kept as an invalid row.");
                    self.current = None;
                    let columns = self
                        .data_schema
                        .fields()
                        .iter()
                        .map(|f| arrow::array::new_null_array(f.data_type(), 1))
                        .collect();
                    return super::assemble(
                        &self.schema,
                        columns,
                        &page.url,
                        vec![page.number],
                        vec![Some(format!("page {}: {error}", page.number))],
                        vec![Some(raw)],
                    )
                    .map(Some);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
