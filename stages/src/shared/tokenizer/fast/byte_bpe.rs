//! Byte-level BPE (GPT-2, Llama 3, SmolLM2) for ASCII text: GPT-2's pre-tokenising pattern as a
//! byte-class scanner instead of a regular expression, and merges by rank over token ids, with
//! a memo of the pieces already merged.

use std::collections::HashMap;

use serde_json::Value;

use super::{flag, ByteMap, Scratch};

/// GPT-2's pre-tokenising pattern,
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// sees each ASCII byte as one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// What merging a pair of adjacent tokens gives, and how early it is merged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Merge {
    rank: u32,
    into: u32,
}

/// A byte-level BPE model behind a `ByteLevel` pre-tokeniser that splits with GPT-2's pattern
/// and adds no leading space.
#[derive(Debug)]
pub(super) struct ByteLevelBpe {
    classes: [Class; 128],
    /// The token of each single ASCII byte (other text takes the `tokenizers` path, as does
    /// text with a byte the vocabulary has no token for: SmolLM2 has none for some control
    /// bytes).
    byte_token: [Option<u32>; 128],
    /// Merges by the pair of token ids they join.
    merges: HashMap<(u32, u32), Merge, foldhash::fast::FixedState>,
    /// Vocabulary entries by their bytes, where `ignore_merges` makes a whole piece in the
    /// vocabulary one token.
    whole: Option<ByteMap>,
}

/// The byte each character of GPT-2's byte-to-character map stands for: printable Latin-1
/// characters stand for themselves, the other 68 bytes for U+0100 onwards in byte order.
fn byte_of_char() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("below U+0200")
            };
            (c, b)
        })
        .collect()
}

impl ByteLevelBpe {
    /// The model of a serialised tokenizer with no normaliser and a byte-level pre-tokeniser;
    /// why not where it cannot stand in for it.
    pub(super) fn from_config(pre_tokenizer: &Value, model: &Value) -> Result<Self, String> {
        if pre_tokenizer["type"] != "ByteLevel" {
            return Err(format!(
                "BPE behind pre-tokeniser {} (only ByteLevel has a fast path)",
                pre_tokenizer["type"]
            ));
        }
        if flag(pre_tokenizer, "add_prefix_space")? || !flag(pre_tokenizer, "use_regex")? {
            return Err(
                "a ByteLevel pre-tokeniser that adds a space or splits without GPT-2's \
                        pattern has no fast path"
                    .into(),
            );
        }
        let unset = |key: &str| match &model[key] {
            Value::Null | Value::Bool(false) => true,
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        for key in [
            "dropout",
            "continuing_subword_prefix",
            "end_of_word_suffix",
            "byte_fallback",
        ] {
            if !unset(key) {
                return Err(format!("BPE with `{key}` set has no fast path"));
            }
        }
        let chars = byte_of_char();
        let as_bytes = |token: &str| -> Option<Vec<u8>> {
            token.chars().map(|c| chars.get(&c).copied()).collect()
        };
        let vocab = model["vocab"].as_object().ok_or("BPE has no vocab map")?;
        let mut by_bytes = ByteMap::default();
        let mut by_text = HashMap::with_capacity(vocab.len());
        for (token, id) in vocab {
            let id = id.as_u64().ok_or("a BPE id is not a number")? as u32;
            by_text.insert(token.as_str(), id);
            // Entries outside the byte alphabet (none in a byte-level vocabulary but added
            // tokens) are never the result of merging bytes.
            if let Some(bytes) = as_bytes(token) {
                by_bytes.insert(bytes.into(), id);
            }
        }
        let byte_token = std::array::from_fn(|b| by_bytes.get(&[b as u8][..]).copied());
        let list = model["merges"].as_array().ok_or("BPE has no merges list")?;
        let mut merges = HashMap::with_capacity_and_hasher(list.len(), Default::default());
        for (rank, merge) in list.iter().enumerate() {
            let (left, right) = match merge {
                Value::String(s) => s.split_once(' ').ok_or("a merge is not `LEFT RIGHT`")?,
                Value::Array(pair) => match (pair.first(), pair.get(1)) {
                    (Some(Value::String(l)), Some(Value::String(r))) => (l.as_str(), r.as_str()),
                    _ => return Err("a merge is not a pair of strings".into()),
                },
                _ => return Err("a merge is neither `LEFT RIGHT` nor a pair".into()),
            };
            let id = |token: &str| {
                by_text
                    .get(token)
                    .copied()
                    .ok_or_else(|| format!("merge part `{token}` is not in the vocabulary"))
            };
            let into = id(&format!("{left}{right}"))?;
            // A pair listed twice merges at its later rank, as `tokenizers` builds its map.
            merges.insert(
                (id(left)?, id(right)?),
                Merge {
                    rank: rank as u32,
                    into,
                },
            );
        }
        let classes = std::array::from_fn(|b| {
            let c = char::from(b as u8);
            if c.is_ascii_alphabetic() {
                Class::Letter
            } else if c.is_ascii_digit() {
                Class::Number
            } else if c.is_whitespace() {
                Class::Space
            } else {
                Class::Other
            }
        });
        Ok(ByteLevelBpe {
            classes,
            byte_token,
            merges,
            whole: flag(model, "ignore_merges")
                .unwrap_or(false)
                .then_some(by_bytes),
        })
    }

    /// Whether `text` is ASCII with a token for every byte.
    pub(super) fn takes(&self, text: &[u8]) -> bool {
        text.iter().all(|&b| {
            self.byte_token
                .get(usize::from(b))
                .is_some_and(Option::is_some)
        })
    }

    /// Appends the ids of `text`, which it [`takes`](Self::takes), to `out`.
    pub(super) fn encode_ascii(&self, text: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let mut start = 0;
        while start < text.len() {
            let end = self.piece_end(text, start);
            self.push_piece(&text[start..end], scratch, out);
            start = end;
        }
    }

    /// Where the piece GPT-2's pattern matches at `start` ends.
    fn piece_end(&self, text: &[u8], start: usize) -> usize {
        let class = |i: usize| self.classes[usize::from(text[i])];
        let run = |from: usize, of: Class| {
            (from..text.len())
                .find(|&i| class(i) != of)
                .unwrap_or(text.len())
        };
        // 's 't 're 've 'm 'll 'd
        if text[start] == b'\'' {
            match text.get(start + 1..start + 3) {
                Some([b'r' | b'v', b'e']) | Some([b'l', b'l']) => return start + 3,
                _ => {}
            }
            if let Some(b's' | b't' | b'm' | b'd') = text.get(start + 1) {
                return start + 2;
            }
        }
        // An optional space, then a run of letters, of digits, or of anything else but space.
        let body = start + usize::from(text[start] == b' ');
        if body < text.len() {
            match class(body) {
                Class::Space => {}
                of => return run(body, of),
            }
        }
        // Whitespace: all of it at the end of the text; else all but the last character,
        // which goes with the word after it; a single one alone.
        let end = run(start, Class::Space);
        if end == text.len() || end - start == 1 {
            end
        } else {
            end - 1
        }
    }

    /// BPE of one piece: the tokens of its bytes, then, while any adjacent pair merges, the
    /// pair of lowest rank (the leftmost among equals) merged into one.
    fn push_piece(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if let Some(ids) = scratch.pieces.get(piece) {
            out.extend_from_slice(ids);
            return;
        }
        if let Some(&id) = self.whole.as_ref().and_then(|whole| whole.get(piece)) {
            out.push(id);
            return;
        }
        let symbols = &mut scratch.symbols;
        let pairs = &mut scratch.pairs;
        symbols.clear();
        symbols.extend(
            piece
                .iter()
                .map(|&b| self.byte_token[usize::from(b)].expect("checked by `takes`")),
        );
        let merge = |left: u32, right: u32| {
            self.merges.get(&(left, right)).copied().unwrap_or(Merge {
                rank: u32::MAX,
                into: 0,
            })
        };
        pairs.clear();
        pairs.extend(symbols.windows(2).map(|w| merge(w[0], w[1])));
        while let Some((at, best)) = lowest(pairs) {
            symbols[at] = best.into;
            symbols.remove(at + 1);
            pairs.remove(at);
            if at + 1 < symbols.len() {
                pairs[at] = merge(symbols[at], symbols[at + 1]);
            }
            if at > 0 {
                pairs[at - 1] = merge(symbols[at - 1], symbols[at]);
            }
        }
        out.extend_from_slice(symbols);
        let ids = symbols.as_slice().into();
        scratch.remember(piece, ids);
    }
}

/// The position and merge of the adjacent pair to merge next: the lowest rank, the leftmost
/// among equals; none where no pair merges.
fn lowest(pairs: &[Merge]) -> Option<(usize, Merge)> {
    let mut best: Option<(usize, Merge)> = None;
    for (at, pair) in pairs.iter().enumerate() {
        if pair.rank != u32::MAX && best.is_none_or(|(_, b)| pair.rank < b.rank) {
            best = Some((at, *pair));
        }
    }
    best
}
