//! The tokenizer a config names, shared by the tokenize stage (which encodes with it) and the
//! evaluate stage (which decodes generations with it): the `[tokenize]` section, loading a
//! `tokenizer.json` or a GGUF file's tokenizer, the end-of-sequence id, and the chat template
//! prompts are wrapped in.

mod encoder;
mod fast;
pub mod template;

use std::path::Path;

use medtune_pipeline::{PipelineError, Result};
use medtune_qlora::gguf::{eos_id_of, is_gguf, GgufFile};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use self::encoder::{EncodedWords, TextEncoder};
use self::template::ChatTemplate;

/// What the model learns, named as `[train] task` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One label per word (BIO rows).
    TokenClassification,
    /// Completion given prompt (prompt/completion and alpaca rows), the prompt masked from the
    /// loss: supervised fine-tuning of a causal LM. Configs write it `sft` (what the cache key
    /// records) or `causal_lm`, the word `[train] task` uses.
    #[serde(rename = "sft", alias = "causal_lm")]
    CausalLm,
}

/// What happens to inputs longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Keep the first `max_length` tokens (counted).
    Truncate,
    /// Sliding windows of `max_length` tokens overlapping by `stride` (token classification).
    Window,
}

/// Which end of an over-long sequence truncation cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// Keep the start: the end of an SFT completion (or of a sentence) is cut.
    #[default]
    Right,
    /// Keep the end: an SFT prompt loses its start (after the BOS) so that the completion,
    /// which carries the labels, survives; a sentence loses its first tokens.
    Left,
}

fn default_max_length() -> usize {
    512
}

fn default_stride() -> usize {
    64
}

fn truncate() -> Overflow {
    Overflow::Truncate
}

/// The `[tokenize]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// A Hugging Face `tokenizer.json`, relative to the config's folder.
    pub tokenizer: String,
    /// Token classification or SFT.
    pub mode: Mode,
    /// Longest sequence, special tokens included.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Truncate or window.
    #[serde(default = "truncate")]
    pub overflow: Overflow,
    /// Which end `overflow = "truncate"` cuts.
    #[serde(default)]
    pub truncation_side: TruncationSide,
    /// Tokens shared by consecutive windows.
    #[serde(default = "default_stride")]
    pub stride: usize,
    /// Label every sub-token (the I- form after the first) instead of -100.
    #[serde(default)]
    pub label_all_tokens: bool,
    /// A fixed label map, in id order (say, the one a trained head was built with); a tag
    /// outside it is an error naming the row. Default: built from the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Chat template of SFT prompts.
    #[serde(default)]
    pub template: ChatTemplate,
    /// The end-of-sequence token appended to SFT completions (default: the tokenizer's
    /// `</s>`, `<|eot_id|>`, `<|endoftext|>` or `[SEP]`, whichever it has).
    #[serde(default)]
    pub eos_token: Option<String>,
}

impl TokenizeConfig {
    /// The config section it is read from, which is also the tokenize stage's name.
    pub const SECTION: &'static str = "tokenize";
}

/// Loads a `tokenizer.json`, or the tokenizer in a GGUF file's metadata, with its own
/// truncation and padding off (stages decide about length themselves; the file's settings
/// would cut or pad silently).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(PipelineError::bad_input(
            path,
            "tokenizer file not found (run scripts/fetch-model.sh for the bundled configs)",
        ));
    }
    let mut tokenizer = if is_gguf(path) {
        GgufFile::open(path)
            .and_then(|file| file.tokenizer())
            .map_err(|e| PipelineError::bad_input(path, e.to_string()))?
    } else {
        Tokenizer::from_file(path).map_err(|e| {
            PipelineError::bad_input(path, format!("not a Hugging Face tokenizer.json: {e}"))
        })?
    };
    tokenizer
        .with_truncation(None)
        .map_err(|e| PipelineError::bad_input(path, e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// The end-of-sequence id SFT completions end with: `configured`, or a GGUF file's own
/// (`tokenizer.ggml.eos_token_id`), or the first of `</s>`, `<|eot_id|>`, `<|endoftext|>`,
/// `[SEP]` the tokenizer (loaded from `path`) has.
pub fn eos_id(tokenizer: &Tokenizer, path: &Path, configured: Option<&str>) -> Result<u32> {
    if configured.is_none() && is_gguf(path) {
        if let Some(id) = eos_id_of(path) {
            return Ok(id);
        }
    }
    let candidates: Vec<&str> = match configured {
        Some(t) => vec![t],
        None => vec!["</s>", "<|eot_id|>", "<|endoftext|>", "[SEP]"],
    };
    candidates
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| {
            PipelineError::bad_input(
                path,
                format!("the tokenizer has none of the end-of-sequence tokens {candidates:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_lm_is_the_sft_mode_and_keeps_the_key_it_always_had() {
        let parse = |text: &str| serde_json::from_str::<Mode>(text).unwrap();
        assert_eq!(parse("\"sft\""), Mode::CausalLm);
        assert_eq!(parse("\"causal_lm\""), Mode::CausalLm);
        // The cache key serialises the mode: it must stay `sft`.
        assert_eq!(serde_json::to_string(&Mode::CausalLm).unwrap(), "\"sft\"");
        assert!(serde_json::from_str::<Mode>("\"generation\"").is_err());
    }
}
