//! JSON Schema `format` checks, one value at a time (called per batch by the `is_format` UDF).

use std::sync::LazyLock;

use regex::Regex;

/// Formats this crate checks; others are annotations only (as draft 2020-12 allows).
pub const KNOWN: &[&str] = &[
    "email",
    "date",
    "date-time",
    "time",
    "uri",
    "uuid",
    "ipv4",
    "ipv6",
    "hostname",
];

/// Whether `format` is checked.
pub fn is_known(format: &str) -> bool {
    KNOWN.contains(&format)
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
        .expect("valid regex")
});
static URI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$").expect("valid regex"));
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        .expect("valid regex")
});
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$").expect("valid regex")
});
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$").expect("valid regex")
});

/// Whether `value` satisfies `format`; unknown formats always pass.
pub fn check(format: &str, value: &str) -> bool {
    match format {
        "email" => value.len() <= 254 && EMAIL.is_match(value),
        "date" => value.len() == 10 && chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok(),
        "date-time" => chrono::DateTime::parse_from_rfc3339(value).is_ok(),
        "time" => TIME.is_match(value),
        "uri" => URI.is_match(value),
        "uuid" => UUID.is_match(value),
        "ipv4" => value.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => value.parse::<std::net::Ipv6Addr>().is_ok(),
        "hostname" => value.len() <= 253 && HOSTNAME.is_match(value),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn pass_fail_pairs() {
        let cases = [
            ("email", "a.b@example.com", "a.b(at)example.com"),
            ("email", "x+y@sub.example.org", "no-tld@example"),
            ("date", "2024-02-29", "2023-02-29"),
            ("date-time", "2023-04-05T13:45:12Z", "2023-04-05 13:45"),
            ("time", "13:45:12+01:00", "25:00:00Z"),
            ("uri", "https://example.com/a?b", "not a uri"),
            (
                "uuid",
                "123e4567-e89b-12d3-a456-426614174000",
                "123e4567e89b12d3a456426614174000",
            ),
            ("ipv4", "192.168.0.1", "256.1.1.1"),
            ("ipv6", "::1", "1:::2"),
            ("hostname", "db-1.example.com", "-bad.example.com"),
        ];
        for (f, good, bad) in cases {
            assert!(check(f, good), "{f} should accept {good}");
            assert!(!check(f, bad), "{f} should reject {bad}");
        }
        assert!(check("made-up", "anything"));
    }
}
