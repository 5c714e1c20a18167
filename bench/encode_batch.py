"""A bare `tokenizers` encode of the texts the SFT tokenize stage encodes: the prompts
(instruction, then the input after a blank line) and completions of an alpaca JSON array after
exact dedup (normalised instruction + input, first row wins), each list in one `encode_batch`
(which uses every core). Only the two calls are timed: the figure the tokenize stage is
compared with.

usage: python bench/encode_batch.py INPUT.json TOKENIZER.json
"""
import json
import sys
import time
import unicodedata

from tokenizers import Tokenizer


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def main(source: str, tokenizer_path: str) -> int:
    rows = json.load(open(source))
    seen, prompts, completions = set(), [], []
    for row in rows:
        instruction, given = row["instruction"], row.get("input", "")
        key = normalise(instruction) + "\x1f" + normalise(given)
        if key in seen:
            continue
        seen.add(key)
        prompts.append(instruction if not given.strip() else f"{instruction}\n\n{given}")
        completions.append(row["output"])
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_truncation()
    tok.no_padding()
    start = time.perf_counter()
    encoded_prompts = tok.encode_batch(prompts, add_special_tokens=False)
    encoded_completions = tok.encode_batch(completions, add_special_tokens=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in encoded_prompts) + sum(len(e.ids) for e in encoded_completions)
    print(json.dumps({"rows": len(prompts), "tokens": tokens, "seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
