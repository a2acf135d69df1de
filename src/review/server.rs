//! The review page's server: axum on the runtime conform already runs, bound to 127.0.0.1.
//! Every request must carry the run's random token and name this server as its `Host` (and,
//! when the browser sends one, as its `Origin`), so that neither another local user's page
//! nor a rebinding DNS name can drive it. Nothing is written but by "Pin".

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::page::{self, Mode};
use super::{Decisions, ReviewBase, Scope, SourceReview, version_of};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;

/// The fields whose candidates a page comes with; the others' are fetched when unfolded.
const FIRST_LOOK: Scope = Scope::FirstLook(page::UNFOLDED);

/// Largest request body: decisions for every field of a wide target fit many times over.
const BODY_LIMIT: usize = 1 << 20;

/// What `conform review` serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The sources to review (configured names).
    pub sources: Vec<String>,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// Who the review entries name.
    pub reviewer: String,
    /// Sample rows per source.
    pub rows: usize,
    /// Where a source's mapping comes from when no stored document settles it.
    pub mapper: crate::pipeline::MapperChoice,
}

struct App {
    pipeline: Pipeline,
    options: ServeOptions,
    token: String,
    port: u16,
    /// The base each source's page was last made from.
    bases: Mutex<HashMap<String, Arc<ReviewBase>>>,
    /// One pin at a time: the version check and the write are one step.
    pins: tokio::sync::Mutex<()>,
    /// The page made before the URL was printed, for the first request.
    warm: Mutex<Option<String>>,
}

/// A random token of 128 bits, as hex.
fn token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no random numbers for the page's token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves the review page until `shutdown` completes. `ready` gets the page's URL (with its
/// token) once the server listens.
pub async fn serve(
    pipeline: Pipeline,
    options: ServeOptions,
    ready: impl FnOnce(&str),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    for s in &options.sources {
        pipeline.config().source_or_error(s)?;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| {
            Error::config(
                "--port",
                format!("cannot listen on 127.0.0.1:{}: {e}", options.port),
            )
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("the listener has no address: {e}")))?
        .port();
    let app = Arc::new(App {
        pipeline,
        options,
        token: token()?,
        port,
        bases: Mutex::new(HashMap::new()),
        pins: tokio::sync::Mutex::new(()),
        warm: Mutex::new(None),
    });
    // Proposals and sample runs are made before the URL is given, so that the page opens at
    // once and a source's failure is on the console before anyone looks.
    let sections = app.sections().await;
    for (name, r) in &sections {
        if let Err(e) = r {
            tracing::warn!(source = %name, error = %e, "This source cannot be reviewed; its page shows why.");
        }
    }
    *app.warm
        .lock()
        .expect("the warm page's lock is never poisoned") =
        Some(page::render(&sections, app.mode()));
    let router = Router::new()
        .route("/", get(index))
        .route("/api/apply", post(apply))
        .route("/api/compile", post(compile))
        .route("/api/candidates", post(candidates))
        .route("/api/invalid", post(invalid))
        .route("/api/pin", post(pin))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Arc::clone(&app));
    ready(&format!("http://127.0.0.1:{port}/?token={}", app.token));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("the review server stopped: {e}")))
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// Refuses a request without the token, for another host, or from another origin.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let port = app.port;
    let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| hosts.iter().any(|ok| ok == h));
    if !host_ok {
        return refuse(StatusCode::FORBIDDEN, "forbidden: not this server's host");
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| hosts.iter().any(|h| o == format!("http://{h}")));
        if !ok {
            return refuse(StatusCode::FORBIDDEN, "forbidden: another origin");
        }
    }
    let token_ok = req.uri().query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k == "token" && v == app.token)
    });
    if !token_ok {
        return refuse(StatusCode::FORBIDDEN, "forbidden: a missing or wrong token");
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn json_error(status: StatusCode, message: &str, reload: bool) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message, "reload": reload}).to_string(),
    )
        .into_response()
}

/// A refused API request: its status, the message, and whether reloading the page helps.
struct Refusal(StatusCode, String, bool);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1, self.2)
    }
}

fn json_ok(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

impl App {
    fn sources(&self) -> Vec<String> {
        if self.options.sources.is_empty() {
            self.pipeline
                .config()
                .data_sources
                .iter()
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            self.options.sources.clone()
        }
    }

    async fn fresh_base(&self, source: &str) -> Result<Arc<ReviewBase>> {
        let base = Arc::new(
            ReviewBase::load(
                &self.pipeline,
                source,
                self.options.mapper,
                self.options.rows,
            )
            .await?,
        );
        self.bases
            .lock()
            .expect("the bases lock is never poisoned")
            .insert(source.to_string(), Arc::clone(&base));
        Ok(base)
    }

    async fn base(&self, source: &str) -> std::result::Result<Arc<ReviewBase>, Refusal> {
        if !self.sources().iter().any(|s| s == source) {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("`{source}` is not a source under review"),
                false,
            ));
        }
        let cached = self
            .bases
            .lock()
            .expect("the bases lock is never poisoned")
            .get(source)
            .cloned();
        match cached {
            Some(b) => Ok(b),
            None => self
                .fresh_base(source)
                .await
                .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string(), false)),
        }
    }

    fn mode(&self) -> Mode<'_> {
        Mode::Served { token: &self.token }
    }
}

impl App {
    /// Every source's review as it stands on disk now (a source that fails shows its error).
    async fn sections(&self) -> Vec<(String, std::result::Result<SourceReview, String>)> {
        let mut sections = Vec::new();
        for source in self.sources() {
            let review = match self.fresh_base(&source).await {
                Ok(base) => base
                    .review(&self.pipeline, &Decisions::new(), FIRST_LOOK)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            sections.push((source, review));
        }
        sections
    }
}

async fn index(State(app): State<Arc<App>>) -> Response {
    // The page made while starting serves the first request; later ones read the disk again
    // (another tab or process may have pinned since).
    let warm = app
        .warm
        .lock()
        .expect("the warm page's lock is never poisoned")
        .take();
    if let Some(page) = warm {
        return Html(page).into_response();
    }
    let sections = app.sections().await;
    Html(page::render(&sections, app.mode())).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> std::result::Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("not a valid request: {e}"),
            false,
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    source: String,
    #[serde(default)]
    decisions: Decisions,
}

async fn apply(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: ApplyRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let base = match app.base(&req.source).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match base.review(&app.pipeline, &req.decisions, FIRST_LOOK).await {
        Ok(review) => Html(page::section(&review, app.mode())).into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    }
}

/// The sample's invalid rows under the decisions, as NDJSON (the page's download).
async fn invalid(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: ApplyRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let base = match app.base(&req.source).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match base
        .review(&app.pipeline, &req.decisions, Scope::FirstLook(0))
        .await
    {
        Ok(review) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            page::invalid_ndjson(&review, false),
        )
            .into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompileRequest {
    source: String,
    field: String,
    expr: String,
}

async fn compile(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: CompileRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let base = match app.base(&req.source).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    match base.check(&app.pipeline, &req.field, &req.expr) {
        Ok(Ok(sources)) => json_ok(json!({"ok": true, "sources": sources})),
        Ok(Err(message)) => json_ok(json!({"ok": false, "error": message})),
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidatesRequest {
    source: String,
    field: String,
}

/// A folded field's candidates, run on the sample when the reviewer unfolds it.
async fn candidates(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: CandidatesRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let base = match app.base(&req.source).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if app.pipeline.target().field(&req.field).is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("`{}` is not a field of the target schema", req.field),
            false,
        );
    }
    match base
        .candidate_reviews(&app.pipeline, &base.document, &[req.field.as_str()])
        .await
    {
        Ok(mut c) => Html(page::candidates(
            &req.field,
            &c.remove(&req.field).unwrap_or_default(),
            false,
        ))
        .into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    source: String,
    base: String,
    #[serde(default)]
    decisions: Decisions,
}

async fn pin(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: PinRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let base = match app.base(&req.source).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let _one_at_a_time = app.pins.lock().await;
    let now = match version_of(&base.path) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), false),
    };
    if now != req.base || base.version != req.base {
        return json_error(
            StatusCode::CONFLICT,
            &format!(
                "not pinned: {} changed since this page was loaded; reload to review it as it is now",
                base.path.display()
            ),
            true,
        );
    }
    let review = match base
        .review(&app.pipeline, &req.decisions, Scope::FirstLook(0))
        .await
    {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    };
    let pinned = match super::pin(&review, &app.options.reviewer) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string(), false),
    };
    tracing::info!(source = %req.source, document = %pinned.path.display(), entries = pinned.entries.len(), "Pinned a reviewed mapping.");
    // The page continues from the document as pinned.
    let html = match app.fresh_base(&req.source).await {
        Ok(b) => match b.review(&app.pipeline, &Decisions::new(), FIRST_LOOK).await {
            Ok(r) => page::section(&r, app.mode()),
            Err(e) => format!(
                "<section class=\"source failed\" data-source=\"{0}\"><p class=\"error\">{1}</p></section>",
                page::esc(&req.source),
                page::esc(&e.to_string())
            ),
        },
        Err(e) => format!(
            "<section class=\"source failed\" data-source=\"{0}\"><p class=\"error\">{1}</p></section>",
            page::esc(&req.source),
            page::esc(&e.to_string())
        ),
    };
    json_ok(json!({
        "path": pinned.path.display().to_string(),
        "previous": pinned.previous.as_ref().map(|p| p.display().to_string()),
        "version": pinned.version,
        "entries": pinned.entries,
        "html": html,
    }))
}
