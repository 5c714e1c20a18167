//! Builds batches of the shared `rejects` schema, for every stage that drops rows.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringBuilder, UInt64Builder};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use medtune_pipeline::{OutputDecl, OutputRole, Result, RoutedRows};

/// One dropped row.
#[derive(Debug, Clone, Copy)]
pub struct RejectRow<'a> {
    /// Stage that dropped it.
    pub stage: &'a str,
    /// Input file as named in the config.
    pub source_file: &'a str,
    /// 1-based line where the record starts in that file.
    pub line: u64,
    /// The row's id (`file:record`, the record's 1-based ordinal in its file; for ingest
    /// rejects, the id the row would have had).
    pub id: &'a str,
    /// Stable machine-readable reason code.
    pub reason: &'a str,
    /// Human-readable explanation.
    pub detail: &'a str,
    /// Raw text of the row, already bounded by the caller.
    pub raw: &'a str,
    /// The kept row this one duplicates, for duplicate drops.
    pub duplicate_of: Option<&'a str>,
}

/// Accumulates rejects into batches.
#[derive(Default)]
pub struct RejectBatch {
    stage: StringBuilder,
    source_file: StringBuilder,
    line: UInt64Builder,
    id: StringBuilder,
    reason: StringBuilder,
    detail: StringBuilder,
    raw: StringBuilder,
    duplicate_of: StringBuilder,
    rows: usize,
}

impl RejectBatch {
    /// Appends one reject.
    pub fn push(&mut self, row: RejectRow<'_>) {
        self.stage.append_value(row.stage);
        self.source_file.append_value(row.source_file);
        self.line.append_value(row.line);
        self.id.append_value(row.id);
        self.reason.append_value(row.reason);
        self.detail.append_value(row.detail);
        self.raw.append_value(row.raw);
        self.duplicate_of.append_option(row.duplicate_of);
        self.rows += 1;
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes the buffered rows as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.stage.finish()),
            Arc::new(self.source_file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.duplicate_of.finish()),
        ];
        RecordBatch::try_new(medtune_schemas::rejects(), columns)
    }
}

/// The outputs of a stage that filters example rows: the kept rows and the dropped ones.
pub fn filter_outputs(kept: &str, rejects: &str) -> Vec<OutputDecl> {
    vec![
        OutputDecl::new(kept, medtune_schemas::examples(), OutputRole::Kept),
        OutputDecl::new(rejects, medtune_schemas::rejects(), OutputRole::Rejects),
    ]
}

/// Writes the rows of `batch` that `keep` marks to the dataset `kept`, and the rejects buffered
/// for it to the dataset `rejects`.
pub fn write_filtered(
    out: &mut RoutedRows,
    batch: &RecordBatch,
    keep: Vec<bool>,
    kept: &str,
    dropped: &mut RejectBatch,
    rejects: &str,
) -> Result<()> {
    out.write(
        kept,
        &filter_record_batch(batch, &BooleanArray::from(keep))?,
    )?;
    if dropped.rows() > 0 {
        out.write(rejects, &dropped.finish()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_build_batches_of_the_shared_schema() {
        let mut batch = RejectBatch::default();
        batch.push(RejectRow {
            stage: "dedup",
            source_file: "a.jsonl",
            line: 3,
            id: "a.jsonl:3",
            reason: "duplicate",
            detail: "same prompt as a.jsonl:1",
            raw: "x",
            duplicate_of: Some("a.jsonl:1"),
        });
        assert_eq!(batch.rows(), 1);
        let out = batch.finish().unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(batch.rows(), 0);
    }
}
