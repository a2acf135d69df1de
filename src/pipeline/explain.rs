//! How mappings are shown to people: `conform explain` (the compiled projection and validation
//! as SQL), the review table of `conform map`, and `conform map --diff`.

use datafusion::prelude::Expr;
use datafusion::sql::unparser::expr_to_sql;

use super::PreparedSource;
use crate::mapping::MappingDocument;

fn sql(e: &Expr) -> String {
    // Aliases are shown by the caller; unparse the expression under them.
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    expr_to_sql(inner)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| inner.to_string())
}

/// Renders the compiled mapping and validation of a prepared source.
pub fn explain(p: &PreparedSource) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "-- source `{}` ({}, {:?})\n",
        p.source.name(),
        p.source.location(),
        p.source.format()
    ));
    out.push_str(&format!(
        "-- mapping: {} ({})\n",
        p.document.mapper.as_str(),
        p.document_path.display()
    ));
    out.push_str("SELECT\n");
    let n = p.mapping.fields.len();
    for (i, f) in p.mapping.fields.iter().enumerate() {
        let comma = if i + 1 < n { "," } else { "" };
        out.push_str(&format!("  {} AS \"{}\"{comma}\n", sql(&f.expr), f.name));
    }
    out.push_str(&format!(
        "FROM \"{}\"\n\n-- validation: a row is valid when every check holds\n",
        p.source.name()
    ));
    for c in &p.validator.checks {
        out.push_str(&format!(
            "-- {}:{}\n  {}\n",
            c.field,
            c.rule.name(),
            sql(&c.ok)
        ));
    }
    out
}

/// Shortens text for a table cell, on a character boundary.
fn cell(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Unmapped fields with no candidate listed one per line at most; past this (a wide target
/// that a source fills a few percent of) they are counted on one line.
const SILENT_LISTED: usize = 20;

/// A mapping document for review: `target ← expression  confidence  rationale`, one line per
/// target field; rejected expressions show their error. Undecided fields (unmapped, with
/// candidates) come first, since they are what a reviewer must decide.
pub fn table(doc: &MappingDocument) -> String {
    let undecided = |m: &crate::mapping::FieldMapping| {
        m.expr.is_none() && m.error.is_none() && !m.candidates.is_empty()
    };
    let silent = |m: &crate::mapping::FieldMapping| {
        m.expr.is_none() && m.error.is_none() && m.candidates.is_empty()
    };
    let n_silent = doc.fields.values().filter(|m| silent(m)).count();
    let fold = n_silent > SILENT_LISTED;
    let rows: Vec<(&String, &crate::mapping::FieldMapping)> = doc
        .fields
        .iter()
        .filter(|(_, m)| undecided(m))
        .chain(
            doc.fields
                .iter()
                .filter(|(_, m)| !(undecided(m) || (fold && silent(m)))),
        )
        .collect();
    let mut out = rows_table(&rows);
    if fold {
        out.push_str(&format!(
            "  {n_silent} more fields unmapped: no source column is a candidate for them\n"
        ));
    }
    out
}

fn rows_table(rows: &[(&String, &crate::mapping::FieldMapping)]) -> String {
    let tw = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let exprs: Vec<String> = rows
        .iter()
        .map(|(_, m)| cell(m.expr.as_deref().unwrap_or("(unmapped)"), 60))
        .collect();
    let ew = exprs
        .iter()
        .map(|e| e.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    let mut out = format!(
        "  {:tw$}   {:ew$}  {:>4}  {}\n",
        "target", "expression", "conf", "rationale"
    );
    for ((name, m), expr) in rows.iter().zip(&exprs) {
        let why = match &m.error {
            Some(e) => format!("REJECTED: {e}"),
            None => m.rationale.clone(),
        };
        let line = format!(
            "  {name:tw$} ← {expr:ew$}  {:>4.2}  {}",
            m.confidence,
            cell(&why, 100)
        );
        out.push_str(line.trim_end());
        out.push('\n');
        if let Some(cov) = m.value_coverage {
            out.push_str(&format!(
                "  {:tw$}   value table covers {:.0}% of the sample's values\n",
                "",
                cov * 100.0
            ));
        }
        if !m.unplaced_values.is_empty() {
            let shown: Vec<String> = m
                .unplaced_values
                .iter()
                .map(|v| format!("{:?}", cell(v, 40)))
                .collect();
            out.push_str(&format!(
                "  {:tw$}   values not placed: {}\n",
                "",
                shown.join(", ")
            ));
        }
        // The ranked alternatives, so that a reviewer can switch with one edit.
        let alts: Vec<String> = m
            .candidates
            .iter()
            .map(|c| format!("{} ({:.2})", c.sources.join(", "), c.score))
            .collect();
        if !alts.is_empty() {
            out.push_str(&format!("  {:tw$}   or: {}\n", "", alts.join("; ")));
        }
    }
    out
}

/// What changed from `old` to `new`, field by field; `no changes` when the expressions agree.
pub fn diff(old: &MappingDocument, new: &MappingDocument) -> String {
    let mut out = String::new();
    if old.source_fingerprint != new.source_fingerprint {
        out.push_str(&format!(
            "  source columns changed: fingerprint {} → {}\n",
            old.source_fingerprint, new.source_fingerprint
        ));
    }
    let none = "(unmapped)";
    for (name, m) in &new.fields {
        let before = old.fields.get(name).and_then(|o| o.expr.as_deref());
        let after = m.expr.as_deref();
        // The stored side's last review of the field says who decided what it is now.
        let reviewed = old
            .reviews
            .iter()
            .rev()
            .find(|r| &r.field == name)
            .map(|r| {
                format!(
                    "  (stored side reviewed by {} at {}: {})",
                    r.by, r.at, r.change
                )
            })
            .unwrap_or_default();
        match (before, after) {
            (b, a) if b == a => {}
            (None, Some(a)) => out.push_str(&format!("+ {name}: {a}{reviewed}\n")),
            (Some(b), None) => out.push_str(&format!("- {name}: {b} → {none}{reviewed}\n")),
            (Some(b), Some(a)) => out.push_str(&format!("~ {name}: {b} → {a}{reviewed}\n")),
            (None, None) => {}
        }
    }
    for name in old.fields.keys().filter(|k| !new.fields.contains_key(*k)) {
        out.push_str(&format!("- {name}: no longer a target field\n"));
    }
    if out.is_empty() {
        out.push_str("  no changes\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{FieldMapping, MapperKind};

    fn doc(fields: &[(&str, Option<&str>)]) -> MappingDocument {
        MappingDocument {
            reviews: vec![],
            source: "s".into(),
            source_fingerprint: "f".into(),
            mapper: MapperKind::Heuristic,
            pinned: false,
            model: None,
            fields: fields
                .iter()
                .map(|(n, e)| {
                    (
                        n.to_string(),
                        FieldMapping {
                            expr: e.map(str::to_string),
                            ..FieldMapping::unmapped()
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn diff_names_every_kind_of_change() {
        let old = doc(&[
            ("a", Some("x")),
            ("b", Some("y")),
            ("c", None),
            ("d", Some("z")),
        ]);
        let new = doc(&[
            ("a", Some("x")),
            ("b", Some("y2")),
            ("c", Some("w")),
            ("d", None),
        ]);
        let d = diff(&old, &new);
        assert!(!d.contains("a:"), "{d}");
        assert!(d.contains("~ b: y → y2"), "{d}");
        assert!(d.contains("+ c: w"), "{d}");
        assert!(d.contains("- d: z → (unmapped)"), "{d}");
        // A reviewer's decision on the stored side is named beside its field.
        let mut reviewed = old.clone();
        reviewed.reviews.push(crate::mapping::ReviewEntry {
            field: "b".into(),
            by: "ana".into(),
            at: "2026-12-03T09:00:00Z".into(),
            change: "expr `y0` → `y`".into(),
        });
        let d = diff(&reviewed, &new);
        assert!(
            d.contains("~ b: y → y2  (stored side reviewed by ana at 2026-12-03T09:00:00Z: expr `y0` → `y`)"),
            "{d}"
        );
        assert!(!d.contains("+ c: w  (stored"), "{d}");
        assert_eq!(diff(&old, &old).trim(), "no changes");
    }

    #[test]
    fn table_lists_undecided_fields_first_and_counts_a_wide_targets_silent_ones() {
        let mut names: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
        names.push("later".into());
        let mut d = doc(&names
            .iter()
            .map(|n| (n.as_str(), None))
            .chain([("mapped", Some("\"a\""))])
            .collect::<Vec<_>>());
        d.fields["later"]
            .candidates
            .push(crate::mapping::Candidate {
                expr: "\"b\"".into(),
                sources: vec!["b".into()],
                score: 0.4,
                why: "column `b` matches by name".into(),
            });
        let t = table(&d);
        let rows: Vec<&str> = t.lines().collect();
        assert!(rows[1].trim_start().starts_with("later "), "{t}");
        assert!(rows[2].contains("or: b (0.40)"), "{t}");
        assert!(rows[3].trim_start().starts_with("mapped "), "{t}");
        assert!(rows[4].contains("30 more fields unmapped"), "{t}");
        assert_eq!(rows.len(), 5, "{t}");
    }

    #[test]
    fn table_shows_expressions_and_rejections() {
        let mut d = doc(&[("id", Some("CAST(\"ID\" AS BIGINT)")), ("x", None)]);
        d.fields["x"].error = Some("unknown column `q`".into());
        let t = table(&d);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("  id     ← CAST(\"ID\" AS BIGINT)"),
            "{t}"
        );
        assert!(
            t.contains("(unmapped)") && t.contains("REJECTED: unknown column"),
            "{t}"
        );
    }
}
