#!/usr/bin/env bash
# Builds medtune and runs the pipeline on the bundled data (../shared/data), then queries it.
# Each config gets its own workdir under .medtune/, so all three stay queryable. Last, QLoRA
# training of all-MiniLM-L6-v2 on the BC5CDR shards (~45 min on 2 CPU cores; cached afterwards,
# and resumed from its last checkpoint if interrupted) and its evaluation on the test split, base
# model and adapter side by side (~1 min). MEDTUNE_SKIP_TRAIN=1 skips both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/medtune"
for name in chemprot healthcaremagic bc5cdr; do
  echo "== configs/$name.toml"
  "$bin" --workdir ".medtune/$name" run --config "configs/$name.toml"
done
"$bin" --workdir .medtune/chemprot status --config configs/chemprot.toml
"$bin" --workdir .medtune/chemprot query \
  "SELECT task, split, count(*) AS rows FROM split GROUP BY task, split ORDER BY task, split"
"$bin" --workdir .medtune/chemprot query \
  "SELECT stage, reason, count(*) AS rows FROM rejects GROUP BY stage, reason ORDER BY stage, reason"
if [ "${MEDTUNE_SKIP_TRAIN:-0}" != 1 ]; then
  echo "== configs/bc5cdr-qlora.toml (QLoRA training)"
  "$bin" --workdir .medtune/bc5cdr train --config configs/bc5cdr-qlora.toml
  "$bin" --workdir .medtune/bc5cdr query \
    "SELECT step, loss, eval_loss FROM train_log WHERE eval_loss IS NOT NULL ORDER BY step"
  echo "== configs/bc5cdr-qlora.toml (evaluation)"
  "$bin" --workdir .medtune/bc5cdr eval --config configs/bc5cdr-qlora.toml
fi
