#!/usr/bin/env python3
"""The PEFT oracle for medtune's adapters (bench/peft_oracle.sh runs it).

A medtune-trained adapter directory is loaded the way a PEFT user would, onto the base model
transformers builds from the same file (a GGUF, dequantised to f32):
`PeftModel.from_pretrained(base, adapter_dir)`. The script checks that

- the adapter's tensors are exactly the ones PEFT expects for its `adapter_config.json`: no
  missing and no unexpected key, same shapes, and the values PEFT holds after loading equal the
  file's;
- the loss PEFT computes (`model(input_ids, labels=labels).loss`) equals the one medtune's
  trainer computes (`cargo run --example adapter_loss`, f32 base) on the same rows, within
  TOLERANCE, and differs from the base model's loss (the adapter is live).

usage: peft_oracle.py MODEL ADAPTER_DIR LOSS_BIN WORKDIR [--rows 20] [--tolerance 1e-4]
Prints one line per check and exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def check_keys(peft_model, adapter: Path) -> bool:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    expected = get_peft_model_state_dict(peft_model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = [k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape]
    values = [k for k in set(saved) & set(expected) if k not in shapes
              and not torch.equal(saved[k].to(expected[k].dtype), expected[k])]
    ok = not (missing or unexpected or shapes or values)
    print(f"keys: {len(saved)} adapter tensors, {len(missing)} missing, {len(unexpected)} "
          f"unexpected, {len(shapes)} with another shape, {len(values)} with other values"
          + (f" (first: {(missing + unexpected + shapes + values)[:3]})" if not ok else "")
          + f": {'ok' if ok else 'FAILED'}")
    return ok


def check_loss(peft_model, model_path: Path, adapter: Path, loss_bin: str, rows: list[dict],
               tolerance: float) -> bool:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"
        rows_file.write_text(json.dumps(rows))
        out = subprocess.run([loss_bin, str(model_path), str(adapter), str(rows_file)],
                             check=True, capture_output=True, text=True).stdout
    ours = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    worst, moved = 0.0, 0.0
    theirs_sum = ours_sum = 0.0
    with torch.no_grad():
        for row, mine in zip(rows, ours):
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            theirs = float(peft_model(input_ids=ids, labels=labels).loss)
            with peft_model.disable_adapter():
                base = float(peft_model(input_ids=ids, labels=labels).loss)
            worst = max(worst, abs(theirs - mine["loss"]))
            moved = max(moved, abs(theirs - base))
            theirs_sum += theirs
            ours_sum += mine["loss"]
    n = len(rows)
    ok = len(ours) == n and worst <= tolerance and moved > 10 * tolerance
    print(f"loss: {n} rows, mean PEFT {theirs_sum / n:.5f}, medtune {ours_sum / n:.5f}, "
          f"max |Δ| per row {worst:.2e} (tolerance {tolerance:g}); adapter moves the base "
          f"model's loss by up to {moved:.3f}: {'ok' if ok else 'FAILED'}")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a .gguf file or a model directory")
    p.add_argument("adapter", type=Path)
    p.add_argument("loss_bin")
    p.add_argument("workdir", type=Path, help="a medtune workdir with SFT shards")
    p.add_argument("--medtune", default="medtune")
    p.add_argument("--split", default="test")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((args.adapter / "adapter_config.json").read_text())
    print(f"adapter: {args.adapter} (base_model_name_or_path {config['base_model_name_or_path']},"
          f" r {config['r']}, targets {sorted(config['target_modules'])})")
    if args.model.suffix == ".gguf":
        base = AutoModelForCausalLM.from_pretrained(args.model.parent, gguf_file=args.model.name,
                                                    dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, args.adapter).eval()
    ok = check_keys(peft_model, args.adapter)

    sql = (f"SELECT input_ids, labels FROM shards WHERE split = '{args.split}' "
           f"ORDER BY id LIMIT {args.rows}")
    out = subprocess.run([args.medtune, "--workdir", str(args.workdir), "query", sql,
                          "--format", "json"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    ok &= check_loss(peft_model, args.model, args.adapter, args.loss_bin, rows, args.tolerance)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
