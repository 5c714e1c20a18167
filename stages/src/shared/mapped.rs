//! Row functions' results: the per-row struct a stage's [`RowFunction`] answers, split off the
//! input rows it came with, and per-row counts summed into the stage's counters.
//!
//! [`RowFunction`]: medtune_pipeline::RowFunction

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StructArray, UInt64Array, UInt64Builder};
use arrow::datatypes::{DataType, Field, UInt64Type};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::engine::MAPPED;
use medtune_pipeline::{PipelineError, Result, RoutedRows};

/// A row function's settings, parsed from the JSON its call carries.
pub fn parse_settings<T: serde::de::DeserializeOwned>(function: &str, settings: &str) -> Result<T> {
    serde_json::from_str(settings)
        .map_err(|e| PipelineError::Internal(format!("{function}: settings: {e}")))
}

/// Splits a batch of [`StageContext::map_rows`] into the input rows and the function's structs.
pub fn split_mapped(batch: RecordBatch) -> Result<(RecordBatch, StructArray)> {
    let mut batch = batch;
    let index = batch.schema().index_of(MAPPED)?;
    let mapped = batch.remove_column(index);
    let mapped = mapped
        .as_struct_opt()
        .ok_or_else(|| PipelineError::Internal(format!("`{MAPPED}` is not a struct")))?
        .clone();
    Ok((batch, mapped))
}

/// A field of a row function's struct.
pub fn field<'a>(mapped: &'a StructArray, name: &str) -> Result<&'a ArrayRef> {
    mapped
        .column_by_name(name)
        .ok_or_else(|| PipelineError::Internal(format!("`{MAPPED}` has no field `{name}`")))
}

/// A UInt64 field of a row function's struct.
pub fn counts<'a>(mapped: &'a StructArray, name: &str) -> Result<&'a UInt64Array> {
    field(mapped, name)?
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| PipelineError::Internal(format!("`{MAPPED}.{name}` is not UInt64")))
}

/// Adds each named UInt64 field of `mapped`, summed over its rows, to the counter of that name.
pub fn add_counts(out: &mut RoutedRows, mapped: &StructArray, names: &[&str]) -> Result<()> {
    for name in names {
        let column = counts(mapped, name)?;
        out.count(name, column.iter().flatten().sum());
    }
    Ok(())
}

/// Builds one UInt64 column per counter name, a row at a time.
pub struct CountColumns {
    names: Vec<&'static str>,
    builders: Vec<UInt64Builder>,
}

impl CountColumns {
    /// Columns for `names`.
    pub fn new(names: &[&'static str]) -> Self {
        CountColumns {
            names: names.to_vec(),
            builders: names.iter().map(|_| UInt64Builder::new()).collect(),
        }
    }

    /// The fields these columns take in a row function's struct.
    pub fn fields(names: &[&'static str]) -> Vec<Field> {
        names
            .iter()
            .map(|name| Field::new(*name, DataType::UInt64, false))
            .collect()
    }

    /// Appends one row's counts, in the order of the names.
    pub fn push(&mut self, values: &[u64]) {
        debug_assert_eq!(values.len(), self.builders.len());
        for (builder, value) in self.builders.iter_mut().zip(values) {
            builder.append_value(*value);
        }
    }

    /// The finished columns with their fields.
    pub fn finish(mut self) -> Vec<(Arc<Field>, ArrayRef)> {
        self.names
            .iter()
            .zip(self.builders.iter_mut())
            .map(|(name, builder)| {
                (
                    Arc::new(Field::new(*name, DataType::UInt64, false)),
                    Arc::new(builder.finish()) as ArrayRef,
                )
            })
            .collect()
    }
}

/// A struct array from `(field, column)` pairs (the fields in the function's declared order).
pub fn struct_of(columns: Vec<(Arc<Field>, ArrayRef)>) -> Result<StructArray> {
    let (fields, arrays): (Vec<_>, Vec<_>) = columns.into_iter().unzip();
    Ok(StructArray::try_new(fields.into(), arrays, None)?)
}

/// Whether the struct has a row per input row (a function that lost rows is a bug).
pub fn check_rows(mapped: &StructArray, rows: &RecordBatch) -> Result<()> {
    if mapped.len() != rows.num_rows() {
        return Err(PipelineError::Internal(format!(
            "a row function answered {} rows for {}",
            mapped.len(),
            rows.num_rows()
        )));
    }
    Ok(())
}
