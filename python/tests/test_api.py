"""The Python package: run, map, transform, the exceptions, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

import conform
from conftest import read_config


def test_run_writes_the_clis_files_and_returns_the_summary(demo, conform_bin, tmp_path):
    summary = conform.run(str(demo / "config.json"))
    assert isinstance(summary, conform.RunSummary)
    assert summary.ok
    assert summary.totals["valid"] == 3 and summary.totals["invalid"] == 1
    s2 = summary.sources["source2"]
    assert (s2.rows_read, s2.valid, s2.invalid) == (2, 1, 1)
    out = demo / "output"
    on_disk = json.loads((out / "run_summary.json").read_text())
    assert on_disk["totals"] == summary.to_dict()["totals"]
    # The CLI on a second copy writes the same rows.
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    subprocess.run(
        [conform_bin, "-q", "run", "--config", str(demo / "config.json"), "--output-dir", str(cli_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for name in ["source1_valid_data.json", "source2_valid_data.json", "source2_invalid_data.json"]:
        assert json.loads((out / name).read_text()) == json.loads((cli_dir / name).read_text()), name


def test_run_takes_a_dict_sources_and_output_format(demo, tmp_path, monkeypatch):
    config = read_config(demo / "config.json")
    monkeypatch.chdir(demo)
    summary = conform.run(
        config, sources=["source1"], output_format="parquet", output_dir=str(tmp_path / "o")
    )
    assert list(summary.sources) == ["source1"]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "o" / "source1_valid_data.parquet")
    assert table.num_rows == 2
    assert "customer_id" in table.column_names


def test_map_returns_documents_that_round_trip(demo):
    docs = conform.map(str(demo / "config.json"))
    assert set(docs) == {"source1", "source2"}
    doc = docs["source1"]
    assert doc.unmapped == []
    assert doc.expressions["email"] is not None
    again = conform.MappingDocument.from_json(doc.to_json())
    assert again == doc
    written = json.loads((demo / "output" / "mappings" / "source1.mapping.json").read_text())
    assert written == doc.to_dict()


def test_transform_streams_into_pyarrow_polars_and_duckdb(demo):
    import duckdb
    import polars as pl

    valid, invalid = conform.transform(str(demo / "config.json"), "source2")
    reader = pa.RecordBatchReader.from_stream(valid)
    table = reader.read_all()
    assert table.num_rows == 1
    assert table.schema.field("customer_id").type == pa.int64()
    bad = pl.DataFrame(invalid)
    assert bad.height == 1
    assert bad.columns == ["source_file", "row", "record", "raw", "errors"]
    err = bad["errors"][0].to_list()
    assert any(e["field"] == "email" for e in err), err
    with pytest.raises(conform.ConformError, match="already consumed"):
        pa.RecordBatchReader.from_stream(valid)
    valid, invalid = conform.transform(str(demo / "config.json"), "source1")
    invalid.close()
    rel = duckdb.from_arrow(pa.RecordBatchReader.from_stream(valid))
    assert rel.aggregate("count(*)").fetchall()[0][0] == 2


def test_errors_are_typed_and_keep_the_clis_messages(demo, tmp_path):
    with pytest.raises(conform.ConfigError, match="cannot read the file"):
        conform.run(str(tmp_path / "nope.json"))
    with pytest.raises(conform.ConfigError, match="unknown source|no source"):
        conform.transform(str(demo / "config.json"), "nope")
    config = read_config(demo / "config.json")
    config["data_sources"]["source1"]["path"] = str(tmp_path / "missing.csv")
    config["output_directory"] = str(tmp_path / "out")
    with pytest.raises(conform.SourceError, match="missing.csv"):
        conform.transform(config, "source1")
    with pytest.raises(ValueError, match="unknown mapper"):
        conform.map(config, mapper="oracle")
    with pytest.raises(TypeError):
        conform.run(42)


def test_ctrl_c_interrupts_a_long_run_and_leaves_no_partial_output(orders_1m, bench_config, tmp_path, root):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, sys, conform
        os.environ["CONFORM_BENCH_INPUT"] = {str(orders_1m)!r}
        os.environ["CONFORM_BENCH_OUT"] = {str(out)!r}
        print("started", flush=True)
        try:
            conform.run({str(root / "testdata" / "bench" / "config.json")!r})
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    # Interrupt once the outputs are being written (their temporary files exist).
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(".tmp-" in p.name for p in out.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, rest
    assert "interrupted" in rest
    # No output under its final name, and no temporary file: the interrupted call waits for
    # the writer threads it stopped awaiting to remove theirs before raising.
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not any(n.endswith((".parquet", ".ndjson")) for n in leftovers), leftovers
    assert not any(".tmp-" in n for n in leftovers), leftovers


def measure(code, env):
    """Runs `code` in a fresh interpreter; returns (stdout lines, peak RSS in MiB)."""
    wrapped = code + "\nimport resource\nprint('rss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    out = subprocess.run([sys.executable, "-c", wrapped], env=env, check=True, capture_output=True, text=True)
    lines = out.stdout.split("\n")
    rss = float(next(l for l in lines if l.startswith("rss")).split()[1])
    return lines, rss


def test_a_million_rows_stream_with_bounded_memory(orders_1m, bench_config, conform_bin, tmp_path, root):
    env = dict(os.environ, CONFORM_BENCH_INPUT=str(orders_1m), CONFORM_BENCH_OUT=str(tmp_path / "cli"))
    config = str(root / "testdata" / "bench" / "config.json")
    subprocess.run([conform_bin, "-q", "run", "--config", config, "--progress", "never"], env=env, check=True, stdout=subprocess.DEVNULL)
    cli = json.loads((tmp_path / "cli" / "run_summary.json").read_text())
    cli_rss = cli["peak_rss_mb"]
    expected = cli["sources"]["orders"]
    env["CONFORM_BENCH_OUT"] = str(tmp_path / "py")
    lines, py_rss = measure(
        textwrap.dedent(
            f"""
            import pyarrow as pa, conform
            valid, invalid = conform.transform({config!r}, "orders")
            reader = pa.RecordBatchReader.from_stream(valid)
            n = sum(b.num_rows for b in reader)
            bad = sum(b.num_rows for b in pa.RecordBatchReader.from_stream(invalid))
            print("rows", n, bad)
            """
        ),
        env,
    )
    rows = next(l for l in lines if l.startswith("rows")).split()
    assert (int(rows[1]), int(rows[2])) == (expected["valid"], expected["invalid"])
    # The interpreter and pyarrow take their own share; the engine's part must stay bounded.
    assert py_rss < 2 * cli_rss + 150, (py_rss, cli_rss)
    lines, _ = measure(
        textwrap.dedent(
            f"""
            import polars as pl, conform
            valid, invalid = conform.transform({config!r}, "orders")
            invalid.close()
            print("rows", pl.DataFrame(valid).height)
            """
        ),
        env,
    )
    rows = next(l for l in lines if l.startswith("rows")).split()
    assert int(rows[1]) == expected["valid"]
