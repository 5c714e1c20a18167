#!/usr/bin/env bash
# Reproduces the README's QLoRA tables (all-MiniLM-L6-v2 on BC5CDR): prepares the data stages,
# then `medtune train` and `medtune eval` with configs/bc5cdr-qlora.toml in a fresh workdir
# (release build, each under /usr/bin/time -v), and prints the README's table rows from the
# run's outputs: the train_log and metrics datasets, train_state.json and the manifests.
#
# usage: bench/qlora_bc5cdr.sh
#   MAX_STEPS=N   stop training after N optimiser steps (a quick check; the cosine schedule is
#                 then over N steps); the full run is 249 steps, ~11 min on 2 cores
#   BENCH_WORK    work folder (default /tmp/medtune-qlora-bench; its workdir/ is recreated)
#   CONFIG        the config to run (default configs/bc5cdr-qlora.toml, the official test set;
#                 configs/bc5cdr-qlora-pooled.toml re-splits the pooled files)
#   FEATURES      cargo features of the build (e.g. `cluster`, to reuse the test command's build)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scripts/fetch-model.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medtune-target}" # the .ci/run build cache
cargo build --release --quiet ${FEATURES:+--features "$FEATURES"}
bin="$CARGO_TARGET_DIR/release/medtune"
work="${BENCH_WORK:-/tmp/medtune-qlora-bench}"
wd="$work/workdir"
mkdir -p "$work"
rm -rf "$wd"

config="$root/${CONFIG:-configs/bc5cdr-qlora.toml}"
if [ -n "${MAX_STEPS:-}" ]; then
  case "$MAX_STEPS" in '' | *[!0-9]* | 0)
    echo "MAX_STEPS must be a positive integer, not '$MAX_STEPS'" >&2
    exit 2
    ;;
  esac
  if grep -q '^ *max_steps *=' "$config"; then
    echo "$config already sets max_steps; this script cannot cap it" >&2
    exit 2
  fi
  # A copy beside the workdir: relative paths made absolute, max_steps under [train.schedule].
  capped="$work/bc5cdr-qlora-max$MAX_STEPS.toml"
  sed "s|\"\\.\\./|\"$root/configs/../|g" "$config" |
    awk -v n="$MAX_STEPS" '{ print } /^\[train\.schedule\]/ { print "max_steps = " n }' >"$capped"
  if [ "$(grep -c "^max_steps = $MAX_STEPS\$" "$capped")" != 1 ]; then
    echo "could not set max_steps in $capped" >&2
    exit 1
  fi
  config="$capped"
fi

medtune() { "$bin" --workdir "$wd" "$@"; }
# Runs medtune under /usr/bin/time -v; its report goes to $work/<name>.time, output to <name>.log.
timed() {
  local name="$1"
  shift
  echo "+ medtune $*" >&2
  /usr/bin/time -v -o "$work/$name.time" "$bin" --workdir "$wd" "$@" >"$work/$name.log"
}
rss_mib() { awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$work/$1.time"; }
wall_s() {
  awk -F': ' '/Elapsed \(wall clock\)/ {
    n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.1f", s }' \
    "$work/$1.time"
}

echo "+ medtune run --stage shard (the data stages)" >&2
medtune run --config "$config" --stage shard >"$work/data.log"
timed train train --config "$config"
timed eval eval --config "$config"

entry() { # the cache entry folder of a stage's latest output
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["stages"][sys.argv[2]])' \
    "$wd/catalog.json" "$1" | sed "s|^|$wd/cache/$1/|"
}
train_dir="$(entry train)"
eval_dir="$(entry evaluate)"

# The cap took effect: the train stage ran with it and logged that many steps.
steps="$(medtune query "SELECT count(*) AS n FROM train_log" --format csv | tail -1)"
if [ -n "${MAX_STEPS:-}" ]; then
  ran_with="$(jq -r '.config.train.schedule.max_steps' "$train_dir/manifest.json")"
  if [ "$ran_with" != "$MAX_STEPS" ] || [ "$steps" -gt "$MAX_STEPS" ]; then
    echo "the step cap did not take effect: max_steps $ran_with, $steps steps logged" >&2
    exit 1
  fi
fi

medtune query "SELECT step, loss, labelled_tokens, tokens, seconds, eval_loss FROM train_log ORDER BY step" \
  --format json >"$work/train_log.json"
medtune query "SELECT model, family, \"group\", metric, value FROM metrics" \
  --format json >"$work/metrics.json"

python3 - "$work" "$train_dir" "$eval_dir" "$(wall_s train)" "$(rss_mib train)" \
  "$(wall_s eval)" "$(rss_mib eval)" "${MAX_STEPS:-}" <<'PY'
import json, math, sys
from pathlib import Path

work, train_dir, eval_dir = (Path(a) for a in sys.argv[1:4])
train_wall, train_rss, eval_wall, eval_rss, cap = sys.argv[4:9]
log = json.loads((work / "train_log.json").read_text())
rows = json.loads((work / "metrics.json").read_text())
train_manifest = json.loads((train_dir / "manifest.json").read_text())
state = json.loads((train_dir / "artifacts" / "train_state.json").read_text())
metric = {(r["model"], r["family"], r["group"], r["metric"]): r["value"] for r in rows}


def m(model, family, group, name):
    return metric[(model, family, group, name)]


def f3(x):
    return f"{x:.3f}"


def num(x):
    return float(x) if x is not None else math.nan


losses = [num(s["loss"]) for s in log if s["labelled_tokens"] > 0]
first, last = losses[:10], losses[-10:]
evals = [(s["step"], num(s["eval_loss"])) for s in log if s.get("eval_loss") is not None]
seconds = sum(s["seconds"] for s in log)
tokens = sum(s["tokens"] for s in log)
best = state.get("best") or {}
bits = train_manifest["counters"].get("base_bits_per_parameter_x1000")
types = sorted(
    g for (model, fam, g, name) in metric
    if model == "adapter" and fam == "entity_default" and name == "f1" and not g.endswith(" avg")
)
sentences = int(m("adapter", "throughput", "all", "sequences"))


def per_type(model, family):
    return ", ".join(f"{t} {f3(m(model, family, t, 'f1'))}" for t in types)


print()
print(f"QLoRA: all-MiniLM-L6-v2 on BC5CDR{f' (MAX_STEPS={cap})' if cap else ''}")
print(f"NF4 base: {bits / 1000:.3f} bits per parameter (counter base_bits_per_parameter_x1000 {bits})")
print()
print("| | |")
print("|---|---|")
print(f"| optimiser steps | {len(log)} (loss {sum(first) / len(first):.3g} over the first "
      f"{len(first)} steps → {sum(last) / len(last):.3g} over the last {len(last)}) |")
if evals:
    best_text = ""
    if best:
        best_text = f"; best: step {best['step']}, {float(best['loss']):.3f}, its adapter is the one saved"
    print(f"| validation loss | {evals[0][1]:.3f} (step {evals[0][0]}) → {evals[-1][1]:.3f} "
          f"(step {evals[-1][0]}{best_text}) |")
print(f"| test entity micro F1, seqeval default | **{f3(m('adapter', 'entity_default', 'micro avg', 'f1'))}** "
      f"({per_type('adapter', 'entity_default')}; {sentences:,} sentences) |")
print(f"| test entity micro F1, seqeval strict IOB2 | {f3(m('adapter', 'entity_strict', 'micro avg', 'f1'))} |")
print(f"| token-level weighted F1 | {f3(m('adapter', 'token', 'weighted avg', 'f1'))} |")
print(f"| training wall time | {seconds / 60:.0f} min of steps ({seconds:,.0f} s), **{tokens / seconds:,.0f} tokens/s** |")
print(f"| peak RSS of the training process | {int(train_rss) / 1024:.1f} GB ({train_rss} MiB; process wall {train_wall} s) |")
print()
print(f"Evaluation: base vs adapter on the BC5CDR test split ({sentences:,} sentences; "
      f"`medtune eval` process: {eval_wall} s wall, peak RSS {int(eval_rss) / 1024:.1f} GB)")
print()
print("| | base | adapter |")
print("|---|---|---|")


def row(label, family, group, name, fmt=f3, detail=False):
    base, adapter = fmt(m("base", family, group, name)), fmt(m("adapter", family, group, name))
    if detail:
        adapter += f" ({per_type('adapter', family)})"
    print(f"| {label} | {base} | {adapter} |")


row("entity micro F1, seqeval default", "entity_default", "micro avg", "f1", detail=True)
row("entity micro F1, seqeval strict IOB2", "entity_strict", "micro avg", "f1", detail=True)
print("| entity macro / weighted F1, default | "
      + " | ".join(f"{f3(m(v, 'entity_default', 'macro avg', 'f1'))} / "
                   f"{f3(m(v, 'entity_default', 'weighted avg', 'f1'))}" for v in ("base", "adapter"))
      + " |")
row("word-tag weighted F1", "token", "weighted avg", "f1")
row("cross-entropy over labelled words", "lm", "all", "cross_entropy")
row("sentences per second", "throughput", "all", "sequences_per_second", fmt=lambda x: f"{x:.1f}")
print()
print(f"report: {eval_dir / 'artifacts' / 'report.md'}")
print(f"work files (time -v reports, logs): {work}")
PY
