//! Read-only SQL over every dataset in the catalog, with DataFusion.

use std::io::Write;

use std::sync::Arc;

use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;

use crate::error::{PipelineError, Result};
use crate::stage::OutputRole;
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

/// A DataFusion session with every catalog dataset registered as a table of its name.
pub async fn session(workdir: &Workdir) -> Result<SessionContext> {
    let datasets = workdir.catalog_datasets()?;
    if datasets.is_empty() {
        return Err(PipelineError::Usage(format!(
            "workdir {} has no datasets yet: run `medtune run --config FILE` first",
            workdir.root().display()
        )));
    }
    let ctx = SessionContext::new();
    let mut rejects = Vec::new();
    for dataset in datasets {
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
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .map_err(failed)?;
    let table = ListingTable::try_new(config).map_err(failed)?;
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

/// Runs `sql` against the workdir's catalog and writes the result to `out`.
///
/// Statements that would create, change or write anything (DDL, DML, `COPY`, `SET`) are refused.
pub async fn query(
    workdir: &Workdir,
    sql: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<QueryTiming> {
    let clock = std::time::Instant::now();
    let ctx = session(workdir).await?;
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
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    let io_err = |e: std::io::Error| PipelineError::io("<stdout>", e);
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.map_err(|e| PipelineError::Query(e.to_string()))?);
            }
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?;
            writeln!(out, "{table}").map_err(io_err)?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                writer.write(&batch.map_err(|e| PipelineError::Query(e.to_string()))?)?;
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
            while let Some(batch) = stream.next().await {
                writer.write(&batch.map_err(|e| PipelineError::Query(e.to_string()))?)?;
            }
            writer.finish()?;
            drop(writer);
            writeln!(out).map_err(io_err)?;
        }
    }
    Ok(QueryTiming {
        catalog,
        query: clock.elapsed(),
    })
}

/// Blocking wrapper of [`query`] on its own multi-threaded runtime.
pub fn query_blocking(
    workdir: &Workdir,
    sql: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<QueryTiming> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Internal(format!("starting the query runtime: {e}")))?;
    runtime.block_on(query(workdir, sql, format, out))
}
