"""End-to-end prep at HealthCareMagic scale: medtune against the Python stack
(bench/reference_pipeline.py: HF `datasets` with batched maps, `tokenizers`), with exact dedup
only and with near-duplicate detection (the reference's near-duplicates two ways: `datasketch`,
the usual choice, and a vectorised numpy MinHash, the fast one); each step's seconds on both
sides; the tokenize stage against a bare `tokenizers` `encode_batch` of the same texts, and every
sequence medtune wrote checked id for id against that encode_batch's; medtune
warm and after a 1% append; SQL through `medtune query` against DuckDB on the same Parquet files.
Everything runs in this one invocation on this machine; wall seconds and peak RSS come from
`/usr/bin/time -v`.

usage: python bench/e2e.py MEDTUNE_BIN WORK_DIR [ROWS]   (bench/e2e.sh sets it all up)
"""
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "data" / "chatdoctor" / "chatdoctor5k.json"
TOKENIZER = REPO / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"
STAGES = ["ingest", "dedup", "convert", "clean", "split", "tokenize", "shard"]
MAX_LENGTH = 512


def corpus(path: Path, rows: int, offset: int = 0) -> list:
    """`rows` alpaca rows built from chatdoctor5k (three source rows joined per field, a unique
    marker per row); every 100th row repeats the row before it exactly."""
    source = json.loads(SOURCE.read_text())
    n = len(source)
    out = []
    for r in range(offset, offset + rows):
        if r % 100 == 99 and out:
            out.append(dict(out[-1]))
            continue
        i, j, k = r % n, (r * 7919 + 3) % n, (r * 104729 + 11) % n
        joined = lambda f: " ".join(source[x].get(f, "") for x in (i, j, k))
        out.append({
            "instruction": source[i]["instruction"],
            "input": f"{joined('input')} (#{r})",
            "output": joined("output"),
        })
    return out


def write_array(path: Path, rows: list) -> None:
    with path.open("w") as f:
        f.write("[\n")
        for i, row in enumerate(rows):
            f.write((",\n" if i else "") + json.dumps(row, indent=2))
        f.write("\n]\n")


CONFIG = """
[ingest]
format = "alpaca"
inputs = ["{input}"]

[dedup]
columns = ["instruction", "input"]

[dedup.near]
{near}

[convert]

[clean]

[split]
fractions = {{ train = 0.8, validation = 0.1, test = 0.1 }}
seed = 42
text_columns = ["instruction", "input"]

[tokenize]
tokenizer = "{tokenizer}"
mode = "sft"
template = "plain"
max_length = {max_length}
overflow = "truncate"

[shard]
shard_mib = 64
"""


def timed(cmd: list, **kwargs) -> dict:
    """Runs `cmd` under /usr/bin/time -v: wall seconds, peak RSS (MiB), stdout."""
    proc = subprocess.run(["/usr/bin/time", "-v", *map(str, cmd)], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return {"seconds": seconds, "rss_mib": rss / 1024, "stdout": proc.stdout}


def manifests(workdir: Path) -> dict:
    catalog = json.loads((workdir / "catalog.json").read_text())
    out = {}
    for stage, key in catalog["stages"].items():
        out[stage] = json.loads((workdir / "cache" / stage / key / "manifest.json").read_text())
    return out


def dataset_files(workdir: Path, name: str) -> list:
    catalog = json.loads((workdir / "catalog.json").read_text())
    entry = catalog["datasets"][name]
    manifest = json.loads((workdir / "cache" / entry["stage"] / entry["key"] / "manifest.json").read_text())
    base = workdir / "cache" / entry["stage"] / entry["key"]
    return [str(base / f["path"]) for f in manifest["datasets"][name]["files"]]


def same_ids(workdir: Path, digests: Path) -> str:
    """Every sequence of medtune's `tokenized` against the encode_batch sequences (digests
    written by bench/encode_batch.py): how many have no equal there, and how many encode_batch
    rows medtune does not have (rows its clean or tokenize stages dropped)."""
    from collections import Counter

    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from encode_batch import sequence_digest

    ours = Counter()
    for path in dataset_files(workdir, "tokenized"):
        for ids in pq.read_table(path, columns=["input_ids"]).column("input_ids").to_pylist():
            ours[sequence_digest(ids)] += 1
    theirs = Counter(digests.read_text().split())
    differing = sum((ours - theirs).values())
    missing = sum((theirs - ours).values())
    return (
        f"{sum(ours.values()) - differing:,} of {sum(ours.values()):,} sequences medtune wrote have exactly "
        f"the ids of encode_batch's ({differing} differ); {missing} encode_batch rows are not in medtune's output"
    )


def splits(medtune: Path, workdir: Path) -> dict:
    """`id -> (split, split_group)` of every row of the `split` dataset."""
    out = subprocess.run(
        [medtune, "--workdir", workdir, "query", "SELECT id, split, split_group FROM split", "--format", "csv"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {r["id"]: (r["split"], r["split_group"]) for r in csv.DictReader(io.StringIO(out))}


QUERIES = [
    ("baseline: SELECT 1 (process start, catalog)", "SELECT 1"),
    ("rows and mean length per split", "SELECT split, count(*) AS n, avg(length) AS mean_length FROM tokenized GROUP BY split ORDER BY split"),
    ("groups per split", "SELECT split, count(DISTINCT split_group) AS groups FROM split GROUP BY split ORDER BY split"),
    ("join: long rows per split", "SELECT s.split, count(*) AS n FROM split s JOIN tokenized t ON s.id = t.id WHERE t.length > 256 GROUP BY s.split ORDER BY s.split"),
]


def main(medtune: Path, work: Path, rows: int) -> int:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "healthcaremagic-like.json"
    base_rows = corpus(data, rows)
    write_array(data, base_rows)
    print(f"corpus: {rows} rows, {data.stat().st_size / 2**20:.1f} MiB ({SOURCE.name} recombined, 1% exact duplicates)")
    exact_config = work / "exact.toml"
    exact_config.write_text(CONFIG.format(input=data, tokenizer=TOKENIZER, near="enabled = false", max_length=MAX_LENGTH))
    config = work / "bench.toml"
    config.write_text(CONFIG.format(input=data, tokenizer=TOKENIZER, near='action = "group"', max_length=MAX_LENGTH))
    exact_workdir = work / "medtune-exact"
    workdir = work / "medtune"
    run = [medtune, "--workdir", workdir, "run", "--config", config]

    results = {}
    results["medtune exact dedup, cold"] = timed([medtune, "--workdir", exact_workdir, "run", "--config", exact_config])
    exact_manifests = manifests(exact_workdir)
    results["medtune cold"] = timed(run)
    cold_manifests = manifests(workdir)
    cold_splits = splits(medtune, workdir)
    results["medtune warm"] = timed(run)
    appended = base_rows + corpus(data, rows // 100, offset=rows)
    write_array(data, appended)
    results["medtune append 1%"] = timed(run)
    append_manifests = manifests(workdir)
    append_splits = splits(medtune, workdir)
    write_array(data, base_rows)
    summaries = {}
    for near in ("none", "numpy", "datasketch"):
        name = f"reference, near-duplicates: {near}"
        results[name] = timed(
            [sys.executable, REPO / "bench" / "reference_pipeline.py", data, TOKENIZER, work / f"reference-{near}", "--near", near]
        )
        summaries[near] = json.loads(results[name]["stdout"].strip().splitlines()[-1])
    digests = work / "encode_batch-sft-digests.txt"
    bare = timed([sys.executable, REPO / "bench" / "encode_batch.py", data, TOKENIZER, "--sft-digests", digests, str(MAX_LENGTH)])
    bare_summary = json.loads(bare["stdout"].strip().splitlines()[-1])
    ids_check = same_ids(exact_workdir, digests)

    print("\n| run | wall s | peak RSS MiB |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['rss_mib']:.0f} |")
    pairs = [
        ("exact dedup only", "medtune exact dedup, cold", "none"),
        ("near-duplicates (numpy reference)", "medtune cold", "numpy"),
        ("near-duplicates (datasketch reference)", "medtune cold", "datasketch"),
    ]
    print("\n| pipeline | medtune s | reference s | wall medtune / reference | RSS medtune / reference |")
    print("|---|---|---|---|---|")
    for title, ours, near in pairs:
        m, r = results[ours], results[f"reference, near-duplicates: {near}"]
        print(f"| {title} | {m['seconds']:.1f} | {r['seconds']:.1f} | {m['seconds'] / r['seconds']:.2f}x | {m['rss_mib'] / r['rss_mib']:.2f}x |")
    for near, summary in summaries.items():
        print(f"reference ({near}): {json.dumps(summary)}")

    # Each step's seconds: medtune's stages (from the manifests) beside the reference's steps.
    steps = [
        ("read + keys", ["ingest"], ["load", "keys"]),
        ("exact dedup (+ near-duplicates)", ["dedup"], ["exact_dedup", "groups", "near_signatures", "near_matrix", "near_lsh", "near_dedup"]),
        ("convert + clean", ["convert", "clean"], ["clean"]),
        ("split", ["split"], ["split"]),
        ("tokenize", ["tokenize"], ["tokenize"]),
        ("shards", ["shard"], ["shards"]),
    ]
    print("\n| step | medtune exact | reference none | medtune near | reference numpy | reference datasketch |")
    print("|---|---|---|---|---|---|")
    for title, ours, theirs in steps:
        cells = [sum(exact_manifests[s]["seconds"] for s in ours)]
        cells.append(sum(summaries["none"]["steps"].get(t, 0) for t in theirs))
        cells.append(sum(cold_manifests[s]["seconds"] for s in ours))
        cells += [sum(summaries[n]["steps"].get(t, 0) for t in theirs) for n in ("numpy", "datasketch")]
        print(f"| {title} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    tokenize_s = exact_manifests["tokenize"]["seconds"]
    print(
        f"\ntokenize: the stage {tokenize_s:.2f} s; a bare `tokenizers` encode_batch of the same "
        f"prompts and completions {bare_summary['seconds']:.2f} s ({bare_summary['tokens']:,} tokens, "
        f"all cores): the stage runs at {bare_summary['seconds'] / tokenize_s:.2f}x the library it wraps"
    )
    print(f"ids: {ids_check}")

    cold = results["medtune cold"]
    # Per-stage throughput of the cold run.
    print("\n| stage | rows in | seconds | rows/s | MB in | MB/s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for stage in STAGES:
        m = cold_manifests[stage]
        seconds = max(m["seconds"], 1e-9)
        # Bytes read: source files plus input datasets (Parquet, compressed).
        mb = sum(Path(src["path"]).stat().st_size for src in m["sources"] if Path(src["path"]).exists())
        for up in m["inputs"]:
            mb += sum(d["bytes"] for m2 in cold_manifests.values() for name, d in m2["datasets"].items() if name == up)
        mb /= 1e6
        tokens = m["counters"].get("tokens")
        tps = f"{tokens / seconds:,.0f}" if tokens else ""
        rows_in = m["accounting"]["rows_in"]
        print(f"| {stage} | {rows_in:,} | {seconds:.2f} | {rows_in / seconds:,.0f} | {mb:.1f} | {mb / seconds:.1f} | {tps} |")

    # The append run: what each stage processed, and whether old rows kept their splits.
    print("\n| stage (append 1%) | extended its previous output | rows processed | rows in total | seconds |")
    print("|---|---|---|---|---|")
    for stage in STAGES:
        m, c = append_manifests[stage], cold_manifests[stage]
        total = m["accounting"]["rows_in"]
        extended = m.get("extends") == c["key"]
        new = total - c["accounting"]["rows_in"] if extended else total
        print(f"| {stage} | {'yes' if extended else 'no'} | {new:,} | {total:,} | {m['seconds']:.2f} |")
    moved = sum(1 for i, placed in cold_splits.items() if append_splits.get(i) != placed)
    new_ids = [i for i in append_splits if i not in cold_splits]
    per_split = {s: sum(1 for i in new_ids if append_splits[i][0] == s) for s in ("train", "validation", "test")}
    print(f"\nappend: {len(cold_splits):,} old rows, {moved} moved split or group; {len(new_ids):,} new rows placed {per_split}")

    # SQL: medtune query (a process per query) against DuckDB on the same Parquet files.
    import duckdb

    print("\n| query | medtune process s | medtune query s (in process) | DuckDB query s (in process) | DuckDB process s | in process: medtune / DuckDB | process: medtune / DuckDB |")
    print("|---|---|---|---|---|---|---|")
    for title, sql in QUERIES:
        medtune_times, medtune_query = [], []
        for _ in range(3):
            t = time.perf_counter()
            done = subprocess.run(
                [medtune, "--workdir", workdir, "query", sql, "--format", "csv", "--timing"],
                check=True, capture_output=True, text=True,
            )
            medtune_times.append(time.perf_counter() - t)
            ms = re.search(r"query ([\d.]+) ms", done.stderr).group(1)
            medtune_query.append(float(ms) / 1e3)
        views = "; ".join(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({dataset_files(workdir, name)!r})"
            for name in ("tokenized", "split")
        )
        in_process = []
        for _ in range(3):
            con = duckdb.connect()
            con.execute(views)
            t = time.perf_counter()
            con.sql(sql).fetchall()
            in_process.append(time.perf_counter() - t)
            con.close()
        script = f"import duckdb; c = duckdb.connect(); c.execute({views!r}); c.sql({sql!r}).fetchall()"
        process = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", script], check=True)
            process.append(time.perf_counter() - t)
        m, q, d, p = min(medtune_times), min(medtune_query), min(in_process), min(process)
        print(f"| {title} | {m:.3f} | {q:.4f} | {d:.4f} | {p:.3f} | {q / d:.2f} | {m / p:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 112_165))
