//! Network helpers that every layer may use and that use nothing above them: retry timing
//! (exponential backoff with jitter, `Retry-After`), error text without URLs, origins, and URLs
//! made safe to show (no user-info, no secret query values).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::Url;

/// First backoff delay; doubled per attempt.
pub(crate) const BASE_DELAY: Duration = Duration::from_millis(250);
/// Longest backoff delay (and longest `Retry-After` honoured).
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// Query parameters whose values are secrets wherever they appear (compared without case and
/// without `-`/`_`): their values are shown as `***`.
const SECRET_PARAMS: &[&str] = &[
    "apikey",
    "key",
    "token",
    "accesstoken",
    "authtoken",
    "refreshtoken",
    "idtoken",
    "auth",
    "sig",
    "signature",
    "secret",
    "clientsecret",
    "password",
    "passwd",
    "pwd",
    "session",
    "sessionid",
    "sessiontoken",
    "credential",
    "credentials",
    "xamzsignature",
    "xamzcredential",
    "xamzsecuritytoken",
    "code",
];

/// Whether a query parameter's value must never be shown.
pub fn is_secret_param(name: &str) -> bool {
    let key: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_PARAMS.contains(&key.as_str())
}

static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the process as stopping (Ctrl-C, SIGTERM): requests that fail from now on are the
/// shutdown's doing, not the network's, and are neither retried nor reported as failures.
pub fn set_stopping() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the process is stopping on a signal.
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Secrets of this process that URLs may carry under names nobody can know in advance: the
/// values (masked wherever they appear in a shown URL) and the query parameter names that carry
/// them (masked whatever their value).
#[derive(Default)]
struct Registered {
    values: Vec<String>,
    params: Vec<String>,
}

static REGISTERED: std::sync::RwLock<Registered> = std::sync::RwLock::new(Registered {
    values: Vec::new(),
    params: Vec::new(),
});

/// Shortest secret masked by its value: a shorter one (a 1-character key) would mangle every
/// URL it happens to occur in, so it is masked by its parameter name only.
pub const MIN_MASKED_SECRET: usize = 6;

/// Registers a configured secret: every URL shown from now on has it replaced by `***`.
pub fn register_secret_value(value: &str) {
    if value.len() < MIN_MASKED_SECRET {
        return;
    }
    if let Ok(mut r) = REGISTERED.write()
        && !r.values.iter().any(|v| v == value)
    {
        r.values.push(value.to_string());
        // Longest first, so that a secret containing another is masked whole.
        r.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Registers a query parameter that carries a secret (a source's `credentials.query`): its
/// value is shown as `***` in every URL, whatever the value.
pub fn register_secret_param(name: &str) {
    let key = normalise_param(name);
    if key.is_empty() {
        return;
    }
    if let Ok(mut r) = REGISTERED.write()
        && !r.params.contains(&key)
    {
        r.params.push(key);
    }
}

fn normalise_param(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A URL for messages, logs and outputs: user-info removed, the values of well-known secret
/// query parameters and of registered ones replaced by `***` (`?api_key=***&page=2`), and every
/// registered secret value masked wherever it appears.
pub fn display_url(url: &str) -> String {
    let registered = REGISTERED.read().ok();
    let (values, params) = match &registered {
        Some(r) => (r.values.as_slice(), r.params.as_slice()),
        None => (&[][..], &[][..]),
    };
    let shown = display_url_with(url, values, params);
    drop(registered);
    shown
}

fn display_url_with(url: &str, values: &[String], params: &[String]) -> String {
    let shown = display_url_named(url, values, params);
    // A secret elsewhere in the URL (a path segment, an echoed fragment): masked as written
    // and as percent-encoded.
    let mut out = shown;
    for v in values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
        let encoded = encode(v);
        if encoded != *v && out.contains(&encoded) {
            out = out.replace(&encoded, "***");
        }
    }
    out
}

fn display_url_named(url: &str, values: &[String], params: &[String]) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = is_secret_param(&k)
                            || params.contains(&normalise_param(&k))
                            || values.iter().any(|s| v.contains(s.as_str()));
                        let v = if secret {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if pairs.iter().any(|(_, v)| v == "***") {
                    // Rebuilt by hand so that `***` stays readable instead of `%2A%2A%2A`.
                    let query = pairs
                        .iter()
                        .map(|(k, v)| {
                            if v == "***" {
                                format!("{}=***", encode(k))
                            } else {
                                format!("{}={}", encode(k), encode(v))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("&");
                    u.set_query(Some(&query));
                }
            }
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The origin of a URL as RFC 6454 defines it: scheme, host and port (the scheme's default
/// port when none is written). Credentials belong to one origin.
pub fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Whether two URLs share an origin.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
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

    #[test]
    fn secret_query_values_and_user_info_are_not_shown() {
        let shown = display_url(
            "https://u:pw@api.example/v1/items?api_key=K1&page=2&Access-Token=T2&sig=S3",
        );
        assert_eq!(
            shown,
            "https://api.example/v1/items?api_key=***&page=2&Access-Token=***&sig=***"
        );
        for secret in ["K1", "T2", "S3", "pw"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(
            display_url("http://127.0.0.1:8080/a?page=2&q=x%20y"),
            "http://127.0.0.1:8080/a?page=2&q=x%20y",
            "a URL without secrets is unchanged"
        );
    }

    #[test]
    fn configured_secrets_are_masked_by_value_and_by_parameter_name() {
        let values = vec!["Zq7-secret-value".to_string()];
        let params = vec![normalise_param("my_Param")];
        let shown = display_url_with(
            "http://127.0.0.1:9/ok?myparam=Zq7-secret-value&n=2&other=x",
            &values,
            &params,
        );
        assert_eq!(shown, "http://127.0.0.1:9/ok?myparam=***&n=2&other=x");
        // Under another name, in a path segment, percent-encoded: masked by value.
        let shown = display_url_with(
            "http://h/Zq7-secret-value/p?x=pre-Zq7-secret-value&n=2",
            &values,
            &[],
        );
        assert_eq!(shown, "http://h/***/p?x=***&n=2");
        let values = vec!["k ey+/=secret".to_string()];
        let shown = display_url_with("http://h/a?v=k%20ey%2B%2F%3Dsecret", &values, &[]);
        assert!(!shown.contains("secret"), "{shown}");
        // A short secret is masked by its parameter name only, never by value.
        register_secret_value("k");
        assert_eq!(
            display_url("http://k.example/k?k2=k"),
            "http://k.example/k?k2=k"
        );
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(
            &u("http://127.0.0.1:80/a"),
            &u("http://127.0.0.1/b?c")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1:81/a"),
            &u("http://127.0.0.1:82/a")
        ));
        assert!(!same_origin(
            &u("http://127.0.0.1/a"),
            &u("http://127.0.0.2/a")
        ));
        assert!(!same_origin(&u("http://h/a"), &u("https://h/a")));
        assert_eq!(origin(&u("https://h/x")), "https://h:443");
    }
}
