#!/usr/bin/env bash
# End-to-end benchmark at HealthCareMagic scale against the Python stack (see bench/e2e.py):
# builds medtune (release), fetches the MiniLM tokenizer, makes a virtual environment with the
# reference's packages (datasets, tokenizers, datasketch, duckdb; from PyPI), and runs it all.
# usage: bench/e2e.sh [ROWS]   (default 112165; work files under ${BENCH_WORK:-/tmp/medtune-bench})
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medtune-target}"  # the build cache .ci/run uses
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/medtune"
venv="${MEDTUNE_BENCH_VENV:-$HOME/.cache/medtune-bench-venv}"
if ! "$venv/bin/python" -c "import datasets, tokenizers, datasketch, duckdb, numpy" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    datasets==5.2.0 tokenizers==0.23.3 datasketch==2.0.0 duckdb==2.0.0 pyarrow==26.0.1
fi
exec "$venv/bin/python" bench/e2e.py "$bin" "${BENCH_WORK:-/tmp/medtune-bench}" "${1:-112165}"
