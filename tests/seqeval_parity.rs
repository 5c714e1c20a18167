//! medtune's entity metrics equal seqeval's, in its default and strict IOB2 modes, on a few
//! thousand generated tag sequences full of the awkward cases (stray I- tags, type changes inside
//! a chunk, entities at sentence end, adjacent B- tags, sentences without entities).
//!
//! Needs a Python with seqeval in MEDTUNE_PYTHON (`scripts/test.sh` makes one with
//! `scripts/python-env.sh` and sets it); the test fails when it is unset.

mod common;

use medtune_stages::shared::metrics::entities::{entity_report, Mode, Report, Scores};

const TAGS: [&str; 7] = [
    "O",
    "B-Chemical",
    "I-Chemical",
    "B-Disease",
    "I-Disease",
    "O",
    "O",
];

/// A small deterministic generator (64-bit LCG), so the cases are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn cases() -> (Vec<Vec<&'static str>>, Vec<Vec<&'static str>>) {
    let mut rng = Lcg(42);
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    for _ in 0..3000 {
        let len = 1 + rng.next(12);
        let t: Vec<&str> = (0..len).map(|_| TAGS[rng.next(TAGS.len())]).collect();
        // Predictions: mostly the truth with some tags changed, sometimes all random.
        let noise = [0, 1, 3, 10][rng.next(4)];
        let p: Vec<&str> = t
            .iter()
            .map(|&tag| {
                if rng.next(10) < noise {
                    TAGS[rng.next(TAGS.len())]
                } else {
                    tag
                }
            })
            .collect();
        truth.push(t);
        predicted.push(p);
    }
    (truth, predicted)
}

fn close(ours: &Scores, theirs: &serde_json::Value, what: &str) {
    let get = |k: &str| theirs[k].as_f64().unwrap();
    for (name, mine, want) in [
        ("precision", ours.precision, get("precision")),
        ("recall", ours.recall, get("recall")),
        ("f1", ours.f1, get("f1-score")),
        ("support", ours.support as f64, get("support")),
    ] {
        assert!(
            (mine - want).abs() < 1e-9,
            "{what} {name}: medtune {mine}, seqeval {want}"
        );
    }
}

fn compare(ours: &Report, theirs: &serde_json::Value, mode: &str) {
    close(&ours.micro, &theirs["micro avg"], &format!("{mode} micro"));
    close(
        &ours.macro_avg,
        &theirs["macro avg"],
        &format!("{mode} macro"),
    );
    close(
        &ours.weighted,
        &theirs["weighted avg"],
        &format!("{mode} weighted"),
    );
    let types: Vec<&String> = theirs
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.ends_with(" avg"))
        .collect();
    assert_eq!(types.len(), ours.per_type.len(), "{mode} types: {types:?}");
    for (kind, scores) in &ours.per_type {
        close(scores, &theirs[kind], &format!("{mode} {kind}"));
    }
}

#[test]
fn entity_scores_equal_seqeval_in_both_modes() {
    let (truth, predicted) = cases();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    let json = serde_json::json!({"truth": truth, "predicted": predicted});
    std::fs::write(&path, json.to_string()).unwrap();
    let theirs = common::python_json("seqeval_parity.py", &path);
    compare(
        &entity_report(&truth, &predicted, Mode::Lenient),
        &theirs["default"],
        "default",
    );
    compare(
        &entity_report(&truth, &predicted, Mode::Strict),
        &theirs["strict"],
        "strict",
    );
}
