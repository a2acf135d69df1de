//! Reading the model's reply: untrusted text that should be `{"fields": [...]}`.

use serde::Deserialize;

/// One entry of the reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReplyField {
    /// Target field name.
    pub target: String,
    /// The number of the offline candidate the model chose (1 = the first); 0 or absent when
    /// it wrote `expr` instead.
    #[serde(default, deserialize_with = "lenient_number")]
    pub choice: Option<f64>,
    /// Expression, or null for unmapped.
    #[serde(default)]
    pub expr: Option<String>,
    /// The model's confidence, 0..1 (a number, or a number written as a string).
    #[serde(default, deserialize_with = "lenient_number")]
    pub confidence: Option<f64>,
    /// Why.
    #[serde(default)]
    pub rationale: Option<String>,
}

/// A number, a numeric string (`"0.9"`, `"90%"`), or anything else as absent: a harmless
/// deviation must not make the whole reply unreadable.
fn lenient_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => {
            let t = s.trim();
            match t.strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().ok().map(|x| x / 100.0),
                None => t.parse().ok(),
            }
        }
        _ => None,
    })
}

#[derive(Deserialize)]
struct Reply {
    fields: Vec<ReplyField>,
}

/// Parses a reply: plain JSON, or JSON in a ```json fence, possibly with prose around it.
/// Blank expressions and the string `null` count as unmapped; confidence is clamped to 0..1;
/// of several entries for one field the first counts.
pub fn parse(content: &str) -> Result<Vec<ReplyField>, String> {
    let text = unfence(content.trim());
    let reply: Reply = serde_json::from_str(text)
        .or_else(|first| {
            // Prose before or after the object: take the outermost braces.
            match (text.find('{'), text.rfind('}')) {
                (Some(a), Some(b)) if a < b && (a > 0 || b + 1 < text.len()) => {
                    serde_json::from_str(&text[a..=b])
                }
                _ => Err(first),
            }
        })
        .or_else(|e| salvage(text).ok_or(e))
        .map_err(|e| format!("not the requested JSON object: {e}"))?;
    // A grammar can bound the entry count and the names, not their uniqueness: a small model
    // may name one field twice and skip another. The first entry per field counts.
    let mut seen = std::collections::HashSet::new();
    Ok(reply
        .fields
        .into_iter()
        .filter(|f| seen.insert(f.target.clone()))
        .map(|mut f| {
            f.expr = f
                .expr
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("null"));
            f.confidence = f
                .confidence
                .filter(|c| c.is_finite())
                .map(|c| c.clamp(0.0, 1.0));
            f
        })
        .collect())
}

/// The entries of a value table reply: (source value, allowed value or None); empty when the
/// reply cannot be read.
pub fn parse_values(content: &str) -> Vec<(String, Option<String>)> {
    let text = unfence(content.trim());
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => match (text.find('{'), text.rfind('}')) {
            (Some(a), Some(b)) if a < b => serde_json::from_str(&text[a..=b]).unwrap_or_default(),
            _ => serde_json::Value::Null,
        },
    };
    v.get("values")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let from = e.get("source")?.as_str()?.to_string();
                    let to = e.get("target").and_then(|t| t.as_str()).map(str::to_string);
                    Some((from, to))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of a column-by-column reply: (column, its answer: a field's name, a number, or
/// blank for none), the first entry per column counting. Entries complete before a cut (a reply
/// stopped at its token budget) are kept. `Err` when nothing can be read.
pub fn parse_columns(content: &str) -> Result<Vec<(String, String)>, String> {
    let text = unfence(content.trim());
    let whole: Option<serde_json::Value> = serde_json::from_str(text).ok().or_else(|| {
        let (a, b) = (text.find('{')?, text.rfind('}')?);
        (a < b).then(|| serde_json::from_str(&text[a..=b]).ok())?
    });
    let entries: Vec<serde_json::Value> = match whole
        .as_ref()
        .and_then(|v| v.get("columns"))
        .and_then(serde_json::Value::as_array)
    {
        Some(a) => a.clone(),
        None => complete_objects(text, "\"columns\"")
            .ok_or_else(|| "not the requested JSON object".to_string())?,
    };
    let mut seen = std::collections::HashSet::new();
    Ok(entries
        .iter()
        .filter_map(|e| {
            let column = e.get("column")?.as_str()?.to_string();
            let answer = match e.get("field") {
                Some(serde_json::Value::String(s)) => s.trim().to_string(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            Some((column, answer))
        })
        .filter(|(c, _)| seen.insert(c.clone()))
        .collect())
}

/// The complete JSON objects of the array after `key` in a reply cut short; `None` when the key
/// or its array is missing.
fn complete_objects(text: &str, key: &str) -> Option<Vec<serde_json::Value>> {
    let start = text.find(key)?;
    let open = start + text[start..].find('[')?;
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut from) = (0usize, false, false, None);
    for (i, &c) in b.iter().enumerate().skip(open + 1) {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' => {
                if depth == 0 {
                    from = Some(i);
                }
                depth += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0
                    && let Some(a) = from.take()
                    && let Ok(v) = serde_json::from_str(&text[a..=i])
                {
                    out.push(v);
                }
            }
            b']' if depth == 0 => break,
            _ => {}
        }
    }
    Some(out)
}

/// The complete entries of a reply cut short (at its token budget): the objects of the
/// `fields` array up to the cut. None when not even one entry is complete.
fn salvage(text: &str) -> Option<Reply> {
    let fields: Vec<ReplyField> = complete_objects(text, "\"fields\"")?
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    (!fields.is_empty()).then_some(Reply { fields })
}

/// The inside of a Markdown code fence, if the text is (or contains) one.
fn unfence(text: &str) -> &str {
    let Some(start) = text.find("```") else {
        return text;
    };
    let after = &text[start + 3..];
    // Skip the info string (`json`) up to the end of the line.
    let body = after.find('\n').map_or(after, |i| &after[i + 1..]);
    match body.find("```") {
        Some(end) => body[..end].trim(),
        None => body.trim(),
    }
}

/// The expression with every column whose name is not a plain identifier (`Signup Date`,
/// `E-mail`) quoted where the model wrote it bare: small models often write
/// `try_to_date(Signup Date, …)`, which cannot parse, for the column they did pick. Text inside
/// quotes is left alone, and a name counts only when it stands alone (not inside a longer
/// word); longer names are tried first.
pub fn quote_bare_columns(expr: &str, columns: &[&str]) -> String {
    let mut odd: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !c.is_empty() && !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
        .collect();
    if odd.is_empty() {
        return expr.to_string();
    }
    odd.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(expr.len() + 8);
    let mut quote: Option<char> = None;
    let mut i = 0;
    // Bounded: every turn moves `i` forward by at least one character.
    while i < expr.len() {
        let rest = &expr[i..];
        let c = rest.chars().next().unwrap_or(' ');
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {
                let before = expr[..i].chars().next_back();
                let hit = odd.iter().find(|name| {
                    rest.starts_with(**name)
                        && !word(before)
                        && !word(rest[name.len()..].chars().next())
                });
                if let Some(name) = hit {
                    out.push('"');
                    out.push_str(&name.replace('"', "\"\""));
                    out.push('"');
                    i += name.len();
                    continue;
                }
            }
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_column_reply_is_read_whole_fenced_or_cut() {
        use super::parse_columns as p;
        let pair = |c: &str, f: &str| (c.to_string(), f.to_string());
        let whole = r#"{"columns": [{"column": "START", "field": "a.start"}, {"column": "CODE", "field": "none"}, {"column": "START", "field": "b"}]}"#;
        assert_eq!(
            p(whole).unwrap(),
            [pair("START", "a.start"), pair("CODE", "none")]
        );
        let fenced = "Here:\n```json\n{\"columns\": [{\"column\": \"A\", \"field\": 3}, {\"column\": \"B\", \"field\": null}]}\n```";
        assert_eq!(p(fenced).unwrap(), [pair("A", "3"), pair("B", "")]);
        // Cut at the token budget: the complete entries before the cut count.
        let cut = r#"{"columns": [{"column": "A", "field": " x "}, {"column": "B", "fie"#;
        assert_eq!(p(cut).unwrap(), [pair("A", "x")]);
        assert!(p("column A is the start date").is_err());
        // JSON, but not the requested object: unreadable.
        assert!(p(r#"{"fields": []}"#).is_err());
    }

    #[test]
    fn bare_column_names_with_spaces_or_dashes_are_quoted() {
        use super::quote_bare_columns as q;
        let cols = ["Signup Date", "E-mail", "Lifetime Value", "id"];
        assert_eq!(
            q("try_to_date(Signup Date, '%Y-%m-%d')", &cols),
            "try_to_date(\"Signup Date\", '%Y-%m-%d')"
        );
        assert_eq!(q("lower(E-mail)", &cols), "lower(\"E-mail\")");
        // Already quoted, inside a literal, part of a longer word: left alone.
        assert_eq!(q("lower(\"E-mail\")", &cols), "lower(\"E-mail\")");
        assert_eq!(q("'Signup Date' || id", &cols), "'Signup Date' || id");
        assert_eq!(
            q("parse_number(Lifetime Values)", &cols),
            "parse_number(Lifetime Values)"
        );
        assert_eq!(q("id + 1", &cols), "id + 1");
    }

    use super::*;

    #[test]
    fn the_first_entry_per_field_counts() {
        let reply = r#"{"fields": [{"target": "a", "expr": "x"}, {"target": "a", "expr": "y"}, {"target": "b", "expr": "z"}]}"#;
        let got: Vec<(String, Option<String>)> = parse(reply)
            .unwrap()
            .into_iter()
            .map(|f| (f.target, f.expr))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), Some("x".into())),
                ("b".into(), Some("z".into()))
            ]
        );
    }

    #[test]
    fn plain_fenced_and_wrapped_replies() {
        let plain = r#"{"fields": [{"target": "id", "expr": "CAST(\"ID\" AS BIGINT)", "confidence": 0.9, "rationale": "id"}]}"#;
        let a = parse(plain).unwrap();
        assert_eq!(a[0].expr.as_deref(), Some("CAST(\"ID\" AS BIGINT)"));
        let fenced = format!("Here you go:\n```json\n{plain}\n```\nDone.");
        assert_eq!(parse(&fenced).unwrap(), a);
        let prose = format!("Sure! {plain} Hope this helps.");
        assert_eq!(parse(&prose).unwrap(), a);
    }

    #[test]
    fn null_blank_and_out_of_range() {
        let r = parse(r#"{"fields": [{"target": "a", "expr": "null", "confidence": 7}, {"target": "b", "expr": " "}, {"target": "c", "expr": null}]}"#).unwrap();
        assert!(r.iter().all(|f| f.expr.is_none()));
        assert_eq!(r[0].confidence, Some(1.0));
    }

    #[test]
    fn confidence_written_as_text_is_read() {
        let r = parse(r#"{"fields": [{"target": "a", "expr": "x", "confidence": "0.8"}, {"target": "b", "expr": "y", "confidence": "90%"}, {"target": "c", "expr": "z", "confidence": "high"}]}"#).unwrap();
        assert_eq!(r[0].confidence, Some(0.8));
        assert_eq!(r[1].confidence, Some(0.9));
        assert_eq!(r[2].confidence, None);
        assert_eq!(r[2].expr.as_deref(), Some("z"));
    }

    #[test]
    fn a_reply_cut_short_keeps_its_complete_entries() {
        let cut = r#"{"fields": [{"target": "a", "expr": "\"x\"", "confidence": 0.9, "rationale": "a {brace} in text"}, {"target": "b", "expr": "y", "confidence": 0.8, "rationale": "b"}, {"target": "c", "expr": "CAST(CAST(CAST("#;
        let r = parse(cut).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].target, "b");
        assert_eq!(r[0].expr.as_deref(), Some("\"x\""));
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse("I cannot help with that").is_err());
        // Cut inside the first entry: nothing complete to keep.
        assert!(parse(r#"{"fields": [{"target": "a", "expr": "x"#).is_err());
        // Cut after a complete entry: that entry is kept.
        assert_eq!(
            parse(r#"{"fields": [{"target": "a", "expr": "x"}"#)
                .unwrap()
                .len(),
            1
        );
        assert!(parse(r#"{"mapping": {}}"#).is_err());
    }
}
