//! Entity-level precision, recall and F1 over BIO tag sequences, as seqeval computes them.
//!
//! Two ways of reading chunks:
//! - [`Mode::Lenient`] (seqeval's default, conlleval's rule): a chunk starts at `B-X`, or at an
//!   `I-X` that follows `O` or a tag of another type; it ends before `O`, `B-`, or a change of
//!   type.
//! - [`Mode::Strict`] (seqeval `mode="strict", scheme=IOB2`): a chunk is `B-X` followed by
//!   `I-X`s; an `I-X` that does not continue such a chunk belongs to no entity.
//!
//! An entity is (type, first word, last word) within its sentence; a predicted entity counts as
//! correct only if the same triple is in the truth. Per type, and micro / macro / weighted
//! (by true support) averages, with 0 where a ratio has a zero denominator.

use std::collections::{BTreeMap, BTreeSet};

/// How chunks are read from tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// seqeval's default (conlleval).
    Lenient,
    /// seqeval strict IOB2.
    Strict,
}

/// An entity: type and inclusive word span.
pub type Entity = (String, usize, usize);

fn split(tag: &str) -> (char, &str) {
    if tag == "O" || tag.is_empty() {
        return ('O', "");
    }
    match tag.split_once('-') {
        Some((prefix, kind)) => (prefix.chars().next().unwrap_or('O'), kind),
        // A bare type (no prefix) reads as a continuation of that type.
        None => ('I', tag),
    }
}

/// The entities of one sentence.
pub fn entities(tags: &[&str], mode: Mode) -> Vec<Entity> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize)> = None;
    let mut prev: (char, &str) = ('O', "");
    for (i, tag) in tags.iter().enumerate() {
        let (prefix, kind) = split(tag);
        let continues = match mode {
            Mode::Lenient => prefix == 'I' && prev.0 != 'O' && prev.1 == kind,
            Mode::Strict => prefix == 'I' && open.as_ref().is_some_and(|(k, _)| k == kind),
        };
        if !continues {
            if let Some((k, start)) = open.take() {
                out.push((k, start, i - 1));
            }
            let starts = match mode {
                Mode::Lenient => prefix == 'B' || prefix == 'I',
                Mode::Strict => prefix == 'B',
            };
            if starts {
                open = Some((kind.to_string(), i));
            }
        }
        prev = (prefix, kind);
    }
    if let Some((k, start)) = open {
        out.push((k, start, tags.len() - 1));
    }
    out
}

/// Precision, recall, F1 and true support of one row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    /// Correct / predicted.
    pub precision: f64,
    /// Correct / true.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
    /// True entities (or tokens).
    pub support: u64,
}

impl Scores {
    /// Scores from counts of correct, predicted and true items.
    pub fn from_counts(correct: u64, predicted: u64, truth: u64) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (p, r) = (ratio(correct, predicted), ratio(correct, truth));
        let f1 = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        Scores {
            precision: p,
            recall: r,
            f1,
            support: truth,
        }
    }
}

/// A classification report: per type and the three averages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Per entity type (or label), sorted.
    pub per_type: BTreeMap<String, Scores>,
    /// Over all entities.
    pub micro: Scores,
    /// Unweighted mean over types.
    pub macro_avg: Scores,
    /// Mean over types weighted by true support.
    pub weighted: Scores,
}

pub(crate) fn averages(per_type: BTreeMap<String, Scores>, micro: Scores) -> Report {
    let n = per_type.len().max(1) as f64;
    let support: u64 = per_type.values().map(|s| s.support).sum();
    let mean = |f: fn(&Scores) -> f64| per_type.values().map(f).sum::<f64>() / n;
    let weighted = |f: fn(&Scores) -> f64| {
        if support == 0 {
            0.0
        } else {
            per_type
                .values()
                .map(|s| f(s) * s.support as f64)
                .sum::<f64>()
                / support as f64
        }
    };
    Report {
        macro_avg: Scores {
            precision: mean(|s| s.precision),
            recall: mean(|s| s.recall),
            f1: mean(|s| s.f1),
            support,
        },
        weighted: Scores {
            precision: weighted(|s| s.precision),
            recall: weighted(|s| s.recall),
            f1: weighted(|s| s.f1),
            support,
        },
        micro,
        per_type,
    }
}

/// Entity-level report over sentences of true and predicted tags (same lengths).
pub fn entity_report(truth: &[Vec<&str>], predicted: &[Vec<&str>], mode: Mode) -> Report {
    let mut counts: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (t, p) in truth.iter().zip(predicted) {
        let true_set: BTreeSet<Entity> = entities(t, mode).into_iter().collect();
        let pred_set: BTreeSet<Entity> = entities(p, mode).into_iter().collect();
        for e in &true_set {
            counts.entry(e.0.clone()).or_default().2 += 1;
        }
        for e in &pred_set {
            let c = counts.entry(e.0.clone()).or_default();
            c.1 += 1;
            if true_set.contains(e) {
                c.0 += 1;
            }
        }
    }
    let total = counts
        .values()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let per_type = counts
        .into_iter()
        .map(|(k, (c, p, t))| (k, Scores::from_counts(c, p, t)))
        .collect();
    averages(per_type, Scores::from_counts(total.0, total.1, total.2))
}

/// Token-level report over every label that occurs in the truth or the predictions
/// (scikit-learn's `classification_report` on the flattened tags); the seed model cards quote
/// its weighted F1.
pub fn token_report(truth: &[Vec<&str>], predicted: &[Vec<&str>]) -> Report {
    let mut counts: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut correct_total = 0;
    let mut total = 0;
    for (t, p) in truth.iter().zip(predicted) {
        for (a, b) in t.iter().zip(p) {
            counts.entry(a.to_string()).or_default().2 += 1;
            let c = counts.entry(b.to_string()).or_default();
            c.1 += 1;
            if a == b {
                c.0 += 1;
                correct_total += 1;
            }
            total += 1;
        }
    }
    let per_type = counts
        .into_iter()
        .map(|(k, (c, p, t))| (k, Scores::from_counts(c, p, t)))
        .collect();
    averages(per_type, Scores::from_counts(correct_total, total, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sents(s: &[&[&'static str]]) -> Vec<Vec<&'static str>> {
        s.iter().map(|x| x.to_vec()).collect()
    }

    #[test]
    fn seqeval_readme_example() {
        // seqeval's README: MISC is missed (span differs), PER is found.
        let truth = sents(&[
            &["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
            &["B-PER", "I-PER", "O"],
        ]);
        let pred = sents(&[
            &["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
            &["B-PER", "I-PER", "O"],
        ]);
        let r = entity_report(&truth, &pred, Mode::Lenient);
        assert_eq!(r.micro.f1, 0.5);
        assert_eq!(r.per_type["MISC"].f1, 0.0);
        assert_eq!(r.per_type["PER"].f1, 1.0);
        assert_eq!((r.macro_avg.f1, r.weighted.f1), (0.5, 0.5));
    }

    #[test]
    fn stray_continuations_count_only_in_lenient_mode() {
        let tags = ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "I-LOC"];
        assert_eq!(
            entities(&tags, Mode::Lenient),
            vec![
                ("PER".into(), 0, 1),
                ("LOC".into(), 3, 3),
                ("PER".into(), 4, 4),
                ("LOC".into(), 5, 5)
            ]
        );
        assert_eq!(entities(&tags, Mode::Strict), vec![("LOC".into(), 3, 3)]);
    }

    #[test]
    fn entities_at_sentence_end_and_adjacent_b_tags() {
        let tags = ["O", "B-Chemical", "B-Chemical", "I-Chemical"];
        let want: Vec<Entity> = vec![("Chemical".into(), 1, 1), ("Chemical".into(), 2, 3)];
        assert_eq!(entities(&tags, Mode::Lenient), want);
        assert_eq!(entities(&tags, Mode::Strict), want);
    }

    #[test]
    fn empty_predictions_score_zero_without_dividing_by_zero() {
        let truth = sents(&[&["B-Disease", "O"]]);
        let pred = sents(&[&["O", "O"]]);
        let r = entity_report(&truth, &pred, Mode::Lenient);
        assert_eq!(
            r.micro,
            Scores {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
                support: 1
            }
        );
    }

    #[test]
    fn token_report_weights_by_support() {
        let truth = sents(&[&["O", "O", "B-X", "O"]]);
        let pred = sents(&[&["O", "B-X", "B-X", "O"]]);
        let r = token_report(&truth, &pred);
        // O: p 1, r 2/3, f1 0.8, support 3; B-X: p 1/2, r 1, f1 2/3, support 1.
        let expected = (0.8 * 3.0 + 2.0 / 3.0) / 4.0;
        assert!((r.weighted.f1 - expected).abs() < 1e-12);
    }
}
