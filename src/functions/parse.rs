//! Reading values out of text: dates and timestamps in a list of chrono formats, numbers with
//! currency signs and either decimal separator, and boolean words in several languages.

use std::sync::LazyLock;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime};

pub(super) fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days() as i32
}

fn has_time(fmt: &str) -> bool {
    ["%H", "%M", "%S", "%T", "%R", "%I", "%p", "%z", "%:z", "%s"]
        .iter()
        .any(|t| fmt.contains(t))
}

/// A list of chrono formats, parsed once per call of a UDF rather than once per value (chrono
/// re-reads a format string on every `parse_from_str`).
pub struct DateFormats {
    formats: Vec<DateFormat>,
}

struct DateFormat {
    items: Vec<Item<'static>>,
    time: bool,
    zone: bool,
}

impl DateFormats {
    /// Parses the format strings; an invalid one is an error naming it.
    pub fn new(formats: &[String]) -> Result<DateFormats, String> {
        let formats = formats
            .iter()
            .map(|f| {
                let items = StrftimeItems::new(f)
                    .parse_to_owned()
                    .map_err(|e| format!("invalid date format `{f}`: {e}"))?;
                Ok(DateFormat {
                    items,
                    time: has_time(f),
                    zone: f.contains("%z") || f.contains("%:z"),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(DateFormats { formats })
    }

    /// `v` in the first format that fits: its wall-clock reading and its instant (UTC µs).
    /// A format without a zone reads as UTC; one without time fields is midnight.
    fn first_match(formats: &[DateFormat], v: &str) -> Option<(NaiveDateTime, i64)> {
        formats.iter().find_map(|f| {
            let mut p = Parsed::new();
            chrono::format::parse(&mut p, v, f.items.iter()).ok()?;
            if f.zone {
                let d = p.to_datetime().ok()?;
                Some((d.naive_local(), d.timestamp_micros()))
            } else {
                let local = if f.time {
                    p.to_naive_datetime_with_offset(0).ok()?
                } else {
                    p.to_naive_date().ok()?.and_hms_opt(0, 0, 0)?
                };
                Some((local, local.and_utc().timestamp_micros()))
            }
        })
    }

    /// The date of `v` in the first format that fits (its local date for zoned formats); no
    /// formats means `%Y-%m-%d`.
    pub fn date(&self, v: &str) -> Option<NaiveDate> {
        let formats = if self.formats.is_empty() {
            &DEFAULT_DATE.formats
        } else {
            &self.formats
        };
        Self::first_match(formats, v).map(|(local, _)| local.date())
    }

    /// The instant of `v` (UTC microseconds) in the first format that fits; no formats means
    /// RFC 3339, then ISO 8601 without a zone (read as UTC).
    pub fn timestamp_micros(&self, v: &str) -> Option<i64> {
        if self.formats.is_empty() {
            if let Ok(d) = DateTime::parse_from_rfc3339(v) {
                return Some(d.timestamp_micros());
            }
            return Self::first_match(&DEFAULT_TIMESTAMP.formats, v).map(|(_, utc)| utc);
        }
        Self::first_match(&self.formats, v).map(|(_, utc)| utc)
    }
}

/// The formats used when a call names none, parsed once per process.
static DEFAULT_DATE: LazyLock<DateFormats> =
    LazyLock::new(|| DateFormats::new(&["%Y-%m-%d".into()]).expect("valid format"));
static DEFAULT_TIMESTAMP: LazyLock<DateFormats> = LazyLock::new(|| {
    DateFormats::new(&["%Y-%m-%dT%H:%M:%S%.f".into(), "%Y-%m-%d %H:%M:%S%.f".into()])
        .expect("valid formats")
});

const CURRENCY: &[char] = &['$', '€', '£', '¥', '₹', '₽', '₩', '¢', '₺', '₪', '₫', '฿'];

/// Parses a number written for people: currency signs and codes, spaces, thousands separators,
/// a decimal comma, accounting parentheses for negatives. `None` if it is not a number.
pub fn parse_number_str(v: &str) -> Option<f64> {
    let mut s = v.trim();
    let mut negative = false;
    if let Some(inner) = s.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        negative = true;
        s = inner.trim();
    }
    // Currency codes such as "USD 12" or "12 EUR".
    let upper3 = |t: &str| t.len() == 3 && t.bytes().all(|b| b.is_ascii_uppercase());
    if let Some((a, b)) = s.split_once(' ') {
        if upper3(a) {
            s = b.trim();
        } else if upper3(b.trim()) && !b.trim().contains(' ') {
            s = a.trim();
        }
    }
    let mut cleaned = String::with_capacity(s.len());
    for c in s.chars() {
        if CURRENCY.contains(&c) || c == ' ' || c == '\u{a0}' || c == '\'' || c == '_' {
            continue;
        }
        cleaned.push(c);
    }
    let mut t = cleaned.as_str();
    if let Some(rest) = t.strip_prefix('-') {
        negative = !negative;
        t = rest;
    } else if let Some(rest) = t.strip_prefix('+') {
        t = rest;
    }
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b',')
    {
        return None;
    }
    let (dots, commas) = (t.matches('.').count(), t.matches(',').count());
    let normal: String = match (dots, commas) {
        (_, 0) if dots <= 1 => t.to_string(),
        (0, _) => {
            // Only commas: thousands separators if every group after the first has 3 digits.
            let groups: Vec<&str> = t.split(',').collect();
            if groups[1..].iter().all(|g| g.len() == 3)
                && !groups[0].is_empty()
                && groups[0].len() <= 3
                && commas >= 1
            {
                if commas == 1 && groups[0] == "0" {
                    t.replace(',', ".") // "0,500" is a decimal comma
                } else {
                    t.replace(',', "")
                }
            } else if commas == 1 {
                t.replace(',', ".")
            } else {
                return None;
            }
        }
        _ => {
            // Both: the last one is the decimal separator.
            let last_dot = t.rfind('.').unwrap_or(0);
            let last_comma = t.rfind(',').unwrap_or(0);
            if last_dot > last_comma {
                if dots > 1 {
                    return None;
                }
                t.replace(',', "")
            } else {
                if commas > 1 {
                    return None;
                }
                t.replace('.', "").replace(',', ".")
            }
        }
    };
    if normal.starts_with('.') && normal.len() == 1 {
        return None;
    }
    let x: f64 = normal.parse().ok()?;
    Some(if negative { -x } else { x })
}

/// Parses a boolean word; `None` for anything else.
///
/// Besides English, the yes/no words of the languages the heuristic mapper reads (German,
/// French, Spanish, Italian, Portuguese, Dutch): `ja`/`nein`, `oui`/`non`, `sí`/`no`, `sim`/`não`.
pub fn parse_bool_str(v: &str) -> Option<bool> {
    match v.trim().to_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" | "on" | "ja" | "j" | "oui" | "si" | "sí" | "sim"
        | "wahr" | "vrai" | "verdadero" | "vero" => Some(true),
        "false" | "f" | "no" | "n" | "0" | "off" | "nein" | "non" | "não" | "nao" | "nee"
        | "falsch" | "faux" | "falso" => Some(false),
        _ => None,
    }
}
