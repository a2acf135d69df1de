//! SQL text helpers that every layer may use: identifiers and string literals quoted for
//! DataFusion's dialect (and PostgreSQL's, which quotes the same way).

/// Quotes an identifier: `a"b` → `"a""b"`.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: `it's` → `'it''s'`.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_are_doubled() {
        assert_eq!(super::quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(super::literal("it's"), "'it''s'");
    }
}
