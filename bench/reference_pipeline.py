"""The reference: medtune's prep steps done with the Python stack people use today.

HF `datasets` (map / filter with num_proc = cores) + `tokenizers` (the same tokenizer.json) +
`datasketch` (MinHash LSH, as near-duplicate detection is usually done), on an alpaca JSON array:

  load -> exact dedup (normalised instruction + input) -> near-duplicate groups (MinHash over word
  5-grams, 128 permutations, Jaccard >= 0.8, union-find) -> clean (empty output / question) ->
  group-aware 80/10/10 split (seeded shuffle of groups) -> SFT tokenisation (prompt ids, then
  completion ids + [SEP]; labels -100 over the prompt; 512 tokens) -> Parquet shards per split,
  sorted by length, ~64 MiB of token data each.

usage: python bench/reference_pipeline.py INPUT.json TOKENIZER.json OUT_DIR
"""
import hashlib
import json
import os
import random
import re
import sys
import unicodedata
from pathlib import Path

import datasets
from datasketch import MinHash, MinHashLSH
from tokenizers import Tokenizer

NUM_PROC = os.cpu_count() or 1
MAX_LENGTH = 512
SHARD_TOKENS = 64 * 2**20 // 8


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def add_keys(row):
    question = row["input"] if row["input"].strip() else row["instruction"]
    prompt = row["instruction"] if not row["input"].strip() else f"{row['instruction']}\n\n{row['input']}"
    key = normalise(row["instruction"]) + "\x1f" + normalise(row["input"])
    return {
        "prompt": prompt,
        "completion": row["output"],
        "dedup_hash": hashlib.blake2b(key.encode(), digest_size=16).hexdigest(),
        "group_key": hashlib.blake2b(normalise(question).encode(), digest_size=8).hexdigest(),
    }


def minhash(row):
    words = re.findall(r"\w+", normalise(row["instruction"] + " " + row["input"]))
    grams = {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
    m = MinHash(num_perm=128, seed=1)
    m.update_batch([g.encode() for g in grams])
    return {"minhash": m.hashvalues.tolist()}


def main(source: Path, tokenizer_path: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    ds = datasets.load_dataset("json", data_files=str(source), split="train")
    rows_in = len(ds)
    ds = ds.map(add_keys, num_proc=NUM_PROC)

    # Exact duplicates: keep the first row of each hash.
    seen = set()
    keep = []
    for i, h in enumerate(ds["dedup_hash"]):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    ds = ds.select(keep)
    exact_dropped = rows_in - len(ds)

    # Near duplicates: MinHash LSH, clusters by union-find, one group per cluster.
    ds = ds.map(minhash, num_proc=NUM_PROC)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    parent = list(range(len(ds)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, values in enumerate(ds["minhash"]):
        m = MinHash(num_perm=128, seed=1, hashvalues=values, scheme="affine32")
        for j in lsh.query(m):
            a, b = find(i), find(int(j))
            if a != b:
                parent[a] = b
        lsh.insert(str(i), m)
    groups = ds["group_key"]
    cluster_group = {}
    for i in range(len(ds)):
        cluster_group.setdefault(find(i), groups[i])
    ds = ds.add_column("split_group", [cluster_group[find(i)] for i in range(len(ds))])
    ds = ds.remove_columns(["minhash"])

    # Clean.
    before = len(ds)
    ds = ds.filter(lambda r: bool(r["completion"].strip()) and bool(r["prompt"].strip()), num_proc=NUM_PROC)
    cleaned_dropped = before - len(ds)

    # Group-aware split: groups shuffled by seed, filled to 80/10/10 of the rows.
    sizes = {}
    for g in ds["split_group"]:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes)
    random.Random(42).shuffle(order)
    total, filled, assign = len(ds), 0, {}
    for g in order:
        share = filled / total
        assign[g] = "train" if share < 0.8 else ("validation" if share < 0.9 else "test")
        filled += sizes[g]
    ds = ds.map(lambda r: {"split": assign[r["split_group"]]}, num_proc=NUM_PROC)

    # SFT tokenisation with the same tokenizer file.
    def tokenize(batch):
        tok = Tokenizer.from_file(str(tokenizer_path))
        tok.no_truncation()
        tok.no_padding()
        sep = tok.token_to_id("[SEP]")
        prompts = tok.encode_batch(batch["prompt"], add_special_tokens=False)
        completions = tok.encode_batch(batch["completion"], add_special_tokens=False)
        ids, labels, lengths, prompt_tokens = [], [], [], []
        for p, c in zip(prompts, completions):
            full = p.ids + c.ids + [sep]
            lab = [-100] * len(p.ids) + c.ids + [sep]
            ids.append(full[:MAX_LENGTH])
            labels.append(lab[:MAX_LENGTH])
            lengths.append(min(len(full), MAX_LENGTH))
            prompt_tokens.append(min(len(p.ids), MAX_LENGTH))
        return {"input_ids": ids, "labels": labels, "length": lengths, "prompt_tokens": prompt_tokens}

    ds = ds.map(tokenize, batched=True, batch_size=1000, num_proc=NUM_PROC)
    tokens = sum(ds["length"])

    # Shards: per split, sorted by length, cut at ~64 MiB of token data.
    keep_columns = ["prompt", "completion", "split", "input_ids", "labels", "length", "prompt_tokens"]
    ds = ds.select_columns(keep_columns)
    shards = 0
    for split in ("train", "validation", "test"):
        part = ds.filter(lambda r: r["split"] == split, num_proc=NUM_PROC).sort("length")
        lengths = part["length"]
        start, acc = 0, 0
        for i, n in enumerate(lengths):
            acc += n
            if acc >= SHARD_TOKENS or i == len(lengths) - 1:
                part.select(range(start, i + 1)).to_parquet(str(out / f"{split}-{shards:05}.parquet"))
                shards += 1
                start, acc = i + 1, 0
    summary = {
        "rows_in": rows_in,
        "exact_duplicates": exact_dropped,
        "cleaned_dropped": cleaned_dropped,
        "rows_out": len(ds),
        "tokens": tokens,
        "shards": shards,
        "num_proc": NUM_PROC,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
