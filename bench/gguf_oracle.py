#!/usr/bin/env python3
"""The transformers oracle for medtune's GGUF model source (bench/gguf_oracle.sh runs it).

transformers loads the same GGUF file (`from_pretrained(dir, gguf_file=...)`, dequantised to
f32) and this script checks, against it:

- tokens: the ids medtune's tokenize stage wrote (tokenizer built from the GGUF metadata,
  `template = "plain"`, SFT: prompt ids, completion ids, EOS) equal transformers' tokenizer's
  on every row of the workdirs given (ChemProt, chatdoctor5k);
- logits: medtune's logits (`cargo run --example gguf_logits`, dequantised weights) equal
  transformers' at every position of ROWS rows within F64_TOLERANCE when both run in f64; in
  f32, medtune is within TOLERANCE of transformers, or its error against the f64 logits is of
  the order of transformers' own f32 error (see check_logits).

usage: gguf_oracle.py GGUF LOGITS_BIN WORKDIR... [--rows 20] [--tolerance 1e-4]
                      [--f64-tolerance 1e-9]
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


def medtune_logits(logits_bin: str, gguf: Path, ids: list[list[int]], dtype: str, tmp: Path):
    """medtune's logits for `ids` in `dtype`, as a read-only f64 memory map (row after row)."""
    import numpy as np

    rows_file, out_file = tmp / "rows.json", tmp / f"logits-{dtype}.f64"
    rows_file.write_text(json.dumps(ids))
    subprocess.run([logits_bin, str(gguf), str(rows_file), str(out_file), dtype], check=True,
                   stdout=subprocess.DEVNULL)
    return np.memmap(out_file, dtype="<f8", mode="r")


def f64_throughout(model) -> None:
    """Makes the parts of `model` that transformers computes in f32 whatever the model's dtype
    compute in f64: the rotary angles (an f32 angle near position p carries up to half an ulp
    of p of error) and RMSNorm (it upcasts to f32, which is a downcast from f64). Without this
    an f64 run is not f64 throughout, and its difference from medtune's f64 run would be f32
    rounding, not the implementations'.
    """
    import torch

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            def norm(x, module=module):
                variance = x.pow(2).mean(-1, keepdim=True)
                return module.weight * (x * torch.rsqrt(variance + module.variance_epsilon))

            module.forward = norm

    config = model.config
    theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inverse = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rotary = model.model.rotary_emb
    scale = getattr(rotary, "attention_scaling", 1.0)

    def forward(x, position_ids):
        angles = position_ids[..., None].double() * inverse
        angles = torch.cat([angles, angles], dim=-1)
        return (angles.cos() * scale).to(x.dtype), (angles.sin() * scale).to(x.dtype)

    rotary.forward = forward


def check_logits(gguf: Path, logits_bin: str, workdir: Path, n: int, tolerance: float,
                 f64_tolerance: float, max_len: int) -> bool:
    """Logits at every position of `n` rows, in f64 and in f32.

    f64 (throughout: see f64_throughout) shows whether the two compute the same
    function: rounding is ~1e-9 times smaller there, so any difference left is the
    implementation's. f32 is what both run in practice: there each
    is compared with the f64 result too, so medtune's f32 error is measured against transformers'
    own, not only against transformers' f32 rounding.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    rows = medtune_rows(medtune_bin, workdir, f"SELECT input_ids FROM tokenized ORDER BY id LIMIT {n}")
    ids = [r["input_ids"][:max_len] for r in rows]
    models = {
        dtype: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                    dtype=getattr(torch, name),
                                                    attn_implementation="sdpa").eval()
        for dtype, name in [("f64", "float64"), ("f32", "float32")]
    }
    f64_throughout(models["f64"])
    vocab = models["f32"].config.vocab_size
    keys = ("f64", "f32", "ours32_vs_64", "theirs32_vs_64")
    worst, total, count = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0), 0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        ours = {d: medtune_logits(logits_bin, gguf, ids, d, Path(tmp)) for d in ("f64", "f32")}
        offset = 0
        for row in ids:
            span = slice(offset, offset + len(row) * vocab)
            offset += len(row) * vocab
            theirs = {d: m(torch.tensor([row])).logits[0].double().numpy() for d, m in models.items()}
            mine = {d: np.asarray(ours[d][span]).reshape(len(row), vocab) for d in ours}
            for key, a, b in [("f64", mine["f64"], theirs["f64"]),
                              ("f32", mine["f32"], theirs["f32"]),
                              ("ours32_vs_64", mine["f32"], theirs["f64"]),
                              ("theirs32_vs_64", theirs["f32"], theirs["f64"])]:
                diff = np.abs(a - b)
                worst[key] = max(worst[key], float(diff.max()))
                total[key] += float(diff.sum())
            count += len(row) * vocab
        complete = all(offset == o.size for o in ours.values())
    mean = {k: v / max(count, 1) for k, v in total.items()}
    same_function = worst["f64"] <= f64_tolerance
    # Two f32 implementations that sum in different orders cannot agree closer than either is
    # to the exact result. So in f32 medtune passes within the tolerance of transformers, or
    # when its own error (against the f64 logits) is of transformers' order: worst case and
    # mean each within F32_ERROR_RATIO of transformers'.
    ratios = [worst["ours32_vs_64"] / max(worst["theirs32_vs_64"], 1e-30),
              mean["ours32_vs_64"] / max(mean["theirs32_vs_64"], 1e-30)]
    f32_ok = worst["f32"] <= tolerance or max(ratios) <= F32_ERROR_RATIO
    print(f"logits f64: {len(ids)} rows of up to {max_len} tokens, medtune vs transformers "
          f"max |Δ| {worst['f64']:.2e}, mean {mean['f64']:.1e} (tolerance {f64_tolerance:g}): "
          f"{'ok' if same_function else 'FAILED'}")
    print(f"logits f32: medtune vs transformers max |Δ| {worst['f32']:.2e}, mean "
          f"{mean['f32']:.1e}; against the f64 logits: medtune max {worst['ours32_vs_64']:.2e} "
          f"mean {mean['ours32_vs_64']:.2e}, transformers max {worst['theirs32_vs_64']:.2e} "
          f"mean {mean['theirs32_vs_64']:.2e} (ratios {ratios[0]:.2f}, {ratios[1]:.2f}; at most "
          f"{F32_ERROR_RATIO}): {'ok' if f32_ok else 'FAILED'}")
    return same_function and f32_ok and complete


medtune_bin = "medtune"
# How much larger than transformers' own worst f32 error medtune's may be (see check_logits).
F32_ERROR_RATIO = 1.25


def main() -> None:
    global medtune_bin
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("logits_bin")
    p.add_argument("workdirs", type=Path, nargs="+")
    p.add_argument("--medtune", default="medtune")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=1e-4, help="f32 logits")
    p.add_argument("--f64-tolerance", type=float, default=1e-9, help="f64 logits")
    args = p.parse_args()
    medtune_bin = args.medtune

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    kw = dict(gguf_file=args.gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(args.gguf.parent, **kw)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ok = all([check_tokens(tokenizer, args.medtune, w, eos) for w in args.workdirs])
    ok &= check_logits(args.gguf, args.logits_bin, args.workdirs[0], args.rows, args.tolerance,
                       args.f64_tolerance, args.max_len)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
