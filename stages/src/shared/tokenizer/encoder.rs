//! [`TextEncoder`]: text to token ids, on a fast path where one gives exactly the ids
//! `tokenizers` gives, and through `tokenizers` everywhere else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokenizers::{EncodeInput, Encoding, InputSequence, Tokenizer};

use super::fast::FastTokenizer;

/// Pre-tokenized words encoded with the model's special tokens around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedWords {
    /// Special tokens before the words (`[CLS]`).
    pub prefix: Vec<u32>,
    /// The words' tokens.
    pub ids: Vec<u32>,
    /// The word each of `ids` belongs to.
    pub word_of: Vec<Option<u32>>,
    /// Special tokens after the words (`[SEP]`).
    pub suffix: Vec<u32>,
}

impl EncodedWords {
    /// Splits an `Encoding` of words with special tokens at its first and last content token.
    fn from_encoding(encoding: &Encoding) -> Self {
        let (ids, special) = (encoding.get_ids(), encoding.get_special_tokens_mask());
        let first = special.iter().position(|&s| s == 0).unwrap_or(ids.len());
        let last = special
            .iter()
            .rposition(|&s| s == 0)
            .map_or(first, |p| p + 1);
        EncodedWords {
            prefix: ids[..first].to_vec(),
            ids: ids[first..last].to_vec(),
            word_of: encoding.get_word_ids()[first..last].to_vec(),
            suffix: ids[last..].to_vec(),
        }
    }
}

/// Encodes text for the tokenize stage. Where the tokenizer is BERT's WordPiece or byte-level
/// BPE (and every setting is one the fast path reproduces), ASCII text is encoded without
/// `tokenizers`' per-character bookkeeping; everything else goes through `tokenizers`. Both
/// give the same ids: the tests compare them on every bundled corpus.
#[derive(Debug)]
pub struct TextEncoder {
    shared: Arc<Encoders>,
    through_tokenizers: AtomicU64,
}

/// The tokenizer and its fast path, shared by an encoder and its [`TextEncoder::tally`]s.
#[derive(Debug)]
struct Encoders {
    tokenizer: Tokenizer,
    fast: Result<FastTokenizer, String>,
    /// The special tokens `tokenizers` puts around pre-tokenized words, where words may take
    /// the fast path.
    word_affixes: Option<(Vec<u32>, Vec<u32>)>,
}

impl TextEncoder {
    /// The encoder of `tokenizer`, with its fast path where it has one.
    pub fn new(tokenizer: Tokenizer) -> Self {
        let fast = FastTokenizer::new(&tokenizer);
        let word_affixes = fast
            .as_ref()
            .ok()
            .filter(|fast| fast.takes_words())
            .and_then(|_| affixes(&tokenizer));
        TextEncoder {
            shared: Arc::new(Encoders {
                tokenizer,
                fast,
                word_affixes,
            }),
            through_tokenizers: AtomicU64::new(0),
        }
    }

    /// An encoder sharing this one's tokenizer, counting [`Self::through_tokenizers`] from 0
    /// (one row's count, say, while other rows are encoded on other threads).
    pub fn tally(&self) -> TextEncoder {
        TextEncoder {
            shared: self.shared.clone(),
            through_tokenizers: AtomicU64::new(0),
        }
    }

    /// An encoder that always goes through `tokenizers`: what the fast path is measured and
    /// checked against.
    pub fn without_fast_path(tokenizer: Tokenizer) -> Self {
        TextEncoder {
            shared: Arc::new(Encoders {
                tokenizer,
                fast: Err("turned off".into()),
                word_affixes: None,
            }),
            through_tokenizers: AtomicU64::new(0),
        }
    }

    /// The tokenizer encoded with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// The tokenizer family the fast path reproduces, or why there is none.
    pub fn fast_path(&self) -> Result<&'static str, &str> {
        match &self.shared.fast {
            Ok(fast) => Ok(fast.family()),
            Err(why) => Err(why),
        }
    }

    /// Texts and sentences encoded through `tokenizers` so far (all of them without a fast
    /// path; with one, those that are not ASCII).
    pub fn through_tokenizers(&self) -> u64 {
        self.through_tokenizers.load(Ordering::Relaxed)
    }

    /// The ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        if let Ok(fast) = &self.shared.fast {
            let mut ids = Vec::with_capacity(text.len() / 3);
            if fast.encode_into(text, &mut ids) {
                return Ok(ids);
            }
        }
        self.through_tokenizers.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .shared
            .tokenizer
            .encode(text, false)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec())
    }

    /// Pre-tokenized `words`, each encoded on its own, with the special tokens the
    /// tokenizer's post-processor puts around a sequence.
    pub fn encode_words(&self, words: &[&str]) -> Result<EncodedWords, String> {
        if let (Ok(fast), Some((prefix, suffix))) = (&self.shared.fast, &self.shared.word_affixes) {
            let mut ids = Vec::with_capacity(words.len() * 2);
            let mut word_of = Vec::with_capacity(words.len() * 2);
            let all_ascii = words.iter().enumerate().all(|(w, word)| {
                let ok = fast.encode_into(word, &mut ids);
                word_of.resize(ids.len(), Some(w as u32));
                ok
            });
            if all_ascii {
                return Ok(EncodedWords {
                    prefix: prefix.clone(),
                    ids,
                    word_of,
                    suffix: suffix.clone(),
                });
            }
        }
        self.through_tokenizers.fetch_add(1, Ordering::Relaxed);
        let input = EncodeInput::Single(InputSequence::from(words.to_vec()));
        let encoding = self
            .shared
            .tokenizer
            .encode(input, true)
            .map_err(|e| e.to_string())?;
        Ok(EncodedWords::from_encoding(&encoding))
    }
}

/// The special tokens `tokenizer` puts before and after one pre-tokenized word, read off an
/// encoding of a probe word; none where the probe's tokens are not one run between them.
fn affixes(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let probe = EncodeInput::Single(InputSequence::from(vec!["a"]));
    let encoding = tokenizer.encode(probe, true).ok()?;
    let special = encoding.get_special_tokens_mask();
    let content = special.iter().filter(|&&s| s == 0).count();
    let words = EncodedWords::from_encoding(&encoding);
    (content > 0 && words.ids.len() == content).then_some((words.prefix, words.suffix))
}
