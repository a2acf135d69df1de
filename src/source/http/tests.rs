//! Unit tests of the HTTP source: `Link` header pagination and dotted record paths.

use super::*;

#[test]
fn link_header_next() {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::LINK,
        "<https://x/a?page=1>; rel=\"prev\", <https://x/a?page=3>; rel=\"next\""
            .parse()
            .unwrap(),
    );
    assert_eq!(next_link(&h).as_deref(), Some("https://x/a?page=3"));
    h.insert(
        reqwest::header::LINK,
        "<https://x/a?page=1>; rel=\"prev\"".parse().unwrap(),
    );
    assert_eq!(next_link(&h), None);
}

#[test]
fn dot_paths() {
    let v: Value = serde_json::json!({"data": {"items": [1, 2]}, "meta": {"next": "c2"}});
    assert_eq!(
        at_path(&v, "data.items").unwrap().as_array().unwrap().len(),
        2
    );
    assert_eq!(at_path(&v, "meta.next").unwrap(), "c2");
    assert!(at_path(&v, "data.nope").is_none());
}
