import os
import pathlib
import shutil

import pytest

from s3server import s3_server

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def conform_bin():
    """The CLI built by `cargo test` / `cargo build` (debug), to compare the package with."""
    path = ROOT / "target" / "debug" / "conform"
    if not path.exists():
        pytest.fail(f"{path} is missing: build it first with `cargo build`")
    return str(path)


@pytest.fixture()
def demo(tmp_path):
    """A private copy of the demo (config, two sources) in a temporary directory."""
    dest = tmp_path / "demo"
    shutil.copytree(ROOT / "testdata" / "demo", dest, ignore=shutil.ignore_patterns("output"))
    return dest


@pytest.fixture(scope="session")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def orders_1m(tmp_path_factory):
    """The orders benchmark source, 1,000,000 rows of CSV (generated once per session)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("orders") / "orders_1m"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_data.py"), "--rows", "1000000", "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return pathlib.Path(str(out) + ".csv")


def read_config(path):
    """A config file as a dict (the files may hold // comments)."""
    import json
    import re

    text = pathlib.Path(path).read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))


@pytest.fixture(scope="session")
def bench_config():
    return read_config(ROOT / "testdata" / "bench" / "config.json")


def env_without_aws():
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
