//! The review page, rendered on the server: plain HTML with its stylesheet and a small script
//! compiled into the binary, no build step and nothing fetched from elsewhere. The same
//! rendering serves the live page and the self-contained `--html` file.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Attention, Example, FieldReview, SourceReview};
use crate::mapping::llm::prompt::mask;

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
/// Fields needing attention shown unfolded at most; the rest are a click away.
pub const UNFOLDED: usize = 12;

/// How the page is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Served by `conform review`: decisions are sent back with this token.
    Served {
        /// The per-run token every request carries.
        token: &'a str,
    },
    /// A file written by `conform review --html`: read-only, everything inlined.
    Static {
        /// Sample values are masked (`llm.redact_samples`).
        redact: bool,
    },
}

impl Mode<'_> {
    fn redact(&self) -> bool {
        matches!(self, Mode::Static { redact: true })
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON for a `<script>` element's content: `<` escaped so that no value can end the element.
fn script_json(s: &str) -> String {
    s.replace('<', "\\u003c")
}

/// A whole page: one section per source (a source that could not be reviewed shows its error).
pub fn render(sources: &[(String, Result<SourceReview, String>)], mode: Mode<'_>) -> String {
    let mut out = String::new();
    let (mode_name, token) = match mode {
        Mode::Served { token } => ("served", token),
        Mode::Static { .. } => ("static", ""),
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>conform review</title><style>{STYLE}</style></head>\
         <body data-mode=\"{mode_name}\" data-token=\"{}\">\
         <header><h1>conform review</h1>\
         <input id=\"search\" type=\"search\" placeholder=\"Find a field by name\" aria-label=\"Find a field by name\">",
        esc(token)
    );
    if let Mode::Static { redact } = mode {
        let _ = write!(
            out,
            "<p class=\"note\">A read-only copy written by <code>conform review --html</code>{}. \
             Decisions are made on the page <code>conform review</code> serves.</p>",
            if redact {
                "; sample values are masked (<code>llm.redact_samples</code>)"
            } else {
                ""
            }
        );
    }
    out.push_str("</header><main>");
    if sources.len() > 1 {
        out.push_str("<nav class=\"sources\">");
        for (name, _) in sources {
            let _ = write!(out, "<a href=\"#source-{0}\">{0}</a> ", esc(name));
        }
        out.push_str("</nav>");
    }
    for (name, r) in sources {
        match r {
            Ok(review) => out.push_str(&section(review, mode)),
            Err(e) => {
                let _ = write!(
                    out,
                    "<section class=\"source failed\" id=\"source-{0}\" data-source=\"{0}\">\
                     <h2>{0}</h2><p class=\"error\" role=\"alert\">This source could not be reviewed: {1}</p></section>",
                    esc(name),
                    esc(e)
                );
            }
        }
    }
    let _ = writeln!(out, "</main><script>{SCRIPT}</script></body></html>");
    out
}

/// The self-contained page `conform review --html` writes.
pub fn render_static(sources: &[(String, Result<SourceReview, String>)], redact: bool) -> String {
    render(sources, Mode::Static { redact })
}

fn band(confidence: f64) -> (&'static str, &'static str) {
    if confidence >= super::LOW_CONFIDENCE {
        ("high", "band-high")
    } else if confidence >= crate::mapping::heuristic::ACCEPT {
        ("medium", "band-medium")
    } else {
        ("low", "band-low")
    }
}

fn shown(s: &Option<String>, redact: bool) -> String {
    match s {
        Some(v) if redact => esc(&mask(v)),
        Some(v) => esc(v),
        None => "<span class=\"null\">null</span>".to_string(),
    }
}

fn examples_table(examples: &[Example], redact: bool) -> String {
    if examples.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<table class=\"examples\"><thead><tr><th>source</th><th>mapped</th><th>check</th></tr></thead><tbody>",
    );
    for e in examples {
        let check = match &e.error {
            None => "<span class=\"ok\">valid</span>".to_string(),
            Some(_) if redact => "<span class=\"bad\">fails</span>".to_string(),
            Some(m) => format!("<span class=\"bad\">{}</span>", esc(m)),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{check}</td></tr>",
            shown(&e.source, redact),
            shown(&e.mapped, redact)
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// One source's section: summary, fields in attention order, invalid rows.
pub fn section(review: &SourceReview, mode: Mode<'_>) -> String {
    let redact = mode.redact();
    let base = &review.base;
    let name = esc(&base.source);
    let mut out = String::new();
    let rows = review.rows();
    let valid = review.run.valid_rows();
    let pinned = review.base.document.pinned;
    let origin = if base.stored {
        if pinned {
            "the pinned document"
        } else {
            "the stored document"
        }
    } else {
        "a new proposal (not written)"
    };
    let _ = write!(
        out,
        "<section class=\"source\" id=\"source-{name}\" data-source=\"{name}\" data-base=\"{}\">\
         <h2>{name}</h2><p class=\"doc\">Reviewing {origin} by the <b>{}</b> mapper · document <code>{}</code></p>\
         <dl class=\"summary\"><div><dt>fields mapped</dt><dd class=\"mapped\">{} of {}</dd></div>\
         <div><dt>mean confidence</dt><dd>{:.2}</dd></div>\
         <div><dt>sample rows</dt><dd class=\"rows\">{rows}</dd></div>\
         <div><dt>valid</dt><dd class=\"valid\">{valid}</dd></div>\
         <div><dt>invalid</dt><dd class=\"invalid-count\">{}</dd></div></dl>",
        esc(&base.version),
        review.document.mapper.as_str(),
        esc(&base.path.display().to_string()),
        review.mapped(),
        review.fields.len(),
        review.mean_confidence(),
        rows - valid,
    );
    if !review.decisions.is_empty() {
        let _ = write!(
            out,
            "<p class=\"pending\">{} decision(s) applied to the sample, not yet pinned.</p>",
            review.decisions.len()
        );
    }
    out.push_str(
        "<div class=\"actions\"><button class=\"act apply\" type=\"button\">Apply</button>\
         <button class=\"act pin\" type=\"button\">Pin</button>\
         <span class=\"status\" role=\"status\" aria-live=\"polite\"></span></div>",
    );
    // Counts per band of attention.
    let mut counts: BTreeMap<Attention, usize> = BTreeMap::new();
    for f in &review.fields {
        *counts.entry(f.attention).or_default() += 1;
    }
    out.push_str("<p class=\"bands\">");
    for (a, n) in &counts {
        let _ = write!(
            out,
            "<span class=\"att att-{}\">{}: {n}</span> ",
            a.label().replace(' ', "-"),
            a.label()
        );
    }
    out.push_str("</p><div class=\"fields\">");
    // The first fields that need a look are unfolded; on a wide target the rest wait folded.
    let mut unfold = UNFOLDED;
    for f in &review.fields {
        let open = f.decision.is_some()
            || (unfold > 0
                && matches!(
                    f.attention,
                    Attention::Undecided
                        | Attention::LowConfidence
                        | Attention::Unplaced
                        | Attention::Failing
                ));
        if open && f.decision.is_none() {
            unfold -= 1;
        }
        out.push_str(&field(f, redact, open));
    }
    out.push_str("</div>");
    out.push_str(&invalid(
        review,
        redact,
        matches!(mode, Mode::Static { .. }),
    ));
    out.push_str("</section>");
    out
}

fn field(f: &FieldReview, redact: bool, open: bool) -> String {
    let mut out = String::new();
    let m = &f.mapping;
    let (band_name, band_class) = band(m.confidence);
    let att = f.attention.label().replace(' ', "-");
    let current = serde_json::to_string(&m.expr).expect("an expression serialises");
    let decision = f
        .decision
        .as_ref()
        .map(|d| serde_json::to_string(d).expect("a decision serialises"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<details class=\"field needs-{att}{}\" data-field=\"{}\" data-current=\"{}\" data-decision=\"{}\"{}>\
         <summary><span class=\"name\">{}</span> <span class=\"att att-{att}\">{}</span>",
        if f.decision.is_some() { " decided" } else { "" },
        esc(&f.name),
        esc(&current),
        esc(&decision),
        if open { " open" } else { "" },
        esc(&f.name),
        f.attention.label(),
    );
    if m.expr.is_some() {
        let _ = write!(
            out,
            " <span class=\"band {band_class}\" title=\"confidence\">{band_name} {:.2}</span> <code class=\"expr\">{}</code>",
            m.confidence,
            esc(m.expr.as_deref().unwrap_or_default())
        );
    } else if let Some(c) = m.candidates.first() {
        let _ = write!(
            out,
            " <span class=\"hint\">best candidate <code>{}</code> ({:.2})</span>",
            esc(&c.expr),
            c.score
        );
    }
    if f.failing > 0 {
        let _ = write!(out, " <span class=\"bad\">{} failing</span>", f.failing);
    }
    out.push_str("</summary><div class=\"body\">");
    let _ = write!(
        out,
        "<p class=\"meta\"><b>{}</b>{}{}</p>",
        esc(&f.kind),
        if f.required { " · required" } else { "" },
        f.description
            .as_deref()
            .map(|d| format!(" · {}", esc(d)))
            .unwrap_or_default()
    );
    if !f.allowed.is_empty() {
        let list: Vec<String> = f.allowed.iter().take(40).map(|v| esc(v)).collect();
        let more = f.allowed.len().saturating_sub(40);
        let _ = write!(
            out,
            "<p class=\"enum\">allowed: {}{}</p>",
            list.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    if !m.rationale.is_empty() {
        let _ = write!(out, "<p class=\"rationale\">{}</p>", esc(&m.rationale));
    }
    if let Some(e) = &m.error {
        let _ = write!(out, "<p class=\"error\">rejected: {}</p>", esc(e));
    }
    out.push_str(&examples_table(&f.examples, redact));
    if !f.reasons.is_empty() && !redact {
        out.push_str("<ul class=\"reasons\">");
        for (r, n) in f.reasons.iter().take(5) {
            let _ = write!(out, "<li>{} × {n}</li>", esc(r));
        }
        out.push_str("</ul>");
    }
    if !f.candidates.is_empty() {
        out.push_str("<h4>Candidates</h4>");
        out.push_str(&candidates(&f.name, &f.candidates, redact));
    }
    if !f.value_table.is_empty() {
        let corrections = f.decision.as_ref().map(|d| &d.values);
        out.push_str(
            "<h4>Value table</h4><table class=\"values\"><thead><tr><th>source value</th><th>rows</th>\
             <th>becomes</th><th>correct to</th></tr></thead><tbody>",
        );
        for v in &f.value_table {
            let chosen = corrections.and_then(|c| c.get(&v.value));
            let mut select = format!(
                "<select class=\"act correct\" data-value=\"{}\" aria-label=\"correct {}\"><option value=\"\">(as mapped)</option>",
                esc(&v.value),
                esc(&v.value)
            );
            for a in &f.allowed {
                let _ = write!(
                    select,
                    "<option{}>{}</option>",
                    if chosen == Some(a) { " selected" } else { "" },
                    esc(a)
                );
            }
            select.push_str("</select>");
            let _ = write!(
                out,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{select}</td></tr>",
                if v.placed { "placed" } else { "unplaced" },
                shown(&Some(v.value.clone()), redact),
                v.count,
                shown(&v.mapped, redact),
            );
        }
        out.push_str("</tbody></table>");
    }
    if !m.unplaced_values.is_empty() {
        let list: Vec<String> = m
            .unplaced_values
            .iter()
            .map(|v| shown(&Some(v.clone()), redact))
            .collect();
        let _ = write!(
            out,
            "<p class=\"unplaced\">the mapper could not place: {}</p>",
            list.join(", ")
        );
    }
    let _ = write!(
        out,
        "<div class=\"decide\"><label>Expression <textarea class=\"act edit\" rows=\"2\" spellcheck=\"false\">{}</textarea></label>\
         <p class=\"compile\" aria-live=\"polite\">{}</p>\
         <button class=\"act unmap\" type=\"button\">Leave unmapped</button> \
         <label><input class=\"act reviewed\" type=\"checkbox\"{}> reviewed</label></div>",
        esc(f
            .decision
            .as_ref()
            .map(|d| d.expr.as_deref())
            .unwrap_or(m.expr.as_deref())
            .unwrap_or_default()),
        f.decision_error
            .as_deref()
            .map(|e| format!("<span class=\"bad\">{}</span>", esc(e)))
            .unwrap_or_default(),
        if f.decision.as_ref().is_some_and(|d| d.reviewed) {
            " checked"
        } else {
            ""
        }
    );
    out.push_str("</div></details>");
    out
}

/// A field's ranked candidates; when some were not run on the sample yet, the list says so
/// and the page fetches it run (`/api/candidates`) when the field is unfolded.
pub fn candidates(field: &str, list: &[super::CandidateReview], redact: bool) -> String {
    let lazy = list.iter().any(|c| !c.sampled);
    let mut out = format!(
        "<ol class=\"candidates\"{}>",
        if lazy {
            format!(" data-lazy=\"{}\"", esc(field))
        } else {
            String::new()
        }
    );
    for c in list {
        let _ = write!(
            out,
            "<li><code class=\"expr\">{}</code> <span class=\"score\">{:.2}</span> {}\
             <button class=\"act use\" type=\"button\" data-expr=\"{}\">Use</button>",
            esc(&c.candidate.expr),
            c.candidate.score,
            if c.failing > 0 {
                format!("<span class=\"bad\">{} failing</span>", c.failing)
            } else {
                String::new()
            },
            esc(&c.candidate.expr),
        );
        if !c.candidate.why.is_empty() {
            let _ = write!(out, "<p class=\"why\">{}</p>", esc(&c.candidate.why));
        }
        if let Some(e) = &c.error {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(e));
        }
        out.push_str(&examples_table(&c.examples, redact));
        out.push_str("</li>");
    }
    if lazy {
        out.push_str("<li class=\"later\">sample rows of these candidates are run when the field is unfolded</li>");
    }
    out.push_str("</ol>");
    out
}

/// Invalid rows of the sample grouped by field and rule, with filters and a download.
fn invalid(review: &SourceReview, redact: bool, inline: bool) -> String {
    let mut groups: BTreeMap<(String, String), (usize, Vec<String>)> = BTreeMap::new();
    for row in &review.run.invalid {
        for e in &row.errors {
            let field = e.field.clone().unwrap_or_else(|| "(record)".to_string());
            let g = groups.entry((field, e.rule.clone())).or_default();
            g.0 += 1;
            let example = if redact {
                format!("row {}", row.row)
            } else {
                e.message.clone()
            };
            if g.1.len() < 3 && !g.1.contains(&example) {
                g.1.push(example);
            }
        }
    }
    let mut out = format!(
        "<div class=\"invalid\"><h3>Invalid rows of the sample ({})</h3>",
        review.run.invalid.len()
    );
    if groups.is_empty() {
        out.push_str("<p>Every sample row passes.</p></div>");
        return out;
    }
    let mut fields: Vec<&str> = groups.keys().map(|(f, _)| f.as_str()).collect();
    fields.dedup();
    let mut rules: Vec<&str> = groups.keys().map(|(_, r)| r.as_str()).collect();
    rules.sort();
    rules.dedup();
    out.push_str("<p class=\"filters\"><label>field <select class=\"by-field\"><option value=\"\">all</option>");
    for f in &fields {
        let _ = write!(out, "<option>{}</option>", esc(f));
    }
    out.push_str("</select></label> <label>reason <select class=\"by-reason\"><option value=\"\">all</option>");
    for r in &rules {
        let _ = write!(out, "<option>{}</option>", esc(r));
    }
    out.push_str(
        "</select></label> <button class=\"download\" type=\"button\">Download invalid rows (NDJSON)</button></p>\
         <table class=\"groups\"><thead><tr><th>field</th><th>reason</th><th>rows</th><th>examples</th></tr></thead><tbody>",
    );
    for ((f, r), (n, examples)) in &groups {
        let ex: Vec<String> = examples.iter().map(|e| esc(e)).collect();
        let _ = write!(
            out,
            "<tr data-field=\"{0}\" data-reason=\"{1}\"><td>{0}</td><td>{1}</td><td>{n}</td><td>{2}</td></tr>",
            esc(f),
            esc(r),
            ex.join("<br>")
        );
    }
    out.push_str("</tbody></table>");
    // A static page carries its rows; the served page asks for them (`/api/invalid`), which
    // keeps a wide source's page light.
    if inline {
        let _ = write!(
            out,
            "<script type=\"application/x-ndjson\" class=\"invalid-rows\">{}</script>",
            script_json(&invalid_ndjson(review, redact))
        );
    }
    out.push_str("</div>");
    out
}

/// The sample's invalid rows as NDJSON, the lines of a run's invalid output.
pub fn invalid_ndjson(review: &SourceReview, redact: bool) -> String {
    let mut ndjson = Vec::new();
    for row in &review.run.invalid {
        if redact {
            let mut v = serde_json::to_value(row).unwrap_or_default();
            redact_value(&mut v);
            ndjson.extend_from_slice(v.to_string().as_bytes());
        } else {
            row.write_json(&mut ndjson);
        }
        ndjson.push(b'\n');
    }
    String::from_utf8_lossy(&ndjson).into_owned()
}

/// Masks every string of a redacted invalid row but the provenance and rule names.
fn redact_value(v: &mut serde_json::Value) {
    if let Some(record) = v.get_mut("record").and_then(|r| r.as_object_mut()) {
        for x in record.values_mut() {
            if let serde_json::Value::String(s) = x {
                *s = mask(s);
            } else if !x.is_null() {
                *x = serde_json::Value::String(mask(&x.to_string()));
            }
        }
    }
    if let Some(raw) = v.get_mut("raw") {
        *raw = serde_json::Value::Null;
    }
    if let Some(errors) = v.get_mut("errors").and_then(|e| e.as_array_mut()) {
        for e in errors {
            if let Some(m) = e.get_mut("message") {
                *m = serde_json::Value::String("(masked)".to_string());
            }
        }
    }
}
