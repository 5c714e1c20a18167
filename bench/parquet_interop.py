"""Opens every dataset in a medtune workdir's catalog with pyarrow, polars, duckdb and HF
datasets, and checks each sees the row count and columns the manifest records.

usage: python bench/parquet_interop.py WORKDIR
"""
import json
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
from datasets import load_dataset


def main(workdir: Path) -> int:
    catalog = json.loads((workdir / "catalog.json").read_text())
    failures = 0
    for name, entry in sorted(catalog["datasets"].items()):
        entry_dir = workdir / "cache" / entry["stage"] / entry["key"]
        manifest = json.loads((entry_dir / "manifest.json").read_text())["datasets"][name]
        files = [str(entry_dir / f["path"]) for f in manifest["files"]]
        columns = [c["name"] for c in manifest["schema"]]
        seen = {
            "pyarrow": (lambda t: (t.num_rows, t.column_names))(pq.ParquetDataset(files).read()),
            "polars": (lambda d: (d.height, d.columns))(pl.read_parquet(files)),
            "duckdb": (
                duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0],
                [c for c in duckdb.sql(f"SELECT * FROM read_parquet({files!r}) LIMIT 0").columns],
            ),
        }
        if manifest["rows"] > 0:
            seen["datasets"] = (lambda d: (d.num_rows, d.column_names))(
                load_dataset("parquet", data_files=files, split="train")
            )
        else:
            # HF datasets refuses a split without rows ("corresponds to no data"), whatever
            # the file; pyarrow, polars and duckdb above read the empty part fine.
            print(f"{name}: datasets skipped (0 rows)")
        for reader, (rows, cols) in seen.items():
            ok = rows == manifest["rows"] and list(cols) == columns
            failures += not ok
            print(f"{name}: {reader} rows={rows} columns={len(cols)} {'ok' if ok else 'MISMATCH'}")
        failures += check_part_stats(name, entry_dir, manifest)
    return 1 if failures else 0


def check_part_stats(name: str, entry_dir: Path, manifest: dict) -> int:
    """Parts with a label and statistics (training shards): each file, read by duckdb and by
    polars, holds the one split its label names, and the rows and length sum / min / max its
    manifest entry records."""
    failures = checked = 0
    for part in manifest["files"]:
        if "label" not in part or part["rows"] == 0:
            continue
        checked += 1
        path = str(entry_dir / part["path"])
        want = (part["rows"], part["stats"]["length"]["sum"], part["stats"]["length"]["min"],
                part["stats"]["length"]["max"], [part["label"]])
        by_duckdb = duckdb.sql(
            f"SELECT count(*), sum(length), min(length), max(length), list(DISTINCT split) "
            f"FROM read_parquet('{path}')").fetchall()[0]
        frame = pl.read_parquet(path)
        by_polars = (frame.height, frame["length"].sum(), frame["length"].min(),
                     frame["length"].max(), frame["split"].unique().to_list())
        for reader, got in (("duckdb", by_duckdb), ("polars", by_polars)):
            ok = tuple(got[:4]) == want[:4] and list(got[4]) == want[4]
            failures += not ok
            if not ok:
                print(f"{name}: {part['path']}: {reader} sees {got}, manifest says {want}")
    if checked:
        print(f"{name}: part stats of {checked} parts {'ok' if not failures else 'MISMATCH'}")
    return failures


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
