"""Scores candidate/reference pairs with rouge-score and sacrebleu and prints the figures as
JSON, for the ROUGE-L / BLEU-1 parity test (tests/text_metrics_parity.rs).

usage: python bench/text_metrics_parity.py PAIRS.jsonl
PAIRS.jsonl: one {"group": str, "candidate": str, "reference": str} a line.
Prints {"rows": [{"tokens": [CANDIDATE_TOKENS, REFERENCE_TOKENS], "rouge_l": F, "bleu1": B}],
"corpus_bleu1": {GROUP: B, ..., "all": B}}.

- ROUGE-L: rouge_score's RougeScorer(["rougeL"]) F-measure (default tokenizer, no stemmer).
- BLEU-1: sacrebleu's BLEU with max_ngram_order=1, no smoothing and tokenize="none", on the
  text tokenised by rouge_score's default tokenizer (the tokenisation medtune uses for both
  metrics; sacrebleu's own 13a tokenizer keeps case and punctuation tokens), divided by 100.
  Per sentence (sentence_score) and per group (corpus_score: counts summed, then divided).
"""
import json
import sys
from collections import defaultdict

from rouge_score import rouge_scorer, tokenizers
from sacrebleu.metrics import BLEU


def main(path: str) -> int:
    pairs = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    sentence = BLEU(max_ngram_order=1, smooth_method="none", tokenize="none", effective_order=True)
    corpus = BLEU(max_ngram_order=1, smooth_method="none", tokenize="none")
    rows = []
    groups = defaultdict(lambda: ([], []))
    for pair in pairs:
        candidate, reference = pair["candidate"], pair["reference"]
        cand_tokens, ref_tokens = tokenizer.tokenize(candidate), tokenizer.tokenize(reference)
        hyp, ref = " ".join(cand_tokens), " ".join(ref_tokens)
        rows.append(
            {
                "tokens": [cand_tokens, ref_tokens],
                # score(target, prediction): the reference comes first.
                "rouge_l": scorer.score(reference, candidate)["rougeL"].fmeasure,
                "bleu1": sentence.sentence_score(hyp, [ref]).score / 100.0,
            }
        )
        for group in (pair["group"], "all"):
            groups[group][0].append(hyp)
            groups[group][1].append(ref)
    corpus_bleu1 = {
        group: corpus.corpus_score(hyps, [refs]).score / 100.0
        for group, (hyps, refs) in groups.items()
    }
    json.dump({"rows": rows, "corpus_bleu1": corpus_bleu1}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
