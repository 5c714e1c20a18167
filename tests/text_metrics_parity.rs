//! medtune's ROUGE-L F1 and BLEU-1 (per sentence and over a corpus) equal the reference Python
//! implementations on real ChatDoctor answers, row by row within 1e-9.
//!
//! References: the `output` of the first 300 rows of `chatdoctor5k.json`. Candidates, all
//! deterministic: another row's answer (row 300 + i), a perturbed copy of the reference (words
//! dropped, repeated, swapped for another answer's, upper-cased, re-joined with punctuation, cut
//! short, so both brevity-penalty cases occur), and hand-written edge cases (empty sides,
//! punctuation only, non-ASCII letters whose lower case is or is not ASCII).
//!
//! What is compared (`bench/text_metrics_parity.py`):
//! - tokens: `metrics::text::tokens` = rouge_score's default tokenizer (no stemmer);
//! - ROUGE-L: rouge_score's `RougeScorer(["rougeL"])` F-measure;
//! - BLEU-1: sacrebleu's BLEU with `max_ngram_order=1`, `smooth_method="none"`,
//!   `tokenize="none"` on the text tokenised as above, divided by 100. That is medtune's
//!   definition: clipped unigram precision times the brevity penalty, no smoothing. sacrebleu's
//!   own 13a tokenizer would differ on purpose (it keeps case and punctuation tokens; medtune
//!   uses rouge_score's tokenisation for both metrics, as `metrics/text.rs` documents).
//!   Corpus BLEU-1 per candidate group and over all rows (counts summed before dividing).
//!
//! Needs a Python with rouge-score and sacrebleu in MEDTUNE_PYTHON (`scripts/test.sh` makes one
//! with `scripts/python-env.sh` and sets it); the test fails when it is unset.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use medtune_stages::shared::metrics::text::{bleu1, corpus_bleu1, rouge_l, tokens};

const REFERENCES: usize = 300;
const TOLERANCE: f64 = 1e-9;

/// A small deterministic generator (64-bit LCG), so the candidates are the same on every run.
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

/// The reference's words, some dropped, repeated, replaced by `other`'s, upper-cased, joined
/// by a space or punctuation, and the result cut to 40-100% of its words (or kept whole).
fn perturbed(reference: &str, other: &str, rng: &mut Lcg) -> String {
    let others: Vec<&str> = other.split_whitespace().collect();
    let mut words = Vec::new();
    for word in reference.split_whitespace() {
        match rng.next(12) {
            0 => {}
            1 => words.extend([word.to_string(), word.to_string()]),
            2 if !others.is_empty() => words.push(others[rng.next(others.len())].to_string()),
            3 => words.push(word.to_uppercase()),
            _ => words.push(word.to_string()),
        }
    }
    let keep = match rng.next(3) {
        0 => words.len(),
        _ => words.len() * (4 + rng.next(7)) / 10,
    };
    let mut text = String::new();
    for (i, word) in words[..keep].iter().enumerate() {
        if i > 0 {
            text.push_str([" ", " ", " ", ", ", " - ", "/", "; "][rng.next(7)]);
        }
        text.push_str(word);
    }
    text
}

/// (group, candidate, reference) triples.
fn pairs() -> Vec<(&'static str, String, String)> {
    let path = common::shared_data("chatdoctor/chatdoctor5k.json");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let answer = |i: usize| rows[i]["output"].as_str().unwrap().to_string();
    let mut rng = Lcg(14);
    let mut pairs = Vec::new();
    for i in 0..REFERENCES {
        let (reference, other) = (answer(i), answer(REFERENCES + i));
        pairs.push(("other_row", other.clone(), reference.clone()));
        pairs.push((
            "perturbed",
            perturbed(&reference, &other, &mut rng),
            reference,
        ));
    }
    let edge = [
        ("", "Take two tablets daily."),
        ("Take two tablets daily.", ""),
        ("", ""),
        ("?! ... --", "Rest, fluids."),
        ("Rest, fluids.", "rest fluids"),
        ("the the the the", "the patient"),
        (
            "Fièvre 38°C — İbuprofen ×2; ﬁne straße, KELVIN \u{212A}",
            "fievre 38 c ibuprofen 2 k",
        ),
        ("ΣΊΣΥΦΟΣ ÅNGSTRÖM 3²", "σίσυφος angstr m 3"),
        ("COVID-19 PCR: negative", "covid 19 pcr negative"),
    ];
    for (candidate, reference) in edge {
        pairs.push(("edge", candidate.to_string(), reference.to_string()));
    }
    pairs
}

fn number(value: &serde_json::Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn rouge_l_and_bleu1_equal_rouge_score_and_sacrebleu_on_chatdoctor_answers() {
    let pairs = pairs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for (group, candidate, reference) in &pairs {
        let line =
            serde_json::json!({"group": group, "candidate": candidate, "reference": reference});
        writeln!(file, "{line}").unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    let theirs = common::python_json("text_metrics_parity.py", &path);
    let rows = theirs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), pairs.len());

    let (mut max_rouge, mut max_bleu) = (0f64, 0f64);
    let (mut shorter, mut not_shorter, mut partial) = (0, 0, 0);
    for ((group, candidate, reference), row) in pairs.iter().zip(rows) {
        let what = format!("{group} candidate {candidate:?}\nreference {reference:?}");
        let (c, r) = (tokens(candidate), tokens(reference));
        assert_eq!(
            serde_json::json!([c, r]),
            row["tokens"],
            "tokens differ: {what}"
        );
        let rouge = rouge_l(candidate, reference);
        let bleu = bleu1(candidate, reference);
        let (rouge_diff, bleu_diff) = (
            (rouge - number(&row["rouge_l"])).abs(),
            (bleu - number(&row["bleu1"])).abs(),
        );
        assert!(
            rouge_diff <= TOLERANCE,
            "ROUGE-L {rouge} vs rouge_score {}: {what}",
            row["rouge_l"]
        );
        assert!(
            bleu_diff <= TOLERANCE,
            "BLEU-1 {bleu} vs sacrebleu {}: {what}",
            row["bleu1"]
        );
        max_rouge = max_rouge.max(rouge_diff);
        max_bleu = max_bleu.max(bleu_diff);
        if !c.is_empty() && c.len() < r.len() {
            shorter += 1;
        } else if !c.is_empty() {
            not_shorter += 1;
        }
        if rouge > 0.0 && rouge < 1.0 && bleu > 0.0 && bleu < 1.0 {
            partial += 1;
        }
    }
    // The rows exercise both brevity cases and real partial overlaps, not just 0s and 1s.
    assert!(
        shorter >= 100 && not_shorter >= 100 && partial >= 500,
        "shorter {shorter}, not shorter {not_shorter}, partial {partial}"
    );

    let mut groups: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (group, candidate, reference) in &pairs {
        for key in [*group, "all"] {
            groups
                .entry(key)
                .or_default()
                .push((candidate.as_str(), reference.as_str()));
        }
    }
    let mut max_corpus = 0f64;
    for (group, group_pairs) in &groups {
        let ours = corpus_bleu1(group_pairs.iter().copied());
        let reference = number(&theirs["corpus_bleu1"][group]);
        let diff = (ours - reference).abs();
        assert!(
            diff <= TOLERANCE,
            "corpus BLEU-1 of {group}: {ours} vs sacrebleu {reference}"
        );
        max_corpus = max_corpus.max(diff);
        println!(
            "corpus BLEU-1 {group}: {ours:.6} ({} pairs)",
            group_pairs.len()
        );
    }
    println!(
        "{} pairs compared ({shorter} candidates shorter than the reference, {not_shorter} not); \
         max |diff|: ROUGE-L {max_rouge:.3e}, BLEU-1 {max_bleu:.3e}, corpus BLEU-1 {max_corpus:.3e}",
        pairs.len()
    );
}
