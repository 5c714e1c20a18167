#!/usr/bin/env bash
# Creates (once) the virtual environment of the training-speed benchmark (bench/train_speed.sh):
# PyTorch, transformers and PEFT for the reference trainer, pyarrow to read medtune's shards,
# blake3 to derive the batch loader's random streams, gguf and tokenizers to build SmolLM2's
# tokenizer.json. A benchmark tool, not a test dependency: scripts/test.sh never calls it.
#
# The torch wheel is PyPI's (the CUDA build, which also runs on the CPU; its CUDA libraries come
# along as dependencies, ~4 GB). Prints the venv's python; exits non-zero with the reason on
# stderr when it cannot make one.
#
# usage: bench/python-env.sh          MEDTUNE_BENCH_VENV overrides the folder
set -euo pipefail
venv="${MEDTUNE_BENCH_VENV:-$HOME/.cache/medtune-bench-venv}"
imports="import torch, transformers, peft, pyarrow, blake3, numpy, gguf, tokenizers, safetensors"
# The pins: what the benchmark was measured with (bench/README.md).
packages=(
  torch==2.15.0
  transformers==5.23.0
  peft==0.21.2
  pyarrow==26.0.1
  numpy==2.4.6
  blake3==1.0.11
  gguf==0.19.0
  tokenizers==0.23.3
  safetensors==0.8.0
)
if ! "$venv/bin/python" -c "$imports" >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  if ! "$venv/bin/python" -c "$imports" >&2; then
    echo "error: $venv/bin/python cannot import the benchmark packages after installing them" >&2
    exit 1
  fi
fi
echo "$venv/bin/python"
