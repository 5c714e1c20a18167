#!/usr/bin/env bash
# Builds medtune and runs the pipeline on the bundled data (../shared/data), then queries it.
# Each config gets its own workdir under .medtune/, so all three stay queryable.
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
