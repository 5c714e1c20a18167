#!/usr/bin/env python3
"""The transformers oracle for medtune's GGUF model source (bench/gguf_oracle.sh runs it).

transformers loads the same GGUF file (`from_pretrained(dir, gguf_file=...)`, dequantised to
f32) and this script checks, against it:

- tokens: the ids medtune's tokenize stage wrote (tokenizer built from the GGUF metadata,
  `template = "plain"`, SFT: prompt ids, completion ids, EOS) equal transformers' tokenizer's
  on every row of the workdirs given (ChemProt, chatdoctor5k);
- logits: medtune's logits (`cargo run --example gguf_logits`, f32 weights) equal transformers'
  at every position of ROWS rows, within TOLERANCE.

usage: gguf_oracle.py GGUF LOGITS_BIN WORKDIR... [--rows 20] [--tolerance 1e-4]
Prints one line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def medtune_rows(medtune: str, workdir: Path, sql: str) -> list[dict]:
    out = subprocess.run(
        [medtune, "--workdir", str(workdir), "query", sql, "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def check_tokens(tokenizer, medtune: str, workdir: Path, eos: int) -> bool:
    texts = {r["id"]: (r["prompt"], r["completion"])
             for r in medtune_rows(medtune, workdir, "SELECT id, prompt, completion FROM split")}
    rows = medtune_rows(medtune, workdir, "SELECT id, input_ids FROM tokenized")
    prompts = [texts[r["id"]][0] for r in rows]
    completions = [texts[r["id"]][1] for r in rows]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    bad = [r["id"] for r, p, c in zip(rows, p_ids, c_ids) if r["input_ids"] != p + c + [eos]]
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"tokens {workdir}: {len(rows)} rows, {tokens} tokens, {len(bad)} differ"
          + (f" (first: {bad[:3]})" if bad else ""))
    return not bad and len(rows) == len(texts)


def check_logits(model, tokenizer, gguf: Path, logits_bin: str, workdir: Path, n: int,
                 tolerance: float, max_len: int) -> bool:
    import numpy as np
    import torch

    rows = medtune_rows(medtune_bin, workdir, f"SELECT input_ids FROM tokenized ORDER BY id LIMIT {n}")
    ids = [r["input_ids"][:max_len] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        rows_file, out_file = Path(tmp) / "rows.json", Path(tmp) / "logits.f32"
        rows_file.write_text(json.dumps(ids))
        subprocess.run([logits_bin, str(gguf), str(rows_file), str(out_file)], check=True,
                       stdout=subprocess.DEVNULL)
        ours = np.fromfile(out_file, dtype="<f4")
    vocab = model.config.vocab_size
    worst, offset = 0.0, 0
    with torch.no_grad():
        for row in ids:
            theirs = model(torch.tensor([row])).logits[0].float().numpy()
            mine = ours[offset:offset + len(row) * vocab].reshape(len(row), vocab)
            offset += len(row) * vocab
            worst = max(worst, float(np.abs(theirs - mine).max()))
    ok = worst <= tolerance and offset == ours.size
    print(f"logits: {len(ids)} rows of up to {max_len} tokens, max |Δ| {worst:.2e} "
          f"(tolerance {tolerance:g}): {'ok' if ok else 'FAILED'}")
    return ok


medtune_bin = "medtune"


def main() -> None:
    global medtune_bin
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("logits_bin")
    p.add_argument("workdirs", type=Path, nargs="+")
    p.add_argument("--medtune", default="medtune")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()
    medtune_bin = args.medtune

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    kw = dict(gguf_file=args.gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(args.gguf.parent, **kw)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ok = all([check_tokens(tokenizer, args.medtune, w, eos) for w in args.workdirs])
    model = AutoModelForCausalLM.from_pretrained(args.gguf.parent, dtype=torch.float32, **kw)
    model.eval()
    ok &= check_logits(model, tokenizer, args.gguf, args.logits_bin, args.workdirs[0], args.rows,
                       args.tolerance, args.max_len)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
