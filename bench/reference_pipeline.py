"""The reference: medtune's prep steps done with the Python stack people use today, as a
skilled user writes it: HF `datasets` with batched maps and filters over num_proc = cores
processes, `tokenizers` (the same tokenizer.json, `encode_batch`), on an alpaca JSON array:

  load -> keys (normalised instruction + input, hashed) -> exact dedup (first row per hash) ->
  near-duplicate groups (optional; MinHash over word 5-grams, 128 permutations, Jaccard >= 0.8,
  union-find) -> clean (empty output / question) -> group-aware 80/10/10 split (seeded shuffle
  of groups) -> SFT tokenisation (prompt ids, then completion ids + [SEP]; labels -100 over the
  prompt; 512 tokens) -> Parquet shards per split, sorted by length, ~64 MiB of token data each.

Near-duplicates, `--near`:
  none        exact dedup only;
  datasketch  `datasketch` MinHash + MinHashLSH, the usual choice (LSH index in pure Python);
  numpy       the fast choice: signatures vectorised with numpy in the batched map (word hashes
              combined into 5-gram hashes, 128 universal hashes, min per column), then LSH by
              sorting each band's keys (np.unique) and verifying neighbours in a bucket by their
              estimated Jaccard, as datatrove's MinHash dedup does; 16 bands x 8 rows as medtune.

Prints one JSON line: rows and tokens, and the seconds of every step.

usage: python bench/reference_pipeline.py INPUT.json TOKENIZER.json OUT_DIR [--near none|datasketch|numpy]
"""
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
import unicodedata
import zlib
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer

NUM_PROC = os.cpu_count() or 1
MAX_LENGTH = 512
SHARD_TOKENS = 64 * 2**20 // 8


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def add_keys(batch):
    out = {"prompt": [], "completion": batch["output"], "dedup_hash": [], "group_key": []}
    for instruction, given in zip(batch["instruction"], batch["input"]):
        question = given if given.strip() else instruction
        out["prompt"].append(instruction if not given.strip() else f"{instruction}\n\n{given}")
        key = normalise(instruction) + "\x1f" + normalise(given)
        out["dedup_hash"].append(hashlib.blake2b(key.encode(), digest_size=16).hexdigest())
        out["group_key"].append(hashlib.blake2b(normalise(question).encode(), digest_size=8).hexdigest())
    return out


def words_of(instruction: str, given: str) -> list:
    return re.findall(r"\w+", normalise(instruction + " " + given))


def datasketch_minhash(batch):
    from datasketch import MinHash

    out = []
    for instruction, given in zip(batch["instruction"], batch["input"]):
        words = words_of(instruction, given)
        grams = {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([g.encode() for g in grams])
        out.append(m.hashvalues.tolist())
    return {"minhash": out}


def datasketch_clusters(signatures) -> list:
    """Union-find roots per row from MinHashLSH, inserting rows in order."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    parent = list(range(len(signatures)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, values in enumerate(signatures):
        m = MinHash(num_perm=128, seed=1, hashvalues=values, scheme="affine32")
        for j in lsh.query(m):
            a, b = find(i), find(int(j))
            if a != b:
                parent[a] = b
        lsh.insert(str(i), m)
    return [find(i) for i in range(len(signatures))]


PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(1)
PERM_A = _rng.integers(1, int(PRIME), 128, dtype=np.uint64)
PERM_B = _rng.integers(0, int(PRIME), 128, dtype=np.uint64)
GRAM_MULT = np.uint64(1_000_003)


def numpy_minhash(batch):
    out = []
    for instruction, given in zip(batch["instruction"], batch["input"]):
        words = words_of(instruction, given)
        h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        if len(h) >= 5:
            grams = h[:-4].copy()
            for k in range(1, 5):
                grams = grams * GRAM_MULT + h[k : len(h) - 4 + k]
        else:
            grams = h[:1] if len(h) else np.zeros(1, dtype=np.uint64)
        grams = np.unique(grams)
        sig = ((PERM_A[:, None] * grams[None, :] + PERM_B[:, None]) % PRIME).min(axis=1)
        out.append((sig & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    return {"minhash": out}


def numpy_clusters(signatures: np.ndarray, bands: int = 16, rows: int = 8, threshold: float = 0.8) -> list:
    """Union-find roots per row: per band, rows sorted by band key; neighbours in a bucket whose
    estimated Jaccard reaches `threshold` are joined."""
    n = len(signatures)
    index = np.arange(n)
    pairs = []
    for band in range(bands):
        keys = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        keys = keys.view(np.dtype((np.void, keys.dtype.itemsize * rows))).ravel()
        _, bucket = np.unique(keys, return_inverse=True)
        order = np.lexsort((index, bucket))
        same = bucket[order[1:]] == bucket[order[:-1]]
        pairs.append(np.stack([order[:-1][same], order[1:][same]], axis=1))
    pairs = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), dtype=np.int64)
    if len(pairs):
        similar = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1) >= threshold
        pairs = pairs[similar]
    # Connected components, vectorised: every row takes the smallest label of its pairs, then
    # labels jump to their label's label, until nothing changes.
    labels = np.arange(n)
    left, right = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[left], labels[right])
        new = labels.copy()
        np.minimum.at(new, left, low)
        np.minimum.at(new, right, low)
        new = new[new]
        if np.array_equal(new, labels):
            break
        labels = new
    return labels.tolist()


def main(source: Path, tokenizer_path: Path, out: Path, near: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    steps = {}
    clock = time.perf_counter()

    def step(name):
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(now - clock, 3)
        clock = now

    # No cache from an earlier run: the JSON conversion and every map are computed here.
    datasets.disable_caching()
    cache = out / "hf-cache"
    ds = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(cache))
    rows_in = len(ds)
    step("load")
    ds = ds.map(add_keys, batched=True, num_proc=NUM_PROC)
    step("keys")

    # Exact duplicates: keep the first row of each hash (pandas over the Arrow column).
    hashes = ds.select_columns(["dedup_hash"]).to_pandas()["dedup_hash"]
    ds = ds.select(np.flatnonzero(~hashes.duplicated().to_numpy()))
    exact_dropped = rows_in - len(ds)
    step("exact_dedup")

    # Near duplicates: clusters by union-find, one split group per cluster.
    if near == "none":
        ds = ds.rename_column("group_key", "split_group")
    else:
        signer = datasketch_minhash if near == "datasketch" else numpy_minhash
        ds = ds.map(signer, batched=True, num_proc=NUM_PROC)
        step("near_signatures")
        if near == "datasketch":
            roots = datasketch_clusters(ds["minhash"])
        else:
            matrix = ds.select_columns(["minhash"]).with_format("numpy")[:]["minhash"]
            matrix = np.asarray(matrix, dtype=np.uint32)
            step("near_matrix")
            roots = numpy_clusters(matrix)
        step("near_lsh")
        groups = ds.select_columns(["group_key"]).to_dict()["group_key"]
        cluster_group = {}
        for i, root in enumerate(roots):
            cluster_group.setdefault(root, groups[i])
        ds = ds.add_column("split_group", [cluster_group[root] for root in roots])
        ds = ds.remove_columns(["minhash"])
        clustered = len(roots) - len(set(roots))
    step("near_dedup" if near != "none" else "groups")

    # Clean.
    before = len(ds)
    ds = ds.filter(
        lambda b: [bool(c.strip()) and bool(p.strip()) for c, p in zip(b["completion"], b["prompt"])],
        batched=True,
        num_proc=NUM_PROC,
    )
    cleaned_dropped = before - len(ds)
    step("clean")

    # Group-aware split: groups shuffled by seed, filled to 80/10/10 of the rows.
    row_groups = ds.select_columns(["split_group"]).to_pandas()["split_group"]
    sizes = row_groups.value_counts().to_dict()
    order = sorted(sizes)
    random.Random(42).shuffle(order)
    total, filled, assign = len(ds), 0, {}
    for g in order:
        share = filled / total
        assign[g] = "train" if share < 0.8 else ("validation" if share < 0.9 else "test")
        filled += sizes[g]
    ds = ds.add_column("split", row_groups.map(assign).tolist())
    step("split")

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
    step("tokenize")

    # Shards: per split, sorted by length, cut at ~64 MiB of token data.
    keep_columns = ["prompt", "completion", "split", "input_ids", "labels", "length", "prompt_tokens"]
    ds = ds.select_columns(keep_columns)
    shards = 0
    for split in ("train", "validation", "test"):
        part = ds.filter(
            lambda b: [s == split for s in b["split"]], batched=True, num_proc=NUM_PROC
        ).sort("length")
        lengths = part["length"]
        start, acc = 0, 0
        for i, n in enumerate(lengths):
            acc += n
            if acc >= SHARD_TOKENS or i == len(lengths) - 1:
                part.select(range(start, i + 1)).to_parquet(str(out / f"{split}-{shards:05}.parquet"))
                shards += 1
                start, acc = i + 1, 0
    step("shards")
    shutil.rmtree(cache, ignore_errors=True)
    summary = {
        "near": near,
        "rows_in": rows_in,
        "exact_duplicates": exact_dropped,
        "rows_joined_to_a_cluster": clustered if near != "none" else 0,
        "cleaned_dropped": cleaned_dropped,
        "rows_out": len(ds),
        "tokens": tokens,
        "shards": shards,
        "num_proc": NUM_PROC,
        "steps": steps,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    near = "datasketch"
    if "--near" in args:
        at = args.index("--near")
        near = args[at + 1]
        del args[at : at + 2]
    if near not in ("none", "datasketch", "numpy"):
        sys.exit(f"--near {near}: expected none, datasketch or numpy")
    sys.exit(main(Path(args[0]), Path(args[1]), Path(args[2]), near))
