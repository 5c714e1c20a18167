#!/usr/bin/env bash
# Creates (once) a virtual environment with the Python readers the interop test uses
# (pyarrow, polars, duckdb, datasets) and seqeval for the metric parity test, and prints its
# python's path.
set -euo pipefail
venv="${MEDTUNE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
if ! "$venv/bin/python" -c "import pyarrow, polars, duckdb, datasets, seqeval" >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    pyarrow==26.0.1 polars==2.1.0 duckdb==2.0.0 datasets==5.2.0 \
    seqeval==1.2.2 scikit-learn==1.9.1 >&2
fi
echo "$venv/bin/python"
