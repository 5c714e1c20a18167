//! The fast path of [`TextEncoder`](super::TextEncoder): the two tokenizer families medtune's
//! models use, BERT's WordPiece and byte-level BPE, for ASCII text, giving the ids `tokenizers`
//! gives. It is built from the tokenizer's own serialised form, and only where every part
//! (normaliser, pre-tokeniser, model, added tokens) is one it reproduces exactly; otherwise
//! `new` says why and every text takes the `tokenizers` path.

mod byte_bpe;
mod wordpiece;

use std::cell::RefCell;
use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use thread_local::ThreadLocal;
use tokenizers::Tokenizer;

use self::byte_bpe::ByteLevelBpe;
use self::wordpiece::BertWordPiece;

/// Token ids by the bytes of their text.
type ByteMap = HashMap<Box<[u8]>, u32, foldhash::fast::FixedState>;

/// Pieces remembered per thread before the memo starts over.
const REMEMBERED_PIECES: usize = 1 << 16;

/// `key` of a config object as a boolean, or why not.
fn flag(config: &Value, key: &str) -> Result<bool, String> {
    config[key]
        .as_bool()
        .ok_or_else(|| format!("{} has no boolean `{key}`", config["type"]))
}

/// One thread's working buffers, and its memo of merged pieces.
#[derive(Debug, Default)]
struct Scratch {
    word: Vec<u8>,
    symbols: Vec<u32>,
    pairs: Vec<byte_bpe::Merge>,
    pieces: HashMap<Box<[u8]>, Box<[u32]>, foldhash::fast::FixedState>,
}

impl Scratch {
    fn remember(&mut self, piece: &[u8], ids: Box<[u32]>) {
        if self.pieces.len() >= REMEMBERED_PIECES {
            self.pieces.clear();
        }
        self.pieces.insert(piece.into(), ids);
    }
}

#[derive(Debug)]
enum Model {
    WordPiece(Box<BertWordPiece>),
    ByteLevelBpe(Box<ByteLevelBpe>),
}

/// Added tokens (`[CLS]`, `<|im_start|>`), found in the text before anything else sees it,
/// leftmost first and the longest where several start at one place, as `tokenizers` does.
#[derive(Debug)]
struct AddedTokens {
    /// Tokens matched in the text as written.
    raw: Option<(AhoCorasick, Vec<u32>)>,
    /// Tokens matched in the normalised text (allowed only where normalising changes nothing).
    normalized: Option<(AhoCorasick, Vec<u32>)>,
}

impl AddedTokens {
    fn from_config(added: &Value, normalizer_is_identity: bool) -> Result<Self, String> {
        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        for token in added.as_array().ok_or("no added_tokens list")? {
            let content = token["content"]
                .as_str()
                .ok_or("an added token has no content")?;
            let id = token["id"].as_u64().ok_or("an added token has no id")? as u32;
            for key in ["single_word", "lstrip", "rstrip"] {
                if flag(token, key).unwrap_or(true) {
                    return Err(format!("added token `{content}` has `{key}` set"));
                }
            }
            if content.is_empty() {
                continue;
            }
            if flag(token, "normalized").unwrap_or(true) {
                if !normalizer_is_identity {
                    return Err(format!(
                        "added token `{content}` is matched after a normaliser"
                    ));
                }
                normalized.push((content.to_string(), id));
            } else {
                raw.push((content.to_string(), id));
            }
        }
        let matcher = |tokens: Vec<(String, u32)>| -> Result<_, String> {
            if tokens.is_empty() {
                return Ok(None);
            }
            let searcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(tokens.iter().map(|(content, _)| content))
                .map_err(|e| e.to_string())?;
            Ok(Some((
                searcher,
                tokens.into_iter().map(|(_, id)| id).collect(),
            )))
        };
        Ok(AddedTokens {
            raw: matcher(raw)?,
            normalized: matcher(normalized)?,
        })
    }

    /// Calls `emit` with each stretch of text between added tokens and with each added
    /// token, in order.
    fn split<'t>(&self, whole: &'t str, emit: &mut dyn FnMut(Piece<'t>)) {
        split_with(&self.raw, whole, &mut |piece| match piece {
            Piece::Text(text) => split_with(&self.normalized, text, emit),
            added => emit(added),
        });
    }
}

/// A stretch of text, or an added token found in it.
enum Piece<'t> {
    Text(&'t str),
    Added(u32),
}

fn split_with<'t>(
    matcher: &Option<(AhoCorasick, Vec<u32>)>,
    whole: &'t str,
    emit: &mut dyn FnMut(Piece<'t>),
) {
    let Some((searcher, ids)) = matcher else {
        emit(Piece::Text(whole));
        return;
    };
    let mut from = 0;
    for found in searcher.find_iter(whole) {
        emit(Piece::Text(&whole[from..found.start()]));
        emit(Piece::Added(ids[found.pattern().as_usize()]));
        from = found.end();
    }
    emit(Piece::Text(&whole[from..]));
}

/// A tokenizer's fast path: see the module documentation.
#[derive(Debug)]
pub(super) struct FastTokenizer {
    model: Model,
    added: AddedTokens,
    scratch: ThreadLocal<RefCell<Scratch>>,
}

impl FastTokenizer {
    /// The fast path of `tokenizer`, or why it has none.
    pub(super) fn new(tokenizer: &Tokenizer) -> Result<Self, String> {
        let config = serde_json::to_value(tokenizer).map_err(|e| e.to_string())?;
        let model = &config["model"];
        let (normalizer, pre_tokenizer) = (&config["normalizer"], &config["pre_tokenizer"]);
        let model = match model["type"].as_str() {
            Some("WordPiece") if pre_tokenizer["type"] == "BertPreTokenizer" => {
                Model::WordPiece(Box::new(BertWordPiece::from_config(normalizer, model)?))
            }
            Some("BPE") if normalizer.is_null() => {
                Model::ByteLevelBpe(Box::new(ByteLevelBpe::from_config(pre_tokenizer, model)?))
            }
            _ => {
                return Err(format!(
                    "no fast path for a {} model behind normaliser {} and pre-tokeniser {}",
                    model["type"], normalizer["type"], pre_tokenizer["type"]
                ))
            }
        };
        Ok(FastTokenizer {
            model,
            added: AddedTokens::from_config(&config["added_tokens"], normalizer.is_null())?,
            scratch: ThreadLocal::new(),
        })
    }

    /// The family this fast path reproduces.
    pub(super) fn family(&self) -> &'static str {
        match self.model {
            Model::WordPiece(_) => "WordPiece (BERT)",
            Model::ByteLevelBpe(_) => "byte-level BPE",
        }
    }

    /// Whether pre-tokenized words may take the fast path too (each word encoded on its own
    /// is what `tokenizers` does with pre-tokenized input for WordPiece; a byte-level
    /// pre-tokeniser treats word starts differently, so words take the `tokenizers` path).
    pub(super) fn takes_words(&self) -> bool {
        matches!(self.model, Model::WordPiece(_))
    }

    /// Appends the ids of `text`, without special tokens, to `out`; false (and `out` as it
    /// was) where the text is not ASCII (or has a byte the model has no token for), which the
    /// `tokenizers` path is then left to.
    pub(super) fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> bool {
        let takes = match &self.model {
            Model::WordPiece(_) => text.is_ascii(),
            Model::ByteLevelBpe(model) => model.takes(text.as_bytes()),
        };
        if !takes {
            return false;
        }
        let mut scratch = self.scratch.get_or_default().borrow_mut();
        let scratch = &mut *scratch;
        self.added
            .split(text, &mut |piece| match (piece, &self.model) {
                (Piece::Added(id), _) => out.push(id),
                (Piece::Text(text), Model::WordPiece(model)) => {
                    model.encode_ascii(text.as_bytes(), &mut scratch.word, out)
                }
                (Piece::Text(text), Model::ByteLevelBpe(model)) => {
                    model.encode_ascii(text.as_bytes(), scratch, out)
                }
            });
        true
    }
}
