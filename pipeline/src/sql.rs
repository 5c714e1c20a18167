//! Read-only SQL over every dataset in the catalog, with DataFusion.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::engine::{parquet_table, session_at, Place};
use crate::error::{PipelineError, Result};
use crate::output::OutputRole;
use crate::workdir::Workdir;

/// The SQL table that unions every stage's rejects dataset (they share one schema).
pub const REJECTS_TABLE: &str = "rejects";

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// A DataFusion session with every readable catalog dataset registered as a table of its name.
///
/// The datasets `sql` reads are checked first (each part's size and checksum against its
/// manifest): a damaged or missing one is an error naming it, while damage elsewhere in the
/// workdir leaves the query alone. Call under the workdir's [`Workdir::read_lock`].
pub async fn session(workdir: &Workdir, sql: &str, place: &Place) -> Result<SessionContext> {
    let view = workdir.catalog_view()?;
    if view.datasets.is_empty() && view.unavailable.is_empty() {
        return Err(PipelineError::Usage(format!(
            "workdir {} has no datasets yet: run `medtune run --config FILE` first",
            workdir.root().display()
        )));
    }
    let ctx = session_at(place, SessionConfig::new()).await?;
    let read = referenced_tables(&ctx, sql)?;
    let reads = |name: &str, role: OutputRole| {
        read.contains(name) || (role == OutputRole::Rejects && read.contains(REJECTS_TABLE))
    };
    for dataset in &view.unavailable {
        // A catalog that did not record the role may be hiding a rejects dataset: assume it is.
        if reads(&dataset.name, dataset.role.unwrap_or(OutputRole::Rejects)) {
            return Err(PipelineError::Damaged(format!(
                "dataset `{}` is unavailable: {}; `medtune run --config FILE` rebuilds it",
                dataset.name, dataset.why
            )));
        }
    }
    let mut rejects = Vec::new();
    for dataset in view.datasets {
        if reads(&dataset.name, dataset.manifest.role) {
            dataset.verify().map_err(|why| {
                PipelineError::Damaged(format!(
                    "dataset `{}` is damaged: {why}; `medtune run --config FILE` rebuilds it",
                    dataset.name
                ))
            })?;
        }
        let folder = dataset.entry_dir.join(&dataset.name);
        let url = format!("{}/", folder.canonicalize().unwrap_or(folder).display());
        ctx.register_parquet(dataset.name.as_str(), &url, ParquetReadOptions::default())
            .await
            .map_err(|e| PipelineError::Query(format!("registering `{}`: {e}", dataset.name)))?;
        if dataset.manifest.role == OutputRole::Rejects {
            rejects.push(url);
        }
    }
    if !rejects.is_empty() {
        register_union(&ctx, REJECTS_TABLE, &rejects).await?;
    }
    Ok(ctx)
}

/// The table names `sql` reads (lower-cased as the SQL planner does; CTE names excluded).
fn referenced_tables(ctx: &SessionContext, sql: &str) -> Result<BTreeSet<String>> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state
        .sql_to_statement(sql, &dialect)
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    let tables = state
        .resolve_table_references(&statement)
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    Ok(tables.iter().map(|t| t.table().to_string()).collect())
}

/// Registers `name` as one table over the Parquet parts of several dataset folders.
async fn register_union(ctx: &SessionContext, name: &str, folders: &[String]) -> Result<()> {
    let failed = |e: datafusion::error::DataFusionError| {
        PipelineError::Query(format!("registering `{name}`: {e}"))
    };
    let urls = folders
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(failed)?;
    let table = parquet_table(ctx, urls).await.map_err(failed)?;
    ctx.register_table(name, Arc::new(table)).map_err(failed)?;
    Ok(())
}

/// Where a query's time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryTiming {
    /// Registering the catalog's datasets as tables.
    pub catalog: std::time::Duration,
    /// Planning, running and writing the result.
    pub query: std::time::Duration,
}

/// How a query's result is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Rows written at most; the rest are not read. `None`: all rows.
    pub limit: Option<usize>,
    /// Where the query runs (in this process unless [`Self::on`] says otherwise).
    pub place: Place,
}

/// Rows a text table shows when no limit is given: the table is laid out in memory, so it
/// is bounded; CSV and JSON stream every row.
pub const TABLE_ROWS: usize = 1000;

impl QueryOptions {
    /// `format` with the limit a user gets by default: [`TABLE_ROWS`] for a table, none for
    /// the streamed formats.
    pub fn new(format: OutputFormat, limit: Option<usize>) -> Self {
        let limit = match (format, limit) {
            (_, Some(n)) => Some(n),
            (OutputFormat::Table, None) => Some(TABLE_ROWS),
            _ => None,
        };
        QueryOptions {
            format,
            limit,
            place: Place::InProcess,
        }
    }

    /// Runs the query at `place` (a cluster reads the workdir's parts at their paths).
    pub fn on(mut self, place: Place) -> Self {
        self.place = place;
        self
    }
}

/// What a query did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryOutcome {
    /// Where its time went.
    pub timing: QueryTiming,
    /// Rows written.
    pub rows: usize,
    /// Whether more rows than the limit were there (and not written).
    pub truncated: bool,
}

/// Runs `sql` against the workdir's catalog and writes the result to `out`.
///
/// Statements that would create, change or write anything (DDL, DML, `COPY`, `SET`) are refused.
/// The query holds the workdir's read lock throughout, so a concurrent run never replaces an
/// output it reads: it sees each dataset as committed before or after, never a gap.
pub async fn query(
    workdir: &Workdir,
    sql: &str,
    options: QueryOptions,
    out: &mut dyn Write,
) -> Result<QueryOutcome> {
    let _readers = workdir.read_lock()?;
    let clock = std::time::Instant::now();
    let ctx = session(workdir, sql, &options.place).await?;
    let catalog = clock.elapsed();
    let clock = std::time::Instant::now();
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, read_only).await.map_err(|e| {
        let text = e.to_string();
        let refused = [
            "DDL not supported",
            "DML not supported",
            "Statement not supported",
        ];
        if refused.iter().any(|r| text.contains(r)) {
            PipelineError::Query(format!(
                "medtune query is read-only; this statement would create or change data ({text})"
            ))
        } else {
            PipelineError::Query(text)
        }
    })?;
    let schema = df.schema().inner().clone();
    let stream = df
        .execute_stream()
        .await
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    let mut batches = Limited::new(stream, options.limit);
    let io_err = |e: std::io::Error| PipelineError::io("<stdout>", e);
    match options.format {
        OutputFormat::Table => {
            let mut kept = Vec::new();
            while let Some(batch) = batches.next().await? {
                kept.push(batch);
            }
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &kept)?;
            writeln!(out, "{table}").map_err(io_err)?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(batch) = batches.next().await? {
                writer.write(&batch)?;
                wrote = true;
            }
            drop(writer);
            if !wrote {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(",")).map_err(io_err)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(batch) = batches.next().await? {
                writer.write(&batch)?;
            }
            writer.finish()?;
            drop(writer);
            writeln!(out).map_err(io_err)?;
        }
    }
    Ok(QueryOutcome {
        timing: QueryTiming {
            catalog,
            query: clock.elapsed(),
        },
        rows: batches.rows,
        truncated: batches.truncated,
    })
}

/// A result stream cut after `limit` rows: the rows past it are never read (the query stops),
/// and `truncated` says whether there were any.
struct Limited {
    stream: SendableRecordBatchStream,
    limit: Option<usize>,
    rows: usize,
    truncated: bool,
}

impl Limited {
    fn new(stream: SendableRecordBatchStream, limit: Option<usize>) -> Self {
        Limited {
            stream,
            limit,
            rows: 0,
            truncated: false,
        }
    }

    async fn next(&mut self) -> Result<Option<RecordBatch>> {
        while !self.truncated {
            let Some(batch) = self.stream.next().await else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| PipelineError::Query(e.to_string()))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let room = self.limit.map_or(usize::MAX, |l| l - self.rows);
            if room == 0 {
                // Full: this batch only says that rows were left.
                self.truncated = true;
                return Ok(None);
            }
            let batch = if batch.num_rows() > room {
                self.truncated = true;
                batch.slice(0, room)
            } else {
                batch
            };
            self.rows += batch.num_rows();
            return Ok(Some(batch));
        }
        Ok(None)
    }
}

/// Blocking wrapper of [`query`] on its own multi-threaded runtime.
pub fn query_blocking(
    workdir: &Workdir,
    sql: &str,
    options: QueryOptions,
    out: &mut dyn Write,
) -> Result<QueryOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Internal(format!("starting the query runtime: {e}")))?;
    runtime.block_on(query(workdir, sql, options, out))
}
