//! The references generated from the code — `docs/configuration.md` from the config structs,
//! `docs/functions.md` from the function allow-list — are committed, and must equal what the
//! code generates now: a new key, a changed default or range, or a new function fails this test
//! until the page is regenerated (`CONFORM_UPDATE_DOCS=1 cargo test --test it
//! generated_references`).

use std::path::Path;

fn check(page: &str, generated: String) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(page);
    if std::env::var_os("CONFORM_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return None;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return None;
    }
    let first = committed
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
    Some(format!(
        "docs/{page} differs from what the code generates (first at line {}):\n  committed: {}\n  generated: {}",
        first + 1,
        committed.lines().nth(first).unwrap_or("(end of file)"),
        generated.lines().nth(first).unwrap_or("(end of file)")
    ))
}

#[test]
fn generated_references() {
    let problems: Vec<String> = [
        check("configuration.md", conform::config::reference::markdown()),
        check(
            "functions.md",
            conform::mapping::compile::functions_reference(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        problems.is_empty(),
        "{}\nRegenerate with: CONFORM_UPDATE_DOCS=1 cargo test --test it generated_references",
        problems.join("\n")
    );
}

#[test]
fn every_config_key_is_in_the_reference_with_its_default_and_range() {
    let md = conform::config::reference::markdown();
    for needle in [
        "| `batch_size` | integer | `8192` | 1 to 1048576 |",
        "| `timeout_s` | number | `30.0` | 0.001 to 86400 |",
        "## `data_sources.NAME.http`",
        "## `data_sources.NAME.pagination` with `\"type\": \"offset\"`",
        "| `max_prompt_tokens` |",
        "| `output_format` | one of `json`, `ndjson`, `parquet`, `delta` |",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
}
