"""Recomputes medtune's entity scores with seqeval from the predictions the evaluate stage
wrote, for every model variant (base, adapter), and prints both side by side: micro, macro
and weighted F1 and per-type precision / recall / F1 in seqeval's default and strict IOB2
modes. Exit 1 when any number differs by more than 1e-9.

usage: python bench/seqeval_compare.py ARTIFACTS_DIR
       (ARTIFACTS_DIR = <workdir>/cache/evaluate/<key>/artifacts, the folder of the report
        `medtune eval` prints; needs `pip install seqeval`)
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def main(artifacts: Path) -> int:
    by_model = defaultdict(lambda: ([], []))
    for line in (artifacts / "predictions.jsonl").open():
        row = json.loads(line)
        truth, predicted = by_model[row["model"]]
        truth.append(row["truth"])
        predicted.append(row["predicted"])
    ours = json.loads((artifacts / "scores.json").read_text())
    failures = 0
    for model, (truth, predicted) in by_model.items():
        print(f"== {model}: {len(truth)} sequences")
        for mode, kwargs in [
            ("entity_default", {}),
            ("entity_strict", {"mode": "strict", "scheme": IOB2}),
        ]:
            theirs = classification_report(truth, predicted, output_dict=True, **kwargs)
            mine = ours[model][mode]
            pairs = [
                ("micro f1", mine["micro_f1"], theirs["micro avg"]["f1-score"]),
                ("macro f1", mine["macro_f1"], theirs["macro avg"]["f1-score"]),
                ("weighted f1", mine["weighted_f1"], theirs["weighted avg"]["f1-score"]),
            ]
            for kind, scores in mine["per_type"].items():
                for key, their_key in [("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")]:
                    pairs.append((f"{kind} {key}", scores[key], theirs[kind][their_key]))
            for name, a, b in pairs:
                same = abs(a - b) < 1e-9
                failures += not same
                print(f"{mode:15} {name:22} medtune {a:.6f} seqeval {b:.6f} {'same' if same else 'DIFFERENT'}")
    print("all equal" if failures == 0 else f"{failures} numbers differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
