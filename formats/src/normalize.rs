//! Text normalisation for duplicate detection and leakage checks, and the 128-bit key hash.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

fn yes() -> bool {
    true
}

/// How text is normalised before it is hashed or compared (the `normalize` config table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Unicode NFKC: compatibility forms (ligatures, full-width letters, non-breaking spaces)
    /// become their plain equivalents.
    #[serde(default = "yes")]
    pub nfkc: bool,
    /// Lower-case (full Unicode case mapping).
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// Every run of whitespace becomes one space; both ends are trimmed.
    #[serde(default = "yes")]
    pub fold_whitespace: bool,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            nfkc: true,
            lowercase: true,
            fold_whitespace: true,
        }
    }
}

impl Normalization {
    /// Normalises `text`, appending the result to `out`.
    pub fn apply_into(&self, text: &str, out: &mut String) {
        let nfkc: Box<dyn Iterator<Item = char>> = if self.nfkc {
            Box::new(text.nfkc())
        } else {
            Box::new(text.chars())
        };
        let mut pending_space = false;
        let start = out.len();
        for c in nfkc {
            if self.fold_whitespace && c.is_whitespace() {
                pending_space = out.len() > start;
                continue;
            }
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        }
    }

    /// Normalises `text`.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        self.apply_into(text, &mut out);
        out
    }
}

/// 128-bit XXH3 hash of already-normalised text: the identity of a row's text.
pub fn key_hash(normalized: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(normalized.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_normalisation_folds_case_width_and_whitespace() {
        let n = Normalization::default();
        assert_eq!(
            n.apply("  Aspirin\u{00A0}\tINDUCED\n  ﬁbrosis "),
            "aspirin induced fibrosis"
        );
        assert_eq!(n.apply("ＡＢＣ"), "abc");
        assert_eq!(n.apply("Straße"), "straße");
        assert_eq!(n.apply(""), "");
        assert_eq!(n.apply(" \n "), "");
    }

    #[test]
    fn each_step_can_be_turned_off() {
        let raw = "ﬁ  X";
        let off = |nfkc, lowercase, fold_whitespace| {
            Normalization {
                nfkc,
                lowercase,
                fold_whitespace,
            }
            .apply(raw)
        };
        assert_eq!(off(false, true, true), "ﬁ x");
        assert_eq!(off(true, false, true), "fi X");
        assert_eq!(off(true, true, false), "fi  x");
    }

    #[test]
    fn equal_normal_forms_hash_equal_and_different_ones_do_not() {
        let n = Normalization::default();
        assert_eq!(key_hash(&n.apply("A  b")), key_hash(&n.apply("a b")));
        assert_ne!(key_hash(&n.apply("a b")), key_hash(&n.apply("a-b")));
    }
}
