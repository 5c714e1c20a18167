#!/usr/bin/env bash
# Creates (once) a virtual environment with the Python packages the parity tests use: the
# Parquet readers of the interop test (pyarrow, polars, duckdb, datasets), seqeval for the
# entity metric parity test, rouge-score and sacrebleu for the ROUGE-L / BLEU-1 parity test.
# Prints its python's path; exits non-zero (with the reason on stderr) when it cannot make one.
set -euo pipefail
venv="${MEDTUNE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
imports="import pyarrow, polars, duckdb, datasets, seqeval, rouge_score, sacrebleu"
if ! "$venv/bin/python" -c "$imports" >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    pyarrow==26.0.1 polars==2.1.0 duckdb==2.0.0 datasets==5.2.0 \
    seqeval==1.2.2 scikit-learn==1.9.1 rouge-score==0.1.2 sacrebleu==2.6.0 >&2
  if ! "$venv/bin/python" -c "$imports" >&2; then
    echo "error: $venv/bin/python cannot import the test packages after installing them" >&2
    exit 1
  fi
fi
echo "$venv/bin/python"
