//! Column-name normalisation for matching: `Cust_Email`, `customerEmail` and `e-mail address`
//! all become comparable token lists.

/// Abbreviations and synonyms mapped to one canonical token.
const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "id",
        &["id", "identifier", "ident", "key", "pk", "uid", "guid"],
    ),
    ("number", &["number", "num", "no", "nbr", "nr", "numero"]),
    ("email", &["email", "mail", "emailaddress", "e_mail"]),
    ("name", &["name", "nm", "fullname"]),
    (
        "first",
        &[
            "first",
            "given",
            "fname",
            "forename",
            "firstname",
            "givenname",
        ],
    ),
    (
        "last",
        &[
            "last",
            "family",
            "surname",
            "lname",
            "lastname",
            "familyname",
        ],
    ),
    (
        "customer",
        &["customer", "cust", "client", "buyer", "purchaser"],
    ),
    ("order", &["order", "ord", "purchase"]),
    (
        "quantity",
        &["quantity", "qty", "qnty", "count", "cnt", "units", "pieces"],
    ),
    (
        "amount",
        &["amount", "amt", "total", "sum", "price", "value", "cost"],
    ),
    ("date", &["date", "dt", "day"]),
    (
        "timestamp",
        &["timestamp", "ts", "time", "datetime", "at", "when"],
    ),
    (
        "created",
        &[
            "created",
            "creation",
            "create",
            "placed",
            "opened",
            "signup",
            "signed",
            "registered",
            "registration",
            "joined",
            "join",
            "enrolled",
        ],
    ),
    ("updated", &["updated", "modified", "changed", "update"]),
    ("address", &["address", "addr", "adr"]),
    ("phone", &["phone", "tel", "telephone", "mobile", "cell"]),
    ("postal", &["postal", "zip", "postcode", "zipcode", "plz"]),
    ("country", &["country", "cntry", "nation", "ctry"]),
    ("description", &["description", "desc", "descr"]),
    (
        "comment",
        &[
            "comment", "comments", "note", "notes", "remark", "remarks", "memo",
        ],
    ),
    ("status", &["status", "state", "stat"]),
    ("weight", &["weight", "wt", "wgt", "mass"]),
    ("birth", &["birth", "born", "dob", "birthday", "birthdate"]),
    ("gift", &["gift", "present"]),
    ("is", &["is", "has", "flag"]),
    ("percent", &["percent", "pct", "percentage"]),
    ("product", &["product", "prod", "item", "sku", "article"]),
    ("category", &["category", "cat", "type", "kind", "class"]),
    ("user", &["user", "usr", "account", "login"]),
    ("city", &["city", "town", "locality"]),
    ("currency", &["currency", "curr", "ccy"]),
];

/// Abbreviations that stand for several words.
const EXPANSIONS: &[(&str, &[&str])] = &[
    ("ltv", &["lifetime", "value"]),
    ("clv", &["lifetime", "value"]),
    ("dob", &["birth", "date"]),
    ("ssn", &["social", "security", "number"]),
    ("pw", &["password"]),
    ("qty", &["quantity"]),
];

/// Unit suffixes that say how a value is measured, not what it is.
pub const UNITS: &[&str] = &[
    "kg", "lb", "lbs", "g", "cents", "cent", "usd", "eur", "pct", "km", "mi", "m", "cm", "mm", "s",
    "ms", "sec", "secs",
];

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

/// The canonical token of a word (`qty` → `quantity`).
pub fn canonical(word: &str) -> String {
    for (canon, alts) in SYNONYMS {
        if alts.contains(&word) {
            return (*canon).to_string();
        }
    }
    // Plural forms: `orders` → `order`.
    if let Some(stem) = word.strip_suffix('s').filter(|s| s.len() > 2) {
        for (canon, alts) in SYNONYMS {
            if alts.contains(&stem) {
                return (*canon).to_string();
            }
        }
    }
    word.to_string()
}

/// Canonical tokens of a name, with `e mail` joined and unit words dropped.
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
                    | "birthdate"
                    | "givenname"
                    | "familyname"
                    | "emailaddress"
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
        .flat_map(|w| match EXPANSIONS.iter().find(|(a, _)| a == w) {
            Some((_, parts)) => parts.iter().map(|p| canonical(p)).collect::<Vec<_>>(),
            None => vec![canonical(w)],
        })
        .collect();
    if toks.len() > 1 {
        toks.retain(|t| !UNITS.contains(&t.as_str()));
    }
    toks
}

/// The unit word in a name, if any (`weight_lb` → `lb`).
pub fn unit(name: &str) -> Option<String> {
    words(name)
        .into_iter()
        .skip(1)
        .find(|w| UNITS.contains(&w.as_str()))
}

/// Similarity of two names, 0..1: Dice overlap of canonical tokens, with partial credit for
/// one name's tokens being a prefix of the other's.
pub fn similarity(a: &str, b: &str) -> f64 {
    let ta = tokens(a);
    let tb = tokens(b);
    if ta.is_empty() || tb.is_empty() {
        return 0.0;
    }
    if ta == tb {
        return 1.0;
    }
    let score = |x: &[String], y: &[String]| -> f64 {
        x.iter()
            .map(|t| {
                if y.contains(t) {
                    1.0
                } else if y.iter().any(|u| {
                    (u.len() >= 3 && t.starts_with(u.as_str()))
                        || (t.len() >= 3 && u.starts_with(t.as_str()))
                }) {
                    0.6
                } else {
                    0.0
                }
            })
            .sum()
    };
    let shared = (score(&ta, &tb) + score(&tb, &ta)) / 2.0;
    let dice = 2.0 * shared / (ta.len() + tb.len()) as f64;
    // The concatenated names being equal catches `orderid` vs `order_id`.
    let flat = |t: &[String]| t.concat();
    if flat(&ta) == flat(&tb) {
        return 1.0_f64.max(dice);
    }
    dice.min(1.0)
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
    }
}
