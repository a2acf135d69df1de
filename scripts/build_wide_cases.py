#!/usr/bin/env python3
"""Build the wide-standard schema-matching cases (testdata/matching/wide*/).

Each case maps one real source table onto one wide public standard:

* OMOP CDM v5.4 (all tables flattened, `table.field`), truth from the OHDSI
  ETL-Synthea specification (Synthea CSV -> OMOP);
* Darwin Core (simple DwC terms), truth from the Darwin Core mapping scripts
  that the data publishers (INBO / RIPARIAS project) keep beside their raw data;
* HL7 FHIR R4 (elements of the clinical and financial resources that Synthea
  fills, flattened as `Resource.element`), truth from the published
  Synthea CSV -> FHIR R4 crosswalk of Stoa Medical (fhir-x-synthea_csv specs).

The inputs are git snapshots of public repositories (see REPOS); the script
reads them with `git show` and writes case directories.  Only the standard
library is used.  Usage:

    python3 scripts/build_wide_cases.py --mirror /work/.mirror [--out testdata/matching]

The frozen part is chosen with SEED (grouped by source table, so that no
frozen case shares its source excerpt with a tuned case); `--split-only`
prints the split without writing.
"""
import argparse
import csv
import io
import json
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

SEED = 20260826
FROZEN_SHARE = 1 / 3
MAX_ROWS = 25

REPOS = {
    "cdm": "OHDSI+CommonDataModel",
    "etl": "OHDSI+ETL-Synthea",
    "dbt": "OHDSI+dbt-synthea",
    "dwc": "tdwg+dwc",
}

MIRROR = Path("/work/.mirror")


def git_show(repo_key, path):
    repo = REPOS.get(repo_key, repo_key)
    out = subprocess.run(
        ["git", "--git-dir", str(MIRROR / repo / "repo"), "show", "HEAD:" + path],
        capture_output=True, check=True)
    return out.stdout.decode("utf-8-sig")


def git_head(repo_key):
    repo = REPOS.get(repo_key, repo_key)
    out = subprocess.run(
        ["git", "--git-dir", str(MIRROR / repo / "repo"), "rev-parse", "HEAD"],
        capture_output=True, check=True, text=True)
    return out.stdout.strip()


def gh(repo_key, path):
    repo = REPOS.get(repo_key, repo_key).replace("+", "/")
    return "https://github.com/%s/blob/%s/%s" % (repo, git_head(repo_key), path)


# --------------------------------------------------------------------------
# excerpts


def read_csv_text(text, delimiter=","):
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    header, body = rows[0], [r for r in rows[1:] if any(c.strip() for c in r)]
    return header, body


def excerpt(header, body, wanted_cols, n=MAX_ROWS, scan=4000):
    """Pick up to n rows: the ones that fill most of the mapped columns
    (then most columns overall), kept in file order."""
    idx = [header.index(c) for c in wanted_cols if c in header]
    scored = []
    for i, r in enumerate(body[:scan]):
        r = (r + [""] * len(header))[: len(header)]
        mapped = sum(1 for j in idx if r[j].strip())
        filled = sum(1 for c in r if c.strip())
        scored.append((-mapped, -filled, i, r))
    scored.sort()
    chosen = sorted(scored[:n], key=lambda t: t[2])
    return [t[3] for t in chosen]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


# --------------------------------------------------------------------------
# OMOP CDM v5.4 target

OMOP_TYPES = {
    "integer": ("integer", None), "bigint": ("integer", None),
    "float": ("number", None), "date": ("string", "date"),
    "datetime": ("string", "date-time"),
}


def clean_md(s):
    s = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", s)  # markdown links -> text
    return re.sub(r"\s+", " ", s).strip()


def omop_schema():
    text = git_show("cdm", "inst/csv/OMOP_CDMv5.4_Field_Level.csv")
    props = {}
    for r in csv.DictReader(io.StringIO(text)):
        name = "%s.%s" % (r["cdmTableName"], r["cdmFieldName"])
        t, fmt = OMOP_TYPES.get(r["cdmDatatype"].lower(), ("string", None))
        parts = [clean_md(x) for x in (r["userGuidance"], r["etlConventions"])
                 if x and x != "NA"]
        p = {"type": t}
        if fmt:
            p["format"] = fmt
        desc = " ".join(parts)
        if r["isForeignKey"] == "Yes" and r["fkTableName"] not in ("", "NA"):
            desc += " (foreign key to %s.%s%s)" % (
                r["fkTableName"].lower(), r["fkFieldName"].lower(),
                ", domain " + r["fkDomain"] if r["fkDomain"] not in ("", "NA") else "")
        if desc:
            p["description"] = desc[:600]
        props[name] = p
    return {"title": "OMOP Common Data Model v5.4 (all tables)", "type": "object",
            "properties": props}


# Synthea CSV -> OMOP truth, transcribed from the ETL-Synthea vignettes
# (vignettes/<cdm table>.Rmd, "Destination Field | Source field" tables) for the
# source table named in each "Reading from Synthea table X.csv" section.
# Source columns are given as the vignette names them and resolved
# case-insensitively against the Synthea v3 header.  Corrections of evident
# slips in the vignettes, each checked against the v5.4 SQL of the same
# repository (inst/sql/sql_server/cdm_version/v540/insert_*.sql), are listed in
# OMOP_NOTES.  Lookups through another table ("encounters.provider",
# "all_visits.*") are only kept when the column is in this source table.
OMOP_TRUTH = {
    "patients": {
        "person.gender_concept_id": ["gender"],
        "person.year_of_birth": ["birthdate"],
        "person.month_of_birth": ["birthdate"],
        "person.day_of_birth": ["birthdate"],
        "person.birth_datetime": ["birthdate"],
        "person.race_concept_id": ["race"],
        "person.ethnicity_concept_id": ["ethnicity"],
        "person.person_source_value": ["id"],
        "person.gender_source_value": ["gender"],
        "person.race_source_value": ["race"],
        "person.ethnicity_source_value": ["ethnicity"],
        "location.city": ["city"],
        "location.state": ["state"],
        "location.zip": ["zip"],
        "location.location_source_value": ["zip"],
    },
    "encounters": {
        "death.person_id": ["patient"],
        "death.death_date": ["start"],
        "death.death_datetime": ["start"],
        "death.cause_concept_id": ["reasoncode"],
        "death.cause_source_value": ["reasoncode"],
        "death.cause_source_concept_id": ["reasoncode"],
        "observation_period.person_id": ["patient"],
        "observation_period.observation_period_start_date": ["start"],
        "observation_period.observation_period_end_date": ["stop"],
        "visit_occurrence.person_id": ["patient"],
        "visit_occurrence.visit_concept_id": ["encounterclass"],
        "visit_occurrence.visit_start_date": ["start"],
        "visit_occurrence.visit_start_datetime": ["start"],
        "visit_occurrence.visit_end_date": ["stop"],
        "visit_occurrence.visit_end_datetime": ["stop"],
        "visit_occurrence.provider_id": ["provider"],
        "visit_occurrence.visit_source_value": ["id"],
        "visit_detail.person_id": ["patient"],
        "visit_detail.visit_detail_concept_id": ["encounterclass"],
        "visit_detail.visit_detail_start_date": ["start"],
        "visit_detail.visit_detail_start_datetime": ["start"],
        "visit_detail.visit_detail_end_date": ["stop"],
        "visit_detail.visit_detail_end_datetime": ["stop"],
        "visit_detail.provider_id": ["provider"],
        "visit_detail.visit_detail_source_value": ["id"],
    },
    "conditions": {
        "condition_occurrence.person_id": ["patient"],
        "condition_occurrence.condition_concept_id": ["code"],
        "condition_occurrence.condition_start_date": ["start"],
        "condition_occurrence.condition_start_datetime": ["start"],
        "condition_occurrence.condition_end_date": ["stop"],
        "condition_occurrence.condition_end_datetime": ["stop"],
        "condition_occurrence.visit_occurrence_id": ["encounter"],
        "condition_occurrence.visit_detail_id": ["encounter"],
        "condition_occurrence.condition_source_value": ["code"],
        "condition_occurrence.condition_source_concept_id": ["code"],
        "observation.person_id": ["patient"],
        "observation.observation_concept_id": ["code"],
        "observation.observation_date": ["start"],
        "observation.observation_datetime": ["start"],
        "observation.visit_occurrence_id": ["encounter"],
        "observation.visit_detail_id": ["encounter"],
        "observation.observation_source_value": ["code"],
        "observation.observation_source_concept_id": ["code"],
    },
    "procedures": {
        "procedure_occurrence.person_id": ["patient"],
        "procedure_occurrence.procedure_concept_id": ["code"],
        "procedure_occurrence.procedure_date": ["start"],
        "procedure_occurrence.procedure_datetime": ["start"],
        "procedure_occurrence.procedure_end_date": ["stop"],
        "procedure_occurrence.procedure_end_datetime": ["stop"],
        "procedure_occurrence.visit_occurrence_id": ["encounter"],
        "procedure_occurrence.visit_detail_id": ["encounter"],
        "procedure_occurrence.procedure_source_value": ["code"],
        "procedure_occurrence.procedure_source_concept_id": ["code"],
        "measurement.person_id": ["patient"],
        "measurement.measurement_concept_id": ["code"],
        "measurement.measurement_date": ["start"],
        "measurement.measurement_datetime": ["start"],
        "measurement.measurement_time": ["start"],
        "measurement.visit_occurrence_id": ["encounter"],
        "measurement.visit_detail_id": ["encounter"],
        "measurement.measurement_source_value": ["code"],
        "measurement.measurement_source_concept_id": ["code"],
    },
    "observations": {
        "measurement.person_id": ["patient"],
        "measurement.measurement_concept_id": ["code"],
        "measurement.measurement_date": ["date"],
        "measurement.measurement_datetime": ["date"],
        "measurement.value_as_number": ["value"],
        "measurement.value_as_concept_id": ["value"],
        "measurement.unit_concept_id": ["units"],
        "measurement.visit_occurrence_id": ["encounter"],
        "measurement.visit_detail_id": ["encounter"],
        "measurement.measurement_source_value": ["code"],
        "measurement.measurement_source_concept_id": ["code"],
        "measurement.unit_source_value": ["units"],
        "measurement.value_source_value": ["value"],
        "observation.person_id": ["patient"],
        "observation.observation_concept_id": ["code"],
        "observation.observation_date": ["date"],
        "observation.observation_datetime": ["date"],
        "observation.visit_occurrence_id": ["encounter"],
        "observation.visit_detail_id": ["encounter"],
        "observation.observation_source_value": ["code"],
        "observation.observation_source_concept_id": ["code"],
    },
    "medications": {
        "drug_exposure.person_id": ["patient"],
        "drug_exposure.drug_concept_id": ["code"],
        "drug_exposure.drug_exposure_start_date": ["start"],
        "drug_exposure.drug_exposure_start_datetime": ["start"],
        "drug_exposure.drug_exposure_end_date": ["stop", "start"],
        "drug_exposure.drug_exposure_end_datetime": ["stop", "start"],
        "drug_exposure.verbatim_end_date": ["stop"],
        "drug_exposure.days_supply": ["start", "stop"],
        "drug_exposure.visit_occurrence_id": ["encounter"],
        "drug_exposure.visit_detail_id": ["encounter"],
        "drug_exposure.drug_source_value": ["code"],
        "drug_exposure.drug_source_concept_id": ["code"],
    },
    "immunizations": {
        "drug_exposure.person_id": ["patient"],
        "drug_exposure.drug_concept_id": ["code"],
        "drug_exposure.drug_exposure_start_date": ["date"],
        "drug_exposure.drug_exposure_start_datetime": ["date"],
        "drug_exposure.drug_exposure_end_date": ["date"],
        "drug_exposure.drug_exposure_end_datetime": ["date"],
        "drug_exposure.verbatim_end_date": ["date"],
        "drug_exposure.visit_occurrence_id": ["encounter"],
        "drug_exposure.visit_detail_id": ["encounter"],
        "drug_exposure.drug_source_value": ["code"],
        "drug_exposure.drug_source_concept_id": ["code"],
    },
    "allergies": {
        "observation.person_id": ["patient"],
        "observation.observation_concept_id": ["code"],
        "observation.observation_date": ["start"],
        "observation.observation_datetime": ["start"],
        "observation.visit_occurrence_id": ["encounter"],
        "observation.visit_detail_id": ["encounter"],
        "observation.observation_source_value": ["code"],
        "observation.observation_source_concept_id": ["code"],
    },
    "devices": {
        "device_exposure.person_id": ["patient"],
        "device_exposure.device_concept_id": ["code"],
        "device_exposure.device_exposure_start_date": ["start"],
        "device_exposure.device_exposure_start_datetime": ["start"],
        "device_exposure.device_exposure_end_date": ["stop"],
        "device_exposure.device_exposure_end_datetime": ["stop"],
        "device_exposure.unique_device_id": ["udi"],
        "device_exposure.visit_occurrence_id": ["encounter"],
        "device_exposure.visit_detail_id": ["encounter"],
        "device_exposure.device_source_value": ["code"],
        "device_exposure.device_source_concept_id": ["code"],
    },
    "organizations": {
        "care_site.care_site_name": ["name"],
        "care_site.care_site_source_value": ["id"],
    },
    "providers": {
        "provider.provider_name": ["name"],
        "provider.gender_concept_id": ["gender"],
        "provider.provider_source_value": ["id"],
        "provider.specialty_source_value": ["speciality"],
        "provider.gender_source_value": ["gender"],
    },
    "payer_transitions": {
        "payer_plan_period.person_id": ["patient"],
        "payer_plan_period.payer_plan_period_start_date": ["start_year"],
        "payer_plan_period.payer_plan_period_end_date": ["end_year"],
        "payer_plan_period.payer_source_value": ["payer"],
    },
}

OMOP_VIGNETTES = {
    "patients": ["person", "location"],
    "encounters": ["death", "observation_period", "visit_occurrence", "visit_detail"],
    "conditions": ["condition_occurrence", "observation"],
    "procedures": ["procedure_occurrence", "measurement"],
    "observations": ["measurement", "observation"],
    "medications": ["drug_exposure"],
    "immunizations": ["drug_exposure"],
    "allergies": ["observation"],
    "devices": ["device_exposure"],
    "organizations": ["care_site"],
    "providers": ["provider"],
    "payer_transitions": ["payer_plan_period"],
}

OMOP_NOTES = {
    "patients": "person.death_datetime (deathdate) in the vignette is a v5.3 field that v5.4 dropped; it is left out. ethnicity_concept_id: the vignette lists 'race ethnicity'; the v5.4 SQL reads ethnicity only (hispanic/nonhispanic), which is what is kept.",
    "encounters": "vignette slips corrected from the v5.4 SQL: 'visit_detail__*' / 'visi_detail_t_end_date' are visit_detail.visit_detail_* fields; visit_source_value and visit_detail_source_value read all_visits.encounter_id, which is encounters.Id. death rows are the encounters with CODE 308646001.",
    "procedures": "the vignette gives 'date (v2.7.0) start (v3.0.0)'; the v3 column START is kept. provider_id comes from encounters.provider (not in this table).",
    "observations": "the vignette's 'visit_occurrence_id | code' and 'visit_detail_id | code' are slips: the v5.4 SQL joins o.encounter; ENCOUNTER is kept. Rows go to measurement or observation by the vocabulary domain of CODE.",
    "medications": "provider_id comes from encounters.provider (not in this table).",
    "payer_transitions": "the vignette lists 'payer_plan_period_start_date | end_year' twice; the SQL reads END_YEAR into payer_plan_period_end_date. plan_source_value comes from payers.NAME (not in this table).",
    "providers": "the vignette's 'specilaty_source_value | specialty' is provider.specialty_source_value; the v3 column is SPECIALITY.",
}

# value-level truth from the v5.4 SQL CASE expressions (source value as spelled
# in the Synthea data -> concept id).  Only for values that occur in the excerpt.
OMOP_VALUES = {
    "patients": {
        "person.gender_concept_id": {"M": "8507", "F": "8532"},
        "person.race_concept_id": {"white": "8527", "black": "8516", "asian": "8515",
                                   "native": "0", "other": "0", "hawaiian": "0"},
        "person.ethnicity_concept_id": {"hispanic": "38003563", "nonhispanic": "38003564"},
    },
    "encounters": {
        "visit_occurrence.visit_concept_id": {
            "ambulatory": "9202", "emergency": "9203", "inpatient": "9201",
            "wellness": "9202", "urgentcare": "9203", "outpatient": "9202"},
    },
    "providers": {
        "provider.gender_concept_id": {"M": "8507", "F": "8532"},
    },
}


def build_omop(out):
    schema = omop_schema()
    fields = list(schema["properties"])
    cases = []
    for table, truth in OMOP_TRUTH.items():
        header, body = read_csv_text(git_show("dbt", "seeds/synthea/%s.csv" % table))
        lower = {h.lower(): h for h in header}
        expected = {f: [] for f in fields}
        for f, cols in truth.items():
            assert f in expected, f
            expected[f] = [lower[c] for c in cols]
        wanted = sorted({c for cs in expected.values() for c in cs})
        if table == "encounters":  # keep the death-certification encounters in view
            death = [r for r in body if r[header.index("CODE")] == "308646001"][:4]
            rows = excerpt(header, [r for r in body if r not in death], wanted,
                           n=MAX_ROWS - len(death)) + death
        else:
            rows = excerpt(header, body, wanted)
        values = {}
        for f, vmap in OMOP_VALUES.get(table, {}).items():
            col = header.index(expected[f][0])
            seen = {r[col] for r in rows}
            vm = {k: v for k, v in vmap.items() if k in seen}
            if vm:
                values[f] = vm
        meta = {
            "source": gh("dbt", "seeds/synthea/%s.csv" % table),
            "origin": "Synthea synthetic patient records (CSV export, v3 columns) as shipped in OHDSI dbt-synthea seeds",
            "licence": "Apache-2.0 (Synthea output; OHDSI dbt-synthea)",
            "standard": "OMOP CDM v5.4 (%d fields, all tables, from %s)" % (
                len(fields), gh("cdm", "inst/csv/OMOP_CDMv5.4_Field_Level.csv")),
            "expected_from": [gh("etl", "vignettes/%s.Rmd" % v) for v in OMOP_VIGNETTES[table]],
            "expected_checked_against": "OHDSI ETL-Synthea inst/sql/sql_server/cdm_version/v540/insert_*.sql",
            "rows": len(rows),
        }
        if table in OMOP_NOTES:
            meta["notes"] = OMOP_NOTES[table]
        if values:
            meta["values"] = values
            meta["values_from"] = "OHDSI ETL-Synthea inst/sql/sql_server/cdm_version/v540 CASE expressions"
        cases.append(write_case(out, "omop_synthea_" + table, "omop", "synthea:" + table,
                                header, rows, schema, expected, meta))
    return cases


# --------------------------------------------------------------------------
# Darwin Core target

DCTERMS = {"type", "modified", "language", "license", "rightsHolder", "accessRights",
           "bibliographicCitation", "references"}
DCMI_TYPES = ["Collection", "Dataset", "Event", "Image", "InteractiveResource",
              "MovingImage", "PhysicalObject", "Service", "Software", "Sound",
              "StillImage", "Text"]
DWC_FORMATS = {"eventDate": "date", "modified": "date-time", "dateIdentified": "date",
               "georeferencedDate": "date"}
DWC_NUMBERS = {"decimalLatitude", "decimalLongitude", "coordinateUncertaintyInMeters",
               "coordinatePrecision", "pointRadiusSpatialFit", "minimumElevationInMeters",
               "maximumElevationInMeters", "minimumDepthInMeters", "maximumDepthInMeters",
               "minimumDistanceAboveSurfaceInMeters", "maximumDistanceAboveSurfaceInMeters",
               "sampleSizeValue", "footprintSpatialFit"}
DWC_INTEGERS = {"individualCount", "year", "month", "day", "startDayOfYear", "endDayOfYear",
                "namePublishedInYear"}


def ticks(s):
    return [x.strip() for x in re.findall(r"`([^`]+)`", s)]


def dwc_vocab(doc):
    text = git_show("dwc", "docs/%s/index.md" % doc)
    return re.findall(r"<td>Controlled value</td>\s*<td>([^<]+)</td>", text)


def dwc_schema():
    terms = git_show("dwc", "dist/simple_dwc_vertical.csv").split()
    rows = list(csv.DictReader(io.StringIO(git_show("dwc", "vocabulary/term_versions.csv"))))
    rec, older = {}, {}
    for r in rows:
        iri = r["term_iri"]
        ns = "dcterms" if iri.startswith(("http://purl.org/dc/terms/", "http://purl.org/dc/elements/1.1/")) else (
            "dwc" if iri.startswith("http://rs.tdwg.org/dwc/terms/") else None)
        if ns is None:
            continue
        name = r["term_localName"]
        if (name in DCTERMS) != (ns == "dcterms"):
            continue
        if r["status"] == "recommended":
            if name not in rec or iri.startswith("http://purl.org/dc/terms/"):
                rec[name] = r
        else:
            older.setdefault(name, []).append(r)
    enums = {
        "type": DCMI_TYPES,
        "basisOfRecord": None, "sex": None, "nomenclaturalCode": None,
        "establishmentMeans": dwc_vocab("em"),
        "degreeOfEstablishment": dwc_vocab("doe"),
        "pathway": dwc_vocab("pw"),
        "occurrenceStatus": None,
    }
    props = {}
    for t in terms:
        r = rec[t]
        p = {"type": "integer" if t in DWC_INTEGERS else "number" if t in DWC_NUMBERS else "string"}
        if t in DWC_FORMATS:
            p["format"] = DWC_FORMATS[t]
        desc = r["definition"].strip()
        if r["comments"].strip():
            desc += " " + r["comments"].strip()
        p["description"] = clean_md(desc)[:600]
        if t in enums:
            vals = enums[t] or ticks(r["examples"])
            if t == "occurrenceStatus":  # the 2017-2023 versions' vocabulary is still in use
                for o in older.get(t, []):
                    vals += [v for v in re.findall(r"`([^`]+)`", o["examples"]) if v not in vals]
            p["enum"] = vals
        props[t] = p
    return {"title": "Darwin Core (simple Darwin Core terms)", "type": "object",
            "properties": props}


def sql_case_values(sql, term):
    """value truth from `CASE WHEN o."Col" = 'a' THEN 'b' ... END AS term`."""
    m = re.search(r"CASE((?:(?!\bEND\b).)*)\bEND\s+AS\s+%s\b" % term, sql, re.S)
    out = {}
    if m:
        for a, b in re.findall(r"WHEN\s+o\.\"\w+\"\s*=\s*'([^']*)'\s+THEN\s+'([^']*)'", m.group(1)):
            out[a] = b
    return out


def r_recode_values(rsrc, term):
    m = re.search(r"%s = recode \(\w+,(.*?)\.default" % term, rsrc, re.S)
    return dict(re.findall(r'"([^"]*)"\s*=\s*"([^"]*)"', m.group(1))) if m else {}


DWC_CASES = [
    {
        "name": "dwc_wfl_management_actions",
        "repo": "riparias+wfl-occurrences",
        "data": "data/interim/confirmed_observations.csv",
        "mapping": "src/dwc_mapping.R",
        "licence": "CC0-1.0 (licence the publisher gives the dataset, https://doi.org/10.15468/hbnzww)",
        "origin": "Province West Flanders: management actions against invasive rats and muskrats (RIPARIAS / INBO publication, interim table as written by the publisher's get_data.R)",
        "truth": {
            "occurrenceID": ["global_id"], "eventID": ["global_id"],
            "parentEventID": ["dossier_id"], "eventType": ["catch"],
            "eventDate": ["laatst_bewerkt_datum"], "samplingProtocol": ["catch", "material"],
            "municipality": ["gemeente"], "decimalLatitude": ["latitude"],
            "decimalLongitude": ["longitude"], "verbatimLatitude": ["y"],
            "verbatimLongitude": ["x"], "kingdom": ["kingdom"],
            "scientificName": ["scientific_name"], "taxonRank": ["taxon_rank"],
        },
        "values": lambda src: {"eventType": {"TRUE": "Trap"}},
    },
    {
        "name": "dwc_pov_invasive_species",
        "repo": "riparias+pcm-ias-plants-occurrences",
        "data": "data/raw/invasieve_uitheemse_soorten.csv",
        "mapping": "sql/dwc_occurrence.sql",
        "also": ["src/dwc_mapping.Rmd"],
        "licence": "CC BY 4.0 (licence the publisher gives the dataset, https://doi.org/10.15468/29cggt)",
        "origin": "Province East Flanders (POV): monitoring of invasive alien species, raw export kept by the publisher (RIPARIAS / INBO)",
        "truth": {
            "samplingProtocol": ["SamplingProtocol"], "occurrenceID": ["ObservationIdentifier"],
            "organismQuantity": ["QuantificationOfInvasion"],
            "organismQuantityType": ["QuantificationUnit"],
            "eventDate": ["DateOfObservation"],
            "decimalLatitude": ["Shape"], "decimalLongitude": ["Shape"],
            "coordinateUncertaintyInMeters": ["CoordinateUncertainty"],
            "verbatimLatitude": ["YLambert72"], "verbatimLongitude": ["XLambert72"],
            "scientificName": ["ScientificName"], "kingdom": ["Kingdom"],
            "taxonRank": ["ScientificName"], "vernacularName": ["DutchName"],
        },
        "values": lambda src: {
            "scientificName": sql_case_values(src, "scientificName"),
            "taxonRank": sql_case_values(src, "taxonRank"),
            "vernacularName": sql_case_values(src, "vernacularName"),
            "organismQuantityType": {"m²": "coverage in m²", "Individuals": "individuals"},
        },
        "notes": "decimalLatitude/decimalLongitude are the WKT point in Shape (Belgian Lambert 72) transformed to WGS84 by dwc_mapping.Rmd before the SQL reads them as Y/X. organismQuantity/organismQuantityType are only filled when QuantificationOfInvasion > 0.",
    },
    {
        "name": "dwc_alien_macroinvertebrates",
        "repo": "LifeWatchINBO+alien-macroinvertebrates",
        "data": "data/raw/denormalized_observations.csv",
        "delimiter": "\t",
        "mapping": "src/dwc_occurrence.R",
        "licence": "CC0 1.0 (licence the publisher gives the dataset, https://doi.org/10.15468/xjtfoo)",
        "origin": "Ghent University Aquatic Ecology / INBO: alien macroinvertebrates in Flanders, NBN database export kept by the publisher",
        "truth": {
            "occurrenceID": ["taxon_occurrence_comment"],
            "recordedBy": ["survey_event_comment"],
            "otherCatalogNumbers": ["taxon_occurrence_key"],
            "eventDate": ["sample_vague_date_start"],
            "verbatimEventDate": ["sample_vague_date_start", "sample_vague_date_end"],
            "municipality": ["location_name_item_name"],
            "verbatimLocality": ["survey_event_location_name"],
            "decimalLatitude": ["sample_lat"], "decimalLongitude": ["sample_long"],
            "verbatimLatitude": ["sample_spatial_ref"], "verbatimLongitude": ["sample_spatial_ref"],
            "verbatimCoordinateSystem": ["sample_spatial_ref_system"],
            "verbatimSRS": ["sample_spatial_ref_system"],
            "identifiedBy": ["survey_event_comment"],
            "scientificName": ["nameserver_recommended_scientific_name"],
            "taxonRank": ["nameserver_recommended_name_rank"],
            "scientificNameAuthorship": ["nameserver_recommended_name_authority"],
        },
        "values": lambda src: {
            "taxonRank": {"Spp": "species", "SubSpp": "subspecies"},
            "scientificName": {"Dreissena (Dreissena) polymorpha": "Dreissena polymorpha"},
            "verbatimCoordinateSystem": {"BD72": "Belgium Lambert 72", "LTLN": "decimal degrees"},
            "verbatimSRS": {"BD72": "Belgian Datum 1972", "LTLN": "WGS84"},
            "recordedBy": r_recode_values(src, "recordedBy"),
        },
        "notes": "verbatimCoordinateSystem and verbatimSRS are set per subset filtered on sample_spatial_ref_system (BD72 / LTLN); verbatimEventDate is start/end only when they differ.",
    },
]


def build_dwc(out):
    schema = dwc_schema()
    fields = list(schema["properties"])
    cases = []
    for spec in DWC_CASES:
        REPOS[spec["repo"]] = spec["repo"]
        header, body = read_csv_text(git_show(spec["repo"], spec["data"]),
                                     delimiter=spec.get("delimiter", ","))
        expected = {f: [] for f in fields}
        for f, cols in spec["truth"].items():
            assert f in expected, f
            expected[f] = list(cols)
        wanted = sorted({c for cs in expected.values() for c in cs})
        rows = excerpt(header, body, wanted)
        src = git_show(spec["repo"], spec["mapping"])
        values = {}
        for f, vm in spec["values"](src).items():
            col = header.index(expected[f][0])
            seen = {r[col] for r in rows}
            vm = {k: v for k, v in vm.items() if k in seen}
            if vm:
                values[f] = vm
        meta = {
            "source": gh(spec["repo"], spec["data"]),
            "origin": spec["origin"],
            "licence": spec["licence"],
            "standard": "Darwin Core, simple terms (%d terms, from %s; definitions and vocabularies from vocabulary/term_versions.csv and docs/{em,doe,pw})" % (
                len(fields), gh("dwc", "dist/simple_dwc_vertical.csv")),
            "expected_from": [gh(spec["repo"], spec["mapping"])] + [gh(spec["repo"], a) for a in spec.get("also", [])],
            "rows": len(rows),
        }
        if spec.get("notes"):
            meta["notes"] = spec["notes"]
        if values:
            meta["values"] = values
            meta["values_from"] = "the publisher's mapping (%s)" % spec["mapping"]
        cases.append(write_case(out, spec["name"], "dwc", spec["name"], header, rows,
                                schema, expected, meta))
    return cases


# --------------------------------------------------------------------------
# FHIR R4 target (element definitions from the fhir.resources R4B models)

FHIR_PKG = None  # path to an unpacked fhir.resources wheel (fhir/resources/R4B/*.py)
FHIR_PRIMITIVES = {
    "Date": ("string", "date"), "DateTime": ("string", "date-time"),
    "Instant": ("string", "date-time"), "Boolean": ("boolean", None),
    "Integer": ("integer", None), "UnsignedInt": ("integer", None),
    "PositiveInt": ("integer", None), "Decimal": ("number", None),
}
FHIR_SKIP = {"extension", "modifierExtension", "id", "meta", "implicitRules", "language",
             "text", "contained"}


def fhir_resource_fields(resource):
    import ast
    path = Path(FHIR_PKG) / "fhir" / "resources" / "R4B" / (resource.lower() + ".py")
    tree = ast.parse(path.read_text())
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    out = {}

    def lit(node):
        try:
            return ast.literal_eval(node)
        except Exception:
            return None

    def walk(cls, prefix):
        for st in cls.body:
            if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)):
                continue
            name = st.target.id
            if name.endswith("__ext") or name == "resource_type" or not isinstance(st.value, ast.Call):
                continue
            kw = {k.arg: k.value for k in st.value.keywords}
            alias = lit(kw.get("alias")) or name
            if alias in FHIR_SKIP:
                continue
            ann = ast.unparse(st.annotation)
            m = re.findall(r"fhirtypes\.(\w+)", ann)
            ftype = m[0] if m else "String"
            is_list = ann.startswith("typing.List")
            title = lit(kw.get("title")) or ""
            desc = lit(kw.get("description")) or ""
            field = prefix + "." + alias
            sub = ftype[:-4] if ftype.endswith("Type") else ftype
            t, fmt = FHIR_PRIMITIVES.get(sub, ("string", None))
            p = {"type": t}
            if fmt:
                p["format"] = fmt
            d = title.strip()
            if desc and desc.strip() != d:
                d = (d + ". " if d else "") + desc.strip()
            kind = sub if sub not in FHIR_PRIMITIVES and sub[0].isupper() else None
            if kind and sub not in classes:
                d += " (FHIR type %s%s)" % (sub, ", repeating" if is_list else "")
            p["description"] = clean_md(d)[:500]
            ev = lit(kw.get("enum_values"))
            if ev:
                p["enum"] = ev
            if sub in classes:  # backbone element: its own elements become fields
                out[field] = p
                walk(classes[sub], field)
            else:
                out[field] = p

    out[resource + ".id"] = {"type": "string", "description": "Logical id of this artifact. The logical id of the resource, as used in the URL for the resource. Once assigned, this value never changes."}
    walk(classes[resource], resource)
    return out


def fhir_schema(resources):
    props = {}
    for r in sorted(resources):
        props.update(fhir_resource_fields(r))
    return {"title": "HL7 FHIR R4 resources (%s)" % ", ".join(sorted(resources)),
            "type": "object", "properties": props}


FHIR_SPECS = {
    "allergy": "allergies", "careplan": "careplans", "claims": "claims",
    "claims_transactions": "claims_transactions", "condition": "conditions",
    "device": "devices", "encounter": "encounters", "imaging_study": "imaging_studies",
    "immunization": "immunizations", "medication": "medications",
    "observation": "observations", "organization": "organizations", "patient": "patients",
    "payer": "payers", "payer_transitions": "payer_transitions", "procedure": "procedures",
    "provider": "providers", "supply": "supplies",
}
STOA = "Stoa-Medical+fhir-x-synthea_csv"
# value truth stated in the crosswalk rows ("Map M→male, F→female", "Lowercase",
# "Map drug→medication; medication→medication; food→food; environment→environment")
FHIR_VALUES = {
    "patients": {"Patient.gender": {"M": "male", "F": "female"}},
    "providers": {"Practitioner.gender": {"M": "male", "F": "female"}},
    "allergies": {
        "AllergyIntolerance.category": {"drug": "medication", "medication": "medication",
                                        "food": "food", "environment": "environment"},
        "AllergyIntolerance.reaction.severity": {"MILD": "mild", "MODERATE": "moderate",
                                                 "SEVERE": "severe"},
    },
}


def fhir_pairs(spec_text):
    pairs = []
    for src, tgt in re.findall(r'^\s*\(\s*(None|"[^"]*")\s*,\s*"([^"]+)"', spec_text, re.M):
        if src == "None":
            continue
        src = src.strip('"').split(".")[-1]
        for t in re.split(r"\s+(?:or|and)\s+", tgt):
            pairs.append((src, t.strip()))
    return pairs


# the crosswalk's own notes say which choice types value[x] takes
FHIR_CHOICES = {"Observation.value[x]": ["Observation.valueQuantity", "Observation.valueString"]}


def resolve_fhir(target, fields):
    if target in FHIR_CHOICES:
        return FHIR_CHOICES[target]
    t = re.sub(r"\[[^\]]*\]|\([^)]*\)", "", target)
    parts = t.split(".")
    for k in range(len(parts), 1, -1):
        cand = ".".join(parts[:k])
        if cand in fields:
            return [cand]
    return []


def build_fhir(out):
    REPOS[STOA] = STOA
    specs = {k: git_show(STOA, "specs/to_fhir/%s.md" % k) for k in FHIR_SPECS}
    resources = set()
    for text in specs.values():
        for _, tgt in fhir_pairs(text):
            r = tgt.split(".")[0]
            if r[:1].isupper() and (Path(FHIR_PKG) / "fhir/resources/R4B" / (r.lower() + ".py")).exists():
                resources.add(r)
    schema = fhir_schema(resources)
    fields = list(schema["properties"])
    cases = []
    for spec, table in FHIR_SPECS.items():
        header, body = read_csv_text(git_show("dbt", "seeds/synthea/%s.csv" % table))
        lower = {norm(h): h for h in header}
        expected = {f: [] for f in fields}
        dropped = []
        for src, tgt in fhir_pairs(specs[spec]):
            col = lower.get(norm(src))
            fs = resolve_fhir(tgt, set(fields))
            if col is None or not fs:
                dropped.append("%s -> %s" % (src, tgt))
                continue
            for f in fs:
                if col not in expected[f]:
                    expected[f].append(col)
        pairs = sum(len(v) for v in expected.values())
        if pairs < 3:
            print("skip fhir %s: %d pairs" % (spec, pairs), file=sys.stderr)
            continue
        wanted = sorted({c for cs in expected.values() for c in cs})
        rows = excerpt(header, body, wanted)
        values = {}
        for f, vm in FHIR_VALUES.get(table, {}).items():
            seen = {r[header.index(c)] for c in expected[f] for r in rows}
            vm = {k: v for k, v in vm.items() if k in seen}
            if vm:
                values[f] = vm
        meta = {
            "source": gh("dbt", "seeds/synthea/%s.csv" % table),
            "origin": "Synthea synthetic patient records (CSV export, v3 columns) as shipped in OHDSI dbt-synthea seeds",
            "licence": "Apache-2.0 (Synthea output; OHDSI dbt-synthea)",
            "standard": "HL7 FHIR R4 elements of %d resources (%d fields; element names, short and full definitions and required value sets from the FHIR R4B (4.3.0) StructureDefinitions as packaged in fhir.resources 7.1.0, FHIR licence CC0)" % (
                len(resources), len(fields)),
            "expected_from": gh(STOA, "specs/to_fhir/%s.md" % spec),
            "rows": len(rows),
            **({"values": values, "values_from": gh(STOA, "specs/to_fhir/%s.md" % spec)} if values else {}),
            "notes": "Crosswalk targets are reduced to the resource or backbone element that holds them (e.g. Condition.code.coding[0].code -> Condition.code); crosswalk targets in custom extensions and source fields the crosswalk names but the CSV lacks are left out" + (": " + "; ".join(dropped) if dropped else "") + ".",
        }
        cases.append(write_case(out, "fhir_synthea_" + table, "fhir", "synthea:" + table,
                                header, rows, schema, expected, meta))
    return cases


# --------------------------------------------------------------------------
# common


def write_case(out, name, standard, group, header, rows, schema, expected, meta):
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    write_csv(d / "source.csv", header, rows)
    (d / "target.schema.json").write_text(json.dumps(schema, indent=1, ensure_ascii=False) + "\n")
    (d / "expected.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    (d / "case.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    for cols in expected.values():
        for c in cols:
            assert c in header, (name, c)
    return {"name": name, "standard": standard, "group": group, "dir": d,
            "fields": len(expected), "pairs": sum(len(v) for v in expected.values()),
            "meta": meta}


def norm(s):
    s = unicodedata.normalize("NFKD", s).lower()
    return "".join(ch for ch in s if ch.isalnum())


def exact_name_baseline(case_dir):
    """A field takes the column whose name is equal after NFKD, lower-casing and
    removing every non-alphanumeric character. Returns (tp, predicted, true)."""
    exp = json.loads((case_dir / "expected.json").read_text())
    with open(case_dir / "source.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    cols = {}
    for c in header:
        cols.setdefault(norm(c), c)
    pred = {(fld, cols[norm(fld)]) for fld in exp if norm(fld) in cols}
    true = {(fld, c) for fld, cs in exp.items() for c in cs}
    return len(pred & true), len(pred), len(true)


def prf(tp, npred, ntrue):
    p = tp / npred if npred else 0.0
    r = tp / ntrue if ntrue else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def split(cases):
    """Grouped, stratified split: cases that share a source table form a group;
    within each standard (a group's first standard, in sorted order) a third of
    the groups, shuffled with SEED, are frozen."""
    groups = {}
    for c in cases:
        groups.setdefault(c["group"], []).append(c)
    by_std = {}
    for g, cs in sorted(groups.items()):
        std = sorted(c["standard"] for c in cs)[0]
        by_std.setdefault(std, []).append(g)
    rng = random.Random(SEED)
    frozen = set()
    for std in sorted(by_std):
        gs = sorted(by_std[std])
        rng.shuffle(gs)
        k = max(1, round(len(gs) * FROZEN_SHARE))
        frozen.update(gs[:k])
    return frozen


def main():
    global MIRROR
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", default=str(MIRROR))
    ap.add_argument("--out", default="testdata/matching")
    ap.add_argument("--only", help="comma-separated standards to build (omop,dwc,fhir)")
    ap.add_argument("--fhir-package", help="unpacked fhir.resources 7.1.0 wheel (pip download fhir.resources==7.1.0)")
    args = ap.parse_args()
    MIRROR = Path(args.mirror)
    global FHIR_PKG
    FHIR_PKG = args.fhir_package
    out = Path(args.out)
    tmp = out / "wide"
    tmp.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else {"omop", "dwc", "fhir"}
    cases = []
    if "omop" in only:
        cases += build_omop(tmp)
    if "dwc" in only:
        cases += build_dwc(tmp)
    if "fhir" in only and FHIR_PKG:
        cases += build_fhir(tmp)
    frozen = split(cases)
    fz = out / "wide_frozen"
    fz.mkdir(parents=True, exist_ok=True)
    for c in cases:
        if c["group"] in frozen:
            dest = fz / c["name"]
            if dest.exists():
                for p in dest.iterdir():
                    p.unlink()
                dest.rmdir()
            c["dir"].rename(dest)
            c["dir"] = dest
            c["part"] = "wide_frozen"
        else:
            c["part"] = "wide"
    report(cases, out / "wide" / "cases.tsv")


def report(cases, tsv):
    rows = []
    tot = {}
    for c in sorted(cases, key=lambda c: (c["part"], c["standard"], c["name"])):
        tp, npred, ntrue = exact_name_baseline(c["dir"])
        t = tot.setdefault(c["part"], [0, 0, 0, 0])
        t[0] += tp; t[1] += npred; t[2] += ntrue; t[3] += 1
        rows.append([c["part"], c["name"], c["standard"], str(c["fields"]), str(c["pairs"]),
                     str(c["meta"]["rows"]), str(tp), str(npred)])
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("part\tcase\tstandard\tfields\ttrue_pairs\trows\texact_tp\texact_predicted\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    for part, (tp, npred, ntrue, n) in sorted(tot.items()):
        p, r, f1 = prf(tp, npred, ntrue)
        print("%s: %d cases, %d true pairs, exact-name P %.3f R %.3f F1 %.3f (tp %d, predicted %d)"
              % (part, n, ntrue, p, r, f1, tp, npred))


if __name__ == "__main__":
    main()
