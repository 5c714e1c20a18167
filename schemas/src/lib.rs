//! Arrow schemas and names of the medtune datasets.
//!
//! Every dataset has exactly one schema and one name, defined here and nowhere else, so that
//! stages, the SQL catalog and downstream tools agree on names, columns and types. Column names
//! that users and scripts rely on (see `docs/ARCHITECTURE.md`) are exported as constants.
//! - [`dataset`]: the dataset names (the SQL table names);
//! - the example-row schemas below: [`examples`], [`rejects`], [`split_examples`],
//!   [`near_duplicates`], [`profile`];
//! - [`training`]: the tokenized sequences, the label map and the training log;
//! - [`evaluation`]: the metric rows and per-row predictions.

#![warn(missing_docs)]

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub mod dataset;
pub mod evaluation;
pub mod training;

pub use evaluation::{generation_predictions, metrics, tag_predictions};
pub use training::{label_map, tokenized, train_log, IGNORED_LABEL};

/// Column names of the `examples` schema (the `ingested` dataset and its descendants).
pub mod col {
    /// Stable row id: `<file name>:<line>`.
    pub const ID: &str = "id";
    /// The input file as named in the config.
    pub const SOURCE_FILE: &str = "source_file";
    /// 1-based line where the record starts in its source file.
    pub const LINE: &str = "line";
    /// Which reader produced the row (`prompt_completion`, `alpaca`, `bio_json`, `conll`).
    pub const SOURCE_KIND: &str = "source_kind";
    /// Task of the row (ChemProt: `chemicals`, `diseases`, `influences`; alpaca: `qa`; BIO: `ner`).
    pub const TASK: &str = "task";
    /// Model input text.
    pub const PROMPT: &str = "prompt";
    /// Target text (alpaca `output` lands here).
    pub const COMPLETION: &str = "completion";
    /// Alpaca `instruction`.
    pub const INSTRUCTION: &str = "instruction";
    /// Alpaca `input`.
    pub const INPUT: &str = "input";
    /// Words of a BIO-tagged sentence.
    pub const WORDS: &str = "words";
    /// BIO tags, one per word.
    pub const TAGS: &str = "tags";
    /// Rows sharing a group key must land in the same split.
    pub const GROUP_KEY: &str = "group_key";
    /// Stage that rejected a row (rejects schema).
    pub const STAGE: &str = "stage";
    /// Short machine-readable reject reason (rejects schema).
    pub const REASON: &str = "reason";
    /// Human-readable explanation of the reject (rejects schema).
    pub const DETAIL: &str = "detail";
    /// Raw text of the rejected record, truncated to a stated bound (rejects schema).
    pub const RAW: &str = "raw";
    /// The kept row a dropped duplicate repeats (rejects schema).
    pub const DUPLICATE_OF: &str = "duplicate_of";
    /// The group a row was split with: the id of the group's first row (split schema).
    pub const SPLIT_GROUP: &str = "split_group";
    /// Which split a row belongs to: `train`, `validation` or `test`.
    pub const SPLIT: &str = "split";
    /// Near-duplicate cluster: the id of the cluster's first row (near_duplicates schema).
    pub const CLUSTER: &str = "cluster";
    /// The row a near-duplicate matched when it joined its cluster (near_duplicates schema).
    pub const MATCHED_ID: &str = "matched_id";
    /// Estimated Jaccard similarity of a near-duplicate to its matched row (near_duplicates schema).
    pub const SIMILARITY: &str = "similarity";
    /// Window number of a sequence cut from one row (tokenized schema; 0 without windows).
    pub const WINDOW: &str = "window";
    /// Token ids of a sequence (tokenized schema).
    pub const INPUT_IDS: &str = "input_ids";
    /// Label per token, -100 where the loss ignores it (tokenized schema).
    pub const LABELS: &str = "labels";
    /// Tokens in a sequence (tokenized schema; the shard loader plans batches from it).
    pub const LENGTH: &str = "length";
    /// Tokens of a sequence that belong to the prompt (tokenized schema; 0 for tagging).
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    /// Which model variant a figure or prediction belongs to: `base` or `adapter`.
    pub const MODEL: &str = "model";
    /// What two rows in different splits share: `text`, `near_duplicate_cluster` or `group`
    /// (split_leaks schema).
    pub const LEAK: &str = "leak";
    /// The row of an earlier split a leaking row shares a key with (split_leaks schema).
    pub const EARLIER_ID: &str = "earlier_id";
    /// That row's split (split_leaks schema).
    pub const EARLIER_SPLIT: &str = "earlier_split";
    /// Whether the leaking row was dropped from its split (split_leaks schema).
    pub const DROPPED: &str = "dropped";
}

pub(crate) fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// Schema of example rows: the output of ingest and of every row-preserving stage after it.
pub fn examples() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::SOURCE_FILE, DataType::Utf8, false),
        Field::new(col::LINE, DataType::UInt64, false),
        Field::new(col::SOURCE_KIND, DataType::Utf8, false),
        Field::new(col::TASK, DataType::Utf8, true),
        Field::new(col::PROMPT, DataType::Utf8, true),
        Field::new(col::COMPLETION, DataType::Utf8, true),
        Field::new(col::INSTRUCTION, DataType::Utf8, true),
        Field::new(col::INPUT, DataType::Utf8, true),
        Field::new(col::WORDS, utf8_list(), true),
        Field::new(col::TAGS, utf8_list(), true),
        Field::new(col::GROUP_KEY, DataType::Utf8, false),
    ]))
}

/// Schema of rejected rows: which stage dropped the row, where it came from, why, and its
/// raw text. Every stage's rejects share it, so the `rejects` SQL table is their union.
pub fn rejects() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::STAGE, DataType::Utf8, false),
        Field::new(col::SOURCE_FILE, DataType::Utf8, false),
        Field::new(col::LINE, DataType::UInt64, false),
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::REASON, DataType::Utf8, false),
        Field::new(col::DETAIL, DataType::Utf8, false),
        Field::new(col::RAW, DataType::Utf8, false),
        Field::new(col::DUPLICATE_OF, DataType::Utf8, true),
    ]))
}

/// Schema of split rows: the example columns plus `split_group` and `split`.
pub fn split_examples() -> SchemaRef {
    let mut fields: Vec<Field> = examples()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(col::SPLIT_GROUP, DataType::Utf8, false));
    fields.push(Field::new(col::SPLIT, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Schema of the data profile: one figure per row, `section` / `key` / `metric` = `value`
/// (e.g. `rows` / `chemicals train` / `rows` = 873).
pub fn profile() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("section", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// Schema of near-duplicate cluster members: one row per member of a cluster of two or more.
pub fn near_duplicates() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CLUSTER, DataType::Utf8, false),
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::GROUP_KEY, DataType::Utf8, false),
        Field::new(col::MATCHED_ID, DataType::Utf8, true),
        Field::new(col::SIMILARITY, DataType::Float64, true),
    ]))
}

/// Schema of split leaks: one row per (row, kind) where a row shares its text, near-duplicate
/// cluster or group with a row of an earlier split (splits taken from the data only).
pub fn split_leaks() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::LEAK, DataType::Utf8, false),
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::SPLIT, DataType::Utf8, false),
        Field::new(col::EARLIER_ID, DataType::Utf8, false),
        Field::new(col::EARLIER_SPLIT, DataType::Utf8, false),
        Field::new(col::DROPPED, DataType::Boolean, false),
    ]))
}

/// A batch or file whose schema differs from the one its dataset declares.
#[derive(Debug, thiserror::Error)]
#[error("schema mismatch: {0}")]
pub struct SchemaMismatch(pub String);

/// Checks that `actual` has exactly the fields of `expected` (names, types, order).
///
/// Nullability may be relaxed in `actual` only where `expected` allows nulls too.
pub fn validate(expected: &Schema, actual: &Schema) -> Result<(), SchemaMismatch> {
    if expected.fields().len() != actual.fields().len() {
        return Err(SchemaMismatch(format!(
            "expected {} columns, found {}",
            expected.fields().len(),
            actual.fields().len()
        )));
    }
    for (want, got) in expected.fields().iter().zip(actual.fields()) {
        if want.name() != got.name() {
            return Err(SchemaMismatch(format!(
                "expected column `{}`, found `{}`",
                want.name(),
                got.name()
            )));
        }
        if !types_match(want.data_type(), got.data_type()) {
            return Err(SchemaMismatch(format!(
                "column `{}`: expected {}, found {}",
                want.name(),
                want.data_type(),
                got.data_type()
            )));
        }
        if got.is_nullable() && !want.is_nullable() {
            return Err(SchemaMismatch(format!(
                "column `{}` must not be nullable",
                want.name()
            )));
        }
    }
    Ok(())
}

/// Compares types ignoring the nullability and name of list items.
fn types_match(want: &DataType, got: &DataType) -> bool {
    match (want, got) {
        (DataType::List(a), DataType::List(b)) => types_match(a.data_type(), b.data_type()),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_validates_against_itself() {
        validate(&examples(), &examples()).unwrap();
        validate(&rejects(), &rejects()).unwrap();
        validate(&split_examples(), &split_examples()).unwrap();
        validate(&near_duplicates(), &near_duplicates()).unwrap();
        for schema in [
            tokenized(),
            label_map(),
            train_log(),
            metrics(),
            tag_predictions(),
            generation_predictions(),
        ] {
            validate(&schema, &schema).unwrap();
        }
    }

    #[test]
    fn split_rows_extend_examples_with_the_split_column() {
        let split = split_examples();
        assert_eq!(split.fields().len(), examples().fields().len() + 2);
        assert_eq!(split.field(split.fields().len() - 1).name(), col::SPLIT);
    }

    #[test]
    fn a_renamed_or_retyped_column_is_named_in_the_error() {
        let mut fields: Vec<Field> = examples()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[2] = Field::new("line", DataType::Utf8, false);
        let err = validate(&examples(), &Schema::new(fields.clone())).unwrap_err();
        assert!(err.to_string().contains("column `line`"), "{err}");
        fields[2] = Field::new("lineno", DataType::UInt64, false);
        let err = validate(&examples(), &Schema::new(fields)).unwrap_err();
        assert!(err.to_string().contains("`lineno`"), "{err}");
    }

    #[test]
    fn different_datasets_do_not_validate_against_each_other() {
        assert!(validate(&examples(), &rejects()).is_err());
    }
}
