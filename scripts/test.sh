#!/usr/bin/env bash
# The test command: every unit, engine and end-to-end test, on the real data in ../shared/data.
# Tests run in the release profile, sharing the build with `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MEDTUNE_PYTHON:-}" ]; then
  if py="$(scripts/python-env.sh)"; then
    export MEDTUNE_PYTHON="$py"
  else
    echo "warning: no Python readers for the Parquet interop test" >&2
  fi
fi
scripts/fetch-model.sh >/dev/null
cargo test --release --workspace "$@"
