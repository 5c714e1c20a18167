//! BERT's text path for ASCII text: `BertNormalizer` (clean text, lowercase), `BertPreTokenizer`
//! (split at whitespace, every punctuation mark a word of its own) and greedy longest-match
//! WordPiece, with a byte-class table in place of Unicode lookups and without the offsets and
//! alignments `tokenizers` tracks for every character.
//!
//! On ASCII the normaliser's other steps do nothing: NFD leaves ASCII as it is, no ASCII
//! character is a nonspacing mark, and none is a CJK ideograph.

use serde_json::Value;

use super::{flag, ByteMap};

/// What the normaliser and pre-tokeniser make of one ASCII byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Removed by clean-text (a control character other than tab, newline, carriage return).
    Dropped,
    /// Ends a word and is removed.
    Space,
    /// A word of its own.
    Punctuation,
    /// Part of a word (after lowercasing, where the normaliser lowercases).
    Word(u8),
}

/// A WordPiece model behind BERT's normaliser and pre-tokeniser.
#[derive(Debug)]
pub(super) struct BertWordPiece {
    classes: [Class; 128],
    /// Every vocabulary entry: what a word's first piece is looked up in.
    first: ByteMap,
    /// Entries that start with the continuing-subword prefix, keyed without it: what every
    /// later piece is looked up in (`##ing` is found as `ing`).
    continuation: ByteMap,
    /// The longest key of each map: a longer piece cannot match.
    longest_first: usize,
    longest_continuation: usize,
    unknown: u32,
    max_word_chars: usize,
}

impl BertWordPiece {
    /// The model of a serialised tokenizer whose normaliser is `BertNormalizer` and whose
    /// pre-tokeniser is `BertPreTokenizer`; why not where it cannot stand in for it.
    pub(super) fn from_config(normalizer: &Value, model: &Value) -> Result<Self, String> {
        if normalizer["type"] != "BertNormalizer" {
            return Err(format!(
                "WordPiece behind normaliser {} (only BertNormalizer has a fast path)",
                normalizer["type"]
            ));
        }
        let clean_text = flag(normalizer, "clean_text")?;
        let lowercase = flag(normalizer, "lowercase")?;
        let prefix = model["continuing_subword_prefix"]
            .as_str()
            .ok_or("WordPiece has no continuing_subword_prefix")?;
        let unknown_token = model["unk_token"]
            .as_str()
            .ok_or("WordPiece has no unk_token")?;
        let max_word_chars = model["max_input_chars_per_word"]
            .as_u64()
            .ok_or("WordPiece has no max_input_chars_per_word")?
            as usize;
        let vocab = model["vocab"]
            .as_object()
            .ok_or("WordPiece has no vocab map")?;
        let mut first = ByteMap::default();
        let mut continuation = ByteMap::default();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or("a WordPiece id is not a number")? as u32;
            first.insert(token.as_bytes().into(), id);
            if let Some(rest) = token.strip_prefix(prefix) {
                continuation.insert(rest.as_bytes().into(), id);
            }
        }
        let unknown = *first
            .get(unknown_token.as_bytes())
            .ok_or_else(|| format!("unk_token `{unknown_token}` is not in the vocabulary"))?;
        let classes = std::array::from_fn(|b| {
            let c = b as u8;
            let control = c.is_ascii_control() && !matches!(c, b'\t' | b'\n' | b'\r');
            if clean_text && (c == 0 || control) {
                Class::Dropped
            } else if char::from(c).is_whitespace() {
                Class::Space
            } else if c.is_ascii_punctuation() {
                Class::Punctuation
            } else if lowercase {
                Class::Word(c.to_ascii_lowercase())
            } else {
                Class::Word(c)
            }
        });
        Ok(BertWordPiece {
            classes,
            longest_first: first.keys().map(|k| k.len()).max().unwrap_or(0),
            longest_continuation: continuation.keys().map(|k| k.len()).max().unwrap_or(0),
            first,
            continuation,
            unknown,
            max_word_chars,
        })
    }

    /// Appends the ids of ASCII `text` to `out`; `word` is scratch space.
    pub(super) fn encode_ascii(&self, text: &[u8], word: &mut Vec<u8>, out: &mut Vec<u32>) {
        word.clear();
        for &b in text {
            match self.classes[usize::from(b)] {
                Class::Dropped => {}
                Class::Word(c) => word.push(c),
                Class::Space => {
                    self.push_word(word, out);
                    word.clear();
                }
                Class::Punctuation => {
                    self.push_word(word, out);
                    word.clear();
                    self.push_word(&[b], out);
                }
            }
        }
        self.push_word(word, out);
    }

    /// WordPiece of one word: greedy longest match from the left; a word with a part no piece
    /// matches, or longer than the model allows, is one unknown token.
    fn push_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.len() > self.max_word_chars {
            out.push(self.unknown);
            return;
        }
        let kept = out.len();
        let mut start = 0;
        while start < word.len() {
            let (map, longest) = if start == 0 {
                (&self.first, self.longest_first)
            } else {
                (&self.continuation, self.longest_continuation)
            };
            let mut end = word.len().min(start + longest);
            let found = loop {
                if end == start {
                    break None;
                }
                if let Some(&id) = map.get(&word[start..end]) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(kept);
                    out.push(self.unknown);
                    return;
                }
            }
        }
    }
}
