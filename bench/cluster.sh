#!/usr/bin/env bash
# The cost of distribution: the row-mapped stages (dedup, clean, tokenize) of
# configs/healthcaremagic-smollm2.toml over a 112,165-row HealthCareMagic-sized corpus,
# in-process, then on Ballista clusters of 1 and 2 executors on this machine (bench/cluster.py).
# usage: bench/cluster.sh [ROWS]   (default 112165; work files under ${BENCH_WORK:-/tmp/medtune-cluster-bench})
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medtune-target}"
cargo build --release --quiet --features cluster
exec python3 bench/cluster.py "$CARGO_TARGET_DIR/release/medtune" \
  configs/healthcaremagic-smollm2.toml "${BENCH_WORK:-/tmp/medtune-cluster-bench}" "${1:-112165}"
