//! What an evaluation produced: the metric rows and what the report draws (confusion
//! matrices, the F1 chart, samples), per variant of the model.

use std::collections::BTreeMap;

use medtune_qlora::Pass;

use super::tables::MetricRow;

/// One way of running the model: `base` (adapters off) or `adapter`.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `base` or `adapter`.
    pub name: String,
    /// The forward pass.
    pub pass: Pass,
}

/// A confusion matrix: (row label, column label) → count.
#[derive(Debug, Clone, Default)]
pub struct Confusion {
    /// What rows and columns are.
    pub title: String,
    /// Counts.
    pub counts: BTreeMap<(String, String), u64>,
}

/// Grouped F1 bars: per category, a value per series (variant).
#[derive(Debug, Clone, Default)]
pub struct Bars {
    /// Chart title.
    pub title: String,
    /// Entity types or tasks, then the average.
    pub categories: Vec<String>,
    /// (variant, values in category order).
    pub series: Vec<(String, Vec<f64>)>,
}

/// A row shown in the report: prompt, reference, and each variant's output.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Row id.
    pub id: String,
    /// Task.
    pub task: Option<String>,
    /// Prompt text.
    pub prompt: String,
    /// Reference completion.
    pub reference: String,
    /// (variant, generation).
    pub outputs: Vec<(String, String)>,
}

/// What an evaluation produced, for the datasets and the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows (sequences) scored per variant.
    pub rows: u64,
    /// Every number.
    pub metrics: Vec<MetricRow>,
    /// Confusion matrices.
    pub confusions: Vec<Confusion>,
    /// The F1 chart.
    pub bars: Option<Bars>,
    /// Report samples.
    pub samples: Vec<Sample>,
}
