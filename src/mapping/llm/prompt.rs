//! The prompts sent to the model, versioned so a stored mapping records which wording made it.
//!
//! Everything here is pure text building: it is tested without a network, and the only inputs
//! are the target schema, the source's columns and the sample (never credentials).

use arrow::array::RecordBatch;
use serde_json::{Value, json};

use crate::functions::SIGNATURES;
use crate::mapping::MappingRequest;
use crate::mapping::compile::ALLOWED_FUNCTIONS;
use crate::source::ColumnProfile;

/// Version of the prompt wording; bump it whenever the text below changes meaning.
pub const PROMPT_VERSION: &str = "conform-mapping-v2";

/// The longest rationale a grammar-constrained server lets the model write: a few words, as
/// rule 7 asks. Every token of a reply costs a small model on a CPU about a seventh of a
/// second, and the rationale was most of a reply that chooses a candidate.
pub const RATIONALE_MAX_CHARS: usize = 48;

/// The most candidates a field is offered by number (`llm.candidates` shows fewer).
pub const MAX_CHOICES: usize = 100;

/// Name of the structured-output schema.
pub const RESPONSE_NAME: &str = "mapping";

/// The instructions: the task and its rules.
pub const SYSTEM: &str = "\
You map the columns of a source dataset onto the fields of a target JSON Schema for a data \
pipeline. For every target field, write one SQL expression in the Apache DataFusion dialect that \
computes the field's value from ONE row of the source.

Rules:
1. Give exactly one entry per target field, in the order of the schema, with the target field's \
exact name.
2. Use only source columns that exist, quoted with double quotes exactly as listed (\"Cust_Email\"). \
Never invent a column. String literals use single quotes.
3. Use only the functions listed under 'Expression language'. No aggregates, window functions, \
subqueries or random values.
4. If no source column fits a field, set expr to null. A wrong mapping is worse than none.
5. Convert to the target type: CAST(x AS BIGINT | DOUBLE | BOOLEAN | DATE | TIMESTAMP | VARCHAR), \
try_to_date/try_to_timestamp with the chrono format the sample values use, parse_number for \
numbers written with currency signs or separators, parse_bool for yes/no words, clean() to trim \
text, lower()/upper() when the target's enum values use one case, concat_ws(' ', first, last) when \
the target wants one value built from several columns, arithmetic for unit conversions.
6. A conversion that fails on a row yields null; the pipeline then reports that row as invalid. \
Do not hide bad values with defaults.
7. confidence is your probability (0 to 1) that the expression is right; rationale is a few \
words naming the evidence (column name, values, units).
8. When a field lists numbered candidates and one of them is right, set choice to its number and \
expr to null: its expression is used as it is. Otherwise set choice to 0 and write expr (or null).

Reply with a JSON object only: {\"fields\": [{\"target\": ..., \"choice\": ..., \"expr\": ... \
or null, \"confidence\": ..., \"rationale\": ...}]}.";

/// The JSON Schema of the reply, for `response_format: json_schema` with `strict: true`: one
/// entry per field of `targets` — the names listed as an `enum` and the entry count fixed — so
/// that a grammar-constrained server cannot answer `{"fields": []}` or name a field that is not
/// asked for. With `bounded`, the rationale is capped at [`RATIONALE_MAX_CHARS`]: a
/// grammar-constrained local server enforces `maxLength`, and without it a small model's
/// rationale runs on until the completion budget cuts the reply. OpenAI's strict mode is
/// not sent the bound (its supported subset of JSON Schema has varied; its models stop).
pub fn response_schema(targets: &[&str], exact: bool, bounded: bool) -> Value {
    let mut fields = json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "target": {"type": "string", "enum": targets},
                        "choice": {"type": "integer"},
                        "expr": {"type": ["string", "null"]},
                        "confidence": {"type": "number"},
                        "rationale": {"type": "string"}
                    },
                    "required": ["target", "choice", "expr", "confidence", "rationale"],
                    "additionalProperties": false
                }
    });
    if bounded {
        let item = &mut fields["items"]["properties"];
        item["rationale"]["maxLength"] = json!(RATIONALE_MAX_CHARS);
        // Two shapes of entry: a candidate's number with a null expression (the candidate's
        // is used), or 0 with the model's own. Told so, a 1.5B model still wrote out the
        // expression of every candidate it chose — a sixth of its completion tokens on the
        // real subset, generated at a few tokens a second on a CPU — which conform then set
        // aside; the grammar now leaves no room for it.
        let mut chosen = fields["items"].clone();
        chosen["properties"]["choice"] =
            json!({"type": "integer", "minimum": 1, "maximum": MAX_CHOICES});
        chosen["properties"]["expr"] = json!({"type": "null"});
        let mut own = fields["items"].clone();
        own["properties"]["choice"] = json!({"const": 0});
        fields["items"] = json!({"oneOf": [chosen, own]});
    }
    if exact {
        fields["minItems"] = json!(targets.len());
        fields["maxItems"] = json!(targets.len());
    }
    json!({
        "type": "object",
        "properties": {"fields": fields},
        "required": ["fields"],
        "additionalProperties": false
    })
}

/// The expression language section: SQL basics, allowed functions, conform's functions.
pub fn expression_language() -> String {
    let mut s = String::from(
        "SQL operators (+ - * / %, ||, =, <>, <, >, AND, OR, NOT, IS NULL, LIKE, IN), \
         CASE WHEN ... THEN ... ELSE ... END, CAST(x AS type) (a failed cast gives null), \
         literals 'text', 12, 1.5, true, null.\n",
    );
    s.push_str("Allowed functions: ");
    s.push_str(&ALLOWED_FUNCTIONS.join(", "));
    s.push_str("\nconform's functions (null instead of an error when a value does not convert):\n");
    for (_, sig) in SIGNATURES {
        s.push_str("- ");
        s.push_str(sig);
        s.push('\n');
    }
    s.push_str(
        "Date formats are chrono strftime patterns: %Y year, %m month, %d day, %H hour, %M minute, \
         %S second, %b month name, %.f fraction, %z offset.\n",
    );
    s
}

/// Masks a value's characters but keeps its shape: letters → a/A, digits → 9, the rest as is.
/// `Jane.Doe@x.com` → `Aaaa.Aaa@a.aaa`, `31/01/2024` → `99/99/9999`.
pub fn mask(v: &str) -> String {
    v.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_digit() {
                '9'
            } else if c.is_uppercase() {
                'A'
            } else if c.is_alphabetic() {
                'a'
            } else {
                c
            }
        })
        .collect()
}

fn column_line(p: &ColumnProfile, redact: bool) -> String {
    let examples: Vec<String> = p
        .examples
        .iter()
        .map(|e| if redact { mask(e) } else { e.clone() })
        .collect();
    let shape = serde_json::to_value(&p.shape)
        .ok()
        .and_then(|v| v.get("shape").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_default();
    // The source's own description of the column (a data dictionary): schema, not data, so
    // it is sent as written even when sample values are redacted.
    let described = p
        .description
        .as_deref()
        .map(|d| format!("; described as {d:?}"))
        .unwrap_or_default();
    format!(
        "- {:?}: {} (values look like {shape}; {:.0}% blank; {} distinct in sample; examples {}{described})",
        p.name,
        p.data_type,
        p.null_share * 100.0,
        p.distinct,
        serde_json::to_string(&examples).unwrap_or_default()
    )
}

/// Sample rows as JSON lines (real values, or masked ones when redacting).
fn sample_lines(sample: &RecordBatch, rows: usize, redact: bool) -> String {
    let n = rows.min(sample.num_rows());
    let batch = sample.slice(0, n);
    let names: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let columns: Vec<Vec<Value>> = batch
        .columns()
        .iter()
        .map(|c| crate::functions::column_to_json(c).unwrap_or_else(|_| vec![Value::Null; n]))
        .collect();
    let mut out = String::new();
    for r in 0..n {
        let mut obj = serde_json::Map::new();
        for (name, col) in names.iter().zip(&columns) {
            if crate::source::PROVENANCE.contains(&name.as_str()) {
                continue;
            }
            let v = match &col[r] {
                Value::String(s) if redact => Value::String(mask(s)),
                Value::Number(x) if redact => Value::String(mask(&x.to_string())),
                v => v.clone(),
            };
            obj.insert((*name).clone(), v);
        }
        out.push_str(&Value::Object(obj).to_string());
        out.push('\n');
    }
    out
}

/// The first user message: schema, columns, sample, language and the fields to fill.
pub fn mapping_request(
    req: &MappingRequest<'_>,
    sample_rows: usize,
    redact: bool,
    candidates: Option<&indexmap::IndexMap<String, Vec<Offered>>>,
) -> String {
    let mut s = String::new();
    s.push_str("## Target JSON Schema\n");
    let shown = shown_schema(&req.target.raw, req.profiles);
    s.push_str(&serde_json::to_string_pretty(&shown).unwrap_or_default());
    s.push_str("\n\n## Source columns (Arrow types)\n");
    for p in req.profiles {
        s.push_str(&column_line(p, redact));
        s.push('\n');
    }
    let n = sample_rows.min(req.sample.num_rows());
    if n > 0 {
        s.push_str(&format!(
            "\n## Sample rows ({n}{})\n",
            if redact {
                ", masked: letters shown as a/A, digits as 9"
            } else {
                ""
            }
        ));
        s.push_str(&sample_lines(req.sample, n, redact));
    }
    s.push_str("\n## Expression language\n");
    s.push_str(&expression_language());
    if let Some(offered) = candidates {
        s.push_str(&candidate_lines(offered));
    }
    s.push_str("\n## Target fields to map\n");
    let names: Vec<&str> = req.target.fields.iter().map(|f| f.name.as_str()).collect();
    s.push_str(&names.join(", "));
    s.push('\n');
    s
}

/// Most allowed values of one enum shown to the model; the value table step places the rest.
pub const ENUM_SHOWN: usize = 40;
/// Longest description shown to the model, in bytes.
pub const DESCRIPTION_SHOWN: usize = 600;

/// The target schema as the model sees it: an enum of more than [`ENUM_SHOWN`] values lists the
/// values nearest the sample's values (saying how many were left out), and a description
/// longer than [`DESCRIPTION_SHOWN`] bytes is cut with a marker. A field of a standard with
/// thousands of codes would otherwise fill a request on its own and could never be halved to
/// fit. The walk is iterative and bounded by the schema's (already bounded) size.
pub fn shown_schema(raw: &Value, profiles: &[ColumnProfile]) -> Value {
    let samples: Vec<String> = profiles
        .iter()
        .flat_map(|p| p.top_values.iter().map(|(v, _)| nearness_key(v)))
        .filter(|v| !v.is_empty())
        .collect();
    let mut out = raw.clone();
    let mut stack: Vec<&mut Value> = vec![&mut out];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(d)) = map.get_mut("description")
                    && d.len() > DESCRIPTION_SHOWN
                {
                    let total = d.len();
                    d.truncate(d.floor_char_boundary(DESCRIPTION_SHOWN));
                    d.push_str(&format!(" … [shortened from {total} characters]"));
                }
                let long_enum = map
                    .get("enum")
                    .and_then(Value::as_array)
                    .is_some_and(|e| e.len() > ENUM_SHOWN);
                if long_enum && let Some(Value::Array(values)) = map.remove("enum") {
                    let total = values.len();
                    let mut scored: Vec<(usize, usize, Value)> = values
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (nearness(&v, &samples), i, v))
                        .collect();
                    // Nearest first; the standard's own order among equals.
                    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                    scored.truncate(ENUM_SHOWN);
                    scored.sort_by_key(|(_, i, _)| *i);
                    map.insert(
                        "enum".into(),
                        Value::Array(scored.into_iter().map(|(_, _, v)| v).collect()),
                    );
                    map.insert(
                        "x-enum-note".into(),
                        Value::String(format!(
                            "{ENUM_SHOWN} of {total} allowed values shown (those nearest the \
                             sample's values); {} more not shown",
                            total - ENUM_SHOWN
                        )),
                    );
                }
                stack.extend(map.values_mut());
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
    out
}

fn nearness_key(v: &str) -> String {
    v.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// How near an allowed value is to the sample's values: 3 equal, 2 one contains the other,
/// 1 a shared 3-character prefix, 0 nothing.
fn nearness(allowed: &Value, samples: &[String]) -> usize {
    let text = match allowed {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let a = nearness_key(&text);
    if a.is_empty() {
        return 0;
    }
    samples
        .iter()
        .map(|s| {
            if *s == a {
                3
            } else if s.contains(a.as_str()) || a.contains(s.as_str()) {
                2
            } else if s.chars().count() >= 3
                && a.chars().count() >= 3
                && s.chars().take(3).eq(a.chars().take(3))
            {
                1
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0)
}

/// One candidate offered to the model by number: the offline matcher's expression for a field.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// The expression used when the model chooses it.
    pub expr: String,
    /// The column(s) it reads.
    pub sources: Vec<String>,
    /// The matcher's score.
    pub score: f64,
}

/// The offline matcher's ranked expressions per field (best first, at most `k`): the numbered
/// choices of the prompt. Number `n` is `[n - 1]`.
pub fn offered(
    doc: &crate::mapping::MappingDocument,
    k: usize,
) -> indexmap::IndexMap<String, Vec<Offered>> {
    doc.fields
        .iter()
        .map(|(field, m)| {
            let mut ranked: Vec<Offered> = Vec::new();
            if let Some(expr) = &m.expr {
                ranked.push(Offered {
                    expr: expr.clone(),
                    sources: m.sources.clone(),
                    score: m.confidence,
                });
            }
            ranked.extend(m.candidates.iter().map(|c| Offered {
                expr: c.expr.clone(),
                sources: c.sources.clone(),
                score: c.score,
            }));
            ranked.truncate(k.min(MAX_CHOICES));
            (field.clone(), ranked)
        })
        .collect()
}

/// The numbered candidates as the prompt shows them (columns, score, expression): evidence for
/// the model to choose from, or to write another expression beside.
fn candidate_lines(offered: &indexmap::IndexMap<String, Vec<Offered>>) -> String {
    let mut s = String::from(
        "\n## Candidate columns per field (offline matcher, best first; answer with the number of the right one, or choice 0 with your own expr or null)\n",
    );
    for (field, ranked) in offered {
        if ranked.is_empty() {
            s.push_str(&format!("- {field}: no plausible column\n"));
        } else {
            let list: Vec<String> = ranked
                .iter()
                .enumerate()
                // The expression shows the model what choosing it means (the conversion, the
                // date format); without it a 1.5B model wrote its own and ran long.
                .map(|(i, c)| {
                    format!(
                        "{}. {:?} ({:.2}) `{}`",
                        i + 1,
                        c.sources.join(" + "),
                        c.score,
                        clip(&c.expr, REPAIR_EXPR_CHARS)
                    )
                })
                .collect();
            s.push_str(&format!("- {field}: {}\n", list.join("; ")));
        }
    }
    s
}

/// The follow-up message after expressions failed to compile: each field with its error.
pub fn repair_request(errors: &[(String, String, String)]) -> String {
    let mut s = String::from(
        "These expressions were rejected by the compiler. Reply with corrected entries for \
         these fields only, in the same JSON format; use null where no source column fits.\n",
    );
    for (field, expr, error) in errors {
        s.push_str(&format!(
            "- {field}: `{}` → {}\n",
            clip(expr, REPAIR_EXPR_CHARS),
            clip(error, REPAIR_ERROR_CHARS)
        ));
    }
    s
}

/// Longest expression and error quoted per field in a repair request: a compiler error lists
/// every column of a wide source, and a follow-up must stay within the prompt budget the batch
/// was planned for (see `FOLLOW_UP_TOKENS_PER_FIELD`).
pub const REPAIR_EXPR_CHARS: usize = 120;
/// See [`REPAIR_EXPR_CHARS`].
pub const REPAIR_ERROR_CHARS: usize = 240;

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(max)])
    }
}

/// Version of the column-by-column wording (targets wider than `llm.by_column_above`).
pub const COLUMN_PROMPT_VERSION: &str = "conform-columns-v1";

/// Longest field description in a column-by-column request, in bytes: a request lists several
/// fields per column, and the first sentence of a standard's definition carries its meaning.
pub const COLUMN_DESCRIPTION_SHOWN: usize = 160;

/// Most allowed values shown for one field in a column-by-column request.
pub const COLUMN_ENUM_SHOWN: usize = 8;

/// The answer of a column-by-column reply for a column none of whose fields fits.
pub const NO_FIELD: &str = "none";

/// The instructions of a column-by-column request.
pub const COLUMN_SYSTEM: &str = "\
You match the columns of a source table to the fields of a wide target schema for a data \
pipeline. Each source column is listed with its type and example values, followed by the \
target fields an offline matcher ranked for it (best first), each with its type and \
description.

For each column, answer the name of the one listed field whose values this column holds, or \
\"none\" when no field listed under that column fits. Judge by meaning: the column's name, \
its values and the source table's name against the field's name and description. A wrong match \
is worse than none.

Reply with a JSON object only: {\"columns\": [{\"column\": ..., \"field\": ...}]}, one entry \
per column.";

/// One column of a column-by-column request: its name, type and examples (masked when
/// redacting), then its numbered fields.
pub fn column_request_part(
    p: &ColumnProfile,
    fields: &[&crate::schema::TargetField],
    redact: bool,
) -> String {
    let mut s = format!(
        "\n### {}\n",
        column_line(p, redact).trim_start_matches("- ")
    );
    let samples: Vec<String> = p.top_values.iter().map(|(v, _)| nearness_key(v)).collect();
    for (i, t) in fields.iter().enumerate() {
        let mut line = format!("{}. {} ({}", i + 1, t.name, kind_word(&t.kind));
        if let Some(values) = &t.constraints.enum_values {
            let mut scored: Vec<(usize, usize, &Value)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (nearness(v, &samples), i, v))
                .collect();
            scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let shown: Vec<String> = scored
                .iter()
                .take(COLUMN_ENUM_SHOWN)
                .map(|(_, _, v)| match v {
                    Value::String(s) => clip(s, 40),
                    other => other.to_string(),
                })
                .collect();
            line.push_str(&format!("; one of {}", shown.join(", ")));
            if values.len() > COLUMN_ENUM_SHOWN {
                line.push_str(&format!(" (+{} more)", values.len() - COLUMN_ENUM_SHOWN));
            }
        }
        line.push(')');
        if let Some(d) = t.description.as_deref().filter(|d| !d.trim().is_empty()) {
            line.push_str(": ");
            line.push_str(&clip(d.trim(), COLUMN_DESCRIPTION_SHOWN));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// The user message of a column-by-column request: the source's name and its columns' parts.
pub fn column_request(source: &str, parts: &[String]) -> String {
    format!(
        "Source table: {source:?}\n## Columns and the target fields ranked for each{}",
        parts.concat()
    )
}

/// The JSON type word of a field kind, as a column-by-column request shows it.
fn kind_word(kind: &crate::schema::FieldKind) -> &'static str {
    use crate::schema::FieldKind as K;
    match kind {
        K::Integer => "integer",
        K::Number => "number",
        K::String => "string",
        K::Boolean => "boolean",
        K::Date => "date",
        K::DateTime => "date-time",
        K::Object(_) => "object",
        K::Array(_) => "array",
        K::Json => "any",
    }
}

/// The reply schema of a column-by-column request: one entry per column of `columns`, each
/// naming one of `fields` (the fields offered in the request) or [`NO_FIELD`]. A name, not a
/// number: asked for numbers, a 1.5B model answered 1, 2, 3, … down the columns, or filled a
/// list with the first three numbers for every column.
pub fn column_schema(columns: &[&str], fields: &[&str]) -> Value {
    let mut names: Vec<&str> = fields.to_vec();
    names.push(NO_FIELD);
    json!({
        "type": "object",
        "properties": {"columns": {
            "type": "array",
            "minItems": columns.len(),
            "maxItems": columns.len(),
            "items": {
                "type": "object",
                "properties": {
                    "column": {"type": "string", "enum": columns},
                    "field": {"type": "string", "enum": names}
                },
                "required": ["column", "field"],
                "additionalProperties": false
            }
        }},
        "required": ["columns"],
        "additionalProperties": false
    })
}

/// The instructions for a value table request.
pub const VALUE_SYSTEM: &str = "You map the values of a source column onto the allowed values \
of a target field for a data pipeline. For each source value give the one allowed value it \
means, or null when none fits. Never invent an allowed value.";

/// The value table request: the field, the column, the allowed values and the values to map.
pub fn value_request(field: &str, column: &str, allowed: &[&str], values: &[String]) -> String {
    format!(
        "Target field `{field}` allows exactly: {}.\nSource column `{column}` holds these values \
         that are not allowed values as written: {}.\nReply with the JSON object only: \
         {{\"values\": [{{\"source\": ..., \"target\": ... or null}}]}}, one entry per source value.",
        serde_json::to_string(allowed).unwrap_or_default(),
        serde_json::to_string(values).unwrap_or_default()
    )
}

/// The reply schema of a value table request: one entry per source value, each target an
/// allowed value or null.
pub fn value_schema(values: &[String], allowed: &[&str]) -> Value {
    let mut targets: Vec<Value> = allowed.iter().map(|a| json!(a)).collect();
    targets.push(Value::Null);
    json!({
        "type": "object",
        "properties": {"values": {
            "type": "array",
            "minItems": values.len(),
            "maxItems": values.len(),
            "items": {
                "type": "object",
                "properties": {
                    "source": {"type": "string", "enum": values},
                    "target": {"type": ["string", "null"], "enum": targets}
                },
                "required": ["source", "target"],
                "additionalProperties": false
            }
        }},
        "required": ["values"],
        "additionalProperties": false
    })
}

/// The follow-up for fields the reply left out: one entry each, and nothing else.
pub fn missing_request(fields: &[&str]) -> String {
    format!(
        "Your reply has no entry for these fields: {}. Reply with one entry for each of them \
         (and no other field) in the same JSON format; an entry may have a null expr when no \
         source column fits.",
        fields.join(", ")
    )
}

/// The follow-up message with the probe's error digest: revise the failing fields only.
pub fn revision_request(digest: &str) -> String {
    format!(
        "The mapping was run on the source and validated against the schema. {digest}\n\
         For the fields above, reply with revised entries only, in the same JSON format: fix \
         conversions that fail on valid data (a wrong date format, currency signs, yes/no words, \
         letter case). Values that are simply wrong (an e-mail without @) cannot be fixed by a \
         mapping: keep those expressions."
    )
}

/// The follow-up message after a reply that was not the requested JSON.
pub fn unreadable_reply(error: &str) -> String {
    format!(
        "Your reply could not be read ({error}). Reply with the JSON object only: \
         {{\"fields\": [{{\"target\": ..., \"choice\": ..., \"expr\": ..., \"confidence\": ..., \"rationale\": ...}}]}}."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_enum_and_a_long_description_are_cut_to_fit_a_request() {
        let codes: Vec<Value> = (0..5_000).map(|i| json!(format!("C{i:05}"))).collect();
        let raw = json!({"type": "object", "properties": {
            "diagnosis_code": {"type": "string", "enum": codes,
                               "description": "x".repeat(50_000)}}});
        let mut profile = crate::source::profile::profile(
            &RecordBatch::try_new(
                std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                    arrow::datatypes::Field::new("dx", arrow::datatypes::DataType::Utf8, true),
                ])),
                vec![std::sync::Arc::new(arrow::array::StringArray::from(vec![
                    "c04321", "C00007", "c04321",
                ]))],
            )
            .unwrap(),
        );
        let shown = shown_schema(&raw, &profile);
        let f = &shown["properties"]["diagnosis_code"];
        let values: Vec<&str> = f["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(values.len(), ENUM_SHOWN);
        assert!(
            values.contains(&"C04321") && values.contains(&"C00007"),
            "{values:?}"
        );
        assert!(
            f["x-enum-note"]
                .as_str()
                .unwrap()
                .contains("4960 more not shown")
        );
        let d = f["description"].as_str().unwrap();
        assert!(
            d.len() < DESCRIPTION_SHOWN + 60 && d.ends_with("[shortened from 50000 characters]")
        );
        // The whole rendered schema is small: a request can carry it.
        assert!(serde_json::to_string_pretty(&shown).unwrap().len() < 3_000);
        // A short enum is left whole.
        profile.clear();
        let small = json!({"enum": ["a", "b"], "description": "short"});
        assert_eq!(shown_schema(&small, &profile), small);
    }

    #[test]
    fn mask_keeps_shape_not_content() {
        assert_eq!(mask("Jane.Doe@x.com"), "Aaaa.Aaa@a.aaa");
        assert_eq!(mask("31/01/2024"), "99/99/9999");
        assert_eq!(mask("$1,234.50"), "$9,999.99");
    }

    #[test]
    fn response_schema_is_strict_compatible() {
        // Strict structured output needs every property required and no extra properties.
        let s = response_schema(&["id", "name"], true, false);
        let fields = &s["properties"]["fields"];
        assert_eq!(fields["minItems"], 2);
        assert_eq!(fields["maxItems"], 2);
        let item = &fields["items"];
        assert_eq!(item["properties"]["target"]["enum"], json!(["id", "name"]));
        assert_eq!(item["required"].as_array().unwrap().len(), 5);
        let open = response_schema(&["id", "name"], false, false);
        assert!(open["properties"]["fields"].get("minItems").is_none());
        assert!(item["properties"]["rationale"].get("maxLength").is_none());
        let bounded = response_schema(&["id"], true, true);
        let shapes = bounded["properties"]["fields"]["items"]["oneOf"]
            .as_array()
            .unwrap();
        // A candidate's number with no expression of the model's, or 0 with one.
        let [chosen, own] = shapes.as_slice() else {
            panic!("{bounded}")
        };
        assert_eq!(chosen["properties"]["choice"]["minimum"], 1);
        assert_eq!(chosen["properties"]["expr"], json!({"type": "null"}));
        assert_eq!(own["properties"]["choice"], json!({"const": 0}));
        assert_eq!(own["properties"]["expr"]["type"], json!(["string", "null"]));
        for shape in shapes {
            assert_eq!(
                shape["properties"]["rationale"]["maxLength"],
                RATIONALE_MAX_CHARS
            );
            assert_eq!(shape["required"].as_array().unwrap().len(), 5);
            assert_eq!(shape["additionalProperties"], false);
        }
        assert_eq!(item["additionalProperties"], false);
        assert_eq!(s["additionalProperties"], false);
    }

    #[test]
    fn language_lists_functions_and_signatures() {
        let l = expression_language();
        assert!(l.contains("concat_ws"));
        assert!(l.contains("try_to_date(text, format, ...)"));
        assert!(
            !l.contains("json_schema_errors"),
            "validation helpers are not for mappings"
        );
    }
}
