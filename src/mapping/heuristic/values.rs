//! Enum value tables: which of a target field's allowed values each distinct source value
//! stands for. Source values are matched exactly after normalisation (case, whitespace,
//! punctuation), with a prefix or suffix word the column's values share stripped (`Secret
//! Identity` → `secret`, `Stage IIA` → `IIA`), a stage-letter prefix removed (`pN1` → `N1`), as
//! members of a synonym class (`Present`/`Y`/`1` → `Yes`), as a numeric code or label that the
//! field's description defines (`1 = first`), or as a unique prefix (`Thur` → `Thu`).

use std::collections::HashMap;

use serde_json::Value;

use crate::schema::TargetField;
use crate::source::ColumnProfile;

/// Synonym classes: every word of a class stands for any allowed value of the same class.
const CLASSES: &[&[&str]] = &[
    &[
        "yes",
        "y",
        "true",
        "t",
        "1",
        "present",
        "positive",
        "pos",
        "checked",
        "affirmative",
    ],
    &[
        "no",
        "n",
        "false",
        "0",
        "absent",
        "negative",
        "neg",
        "unchecked",
        "none",
    ],
    &[
        "unknown",
        "unk",
        "not reported",
        "not known",
        "n a",
        "na",
        "missing",
        "not available",
        "undetermined",
        "not specified",
    ],
    &["male", "m", "man", "men", "boy"],
    &["female", "f", "woman", "women", "girl"],
    // Status words of records and workflows (synonyms in common data dictionaries).
    &["active", "current", "enabled", "ongoing", "open"],
    &["inactive", "former", "disabled", "closed", "ended"],
    &["completed", "complete", "finished", "done", "resolved"],
    &["cancelled", "canceled", "aborted", "withdrawn", "revoked"],
];

/// Lower-case words of a value, punctuation as spaces: `Not Reported.` → `not reported`.
pub fn normalise(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    out.trim_end().to_string()
}

fn class_of(n: &str) -> Option<usize> {
    CLASSES.iter().position(|c| c.contains(&n))
}

/// `pN1` → `N1`, `cT2a` → `T2a`: a lower-case letter before an upper-case staging code.
fn strip_stage_prefix(v: &str) -> Option<&str> {
    let mut cs = v.char_indices();
    let (_, a) = cs.next()?;
    let (i, b) = cs.next()?;
    (a.is_ascii_lowercase() && b.is_ascii_uppercase() && v.len() <= 8).then(|| &v[i..])
}

/// The allowed values of an enum field, indexed for matching.
#[derive(Debug, Clone)]
pub struct EnumIndex {
    /// The allowed values as written.
    pub allowed: Vec<Value>,
    /// Normalised text of each allowed value.
    norm: Vec<String>,
    exact: HashMap<String, usize>,
    /// Synonym class → allowed value (only classes with exactly one member in the enum).
    classes: HashMap<usize, usize>,
    /// Labels and codes the description defines (`1 = first`): normalised label → allowed.
    defined: HashMap<String, usize>,
    /// Allowed values without the qualifier word most of them begin with (`stage ia` → `ia`
    /// when most values read `Stage …`): a source that leaves the qualifier out.
    unqualified: HashMap<String, usize>,
}

impl EnumIndex {
    /// The index of a field whose enum has at least one string or integer value.
    pub fn of(t: &TargetField) -> Option<EnumIndex> {
        let allowed: Vec<Value> = t
            .constraints
            .enum_values
            .clone()?
            .into_iter()
            .filter(|v| v.is_string() || v.is_i64() || v.is_u64())
            .collect();
        if allowed.is_empty() {
            return None;
        }
        let norm: Vec<String> = allowed.iter().map(|v| normalise(&text(v))).collect();
        let mut exact = HashMap::new();
        let mut classes: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in norm.iter().enumerate() {
            exact.entry(n.clone()).or_insert(i);
            if let Some(c) = class_of(n) {
                classes.entry(c).or_default().push(i);
            }
        }
        let classes = classes
            .into_iter()
            .filter_map(|(c, v)| (v.len() == 1).then(|| (c, v[0])))
            .collect();
        let defined = t
            .description
            .as_deref()
            .map(|d| definitions(d, &exact))
            .unwrap_or_default();
        let unqualified = unqualified(&norm, &exact);
        Some(EnumIndex {
            allowed,
            norm,
            exact,
            classes,
            defined,
            unqualified,
        })
    }

    /// Whether every allowed value is a string.
    pub fn strings(&self) -> bool {
        self.allowed.iter().all(Value::is_string)
    }

    /// The allowed value `v` (normalised: `n`) stands for, given the affix its column's values
    /// share.
    fn lookup_normalised(&self, v: &str, n: &str, affix: &Affix) -> Option<usize> {
        if n.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(n) {
            return Some(i);
        }
        let stripped = affix.strip(n);
        if stripped != n
            && let Some(&i) = self.exact.get(stripped)
        {
            return Some(i);
        }
        if let Some(s) = strip_stage_prefix(v.trim())
            && let Some(&i) = self.exact.get(&normalise(s))
        {
            return Some(i);
        }
        for key in [n, stripped] {
            if let Some(&i) = class_of(key).and_then(|c| self.classes.get(&c)) {
                return Some(i);
            }
            if let Some(&i) = self.defined.get(key) {
                return Some(i);
            }
            if let Some(&i) = self.unqualified.get(key) {
                return Some(i);
            }
        }
        // A code with its label (`R1: microscopic residual tumor`, `2 - moderate`): the code
        // before the separator is an allowed value.
        if let Some(code) = code_before_label(v)
            && let Some(&i) = self.exact.get(&normalise(code))
        {
            return Some(i);
        }
        // A source that adds the qualifier the enum leaves out (`Stage IA` for `IA`).
        if let Some((_, rest)) = n.split_once(' ')
            && let Some(&i) = self.exact.get(rest)
            && self.unqualified.is_empty()
            && n.split(' ').count() == 2
        {
            return Some(i);
        }
        // A unique prefix of at least three letters either way: `Thur` ↔ `Thu`.
        let key = stripped;
        if key.len() >= 3 && key.chars().all(char::is_alphabetic) {
            let mut hits = self.norm.iter().enumerate().filter(|(_, a)| {
                a.len() >= 3 && (a.starts_with(key) || key.starts_with(a.as_str()))
            });
            if let (Some((i, _)), None) = (hits.next(), hits.next()) {
                return Some(i);
            }
        }
        None
    }
}

/// The word most allowed values begin with, when at least half of them (and at least two)
/// begin with it and go on after it: each such value without it → the value.
fn unqualified(norm: &[String], exact: &HashMap<String, usize>) -> HashMap<String, usize> {
    let mut firsts: HashMap<&str, usize> = HashMap::new();
    for n in norm {
        if let Some((first, _)) = n.split_once(' ') {
            *firsts.entry(first).or_default() += 1;
        }
    }
    let Some((word, count)) = firsts.into_iter().max_by_key(|(w, c)| (*c, w.len())) else {
        return HashMap::new();
    };
    if count < 2 || count * 2 < norm.len() {
        return HashMap::new();
    }
    let mut out = HashMap::new();
    for (i, n) in norm.iter().enumerate() {
        if let Some(rest) = n.strip_prefix(word).and_then(|r| r.strip_prefix(' '))
            && !exact.contains_key(rest)
        {
            out.entry(rest.to_string()).or_insert(i);
        }
    }
    out
}

/// The code of a `code: label`, `code - label` or `code (label)` value; None when the value
/// has no such separator or the code is long (a sentence, not a code).
fn code_before_label(v: &str) -> Option<&str> {
    let v = v.trim();
    let at = [":", " - ", " – ", "(", "="]
        .iter()
        .filter_map(|sep| v.find(sep))
        .min()?;
    let code = v[..at].trim();
    (!code.is_empty() && code.len() <= 12 && code.split_whitespace().count() <= 2).then_some(code)
}

/// The allowed value as text.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `code = label` pairs in a description (`1 = first, 2 = second`; `H=home win`), whose code
/// or label is an allowed value: the other side then stands for it.
fn definitions(desc: &str, exact: &HashMap<String, usize>) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for part in desc.split([',', ';', '(', ')', '\n']) {
        let Some((a, b)) = part.split_once('=').or_else(|| part.split_once(':')) else {
            continue;
        };
        let (a, b) = (normalise(a), normalise(b));
        if a.is_empty() || b.is_empty() || a.split(' ').count() > 3 || b.split(' ').count() > 4 {
            continue;
        }
        // The code is usually the last word before `=` ("Ticket class: 1 = first").
        let a = a.rsplit(' ').next().unwrap_or(&a).to_string();
        if let Some(&i) = exact.get(&a) {
            out.entry(b).or_insert(i);
        } else if let Some(&i) = exact.get(&b) {
            out.entry(a).or_insert(i);
        }
    }
    out
}

/// A leading or trailing word that most of a column's distinct values share (`Characters` in
/// `Good Characters`, `Bad Characters`): dropped before matching.
#[derive(Debug, Clone, Default)]
pub struct Affix {
    prefix: Option<String>,
    suffix: Option<String>,
}

impl Affix {
    /// The shared affix of a column's values (at least two distinct multi-word values, 60%
    /// sharing it).
    pub fn of(p: &ColumnProfile) -> Affix {
        let norms: Vec<String> = p
            .top_values
            .iter()
            .map(|(v, _)| normalise(v))
            .filter(|n| n.contains(' '))
            .collect();
        if norms.len() < 2 || norms.len() * 10 < p.top_values.len() * 6 {
            return Affix::default();
        }
        let shared = |pick: fn(&str) -> Option<&str>| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for n in &norms {
                if let Some(w) = pick(n) {
                    *counts.entry(w).or_default() += 1;
                }
            }
            counts
                .into_iter()
                .filter(|(_, c)| *c * 10 >= p.top_values.len() * 6)
                .max_by_key(|(_, c)| *c)
                .map(|(w, _)| w.to_string())
        };
        Affix {
            prefix: shared(|n| n.split(' ').next()),
            suffix: shared(|n| n.rsplit(' ').next()),
        }
    }

    /// `n` without the affix (normalised input).
    pub fn strip<'a>(&self, n: &'a str) -> &'a str {
        let mut s = n;
        if let Some(p) = &self.prefix
            && let Some(rest) = s.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix(' '))
        {
            s = rest;
        }
        if let Some(x) = &self.suffix
            && let Some(rest) = s.strip_suffix(x.as_str()).and_then(|r| r.strip_suffix(' '))
        {
            s = rest;
        }
        s
    }
}

/// A column's values matched to a field's allowed values.
#[derive(Debug, Clone, Default)]
pub struct ValueTable {
    /// Source value (as written) → allowed value, for values not already allowed as written.
    pub entries: Vec<(String, Value)>,
    /// Share of the sample's non-blank values that become allowed values.
    pub coverage: f64,
    /// Distinct values that matched nothing.
    pub unmatched: Vec<String>,
}

/// Matches a column's sampled values against an enum; `normalised` holds the normalised text
/// of `p.top_values`, in the same order.
pub fn table(
    index: &EnumIndex,
    p: &ColumnProfile,
    normalised: &[String],
    affix: &Affix,
) -> ValueTable {
    let mut out = ValueTable::default();
    let mut covered = 0usize;
    let mut seen = 0usize;
    for ((v, n), norm) in p.top_values.iter().zip(normalised) {
        seen += n;
        match index.lookup_normalised(v, norm, affix) {
            Some(i) => {
                covered += n;
                let allowed = &index.allowed[i];
                if text(allowed) != v.trim() {
                    out.entries.push((v.clone(), allowed.clone()));
                }
            }
            None => out.unmatched.push(v.clone()),
        }
    }
    // Values beyond the kept top values were not looked at: they count as not covered.
    let total = p.non_blank.max(seen);
    out.coverage = if total == 0 {
        0.0
    } else {
        covered as f64 / total as f64
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TargetSchema;
    use serde_json::json;

    fn field(schema: Value) -> TargetField {
        TargetSchema::try_new(&json!({"type": "object", "properties": {"f": schema}}))
            .unwrap()
            .fields
            .remove(0)
    }

    fn profile(values: &[&str]) -> ColumnProfile {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for v in values {
            match counts.iter_mut().find(|(x, _)| x == v) {
                Some((_, n)) => *n += 1,
                None => counts.push((v.to_string(), 1)),
            }
        }
        ColumnProfile {
            name: "c".into(),
            data_type: "Utf8".into(),
            shape: crate::source::ValueShape::Text,
            null_share: 0.0,
            padded: false,
            mixed_case: true,
            examples: vec![],
            distinct: counts.len(),
            non_blank: values.len(),
            top_values: counts,
            mean_words: 1.0,
            semantic: None,
            description: None,
        }
    }

    fn mapped(schema: Value, values: &[&str]) -> (Vec<(String, Value)>, f64) {
        let t = field(schema);
        let index = EnumIndex::of(&t).unwrap();
        let p = profile(values);
        let norm: Vec<String> = p.top_values.iter().map(|(v, _)| normalise(v)).collect();
        let t = table(&index, &p, &norm, &Affix::of(&p));
        (t.entries, t.coverage)
    }

    #[test]
    fn shared_suffixes_case_synonyms_and_stage_prefixes() {
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["secret", "public"]}),
            &["Secret Identity", "Public Identity", "Secret Identity"],
        );
        assert_eq!(cov, 1.0);
        assert!(
            e.contains(&("Secret Identity".into(), json!("secret"))),
            "{e:?}"
        );
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["No", "Unknown", "Yes"]}),
            &["Present", "Absent", "Not Reported", "Present"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        assert!(e.contains(&("Present".into(), json!("Yes"))));
        assert!(e.contains(&("Not Reported".into(), json!("Unknown"))));
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["N0", "N1", "N2"]}),
            &["pN1", "pN0", "N2"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["IIA", "IIB", "III"]}),
            &["Stage IIA", "Stage IIB", "Stage III"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        let (_, cov) = mapped(
            json!({"type": "string", "enum": ["Thu", "Fri", "Sat", "Sun"]}),
            &["Thur", "Fri", "Sun"],
        );
        assert_eq!(cov, 1.0);
    }

    #[test]
    fn punctuation_codes_with_labels_qualifiers_and_status_synonyms() {
        // Dots and underscores for spaces.
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["Pacific Islander", "Two Or More"]}),
            &["pacific_islander", "two.or.more", "PACIFIC.ISLANDER"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        // A code with its label: the code is the allowed value.
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["T1", "T2", "T3"]}),
            &[
                "T2: tumour more than 2 cm",
                "T1 - up to 2 cm",
                "T3 (beyond the organ)",
            ],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        assert!(e.contains(&("T2: tumour more than 2 cm".into(), json!("T2"))));
        // The enum's qualifier left out by the source ...
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["Grade I", "Grade II", "Grade III"]}),
            &["II", "III", "I"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        assert!(e.contains(&("II".into(), json!("Grade II"))));
        // ... and one the source adds.
        let (_, cov) = mapped(
            json!({"type": "string", "enum": ["Mild", "Severe"]}),
            &["Severity Mild", "Severity Severe"],
        );
        assert_eq!(cov, 1.0);
        // Synonyms and their antonyms from the status vocabulary.
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["active", "inactive"]}),
            &["Current", "Former", "current"],
        );
        assert_eq!(cov, 1.0, "{e:?}");
        assert!(e.contains(&("Former".into(), json!("inactive"))));
    }

    #[test]
    fn codes_defined_in_the_description_and_partial_coverage() {
        let (e, cov) = mapped(
            json!({"type": "string", "enum": ["H", "D", "A"],
                   "description": "Full time result (H=home win, D=draw, A=away win)"}),
            &["home win", "draw", "away win", "abandoned"],
        );
        assert_eq!(cov, 0.75, "{e:?}");
        assert!(e.contains(&("home win".into(), json!("H"))));
        let (_, cov) = mapped(
            json!({"type": "string", "enum": ["red", "green"]}),
            &["Blue", "Yellow"],
        );
        assert_eq!(cov, 0.0);
    }
}
