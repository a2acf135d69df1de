"""The review page's calls: review (what the page shows) and pin (its Pin button)."""

import json

import pytest

import conform


def test_review_orders_fields_by_need_and_applies_decisions_without_writing(demo):
    r = conform.review(str(demo / "config.json"), "source2")
    assert r["source"] == "source2" and r["stored"] is False and r["base"] == "none"
    assert r["summary"]["rows"] == 2 and r["summary"]["invalid"] == 1
    order = [f["attention"] for f in r["fields"]]
    ranks = ["undecided", "low_confidence", "unplaced", "failing", "fine", "no_candidate"]
    assert order == sorted(order, key=ranks.index), order
    email = next(f for f in r["fields"] if f["name"] == "email")
    assert email["attention"] == "failing" and email["failing"] == 1
    assert any(e["error"] for e in email["examples"])

    fixed = conform.review(
        str(demo / "config.json"),
        "source2",
        decisions={
            # The failing address has a dot where its @ belongs.
            "email": {"expr": "replace(lower(clean(\"mail\")), '.example', '@example')"},
            "full_name": {"expr": "clean(\"first_name\")"},
            "is_active": {"expr": None},
        },
    )
    assert fixed["summary"]["invalid"] == 0
    assert fixed["document"]["fields"]["is_active"]["expr"] is None
    assert fixed["document"]["fields"]["full_name"]["expr"] == 'clean("first_name")'
    assert not (demo / "output" / "mappings").exists(), "nothing written"

    bad = conform.review(
        str(demo / "config.json"), "source2", decisions={"full_name": {"expr": "nope(1)"}}
    )
    field = next(f for f in bad["fields"] if f["name"] == "full_name")
    assert "nope" in field["decision_error"]
    with pytest.raises(conform.MappingError, match="no_such_field"):
        conform.review(str(demo / "config.json"), "source2", decisions={"no_such_field": {"expr": "1"}})
    with pytest.raises(conform.ConfigError):
        conform.review(str(demo / "config.json"), "elsewhere")


def test_pin_writes_the_decisions_with_the_reviewer_and_refuses_a_stale_base(demo):
    config = str(demo / "config.json")
    r = conform.review(config, "source2")
    fix = "replace(lower(clean(\"mail\")), '.example', '@example')"
    out = conform.pin(
        config,
        "source2",
        base=r["base"],
        decisions={"email": {"expr": fix}, "is_active": {"expr": None}},
        reviewer="py",
    )
    doc = json.loads((demo / "output" / "mappings" / "source2.mapping.json").read_text())
    assert out["path"].endswith("source2.mapping.json") and out["previous"] is None
    assert doc["pinned"] is True and doc["fields"]["email"]["expr"] == fix
    assert doc["fields"]["is_active"]["expr"] is None
    assert [(e["field"], e["by"]) for e in doc["reviews"]] == [("email", "py"), ("is_active", "py")]
    assert doc["reviews"][0]["change"] == f"expr `lower(clean(\"mail\"))` → `{fix}`"
    assert doc["reviews"][1]["change"] == 'left unmapped (was `parse_bool("active")`)'
    # The decisions were made on a version that is no longer the stored one.
    with pytest.raises(conform.MappingError, match="changed since"):
        conform.pin(config, "source2", base=r["base"], decisions={})
    again = conform.review(config, "source2")
    assert again["stored"] is True and again["base"] == out["version"]
    # The pinned mapping runs.
    summary = conform.run(config, sources="source2")
    assert summary.sources["source2"].invalid == 0
