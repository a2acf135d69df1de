#!/usr/bin/env python3
"""Peak memory of in-memory data against the file: the orders benchmark's rows run once as
their CSV file (`conform.transform(config, "orders")`) and once as a stream of Arrow batches
made by a Python generator (`conform.transform(stream, schema, mapping=...)`), each in its own
interpreter, with the job's pinned mapping. Prints both runs' counts, times and peak RSS, and
exits 1 when the counts differ or the stream's peak is over 1.5 times the file's.

    scripts/stream_memory.py --rows 10000000        # generates the rows (scripts/gen_data.py)
    scripts/stream_memory.py --csv orders_1m.csv    # an existing file

Run it with the interpreter that has the package and pyarrow (scripts/test-python's
environment: target/test-deps/py/bin/python). python/tests/test_data.py runs the same
comparison on a million rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "testdata" / "bench" / "config.json"
MAPPING = ROOT / "testdata" / "bench" / "orders.mapping.json"
LIMIT = 1.5

# Both runs end by printing their counts and the interpreter's peak RSS.
TAIL = """
import resource, time
n = sum(b.num_rows for b in pa.RecordBatchReader.from_stream(valid))
bad = sum(b.num_rows for b in pa.RecordBatchReader.from_stream(invalid))
print(json.dumps({"valid": n, "invalid": bad, "rows": n + bad,
                  "seconds": round(time.monotonic() - started, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""

FILE_RUN = """
import json, time, pyarrow as pa, conform
started = time.monotonic()
valid, invalid = conform.transform(CONFIG, "orders")
"""

STREAM_RUN = """
import csv, json, re, time, pyarrow as pa, pyarrow.csv as pacsv, conform
started = time.monotonic()
config = json.loads(re.sub(r"^\\s*//.*$", "", open(CONFIG).read(), flags=re.M))
with open(CSV, newline="", encoding="utf-8") as f:
    columns = next(csv.reader(f))
# Text columns, empty fields as nulls: what conform's own CSV reader makes of the file.
reader = pacsv.open_csv(
    CSV,
    parse_options=pacsv.ParseOptions(newlines_in_values=True),
    convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns}, strings_can_be_null=True, null_values=[""]
    ),
)
def batches():
    for batch in reader:
        yield batch
stream = pa.RecordBatchReader.from_batches(reader.schema, batches())
valid, invalid = conform.transform(stream, config["internal_schema"], mapping=MAPPING,
                                   name="orders", anomalies={"enabled": False})
"""


def run(code: str, csv_path: Path, out: Path) -> dict:
    prelude = f"CONFIG = {str(CONFIG)!r}\nCSV = {str(csv_path)!r}\nMAPPING = {str(MAPPING)!r}\n"
    env = dict(os.environ, CONFORM_BENCH_INPUT=str(csv_path), CONFORM_BENCH_OUT=str(out))
    p = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code) + TAIL],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if p.returncode != 0:
        raise RuntimeError(f"the run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def compare(csv_path: Path) -> dict:
    """Both runs over `csv_path`: {"file": {...}, "stream": {...}, "ratio": peak / peak}."""
    with tempfile.TemporaryDirectory() as tmp:
        file = run(FILE_RUN, csv_path, Path(tmp) / "file")
        stream = run(STREAM_RUN, csv_path, Path(tmp) / "stream")
    return {"file": file, "stream": stream, "ratio": round(stream["peak_rss_mb"] / file["peak_rss_mb"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--rows", type=int, help="generate this many rows with scripts/gen_data.py")
    g.add_argument("--csv", type=Path, help="an orders CSV file made by scripts/gen_data.py")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = args.csv
        if csv_path is None:
            prefix = Path(tmp) / "orders"
            subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "gen_data.py"), "--rows", str(args.rows), "--out", str(prefix)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            csv_path = Path(str(prefix) + ".csv")
        result = compare(csv_path)
    for kind in ["file", "stream"]:
        r = result[kind]
        print(f"{kind:6} rows {r['rows']:>10,}  valid {r['valid']:>10,}  invalid {r['invalid']:>9,}  "
              f"{r['seconds']:>7.1f} s  peak RSS {r['peak_rss_mb']:>7.1f} MiB")
    print(f"stream / file peak RSS: {result['ratio']:.2f} (limit {LIMIT})")
    same = all(result["file"][k] == result["stream"][k] for k in ["valid", "invalid", "rows"])
    if not same:
        print("the counts differ", file=sys.stderr)
    return 0 if same and result["ratio"] <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
