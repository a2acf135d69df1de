//! Evidence weighed against the whole target, for wide standards made of several tables or
//! resources (`condition_occurrence.condition_start_date`, `Patient.birthDate`).
//!
//! On such a target every table has a start date, a person and a code, so a column like
//! `start` matches a field in dozens of tables equally well, and field-by-field scoring
//! proposes it for all of them. A source usually fills one table, or a few: the column's
//! *home* is the table whose fields it matches best, ties going to the table that explains
//! most of the source. Pairs outside a column's home are lowered below acceptance; they stay
//! in the document as ranked candidates.

use super::{ACCEPT, Pair, best_first};

/// Groups needed before a target counts as made of tables: with one or two, every field is
/// part of what a source fills.
const MIN_GROUPS: usize = 3;
/// Scores this close to a column's best group tie with it.
const TIE: f64 = 0.05;
/// A group whose evidence is below this share of the best group's, and rests on a single
/// column, is a stray match rather than a table the source fills.
const STRAY: f64 = 1.0 / 3.0;
/// What a pair outside its column's home keeps of its score: below acceptance, whatever it was.
const AWAY: f64 = 0.45;

/// The fields' groups on a target made of tables.
pub(super) struct Groups {
    /// The group of each field, `None` for a name without a dot.
    pub of: Vec<Option<usize>>,
    /// Each group's name (the first segment).
    pub keys: Vec<String>,
}

/// The group of each field: the first segment of a dotted name, `None` for a name without a
/// dot. `None` for the whole target when it has fewer than [`MIN_GROUPS`] groups.
pub(super) fn groups<'a>(names: impl Iterator<Item = &'a str>) -> Option<Groups> {
    let mut keys: Vec<&str> = Vec::new();
    let of: Vec<Option<usize>> = names
        .map(|n| {
            let (g, _) = n.split_once('.')?;
            Some(match keys.iter().position(|k| *k == g) {
                Some(i) => i,
                None => {
                    keys.push(g);
                    keys.len() - 1
                }
            })
        })
        .collect();
    (keys.len() >= MIN_GROUPS).then(|| Groups {
        of,
        keys: keys.into_iter().map(str::to_string).collect(),
    })
}

/// The groups the source's own name points to: a source is usually named after the table it
/// holds (`procedures` → `procedure_occurrence`, `Procedure`; `claims_transactions` → `Claim`,
/// `ClaimResponse`). A word of the name (of 3 letters or more, singular or plural) names a
/// group when the group's name, in lower-case letters and digits, is that word or starts with
/// it; the whole name counts as one more word. Several groups may be named; none when the name
/// says nothing (`source`, `export_2024`).
pub(super) fn named_by_source(keys: &[String], source: &str) -> Vec<bool> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let mut words: Vec<String> = crate::mapping::names::tokens(source)
        .into_iter()
        .map(|w| squash(&w))
        .collect();
    words.push(squash(source));
    // Each word and its singular forms.
    let forms: Vec<String> = words
        .iter()
        .filter(|w| w.len() >= 3 && w.chars().any(|c| c.is_ascii_alphabetic()))
        .flat_map(|w| {
            let mut f = vec![w.clone()];
            if let Some(stem) = w.strip_suffix("ies") {
                f.push(format!("{stem}y"));
            }
            if let Some(stem) = w.strip_suffix("es") {
                f.push(stem.to_string());
            }
            if let Some(stem) = w.strip_suffix('s') {
                f.push(stem.to_string());
            }
            f
        })
        .filter(|f| f.len() >= 3)
        .collect();
    keys.iter()
        .map(|k| {
            let k = squash(k);
            forms.iter().any(|f| k.starts_with(f.as_str()))
        })
        .collect()
}

/// Works out each column's home from the accepted pairs in `ranked` (pairs per field) and
/// lowers every pair outside it, keeping each field's pairs sorted best first. A column with
/// an accepted pair in a group the source's name points to (`named`) has its home there.
/// Returns whether each group is the home of some column: an *active* group, one the source
/// fills.
pub(super) fn focus(
    group_of: &[Option<usize>],
    named: &[bool],
    columns: usize,
    ranked: &mut [Vec<Pair>],
) -> Vec<bool> {
    let n_groups = group_of.iter().flatten().max().map_or(0, |g| g + 1);
    // The best accepted pair of each (group, column).
    let mut best = vec![vec![0.0f64; columns]; n_groups];
    for (fi, ps) in ranked.iter().enumerate() {
        let Some(g) = group_of[fi] else { continue };
        for p in ps.iter().filter(|p| p.score >= ACCEPT) {
            let b = &mut best[g][p.column];
            *b = b.max(p.score);
        }
    }
    let total: Vec<f64> = best.iter().map(|row| row.iter().sum()).collect();
    let claimed: Vec<usize> = best
        .iter()
        .map(|row| row.iter().filter(|s| **s > 0.0).count())
        .collect();
    let top = total.iter().copied().fold(0.0, f64::max);
    let is_named = |g: usize| named.get(g).copied().unwrap_or(false);
    let eligible: Vec<bool> = (0..n_groups)
        .map(|g| claimed[g] >= 2 || total[g] >= STRAY * top || (is_named(g) && claimed[g] > 0))
        .collect();
    let mut home = vec![None; columns];
    for (c, h) in home.iter_mut().enumerate() {
        // The source's name outweighs a better match in a table it does not name: every table
        // has a `description` and a start date.
        let in_named = (0..n_groups).any(|g| is_named(g) && best[g][c] > 0.0);
        let candidate = |g: usize| eligible[g] && (!in_named || is_named(g));
        let most = (0..n_groups)
            .filter(|&g| candidate(g))
            .map(|g| best[g][c])
            .fold(0.0, f64::max);
        if most <= 0.0 {
            continue;
        }
        // Among the groups tied for the column, the one that explains most of the source.
        *h = (0..n_groups)
            .filter(|&g| candidate(g) && best[g][c] >= most - TIE)
            .max_by(|&a, &b| total[a].total_cmp(&total[b]).then(b.cmp(&a)));
    }
    let mut active = vec![false; n_groups];
    for g in home.iter().flatten() {
        active[*g] = true;
    }
    for (fi, ps) in ranked.iter_mut().enumerate() {
        let Some(g) = group_of[fi] else { continue };
        let mut changed = false;
        for p in ps.iter_mut() {
            // A column no group claims keeps its pairs in active groups (a field of the
            // table the source fills, matched by values); elsewhere it is a stray.
            let at_home = match home[p.column] {
                Some(h) => h == g,
                None => active[g],
            };
            if !at_home {
                p.score = (p.score * AWAY * 100.0).round() / 100.0;
                p.shareable = false;
                changed = true;
            }
        }
        if changed {
            best_first(ps);
        }
    }
    active
}

/// Lowers the chosen pairs that are strays: the only pair chosen in their table, when the
/// source's name does not point to that table and another table took more of its columns (a
/// procedures table's `DESCRIPTION` is not an imaging study's description because `Procedure`
/// has no description element). Their fields become undecided, the column a candidate.
/// Returns whether any pair was lowered.
pub(super) fn strays(
    group_of: &[Option<usize>],
    named: &[bool],
    chosen: &[Option<Pair>],
    ranked: &mut [Vec<Pair>],
) -> bool {
    let n_groups = group_of.iter().flatten().max().map_or(0, |g| g + 1);
    let mut taken = vec![0usize; n_groups];
    for (fi, p) in chosen.iter().enumerate() {
        if let (Some(_), Some(g)) = (p, group_of[fi]) {
            taken[g] += 1;
        }
    }
    let most = taken.iter().copied().max().unwrap_or(0);
    let mut lowered = false;
    for (fi, p) in chosen.iter().enumerate() {
        let (Some(p), Some(g)) = (p, group_of[fi]) else {
            continue;
        };
        if taken[g] == 1 && most > 1 && !named.get(g).copied().unwrap_or(false) {
            for q in ranked[fi].iter_mut().filter(|q| q.column == p.column) {
                q.score = (q.score * AWAY * 100.0).round() / 100.0;
                q.shareable = false;
            }
            best_first(&mut ranked[fi]);
            lowered = true;
        }
    }
    lowered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_need_three_first_segments() {
        assert!(groups(["a.x", "b.y"].into_iter()).is_none());
        assert!(groups(["x", "y", "z"].into_iter()).is_none());
        let g = groups(["a.x", "b.y", "c.z", "a.w", "v"].into_iter()).unwrap();
        assert_eq!(g.of, [Some(0), Some(1), Some(2), Some(0), None]);
        assert_eq!(g.keys, ["a", "b", "c"]);
    }

    #[test]
    fn a_source_name_points_to_its_tables() {
        let keys: Vec<String> = [
            "procedure_occurrence",
            "Procedure",
            "Claim",
            "ClaimResponse",
            "SupplyDelivery",
            "person",
            "CarePlan",
        ]
        .map(String::from)
        .to_vec();
        let named = |s: &str| -> Vec<&str> {
            let n = named_by_source(&keys, s);
            keys.iter()
                .zip(n)
                .filter(|(_, n)| *n)
                .map(|(k, _)| k.as_str())
                .collect()
        };
        assert_eq!(named("procedures"), ["procedure_occurrence", "Procedure"]);
        assert_eq!(named("claims_transactions"), ["Claim", "ClaimResponse"]);
        assert_eq!(named("supplies"), ["SupplyDelivery"]);
        assert_eq!(named("careplans"), ["CarePlan"]);
        assert_eq!(named("patients"), Vec::<&str>::new());
        assert_eq!(named("source"), Vec::<&str>::new());
        assert_eq!(named("x"), Vec::<&str>::new());
    }
}
