"""In-memory data: conform.map(data, schema) and conform.transform(data, schema) on pyarrow,
Polars, DuckDB and generator-backed streams, a mapping reused across partitions without a
mapper, and memory that stays flat on a stream of a million rows and more."""

import http.server
import json
import os
import sys
import threading

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import conform
from conftest import ROOT, read_config

sys.path.insert(0, str(ROOT / "scripts"))
import stream_memory  # noqa: E402

# A CRM export with rows that break the demo schema's rules in several ways (shared with the
# Rust tests).
CRM = (ROOT / "testdata" / "stream" / "crm.csv").read_text()


@pytest.fixture()
def crm(tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text(CRM)
    return path


@pytest.fixture(scope="module")
def schema():
    return read_config(ROOT / "testdata" / "demo" / "config.json")["internal_schema"]


def split(valid, invalid):
    """(valid rows, invalid row numbers) of a transform's two streams."""
    rows = pa.RecordBatchReader.from_stream(valid).read_all().num_rows
    bad = pa.RecordBatchReader.from_stream(invalid).read_all()
    return rows, bad.column("row").to_pylist(), set(bad.column("source_file").to_pylist())


def file_split(crm, schema, tmp_path):
    config = {
        "output_directory": str(tmp_path / "out"),
        "data_sources": {"crm": {"path": str(crm)}},
        "internal_schema": schema,
    }
    valid, invalid = conform.transform(config, "crm", mapper="heuristic")
    return split(valid, invalid)


def test_each_kind_of_data_splits_as_the_file_does(crm, schema, tmp_path):
    import duckdb
    import polars as pl

    valid, bad_rows, _ = file_split(crm, schema, tmp_path)
    assert (valid, bad_rows) == (4, [3, 4, 6])

    def generator_reader():
        # Batches of two rows made on demand by Python code.
        table = pacsv.read_csv(crm)
        schema = table.schema
        return pa.RecordBatchReader.from_batches(schema, (b for b in table.to_batches(max_chunksize=2)))

    # Each library types the CSV its own way (ids as integers, the mixed date column as text;
    # Polars hands over string views); none of that changes a verdict.
    kinds = {
        "pyarrow Table": lambda: pacsv.read_csv(crm),
        "Polars DataFrame": lambda: pl.read_csv(crm),
        "DuckDB relation": lambda: duckdb.read_csv(str(crm)),
        "generator RecordBatchReader": generator_reader,
    }
    for kind, make in kinds.items():
        doc = conform.map(make(), schema, mapper="heuristic")
        assert isinstance(doc, conform.MappingDocument), kind
        assert doc.unmapped == ["is_active"] or doc.unmapped == [], (kind, doc.expressions)
        got = split(*conform.transform(make(), schema, mapper="heuristic", source_file=kind))
        assert got == (valid, bad_rows, {kind}), kind


def test_a_schema_path_a_config_and_settings_apply(crm, schema, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a config dict's relative paths would land
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(schema))
    # The config gives the settings; its data_sources (a file that does not exist) are not read.
    config = {"output_directory": "nowhere", "data_sources": {"x": {"path": "missing.csv"}},
              "internal_schema": schema, "feedback": {"enabled": False}}
    valid, invalid = conform.transform(pacsv.read_csv(crm), config=config, mapper="heuristic")
    assert split(valid, invalid)[:2] == (4, [3, 4, 6])
    valid, invalid = conform.transform(pacsv.read_csv(crm), str(schema_path), batch_size=2, name="crm")
    assert split(valid, invalid)[:2] == (4, [3, 4, 6])
    # Nothing is written: no output directory, no mapping document.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.csv", "schema.json"]
    with pytest.raises(conform.ConfigError, match="batch_size"):
        conform.transform(pacsv.read_csv(crm), schema, batch_size=0)
    with pytest.raises(conform.ConfigError, match="no_such_setting"):
        conform.map(pacsv.read_csv(crm), schema, no_such_setting=1)
    with pytest.raises(TypeError, match="name="):
        conform.map(pacsv.read_csv(crm), schema, sources=["crm"])
    with pytest.raises(TypeError, match="needs a schema"):
        conform.map(pacsv.read_csv(crm))
    with pytest.raises(TypeError, match="__arrow_c_stream__"):
        conform.transform([{"a": 1}], schema)
    with pytest.raises(TypeError, match="only for in-memory data"):
        conform.transform(str(ROOT / "testdata" / "demo" / "config.json"), "source1", schema=schema)


class ScriptedLlm:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every chat completion with one
    fixed mapping of the demo schema, and counts the completions asked for."""

    REPLY = {
        "fields": [
            {"target": "customer_id", "expr": 'CAST("CustomerID" AS BIGINT)', "confidence": 0.9, "rationale": "id"},
            {"target": "full_name", "expr": 'clean("Full Name")', "confidence": 0.9, "rationale": "name"},
            {"target": "email", "expr": 'lower(clean("E-mail"))', "confidence": 0.9, "rationale": "mail"},
            {"target": "signup_date", "expr": "try_to_date(\"Signup Date\", '%Y-%m-%d', '%d/%m/%Y')", "confidence": 0.9, "rationale": "date"},
            {"target": "lifetime_value", "expr": 'parse_number("Lifetime Value")', "confidence": 0.9, "rationale": "value"},
            {"target": "is_active", "expr": 'parse_bool("Active")', "confidence": 0.9, "rationale": "flag"},
        ]
    }

    def __init__(self):
        self.completions = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                self.rfile.read(length)
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                outer.completions += 1
                body = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": json.dumps(outer.REPLY)}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.llm = {"base_url": f"http://127.0.0.1:{self.server.server_port}/v1", "model": "scripted"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_pinned_mapping_transforms_partitions_without_a_request(crm, schema, tmp_path):
    import polars as pl

    llm = ScriptedLlm()
    try:
        df = pl.read_csv(crm, infer_schema=False)  # every column as text, as the file has it
        doc = conform.map(df.head(5), schema, mapper="llm", llm=llm.llm)
        assert llm.completions >= 1
        assert doc.expressions["is_active"] == 'parse_bool("Active")'
        doc.pinned = True
        asked = llm.completions
        counts = []
        for part in [df.slice(0, 3), df.slice(3, 2), df.slice(5, 2)]:
            valid, invalid = conform.transform(part, schema, mapping=doc, llm=llm.llm, mapper="auto")
            counts.append(split(valid, invalid)[:2])
        assert llm.completions == asked, "a pinned mapping needs no LLM request"
        # Rows are numbered within each partition's stream; the verdicts are the file's.
        assert counts == [(2, [3]), (1, [1]), (1, [1])]
        # The document as a dict and as a path work the same.
        path = tmp_path / "crm.mapping.json"
        path.write_text(doc.to_json())
        for mapping in [doc.to_dict(), str(path)]:
            assert split(*conform.transform(df, schema, mapping=mapping))[:2] == (4, [3, 4, 6])
        # A partition that lost columns the document reads: an error naming them.
        with pytest.raises(conform.MappingError, match="`E-mail`.*`Active`|`Active`.*`E-mail`"):
            conform.transform(df.drop("E-mail", "Active"), schema, mapping=doc)
        assert llm.completions == asked
    finally:
        llm.close()


def test_a_stream_of_a_million_rows_keeps_memory_flat(orders_1m):
    # The same measurement as `scripts/stream_memory.py --rows 10000000`, at the size CI
    # affords; both read the file's rows as one stream and as the file.
    result = stream_memory.compare(orders_1m)
    print(json.dumps(result))
    assert result["stream"]["valid"] == result["file"]["valid"]
    assert result["stream"]["invalid"] == result["file"]["invalid"]
    assert result["stream"]["rows"] == 1_000_000
    assert result["stream"]["peak_rss_mb"] <= 1.5 * result["file"]["peak_rss_mb"], result


def test_nested_dictionary_decimal_and_zoned_columns_are_mapped_and_validated():
    import datetime
    import decimal

    import polars as pl

    df = pl.DataFrame(
        {
            "id": [1, 2],
            "name": pl.Series(["Ada", "Alan"], dtype=pl.Categorical),  # dictionary-encoded views
            "amount": pl.Series([decimal.Decimal("19.99"), decimal.Decimal("-1.00")], dtype=pl.Decimal(10, 2)),
            "seen_at": pl.Series(
                [datetime.datetime(2024, 5, 1, 12, 0), datetime.datetime(2024, 5, 2, 12, 0)]
            ).dt.replace_time_zone("Europe/Paris"),
            "address": [{"street": "1 High St", "zip": "N1"}, {"street": "2 Rue X", "zip": "75001"}],
            "tags": [["vip", "eu"], []],
        }
    )
    schema = {
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
            "seen_at": {"type": "string", "format": "date-time"},
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    doc = conform.map(df, schema, mapper="heuristic")
    assert doc.unmapped == [], doc.expressions
    valid, invalid = conform.transform(df, schema, mapper="heuristic")
    good = pl.DataFrame(valid)
    bad = pl.DataFrame(invalid)
    assert good.height == 1 and good["amount"].to_list() == [19.99]
    assert good["address"].to_list() == [{"street": "1 High St", "zip": "N1"}]
    assert good["tags"].to_list() == [["vip", "eu"]]
    assert good["seen_at"].cast(pl.Utf8).to_list()[0].startswith("2024-05-01")
    assert bad["row"].to_list() == [2]
    assert [e["rule"] for e in bad["errors"][0]] == ["minimum"]


def test_a_generator_that_fails_ends_the_streams_with_its_error_after_its_rows(crm, schema):
    table = pacsv.read_csv(crm)

    def batches():
        yield from table.to_batches(max_chunksize=2)[:2]
        raise ValueError("the upstream partition is gone")

    reader = pa.RecordBatchReader.from_batches(table.schema, batches())
    valid, invalid = conform.transform(reader, schema, mapper="heuristic")
    invalid.close()
    rows = 0
    with pytest.raises(Exception, match="the upstream partition is gone"):
        for batch in pa.RecordBatchReader.from_stream(valid):
            rows += batch.num_rows
    assert rows == 2  # of the four rows before the failure, rows 1 and 2 are valid
