//! Object stores: `s3://`, `gs://`, `az://` (and read-only `http(s)://`) paths for inputs,
//! outputs and the mappings directory, through the `object_store` crate. A helper every layer
//! may use.
//!
//! Paths stay `PathBuf`s throughout the crate; an object-store location is a path whose text
//! is its URL (`s3://bucket/key`), told apart by [`is_remote`]. Joining a file name onto such
//! a directory gives the object's URL, so the callers that build output and mapping paths need
//! no second kind of path.
//!
//! The readers and writers of the engine are blocking (they run on blocking threads). Every
//! request to a store runs on one process-wide IO runtime, so that connections, timers and
//! retries belong to a runtime that lives as long as the process, whichever thread or runtime
//! asked; the caller waits for the answer. Settings and credentials come from
//! [`register`]ed prefixes (the config's `storage` and a source's `credentials`) over each
//! cloud's standard environment variables; they are never printed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::error::{Error, Result};

/// Size of one multipart upload part. Stores require at least 5 MiB for all parts but the
/// last; a file smaller than one part is written with a single (atomic) PUT.
const PART_BYTES: usize = 10 << 20;

/// Parts of one upload in flight at once: bounds an output's memory to a few parts.
const PARTS_IN_FLIGHT: usize = 2;

/// Bytes requested at once by a streaming reader before the next chunk is awaited.
const READ_AHEAD_CHUNKS: usize = 8;

/// Whether `path` names an object in a store (`s3://…`, `gs://…`, `az://…`, `http(s)://…`)
/// rather than a local file. `file://` URLs are local paths.
pub fn is_remote(path: &Path) -> bool {
    path.to_str().is_some_and(|s| scheme(s).is_some())
}

/// The URL scheme of `text`, when it is a URL other than `file://`.
fn scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let ok = scheme.len() > 1
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    (ok && scheme != "file").then_some(scheme)
}

/// Settings for every location under one URL prefix (`s3://bucket`, `s3://bucket/raw/`).
struct Registered {
    prefix: String,
    options: Vec<(String, String)>,
}

fn registry() -> &'static Mutex<Vec<Registered>> {
    static R: OnceLock<Mutex<Vec<Registered>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

type Cache = Mutex<HashMap<(String, Vec<(String, String)>), Arc<dyn ObjectStore>>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers settings (`endpoint`, `region`, `allow_http`, `access_key_id`, …: the
/// `object_store` configuration keys of the URL's cloud, with or without their `aws_` /
/// `google_` / `azure_` prefix) for every location under `prefix`. The longest registered
/// prefix of a location applies; a later registration of the same prefix replaces the
/// earlier one. Checks the keys now, so a misspelt setting is a config error, not a failed
/// upload at the end of a run.
pub fn register(prefix: &str, options: Vec<(String, String)>) -> Result<()> {
    let url = url::Url::parse(prefix).map_err(|e| {
        Error::config(
            format!("storage.{prefix}"),
            format!("not a store URL ({e}); use s3://BUCKET, gs://BUCKET or az://CONTAINER"),
        )
    })?;
    build(&url, &options).map_err(|e| Error::config(format!("storage.{prefix}"), e))?;
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|x| x.prefix != prefix);
    r.push(Registered {
        prefix: prefix.to_string(),
        options,
    });
    Ok(())
}

/// The settings of the longest registered prefix of `url`.
fn options_for(url: &str) -> Vec<(String, String)> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.iter()
        .filter(|x| {
            url.strip_prefix(x.prefix.trim_end_matches('/'))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|x| x.prefix.len())
        .map(|x| x.options.clone())
        .unwrap_or_default()
}

/// A store client for `url` with `options` over the environment's settings.
fn build(url: &url::Url, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>, String> {
    // Bounded retries: a store that is down fails its source within about a minute.
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    plain_http_allowed(url, options)?;
    let key =
        |k: &str, prefix: &str| -> Vec<String> { vec![k.to_string(), format!("{prefix}{k}")] };
    macro_rules! configure {
        ($builder:expr, $prefix:literal, $key:ty) => {{
            let mut b = $builder.with_url(url.as_str()).with_retry(retry);
            for (k, v) in options {
                let k = k.to_ascii_lowercase();
                let parsed = key(&k, $prefix)
                    .iter()
                    .find_map(|k| k.parse::<$key>().ok())
                    .ok_or_else(|| {
                        format!("unknown storage setting `{k}` for {}://", url.scheme())
                    })?;
                b = b.with_config(parsed, v.clone());
            }
            Arc::new(b.build().map_err(|e| describe(&e))?) as Arc<dyn ObjectStore>
        }};
    }
    Ok(match url.scheme() {
        "s3" | "s3a" => configure!(
            object_store::aws::AmazonS3Builder::from_env(),
            "aws_",
            object_store::aws::AmazonS3ConfigKey
        ),
        "gs" => configure!(
            object_store::gcp::GoogleCloudStorageBuilder::from_env(),
            "google_",
            object_store::gcp::GoogleConfigKey
        ),
        "az" | "azure" | "abfs" | "abfss" | "adl" => configure!(
            object_store::azure::MicrosoftAzureBuilder::from_env(),
            "azure_",
            object_store::azure::AzureConfigKey
        ),
        "http" | "https" => {
            let origin = &url[..url::Position::BeforePath];
            let mut b = object_store::http::HttpBuilder::new()
                .with_url(origin)
                .with_retry(retry);
            for (k, v) in options {
                let parsed = k
                    .to_ascii_lowercase()
                    .parse::<object_store::ClientConfigKey>()
                    .map_err(|_| {
                        format!("unknown storage setting `{k}` for {}://", url.scheme())
                    })?;
                b = b.with_config(parsed, v.clone());
            }
            Arc::new(b.build().map_err(|e| describe(&e))?)
        }
        other => {
            return Err(format!(
                "{other}:// is not a supported store; use s3://, gs://, az://, http(s):// or a local path"
            ));
        }
    })
}

/// Plain HTTP (an `http://` path, or an `http://` endpoint) must be allowed explicitly: the
/// client would otherwise refuse every request with an error that names nothing ("builder
/// error"), the same words for a closed port and a 404.
fn plain_http_allowed(url: &url::Url, options: &[(String, String)]) -> Result<(), String> {
    let setting = |names: &[&str]| {
        options
            .iter()
            .find(|(k, _)| names.contains(&k.to_ascii_lowercase().as_str()))
            .map(|(_, v)| v.clone())
    };
    let endpoint = setting(&["endpoint", "aws_endpoint", "aws_endpoint_url"]).or_else(|| {
        (url.scheme().starts_with("s3"))
            .then(|| std::env::var("AWS_ENDPOINT").or_else(|_| std::env::var("AWS_ENDPOINT_URL")))
            .and_then(|v| v.ok())
    });
    let plain = url.scheme() == "http"
        || endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    if !plain {
        return Ok(());
    }
    let allowed = setting(&[
        "allow_http",
        "aws_allow_http",
        "azure_allow_http",
        "google_allow_http",
    ])
    .or_else(|| {
        std::env::var("AWS_ALLOW_HTTP")
            .ok()
            .filter(|_| url.scheme().starts_with("s3"))
    })
    .or_else(|| std::env::var("ALLOW_HTTP").ok())
    .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if allowed {
        return Ok(());
    }
    let prefix = match url.scheme() {
        "http" => url[..url::Position::BeforePath].to_string(),
        scheme => format!("{scheme}://{}", url.host_str().unwrap_or_default()),
    };
    Err(format!(
        "{} uses plain HTTP, which is refused unless allowed: set `storage.\"{prefix}\".allow_http: true` in the config (or use https://)",
        if url.scheme() == "http" {
            "this path"
        } else {
            "the store's endpoint"
        }
    ))
}

/// An error's text, without the XML body a store answered with (request ids, the store's
/// echo of the request): the status line says what happened.
fn describe(e: &object_store::Error) -> String {
    let text = e.to_string();
    match text.find("<?xml").or_else(|| text.find("<Error>")) {
        Some(i) => text[..i].trim_end_matches([' ', ':']).to_string(),
        None => text,
    }
}

/// Whether the store refused the credentials. Requests other than GET and HEAD (listing,
/// uploads) report the HTTP status only inside a generic error whose type `object_store`
/// keeps private, so its text is read for the status.
fn refused(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        other => {
            let text = other.to_string();
            text.contains("status code: 401") || text.contains("status code: 403")
        }
    }
}

/// The process-wide runtime that every store request runs on.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("conform-io")
            .enable_all()
            .build()
            .expect("the object-store IO runtime")
    })
}

/// Runs `f` on the IO runtime and waits for it, from any thread.
fn io_wait<F>(f: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = io_runtime().spawn(f);
    let wait = move || futures::executor::block_on(handle);
    // On a worker of a multi-threaded runtime, let that runtime move its other tasks away
    // while this thread waits.
    let joined = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    match joined {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// One object: its store client, its key and its URL (for messages).
#[derive(Clone)]
pub(crate) struct Object {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Object {
    // The store client holds credentials: only the URL is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Object").field(&self.url).finish()
    }
}

impl Object {
    /// The object at `path` (a URL in a [`PathBuf`]); `who` names the source or output in
    /// errors.
    pub fn at(who: &str, path: &Path) -> Result<Object> {
        let text = path.to_string_lossy().to_string();
        let url = url::Url::parse(&text)
            .map_err(|e| Error::source(who, format!("{text} is not a valid URL: {e}")))?;
        let options = options_for(&text);
        let authority = url[..url::Position::BeforePath].to_string();
        let store = {
            let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
            match c.get(&(authority.clone(), options.clone())) {
                Some(s) => Arc::clone(s),
                None => {
                    let s = build(&url, &options).map_err(|e| Error::source(who, e))?;
                    c.insert((authority, options), Arc::clone(&s));
                    s
                }
            }
        };
        let key = object_key(&url).map_err(|e| Error::source(who, e))?;
        Ok(Object {
            store,
            key,
            url: text,
        })
    }

    /// The store client (its root is the bucket or container) and the object's key in it.
    #[cfg_attr(not(feature = "delta"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (Arc<dyn ObjectStore>, ObjectPath) {
        (Arc::clone(&self.store), self.key.clone())
    }

    /// The object's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object's size in bytes.
    pub fn size(&self, who: &str) -> Result<u64> {
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        io_wait(async move { store.head(&key).await })
            .map(|m| m.size)
            .map_err(|e| failure(who, &self.url, "reading", e))
    }

    /// The whole object, or `None` when there is none.
    pub fn read_all(&self, who: &str) -> Result<Option<Bytes>> {
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        match io_wait(async move { store.get(&key).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failure(who, &self.url, "reading", e)),
        }
    }

    /// `len` bytes from `start` (a Parquet footer or column chunk): one range request.
    pub fn read_range(&self, start: u64, len: u64) -> std::io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        io_wait(async move { store.get_range(&key, start..start + len).await })
            .map_err(|e| std::io::Error::other(format!("{}: {}", self.url, describe(&e))))
    }

    /// A streaming reader from byte `start` to `end` (or to the object's end): the body is
    /// fetched chunk by chunk a few chunks ahead, never whole.
    pub fn reader(&self, who: &str, start: u64, end: Option<u64>) -> Result<Box<dyn Read + Send>> {
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        let range = match end {
            Some(end) if end <= start => return Ok(Box::new(std::io::empty())),
            Some(end) => Some(GetRange::Bounded(start..end)),
            None if start == 0 => None,
            None => Some(GetRange::Offset(start)),
        };
        let opts = GetOptions {
            range,
            ..Default::default()
        };
        let body = io_wait(async move { store.get_opts(&key, opts).await })
            .map_err(|e| failure(who, &self.url, "reading", e))?;
        // A task on the IO runtime pulls the body; the reader takes chunks from the channel.
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let url = self.url.clone();
        io_runtime().spawn(async move {
            let mut stream = body.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("{url}: {}", describe(&e)));
                let failed = chunk.is_err();
                // The reader was dropped: stop fetching.
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Box::new(StreamRead {
            rx,
            current: Bytes::new(),
        }))
    }

    /// Writes `bytes` as the whole object, atomically (one PUT).
    pub fn write_all(&self, who: &str, bytes: Vec<u8>) -> Result<()> {
        let (store, key) = (Arc::clone(&self.store), self.key.clone());
        io_wait(async move { store.put(&key, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| failure(who, &self.url, "writing", e))
    }

    /// A writer whose object appears whole when [`Upload::commit`] returns, or not at all.
    pub fn upload(&self) -> Upload {
        Upload {
            object: self.clone(),
            buffer: Vec::new(),
            multipart: None,
            parts: Vec::new(),
            committed: false,
        }
    }
}

/// The key of an object URL inside its store.
fn object_key(url: &url::Url) -> Result<ObjectPath, String> {
    let path = match url.scheme() {
        // Azure URLs may name the container as the host (az://container/key) or as the first
        // path segment of an account host; object_store's parser knows both.
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" => {
            object_store::ObjectStoreScheme::parse(url)
                .map(|(_, p)| p)
                .map_err(|e| e.to_string())?
        }
        _ => ObjectPath::from_url_path(url.path()).map_err(|e| e.to_string())?,
    };
    Ok(path)
}

/// A store's answer as this crate's error: rejected credentials are [`Error::Credentials`],
/// so the console says `Invalid credentials for NAME`.
fn failure(who: &str, url: &str, action: &str, e: object_store::Error) -> Error {
    if no_credentials(&e.to_string()) {
        // The client's last resort is the cloud's instance metadata service; its address (or
        // its refusal) means nothing to someone who simply configured no credentials.
        return Error::Credentials {
            source_name: who.to_string(),
            message: format!(
                "no credentials were found for {url}: none in the config (`storage` or the \
                 source's `credentials`), none in the environment (for S3 AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY), and no cloud instance identity answered; for a public \
                 bucket set `skip_signature: true`"
            ),
        };
    }
    if refused(&e) {
        return Error::Credentials {
            source_name: who.to_string(),
            message: format!("the store refused {action} {url}"),
        };
    }
    match e {
        object_store::Error::NotFound { .. } => Error::source(who, format!("{url} does not exist")),
        other => {
            let text = describe(&other);
            Error::source(who, format!("{action} {url}: {text}"))
        }
    }
}

/// Whether a store error is the credential chain running out (ending at the instance metadata
/// service) rather than the store answering.
fn no_credentials(text: &str) -> bool {
    text.contains("169.254.169.254")
        || text.contains("/latest/api/token")
        || text.contains("/latest/meta-data/")
        || text.contains("/computeMetadata/")
        || text.contains("/metadata/identity/oauth2/token")
        || text.contains("169.254.170.2")
        || text.contains("metadata.google.internal")
        || text.contains("Error getting credentials")
        || text.contains("Error fetching token")
}

/// The blocking side of a streamed object body.
struct StreamRead {
    rx: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Bounded: each turn either copies bytes, ends, fails, or takes the next chunk.
        while self.current.is_empty() {
            // The channel is runtime-agnostic: waiting on it needs no runtime context.
            match futures::executor::block_on(self.rx.recv()) {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// An object being written: parts of [`PART_BYTES`] go up as they fill, at most
/// [`PARTS_IN_FLIGHT`] at a time; the object becomes visible only when the upload completes
/// in [`Upload::commit`]. Dropped unfinished (an error, a cancelled run), the upload is
/// aborted; a killed process leaves an incomplete upload, which stores never show as an
/// object.
pub(crate) struct Upload {
    object: Object,
    buffer: Vec<u8>,
    multipart: Option<Box<dyn object_store::MultipartUpload>>,
    parts: Vec<tokio::task::JoinHandle<object_store::Result<()>>>,
    committed: bool,
}

impl Upload {
    /// Sends the buffer as the next part, waiting for the oldest part when too many are in
    /// flight.
    fn send_part(&mut self) -> std::io::Result<()> {
        let io = |e: object_store::Error| {
            std::io::Error::other(format!("{}: {}", self.object.url, describe(&e)))
        };
        if self.multipart.is_none() {
            let (store, key) = (Arc::clone(&self.object.store), self.object.key.clone());
            self.multipart =
                Some(io_wait(async move { store.put_multipart(&key).await }).map_err(io)?);
        }
        let payload = PutPayload::from(std::mem::take(&mut self.buffer));
        let part = self
            .multipart
            .as_mut()
            .expect("started above")
            .put_part(payload);
        self.parts.push(io_runtime().spawn(part));
        while self.parts.len() > PARTS_IN_FLIGHT {
            let oldest = self.parts.remove(0);
            wait_part(oldest).map_err(io)?;
        }
        Ok(())
    }

    /// Uploads what is left and completes the object.
    pub fn commit(mut self, who: &str) -> Result<()> {
        let url = self.object.url.clone();
        let fail = |e: object_store::Error| failure(who, &url, "writing", e);
        if self.multipart.is_none() {
            // Smaller than one part: one PUT, which is atomic.
            let bytes = std::mem::take(&mut self.buffer);
            self.object.write_all(who, bytes)?;
            self.committed = true;
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.send_part()
                .map_err(|e| Error::source(who, format!("writing {url}: {e}")))?;
        }
        for part in std::mem::take(&mut self.parts) {
            wait_part(part).map_err(fail)?;
        }
        let mut upload = self.multipart.take().expect("started");
        let done = io_wait(async move { upload.complete().await.map(|_| ()) });
        self.committed = true;
        done.map_err(fail)
    }
}

fn wait_part(part: tokio::task::JoinHandle<object_store::Result<()>>) -> object_store::Result<()> {
    io_wait(async move {
        part.await
            .unwrap_or_else(|e| Err(object_store::Error::JoinError { source: e }))
    })
}

impl std::io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = PART_BYTES - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= PART_BYTES {
            self.send_part()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for part in self.parts.drain(..) {
            part.abort();
        }
        if let Some(mut upload) = self.multipart.take() {
            // Best effort: the store drops the parts; an upload never completed is never an
            // object either way.
            io_runtime().spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

/// Expands a store URL with glob characters in its key (`s3://bucket/orders/*.csv`) into the
/// sorted object URLs it matches (`*` stays within one `/` level); a URL without them names one
/// object, which must exist.
pub(crate) fn resolve(who: &str, pattern: &str) -> Result<Vec<PathBuf>> {
    let url = url::Url::parse(pattern)
        .map_err(|e| Error::source(who, format!("{pattern} is not a valid URL: {e}")))?;
    let key_pattern = url.path().trim_start_matches('/');
    let Some(first_glob) = key_pattern.find(['*', '?', '[']) else {
        Object::at(who, Path::new(pattern))?.size(who)?;
        return Ok(vec![PathBuf::from(pattern)]);
    };
    if !matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "azure") {
        return Err(Error::source(
            who,
            format!("{pattern}: glob patterns need a listable store URL (s3://, gs://, az://)"),
        ));
    }
    let origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    let matcher = glob::Pattern::new(key_pattern)
        .map_err(|e| Error::source(who, format!("bad glob pattern {pattern:?}: {e}")))?;
    // List only under the directory before the first glob character.
    let dir = &key_pattern[..key_pattern[..first_glob].rfind('/').map_or(0, |i| i + 1)];
    let object = Object::at(who, Path::new(&format!("{origin}/{dir}")))?;
    let store = Arc::clone(&object.store);
    let prefix = (!dir.is_empty()).then(|| ObjectPath::from(dir.trim_end_matches('/')));
    let listed = io_wait(async move {
        store
            .list(prefix.as_ref())
            .map(|m| m.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
    });
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut files = Vec::new();
    for key in listed {
        let key = key.map_err(|e| failure(who, object.url(), "listing", e))?;
        if matcher.matches_with(key.as_ref(), options) {
            files.push(PathBuf::from(format!("{origin}/{key}")));
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::source(who, format!("no object matches {pattern:?}")));
    }
    Ok(files)
}

/// Reads a small file (a mapping document, a profile history) whole, local or in a store;
/// `None` when it does not exist.
pub(crate) fn read_optional(who: &str, path: &Path) -> Result<Option<Vec<u8>>> {
    if is_remote(path) {
        return Ok(Object::at(who, path)?.read_all(who)?.map(|b| b.to_vec()));
    }
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// Reads a small text file whole, local or in a store; `None` when it does not exist.
pub(crate) fn read_text_optional(who: &str, path: &Path) -> Result<Option<String>> {
    read_optional(who, path)?
        .map(|b| {
            String::from_utf8(b)
                .map_err(|_| Error::source(who, format!("{} is not UTF-8 text", path.display())))
        })
        .transpose()
}

/// Appends `bytes` to a small log file. Stores cannot append: the object is read and written
/// again whole (one PUT), so a reader sees the old or the new log, never a torn one.
pub(crate) fn append(who: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    if is_remote(path) {
        let object = Object::at(who, path)?;
        let mut all = object
            .read_all(who)?
            .map(|b| b.to_vec())
            .unwrap_or_default();
        all.extend_from_slice(bytes);
        return object.write_all(who, all);
    }
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))
}

/// Removes the files (objects) directly in `dir` whose names satisfy `remove`; a missing
/// directory has none. Returns how many were removed.
// Only cluster runs clear part files, and only the `ballista` feature builds them.
#[cfg_attr(not(feature = "ballista"), allow(dead_code))]
pub(crate) fn remove_files(who: &str, dir: &Path, remove: impl Fn(&str) -> bool) -> Result<usize> {
    if !is_remote(dir) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("reading", dir, e)),
        };
        let mut n = 0;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(&remove) {
                std::fs::remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
                n += 1;
            }
        }
        return Ok(n);
    }
    let object = Object::at(who, dir)?;
    let (store, prefix) = (Arc::clone(&object.store), object.key.clone());
    let listed = io_wait(async move {
        store
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|l| l.objects)
    })
    .map_err(|e| failure(who, object.url(), "listing", e))?;
    let mut n = 0;
    for meta in listed {
        if meta.location.filename().is_some_and(&remove) {
            let (store, key) = (Arc::clone(&object.store), meta.location.clone());
            io_wait(async move { store.delete(&key).await })
                .map_err(|e| failure(who, object.url(), "removing from", e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes one file (object); a missing one is not an error.
#[cfg_attr(not(feature = "delta"), allow(dead_code))]
pub(crate) fn remove(who: &str, path: &Path) -> Result<()> {
    if !is_remote(path) {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", path, e))
            }
            _ => Ok(()),
        };
    }
    let object = Object::at(who, path)?;
    let (store, key) = (Arc::clone(&object.store), object.key.clone());
    match io_wait(async move { store.delete(&key).await }) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(failure(who, object.url(), "removing", e)),
    }
}

/// Runs `f` on the process-wide IO runtime and waits for it without blocking the caller's
/// runtime: work that talks to stores through other libraries (Delta commits) then shares
/// the runtime the store clients' connections belong to.
#[cfg_attr(not(feature = "delta"), allow(dead_code))]
pub(crate) async fn on_io<F>(f: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match io_runtime().spawn(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Joins a relative path onto `base` unless it is absolute or a store URL.
pub(crate) fn anchor(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || is_remote(path) {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}
