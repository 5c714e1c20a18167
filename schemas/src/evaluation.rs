//! Schemas of the evaluation outputs: the long-format `metrics` rows and the per-row
//! `predictions` of a token classifier or a causal LM.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::{col, utf8_list};

/// Schema of the `metrics` dataset: one figure per row (`model`, `family`, `group`, `metric`,
/// `value`), so the report and any SQL over it read the same numbers.
pub fn metrics() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s(col::MODEL),
        s("family"),
        s("group"),
        s("metric"),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// Schema of a token classifier's `predictions`: per sequence and model, the true and
/// predicted tag of every labelled word.
pub fn tag_predictions() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::WINDOW, DataType::UInt32, false),
        Field::new(col::MODEL, DataType::Utf8, false),
        Field::new("truth", utf8_list(), false),
        Field::new("predicted", utf8_list(), false),
    ]))
}

/// Schema of a causal LM's `predictions`: per row and model, the raw generation, the reference
/// and the row's scores (the extraction counts only for extraction tasks).
pub fn generation_predictions() -> SchemaRef {
    let u = |n: &str, null: bool| Field::new(n, DataType::UInt32, null);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::TASK, DataType::Utf8, true),
        Field::new(col::MODEL, DataType::Utf8, false),
        u(col::PROMPT_TOKENS, false),
        u("generated_tokens", false),
        Field::new("stop", DataType::Utf8, false),
        Field::new("generation", DataType::Utf8, false),
        Field::new("reference", DataType::Utf8, false),
        u("correct", true),
        u("predicted", true),
        u("gold", true),
        f("rouge_l"),
        f("bleu_1"),
    ]))
}
