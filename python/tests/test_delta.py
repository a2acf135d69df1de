"""Delta Lake output read back by the tools warehouses use: the `deltalake` package (delta-rs's
Python binding) and Polars. Local tables and tables on a real S3 API (the moto server)."""

import json
import uuid

import polars as pl
import pytest
from deltalake import DeltaTable

import conform
from conftest import read_config


def demo_config(demo, out, **delta):
    config = read_config(demo / "config.json")
    for source in config["data_sources"].values():
        source["path"] = str(demo / source["path"])
    config["output_format"] = "delta"
    config["output_directory"] = out
    if delta:
        config["delta"] = delta
    return config


def conform_commits(table):
    """conform's record of each commit, newest first."""
    return [c["conform"] for c in table.history() if "conform" in c]


def check_appends_and_overwrite(demo, out, storage_options=None, extra=None):
    config = demo_config(demo, out)
    config.update(extra or {})
    first = conform.run(config, run_id="py-first")
    assert first.ok, first
    counts = {name: (s["valid"], s["invalid"]) for name, s in first.to_dict()["sources"].items()}
    second = conform.run(config)
    assert second.ok

    valid = DeltaTable(f"{out}/source1_valid", storage_options=storage_options)
    assert valid.version() == 1
    rows = valid.to_pyarrow_table()
    assert rows.num_rows == 2 * counts["source1"][0]
    assert [f.name for f in valid.schema().fields] == list(config["internal_schema"]["properties"])
    commits = conform_commits(valid)
    assert len(commits) == 2
    assert {c["run_id"] for c in commits} == {"py-first", second.to_dict()["run_id"]}
    assert all(c["source"] == "source1" and c["table"] == "valid" for c in commits)
    assert all(c["valid"] == counts["source1"][0] for c in commits)

    invalid = DeltaTable(f"{out}/source2_invalid", storage_options=storage_options)
    bad = invalid.to_pyarrow_table().to_pylist()
    assert len(bad) == 2 * counts["source2"][1] > 0
    assert set(bad[0]) == {"source_file", "row", "record", "raw", "errors"}
    assert bad[0]["errors"] and {"field", "rule", "message"} <= set(bad[0]["errors"][0])
    json.loads(bad[0]["record"])

    # Polars reads the same table through its Delta reader.
    frame = pl.read_delta(f"{out}/source2_valid", storage_options=storage_options)
    assert frame.height == 2 * counts["source2"][0]

    config["delta"] = {"mode": "overwrite"}
    assert conform.run(config).ok
    valid = DeltaTable(f"{out}/source1_valid", storage_options=storage_options)
    assert valid.version() == 2
    assert valid.to_pyarrow_table().num_rows == counts["source1"][0]
    # Time travel: the version before the overwrite still has both runs' rows.
    valid.load_as_version(1)
    assert valid.to_pyarrow_table().num_rows == 2 * counts["source1"][0]
    return counts


def test_local_tables_append_and_overwrite(demo, tmp_path):
    check_appends_and_overwrite(demo, str(tmp_path / "out"))


def test_s3_tables_append_and_overwrite(demo, s3, tmp_path):
    b = "d" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=b)
    storage = {
        f"s3://{b}": {
            "endpoint": s3.endpoint,
            "region": "us-east-1",
            "allow_http": "true",
            "access_key_id": s3.access_key,
            "secret_access_key": s3.secret_key,
        }
    }
    options = {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    check_appends_and_overwrite(demo, f"s3://{b}/out", options, {"storage": storage})
    # Every object under the tables is a log entry or a data file the log knows of.
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=b, Prefix="out/source1_valid/")["Contents"]]
    data = {k.split("source1_valid/", 1)[1] for k in keys if k.endswith(".parquet")}
    table = DeltaTable(f"s3://{b}/out/source1_valid", storage_options=options)
    live = set(table.file_uris())
    assert all(any(u.endswith(d) for d in data) for u in live)


def test_a_partitioned_table_reads_back_with_its_partition_values(tmp_path):
    (tmp_path / "s.csv").write_text("id,region\n1,north\n2,south east\n3,north\n")
    config = {
        "output_directory": str(tmp_path / "out"),
        "output_format": "delta",
        "delta": {"partition_by": ["region"]},
        "data_sources": {"s": {"path": str(tmp_path / "s.csv")}},
        "internal_schema": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "region": {"type": "string"}},
        },
    }
    assert conform.run(config, mapper="heuristic").ok
    table = DeltaTable(str(tmp_path / "out" / "s_valid"))
    assert table.metadata().partition_columns == ["region"]
    rows = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert rows == [
        {"id": 1, "region": "north"},
        {"id": 2, "region": "south east"},
        {"id": 3, "region": "north"},
    ]
    frame = pl.read_delta(str(tmp_path / "out" / "s_valid")).sort("id")
    assert frame["region"].to_list() == ["north", "south east", "north"]


def test_a_bad_run_id_raises(demo, tmp_path):
    with pytest.raises(Exception, match="run_id"):
        conform.run(demo_config(demo, str(tmp_path / "out")), run_id="a/b")
