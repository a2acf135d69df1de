//! The mapping store: reuse by fingerprint, pinning, re-mapping when columns change, `--frozen`
//! and `map --diff`.

use crate::harness::{Workdir, demo};

const DOC: &str = "output/mappings/source1.mapping.json";

fn edit(w: &Workdir, f: impl FnOnce(&mut serde_json::Value)) {
    let mut doc = w.json(DOC);
    f(&mut doc);
    w.write(DOC, serde_json::to_string_pretty(&doc).unwrap());
}

#[test]
fn map_writes_a_reviewable_document_and_later_runs_reuse_it() {
    let w = demo();
    let r = w.run(&["map", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("source1: mapping written to output/mappings/source1.mapping.json"),
        "{}",
        r.stdout
    );
    // The review table: target ← expression, confidence, rationale.
    let row = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("customer_id"))
        .unwrap();
    assert!(
        row.contains("← CAST(clean(\"CustomerID\") AS BIGINT)"),
        "{row}"
    );
    assert!(row.contains("matches by name"), "{row}");
    assert_eq!(w.json(DOC)["pinned"], false);
    // An edit to the stored (unpinned) document is honoured: same columns, so it is reused.
    edit(&w, |d| {
        d["fields"]["full_name"]["expr"] = "upper(\"Full Name\")".into()
    });
    let r = w.run(&["run", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("using the stored mapping"),
        "{}",
        r.stderr
    );
    assert_eq!(
        w.json("output/source1_valid_data.json")[0]["full_name"],
        "ADA LOVELACE"
    );
}

#[test]
fn a_pinned_document_wins_and_is_never_overwritten() {
    let w = demo();
    assert_eq!(w.run(&["map"]).code, 0);
    edit(&w, |d| {
        d["pinned"] = true.into();
        d["fields"]["full_name"]["expr"] = "upper(\"Full Name\")".into();
    });
    let before = w.read(DOC);
    // Even an explicit mapper choice uses the reviewed document.
    let r = w.run(&["run", "--source", "source1", "--mapper", "heuristic"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("using the pinned mapping"),
        "{}",
        r.stderr
    );
    assert_eq!(
        w.json("output/source1_valid_data.json")[0]["full_name"],
        "ADA LOVELACE"
    );
    // The source's columns change: the tool says so, maps again, and writes the proposal
    // beside the pinned document.
    let csv = w.read("source1.csv").replace("E-mail", "Email Address");
    w.write("source1.csv", csv);
    let r = w.run(&["run", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("columns changed"), "{}", r.stderr);
    assert_eq!(w.read(DOC), before, "the pinned document is unchanged");
    let proposed = w.json("output/mappings/source1.mapping.proposed.json");
    assert_eq!(proposed["pinned"], false);
    assert_eq!(
        proposed["fields"]["email"]["sources"],
        serde_json::json!(["Email Address"])
    );
    let summary = w.json("output/run_summary.json");
    assert!(
        summary["sources"]["source1"]["mapping"]["document"]
            .as_str()
            .unwrap()
            .ends_with("source1.mapping.proposed.json")
    );
}

#[test]
fn frozen_runs_only_pinned_documents_for_the_current_columns() {
    let w = demo();
    let r = w.run(&["run", "--frozen"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--frozen: there is no mapping document"),
        "{}",
        r.stderr
    );
    assert!(
        !w.join("output/mappings/source1.mapping.json").exists(),
        "frozen generates nothing"
    );
    assert_eq!(w.run(&["map"]).code, 0);
    let r = w.run(&["run", "--frozen", "--source", "source1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is not pinned"), "{}", r.stderr);
    edit(&w, |d| d["pinned"] = true.into());
    let r = w.run(&["run", "--frozen", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let csv = w.read("source1.csv").replace("Active", "Enabled");
    w.write("source1.csv", csv);
    let r = w.run(&["run", "--frozen", "--source", "source1"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("columns changed since") && r.stderr.contains("was pinned"),
        "{}",
        r.stderr
    );
}

#[test]
fn map_diff_shows_changes_and_writes_nothing() {
    let w = demo();
    assert_eq!(w.run(&["map"]).code, 0);
    let r = w.run(&["map", "--diff", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("no changes"), "{}", r.stdout);
    edit(&w, |d| {
        d["fields"]["full_name"]["expr"] = "upper(\"Full Name\")".into();
        d["fields"]["is_active"]["expr"] = serde_json::Value::Null;
    });
    let before = w.read(DOC);
    let r = w.run(&["map", "--diff", "--source", "source1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("~ full_name: upper(\"Full Name\") → clean(\"Full Name\")"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("+ is_active: parse_bool(\"Active\")"),
        "{}",
        r.stdout
    );
    assert_eq!(w.read(DOC), before, "--diff writes nothing");
}
