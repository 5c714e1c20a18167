//! What a reader yields per record: an example row, or a reject with its reason.

/// Why a record was rejected. The code is what the `reason` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// Not valid JSON.
    MalformedJson,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (including null for a required string).
    WrongType,
    /// A key that appears twice in one JSON object.
    DuplicateKey,
    /// A record longer than the configured bound.
    RecordTooLarge,
    /// The file ends inside a record.
    Truncated,
    /// Data after the end of a JSON array.
    TrailingData,
    /// A BIO record with no words, or an empty word or tag.
    EmptyRecord,
    /// Words and tags lists of different lengths.
    WordTagMismatch,
    /// A tag that is not `O`, `B-TYPE` or `I-TYPE`.
    InvalidTag,
    /// A tag whose entity type is not in the configured list.
    UnknownEntityType,
    /// An `I-X` tag after `O` or after a tag of another type.
    InvalidBioSequence,
    /// A CoNLL line that is not `token<TAB>label`.
    MalformedLine,
    /// A CoNLL sentence longer than the configured bound (a missing blank line?).
    SentenceTooLong,
}

impl RejectReason {
    /// The stable code stored in the `reason` column.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::DuplicateKey => "duplicate_key",
            RejectReason::RecordTooLarge => "record_too_large",
            RejectReason::Truncated => "truncated",
            RejectReason::TrailingData => "trailing_data",
            RejectReason::EmptyRecord => "empty_record",
            RejectReason::WordTagMismatch => "word_tag_mismatch",
            RejectReason::InvalidTag => "invalid_tag",
            RejectReason::UnknownEntityType => "unknown_entity_type",
            RejectReason::InvalidBioSequence => "invalid_bio_sequence",
            RejectReason::MalformedLine => "malformed_line",
            RejectReason::SentenceTooLong => "sentence_too_long",
        }
    }
}

/// A rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// Line of the problem (or of the record's start).
    pub line: u64,
    /// Why.
    pub reason: RejectReason,
    /// Human-readable explanation.
    pub detail: String,
    /// The record's raw text (bounded when stored).
    pub raw: Vec<u8>,
}

/// One example row, before it becomes Arrow columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    /// Line where the record starts.
    pub line: u64,
    /// Task (`chemicals`, `diseases`, `influences`, `qa`, `ner`).
    pub task: Option<String>,
    /// Model input text.
    pub prompt: Option<String>,
    /// Target text.
    pub completion: Option<String>,
    /// Alpaca instruction.
    pub instruction: Option<String>,
    /// Alpaca input.
    pub input: Option<String>,
    /// BIO words.
    pub words: Option<Vec<String>>,
    /// BIO tags.
    pub tags: Option<Vec<String>>,
    /// Split group.
    pub group_key: String,
}

/// A reader's verdict on one record.
pub type Parsed = Result<Example, Reject>;

/// A reader's verdict with the number of BIO tags it repaired in the record.
pub type ReadItem = Result<(Example, u64), Reject>;
