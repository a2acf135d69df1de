//! The offline mapper: a ranked matcher over names, descriptions and values, no network.
//!
//! For every target field it scores every source column (`evidence.rs`): name evidence (tokens,
//! synonyms, acronyms, abbreviations), description evidence (the field's title/description,
//! weighted by how rare its words are among the target's fields) and value evidence (type,
//! date formats, `format`, `pattern`, `enum` with a value table, `examples`, ranges, emptiness,
//! constants, the shape the field's role expects). Vetoes come first: values that contradict the
//! field rule the column out whatever its name. Assignment then takes the best pairs greedily —
//! one column per field, a column serving two fields only when both pairs are strong — and a
//! field stays unmapped below a threshold. Each field's mapping keeps its next best columns as
//! ranked `candidates`, and the conversion the sample calls for (`convert.rs`).

mod calibrate;
pub use calibrate::calibrate_document;
mod convert;
mod evidence;
mod fit;
mod values;
mod wide;

use futures::future::BoxFuture;
use indexmap::IndexMap;

use self::convert::{as_text, conversion};
use self::evidence::{
    ColumnFacts, FieldFacts, Rarity, Role, column_description_score, contained, description_score,
    name_score, shares_token, unexplained,
};
use self::fit::{CONSTANT, ValueEvidence, value_evidence};
use super::names::{token_list_similarity, tokens};
use super::{
    Candidate, FieldMapping, Mapper, MapperKind, MappingDocument, MappingRequest, Proposal,
    fingerprint,
};
use crate::error::Result;
use crate::schema::{FieldKind, TargetField};
use crate::source::{ColumnProfile, ValueShape};
use crate::sql::quote;

/// A pair scoring at least this maps the field: the lowest `min_confidence` that has an
/// effect.
pub const ACCEPT: f64 = 0.5;
/// The lowest confidence the matcher gives a field it maps on a target of `fields` fields:
/// its acceptance score, calibrated for that width. A `min_confidence` below it holds nothing.
pub fn lowest_confidence(fields: usize) -> f64 {
    calibrate::Width::of(fields).calibrated(ACCEPT, calibrate::BY_FIELD_DESCRIPTION)
}

/// A column feeds several fields only when every pair scores at least this.
const SHARE: f64 = 0.7;
/// Name evidence of a column naming the same end of a span as the field (`stop` ~ `end`).
const SAME_END: f64 = 0.6;
/// What name and description evidence keep when the column names the other end of the span.
const OTHER_END: f64 = 0.4;
/// What a field nested inside its table keeps of its score, per level.
const NESTED: f64 = 0.85;
/// Alternatives kept per field in the document.
const ALTERNATIVES: usize = 3;
/// Pairs below this are not worth showing as alternatives.
const SHOW: f64 = 0.25;
/// Unplaced source values listed per field in the document.
const UNPLACED_SHOWN: usize = 20;
/// A column whose name is the field's (name evidence at least this) is never ruled out by
/// values spelled differently from the field's enum: the values go through a value table.
const NAMES_THE_FIELD: f64 = 0.9;

/// The offline heuristic mapper.
#[derive(Debug, Default, Clone)]
pub struct HeuristicMapper;

impl Mapper for HeuristicMapper {
    fn kind(&self) -> MapperKind {
        MapperKind::Heuristic
    }

    fn map<'a>(&'a self, request: &'a MappingRequest<'a>) -> BoxFuture<'a, Result<Proposal>> {
        Box::pin(async move {
            Ok(Proposal {
                document: self.map_now(request),
                llm: None,
            })
        })
    }
}

/// One scored (field, column) pair.
#[derive(Debug, Clone)]
struct Pair {
    score: f64,
    column: usize,
    /// The pair rests on the values, not the name.
    value_led: bool,
    /// The column's words are all words of the field's name, and its values fit well: such
    /// a column may feed several fields (`age` → `age_at_diagnosis`, `age_at_index`).
    shareable: bool,
    /// What the name or description says (`matches by name`).
    by: &'static str,
    values: ValueEvidence,
}

/// Scores one pair; `None` when the values rule the column out or nothing points to it.
fn score(f: &FieldFacts<'_>, c: &ColumnFacts<'_>, rarity: &Rarity, ci: usize) -> Option<Pair> {
    let mut name = name_score(f, c, rarity);
    let mut desc = description_score(f, c, rarity);
    // What the source says about the column weighs like the target's description.
    let described = column_description_score(f, c, rarity);
    let by_column_description = described > desc && described > name;
    desc = desc.max(described);
    match (span_end(&f.name_words), span_end(&c.name_words)) {
        // `STOP` for `condition_end_date`: the same end of a span, said another way.
        (Some(a), Some(b)) if a == b => name = name.max(SAME_END),
        // `START` for `condition_end_date`, whatever the description says about start dates.
        (Some(_), Some(_)) => {
            name *= OTHER_END;
            desc *= OTHER_END;
        }
        _ => {}
    }
    let lex = name.max(desc);
    // Value evidence is what can identify a column whose name says nothing; skip computing it
    // when neither the name nor the field's constraints could lead anywhere.
    let value_led_possible = f.enums.is_some()
        || f.field.constraints.pattern.is_some()
        || f.field.schema.get("examples").is_some()
        || f.field.constraints.format.is_some()
        || matches!(f.field.kind, FieldKind::Date | FieldKind::DateTime)
        || f.role == Role::Url
        || f.generic_role;
    if lex < SHOW / 2.0 && !value_led_possible {
        return None;
    }
    let mut v = value_evidence(f, c);
    if v.veto && v.note == fit::NOT_ALLOWED_VALUES && name >= NAMES_THE_FIELD {
        // The column names the field; its values are spelled another way (synonyms, codes
        // with labels, a missing qualifier). The name match stands, lowered, and the value
        // table maps what it can and names the rest.
        v.veto = false;
        v.fit = 0.3;
        v.note = "values are spelled differently from the field's allowed values";
    }
    if v.veto && v.note == CONSTANT && name >= 0.99 {
        // A constant under the field's own name is a sample that happens to hold one value
        // (`country` = `USA` throughout), not a resource-level label.
        v.veto = false;
        v.fit = 0.5;
        v.note = "";
    }
    if v.veto {
        return None;
    }
    let value_led = lex < ACCEPT;
    let mut s = if !value_led {
        0.7 * lex + 0.3 * v.fit
    } else if v.strong {
        0.35 + 0.3 * v.fit + 0.3 * lex
    } else {
        0.6 * lex + 0.2 * v.fit
    };
    if lex < 0.9 && unexplained(f, c) {
        // A word of the column that neither the field's name nor its description mentions
        // (`fat` in `Fat_fraction` against a count of radiation fractions).
        s *= 0.8;
    }
    if f.untyped && lex < 0.65 && !v.strong && !shares_token(f, c) {
        // Any value fits an unconstrained text field, so a weak partial name match is noise.
        s = s.min(ACCEPT - 0.05);
    }
    if c.metadata && lex < 0.9 {
        s *= 0.7;
    }
    if f.depth > 0 {
        // A column of a table's row is first the table's own element (`CarePlan.title`), then
        // one of an element's parts (`CarePlan.activity.detail.description`): a nested field
        // wins only on clearly better evidence, and shares no column with its table's own.
        s *= NESTED.powi(f.depth.min(3) as i32);
    }
    tracing::trace!(
        field = %f.field.name,
        column = %c.profile.name,
        name,
        desc,
        fit = v.fit,
        strong = v.strong,
        note = v.note,
        score = s,
        "Scored a pair."
    );
    let by = if by_column_description && desc > name && desc >= ACCEPT {
        "is described as the field"
    } else if desc > name && desc >= ACCEPT {
        calibrate::BY_FIELD_DESCRIPTION
    } else if lex >= ACCEPT {
        "matches by name"
    } else {
        "is identified by its values"
    };
    (s >= SHOW).then_some(Pair {
        score: (s.min(1.0) * 100.0).round() / 100.0,
        column: ci,
        value_led: value_led && v.strong,
        shareable: contained(f, c) && v.fit >= 0.9 && s >= SHARE,
        by,
        values: v,
    })
}

/// Which end of a span a name's words speak of: `Some(false)` for its start (`start`, `begin`,
/// `onset`), `Some(true)` for its end (`end`, `stop`, `finish`); `None` for neither, or both.
fn span_end(words: &[String]) -> Option<bool> {
    let start = words
        .iter()
        .any(|w| matches!(w.as_str(), "start" | "begin" | "beginning" | "onset"));
    let end = words
        .iter()
        .any(|w| matches!(w.as_str(), "end" | "stop" | "finish" | "ending"));
    match (start, end) {
        (true, false) => Some(false),
        (false, true) => Some(true),
        _ => None,
    }
}

/// A field's pairs in rank order: best score first, ties in column order.
fn best_first(ps: &mut [Pair]) {
    ps.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.column.cmp(&b.column)));
}

impl Pair {
    /// The evidence in words, for the rationale.
    fn why(&self, columns: &[ColumnFacts<'_>]) -> String {
        let name = &columns[self.column].profile.name;
        if self.values.note.is_empty() {
            format!("column `{name}` {}", self.by)
        } else {
            format!("column `{name}` {}; {}", self.by, self.values.note)
        }
    }
}

impl HeuristicMapper {
    /// Maps without awaiting anything.
    pub fn map_now(&self, req: &MappingRequest<'_>) -> MappingDocument {
        let mut doc = self.map_evidence(req);
        calibrate::calibrate_document(&mut doc, req.target.fields.len());
        doc
    }

    /// The mapping with the pairs' evidence scores as they are, before they become
    /// confidences for the target's width: what the ranking and the assignment use, and what
    /// a model choosing among the matcher's candidates is shown (column by column).
    pub fn map_evidence(&self, req: &MappingRequest<'_>) -> MappingDocument {
        // On a target made of tables, the tables' names are the groups' evidence and each
        // field is named within its table.
        let group_of = wide::groups(req.target.fields.iter().map(|f| f.name.as_str()));
        let fields: Vec<FieldFacts<'_>> = req
            .target
            .fields
            .iter()
            .map(|f| match (&group_of, f.name.split_once('.')) {
                (Some(_), Some((_, local))) => FieldFacts {
                    depth: local.matches('.').count(),
                    ..FieldFacts::named(f, local)
                },
                _ => FieldFacts::of(f),
            })
            .collect();
        let columns: Vec<ColumnFacts<'_>> = req.profiles.iter().map(ColumnFacts::of).collect();
        let rarity = Rarity::of(&fields);
        // Ranked pairs per field, best first.
        let mut ranked: Vec<Vec<Pair>> = fields
            .iter()
            .map(|f| {
                let mut ps: Vec<Pair> = columns
                    .iter()
                    .enumerate()
                    .filter_map(|(ci, c)| score(f, c, &rarity, ci))
                    .collect();
                best_first(&mut ps);
                ps.truncate(ALTERNATIVES + 4);
                ps
            })
            .collect();
        // On a target made of tables, a column's pairs outside the table it belongs to are
        // lowered, and fields of tables the source does not fill take nothing by elimination.
        let named: Vec<bool> = group_of
            .as_ref()
            .map(|g| wide::named_by_source(&g.keys, req.source))
            .unwrap_or_default();
        let active: Vec<bool> = match &group_of {
            Some(g) => {
                let active = wide::focus(&g.of, &named, columns.len(), &mut ranked);
                g.of.iter().map(|g| g.is_none_or(|g| active[g])).collect()
            }
            None => vec![true; fields.len()],
        };
        let mut chosen = assign(&fields, &columns, &ranked, &active);
        // A table that ends up with one column of a source that fills another table more is a
        // stray match: lowered, and assigned once more without it.
        if let Some(g) = &group_of
            && wide::strays(&g.of, &named, &chosen, &mut ranked)
        {
            chosen = assign(&fields, &columns, &ranked, &active);
        }
        let mut used = vec![false; columns.len()];
        for c in chosen.iter().flatten() {
            used[c.column] = true;
        }
        // On a target made of tables, the unmapped name field of the table the source fills
        // most (if one table leads) may join name parts that stray matches elsewhere took.
        let name_target = group_of.as_ref().map(|g| &g.of).and_then(|g| {
            let filled = |gi: usize| {
                (0..fields.len())
                    .filter(|&j| chosen[j].is_some() && g[j] == Some(gi))
                    .count()
            };
            let mut named: Vec<(usize, usize)> = (0..fields.len())
                .filter(|&fi| {
                    chosen[fi].is_none()
                        && active[fi]
                        && matches!(fields[fi].tokens.as_slice(), [n] if n == "name")
                })
                .filter_map(|fi| g[fi].map(|gi| (filled(gi), fi)))
                .collect();
            named.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
            match named.as_slice() {
                [(n, fi), rest @ ..] if *n > 0 && rest.first().is_none_or(|r| r.0 < *n) => {
                    Some(*fi)
                }
                _ => None,
            }
        });
        let mut out = IndexMap::new();
        for (fi, f) in fields.iter().enumerate() {
            let t = f.field;
            let alternatives = |skip: Option<usize>| -> Vec<Candidate> {
                ranked[fi]
                    .iter()
                    .filter(|p| Some(p.column) != skip)
                    .take(ALTERNATIVES)
                    .map(|p| {
                        let col = columns[p.column].profile;
                        Candidate {
                            expr: conversion(t, col, p.values.table.as_ref()).0,
                            sources: vec![col.name.clone()],
                            score: p.score,
                            why: p.why(&columns),
                        }
                    })
                    .collect()
            };
            let m = match &chosen[fi] {
                Some(p) => {
                    let col = columns[p.column].profile;
                    let table = p.values.table.as_ref();
                    let (expr, how) = conversion(t, col, table);
                    let shared = chosen
                        .iter()
                        .enumerate()
                        .filter(|(i, o)| {
                            *i != fi && o.as_ref().is_some_and(|o| o.column == p.column)
                        })
                        .map(|(i, _)| fields[i].field.name.as_str())
                        .collect::<Vec<_>>();
                    let also = if shared.is_empty() {
                        String::new()
                    } else {
                        format!(" (the column also feeds `{}`)", shared.join("`, `"))
                    };
                    FieldMapping {
                        expr: Some(expr.clone()),
                        sources: vec![col.name.clone()],
                        confidence: p.score,
                        rationale: format!("{}; {how}{also}", p.why(&columns)),
                        value_coverage: table
                            .filter(|tab| expr.starts_with("CASE") || !tab.unmatched.is_empty())
                            .map(|t| (t.coverage * 100.0).round() / 100.0),
                        unplaced_values: table
                            .map(|t| t.unmatched.iter().take(UNPLACED_SHOWN).cloned().collect())
                            .unwrap_or_default(),
                        candidates: alternatives(Some(p.column)),
                        ..FieldMapping::unmapped()
                    }
                }
                // On a target made of tables only the name field of the table the source
                // fills is built from name parts; the parts then serve no other name field.
                None => match full_name(t, req.profiles, &used, name_target == Some(fi))
                    .filter(|_| group_of.is_none() || name_target == Some(fi))
                {
                    Some(m) => {
                        for (i, p) in req.profiles.iter().enumerate() {
                            if m.sources.contains(&p.name) {
                                used[i] = true;
                            }
                        }
                        m
                    }
                    None => FieldMapping {
                        rationale: "no source column matches this field by name or values".into(),
                        candidates: alternatives(None),
                        ..FieldMapping::unmapped()
                    },
                },
            };
            let m = match address_parts(f, &m, req.profiles) {
                Some((joined, parts)) => {
                    for p in &parts {
                        used[*p] = true;
                    }
                    joined
                }
                None => m,
            };
            out.insert(t.name.clone(), m);
        }
        MappingDocument {
            reviews: vec![],
            source: req.source.to_string(),
            source_fingerprint: fingerprint(&req.source_schema),
            mapper: MapperKind::Heuristic,
            pinned: false,
            model: None,
            fields: out,
        }
    }
}

/// The best consistent set of pairs: greedily by score, one column per field; a column serves
/// a second field only when both pairs are strong; a field identified by values alone is left
/// unmapped when another column's values identify it as well.
fn assign(
    fields: &[FieldFacts<'_>],
    columns: &[ColumnFacts<'_>],
    ranked: &[Vec<Pair>],
    active: &[bool],
) -> Vec<Option<Pair>> {
    let mut all: Vec<(usize, &Pair)> = ranked
        .iter()
        .enumerate()
        .flat_map(|(fi, ps)| ps.iter().map(move |p| (fi, p)))
        .filter(|(_, p)| p.score >= ACCEPT)
        .collect();
    all.sort_by(|a, b| {
        b.1.score
            .total_cmp(&a.1.score)
            .then(a.0.cmp(&b.0))
            .then(a.1.column.cmp(&b.1.column))
    });
    let mut chosen: Vec<Option<Pair>> = vec![None; fields.len()];
    let mut users: Vec<Vec<bool>> = vec![Vec::new(); columns.len()];
    for (fi, p) in all {
        if chosen[fi].is_some() {
            continue;
        }
        let free = users[p.column].is_empty();
        let shareable = p.shareable && users[p.column].iter().all(|shared| *shared);
        if !free && !shareable {
            continue;
        }
        if p.value_led {
            // Values alone pick a column only when no other free column's values fit as well.
            let rival = ranked[fi].iter().any(|q| {
                q.column != p.column
                    && q.value_led
                    && users[q.column].is_empty()
                    && q.score >= p.score - 0.05
            });
            // Nor when its values fit another field just as well, with nothing else to tell
            // them apart: yes/no values fit every yes/no field of a wide target, and identify
            // none of them.
            let rival_field = ranked.iter().enumerate().any(|(fj, qs)| {
                fj != fi
                    && chosen[fj].is_none()
                    && qs
                        .iter()
                        .any(|q| q.column == p.column && q.value_led && q.score >= p.score)
            });
            if rival || rival_field {
                continue;
            }
        }
        users[p.column].push(p.shareable);
        chosen[fi] = Some(p.clone());
    }
    // A boolean or date field still unmapped takes the one remaining column of that kind,
    // when it is the one field of that kind left: among several, nothing says which.
    let kind = |f: &FieldFacts<'_>| match f.field.kind {
        FieldKind::Boolean => Some(true),
        FieldKind::Date | FieldKind::DateTime => Some(false),
        _ => None,
    };
    let left = |k: Option<bool>, chosen: &[Option<Pair>]| {
        (0..fields.len())
            .filter(|&fj| chosen[fj].is_none() && active[fj] && kind(&fields[fj]) == k)
            .count()
    };
    for (fi, f) in fields.iter().enumerate() {
        if chosen[fi].is_some() || !active[fi] || kind(f).is_none() || left(kind(f), &chosen) > 1 {
            continue;
        }
        let kind_fits = |c: &ColumnFacts<'_>| match f.field.kind {
            FieldKind::Boolean => matches!(c.profile.shape, ValueShape::Boolean),
            FieldKind::Date | FieldKind::DateTime => matches!(
                c.profile.shape,
                ValueShape::Date { .. } | ValueShape::DateTime { .. }
            ),
            _ => false,
        };
        let free: Vec<usize> = (0..columns.len())
            .filter(|&ci| users[ci].is_empty() && !columns[ci].metadata && kind_fits(&columns[ci]))
            .collect();
        if let [only] = free.as_slice() {
            let c = &columns[*only];
            let lex = token_list_similarity(&f.tokens, &c.tokens);
            let values = value_evidence(f, c);
            if values.veto {
                continue;
            }
            users[*only].push(false);
            chosen[fi] = Some(Pair {
                score: ((0.5 + 0.3 * lex) * 100.0).round() / 100.0,
                column: *only,
                value_led: true,
                shareable: false,
                by: "is the only column whose values fit",
                values: ValueEvidence { note: "", ..values },
            });
        }
    }
    chosen
}

/// Fill-ins for a mapped field whose conversion loses values: `coalesce(current, other)` over
/// unused columns of the same kind as the current one — the same value shape, and shared values
/// or a closely related name — whose name relates to the field (at most 3, best first).
/// Unrelated columns are never merged into a field.
pub fn fill_ins(
    t: &TargetField,
    current: &str,
    current_column: &str,
    profiles: &[ColumnProfile],
    used: &[&str],
) -> Vec<(String, String)> {
    let Some(cur) = profiles.iter().find(|p| p.name == current_column) else {
        return vec![];
    };
    let f = FieldFacts::of(t);
    let cur_values: std::collections::HashSet<String> = cur
        .top_values
        .iter()
        .map(|(v, _)| values::normalise(v))
        .collect();
    let same_shape =
        |p: &ColumnProfile| std::mem::discriminant(&p.shape) == std::mem::discriminant(&cur.shape);
    let mut scored: Vec<(f64, &ColumnProfile)> = profiles
        .iter()
        .filter(|p| !used.contains(&p.name.as_str()) && p.name != cur.name && p.non_blank > 0)
        .filter(|p| same_shape(p))
        .filter_map(|p| {
            let c = ColumnFacts::of(p);
            if c.metadata || value_evidence(&f, &c).veto {
                return None;
            }
            let overlap = p
                .top_values
                .iter()
                .filter(|(v, _)| cur_values.contains(&values::normalise(v)))
                .count() as f64
                / p.top_values.len().max(1) as f64;
            // The field's words all in the column's name, and values that identify the field
            // (`contact_email` for `email`), or values shared with the current column.
            let names_it = f.tokens.iter().all(|t| c.tokens.contains(t));
            let name = name_score(&f, &c, &Rarity::none());
            let kind = overlap >= 0.2 || (names_it && value_evidence(&f, &c).strong);
            (name >= ACCEPT && kind).then_some((name * 0.6 + overlap * 0.4, p))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(3)
        .map(|(_, p)| {
            let (expr, how) = conversion(t, p, None);
            (
                format!("coalesce({current}, {expr})"),
                format!(
                    "values lost: filled from column `{}` of the same kind ({how})",
                    p.name
                ),
            )
        })
        .collect()
}

/// An enum field's value table over `column`, with `extra` entries (source value → allowed
/// value, from a model or a reviewer) added for values the offline matching leaves out: the
/// `CASE` expression (None when no value needs translating), the share of the sample's values
/// it covers, and the values still unmatched. None when the field has no string enum.
pub fn enum_table(
    t: &TargetField,
    column: &ColumnProfile,
    extra: &[(String, String)],
) -> Option<(Option<String>, f64, Vec<String>)> {
    let index = values::EnumIndex::of(t).filter(values::EnumIndex::strings)?;
    let norm: Vec<String> = column
        .top_values
        .iter()
        .map(|(v, _)| values::normalise(v))
        .collect();
    let mut tab = values::table(&index, column, &norm, &values::Affix::of(column));
    let total = column.non_blank.max(1) as f64;
    let mut still = Vec::new();
    for v in std::mem::take(&mut tab.unmatched) {
        match extra.iter().find(|(from, _)| *from == v) {
            Some((_, to))
                if index
                    .allowed
                    .iter()
                    .any(|a| a.as_str() == Some(to.as_str())) =>
            {
                let n = column
                    .top_values
                    .iter()
                    .find(|(x, _)| *x == v)
                    .map_or(0, |(_, n)| *n);
                tab.coverage += n as f64 / total;
                tab.entries.push((v, serde_json::Value::String(to.clone())));
            }
            _ => still.push(v),
        }
    }
    let expr = convert::value_case(&format!("clean({})", quote(&column.name)), &tab);
    Some((expr, tab.coverage.min(1.0), still))
}

/// The parts of an address a source keeps in columns of their own, in the order an address is
/// written; each is recognised by a word of the column's name.
const ADDRESS_PARTS: &[&[&str]] = &[
    &["city", "town", "municipality"],
    &["county", "district"],
    &["state", "province"],
    &["zip", "zipcode", "postal", "postcode", "plz"],
    &["country"],
];

/// A text field named `address` mapped from the street column by name, joined with the
/// columns that hold the rest of the address (`city`, `state`, `zip`, …): one field that
/// takes several columns. Returns the joined mapping and the columns it adds.
fn address_parts(
    f: &FieldFacts<'_>,
    m: &FieldMapping,
    profiles: &[ColumnProfile],
) -> Option<(FieldMapping, Vec<usize>)> {
    if !matches!(f.field.kind, FieldKind::String)
        || f.field.constraints.enum_values.is_some()
        || f.tokens.last().map(String::as_str) != Some("address")
        || m.confidence < NAMES_THE_FIELD
    {
        return None;
    }
    let [street] = m.sources.as_slice() else {
        return None;
    };
    let words = |p: &ColumnProfile| crate::mapping::names::words(&p.name);
    let street_profile = profiles.iter().find(|p| &p.name == street)?;
    if !words(street_profile)
        .iter()
        .any(|w| matches!(w.as_str(), "address" | "street" | "addr" | "line"))
    {
        return None;
    }
    let mut parts = Vec::new();
    for names in ADDRESS_PARTS {
        // A part column may already feed another field (`city` for a `city` field too).
        let found = profiles.iter().enumerate().find(|(i, p)| {
            !parts.contains(i)
                && &p.name != street
                && p.non_blank > 0
                && words(p).iter().any(|w| names.contains(&w.as_str()))
        });
        if let Some((i, _)) = found {
            parts.push(i);
        }
    }
    if parts.is_empty() {
        return None;
    }
    let all: Vec<&ColumnProfile> = std::iter::once(street_profile)
        .chain(parts.iter().map(|i| &profiles[*i]))
        .collect();
    let joined = FieldMapping {
        expr: Some(format!(
            "nullif(concat_ws(', ', {}), '')",
            all.iter()
                .map(|p| as_text(p))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        sources: all.iter().map(|p| p.name.clone()).collect(),
        rationale: format!(
            "{}; joined with the address's other parts: `{}`",
            m.rationale,
            all[1..]
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join("`, `")
        ),
        ..m.clone()
    };
    Some((joined, parts))
}

/// A `name`/`full_name` target built from first- and last-name columns, with a prefix, a
/// middle name and a suffix when the source has them. Only unused columns, unless
/// `any_column` (the one name field of the table a wide source fills: stray matches elsewhere
/// must not take its parts away).
fn full_name(
    t: &TargetField,
    profiles: &[ColumnProfile],
    used: &[bool],
    any_column: bool,
) -> Option<FieldMapping> {
    if !matches!(t.kind, FieldKind::String) || !tokens(&t.name).contains(&"name".to_string()) {
        return None;
    }
    let find = |want: &str| {
        profiles
            .iter()
            .enumerate()
            .find(|(i, p)| {
                (any_column || !used[*i]) && p.non_blank > 0 && {
                    let tk = tokens(&p.name);
                    tk.iter().any(|x| x == want || x == &format!("{want}name"))
                }
            })
            .map(|(_, p)| p)
    };
    let first = find("first")?;
    let last = find("last")?;
    let parts: Vec<&ColumnProfile> = [find("prefix"), Some(first), find("middle"), Some(last)]
        .into_iter()
        .chain([find("suffix")])
        .flatten()
        .collect();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    Some(FieldMapping {
        expr: Some(format!(
            "nullif(concat_ws(' ', {}), '')",
            names
                .iter()
                .map(|n| format!("clean({})", quote(n)))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        sources: names.iter().map(|n| n.to_string()).collect(),
        confidence: 0.7,
        rationale: format!("full name joined from `{}`", names.join("`, `")),
        ..FieldMapping::unmapped()
    })
}

#[cfg(test)]
mod tests;
