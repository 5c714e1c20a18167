"""Runs the row-mapped stages of configs/healthcaremagic-smollm2.toml over a HealthCareMagic-sized
corpus (bench/e2e.py's: 112,165 alpaca rows recombined from chatdoctor5k) in-process and on
Ballista clusters of 1 and 2 executors started on this machine, prints seconds per stage and
checks that every dataset has the same content hash in all three runs.

usage: python3 bench/cluster.py MEDTUNE CONFIG WORKDIR [ROWS]
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import corpus, write_array  # noqa: E402

STAGES = ["dedup", "clean", "tokenize"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def content_hashes(workdir):
    with open(os.path.join(workdir, "catalog.json")) as f:
        catalog = json.load(f)
    hashes = {}
    for name, entry in catalog["datasets"].items():
        path = os.path.join(workdir, "cache", entry["stage"], entry["key"], "manifest.json")
        with open(path) as f:
            hashes[name] = json.load(f)["datasets"][name]["content_hash"]
    return hashes


def stage_seconds(stdout):
    """Seconds per stage from the run summary table (last column)."""
    seconds = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").replace("┆", "|").split("|")]
        cells = [c for c in cells if c]
        if len(cells) >= 6 and cells[0] in STAGES and cells[1] == "ran":
            seconds[cells[0]] = float(cells[-1])
    return seconds


def engine_times(workdir):
    """Per stage: the manifest's engine record (jobs, job_seconds, waited_seconds) and seconds."""
    with open(os.path.join(workdir, "catalog.json")) as f:
        catalog = json.load(f)
    out = {}
    for entry in catalog["datasets"].values():
        if entry["stage"] in STAGES:
            path = os.path.join(workdir, "cache", entry["stage"], entry["key"], "manifest.json")
            with open(path) as f:
                manifest = json.load(f)
            out[entry["stage"]] = (manifest["seconds"], manifest.get("engine") or {})
    return out


def run(medtune, workdir, config, cluster=None):
    args = [medtune, "--workdir", workdir]
    if cluster:
        args += ["--cluster", cluster]
    args += ["run", "--config", config, "--force"]
    for stage in STAGES:
        args += ["--stage", stage]
    clock = time.perf_counter()
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - clock, stage_seconds(out)


def start_cluster(medtune, work, executors):
    scheduler = subprocess.Popen(
        [medtune, "scheduler", "--port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    url = scheduler.stdout.readline().strip().rsplit(" ", 1)[-1]
    procs = [scheduler]
    cores = os.cpu_count() or 1
    for n in range(executors):
        procs.append(subprocess.Popen(
            [medtune, "executor", "--scheduler", url, "--slots", str(max(1, cores // executors)),
             "--flight-port", str(free_port()), "--grpc-port", str(free_port()),
             "--work-dir", os.path.join(work, f"executor-{executors}-{n}")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(2)
    return url, procs


def main():
    medtune, source_config, work = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 112165
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = Path(work) / "healthcaremagic-like.json"
    write_array(data, corpus(data, n))
    folder = os.path.dirname(source_config)
    text = open(source_config).read().replace('"../', f'"{folder}/../')
    text = text.replace(f"{folder}/../../shared/data/chatdoctor/chatdoctor5k.json", str(data))
    assert str(data) in text
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as f:
        f.write(text)
    workdir = os.path.join(work, "workdir")
    # Everything up to tokenize once (ingest and split run on the driver either way).
    subprocess.run([medtune, "--workdir", workdir, "run", "--config", config,
                    "--stage", "tokenize"], check=True, capture_output=True)
    rows = {}
    results = []
    wall, seconds = run(medtune, workdir, config)
    reference = content_hashes(workdir)
    results.append(("in-process", wall, seconds))
    times = {"in-process": engine_times(workdir)}
    for executors in (1, 2):
        url, procs = start_cluster(medtune, work, executors)
        try:
            wall, seconds = run(medtune, workdir, config, url)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        times[f"cluster x{executors}"] = engine_times(workdir)
        same = content_hashes(workdir) == reference
        assert same, "a cluster run's datasets differ from the in-process run's"
        results.append((f"cluster, {executors} executor{'s' if executors > 1 else ''}", wall, seconds))
    with open(os.path.join(workdir, "catalog.json")) as f:
        catalog = json.load(f)
    for stage in STAGES:
        key = next(e["key"] for e in catalog["datasets"].values() if e["stage"] == stage)
        with open(os.path.join(workdir, "cache", stage, key, "manifest.json")) as f:
            rows[stage] = json.load(f)["accounting"]["rows_in"]
    print(f"{os.cpu_count()} cores; rows in: " + ", ".join(f"{s} {rows[s]}" for s in STAGES))
    print("| where | " + " | ".join(f"{s} s" for s in STAGES) + " | run wall s | vs in-process |")
    print("|---" * (len(STAGES) + 3) + "|")
    base = results[0][1]
    for name, wall, seconds in results:
        cells = [f"{seconds.get(s, float('nan')):.2f}" for s in STAGES]
        print(f"| {name} | " + " | ".join(cells) + f" | {wall:.1f} | {wall / base:.2f}x |")
    local = results[0][2]
    print("per-row cost in-process (µs/row): " + ", ".join(
        f"{s} {1e6 * local[s] / rows[s]:.1f}" for s in STAGES if s in local))
    print("content hashes: every dataset identical in all three runs")
    print()
    print("| where | stage | seconds | chunk jobs | job seconds (sum) | waiting for rows s | driver's own s |")
    print("|---|---|---|---|---|---|---|")
    for where, per_stage in times.items():
        for stage in STAGES:
            total, engine = per_stage[stage]
            waited = engine.get("waited_seconds", 0.0)
            print(f"| {where} | {stage} | {total:.2f} | {engine.get('jobs', 0)} | "
                  f"{engine.get('job_seconds', 0.0):.2f} | {waited:.2f} | {total - waited:.2f} |")


if __name__ == "__main__":
    main()
