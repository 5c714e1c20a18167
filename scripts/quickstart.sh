#!/usr/bin/env bash
# Builds medtune and runs the pipeline on the bundled data (../shared/data), then queries it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
bin="${CARGO_TARGET_DIR:-target}/release/medtune"
for config in configs/chemprot.toml configs/healthcaremagic.toml configs/bc5cdr.toml; do
  echo "== $config"
  "$bin" run --config "$config"
done
"$bin" status --config configs/chemprot.toml
"$bin" query "SELECT source_kind, task, count(*) AS rows FROM ingested GROUP BY source_kind, task ORDER BY 1, 2"
