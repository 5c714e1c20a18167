# Sourced by the SmolLM2 oracles (bench/gguf_oracle.sh, bench/peft_oracle.sh) with the name of
# the qlora example they drive as $1: fetches the model, builds medtune and that example in the
# .ci/run build cache, and makes the benchmark venv (bench/python-env.sh). Sets `root` (the
# repository), `gguf` (the SmolLM2 file), `bin` (the medtune binary) and `py` (the venv's python).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
models="$(scripts/fetch-model.sh | tail -1)"
gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medtune-target}" # the .ci/run build cache
cargo build --release --quiet
cargo build --release --quiet -p medtune-qlora --example "$1"
bin="$CARGO_TARGET_DIR/release/medtune"
py="$(bench/python-env.sh)"
