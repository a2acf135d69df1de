//! `conform explain`: the compiled projection and validation of a source as SQL text.

use datafusion::prelude::Expr;
use datafusion::sql::unparser::expr_to_sql;

use crate::pipeline::PreparedSource;

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
        "-- source `{}` ({} file(s), {:?})\n",
        p.source.name(),
        p.source.files().len(),
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
