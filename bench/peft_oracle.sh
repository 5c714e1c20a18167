#!/usr/bin/env bash
# The PEFT oracle for medtune's adapters (bench/peft_oracle.py): a medtune-trained adapter
# loads with `PeftModel.from_pretrained` onto transformers' SmolLM2-135M-Instruct (the same
# GGUF, dequantised to f32) with no missing or unexpected key, and gives the loss medtune
# computes with an f32 base on 20 test rows. A benchmark-venv check (bench/python-env.sh), not
# part of the tests.
#
# usage: bench/peft_oracle.sh [ADAPTER_DIR WORKDIR]
#   ADAPTER_DIR WORKDIR  an adapter trained by configs/chemprot-smollm2.toml (or another
#                        SmolLM2 SFT config) and the workdir whose shards it was trained on
#   with no arguments    trains one: configs/chemprot-smollm2.toml capped at STEPS (default 8)
#                        optimiser steps, in BENCH_WORK (default /tmp/medtune-peft-oracle)
set -euo pipefail
source "$(dirname "$0")/oracle-setup.sh" adapter_loss

if [ $# -eq 2 ]; then
  adapter="$1"
  workdir="$2"
elif [ $# -eq 0 ]; then
  steps="${STEPS:-8}"
  case "$steps" in '' | *[!0-9]* | 0)
    echo "STEPS must be a positive integer, not '$steps'" >&2
    exit 2
    ;;
  esac
  work="${BENCH_WORK:-/tmp/medtune-peft-oracle}"
  rm -rf "$work"
  mkdir -p "$work"
  # The bundled config, its paths made absolute, max_steps set under [train.schedule].
  sed "s|\"\\.\\./|\"$root/configs/../|g" configs/chemprot-smollm2.toml |
    awk -v n="$steps" '/^[ #]*max_steps *=/ { next } { print }
      /^\[train\.schedule\]/ { print "max_steps = " n }' >"$work/chemprot-smollm2.toml"
  if [ "$(grep -c "^max_steps = $steps\$" "$work/chemprot-smollm2.toml")" != 1 ]; then
    echo "could not set max_steps in $work/chemprot-smollm2.toml" >&2
    exit 1
  fi
  workdir="$work/workdir"
  echo "+ medtune train ($steps steps of configs/chemprot-smollm2.toml)" >&2
  "$bin" --workdir "$workdir" train --config "$work/chemprot-smollm2.toml" >"$work/train.log"
  adapter="$(echo "$workdir"/cache/train/*/artifacts/adapter)"
else
  echo "usage: bench/peft_oracle.sh [ADAPTER_DIR WORKDIR]" >&2
  exit 2
fi
"$py" bench/peft_oracle.py "$gguf" "$adapter" "$CARGO_TARGET_DIR/release/examples/adapter_loss" \
  "$workdir" --medtune "$bin"
