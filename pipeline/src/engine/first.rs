//! First occurrences: the distinct keys a row function gives a dataset's rows, each with the
//! first row that has it. An aggregation (group by key, keep the smallest row number) that runs
//! where the engine runs plans, distributed on a cluster, and whose table the engine itself
//! writes as Parquet: the rows never pass through the driver.
//!
//! Rows are numbered in the dataset's order: each chunk is one partition read in file order,
//! numbered by `row_number()` from the rows of the chunks before it. So "the first row" is
//! exact wherever the plan runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::{count, first_value, min};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{lit, not};
use datafusion::prelude::{col, DataFrame, SessionConfig, SessionContext};

use super::chunk::{Chunk, ChunkTable};
use super::{listing_table, query_error, MAPPED};
use crate::error::{PipelineError, Result};
use crate::reader::CommittedDataset;

/// Column of a first-occurrence table: the key (the function's field, as it gives it).
pub const KEY: &str = "key";
/// Column: the number of the first row with the key, counting the dataset's rows from 0.
pub const FIRST_ROW: &str = "first_row";
/// Column: the id of that row.
pub const FIRST_ID: &str = "first_id";
/// Column: how many of the dataset's rows have the key.
pub const ROWS: &str = "rows";
/// Column: the id of the row that had the key in an earlier table, when one did (then no row
/// of this dataset is the key's first); null otherwise.
pub const EARLIER_ID: &str = "earlier_id";

/// The row number column of the numbered rows.
const ROW: &str = "row";

/// A first-occurrence aggregation: which rows, keyed how, checked against which earlier
/// tables, written where.
#[derive(Debug)]
pub struct FirstOccurrences<'a> {
    /// The rows, numbered from 0 in the dataset's order.
    pub dataset: &'a CommittedDataset,
    /// The dataset's column that identifies a row.
    pub id: &'a str,
    /// Settings the row function is called with.
    pub settings: &'a serde_json::Value,
    /// The field of the function's struct that is the key.
    pub key: &'a str,
    /// A boolean field of the function's struct: rows where it is true have no key and are
    /// left out (they still count in the row numbers).
    pub keyless: Option<&'a str>,
    /// Folders of tables written before for rows that came before this dataset's: a key one
    /// of them gave first (its `earlier_id` null) is first there, not here.
    pub earlier: &'a [PathBuf],
    /// The folder the table is written into; replaced if it exists.
    pub folder: &'a Path,
}

/// The settings a first-occurrence plan runs with: a chunk's rows must reach `row_number()`
/// in file order, as one partition, so its scan is not split into byte ranges and its rows
/// are not spread round-robin; the grouping still runs in parallel over the chunks (one
/// partition each) and hash partitions of the keys.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new();
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.repartition_file_scans = false;
    optimizer.enable_round_robin_repartition = false;
    config
}

impl FirstOccurrences<'_> {
    /// Builds the plan: numbered rows, grouped by key, joined with the earlier tables.
    pub(super) async fn plan(
        &self,
        session: &SessionContext,
        function: &datafusion::logical_expr::ScalarUDF,
        chunks: Vec<Chunk>,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<DataFrame> {
        let failed = query_error("planning first occurrences");
        let settings = self.settings.to_string();
        let mut numbered: Option<DataFrame> = None;
        let mut offset = 0u64;
        for chunk in chunks {
            let rows = chunk.rows;
            let table = Arc::new(ChunkTable {
                chunk,
                schema: schema.clone(),
            });
            let mut args: Vec<_> = schema.fields().iter().map(|f| col(f.name())).collect();
            args.push(lit(settings.clone()));
            let mut frame = session
                .read_table(table)
                .and_then(|f| f.select(vec![col(self.id), function.call(args).alias(MAPPED)]))
                .and_then(|f| f.window(vec![row_number().alias(ROW)]))
                .map_err(&failed)?;
            if let Some(keyless) = self.keyless {
                frame = frame
                    .filter(not(get_field(col(MAPPED), keyless)))
                    .map_err(&failed)?;
            }
            // row_number() counts from 1 within the chunk.
            let frame = frame
                .select(vec![
                    get_field(col(MAPPED), self.key).alias(KEY),
                    col(self.id),
                    (col(ROW) + lit(offset) - lit(1u64)).alias(ROW),
                ])
                .map_err(&failed)?;
            offset += rows;
            numbered = Some(match numbered {
                None => frame,
                Some(all) => all.union(frame).map_err(&failed)?,
            });
        }
        let numbered = numbered.ok_or_else(|| {
            PipelineError::Internal("first occurrences of a dataset without rows".into())
        })?;
        let firsts = numbered
            .aggregate(
                vec![col(KEY)],
                vec![
                    min(col(ROW)).alias(FIRST_ROW),
                    first_value(col(self.id), vec![col(ROW).sort(true, false)]).alias(FIRST_ID),
                    count(lit(1u8)).alias(ROWS),
                ],
            )
            .map_err(&failed)?;
        let earlier: Vec<&PathBuf> = self.earlier.iter().filter(|f| holds_parquet(f)).collect();
        if earlier.is_empty() {
            return firsts
                .select(vec![
                    col(KEY),
                    col(FIRST_ROW),
                    col(FIRST_ID),
                    col(ROWS),
                    lit(ScalarValue::Utf8(None)).alias(EARLIER_ID),
                ])
                .map_err(&failed);
        }
        let earlier_key = "earlier_key";
        let table = listing_table(session, earlier.into_iter().cloned().collect()).await?;
        let earlier = session
            .read_table(Arc::new(table))
            .and_then(|f| f.filter(col(EARLIER_ID).is_null()))
            .and_then(|f| {
                f.select(vec![
                    col(KEY).alias(earlier_key),
                    col(FIRST_ID).alias(EARLIER_ID),
                ])
            })
            .map_err(&failed)?;
        firsts
            .join(earlier, JoinType::Left, &[KEY], &[earlier_key], None)
            .and_then(|f| {
                f.select(vec![
                    col(KEY),
                    col(FIRST_ROW),
                    col(FIRST_ID),
                    col(ROWS),
                    col(EARLIER_ID),
                ])
            })
            .map_err(&failed)
    }

    /// Runs `plan`, writing its rows as Parquet into [`Self::folder`] (emptied first, so a
    /// job submitted again leaves no file of an earlier try).
    pub(super) async fn write(&self, plan: DataFrame) -> Result<()> {
        let failed = query_error("writing first occurrences");
        if self.folder.exists() {
            std::fs::remove_dir_all(self.folder).map_err(|e| PipelineError::io(self.folder, e))?;
        }
        std::fs::create_dir_all(self.folder).map_err(|e| PipelineError::io(self.folder, e))?;
        let target = format!("{}/", self.folder.display());
        plan.write_parquet(&target, DataFrameWriteOptions::new(), None)
            .await
            .map_err(&failed)?;
        Ok(())
    }
}

/// Whether `folder` holds a Parquet file (a table written for no rows holds none).
pub fn holds_parquet(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|items| {
        items
            .flatten()
            .any(|item| item.path().extension().is_some_and(|e| e == "parquet"))
    })
}
