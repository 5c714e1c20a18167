#!/usr/bin/env python3
"""The reference trainer of bench/train_speed.sh: the run a medtune config describes, done with
PyTorch + transformers + PEFT on medtune's own training shards, batch for batch.

What is the same as `medtune train`:
- the batches: medtune's `shards` dataset is read with pyarrow and cut into batches by a port of
  medtune's loader (stages/src/shared/loader/): shards in an order shuffled per epoch, each shard's rows
  shuffled, stably sorted by length, cut greedily so rows × longest row <= max_tokens, the
  batches shuffled; every shuffle from a ChaCha8 stream seeded with blake3(seed, epoch, purpose,
  shard), drawn as rand 0.9 draws it. Right padding with id 0, labels -100 in padding;
- the model and task: the same model directory; token classification with a fresh linear head
  (PEFT's `modules_to_save`), or causal LM (loss on the labelled completion tokens);
- LoRA: r, alpha, dropout, rsLoRA and target modules from [train.lora]; like medtune, only the
  adapters' inputs drop out (the base model's own dropout is set to 0);
- optimisation: AdamW with medtune's defaults (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01 on
  every trainable tensor), the learning rate and linear warm-up + cosine schedule of
  [train.schedule] over medtune's total step count, the same gradient clipping, gradient
  accumulation weighted by labelled tokens, and the evaluation pass over the eval split that
  medtune runs after its last step;
- what a step's time covers: forward, backward, clipping, optimiser and schedule (the batch is
  built before the clock starts, as medtune's loader builds it before its step).

What differs, and why: the base weights are f32 (bitsandbytes' NF4 kernels do not run on a CPU),
dropout masks and the initial adapter / head weights come from torch's generator instead of
medtune's streams, and the head / adapters initialise from torch's own generator.

usage: train_speed_reference.py --config CONFIG --workdir WORKDIR --out RESULT.json [--plan-only]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import sys
import time
import tomllib
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# medtune's batch loader, in Python.

MASK32 = 0xFFFFFFFF
CHACHA_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
QUARTER_ROUNDS = (
    (0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
    (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14),
)


def _rotate(v: int, bits: int) -> int:
    return ((v << bits) & MASK32) | (v >> (32 - bits))


class ChaCha8:
    """rand_chacha's ChaCha8Rng: the ChaCha keystream (8 rounds, 64-bit block counter from 0,
    stream 0) under a 32-byte key, read as little-endian u32 words."""

    def __init__(self, key: bytes):
        self.key = struct.unpack("<8I", key)
        self.block = 0
        self.words: list[int] = []
        self.next = 0

    def _refill(self) -> None:
        start = [*CHACHA_CONSTANTS, *self.key, self.block & MASK32, self.block >> 32, 0, 0]
        x = list(start)
        for _ in range(4):  # four double rounds
            for a, b, c, d in QUARTER_ROUNDS:
                x[a] = (x[a] + x[b]) & MASK32
                x[d] = _rotate(x[d] ^ x[a], 16)
                x[c] = (x[c] + x[d]) & MASK32
                x[b] = _rotate(x[b] ^ x[c], 12)
                x[a] = (x[a] + x[b]) & MASK32
                x[d] = _rotate(x[d] ^ x[a], 8)
                x[c] = (x[c] + x[d]) & MASK32
                x[b] = _rotate(x[b] ^ x[c], 7)
        self.words = [(v + s) & MASK32 for v, s in zip(x, start)]
        self.block += 1
        self.next = 0

    def u32(self) -> int:
        if self.next == len(self.words):
            self._refill()
        value = self.words[self.next]
        self.next += 1
        return value


def loader_stream(seed: int, epoch: int, what: str, index: int) -> ChaCha8:
    """stages/src/shared/loader/plan.rs `stream`."""
    import blake3

    h = blake3.blake3(b"medtune loader v1")
    h.update(struct.pack("<QQ", seed, epoch))
    h.update(what.encode())
    h.update(struct.pack("<Q", index))
    return ChaCha8(h.digest())


def _below(rng: ChaCha8, bound: int) -> int:
    """rand 0.9 `random_range(..bound)` for u32: a widening multiply, and one more word when
    the low half lands in the biased zone."""
    product = rng.u32() * bound
    high, low = product >> 32, product & MASK32
    if low > (-bound & MASK32):
        extra = (rng.u32() * bound) >> 32
        high += low + extra > MASK32
    return high


def _chunk_bound(n: int) -> tuple[int, int]:
    """n·(n+1)·…·(n+k-1) for the largest k that stays within u32, and k."""
    product, factor = n, n + 1
    while product * factor <= MASK32:
        product *= factor
        factor += 1
    return product, factor - n


def shuffle(items: list, rng: ChaCha8) -> None:
    """rand 0.9 `SliceRandom::shuffle`: Fisher-Yates upwards, the indices drawn several at a
    time from one word (`IncreasingUniform`)."""
    if len(items) <= 1:
        return
    n, chunk, left = 0, 0, 1
    for i in range(len(items)):
        n += 1
        if left == 0:
            bound, left = _chunk_bound(n)
            chunk = _below(rng, bound)
        left -= 1
        if left == 0:
            j = chunk
        else:
            j, chunk = chunk % n, chunk // n
        items[i], items[j] = items[j], items[i]


def plan_batches(lengths: list[int], max_tokens: int, rng: ChaCha8 | None) -> list[list[int]]:
    """stages/src/shared/loader/plan.rs `plan_batches` with a token budget."""
    order = list(range(len(lengths)))
    if rng is not None:
        shuffle(order, rng)
    order.sort(key=lengths.__getitem__)  # stable, like Rust's sort_by_key
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for row in order:
        length = lengths[row]
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        longest = max(longest, length)
        current.append(row)
    if current:
        batches.append(current)
    if rng is not None:
        shuffle(batches, rng)
    return batches


class Shards:
    """One split of a workdir's `shards` dataset, in manifest order (loader/mod.rs ShardSet)."""

    def __init__(self, workdir: Path, split: str):
        catalog = json.loads((workdir / "catalog.json").read_text())
        entry = catalog["datasets"]["shards"]
        entry_dir = workdir / "cache" / entry["stage"] / entry["key"]
        manifest = json.loads((entry_dir / "manifest.json").read_text())
        files = manifest["datasets"]["shards"]["files"]
        self.paths = [entry_dir / f["path"] for f in files if f["rows"] > 0 and f["label"] == split]
        if not self.paths:
            raise SystemExit(f"no shards of split `{split}` in {entry_dir}")

    def read(self, index: int):
        import pyarrow.parquet as pq

        table = pq.read_table(self.paths[index], columns=["input_ids", "labels", "length"])
        return (
            table.column("input_ids").to_pylist(),
            table.column("labels").to_pylist(),
            table.column("length").to_pylist(),
        )

    def batches(self, epoch: int, max_tokens: int, seed: int, shuffled: bool):
        """Yields (input_ids rows, labels rows) per batch, in the loader's order."""
        order = list(range(len(self.paths)))
        if shuffled:
            shuffle(order, loader_stream(seed, epoch, "shards", 0))
        for index in order:
            ids, labels, lengths = self.read(index)
            rng = loader_stream(seed, epoch, "rows", index) if shuffled else None
            for rows in plan_batches(lengths, max_tokens, rng):
                yield [ids[r] for r in rows], [labels[r] for r in rows]

    def steps_in_epoch(self, epoch: int, max_tokens: int, seed: int) -> int:
        import pyarrow.parquet as pq

        steps = 0
        for index, path in enumerate(self.paths):
            lengths = pq.read_table(path, columns=["length"]).column("length").to_pylist()
            steps += len(plan_batches(lengths, max_tokens, loader_stream(seed, epoch, "rows", index)))
        return steps


def padded(ids_rows, label_rows):
    """Right-padded token ids (pad 0), attention mask, labels (-100 in padding)."""
    import torch

    width = max(len(r) for r in ids_rows)
    ids = torch.zeros((len(ids_rows), width), dtype=torch.long)
    mask = torch.zeros((len(ids_rows), width), dtype=torch.long)
    labels = torch.full((len(ids_rows), width), -100, dtype=torch.long)
    for i, (row, lab) in enumerate(zip(ids_rows, label_rows)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------
# The config, with medtune's defaults (stages/src/train/mod.rs, qlora/src/train.rs, lora.rs,
# optim.rs).


def read_config(path: Path) -> dict:
    raw = tomllib.loads(path.read_text())
    train = raw["train"]
    schedule = train["schedule"]
    lora = train["lora"]
    adamw = schedule.get("adamw", {})
    model = Path(train["model"])
    return {
        "model": model if model.is_absolute() else (path.parent / model).resolve(),
        "task": train["task"],
        "max_tokens": train.get("max_tokens", 4096),
        "eval_split": train.get("eval_split", "validation"),
        "epochs": schedule["epochs"],
        "learning_rate": schedule["learning_rate"],
        "warmup_steps": schedule.get("warmup_steps", 0),
        "grad_accum": schedule.get("grad_accum", 1),
        "max_grad_norm": schedule.get("max_grad_norm", 1.0),
        "seed": schedule.get("seed", 0),
        "max_steps": schedule.get("max_steps", 0),
        "beta1": adamw.get("beta1", 0.9),
        "beta2": adamw.get("beta2", 0.999),
        "eps": adamw.get("eps", 1e-8),
        "weight_decay": adamw.get("weight_decay", 0.01),
        "r": lora["r"],
        "alpha": lora.get("alpha", 32.0),
        "dropout": lora.get("dropout", 0.05),
        "use_rslora": lora.get("use_rslora", False),
        "target_modules": lora["target_modules"],
    }


def num_labels(workdir: Path) -> int:
    import pyarrow.parquet as pq

    catalog = json.loads((workdir / "catalog.json").read_text())
    entry = catalog["datasets"]["label_map"]
    entry_dir = workdir / "cache" / entry["stage"] / entry["key"]
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    return sum(pq.read_metadata(entry_dir / f["path"]).num_rows
               for f in manifest["datasets"]["label_map"]["files"])


def build_model(c: dict, workdir: Path):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoConfig, AutoModelForCausalLM,
                              AutoModelForTokenClassification)

    if c["task"] == "token_classification":
        # Only the adapters drop out in medtune: the encoder's and the head's dropout are off.
        config = AutoConfig.from_pretrained(
            c["model"], num_labels=num_labels(workdir), hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
        model = AutoModelForTokenClassification.from_pretrained(
            c["model"], config=config, dtype=torch.float32)
        task = TaskType.TOKEN_CLS  # the head is trained and saved (modules_to_save)
    else:
        model = AutoModelForCausalLM.from_pretrained(c["model"], dtype=torch.float32)
        task = TaskType.CAUSAL_LM
    lora = LoraConfig(task_type=task, r=c["r"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                      use_rslora=c["use_rslora"], target_modules=list(c["target_modules"]))
    return get_peft_model(model, lora)


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident MiB of this process."""
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="the medtune config it mirrors")
    p.add_argument("--workdir", type=Path, required=True, help="medtune workdir with `shards`")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--plan-only", action="store_true",
                   help="write the batch plan (rows, widths, tokens) without training")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation pass")
    args = p.parse_args()
    c = read_config(args.config)
    clock = time.perf_counter()

    train = Shards(args.workdir, "train")
    epoch_steps = [train.steps_in_epoch(e, c["max_tokens"], c["seed"]) for e in range(c["epochs"])]
    # qlora/src/train.rs: optimiser steps over all epochs, capped by max_steps.
    total = sum(math.ceil(s / c["grad_accum"]) for s in epoch_steps)
    if c["max_steps"] > 0:
        total = min(total, c["max_steps"])

    def groups():
        """(epoch, batches of one optimiser step), as qlora/src/train.rs groups them."""
        for epoch in range(c["epochs"]):
            it = train.batches(epoch, c["max_tokens"], c["seed"], shuffled=True)
            while True:
                group = [b for _, b in zip(range(c["grad_accum"]), it)]
                if not group:
                    break
                yield epoch, group

    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in c.items()},
              "total_steps": total, "steps": []}

    def shape_of(group):
        rows = [len(ids) for ids, _ in group]
        widths = [max(len(r) for r in ids) for ids, _ in group]
        return {
            "rows": sum(rows),
            "seq_len": max(widths),
            "padded_tokens": sum(n * w for n, w in zip(rows, widths)),
            "tokens": sum(len(r) for ids, _ in group for r in ids),
            "labelled_tokens": sum(1 for _, labs in group for r in labs for x in r if x >= 0),
        }

    if args.plan_only:
        for step, (epoch, group) in zip(range(1, total + 1), groups()):
            result["steps"].append({"step": step, "epoch": epoch, **shape_of(group)})
        args.out.write_text(json.dumps(result))
        return

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(c["seed"])
    model = build_model(c, args.workdir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = dict(lr=c["learning_rate"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                 weight_decay=c["weight_decay"])
    try:  # the fused kernel where this torch has it on the CPU
        optimiser = torch.optim.AdamW(params, fused=True, **adamw)
        fused = True
    except (RuntimeError, TypeError):
        optimiser = torch.optim.AdamW(params, **adamw)
        fused = False
    from transformers import get_cosine_schedule_with_warmup

    schedule = get_cosine_schedule_with_warmup(optimiser, c["warmup_steps"], total)
    result["setup"] = {
        "threads": threads,
        "torch": torch.__version__,
        "fused_adamw": fused,
        "attention": getattr(model.config, "_attn_implementation", "?"),
        "trainable_parameters": sum(p.numel() for p in params),
        "load_seconds": time.perf_counter() - clock,
        "rss_after_load_mib": rss_mib()[0],
    }
    print(f"reference: {len(params)} trainable tensors, {result['setup']['trainable_parameters']:,} "
          f"parameters, {threads} threads, fused AdamW {fused}", file=sys.stderr)

    for step, (epoch, group) in zip(range(1, total + 1), groups()):
        tensors = [padded(ids, labs) for ids, labs in group]
        labelled = sum(int((t[2] >= 0).sum()) for t in tensors)
        lr = schedule.get_last_lr()[0]
        start = time.perf_counter()
        loss_sum = 0.0
        for ids, mask, labels in tensors:
            n = int((labels >= 0).sum()) if c["task"] == "token_classification" \
                else int((labels[:, 1:] >= 0).sum())
            if n == 0:
                continue
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss * (n / labelled)).backward()
            loss_sum += loss.item() * n
        norm = float(torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"]))
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        current, peak = rss_mib()
        row = {"step": step, "epoch": epoch, **shape_of(group),
               "loss": loss_sum / labelled if labelled else float("nan"),
               "learning_rate": lr, "grad_norm": norm, "seconds": seconds,
               "rss_mib": current, "peak_rss_mib": peak}
        result["steps"].append(row)
        print(f"step {step}/{total} loss {row['loss']:.4f} {seconds:.2f} s "
              f"{row['padded_tokens'] / seconds:.0f} padded tok/s rss {current:.0f} MiB",
              file=sys.stderr)

    if not args.no_eval:
        # medtune evaluates the eval split after its last step: stored order, no dropout.
        model.eval()
        start = time.perf_counter()
        loss_sum, count = 0.0, 0
        with torch.no_grad():
            for ids_rows, label_rows in Shards(args.workdir, c["eval_split"]).batches(
                    0, c["max_tokens"], c["seed"], shuffled=False):
                ids, mask, labels = padded(ids_rows, label_rows)
                n = int((labels >= 0).sum()) if c["task"] == "token_classification" \
                    else int((labels[:, 1:] >= 0).sum())
                if n:
                    loss_sum += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
                    count += n
        result["eval"] = {"loss": loss_sum / count if count else None,
                          "seconds": time.perf_counter() - start}
    result["peak_rss_mib"] = rss_mib()[1]
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
