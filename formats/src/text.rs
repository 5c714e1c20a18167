//! Text helpers shared by stages: whitespace folding, lower-casing, short content hashes.

use crate::normalize::Normalization;

/// Lower-cases and folds every run of whitespace into one space, trimming both ends (the
/// dedup normalisation without NFKC).
pub fn fold_lower(text: &str) -> String {
    Normalization {
        nfkc: false,
        lowercase: true,
        fold_whitespace: true,
    }
    .apply(text)
}

/// First 16 bytes of the BLAKE3 hash of `text`, as 32 hex digits.
pub fn short_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
}

/// Shortens `raw` to at most `max` bytes of text (on a character boundary), saying how much
/// was cut. Invalid UTF-8 is shown with replacement characters.
pub fn bounded_raw(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [{} more bytes]", &text[..cut], text.len() - cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_lowers_and_collapses_whitespace() {
        assert_eq!(fold_lower("  Hello\t\nWORLD  x "), "hello world x");
    }

    #[test]
    fn bounded_raw_cuts_on_a_char_boundary_and_says_so() {
        assert_eq!(bounded_raw(b"abc", 5), "abc");
        let s = bounded_raw("aé€b".as_bytes(), 2);
        assert_eq!(s, "a… [6 more bytes]");
    }
}
