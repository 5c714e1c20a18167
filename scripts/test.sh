#!/usr/bin/env bash
# The test command: every unit, engine and end-to-end test, on the real data in ../shared/data.
# Tests run in the release profile, sharing the build with `cargo run --release`.
# The Python parity tests fail without MEDTUNE_PYTHON, so this makes the venv first (or uses
# the MEDTUNE_PYTHON given) and stops if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MEDTUNE_PYTHON:-}" ]; then
  if ! py="$(scripts/python-env.sh)"; then
    echo "error: scripts/python-env.sh could not make the Python environment the parity tests" \
      "need (pyarrow, polars, duckdb, datasets, seqeval, rouge-score, sacrebleu); see the" \
      "messages above, or set MEDTUNE_PYTHON to a Python that has them" >&2
    exit 1
  fi
  export MEDTUNE_PYTHON="$py"
fi
scripts/fetch-model.sh >/dev/null
cargo test --release --workspace --features cluster "$@"
