#!/usr/bin/env python3
"""Lay out conform's bench-job output the way scripts/peers/verify.py reads it.

    python3 scripts/bench_adapt.py CONFORM_OUT ADAPTED_DIR

File naming and layout only, never values: valid.parquet is a link to
orders_valid_data.parquet; each invalid row {"source_file", "row", "record", "errors"} becomes
{"_row": row - 1 (the references count records from 0), <record's columns>, "_errors":
["field:rule", ...]}; summary.json names the engine.
"""
import json
import os
import sys


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    link = os.path.join(dst, "valid.parquet")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(os.path.join(src, "orders_valid_data.parquet")), link)
    invalid = os.path.join(src, "orders_invalid_data.ndjson")
    with open(os.path.join(dst, "invalid.ndjson"), "w", encoding="utf-8") as out:
        if os.path.exists(invalid):
            with open(invalid, encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    row = {"_row": r["row"] - 1}
                    row.update(r["record"])
                    row["_errors"] = [f'{e["field"] or "(record)"}:{e["rule"]}' for e in r["errors"]]
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(os.path.join(dst, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"engine": "conform"}, f)


if __name__ == "__main__":
    main()
