//! Schemas of the training data: tokenized sequences (and the shards cut from them), the label
//! map of a token classifier, and the training log.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::col;

/// The label of a position the loss ignores (padding, the prompt of an SFT row, sub-tokens
/// after a word's first): PyTorch's `ignore_index`.
pub const IGNORED_LABEL: i32 = -100;

/// Schema of token sequences, one row per sequence or window: the `tokenized` and `shards`
/// datasets. `labels` holds -100 where the loss ignores a position.
pub fn tokenized() -> SchemaRef {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::TASK, DataType::Utf8, true),
        Field::new(col::SPLIT, DataType::Utf8, false),
        Field::new(col::WINDOW, DataType::UInt32, false),
        Field::new(col::INPUT_IDS, list(DataType::UInt32), false),
        Field::new(col::LABELS, list(DataType::Int32), false),
        Field::new(col::LENGTH, DataType::UInt32, false),
        Field::new(col::PROMPT_TOKENS, DataType::UInt32, false),
    ]))
}

/// Schema of the `label_map` dataset: the tag name of each label id.
pub fn label_map() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
    ]))
}

/// Schema of the `train_log` dataset: one row per optimiser step; `eval_loss` is set on the
/// steps that evaluated.
pub fn train_log() -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = |n: &str, null: bool| Field::new(n, DataType::Float64, null);
    Arc::new(Schema::new(vec![
        u("step"),
        u("epoch"),
        f("loss", false),
        u("labelled_tokens"),
        f("learning_rate", false),
        f("grad_norm", false),
        u("tokens"),
        f("seconds", false),
        f("eval_loss", true),
    ]))
}
