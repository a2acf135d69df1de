//! The limits that keep hostile or careless input from exhausting the stack, memory or time.
//! Each is documented in `docs/security-and-limits.md`.

use serde_json::Value;

/// Deepest nesting of a data record (NDJSON line, JSON array element, HTTP record). Deeper
/// records are malformed rows.
pub const MAX_DATA_DEPTH: usize = 512;
/// Deepest nesting of the config file's JSON text.
pub const MAX_CONFIG_DEPTH: usize = 512;
/// Deepest JSON nesting of `internal_schema` (each nested object field takes two levels,
/// `properties` and the field itself, so about 128 nested object fields).
pub const MAX_SCHEMA_DEPTH: usize = 256;
/// Most rows per record batch (`batch_size`): readers size their buffers from it, so it is
/// bounded where a buffer can still be allocated (with 16 MiB records a batch is bounded by
/// `limits.max_record_bytes` as well).
pub const MAX_BATCH_ROWS: usize = 1024 * 1024;
/// Longest mapping expression, in bytes.
pub const MAX_EXPR_BYTES: usize = 16 * 1024;
/// Deepest mapping expression (parentheses, CASE and chains of binary operators).
pub const MAX_EXPR_DEPTH: usize = 64;
/// Largest text the growing calls of one mapping expression (`repeat`, `lpad`, `rpad`,
/// `replace`, `regexp_replace`) may produce together for one row: each call gets an equal
/// share; a row whose call would exceed its share gets null there, and is invalid. A call on
/// literals over it is a compile error.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest text the growing calls of one expression may produce together for one batch: the
/// rows past it get null, and are invalid, so a batch's output stays bounded whatever its size.
pub const MAX_BATCH_OUTPUT_BYTES: usize = 256 * 1024 * 1024;
/// Default largest HTTP response body, `limits.max_page_bytes`.
pub const DEFAULT_MAX_PAGE_BYTES: usize = 256 * 1024 * 1024;
/// Default largest record (CSV record, JSON line or element), `limits.max_record_bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Deepest bracket nesting of JSON text, skipping strings. Linear, no recursion; invalid JSON
/// gives a number all the same.
pub fn json_text_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether a JSON record nests deeper than [`MAX_DATA_DEPTH`]. Counting brackets first (a
/// vectorised byte count) keeps the common case at memory speed.
pub fn too_deep(record: &[u8]) -> bool {
    let open = memchr::memchr2_iter(b'{', b'[', record).count();
    open > MAX_DATA_DEPTH && json_text_depth(record) > MAX_DATA_DEPTH
}

/// Depth of a parsed JSON value, without recursion.
pub fn value_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    max
}

/// `s` cut to about `max` bytes (at a character boundary) with its full length said, so that a
/// huge rejected expression or name is never echoed whole.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

/// Lexical depth of a SQL expression, before it is parsed: parentheses and `CASE … END` open
/// a level, and within a level every binary operator of a chain adds one (a left-deep
/// `1 + 1 + …` tree is as deep as its chain is long). Commas and `WHEN`/`THEN`/`ELSE` start a
/// new chain. Strings and quoted identifiers are skipped.
pub fn expr_depth(text: &str) -> usize {
    let b = text.as_bytes();
    // Chain length of each open level.
    let mut chains: Vec<usize> = vec![0];
    let mut max = 1;
    let mut i = 0;
    let depth = |chains: &[usize]| chains.len() + chains.iter().sum::<usize>();
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                // Quoted text; a doubled quote is an escaped quote.
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'(' => chains.push(0),
            b')' if chains.len() > 1 => {
                chains.pop();
            }
            b',' => *chains.last_mut().expect("one level") = 0,
            b'+' | b'-' | b'*' | b'/' | b'%' | b'=' | b'<' | b'>' | b'|' | b'&' | b'^' => {
                // Two-character operators (`||`, `<=`, `<>`, `!=`) count once.
                let prev = if i > 0 { b[i - 1] } else { b' ' };
                if !matches!(prev, b'|' | b'<' | b'>' | b'!' | b'=') || c == b'-' || c == b'+' {
                    *chains.last_mut().expect("one level") += 1;
                }
            }
            _ if c.is_ascii_alphabetic() => {
                let start = i;
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_') {
                    i += 1;
                }
                let word = text[start..=i].to_ascii_uppercase();
                match word.as_str() {
                    "CASE" => chains.push(0),
                    "END" if chains.len() > 1 => {
                        chains.pop();
                    }
                    "WHEN" | "THEN" | "ELSE" => *chains.last_mut().expect("one level") = 0,
                    "AND" | "OR" | "LIKE" | "ILIKE" | "IS" => {
                        *chains.last_mut().expect("one level") += 1
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        max = max.max(depth(&chains));
        i += 1;
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_depth_skips_strings() {
        assert_eq!(json_text_depth(br#"{"a": [1, {"b": "[[[[{"}]}"#), 3);
        assert_eq!(json_text_depth(br#""\"[""#), 0);
        let deep = "[".repeat(30_000);
        assert_eq!(json_text_depth(deep.as_bytes()), 30_000);
        assert!(too_deep(deep.as_bytes()));
        assert!(!too_deep("[".repeat(MAX_DATA_DEPTH).as_bytes()));
        // Many brackets side by side are not deep.
        assert!(!too_deep("[],".repeat(10_000).as_bytes()));
    }

    #[test]
    fn value_depth_counts_levels() {
        assert_eq!(value_depth(&serde_json::json!(1)), 1);
        assert_eq!(value_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 4);
    }

    #[test]
    fn shorten_cuts_long_text_at_a_character_boundary() {
        assert_eq!(shorten("abc", 5), "abc");
        let s = shorten(&"é".repeat(100), 9);
        assert!(s.starts_with("éééé…"), "{s}");
        assert!(s.ends_with("(200 bytes in all)"), "{s}");
    }

    #[test]
    fn expression_depth_follows_chains_and_nesting() {
        assert_eq!(expr_depth("a"), 1);
        assert_eq!(expr_depth("lower(trim(a))"), 3);
        assert!(expr_depth(&vec!["1"; 100].join(" + ")) > MAX_EXPR_DEPTH);
        assert!(expr_depth(&vec!["a"; 100].join(" || ")) > MAX_EXPR_DEPTH);
        assert!(expr_depth(&format!("{}1{}", "(".repeat(100), ")".repeat(100))) > MAX_EXPR_DEPTH);
        // A long CASE or argument list is wide, not deep.
        let case = format!(
            "CASE {} ELSE NULL END",
            (0..300)
                .map(|i| format!("WHEN x = 'v{i}' THEN 'w{i}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(expr_depth(&case) < 8, "{}", expr_depth(&case));
        let args = format!("coalesce({})", vec!["a"; 300].join(", "));
        assert!(expr_depth(&args) < 4);
        // Operators inside strings do not count.
        assert_eq!(expr_depth("'+ + + + ('"), 1);
    }
}
