//! Where row-wise work runs: DataFusion plans over committed Parquet, executed in this process
//! (the default) or on an Apache DataFusion Ballista cluster, with the same plans and functions
//! either way.
//!
//! A stage maps its input with a [`RowFunction`] through [`Engine::map_rows`]: the input is cut
//! into [`chunk`]s of whole row groups, each chunk is one job (a scan and a projection calling
//! the function), jobs run concurrently, and the results come back in the input's row order.
//! The stage then counts, routes and writes the rows in this process, so parts, checksums and
//! cache keys do not depend on where the rows were mapped.
//!
//! A stage whose rows are independent of each other (a [`RowStage`]) goes further through
//! [`Engine::write_rows`]: the process that maps a chunk also routes its rows and writes its
//! parts (see [`write`]), and only a description of them comes back.

pub mod chunk;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod first;
pub mod function;
pub mod write;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::lit;
pub use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{col, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::config::Settings;
use crate::error::{IoContext, PipelineError, Result};
use crate::manifest::EngineTime;
use crate::reader::CommittedDataset;

pub use chunk::{chunks, Chunk, ChunkTable, Chunked};
pub use first::FirstOccurrences;
pub use function::{prepared, udf, RowFunction};
pub use write::{row_stage, AnyRowStage, RoutedRows, RowStage, RowStages, WrittenChunk};
use write::{ChunkJob, WriteChunkTable};

/// Running totals of the engine's work for one stage run, kept as it maps rows.
#[derive(Debug, Default)]
pub struct EngineClock {
    jobs: AtomicU64,
    job_nanos: AtomicU64,
    waited_nanos: AtomicU64,
}

impl EngineClock {
    /// The totals as a manifest records them; `None` when no row was mapped.
    pub fn time(&self, place: &Place) -> Option<EngineTime> {
        let jobs = self.jobs.load(Ordering::Relaxed);
        (jobs > 0).then(|| EngineTime {
            place: place.to_string(),
            jobs,
            job_seconds: self.job_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            waited_seconds: self.waited_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        })
    }

    fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The column [`Engine::map_rows`] adds to the input's: the function's struct per row.
pub const MAPPED: &str = "mapped";

/// Where an engine runs plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In this process, on every core.
    InProcess,
    /// On the Ballista cluster whose scheduler listens at this `df://HOST:PORT` address.
    Cluster(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::InProcess => f.write_str("in-process"),
            Place::Cluster(url) => write!(f, "cluster {url}"),
        }
    }
}

/// Runs plans over committed datasets, in this process or on a cluster.
pub struct Engine {
    place: Place,
    /// Started on first use: a run whose stages map no rows starts no threads for it.
    runtime: OnceLock<tokio::runtime::Runtime>,
    jobs: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("place", &self.place)
            .field("jobs", &self.jobs)
            .finish()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("medtune-engine")
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Internal(format!("starting the engine's runtime: {e}")))
}

fn query_error(what: &str) -> impl Fn(datafusion::error::DataFusionError) -> PipelineError + '_ {
    move |e| match e {
        datafusion::error::DataFusionError::External(inner) => {
            match inner.downcast::<PipelineError>() {
                Ok(e) => *e,
                Err(other) => PipelineError::Engine(format!("{what}: {other}")),
            }
        }
        other => PipelineError::Engine(format!("{what}: {other}")),
    }
}

impl Engine {
    /// An engine that runs plans in this process; as many jobs run at once as there are cores.
    pub fn in_process() -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Engine {
            place: Place::InProcess,
            runtime: OnceLock::new(),
            jobs: cores.max(2),
        })
    }

    /// An engine that runs plans on the Ballista cluster whose scheduler listens at `url`
    /// (`df://HOST:PORT`), with `jobs` jobs under way at once. Its processes must have been
    /// started with medtune's row functions (`medtune scheduler`, `medtune executor`).
    #[cfg(feature = "cluster")]
    pub fn cluster(url: &str, jobs: usize) -> Result<Self> {
        cluster::scheduler_address(url)?;
        Ok(Engine {
            place: Place::Cluster(url.to_string()),
            runtime: OnceLock::new(),
            jobs: jobs.max(1),
        })
    }

    /// An engine for `place`: [`Self::in_process`], or [`Self::cluster`] with `jobs` jobs.
    pub fn at(place: &Place, jobs: usize) -> Result<Self> {
        match place {
            Place::InProcess => Self::in_process(),
            #[cfg(feature = "cluster")]
            Place::Cluster(url) => Self::cluster(url, jobs),
            #[cfg(not(feature = "cluster"))]
            Place::Cluster(url) => {
                let _ = jobs;
                Err(without_cluster(url))
            }
        }
    }

    /// Times a failed job is submitted again: none in-process; on a cluster, which can lose an
    /// executor under a job, [`CLUSTER_JOB_RETRIES`] (Ballista itself retries tasks, but not a
    /// result fetch from an executor that is gone).
    fn retries(&self) -> u32 {
        match self.place {
            Place::InProcess => 0,
            Place::Cluster(_) => CLUSTER_JOB_RETRIES,
        }
    }

    /// Runs `jobs` on the engine's runtime, as many at once as the engine runs, and sends their
    /// results in order to the receiver it returns, timing each on `clock`. Stops after the
    /// first failure (which it sends) or once the receiver is dropped.
    fn spawn_in_order<T, J>(
        &self,
        jobs: impl Iterator<Item = J> + Send + 'static,
        clock: Arc<EngineClock>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<T>>>
    where
        T: Send + 'static,
        J: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(self.jobs);
        let at_once = self.jobs;
        self.runtime()?.spawn(async move {
            let results = futures::stream::iter(jobs)
                .map(|job| {
                    let clock = clock.clone();
                    async move {
                        let started = Instant::now();
                        let result = job.await;
                        clock.jobs.fetch_add(1, Ordering::Relaxed);
                        EngineClock::add(&clock.job_nanos, started);
                        result
                    }
                })
                .buffered(at_once);
            futures::pin_mut!(results);
            while let Some(result) = results.next().await {
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(rx)
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(runtime()?);
        }
        Ok(self.runtime.get().expect("runtime set above"))
    }

    /// Where it runs plans.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Streams `dataset`'s rows, in order and in batches of at most `batch_rows`, with a
    /// [`MAPPED`] column added: `F`'s struct for each row, called with every column and
    /// `settings` (JSON). Chunks of the dataset are
    /// mapped concurrently (in this process or on the cluster); the iterator yields them in
    /// order, holding at most a few chunks' results ahead of the caller.
    pub fn map_rows<F: RowFunction>(
        &self,
        dataset: &CommittedDataset,
        settings: &serde_json::Value,
        batch_rows: usize,
        clock: Arc<EngineClock>,
    ) -> Result<MappedRows> {
        let function = Arc::new(udf::<F>());
        let Chunked { schema, chunks } = chunks(dataset)?;
        let settings = settings.to_string();
        let batch_rows = batch_rows.max(1);
        // One partition per chunk plan: a chunk's rows stay in order; chunks give parallelism.
        let config = SessionConfig::new()
            .with_batch_size(batch_rows)
            .with_target_partitions(1);
        let runtime = self.runtime()?;
        let session = runtime.block_on(session_at(&self.place, config))?;
        session.register_udf(function.as_ref().clone());
        let name = dataset.name.clone();
        let retries = self.retries();
        let jobs = chunks.into_iter().map(move |chunk| {
            let table = Arc::new(ChunkTable {
                chunk,
                schema: schema.clone().expect("a dataset with chunks has parts"),
            });
            map_chunk(
                session.clone(),
                table,
                function.clone(),
                settings.clone(),
                batch_rows,
                retries,
            )
        });
        let rx = self.spawn_in_order(jobs, clock.clone())?;
        Ok(MappedRows {
            dataset: name,
            rx,
            pending: Vec::new().into_iter(),
            clock,
        })
    }
}

impl Engine {
    /// Writes `dataset`'s rows through the row stage `S` (called with `settings`, JSON): each
    /// chunk is mapped, routed and written as Parquet parts (with `writer`'s settings) by the
    /// process that maps it, into a folder of its own under `folder`. Chunks run concurrently
    /// (in this process or on the cluster); the iterator yields each chunk's folder and
    /// [`WrittenChunk`] in the dataset's row order. A chunk already written there (by an
    /// earlier attempt at the same job) is not written again.
    pub fn write_rows<S: RowStage>(
        &self,
        dataset: &CommittedDataset,
        settings: &serde_json::Value,
        writer: &Settings,
        folder: &std::path::Path,
        clock: Arc<EngineClock>,
    ) -> Result<WrittenChunks> {
        let stage = row_stage::<S>();
        let Chunked { schema, chunks } = chunks(dataset)?;
        std::fs::create_dir_all(folder).at(folder)?;
        let settings = settings.to_string();
        let batch_rows = writer.batch_rows.max(1);
        let config = SessionConfig::new()
            .with_batch_size(batch_rows)
            .with_target_partitions(1);
        let runtime = self.runtime()?;
        let session = runtime.block_on(session_at(&self.place, config))?;
        let tables: Vec<WriteChunkTable> = chunks
            .into_iter()
            .enumerate()
            .map(|(index, chunk)| {
                let mut job = ChunkJob {
                    stage: S::NAME.to_string(),
                    settings: settings.clone(),
                    chunk,
                    writer: writer.clone(),
                    batch_rows,
                    dir: PathBuf::new(),
                };
                // Named by everything that decides its parts: a folder left by an earlier
                // attempt is reused only for the very same job.
                let identity = serde_json::to_vec(&job).expect("a chunk job serialises");
                let hash = blake3::hash(&identity).to_hex();
                job.dir = folder.join(format!("chunk-{index:05}-{}", &hash[..16]));
                WriteChunkTable {
                    job,
                    stage: stage.clone(),
                    input_schema: schema.clone().expect("a dataset with chunks has parts"),
                }
            })
            .collect();
        let retries = self.retries();
        let jobs = tables.into_iter().map(move |table| {
            let session = session.clone();
            async move {
                let dir = table.job.dir.clone();
                let written = write_chunk_job(&session, table, retries).await?;
                Ok((dir, written))
            }
        });
        let rx = self.spawn_in_order(jobs, clock.clone())?;
        Ok(WrittenChunks {
            dataset: dataset.name.clone(),
            rx,
            clock,
        })
    }
}

/// Runs one chunk's job; on a cluster, a job that fails with an engine error is run again
/// (finding the chunk's folder committed, if the lost attempt got that far).
async fn write_chunk_job(
    session: &SessionContext,
    table: WriteChunkTable,
    retries: u32,
) -> Result<WrittenChunk> {
    let failed = query_error("writing a chunk");
    let table = Arc::new(table);
    let mut attempt = 0;
    loop {
        let once = async {
            let batches = session
                .read_table(table.clone())
                .map_err(&failed)?
                .collect()
                .await
                .map_err(&failed)?;
            let json = batches
                .iter()
                .find(|b| b.num_rows() == 1)
                .and_then(|b| b.column(0).as_any().downcast_ref::<StringArray>())
                .map(|a| a.value(0).to_string())
                .ok_or_else(|| {
                    PipelineError::Engine("a chunk's job answered no description".to_string())
                })?;
            serde_json::from_str::<WrittenChunk>(&json).map_err(|e| {
                PipelineError::Engine(format!("a chunk's job answered a bad description: {e}"))
            })
        };
        match once.await {
            Err(PipelineError::Engine(_)) if attempt < retries => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(2 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// The chunks [`Engine::write_rows`] wrote, each with its folder, in the input's row order.
pub struct WrittenChunks {
    dataset: String,
    rx: tokio::sync::mpsc::Receiver<Result<(PathBuf, WrittenChunk)>>,
    clock: Arc<EngineClock>,
}

impl Iterator for WrittenChunks {
    type Item = Result<(PathBuf, WrittenChunk)>;

    fn next(&mut self) -> Option<Self::Item> {
        let waiting = Instant::now();
        let received = self.rx.blocking_recv();
        EngineClock::add(&self.clock.waited_nanos, waiting);
        Some(received?.map_err(|e| match e {
            PipelineError::Engine(m) => {
                PipelineError::Engine(format!("writing `{}`: {m}", self.dataset))
            }
            other => other,
        }))
    }
}

/// A session with `config` whose plans run at `place`.
pub async fn session_at(place: &Place, config: SessionConfig) -> Result<SessionContext> {
    match place {
        Place::InProcess => Ok(SessionContext::new_with_config(config)),
        #[cfg(feature = "cluster")]
        Place::Cluster(url) => cluster::remote_session(url, config).await,
        #[cfg(not(feature = "cluster"))]
        Place::Cluster(url) => Err(without_cluster(url)),
    }
}

impl Engine {
    /// Runs `sql` over `dataset`, registered as the table `input` (its parts only), where the
    /// engine runs plans: a global question about a dataset (the distinct values of a column,
    /// say) answered as a DataFusion query, distributed on a cluster. Returns every batch.
    pub fn query_dataset(&self, dataset: &CommittedDataset, sql: &str) -> Result<Vec<RecordBatch>> {
        let parts: Vec<PathBuf> = dataset.part_paths().collect();
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        self.query_tables(&[(INPUT_TABLE, parts)], sql)
    }

    /// Runs `sql` over Parquet tables, each a name and its files or folders, where the engine
    /// runs plans. A table with no path is left out. Returns every batch.
    pub fn query_tables(
        &self,
        tables: &[(&str, Vec<PathBuf>)],
        sql: &str,
    ) -> Result<Vec<RecordBatch>> {
        let failed = query_error("querying a dataset");
        self.runtime()?.block_on(async {
            let ctx = session_at(&self.place, SessionConfig::new()).await?;
            for (name, paths) in tables {
                if paths.is_empty() {
                    continue;
                }
                let table = listing_table(&ctx, paths.clone()).await?;
                ctx.register_table(*name, Arc::new(table))
                    .map_err(&failed)?;
            }
            ctx.sql(sql)
                .await
                .map_err(&failed)?
                .collect()
                .await
                .map_err(&failed)
        })
    }

    /// Writes the first-occurrence table `job` describes (see [`first`]), keyed by a field of
    /// `F`'s struct: an aggregation over every row, run where the engine runs plans, whose
    /// Parquet files the engine writes into the job's folder. Writes nothing for a dataset
    /// without rows. On a cluster, a job that fails with an engine error is run again.
    pub fn write_first_occurrences<F: RowFunction>(
        &self,
        job: &FirstOccurrences<'_>,
        clock: &EngineClock,
    ) -> Result<()> {
        let Chunked { schema, chunks } = chunks(job.dataset)?;
        let Some(schema) = schema.filter(|_| !chunks.is_empty()) else {
            return Ok(());
        };
        let started = Instant::now();
        let function = udf::<F>();
        let retries = self.retries();
        let result = self.runtime()?.block_on(async {
            let mut attempt = 0;
            loop {
                let once = async {
                    let session = session_at(&self.place, first::session_config()).await?;
                    session.register_udf(function.clone());
                    let plan = job
                        .plan(&session, &function, chunks.clone(), schema.clone())
                        .await?;
                    job.write(plan).await
                };
                match once.await {
                    Err(PipelineError::Engine(_)) if attempt < retries => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(2 << attempt)).await;
                    }
                    other => return other,
                }
            }
        });
        clock.jobs.fetch_add(1, Ordering::Relaxed);
        EngineClock::add(&clock.job_nanos, started);
        EngineClock::add(&clock.waited_nanos, started);
        result
    }
}

/// A Parquet table over `paths` (files, or folders of files) for `ctx`, its schema read from
/// the files.
async fn listing_table(ctx: &SessionContext, paths: Vec<PathBuf>) -> Result<ListingTable> {
    let failed = query_error("reading a table");
    let mut urls = Vec::new();
    for path in paths {
        let path = path.canonicalize().at(&path)?;
        let mut text = path.to_string_lossy().into_owned();
        if path.is_dir() {
            text.push('/');
        }
        urls.push(ListingTableUrl::parse(text).map_err(&failed)?);
    }
    parquet_table(ctx, urls).await.map_err(&failed)
}

/// A table over the `.parquet` files at `urls` (files, or folders of files), its schema read
/// from them.
pub async fn parquet_table(
    ctx: &SessionContext,
    urls: Vec<ListingTableUrl>,
) -> datafusion::error::Result<ListingTable> {
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    ListingTable::try_new(config)
}

/// The table name [`Engine::query_dataset`] gives the dataset it queries.
pub const INPUT_TABLE: &str = "input";

#[cfg(not(feature = "cluster"))]
fn without_cluster(url: &str) -> PipelineError {
    PipelineError::Usage(format!(
        "--cluster {url}: this medtune was built without the `cluster` feature \
         (cargo build --release --features cluster)"
    ))
}

/// Times a chunk's job is submitted again after an engine error on a cluster.
const CLUSTER_JOB_RETRIES: u32 = 2;

async fn map_chunk(
    session: SessionContext,
    table: Arc<ChunkTable>,
    function: Arc<ScalarUDF>,
    settings: String,
    batch_rows: usize,
    retries: u32,
) -> Result<Vec<RecordBatch>> {
    let mut attempt = 0;
    loop {
        let result = map_chunk_once(
            &session,
            table.clone(),
            function.clone(),
            settings.clone(),
            batch_rows,
        )
        .await;
        match result {
            Err(PipelineError::Engine(_)) if attempt < retries => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(2 << attempt)).await;
            }
            other => return other,
        }
    }
}

async fn map_chunk_once(
    session: &SessionContext,
    table: Arc<ChunkTable>,
    function: Arc<ScalarUDF>,
    settings: String,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let failed = query_error("mapping a chunk");
    let columns: Vec<_> = table
        .schema
        .fields()
        .iter()
        .map(|f| col(f.name()))
        .collect();
    let mut args = columns.clone();
    args.push(lit(settings));
    let mut projection = columns;
    projection.push(function.call(args).alias(MAPPED));
    let frame = session.read_table(table).map_err(&failed)?;
    let frame = frame.select(projection).map_err(&failed)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(&failed)?;
    // The same batch boundaries wherever the chunk ran (a cluster's transfer re-cuts batches):
    // the stage writes what it gets, and Parquet pages follow the batches it writes.
    let rows = arrow::compute::concat_batches(&schema, &batches)?;
    Ok((0..rows.num_rows())
        .step_by(batch_rows)
        .map(|offset| rows.slice(offset, batch_rows.min(rows.num_rows() - offset)))
        .collect())
}

/// The rows of [`Engine::map_rows`], in the input's order.
pub struct MappedRows {
    dataset: String,
    rx: tokio::sync::mpsc::Receiver<Result<Vec<RecordBatch>>>,
    pending: std::vec::IntoIter<RecordBatch>,
    clock: Arc<EngineClock>,
}

impl Iterator for MappedRows {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(batch) = self.pending.next() {
                return Some(Ok(batch));
            }
            let waiting = Instant::now();
            let received = self.rx.blocking_recv();
            EngineClock::add(&self.clock.waited_nanos, waiting);
            match received? {
                Ok(batches) => self.pending = batches.into_iter(),
                Err(e) => {
                    return Some(Err(match e {
                        PipelineError::Engine(m) => {
                            PipelineError::Engine(format!("reading `{}`: {m}", self.dataset))
                        }
                        other => other,
                    }))
                }
            }
        }
    }
}
