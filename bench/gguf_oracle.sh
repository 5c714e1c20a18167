#!/usr/bin/env bash
# The transformers oracle for medtune's GGUF model source (bench/gguf_oracle.py): tokenizes
# ChemProt and chatdoctor5k with SmolLM2-135M-Instruct's GGUF tokenizer (`template = "plain"`,
# nothing truncated), then checks every row's ids and 20 rows' logits against transformers
# loading the same file. A benchmark-venv check (bench/python-env.sh), not part of the tests.
#
# usage: bench/gguf_oracle.sh       BENCH_WORK: work folder (default /tmp/medtune-gguf-oracle)
set -euo pipefail
source "$(dirname "$0")/oracle-setup.sh" gguf_logits
work="${BENCH_WORK:-/tmp/medtune-gguf-oracle}"
rm -rf "$work"
mkdir -p "$work"
for name in chemprot healthcaremagic; do
  # The bundled config up to [tokenize], its paths made absolute, then a GGUF [tokenize].
  awk '/^\[(tokenize|shard)\]/ { exit } { print }' "configs/$name.toml" |
    sed "s|\"\\.\\./|\"$root/configs/../|g" >"$work/$name.toml"
  printf '[tokenize]\ntokenizer = "%s"\nmode = "sft"\ntemplate = "plain"\nmax_length = 8192\n' \
    "$gguf" >>"$work/$name.toml"
  echo "+ medtune run --stage tokenize ($name)" >&2
  "$bin" --workdir "$work/$name" run --config "$work/$name.toml" --stage tokenize >"$work/$name.log"
done
"$py" bench/gguf_oracle.py "$gguf" "$CARGO_TARGET_DIR/release/examples/gguf_logits" \
  "$work/chemprot" "$work/healthcaremagic" --medtune "$bin"
