//! The evaluate stage's datasets: `metrics` (one number per row, long format) and the
//! schemas of `predictions`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use medtune_schemas::col;

use crate::metrics::entities::{Report, Scores};

/// One number of the evaluation: `value` of `metric` for `group` (an entity type, a task, an
/// average, `all`) in `family`, for the model variant `model` (`base` or `adapter`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    /// `base` or `adapter`.
    pub model: String,
    /// What was measured: `entity_default`, `entity_strict`, `token`, `extraction`, `text`,
    /// `lm`, `throughput`.
    pub family: String,
    /// Entity type, label, task, `micro avg` / `macro avg` / `weighted avg`, or `all`.
    pub group: String,
    /// `precision`, `recall`, `f1`, `support`, `perplexity`...
    pub metric: String,
    /// The number.
    pub value: f64,
}

/// Collects metric rows for one model variant.
pub struct MetricSink<'a> {
    model: &'a str,
    rows: &'a mut Vec<MetricRow>,
}

impl<'a> MetricSink<'a> {
    /// Rows for `model`, appended to `rows`.
    pub fn new(model: &'a str, rows: &'a mut Vec<MetricRow>) -> Self {
        MetricSink { model, rows }
    }

    /// One number.
    pub fn push(&mut self, family: &str, group: &str, metric: &str, value: f64) {
        self.rows.push(MetricRow {
            model: self.model.to_string(),
            family: family.to_string(),
            group: group.to_string(),
            metric: metric.to_string(),
            value,
        });
    }

    /// Precision, recall, F1 and support of one group.
    pub fn scores(&mut self, family: &str, group: &str, s: &Scores) {
        self.push(family, group, "precision", s.precision);
        self.push(family, group, "recall", s.recall);
        self.push(family, group, "f1", s.f1);
        self.push(family, group, "support", s.support as f64);
    }

    /// A classification report: per type, then the micro, macro and weighted averages.
    pub fn report(&mut self, family: &str, report: &Report) {
        for (group, s) in &report.per_type {
            self.scores(family, group, s);
        }
        self.scores(family, MICRO, &report.micro);
        self.scores(family, MACRO, &report.macro_avg);
        self.scores(family, WEIGHTED, &report.weighted);
    }
}

/// Group name of the micro average.
pub const MICRO: &str = "micro avg";
/// Group name of the macro average.
pub const MACRO: &str = "macro avg";
/// Group name of the support-weighted average.
pub const WEIGHTED: &str = "weighted avg";

/// The `metrics` schema.
pub fn metrics_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("model"),
        s("family"),
        s("group"),
        s("metric"),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// Metric rows as a record batch.
pub fn metrics_batch(rows: &[MetricRow]) -> arrow::error::Result<RecordBatch> {
    let mut text: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let mut value = Float64Builder::new();
    for r in rows {
        for (b, v) in text
            .iter_mut()
            .zip([&r.model, &r.family, &r.group, &r.metric])
        {
            b.append_value(v);
        }
        value.append_value(r.value);
    }
    let mut columns: Vec<ArrayRef> = text
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    columns.push(Arc::new(value.finish()));
    RecordBatch::try_new(metrics_schema(), columns)
}

fn tag_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// `predictions` of a token classifier: per sequence and model, the true and predicted tag of
/// every labelled word.
pub fn tag_predictions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new("window", DataType::UInt32, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("truth", tag_list(), false),
        Field::new("predicted", tag_list(), false),
    ]))
}

/// `predictions` of a causal LM: per row and model, the raw generation, the reference and the
/// row's scores (the extraction counts only for extraction tasks).
pub fn generation_predictions_schema() -> SchemaRef {
    let u = |n: &str, null: bool| Field::new(n, DataType::UInt32, null);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new(col::ID, DataType::Utf8, false),
        Field::new(col::TASK, DataType::Utf8, true),
        Field::new("model", DataType::Utf8, false),
        u("prompt_tokens", false),
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
