//! Evidence that a source column feeds a target field, computed from facts gathered once per
//! field and once per column (a 736-field target against a 20,000-column source compares facts,
//! it does not tokenise names again for each pair).
//!
//! Three kinds of evidence: the *names* (tokens, acronyms such as `FTHG` for "full time home
//! goals", abbreviations such as `sibsp` for "siblings/spouses"), the target's *description*
//! (words of the column that the description uses, weighted by how rare they are among the
//! target's descriptions, units such as `_cm` for "centimeters") and the *values* (type, date
//! formats, the schema's `format`, `pattern`, `enum`, `examples` and ranges, emptiness,
//! constants, and the value shape the field's role expects: identifiers, names, sentences, URLs).

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde_json::Value;

use super::values::{Affix, EnumIndex, normalise};
use crate::mapping::names::{
    canonical, token_list_similarity, tokens, unit, weighted_similarity, words,
};
use crate::schema::{FieldKind, TargetField};
use crate::source::ColumnProfile;

/// What a field's name says its values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Identifiers: distinct short codes (`id`, `key`).
    Id,
    /// Codes: short tokens that may repeat (`code`, `symbol`, `abbreviation`).
    Code,
    /// Names and labels: a few words.
    Name,
    /// Free text: sentences (`description`, `definition`, `comment`).
    LongText,
    /// Links.
    Url,
    /// Nothing in particular.
    Any,
}

fn role_of(ws: &[String]) -> Role {
    let last = ws.last().map(String::as_str).unwrap_or("");
    let has = |xs: &[&str]| ws.iter().any(|w| xs.contains(&w.as_str()));
    if has(&["url", "link", "uri", "website", "homepage", "href"]) {
        Role::Url
    } else if has(&[
        "description",
        "definition",
        "comment",
        "comments",
        "note",
        "notes",
        "summary",
        "remark",
        "remarks",
        "abstract",
    ]) {
        Role::LongText
    } else if matches!(last, "id" | "key" | "identifier" | "uuid" | "guid") {
        Role::Id
    } else if matches!(
        last,
        "code" | "symbol" | "abbr" | "abbreviation" | "abbrev" | "ticker" | "iso"
    ) {
        Role::Code
    } else if matches!(last, "name" | "title" | "label") {
        Role::Name
    } else {
        Role::Any
    }
}

/// Facts about one target field, gathered once.
pub struct FieldFacts<'a> {
    /// The field.
    pub field: &'a TargetField,
    /// Canonical tokens of the name and of the `title`.
    pub tokens: Vec<String>,
    pub(super) title_tokens: Vec<String>,
    /// Lower-case words of the name (stop words dropped), for acronyms.
    pub(super) name_words: Vec<String>,
    /// Lower-case words of the title and description, for acronyms.
    pub(super) desc_words: Vec<String>,
    /// Canonical tokens of the description.
    pub(super) desc_tokens: HashSet<String>,
    /// What the name says the values are.
    pub role: Role,
    /// The enum, indexed.
    pub enums: Option<EnumIndex>,
    pub(super) pattern: Option<Regex>,
    /// Normalised `examples` of the schema.
    pub(super) examples: HashSet<String>,
    /// A string field with no constraint on its values: anything fits, so only strong name
    /// evidence may match it.
    pub untyped: bool,
    /// The name is the role word alone (`name`, `definition`, `url`).
    pub generic_role: bool,
    /// On a target made of tables, how deep in its table the field sits: 0 for a table's own
    /// element (`Encounter.subject`), 1 for an element of a part of it
    /// (`Encounter.hospitalization.origin`), and so on.
    pub depth: usize,
}

const STOP: &[&str] = &[
    "the", "of", "on", "in", "a", "an", "to", "for", "by", "and", "or", "at", "is", "are", "was",
    "with", "as", "from", "this", "that", "be", "it", "its", "per", "e", "g", "i", "eg", "ie",
];

fn plain_words(text: &str, limit: usize) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !STOP.contains(&w.as_str()))
        .take(limit)
        .collect()
}

/// Words for acronyms: function words stay (`mpg` = miles *per* gallon), articles go.
fn acronym_words(text: &str, limit: usize) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !matches!(w.as_str(), "the" | "a" | "an"))
        .take(limit)
        .collect()
}

/// Words with unit abbreviations also spelled out (`pct` → `percent`), so that a glued name
/// such as `winpercent` splits over them.
fn with_units(ws: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(ws.len());
    for w in ws {
        let long = UNIT_WORDS
            .iter()
            .find(|(a, _)| *a == w)
            .map(|(_, l)| l.to_string());
        out.push(w);
        out.extend(long);
    }
    out
}

impl<'a> FieldFacts<'a> {
    /// Facts of `field`.
    pub fn of(field: &'a TargetField) -> FieldFacts<'a> {
        FieldFacts::named(field, &field.name)
    }

    /// Facts of `field`, its name read as `name`: on a target made of tables, the name within
    /// its table (`Encounter.subject` is a `subject`; a column named like the table refers to
    /// it, it is not each of its fields).
    pub fn named(field: &'a TargetField, name: &str) -> FieldFacts<'a> {
        let title = field.schema.get("title").and_then(Value::as_str);
        let desc = [title, field.description.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(". ");
        let name_words = plain_words(name, 12);
        let desc_tokens = tokens(&desc).into_iter().collect();
        let examples: HashSet<String> = field
            .schema
            .get("examples")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| normalise(&super::values::text(v)))
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let c = &field.constraints;
        let pattern = c.pattern.as_deref().and_then(|p| Regex::new(p).ok());
        let untyped = matches!(field.kind, FieldKind::String | FieldKind::Json)
            && c.enum_values.is_none()
            && c.const_value.is_none()
            && c.format.is_none()
            && pattern.is_none()
            && examples.is_empty()
            && c.min_length.is_none()
            && c.max_length.is_none();
        let mut role_words = name_words.clone();
        if let Some(t) = title {
            role_words.extend(plain_words(t, 12));
        }
        FieldFacts {
            tokens: tokens(name),
            title_tokens: title.map(tokens).unwrap_or_default(),
            role: role_of(&name_words),
            desc_words: acronym_words(&desc, 48),
            generic_role: name_words.len() == 1 && role_of(&name_words) != Role::Any,
            name_words: with_units(name_words),
            desc_tokens,
            enums: EnumIndex::of(field),
            pattern,
            examples,
            untyped,
            field,
            depth: 0,
        }
    }
}

/// Facts about one source column, gathered once.
pub struct ColumnFacts<'a> {
    /// The column's profile.
    pub profile: &'a ColumnProfile,
    /// Canonical tokens of the name.
    pub tokens: Vec<String>,
    /// Tokens matched against descriptions: the name's tokens and its unit spelled out.
    pub(super) desc_keys: Vec<String>,
    /// The name as one lower-case word, when it is one (`FTHG`, `sibsp`).
    pub(super) word: Option<String>,
    /// Lower-case words of the name, units spelled out.
    pub(super) name_words: Vec<String>,
    /// The prefix or suffix its values share.
    pub affix: Affix,
    /// Normalised top values, in profile order, and as a set.
    pub(super) norm_top: Vec<String>,
    pub(super) norm_values: HashSet<String>,
    /// A column the loading pipeline adds (`_loaded_at`, `etl_batch`).
    pub metadata: bool,
    /// Canonical tokens of the column's own description (a data dictionary, Parquet field
    /// metadata), each once; empty when the source describes nothing.
    pub(super) described: Vec<String>,
}

/// Unit abbreviations and the words descriptions use for them.
const UNIT_WORDS: &[(&str, &str)] = &[
    ("cm", "centimeter"),
    ("mm", "millimeter"),
    ("km", "kilometer"),
    ("m", "meter"),
    ("kg", "kilogram"),
    ("g", "gram"),
    ("lb", "pound"),
    ("lbs", "pound"),
    ("ft", "feet"),
    ("mi", "mile"),
    ("pct", "percent"),
    ("usd", "dollar"),
    ("s", "second"),
    ("sec", "second"),
    ("ms", "millisecond"),
    ("min", "minute"),
    ("c", "celsius"),
    ("f", "fahrenheit"),
];

impl<'a> ColumnFacts<'a> {
    /// Facts of a profiled column.
    pub fn of(profile: &'a ColumnProfile) -> ColumnFacts<'a> {
        let ws = words(&profile.name);
        let tokens = tokens(&profile.name);
        let mut desc_keys = tokens.clone();
        if let Some(u) = unit(&profile.name)
            && let Some((_, w)) = UNIT_WORDS.iter().find(|(a, _)| *a == u)
        {
            desc_keys.push(canonical(w));
        }
        let word = match ws.as_slice() {
            [w] if (2..=12).contains(&w.len()) && w.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(w.clone())
            }
            _ => None,
        };
        let norm_top: Vec<String> = profile
            .top_values
            .iter()
            .map(|(v, _)| normalise(v))
            .collect();
        let metadata = profile.name.starts_with('_')
            || ws.iter().any(|w| {
                matches!(
                    w.as_str(),
                    "etl" | "loaded" | "ingested" | "ingest" | "batch" | "sdc" | "dw" | "audit"
                )
            });
        let mut described: Vec<String> = profile
            .description
            .as_deref()
            .map(crate::mapping::names::tokens)
            .unwrap_or_default();
        described.sort_unstable();
        described.dedup();
        ColumnFacts {
            described,
            tokens,
            desc_keys,
            word,
            name_words: with_units(plain_words(&profile.name, 12)),
            affix: Affix::of(profile),
            norm_values: norm_top.iter().cloned().collect(),
            norm_top,
            metadata,
            profile,
        }
    }

    pub(super) fn has_values(&self) -> bool {
        self.profile.non_blank > 0
    }

    pub(super) fn constant(&self) -> bool {
        self.profile.distinct == 1 && self.profile.non_blank >= 3
    }
}

/// How rare each description token is among the target's fields: rarer tokens are better
/// evidence (every clinical description says "patient"; few say "centimeters"). Likewise the
/// words of many fields' names on a wide target (`concept` in a hundred OMOP fields, `value`,
/// `source`): a column sharing only such a word with a field says little about it.
pub struct Rarity {
    idf: HashMap<String, f64>,
    unseen: f64,
    common_names: HashSet<String>,
}

/// A name word in at least this many fields, and this share of them, is common on the target.
const COMMON_FIELDS: usize = 20;
const COMMON_SHARE: f64 = 0.05;

impl Rarity {
    /// Document frequencies over the fields' descriptions and names.
    pub fn of(fields: &[FieldFacts<'_>]) -> Rarity {
        let mut df: HashMap<String, usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for f in fields {
            for t in &f.desc_tokens {
                *df.entry(t.clone()).or_default() += 1;
            }
            let mut seen: Vec<&str> = f.tokens.iter().map(String::as_str).collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                *names.entry(t).or_default() += 1;
            }
        }
        let n = fields.len().max(1) as f64;
        let idf = df
            .into_iter()
            .map(|(t, d)| (t, (1.0 + n / d as f64).ln()))
            .collect();
        let least = COMMON_FIELDS.max((COMMON_SHARE * n).ceil() as usize);
        let common_names = names
            .into_iter()
            .filter(|(_, d)| *d >= least)
            .map(|(t, _)| t.to_string())
            .collect();
        Rarity {
            idf,
            unseen: (1.0 + n).ln(),
            common_names,
        }
    }

    /// No target-wide statistics (one field judged alone).
    pub fn none() -> Rarity {
        Rarity {
            idf: HashMap::new(),
            unseen: 1.0,
            common_names: HashSet::new(),
        }
    }

    fn weight(&self, t: &str) -> f64 {
        self.idf.get(t).copied().unwrap_or(self.unseen)
    }

    /// Whether the target's names use `t` widely.
    fn common(&self, t: &str) -> bool {
        self.common_names.contains(t)
    }

    /// A name token's weight: the generic words' half, and a quarter of that when the
    /// target's names use it widely.
    fn name_weight(&self, t: &str) -> f64 {
        let w = crate::mapping::names::weight(t);
        if self.common_names.contains(t) {
            w * 0.25
        } else {
            w
        }
    }
}

/// Whether `w` splits into pieces that begin words of `list` in order (at most `gap` words
/// skipped between pieces): `fthg` in "full time home team goals", `sibsp` in "siblings
/// spouses". Returns the words used.
fn pieces(w: &[u8], list: &[String], gap: usize, min_pieces: usize) -> Option<Vec<usize>> {
    fn go(
        w: &[u8],
        list: &[String],
        from: usize,
        gap: usize,
        used: &mut Vec<usize>,
        min: usize,
    ) -> bool {
        if w.is_empty() {
            return used.len() >= min;
        }
        let last = if used.is_empty() {
            list.len()
        } else {
            (from + gap + 1).min(list.len())
        };
        for j in from..last {
            let word = list[j].as_bytes();
            let common = w.iter().zip(word).take_while(|(a, b)| a == b).count();
            // Longest piece first, so `sib|sp` is tried before `s|i|b…`.
            for k in (1..=common).rev() {
                used.push(j);
                if go(&w[k..], list, j + 1, gap, used, min) {
                    return true;
                }
                used.pop();
            }
        }
        false
    }
    let mut used = Vec::new();
    go(w, list, 0, gap, &mut used, min_pieces).then_some(used)
}

/// A glued word split into at least two whole words (or word prefixes of four letters or more)
/// from the field's name and description.
fn glued<'w>(w: &'w str, name: &[String], desc: &[String]) -> Option<Vec<&'w str>> {
    fn go<'w>(w: &'w str, vocab: &[&String], out: &mut Vec<&'w str>) -> bool {
        if w.is_empty() {
            return out.len() >= 2;
        }
        for v in vocab {
            let k = (1..=w.len().min(v.len()))
                .rev()
                .find(|&k| w.as_bytes()[..k] == v.as_bytes()[..k])
                .unwrap_or(0);
            // The whole word, or a prefix of at least four letters (`wafer` of `wafers`).
            if k >= 3 && (k == v.len() || k >= 4) {
                out.push(&w[..k]);
                if go(&w[k..], vocab, out) {
                    return true;
                }
                out.pop();
            }
        }
        false
    }
    let vocab: Vec<&String> = name.iter().chain(desc).filter(|v| v.len() >= 3).collect();
    let mut out = Vec::new();
    go(w, &vocab, &mut out).then_some(out)
}

/// Name evidence: tokens, title, acronyms and abbreviations.
pub fn name_score(f: &FieldFacts<'_>, c: &ColumnFacts<'_>, rarity: &Rarity) -> f64 {
    let w = |t: &str| rarity.name_weight(t);
    let mut s = weighted_similarity(&f.tokens, &c.tokens, &w);
    if !f.title_tokens.is_empty() {
        s = s.max(weighted_similarity(&f.title_tokens, &c.tokens, &w));
    }
    if s >= 0.75 {
        return s;
    }
    // A field named by one glued word over the column's words: `TMAX` = temp max.
    if let [fw] = f.name_words.as_slice()
        && (2..=12).contains(&fw.len())
        && c.name_words.len() >= 2
        && let Some(used) = pieces(fw.as_bytes(), &c.name_words, 0, 2)
        && (used.len() < fw.len() || used.first() == Some(&0))
    {
        let share = used.len() as f64 / c.name_words.len() as f64;
        s = s.max(0.5 + 0.25 * share.min(1.0));
    }
    let Some(w) = &c.word else {
        return s;
    };
    let b = w.as_bytes();
    // A glued column name split into whole words of the field's name or description:
    // `winpercent` = win percent, `crispedricewafer` = crisped rice wafer(s).
    if w.len() >= 6
        && let Some(parts) = glued(w, &f.name_words, &f.desc_words)
    {
        let ts: Vec<String> = parts.iter().map(|p| canonical(p)).collect();
        let by_name = token_list_similarity(&f.tokens, &ts);
        let found = ts.iter().filter(|t| f.desc_tokens.contains(*t)).count() as f64;
        s = s.max(by_name).max(0.8 * found / ts.len() as f64);
    }
    // Pieces of the field's own name words: `HS` = home shots, `sibsp` = siblings spouses.
    if let Some(used) = pieces(b, &f.name_words, 0, 2) {
        let all_single = used.len() == b.len();
        let first_word = used.first() == Some(&0);
        if !all_single || first_word {
            let share = used.len() as f64 / f.name_words.len().max(1) as f64;
            s = s.max(0.5 + 0.25 * share.min(1.0));
        }
    }
    // An acronym of three or more letters over the description: `FTHG`.
    if b.len() >= 3
        && let Some(used) = pieces(b, &f.desc_words, 1, 3)
        && used.len() == b.len()
    {
        s = s.max(0.7);
    }
    s
}

/// Description evidence: the share of the column's (rarity-weighted) tokens that the field's
/// title or description uses, when at least one of them is not a generic word.
pub fn description_score(f: &FieldFacts<'_>, c: &ColumnFacts<'_>, rarity: &Rarity) -> f64 {
    if f.desc_tokens.is_empty() || c.desc_keys.is_empty() {
        return 0.0;
    }
    // How well each column token is found in the description: exactly, or as a prefix
    // (`temp` in "temperature", `max` in "maximum").
    let best = |t: &str| {
        if f.desc_tokens.contains(t) {
            1.0
        } else if t.len() >= 3 {
            f.desc_tokens
                .iter()
                .map(|u| if u.starts_with(t) { 0.8 } else { 0.0 })
                .fold(0.0, f64::max)
        } else {
            0.0
        }
    };
    let total: f64 = c.desc_keys.iter().map(|t| rarity.weight(t)).sum();
    let mut found = 0.0;
    let mut specific = false;
    let mut matched = 0usize;
    for t in &c.desc_keys {
        let b = best(t);
        if b > 0.0 {
            found += b * rarity.weight(t);
            matched += 1;
            specific |= !GENERIC_WORDS.contains(&t.as_str());
        }
    }
    if !specific || total == 0.0 {
        return 0.0;
    }
    // Mostly how much of the column the description explains; a little of how much of the
    // description the column covers, which separates `Region Name` from `Sub-region Name`
    // for "sub-region name".
    let coverage = matched as f64 / f.desc_tokens.len().max(1) as f64;
    0.8 * (0.85 * found / total + 0.15 * coverage.min(1.0))
}

/// Evidence from the column's own description: how much of the field's name it says, word
/// for word (`deathDate` in "Date of the patient's death"), and how much it shares with
/// the field's description, words weighted by how rare they are among the target's
/// descriptions (two descriptions that both say "patient" and "date" agree on little). Zero
/// when the source describes nothing or only generic words match.
pub fn column_description_score(f: &FieldFacts<'_>, c: &ColumnFacts<'_>, rarity: &Rarity) -> f64 {
    if c.described.is_empty() {
        return 0.0;
    }
    // Whole words only: a description is prose, where near-spellings (`state`, `status`)
    // are other words. `described` is sorted.
    let has = |t: &String| c.described.binary_search(t).is_ok();
    // The field's name in the column's description.
    let name_total: f64 = f.tokens.iter().map(|t| rarity.name_weight(t)).sum();
    let found: Vec<&String> = f.tokens.iter().filter(|t| has(t)).collect();
    let specific = found
        .iter()
        .any(|t| !GENERIC_WORDS.contains(&t.as_str()) && !rarity.common(t));
    let by_name = if specific && name_total > 0.0 {
        0.85 * found.iter().map(|t| rarity.name_weight(t)).sum::<f64>() / name_total
    } else {
        0.0
    };
    // The two descriptions: cosine of their rarity-weighted words. Most pairs share no
    // specific word, so the norms are computed only for those that do.
    let squared = |t: &String| rarity.weight(t).powi(2);
    let shared: f64 = c
        .described
        .iter()
        .filter(|t| f.desc_tokens.contains(*t) && !GENERIC_WORDS.contains(&t.as_str()))
        .map(squared)
        .sum();
    let by_description = if shared > 0.0 {
        let norm_c = c.described.iter().map(squared).sum::<f64>().sqrt();
        let norm_f = f.desc_tokens.iter().map(squared).sum::<f64>().sqrt();
        // A cosine of 0.5 between a one-line description and a paragraph is close
        // agreement; scaled so that it reaches the acceptance range.
        (1.6 * shared / (norm_c * norm_f)).min(0.85)
    } else {
        0.0
    };
    by_name.max(by_description)
}

/// Whether every token of the column is a token of the field's name: `age` for
/// `age_at_diagnosis` (such a column may feed several fields).
pub fn contained(f: &FieldFacts<'_>, c: &ColumnFacts<'_>) -> bool {
    !c.tokens.is_empty() && c.tokens.iter().all(|t| f.tokens.contains(t))
}

/// Whether the field and the column share a token exactly (not only by prefix or
/// abbreviation).
pub fn shares_token(f: &FieldFacts<'_>, c: &ColumnFacts<'_>) -> bool {
    c.tokens
        .iter()
        .any(|t| f.tokens.contains(t) || f.title_tokens.contains(t))
}

const GENERIC_WORDS: &[&str] = &[
    "id", "number", "name", "date", "code", "value", "type", "count", "total", "amount", "year",
];

/// Name words of the column that neither the field's name nor its description explains
/// (`fat` in `Fat_fraction` against "number of fractions … radiation doses").
pub fn unexplained(f: &FieldFacts<'_>, c: &ColumnFacts<'_>) -> bool {
    if f.desc_tokens.is_empty() {
        return false;
    }
    c.tokens.iter().any(|t| {
        !GENERIC_WORDS.contains(&t.as_str())
            && !f.desc_tokens.contains(t)
            && !f.tokens.iter().any(|u| u == t || u.starts_with(t.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn acronyms_and_abbreviations_split_over_words() {
        let desc = list(&["full", "time", "home", "team", "goals"]);
        assert!(pieces(b"fthg", &desc, 1, 3).is_some());
        assert!(pieces(b"ftag", &desc, 1, 3).is_none());
        assert!(pieces(b"sibsp", &list(&["siblings", "spouses", "aboard"]), 0, 2).is_some());
        assert!(pieces(b"parch", &list(&["parents", "children", "aboard"]), 0, 2).is_some());
        assert!(pieces(b"hs", &list(&["home", "shots"]), 0, 2).is_some());
        assert!(pieces(b"xyz", &desc, 1, 3).is_none());
    }

    #[test]
    fn roles_from_names() {
        assert_eq!(role_of(&list(&["patient", "id"])), Role::Id);
        assert_eq!(role_of(&list(&["field", "description"])), Role::LongText);
        assert_eq!(role_of(&list(&["resource", "name"])), Role::Name);
        assert_eq!(role_of(&list(&["home", "page", "url"])), Role::Url);
        assert_eq!(role_of(&list(&["age"])), Role::Any);
    }
}
