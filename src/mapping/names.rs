//! Column-name normalisation for matching: `Cust_Email`, `customerEmail` and `e-mail address`
//! all become comparable token lists.

pub use super::vocabulary::UNITS;
use super::vocabulary::{EXPANSIONS, GENERIC, STOP_WORDS, SYNONYMS};

/// Splits a name into lower-case words: snake_case, camelCase, kebab-case, spaces, dots.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1);
        let boundary = match prev {
            Some(p) if p.is_alphanumeric() => {
                (c.is_uppercase() && p.is_lowercase())
                    || (c.is_uppercase()
                        && p.is_uppercase()
                        && next.is_some_and(|n| n.is_lowercase()))
                    || (c.is_ascii_digit() != p.is_ascii_digit())
            }
            _ => false,
        };
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// English plural and past-tense endings removed: `orders` → `order`, `shipped` → `ship`.
pub fn stem(word: &str) -> String {
    let w = word;
    if w.len() > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    if w.len() > 3
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
    {
        return w[..w.len() - 1].to_string();
    }
    if w.len() > 5 && w.ends_with("ed") {
        let base = &w[..w.len() - 2];
        let b = base.as_bytes();
        // shipped → shipp → ship
        if b.len() >= 2 && b[b.len() - 1] == b[b.len() - 2] && !b[b.len() - 1].is_ascii_digit() {
            return base[..base.len() - 1].to_string();
        }
        return base.to_string();
    }
    w.to_string()
}

/// Each synonym's canonical word, indexed once: scanning the table for every word of every
/// column dominated mapping a 20,000-column source.
fn lookup(word: &str) -> Option<&'static str> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static str, &'static str>> =
        std::sync::OnceLock::new();
    INDEX
        .get_or_init(|| {
            let mut m = std::collections::HashMap::new();
            for (canon, alts) in SYNONYMS {
                for a in *alts {
                    // The first entry wins, as the scan did.
                    m.entry(*a).or_insert(*canon);
                }
            }
            m
        })
        .get(word)
        .copied()
}

/// The canonical token of a word (`qty` → `quantity`, `orders` → `order`, `Vorname` → `first`).
pub fn canonical(word: &str) -> String {
    if let Some(c) = lookup(word) {
        return c.to_string();
    }
    let stemmed = stem(word);
    if let Some(c) = lookup(&stemmed) {
        return c.to_string();
    }
    // German-style compounds: `geburtsdatum` = `geburts` + `datum`, `kundennummer`.
    stemmed
}

/// Splits a compound word into two known words (`geburtsdatum` → birth, date), if it is one.
fn split_compound(word: &str) -> Option<(String, String)> {
    if word.len() < 7 || lookup(word).is_some() {
        return None;
    }
    (3..word.len() - 2).rev().find_map(|i| {
        let (a, b) = (word.get(..i)?, word.get(i..)?);
        let a = lookup(a).or_else(|| lookup(a.trim_end_matches('s')))?;
        let b = lookup(b)?;
        Some((a.to_string(), b.to_string()))
    })
}

/// Canonical tokens of a name, with `e mail` joined and unit and stop words dropped.
pub fn tokens(name: &str) -> Vec<String> {
    let ws = words(name);
    let mut joined: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        // Compound words written apart: "e mail", "first name", "last name", "zip code".
        let pair = ws.get(i + 1).map(|n| format!("{}{}", ws[i], n));
        if let Some(p) = pair.filter(|p| {
            matches!(
                p.as_str(),
                "email"
                    | "firstname"
                    | "lastname"
                    | "fullname"
                    | "zipcode"
                    | "postcode"
                    | "givenname"
                    | "familyname"
                    | "emailaddress"
                    | "optin"
            )
        }) {
            joined.push(p);
            i += 2;
        } else {
            joined.push(ws[i].clone());
            i += 1;
        }
    }
    let mut toks: Vec<String> = joined
        .iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .flat_map(|w| match EXPANSIONS.iter().find(|(a, _)| a == w) {
            Some((_, parts)) => parts.iter().map(|p| canonical(p)).collect::<Vec<_>>(),
            None => match split_compound(w) {
                Some((a, b)) => vec![a, b],
                None => vec![canonical(w)],
            },
        })
        .collect();
    if toks.len() > 1 {
        toks.retain(|t| !UNITS.contains(&t.as_str()));
    }
    toks.dedup();
    toks
}

/// The unit word in a name, if any (`weight_lb` → `lb`).
pub fn unit(name: &str) -> Option<String> {
    words(name)
        .into_iter()
        .skip(1)
        .find(|w| UNITS.contains(&w.as_str()))
}

/// Whether `short` abbreviates `long` by dropping letters (`mrch` → `merchant`, `lvl` →
/// `level`): same first letter, letters in order.
fn abbreviates(short: &str, long: &str) -> bool {
    if short.len() < 2 || short.len() >= long.len() || short.as_bytes()[0] != long.as_bytes()[0] {
        return false;
    }
    let mut it = long.chars();
    short.chars().all(|c| it.any(|l| l == c))
}

/// How well two canonical tokens match, 0..1.
pub fn token_similarity(t: &str, u: &str) -> f64 {
    if t == u {
        return 1.0;
    }
    // Years written with two or four digits: `85` = `1985`, `00` = `2000`.
    if matches!((t.len(), u.len()), (2, 4) | (4, 2))
        && t.bytes().chain(u.bytes()).all(|b| b.is_ascii_digit())
        && (t.ends_with(u) || u.ends_with(t))
    {
        return 1.0;
    }
    if matches!((t, u), ("id", "number") | ("number", "id")) {
        return 0.8;
    }
    let (short, long) = if t.len() <= u.len() { (t, u) } else { (u, t) };
    if short.len() >= 3 && long.starts_with(short) {
        return 0.7;
    }
    if short.len() >= 5 && long.len() - short.len() <= 1 && within_one_edit(t, u) {
        return 0.8;
    }
    // Shared stem: `admit`/`admission`, `measure`/`measurement`.
    let common = t.chars().zip(u.chars()).take_while(|(a, b)| a == b).count();
    if common >= 4 && common * 10 >= short.len() * 7 {
        return 0.6;
    }
    if short.len() <= 4 && !short.chars().any(|c| c.is_ascii_digit()) && abbreviates(short, long) {
        return 0.6;
    }
    0.0
}

/// A token's weight in name similarity: generic tokens count half.
pub fn weight(t: &str) -> f64 {
    if GENERIC.contains(&t) { 0.5 } else { 1.0 }
}

/// Share of `a`'s token weight that `b` covers, token by token (best partner each).
fn covered(a: &[String], b: &[String], weight: &dyn Fn(&str) -> f64) -> f64 {
    a.iter()
        .map(|t| {
            let best = b.iter().map(|u| token_similarity(t, u)).fold(0.0, f64::max);
            best * weight(t)
        })
        .sum()
}

/// Similarity of two names, 0..1: a weighted Dice overlap of canonical tokens, where a generic
/// token (`id`, `name`, `date`) counts half and near-matches (prefixes, abbreviations, typos)
/// earn partial credit.
pub fn similarity(a: &str, b: &str) -> f64 {
    token_list_similarity(&tokens(a), &tokens(b))
}

/// [`similarity`] over token lists.
pub fn token_list_similarity(ta: &[String], tb: &[String]) -> f64 {
    weighted_similarity(ta, tb, &weight)
}

/// [`token_list_similarity`] with the tokens' weights given (a wide target's own common
/// words count less).
pub fn weighted_similarity(ta: &[String], tb: &[String], weight: &dyn Fn(&str) -> f64) -> f64 {
    if ta.is_empty() || tb.is_empty() {
        return 0.0;
    }
    // Equal lists, or the same letters split differently (`zip_code` / `zipcode`), compared
    // without building the joined strings.
    let len = |ts: &[String]| ts.iter().map(String::len).sum::<usize>();
    if ta == tb
        || (len(ta) == len(tb)
            && ta
                .iter()
                .flat_map(|t| t.bytes())
                .eq(tb.iter().flat_map(|t| t.bytes())))
    {
        return 1.0;
    }
    let wa: f64 = ta.iter().map(|t| weight(t)).sum();
    let wb: f64 = tb.iter().map(|t| weight(t)).sum();
    ((covered(ta, tb, weight) + covered(tb, ta, weight)) / (wa + wb)).min(1.0)
}

/// Whether two words differ by at most one edit (insertion, deletion, substitution or
/// adjacent transposition), in one pass.
fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let Some(i) = short.iter().zip(long).position(|(x, y)| x != y) else {
        return true;
    };
    if short.len() == long.len() {
        // One substitution, or one transposition of neighbours.
        short[i + 1..] == long[i + 1..]
            || (i + 1 < short.len()
                && short[i] == long[i + 1]
                && short[i + 1] == long[i]
                && short[i + 2..] == long[i + 2..])
    } else {
        short[i..] == long[i + 1..]
    }
}

/// Edit distance counting an adjacent transposition as one edit (optimal string alignment).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_all_styles() {
        assert_eq!(words("Cust_Email"), vec!["cust", "email"]);
        assert_eq!(words("customerEmail"), vec!["customer", "email"]);
        assert_eq!(words("HTTPStatus"), vec!["http", "status"]);
        assert_eq!(words("order-id 2"), vec!["order", "id", "2"]);
    }

    #[test]
    fn similar_names() {
        assert!(similarity("Cust_Email", "customer_email") > 0.99);
        assert!(similarity("e-mail", "email") > 0.99);
        assert!(similarity("qty", "quantity") > 0.99);
        assert!(similarity("OrderID", "order_id") > 0.99);
        assert!(similarity("weight_lb", "weight_kg") > 0.99);
        assert!(similarity("amount_cents", "amount") > 0.99);
        assert!(similarity("status", "customer_email") < 0.1);
        assert!(similarity("order_ts", "order_date") >= 0.5);
        assert!(similarity("comment", "notes") > 0.99);
        assert!(similarity("created", "signup_date") >= 0.5);
        assert!(similarity("ltv", "lifetime_value") > 0.99);
        assert!(similarity("Nachname", "last_name") > 0.75);
        assert!(similarity("Geburtsdatum", "birth_date") > 0.99);
        assert!(similarity("shipDate", "shipped_on") > 0.75);
        assert!(similarity("mrch_nm", "merchant_name") > 0.5);
        assert!(similarity("QTY_ON_HAND", "stock_quantity") >= 0.5);
        assert!(similarity("apellido", "last_name") > similarity("nombre", "last_name"));
        assert!(similarity("incidents_85_99", "incidents_1985_1999") > 0.99);
        assert!(similarity("col_9", "col_19999") < 0.99);
        for (a, b) in [
            ("address", "adress"),
            ("receive", "recieve"),
            ("status", "statuz"),
            ("kitten", "sitting"),
            ("abc", "abcde"),
        ] {
            assert_eq!(within_one_edit(a, b), edit_distance(a, b) <= 1, "{a} {b}");
        }
    }
}
