//! What the engine tests share: a stage that writes numbered rows over several batches.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use medtune_pipeline::{OutputDecl, OutputRole, Result, Stage, StageContext};

/// Rows the [`Rows`] stage writes.
pub const ROW_COUNT: i64 = 60_000;

/// The schema of the dataset `rows`: `id` ("row-i") and `n`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]))
}

/// Writes [`ROW_COUNT`] rows `(id "row-i", n = number(i))` to the dataset `rows`, 7,000 a batch.
pub struct Rows {
    /// Row `i`'s `n`.
    pub number: fn(i64) -> i64,
}

impl Stage for Rows {
    fn name(&self) -> &str {
        "rows"
    }
    fn version(&self) -> u32 {
        1
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new("rows", schema(), OutputRole::Kept)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        for start in (0..ROW_COUNT).step_by(7_000) {
            let range = start..(start + 7_000).min(ROW_COUNT);
            let ids: StringArray = range.clone().map(|i| Some(format!("row-{i}"))).collect();
            let ns: Int64Array = range.map(self.number).collect();
            let batch = RecordBatch::try_new(schema(), vec![Arc::new(ids), Arc::new(ns)])?;
            ctx.count_in(batch.num_rows() as u64);
            ctx.write("rows", batch)?;
        }
        Ok(())
    }
}
