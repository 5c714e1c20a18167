"""Scores tag sequences with seqeval and prints the figures as JSON, for the parity test.

usage: python bench/seqeval_parity.py CASES.json
CASES.json: {"truth": [[tag, ...], ...], "predicted": [[tag, ...], ...]}
Prints {"default": REPORT, "strict": REPORT}, REPORT = seqeval's classification_report dict.
"""
import json
import sys

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def main(path: str) -> int:
    cases = json.load(open(path))
    truth, predicted = cases["truth"], cases["predicted"]
    out = {
        "default": classification_report(truth, predicted, output_dict=True, zero_division=0),
        "strict": classification_report(
            truth, predicted, output_dict=True, zero_division=0, mode="strict", scheme=IOB2
        ),
    }
    json.dump(out, sys.stdout, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
