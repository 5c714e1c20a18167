//! Generation metrics against references: ROUGE-L F1, BLEU-1, and perplexity.
//!
//! Tokenisation (the `rouge_score` package's default, used for both): lower-case, every run of
//! characters other than ASCII letters and digits is a separator, no stemming.
//!
//! - ROUGE-L: longest common subsequence of tokens; precision = LCS / candidate tokens,
//!   recall = LCS / reference tokens, F1 their harmonic mean (0 when either side is empty).
//! - BLEU-1: clipped unigram precision times the brevity penalty `exp(1 - r/c)` when the
//!   candidate is shorter than the reference (1 otherwise); per sentence, and over the corpus
//!   (counts summed before dividing, as corpus BLEU does). No smoothing.
//! - Perplexity: `exp` of the mean cross-entropy per scored token.

use std::collections::HashMap;

/// Tokens of `text`: lower-cased runs of ASCII letters and digits.
pub fn tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// ROUGE-L F1 of `candidate` against `reference`.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (tokens(candidate), tokens(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let common = lcs(&c, &r) as f64;
    let (p, rec) = (common / c.len() as f64, common / r.len() as f64);
    if p + rec == 0.0 {
        0.0
    } else {
        2.0 * p * rec / (p + rec)
    }
}

/// Unigram counts for BLEU-1: (clipped matches, candidate length, reference length).
fn unigram_counts(candidate: &str, reference: &str) -> (usize, usize, usize) {
    let (c, r) = (tokens(candidate), tokens(reference));
    let mut available: HashMap<&str, usize> = HashMap::new();
    for t in &r {
        *available.entry(t.as_str()).or_default() += 1;
    }
    let mut matched = 0;
    for t in &c {
        if let Some(n) = available.get_mut(t.as_str()) {
            if *n > 0 {
                *n -= 1;
                matched += 1;
            }
        }
    }
    (matched, c.len(), r.len())
}

fn bleu_from_counts(matched: usize, candidate: usize, reference: usize) -> f64 {
    if candidate == 0 {
        return 0.0;
    }
    let precision = matched as f64 / candidate as f64;
    let brevity = if candidate < reference {
        (1.0 - reference as f64 / candidate as f64).exp()
    } else {
        1.0
    };
    precision * brevity
}

/// Sentence BLEU-1 of `candidate` against `reference`.
pub fn bleu1(candidate: &str, reference: &str) -> f64 {
    let (m, c, r) = unigram_counts(candidate, reference);
    bleu_from_counts(m, c, r)
}

/// Corpus BLEU-1 over (candidate, reference) pairs.
pub fn corpus_bleu1<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> f64 {
    let (mut m, mut c, mut r) = (0, 0, 0);
    for (candidate, reference) in pairs {
        let counts = unigram_counts(candidate, reference);
        m += counts.0;
        c += counts.1;
        r += counts.2;
    }
    bleu_from_counts(m, c, r)
}

/// Perplexity from a summed cross-entropy (nats) over `tokens` scored tokens.
pub fn perplexity(total_cross_entropy: f64, tokens: u64) -> f64 {
    if tokens == 0 {
        return f64::NAN;
    }
    (total_cross_entropy / tokens as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_fold_case_and_split_on_punctuation() {
        assert_eq!(
            tokens("Take 2 tablets, twice-daily!"),
            ["take", "2", "tablets", "twice", "daily"]
        );
    }

    #[test]
    fn rouge_l_by_hand() {
        // candidate: the cat sat on mat (5); reference: the cat is on the mat (6);
        // LCS = the cat on mat = 4 -> P 4/5, R 4/6, F1 = 2*0.8*0.6667/(1.4667) = 0.72727...
        let f = rouge_l("The cat sat on mat", "the cat is on the mat");
        assert!((f - 8.0 / 11.0).abs() < 1e-12, "{f}");
        assert_eq!(rouge_l("", "the mat"), 0.0);
        assert_eq!(rouge_l("a b", "a b"), 1.0);
    }

    #[test]
    fn bleu1_clips_repeats_and_penalises_brevity() {
        // "the the the" vs "the cat": 1 clipped match of 3 -> 1/3; no brevity penalty.
        assert!((bleu1("the the the", "the cat") - 1.0 / 3.0).abs() < 1e-12);
        // "cat" vs "the cat sat": precision 1, brevity exp(1 - 3) .
        assert!((bleu1("cat", "the cat sat") - (-2f64).exp()).abs() < 1e-12);
        // Corpus: (1 + 1) matches over (3 + 1) candidate tokens, 2 + 3 reference tokens:
        // 0.5 * exp(1 - 5/4).
        let corpus = corpus_bleu1([("the the the", "the cat"), ("cat", "the cat sat")]);
        assert!(
            (corpus - 0.5 * (1.0f64 - 1.25).exp()).abs() < 1e-12,
            "{corpus}"
        );
    }

    #[test]
    fn perplexity_is_exp_of_the_mean_cross_entropy() {
        // Two tokens at probability 1/4 and 1/16: mean CE = (ln 4 + ln 16) / 2 = ln 8.
        let ce = 4f64.ln() + 16f64.ln();
        assert!((perplexity(ce, 2) - 8.0).abs() < 1e-12);
        assert!(perplexity(0.0, 0).is_nan());
    }
}
