//! The `[ingest]` section: the input format and files, and the bounds on records.

use medtune_formats::bio::BioConfig;
use medtune_formats::conll::DocumentBoundary;
use serde::{Deserialize, Serialize};

/// Input formats the ingest stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// `{"prompt", "completion"}` records (ChemProt style), JSON lines or array.
    PromptCompletion,
    /// `{"instruction", "input", "output"}` records, JSON array or lines.
    Alpaca,
    /// `{"text", "labels": [{"word", "entity"}]}` records, JSON array or lines.
    BioJson,
    /// `token<TAB>label` lines, a blank line after each sentence.
    Conll,
}

impl InputFormat {
    /// The `source_kind` column value.
    pub fn kind(self) -> &'static str {
        match self {
            InputFormat::PromptCompletion => "prompt_completion",
            InputFormat::Alpaca => "alpaca",
            InputFormat::BioJson => "bio_json",
            InputFormat::Conll => "conll",
        }
    }
}

fn default_max_raw_bytes() -> usize {
    4096
}
fn default_max_record_bytes() -> usize {
    16 << 20
}
fn default_max_sentence_words() -> usize {
    4096
}

/// The `[ingest]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Format of every input file.
    pub format: InputFormat,
    /// Input files, relative to the config's folder.
    pub inputs: Vec<String>,
    /// BIO tag checks.
    #[serde(default)]
    pub bio: BioConfig,
    /// Raw text kept per reject, in bytes (longer text is cut and marked).
    #[serde(default = "default_max_raw_bytes")]
    pub max_raw_bytes: usize,
    /// Longest JSON record accepted, in bytes.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Longest CoNLL sentence accepted, in words.
    #[serde(default = "default_max_sentence_words")]
    pub max_sentence_words: usize,
    /// What marks a document in CoNLL files: `docstart` (the default), `blank_lines` or
    /// `comment`. A document's sentences share a group key, so split keeps them together.
    #[serde(default, skip_serializing_if = "DocumentBoundary::is_docstart")]
    pub documents: DocumentBoundary,
}
