"""A bare `tokenizers` encode of the texts the SFT tokenize stage encodes: the prompts
(instruction, then the input after a blank line) and completions of an alpaca JSON array after
exact dedup (normalised instruction + input, first row wins), each list in one `encode_batch`
(which uses every core). Only the two calls are timed: the figure the tokenize stage is
compared with.

With `--sft-digests OUT MAX_LENGTH` it then (untimed) writes, one line per row, a digest of the
sequence the SFT tokenize stage builds from these ids with a plain template: the tokenizer's
first of `<s>`, `<|begin_of_text|>`, `[CLS]` (if any), the prompt's ids, the completion's ids and
the end-of-sequence token (first of `</s>`, `<|eot_id|>`, `<|endoftext|>`, `[SEP]`), cut at
MAX_LENGTH; bench/e2e.py compares them with the ids medtune wrote.

usage: python bench/encode_batch.py INPUT.json TOKENIZER.json [--sft-digests OUT MAX_LENGTH]
"""
import hashlib
import json
import sys
import time
import unicodedata
from array import array

from tokenizers import Tokenizer


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def first_known(tok: Tokenizer, tokens: list) -> list:
    ids = [tok.token_to_id(t) for t in tokens]
    return [next(i for i in ids if i is not None)] if any(i is not None for i in ids) else []


def sequence_digest(ids: list) -> str:
    return hashlib.blake2b(array("I", ids).tobytes(), digest_size=16).hexdigest()


def main(source: str, tokenizer_path: str, digests: tuple = None) -> int:
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
    if digests:
        out, max_length = digests[0], int(digests[1])
        bos = first_known(tok, ["<s>", "<|begin_of_text|>", "[CLS]"])
        eos = first_known(tok, ["</s>", "<|eot_id|>", "<|endoftext|>", "[SEP]"])
        with open(out, "w") as f:
            for p, c in zip(encoded_prompts, encoded_completions):
                f.write(sequence_digest((bos + p.ids + c.ids + eos)[:max_length]) + "\n")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    digests = None
    if len(args) == 5 and args[2] == "--sft-digests":
        digests = (args[3], args[4])
        args = args[:2]
    sys.exit(main(args[0], args[1], digests))
