//! The evaluate stage's datasets: `metrics` (one number per row, long format) and the
//! schemas of `predictions`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, RecordBatch, StringBuilder};

use crate::shared::metrics::entities::{Report, Scores};

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

/// The metric families: the `family` column of `metrics`, one report section each.
pub mod family {
    /// Entity scores, seqeval default mode.
    pub const ENTITY_DEFAULT: &str = "entity_default";
    /// Entity scores, seqeval strict IOB2 mode.
    pub const ENTITY_STRICT: &str = "entity_strict";
    /// Word-tag scores.
    pub const TOKEN: &str = "token";
    /// Set-level extraction scores per task.
    pub const EXTRACTION: &str = "extraction";
    /// ROUGE-L and BLEU-1 against the reference.
    pub const TEXT: &str = "text";
    /// Loss and perplexity over the reference tokens.
    pub const LM: &str = "lm";
    /// Rows, tokens and seconds of the evaluation.
    pub const THROUGHPUT: &str = "throughput";
}

/// The SQL that selects the headline figures of an evaluation from `metrics`: the averaged
/// F1 scores, ROUGE-L and BLEU-1, perplexity and cross-entropy, and the speed.
pub fn headline_query() -> String {
    use family::*;
    format!(
        "SELECT family, \"group\", metric, model, value FROM metrics \
         WHERE (family IN ('{ENTITY_DEFAULT}', '{ENTITY_STRICT}', '{EXTRACTION}') \
                AND \"group\" IN ('{MICRO}', '{MACRO}') AND metric = 'f1') \
            OR (family = '{TOKEN}' AND \"group\" = '{WEIGHTED}' AND metric = 'f1') \
            OR (family = '{TEXT}' AND metric IN ('rouge_l', 'bleu_1')) \
            OR (family = '{LM}' AND metric IN ('perplexity', 'cross_entropy')) \
            OR (family = '{THROUGHPUT}' \
                AND metric IN ('samples_per_second', 'sequences_per_second')) \
         ORDER BY family, \"group\", metric, model"
    )
}

/// Group name of the micro average.
pub const MICRO: &str = "micro avg";
/// Group name of the macro average.
pub const MACRO: &str = "macro avg";
/// Group name of the support-weighted average.
pub const WEIGHTED: &str = "weighted avg";

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
    RecordBatch::try_new(medtune_schemas::metrics(), columns)
}
