"""Object-store paths against a real S3 API (the moto server on 127.0.0.1): globbed inputs,
Parquet outputs written by multipart upload, the mappings directory, credentials, missing
buckets and keys, and a killed run."""

import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import conform
from conftest import env_without_aws, read_config


def bucket(s3):
    name = "b" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=name)
    return name


def s3_env(s3, **extra):
    return dict(env_without_aws(), **s3.env(), **extra)


def run_cli(conform_bin, config_path, env, *args):
    return subprocess.run(
        [conform_bin, "run", "--config", str(config_path), "--progress", "never", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def orders_config(root, path, out):
    config = read_config(root / "testdata" / "bench" / "config.json")
    config["data_sources"]["orders"]["path"] = path
    config["data_sources"]["orders"]["mapping"] = str(root / "testdata" / "bench" / "orders.mapping.json")
    config["output_directory"] = out
    return config


def sorted_rows(table):
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def test_s3_job_gives_the_same_rows_as_the_local_run(s3, root, conform_bin, tmp_path):
    b = bucket(s3)
    client = s3.client()
    small = root / "testdata" / "bench" / "orders_small.csv"
    lines = small.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    half = len(body) // 2
    local = tmp_path / "in"
    local.mkdir()
    for i, part in enumerate([body[:half], body[half:]]):
        text = header + "".join(part)
        (local / f"part{i}.csv").write_text(text)
        client.put_object(Bucket=b, Key=f"orders/part{i}.csv", Body=text.encode())
    client.put_object(Bucket=b, Key="orders/notes.txt", Body=b"not matched by the glob")
    client.put_object(Bucket=b, Key="orders/deeper/part9.csv", Body=b"x\n1\n")

    local_cfg = tmp_path / "local.json"
    local_cfg.write_text(json.dumps(orders_config(root, str(local / "*.csv"), str(tmp_path / "out"))))
    r = run_cli(conform_bin, local_cfg, env_without_aws(), "--format", "parquet")
    assert r.returncode == 0, r.stderr

    s3_cfg = tmp_path / "s3.json"
    s3_cfg.write_text(json.dumps(orders_config(root, f"s3://{b}/orders/*.csv", f"s3://{b}/out")))
    r = run_cli(conform_bin, s3_cfg, s3_env(s3), "--format", "parquet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Data saved to s3://{b}/out/orders_valid_data.parquet" in r.stdout

    keys = {o["Key"] for o in client.list_objects_v2(Bucket=b, Prefix="out/")["Contents"]}
    assert {"out/orders_valid_data.parquet", "out/orders_invalid_data.ndjson", "out/run_summary.json"} <= keys
    remote = pq.read_table(io.BytesIO(client.get_object(Bucket=b, Key="out/orders_valid_data.parquet")["Body"].read()))
    here = pq.read_table(tmp_path / "out" / "orders_valid_data.parquet")
    assert remote.num_rows == here.num_rows > 0
    # Provenance names the file each row came from: compare the rows without it.
    strip = lambda t: t.drop_columns([c for c in t.column_names if c.startswith("_")])
    assert sorted_rows(strip(remote)) == sorted_rows(strip(here))
    bad_remote = client.get_object(Bucket=b, Key="out/orders_invalid_data.ndjson")["Body"].read().decode().splitlines()
    bad_local = (tmp_path / "out" / "orders_invalid_data.ndjson").read_text().splitlines()
    assert len(bad_remote) == len(bad_local)
    summary = json.loads(client.get_object(Bucket=b, Key="out/run_summary.json")["Body"].read())
    local_summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["totals"] == local_summary["totals"]

    # A Parquet input on the store is read back (footer and column chunks by range).
    client.put_object(Bucket=b, Key="pq/orders.parquet", Body=client.get_object(Bucket=b, Key="out/orders_valid_data.parquet")["Body"].read())
    config = read_config(root / "testdata" / "demo" / "config.json")
    config["data_sources"] = {"again": {"path": f"s3://{b}/pq/orders.parquet"}}
    config["output_directory"] = f"s3://{b}/out2"
    config["internal_schema"] = read_config(root / "testdata" / "bench" / "config.json")["internal_schema"]
    env = s3_env(s3)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        valid, invalid = conform.transform(config, "again", mapper="heuristic")
        table = pa.RecordBatchReader.from_stream(valid).read_all()
        invalid.close()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert table.num_rows == here.num_rows


def test_storage_settings_in_the_config_and_credentials_errors(s3, root, conform_bin, tmp_path):
    b = bucket(s3)
    s3.client().put_object(Bucket=b, Key="in/source1.csv", Body=(root / "testdata" / "demo" / "source1.csv").read_bytes())
    config = read_config(root / "testdata" / "demo" / "config.json")
    config["data_sources"] = {"crm": {"path": f"s3://{b}/in/source1.csv"}}
    config["output_directory"] = f"s3://{b}/out"
    config["storage"] = {
        f"s3://{b}": {
            "endpoint": s3.endpoint,
            "allow_http": True,
            "region": "us-east-1",
            "access_key_id": "${TEST_KEY_ID}",
            "secret_access_key": "${TEST_SECRET}",
        }
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = dict(env_without_aws(), TEST_KEY_ID=s3.access_key, TEST_SECRET=s3.secret_key)
    r = run_cli(conform_bin, path, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully validated 2 items from crm" in r.stdout
    # Wrong credentials: the original tool's words, and the secret nowhere.
    wrong = "wrong-secret-value-1234"
    env["TEST_SECRET"] = wrong
    r = run_cli(conform_bin, path, env)
    assert r.returncode == 1
    assert "Invalid credentials for crm" in r.stdout
    assert wrong not in r.stdout + r.stderr
    # A source's own credentials apply to its objects, over the storage entry.
    env["TEST_SECRET"] = s3.secret_key
    config["data_sources"]["crm"]["credentials"] = {"secret_access_key": "${TEST_SOURCE_SECRET}"}
    path.write_text(json.dumps(config))
    env["TEST_SOURCE_SECRET"] = wrong
    r = run_cli(conform_bin, path, env)
    assert "Invalid credentials for crm" in r.stdout, r.stdout + r.stderr
    assert f"refused reading s3://{b}/in/source1.csv" in r.stderr, r.stderr
    assert wrong not in r.stdout + r.stderr
    env["TEST_SOURCE_SECRET"] = s3.secret_key
    r = run_cli(conform_bin, path, env)
    assert "Successfully validated 2 items from crm" in r.stdout, r.stdout + r.stderr
    # A misspelt setting is a config error before anything runs.
    config["storage"][f"s3://{b}"]["endpont"] = "x"
    path.write_text(json.dumps(config))
    r = run_cli(conform_bin, path, env)
    assert r.returncode == 2 and "unknown storage setting `endpont`" in r.stderr, r.stderr


def test_missing_bucket_or_key_is_a_clear_error(s3, root, conform_bin, tmp_path):
    b = bucket(s3)
    config = read_config(root / "testdata" / "demo" / "config.json")
    config["output_directory"] = str(tmp_path / "out")
    config["data_sources"] = {
        "nokey": {"path": f"s3://{b}/nothing/here.csv"},
        "noglob": {"path": f"s3://{b}/nothing/*.csv"},
        "nobucket": {"path": "s3://no-such-bucket-x/a.csv"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    r = run_cli(conform_bin, path, s3_env(s3))
    assert r.returncode == 1
    assert f"s3://{b}/nothing/here.csv does not exist" in r.stderr, r.stderr
    assert "no object matches" in r.stderr
    assert "source `nobucket` failed" in r.stderr


def test_a_killed_run_leaves_no_object_under_a_final_key(s3, root, conform_bin, orders_1m, tmp_path):
    b = bucket(s3)
    client = s3.client()
    client.upload_file(str(orders_1m), b, "big/orders.csv")
    config = orders_config(root, f"s3://{b}/big/orders.csv", f"s3://{b}/out")
    config["output_format"] = "ndjson"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [conform_bin, "-q", "run", "--config", str(path), "--progress", "never"],
        env=s3_env(s3),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        uploading = False
        while time.time() < deadline and proc.poll() is None:
            uploads = client.list_multipart_uploads(Bucket=b).get("Uploads", [])
            if any(u["Key"].startswith("out/") for u in uploads):
                uploading = True
                break
            time.sleep(0.2)
        assert uploading, "no multipart upload was seen before the run ended"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=b, Prefix="out/").get("Contents", [])}
    assert not any(k.endswith(("_valid_data.ndjson", "_invalid_data.ndjson", "run_summary.json")) for k in keys), keys


def start_cluster_process(conform_bin, args, env):
    """`conform cluster ARGS`, once it says it is ready."""
    proc = subprocess.Popen(
        [conform_bin, "cluster", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if " ready on " in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"conform cluster {args} did not get ready")


def free_port_pair():
    import socket

    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
        if p >= 65000:
            continue
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue


def test_a_cluster_reads_and_writes_the_store_directly(s3, root, conform_bin, tmp_path):
    b = bucket(s3)
    client = s3.client()
    client.put_object(Bucket=b, Key="orders/orders_small.csv", Body=(root / "testdata" / "bench" / "orders_small.csv").read_bytes())
    env = s3_env(s3)
    sp = free_port_pair()
    procs = [start_cluster_process(conform_bin, ["scheduler", "--host", "127.0.0.1", "--port", str(sp)], env)]
    try:
        ep = free_port_pair()
        procs.append(
            start_cluster_process(
                conform_bin,
                ["executor", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(sp), "--port", str(ep)],
                env,
            )
        )
        config = orders_config(root, f"s3://{b}/orders/*.csv", f"s3://{b}/cluster")
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        r = run_cli(conform_bin, path, env, "--format", "parquet", "--cluster", f"df://127.0.0.1:{sp}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ran on the cluster at" in r.stderr
        local_cfg = tmp_path / "local.json"
        local_cfg.write_text(json.dumps(orders_config(root, str(root / "testdata" / "bench" / "orders_small.csv"), str(tmp_path / "out"))))
        assert run_cli(conform_bin, local_cfg, env_without_aws(), "--format", "parquet").returncode == 0
        keys = sorted(
            o["Key"]
            for o in client.list_objects_v2(Bucket=b, Prefix="cluster/orders_valid_data")["Contents"]
            if o["Key"].endswith(".parquet")
        )
        assert keys, "no part files in the store"
        parts = [pq.read_table(io.BytesIO(client.get_object(Bucket=b, Key=k)["Body"].read())) for k in keys]
        remote = pa.concat_tables(parts)
        here = pq.read_table(tmp_path / "out" / "orders_valid_data.parquet")
        strip = lambda t: t.drop_columns([c for c in t.column_names if c.startswith("_")])
        assert sorted_rows(strip(remote)) == sorted_rows(strip(here))
    finally:
        for p in procs:
            p.kill()
            p.wait()
