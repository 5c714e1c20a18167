"""Recomputes medtune's test-split entity scores with seqeval from the predictions it wrote, and
prints both side by side.

usage: python bench/seqeval_compare.py ARTIFACTS_DIR
       (ARTIFACTS_DIR = <workdir>/cache/train/<key>/artifacts, printed by `medtune train`;
        needs `pip install seqeval`)
"""
import json
import sys
from pathlib import Path

from seqeval.metrics import classification_report, f1_score
from seqeval.scheme import IOB2


def main(artifacts: Path) -> int:
    rows = [json.loads(line) for line in (artifacts / "test_predictions.jsonl").open()]
    truth = [r["truth"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    ours = json.loads((artifacts / "test_scores.json").read_text())
    theirs = {
        "entity_lenient": f1_score(truth, predicted),
        "entity_strict": f1_score(truth, predicted, mode="strict", scheme=IOB2),
    }
    failures = 0
    for mode, f1 in theirs.items():
        mine = ours[mode]["micro_f1"]
        same = abs(mine - f1) < 1e-9
        failures += not same
        print(f"{mode}: medtune {mine:.6f} seqeval {f1:.6f} {'same' if same else 'DIFFERENT'}")
    print(classification_report(truth, predicted, digits=4))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
