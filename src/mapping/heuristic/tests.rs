//! The matcher on small tables that reproduce what went wrong on real public tables.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Value, json};

use super::{HeuristicMapper, fill_ins};
use crate::mapping::{MappingDocument, MappingRequest};
use crate::schema::TargetSchema;
use crate::source::profile::profile;

fn batch(columns: &[(&str, Vec<&str>)]) -> RecordBatch {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, v)| {
            Arc::new(StringArray::from(
                v.iter()
                    .map(|s| (!s.is_empty()).then_some(*s))
                    .collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(Arc::new(schema), arrays).unwrap()
}

fn map(properties: Value, columns: &[(&str, Vec<&str>)]) -> MappingDocument {
    map_named("s", properties, columns)
}

/// Maps a source called `source`.
fn map_named(source: &str, properties: Value, columns: &[(&str, Vec<&str>)]) -> MappingDocument {
    let target =
        TargetSchema::try_new(&json!({"type": "object", "properties": properties})).unwrap();
    let sample = batch(columns);
    let profiles = profile(&sample);
    let req = MappingRequest {
        source,
        target: &target,
        source_schema: sample.schema(),
        sample: &sample,
        profiles: &profiles,
    };
    HeuristicMapper.map_now(&req)
}

fn sources(doc: &MappingDocument, field: &str) -> Vec<String> {
    doc.fields[field].sources.clone()
}

fn repeat<'a>(values: &[&'a str], n: usize) -> Vec<&'a str> {
    values.iter().copied().cycle().take(n).collect()
}

#[test]
fn iso_timestamps_with_a_utc_designator_feed_a_date_time_field() {
    let doc = map(
        json!({"birthDate": {"type": "string", "format": "date-time"}}),
        &[(
            "birthDate",
            vec!["1971-10-20T00:00:00Z", "1980-01-02T00:00:00Z", ""],
        )],
    );
    assert_eq!(sources(&doc, "birthDate"), ["birthDate"]);
    let expr = doc.fields["birthDate"].expr.as_deref().unwrap();
    assert!(expr.contains("%Y-%m-%dT%H:%M:%SZ"), "{expr}");
}

#[test]
fn empty_columns_and_constants_are_not_evidence() {
    let doc = map(
        json!({
            "format": {"type": "string"},
            "key": {"type": "string"},
        }),
        &[
            ("Data format", vec![""; 8]),
            ("Dataset ID", repeat(&["ds-001"], 8)),
        ],
    );
    assert!(doc.fields["format"].expr.is_none(), "{doc:?}");
    assert!(doc.fields["key"].expr.is_none(), "{doc:?}");
}

#[test]
fn enum_values_win_over_a_partial_name_match_of_another_type() {
    let doc = map(
        json!({
            "days_to_lost_to_followup": {"type": "integer",
                "description": "Days between diagnosis and the last contact before loss to follow-up"},
            "lost_followup_status": {"type": "string", "enum": ["No", "Unknown", "Yes"]},
        }),
        &[(
            "Lost to follow-up",
            repeat(&["Yes", "No", "no", "Present"], 12),
        )],
    );
    assert_eq!(
        sources(&doc, "lost_followup_status"),
        ["Lost to follow-up"],
        "{doc:?}"
    );
    assert!(doc.fields["days_to_lost_to_followup"].expr.is_none());
    let m = &doc.fields["lost_followup_status"];
    assert!(m.expr.as_deref().unwrap().starts_with("CASE"), "{m:?}");
    assert_eq!(m.value_coverage, Some(1.0));
}

#[test]
fn a_column_that_names_the_field_is_kept_with_a_value_table_and_its_unplaced_values() {
    // The values are spelled in a vocabulary of their own: the enum would veto the column by
    // values alone, but the name is the field's.
    let doc = map(
        json!({"account_status": {"type": "string", "enum": ["Open", "Frozen", "Terminated"]},
               "notes": {"type": "string"}}),
        &[
            (
                "Account Status",
                repeat(
                    &[
                        "on hold",
                        "Closed by bank",
                        "suspended",
                        "pending",
                        "review",
                        "ACTIVE",
                    ],
                    12,
                ),
            ),
            ("remark", repeat(&["first visit", "second visit"], 12)),
        ],
    );
    let m = &doc.fields["account_status"];
    assert_eq!(m.sources, ["Account Status"], "{m:?}");
    assert!(m.expr.as_deref().unwrap().starts_with("CASE"), "{m:?}");
    assert!(
        m.value_coverage.unwrap() > 0.0 && m.value_coverage.unwrap() < 1.0,
        "{m:?}"
    );
    assert!(
        m.unplaced_values.contains(&"on hold".to_string()),
        "the values it could not place are named: {m:?}"
    );
    assert!(!m.unplaced_values.contains(&"ACTIVE".to_string()), "{m:?}");
    // A column whose name is not the field's is still ruled out by its values.
    let doc = map(
        json!({"account_status": {"type": "string", "enum": ["Open", "Frozen", "Terminated"]}}),
        &[("state", repeat(&["red", "green"], 12))],
    );
    assert!(doc.fields["account_status"].expr.is_none());
}

#[test]
fn descriptions_and_units_decide_between_similar_names() {
    let doc = map(
        json!({
            "tumor_largest_dimension_diameter": {"type": "number",
                "description": "The largest dimension of the tumor, in centimeters"},
            "number_of_fractions": {"type": "integer",
                "description": "Number of radiation doses (fractions) delivered"},
            "weight": {"type": "number"},
        }),
        &[
            ("tumor_size_cm", repeat(&["1.5", "2.25", "3"], 9)),
            ("Fat_fraction", repeat(&["0.12", "0.3", "0.08"], 9)),
        ],
    );
    assert_eq!(
        sources(&doc, "tumor_largest_dimension_diameter"),
        ["tumor_size_cm"],
        "{doc:?}"
    );
    assert!(doc.fields["number_of_fractions"].expr.is_none(), "{doc:?}");
}

#[test]
fn value_shapes_decide_generic_names() {
    let doc = map(
        json!({
            "name": {"type": "string", "description": "The name of the field"},
            "definition": {"type": "string", "description": "What the field means"},
        }),
        &[
            ("Resource Name", repeat(&["Building permits"], 10)),
            (
                "Field",
                vec![
                    "permit_id",
                    "issued_on",
                    "address",
                    "ward",
                    "fee_usd",
                    "status",
                    "applicant",
                    "contractor",
                    "valuation",
                    "units",
                ],
            ),
            (
                "Field Description",
                repeat(
                    &[
                        "The date on which the permit was issued by the city",
                        "Street address of the building the permit applies to",
                    ],
                    10,
                ),
            ),
        ],
    );
    assert_eq!(sources(&doc, "name"), ["Field"], "{doc:?}");
    assert_eq!(
        sources(&doc, "definition"),
        ["Field Description"],
        "{doc:?}"
    );
}

#[test]
fn one_column_may_feed_several_fields_when_both_are_strong() {
    let doc = map(
        json!({
            "age_at_diagnosis": {"type": "integer"},
            "age_at_index": {"type": "integer"},
        }),
        &[("age", repeat(&["54", "61", "47"], 9))],
    );
    assert_eq!(sources(&doc, "age_at_diagnosis"), ["age"]);
    assert_eq!(sources(&doc, "age_at_index"), ["age"]);
    assert!(
        doc.fields["age_at_index"].rationale.contains("also feeds"),
        "{doc:?}"
    );
}

#[test]
fn untyped_fields_need_more_than_a_weak_partial_name_match() {
    let doc = map(
        json!({"id": {"type": "string"}, "programs": {"type": "string"}}),
        &[
            ("idx", vec!["a1", "b2", "c3"]),
            ("PR_PGR", vec!["x", "y", "z"]),
        ],
    );
    assert!(doc.fields["id"].expr.is_none(), "{doc:?}");
    assert!(doc.fields["programs"].expr.is_none(), "{doc:?}");
    // They are still offered, ranked, for a reviewer.
    assert_eq!(doc.fields["id"].candidates[0].sources, ["idx"]);
}

#[test]
fn ranked_candidates_keep_the_alternatives() {
    let doc = map(
        json!({"email": {"type": "string", "format": "email"}}),
        &[
            ("email", vec!["a@example.com", "b@example.com"]),
            ("contact_email", vec!["c@example.com", "d@example.com"]),
        ],
    );
    let m = &doc.fields["email"];
    assert_eq!(m.sources, ["email"]);
    assert_eq!(m.candidates[0].sources, ["contact_email"]);
    assert!(m.candidates[0].score <= m.confidence);
    assert!(m.candidates[0].expr.contains("contact_email"));
}

#[test]
fn fill_ins_only_merge_columns_of_the_fields_kind() {
    let target = TargetSchema::try_new(&json!({"type": "object", "properties": {
        "fatherName": {"type": "string"},
        "religionLabel": {"type": "string"},
        "email": {"type": "string", "format": "email"},
    }}))
    .unwrap();
    let sample = batch(&[
        ("fatherLabel", vec!["John Lennon", "", "", "", ""]),
        ("twitterNameLabel", vec!["@a", "@b", "@c", "@d", "@e"]),
        ("religionLabel", vec!["Buddhism", "", "", "", ""]),
        ("genreLabel", vec!["rock", "pop", "jazz", "folk", "soul"]),
        ("email", vec!["old@example.com", "", "", "", ""]),
        (
            "contact_email",
            vec![
                "p1@example.com",
                "p2@example.com",
                "p3@example.com",
                "p4@example.com",
                "p5@example.com",
            ],
        ),
    ]);
    let profiles = profile(&sample);
    let field = |n: &str| target.field(n).unwrap();
    assert!(
        fill_ins(
            field("fatherName"),
            "clean(\"fatherLabel\")",
            "fatherLabel",
            &profiles,
            &["fatherLabel"]
        )
        .is_empty()
    );
    assert!(
        fill_ins(
            field("religionLabel"),
            "clean(\"religionLabel\")",
            "religionLabel",
            &profiles,
            &["religionLabel"]
        )
        .is_empty()
    );
    let email = fill_ins(
        field("email"),
        "lower(clean(\"email\"))",
        "email",
        &profiles,
        &["email"],
    );
    assert_eq!(email.len(), 1, "{email:?}");
    assert!(email[0].0.contains("contact_email"));
}

/// A target made of tables: three of them, each with an identifier and a date.
fn tables() -> Value {
    json!({
        "order.id": {"type": "string"},
        "order.placed_on": {"type": "string", "format": "date"},
        "order.customer": {"type": "string"},
        "shipment.id": {"type": "string"},
        "shipment.shipped_on": {"type": "string", "format": "date"},
        "shipment.carrier": {"type": "string"},
        "shipment.tracking_number": {"type": "string"},
        "invoice.id": {"type": "string"},
        "invoice.issued_on": {"type": "string", "format": "date"},
        "invoice.amount": {"type": "number"},
    })
}

#[test]
fn on_a_target_made_of_tables_a_generic_column_feeds_only_the_table_the_source_fills() {
    let doc = map(
        tables(),
        &[
            ("id", vec!["s-1", "s-2", "s-3"]),
            ("carrier", vec!["UPS", "DHL", "UPS"]),
            ("tracking", vec!["1Z999", "JD014", "1Z998"]),
        ],
    );
    assert_eq!(sources(&doc, "shipment.id"), ["id"]);
    assert_eq!(sources(&doc, "shipment.carrier"), ["carrier"]);
    assert_eq!(sources(&doc, "shipment.tracking_number"), ["tracking"]);
    // Every table has an `id`; the source fills the shipments, not the orders or invoices.
    for other in ["order.id", "invoice.id"] {
        assert!(doc.fields[other].expr.is_none(), "{other}: {doc:?}");
        // Still offered, lowered, for a reviewer.
        assert_eq!(
            doc.fields[other].candidates[0].sources,
            ["id"],
            "{other}: {doc:?}"
        );
        assert!(doc.fields[other].candidates[0].score < 0.5, "{other}");
    }
}

#[test]
fn the_source_name_tells_look_alike_tables_apart() {
    // Three tables with the same fields: only the source's name says which one it fills.
    let target = json!({
        "ticket.id": {"type": "string"},
        "ticket.description": {"type": "string"},
        "ticket.owner": {"type": "string"},
        "incident.id": {"type": "string"},
        "incident.description": {"type": "string"},
        "incident.owner": {"type": "string"},
        "change_request.id": {"type": "string"},
        "change_request.description": {"type": "string"},
        "change_request.owner": {"type": "string"},
    });
    let columns = [
        ("id", vec!["a-1", "a-2", "a-3"]),
        ("description", vec!["disk full", "login fails", "slow page"]),
        ("owner", vec!["kim", "lee", "kim"]),
    ];
    for (source, table) in [
        ("incidents", "incident"),
        ("Tickets", "ticket"),
        ("change_requests_2024", "change_request"),
        ("changes", "change_request"),
    ] {
        let doc = map_named(source, target.clone(), &columns);
        for (field, m) in &doc.fields {
            let home = field.starts_with(&format!("{table}."));
            assert_eq!(m.expr.is_some(), home, "{source}: {field}: {m:?}");
        }
    }
}

#[test]
fn a_column_goes_to_the_tables_own_element_before_a_nested_one() {
    let doc = map_named(
        "visits",
        json!({
            "visit.description": {"type": "string"},
            "visit.subject": {"type": "string"},
            "visit.activity.description": {"type": "string"},
            "visit.contact.subject": {"type": "string"},
            "order.id": {"type": "string"},
            "order.note": {"type": "string"},
            "invoice.id": {"type": "string"},
            "invoice.note": {"type": "string"},
        }),
        &[
            ("description", vec!["check-up", "follow-up", "x-ray"]),
            ("subject", vec!["p-1", "p-2", "p-3"]),
        ],
    );
    assert_eq!(sources(&doc, "visit.description"), ["description"]);
    assert_eq!(sources(&doc, "visit.subject"), ["subject"]);
    // The nested fields keep the columns as candidates, and take neither.
    for nested in ["visit.activity.description", "visit.contact.subject"] {
        let m = &doc.fields[nested];
        assert!(m.expr.is_none(), "{nested}: {m:?}");
        assert!(!m.candidates.is_empty(), "{nested}: {m:?}");
    }
}

#[test]
fn coordinate_abbreviations_name_latitude_and_longitude() {
    let doc = map(
        json!({
            "decimalLatitude": {"type": "number", "minimum": -90, "maximum": 90},
            "decimalLongitude": {"type": "number", "minimum": -180, "maximum": 180},
            "locality": {"type": "string"},
        }),
        &[
            ("site_lat", vec!["51.29", "50.85", "51.05"]),
            ("site_lng", vec!["3.34", "4.35", "3.72"]),
            ("site_name", vec!["Damme", "Brussels", "Ghent"]),
        ],
    );
    assert_eq!(sources(&doc, "decimalLatitude"), ["site_lat"]);
    assert_eq!(sources(&doc, "decimalLongitude"), ["site_lng"]);
}

#[test]
fn the_ends_of_a_span_are_told_apart_by_their_words() {
    let doc = map(
        json!({
            "rental_start_date": {"type": "string", "format": "date",
                "description": "The day the rental starts."},
            "rental_end_date": {"type": "string", "format": "date",
                "description": "The day the rental ends; without one, use the start date."},
        }),
        &[
            ("BEGIN", vec!["2024-01-02", "2024-02-03", "2024-03-04"]),
            ("STOP", vec!["2024-01-09", "2024-02-10", "2024-03-11"]),
        ],
    );
    assert_eq!(sources(&doc, "rental_start_date"), ["BEGIN"]);
    assert_eq!(sources(&doc, "rental_end_date"), ["STOP"]);
}

#[test]
fn a_column_named_like_a_table_is_not_each_of_its_fields() {
    let doc = map(
        json!({
            "Encounter.id": {"type": "string"},
            "Encounter.status": {"type": "string"},
            "Encounter.class": {"type": "string"},
            "Condition.id": {"type": "string"},
            "Condition.encounter": {"type": "string"},
            "Condition.onset": {"type": "string", "format": "date"},
            "Patient.id": {"type": "string"},
            "Patient.gender": {"type": "string"},
        }),
        &[
            ("encounter", vec!["e-1", "e-2", "e-3"]),
            ("onset", vec!["2024-01-02", "2024-02-03", "2024-03-04"]),
        ],
    );
    assert_eq!(sources(&doc, "Condition.encounter"), ["encounter"]);
    assert_eq!(sources(&doc, "Condition.onset"), ["onset"]);
    for other in ["Encounter.id", "Encounter.status", "Encounter.class"] {
        assert!(doc.fields[other].expr.is_none(), "{other}: {doc:?}");
    }
}

#[test]
fn a_target_of_one_or_two_tables_is_matched_field_by_field() {
    // With two groups every field is part of what the source fills: `id` may feed both.
    let doc = map(
        json!({
            "order.id": {"type": "string"},
            "order.carrier": {"type": "string"},
            "shipment.id": {"type": "string"},
        }),
        &[
            ("id", vec!["s-1", "s-2", "s-3"]),
            ("carrier", vec!["UPS", "DHL", "UPS"]),
        ],
    );
    assert_eq!(sources(&doc, "order.carrier"), ["carrier"]);
    assert!(doc.fields["order.id"].expr.is_some() || doc.fields["shipment.id"].expr.is_some());
}

#[test]
fn a_word_in_many_field_names_says_little_on_a_wide_target() {
    let things = [
        "condition",
        "drug",
        "procedure",
        "device",
        "measurement",
        "observation",
        "note",
        "specimen",
        "visit",
        "provider",
        "care_site",
        "location",
        "payer",
        "plan",
        "cost",
        "episode",
        "death",
        "gender",
        "race",
        "ethnicity",
        "unit",
        "route",
        "modifier",
        "qualifier",
        "operator",
    ];
    let wide: serde_json::Map<String, Value> = things
        .iter()
        .map(|t| (format!("{t}_source_value"), json!({"type": "string"})))
        .collect();
    let column = [("source", repeat(&["web", "store", "phone"], 9))];
    let doc = map(Value::Object(wide), &column);
    let taken: Vec<&String> = doc
        .fields
        .iter()
        .filter(|(_, m)| m.sources == ["source"])
        .map(|(k, _)| k)
        .collect();
    assert!(taken.is_empty(), "{taken:?}");
    // On a narrow target the same word is the evidence there is.
    let narrow: serde_json::Map<String, Value> = things[..3]
        .iter()
        .map(|t| (format!("{t}_source_value"), json!({"type": "string"})))
        .collect();
    let doc = map(Value::Object(narrow), &column);
    assert!(
        doc.fields.values().any(|m| m.sources == ["source"]),
        "{doc:?}"
    );
}

#[test]
fn values_alone_do_not_pick_one_of_many_fields_they_fit_equally() {
    // Thirty yes/no fields with unrelated names, one yes/no column: its values fit every
    // field, so they identify none.
    let mut fields: serde_json::Map<String, Value> = (0..30)
        .map(|i| {
            (
                format!("finding_{i}_present"),
                json!({"type": "string", "enum": ["Yes", "No"]}),
            )
        })
        .collect();
    fields.insert(
        "visit_mode".into(),
        json!({"type": "string", "enum": ["in person", "remote"]}),
    );
    let doc = map(
        Value::Object(fields.clone()),
        &[
            ("answer", repeat(&["yes", "no", "no"], 9)),
            ("mode", repeat(&["remote", "in person"], 9)),
        ],
    );
    let taken: Vec<&String> = doc
        .fields
        .iter()
        .filter(|(_, m)| m.sources == ["answer"])
        .map(|(k, _)| k)
        .collect();
    assert!(taken.is_empty(), "{taken:?}");
    // Values that fit one field only still identify it.
    assert_eq!(sources(&doc, "visit_mode"), ["mode"]);
    // With one such field, the values identify it.
    let one: serde_json::Map<String, Value> = fields.into_iter().skip(29).collect();
    let doc = map(
        Value::Object(one),
        &[("answer", repeat(&["yes", "no", "no"], 9))],
    );
    assert!(
        doc.fields.values().any(|m| m.sources == ["answer"]),
        "{doc:?}"
    );
}

#[test]
fn the_last_column_of_a_kind_goes_only_to_the_last_field_of_that_kind() {
    let dates = [(
        "when",
        repeat(&["2024-01-02", "2024-02-03", "2024-03-04"], 3),
    )];
    let doc = map(
        json!({"opened_on": {"type": "string", "format": "date"}, "x": {"type": "string"}}),
        &dates,
    );
    assert_eq!(sources(&doc, "opened_on"), ["when"]);
    // Two date fields, one date column that names neither: nothing says which.
    let doc = map(
        json!({
            "opened_on": {"type": "string", "format": "date"},
            "closed_on": {"type": "string", "format": "date"},
        }),
        &dates,
    );
    assert!(doc.fields.values().all(|m| m.expr.is_none()), "{doc:?}");
}

#[test]
fn an_address_field_takes_the_columns_of_the_address_parts() {
    let doc = map(
        json!({
            "address": {"type": "string", "description": "Postal address"},
            "city": {"type": "string"},
            "birth_date": {"type": "string", "format": "date"},
        }),
        &[
            ("ADDRESS", vec!["12 Elm St", "3 Oak Ave", "9 Pine Rd"]),
            ("CITY", vec!["Boston", "Salem", "Lowell"]),
            ("STATE", vec!["Massachusetts", "Massachusetts", "Maine"]),
            ("ZIP", vec!["02155", "01970", "04101"]),
            ("BIRTHDATE", vec!["1980-01-02", "1975-03-04", "1990-05-06"]),
        ],
    );
    let m = &doc.fields["address"];
    assert_eq!(m.sources, ["ADDRESS", "CITY", "STATE", "ZIP"], "{m:?}");
    assert_eq!(
        m.expr.as_deref(),
        Some(
            r#"nullif(concat_ws(', ', clean("ADDRESS"), clean("CITY"), clean("STATE"), clean("ZIP")), '')"#
        )
    );
    assert!(m.rationale.contains("`CITY`, `STATE`, `ZIP`"), "{m:?}");
    // The city still feeds its own field.
    assert_eq!(sources(&doc, "city"), ["CITY"]);
    // A street column matched weakly, or a field that is not an address, takes no parts.
    let doc = map(
        json!({"contact_address": {"type": "string"}, "x": {"type": "string"}}),
        &[
            ("ADDRESS", vec!["12 Elm St", "3 Oak Ave", "9 Pine Rd"]),
            ("CITY", vec!["Boston", "Salem", "Lowell"]),
        ],
    );
    assert!(doc.fields["contact_address"].sources.len() <= 1, "{doc:?}");
}

#[test]
fn the_name_field_of_the_table_a_source_fills_joins_the_name_parts() {
    let doc = map(
        json!({
            "Patient.name": {"type": "string"},
            "Patient.gender": {"type": "string", "enum": ["male", "female"]},
            "Patient.birthDate": {"type": "string", "format": "date"},
            "Practitioner.name": {"type": "string"},
            "Practitioner.specialty": {"type": "string"},
            "Location.name": {"type": "string"},
            "Location.status": {"type": "string"},
        }),
        &[
            ("PREFIX", vec!["Mr.", "Ms.", "Mrs."]),
            ("FIRST", vec!["Ada", "Alan", "Grace"]),
            ("LAST", vec!["Lovelace", "Turing", "Hopper"]),
            ("SUFFIX", vec!["", "PhD", ""]),
            ("GENDER", vec!["F", "M", "F"]),
            ("BIRTHDATE", vec!["1815-12-10", "1912-06-23", "1906-12-09"]),
        ],
    );
    assert_eq!(
        sources(&doc, "Patient.name"),
        ["PREFIX", "FIRST", "LAST", "SUFFIX"]
    );
    assert_eq!(
        doc.fields["Patient.name"].expr.as_deref(),
        Some(
            r#"nullif(concat_ws(' ', clean("PREFIX"), clean("FIRST"), clean("LAST"), clean("SUFFIX")), '')"#
        )
    );
    for other in ["Practitioner.name", "Location.name"] {
        assert!(doc.fields[other].expr.is_none(), "{other}: {doc:?}");
    }
}

/// Maps columns that carry the source's own descriptions (a data dictionary).
fn map_described(
    properties: Value,
    columns: &[(&str, Vec<&str>)],
    descriptions: &[(&str, &str)],
) -> MappingDocument {
    let target =
        TargetSchema::try_new(&json!({"type": "object", "properties": properties})).unwrap();
    let sample = batch(columns);
    let mut profiles = profile(&sample);
    for (column, text) in descriptions {
        let p = profiles.iter_mut().find(|p| p.name == *column).unwrap();
        p.description = Some(text.to_string());
    }
    let req = MappingRequest {
        source: "s",
        target: &target,
        source_schema: sample.schema(),
        sample: &sample,
        profiles: &profiles,
    };
    HeuristicMapper.map_now(&req)
}

#[test]
fn the_sources_descriptions_name_columns_whose_names_say_nothing() {
    // Two date columns with opaque names, two date fields: the values cannot tell them
    // apart; the source's data dictionary can.
    let properties = json!({
        "birth_date": {"type": "string", "format": "date", "description": "The day the person was born."},
        "death_date": {"type": "string", "format": "date", "description": "The day the person's death was recorded."},
        "weight_kg": {"type": "number", "description": "Body weight in kilograms."}
    });
    let columns = [
        (
            "F07",
            repeat(&["1950-02-01", "1961-07-15", "1972-12-30"], 9),
        ),
        ("F11", repeat(&["2020-03-04", "", "2021-09-10"], 9)),
        ("F12", repeat(&["71.5", "80.2", "65"], 9)),
    ];
    let bare = map(properties.clone(), &columns);
    assert!(
        sources(&bare, "death_date") != ["F11"] || sources(&bare, "birth_date") != ["F07"],
        "without descriptions nothing tells the dates apart: {bare:?}"
    );
    let described = map_described(
        properties,
        &columns,
        &[
            ("F07", "Date of birth of the patient"),
            ("F11", "Date of the patient's death, if the patient died"),
            ("F12", "Weight of the patient in kilograms at the visit"),
        ],
    );
    assert_eq!(sources(&described, "birth_date"), ["F07"]);
    assert_eq!(sources(&described, "death_date"), ["F11"]);
    assert_eq!(sources(&described, "weight_kg"), ["F12"]);
    assert!(
        described.fields["death_date"]
            .rationale
            .contains("is described as the field"),
        "{}",
        described.fields["death_date"].rationale
    );
}

#[test]
fn a_description_of_generic_words_alone_identifies_nothing() {
    // "the date of the record" shares only generic words with every date field.
    let properties = json!({
        "start_date": {"type": "string", "format": "date", "description": "When the stay began."},
        "end_date": {"type": "string", "format": "date", "description": "When the stay ended."}
    });
    let columns = [("X1", repeat(&["2020-03-04", "2021-09-10"], 8))];
    let doc = map_described(properties, &columns, &[("X1", "The date of the record")]);
    assert!(
        doc.fields
            .values()
            .all(|m| !m.rationale.contains("is described as the field")),
        "{doc:?}"
    );
}

#[test]
fn a_table_given_one_stray_column_takes_nothing() {
    // A target made of tables; the source fills `visit`, which has no description. Its
    // `DESCRIPTION` matches the image table's description by name, the only column of the
    // source that table would get (its start date goes to the visit the source is named
    // after): a stray, left undecided with the column as its candidate.
    let properties = json!({
        "visit.visit_id": {"type": "string"},
        "visit.visit_start": {"type": "string", "format": "date"},
        "visit.visit_stop": {"type": "string", "format": "date"},
        "visit.patient": {"type": "string"},
        "image.image_id": {"type": "string"},
        "image.description": {"type": "string"},
        "image.modality": {"type": "string"},
        "image.started": {"type": "string", "format": "date"},
        "note.note_text": {"type": "string"},
        "note.note_date": {"type": "string", "format": "date"}
    });
    let columns = [
        ("VISIT_ID", repeat(&["v1", "v2", "v3", "v4"], 8)),
        ("START", repeat(&["2020-01-02", "2020-02-03"], 8)),
        ("STOP", repeat(&["2020-01-05", "2020-02-09"], 8)),
        ("PATIENT", repeat(&["p1", "p2", "p3"], 8)),
        (
            "DESCRIPTION",
            repeat(&["Routine check-up", "Emergency visit"], 8),
        ),
    ];
    let doc = map_named("visits", properties, &columns);
    assert_eq!(sources(&doc, "visit.visit_id"), ["VISIT_ID"]);
    assert_eq!(sources(&doc, "visit.visit_start"), ["START"]);
    assert_eq!(sources(&doc, "visit.patient"), ["PATIENT"]);
    let image = &doc.fields["image.description"];
    assert!(image.sources.is_empty(), "{image:?}");
    assert_eq!(image.candidates[0].sources, ["DESCRIPTION"], "{image:?}");
    assert!(image.candidates[0].score < 0.5, "{image:?}");
}
