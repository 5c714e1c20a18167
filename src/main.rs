//! `medtune`: the command-line front end. Parses arguments, draws progress, prints results
//! and maps errors to exit codes (0 success, 2 bad input or config, 1 internal error).

#[cfg(feature = "cluster")]
mod cluster;
mod progress;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use medtune_pipeline::sql::{query_blocking, OutputFormat, QueryOptions};
use medtune_pipeline::{
    Dag, Engine, ErrorClass, PipelineConfig, PipelineError, Place, RunOptions, Runner, Workdir,
};
use medtune_schemas::dataset::PROFILE;
use medtune_stages::evaluate;
use medtune_stages::profile::{self, report::ProfileReport};
use medtune_stages::train::{self, TrainedAdapter};

/// Streaming data pipeline and QLoRA trainer for medical NLP.
#[derive(Parser)]
#[command(name = "medtune", version, about, propagate_version = true)]
struct Cli {
    /// Working folder holding the cache and the catalog.
    #[arg(long, global = true, default_value = ".medtune")]
    workdir: PathBuf,
    /// Map rows and run queries on the Ballista cluster whose scheduler listens at this
    /// address (`medtune scheduler` prints it); the workdir must be a folder every process of
    /// the cluster reads at the same path. Outputs are the same as without it.
    #[arg(long, global = true, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
    /// With --cluster: chunks of rows (jobs) under way on the cluster at once.
    #[arg(long, global = true, value_name = "N", default_value_t = 8)]
    cluster_jobs: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline, or the named stages and what they need, through the cache.
    Run {
        /// Pipeline config (TOML).
        #[arg(long, default_value = "medtune.toml")]
        config: PathBuf,
        /// Run only this stage (and any upstream stage whose output is not cached); repeatable.
        #[arg(long = "stage", value_name = "NAME")]
        stages: Vec<String>,
        /// Recompute the named stages (all stages when none are named) even if cached.
        #[arg(long)]
        force: bool,
    },
    /// Show whether each stage's cached output is fresh, stale (and why) or missing.
    Status {
        /// Pipeline config (TOML).
        #[arg(long, default_value = "medtune.toml")]
        config: PathBuf,
    },
    /// Profile the data (running what the profile needs, through the cache): prints the
    /// report and writes it to `<workdir>/reports/profile.{json,md}`.
    Profile {
        /// Pipeline config (TOML).
        #[arg(long, default_value = "medtune.toml")]
        config: PathBuf,
    },
    /// QLoRA training (the `train` stage and what it needs, through the cache): prints the
    /// summary and where the trained adapter is.
    Train {
        /// Pipeline config (TOML) with a [train] section.
        #[arg(long, default_value = "medtune.toml")]
        config: PathBuf,
        /// Train again even if a trained adapter for these inputs and config is cached.
        #[arg(long)]
        force: bool,
    },
    /// Batched evaluation (the `evaluate` stage and what it needs, through the cache): base and
    /// adapter side by side; prints the headline scores and where the report is.
    Eval {
        /// Pipeline config (TOML) with an [evaluate] section.
        #[arg(long, default_value = "medtune.toml")]
        config: PathBuf,
        /// Evaluate again even if this evaluation is cached.
        #[arg(long)]
        force: bool,
    },
    /// Run a read-only SQL query; every dataset in the catalog is a table named after it.
    Query {
        /// The SQL statement.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print to stderr how long registering the catalog and running the query took.
        #[arg(long)]
        timing: bool,
        /// Print at most this many rows (default for `table`: 1000, since the table is laid
        /// out in memory; `csv` and `json` stream every row unless a limit is given).
        #[arg(long, value_name = "ROWS")]
        limit: Option<usize>,
    },
    /// Start a Ballista scheduler with medtune's row functions; prints the address to pass as
    /// --cluster, then serves until interrupted.
    #[cfg(feature = "cluster")]
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// Seconds without a heartbeat after which an executor is lost and its tasks rerun
        /// elsewhere.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        executor_timeout: u64,
    },
    /// Start a Ballista executor with medtune's row functions, registered with a scheduler;
    /// serves until interrupted.
    #[cfg(feature = "cluster")]
    Executor {
        /// The scheduler (`df://HOST:PORT`).
        #[arg(long, value_name = "df://HOST:PORT")]
        scheduler: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// The host name other processes reach this executor by (default: --bind).
        #[arg(long)]
        external_host: Option<String>,
        /// Port of its Arrow Flight service (results and shuffle data are fetched there).
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// Port of its gRPC service (the scheduler launches tasks there).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once (default: the cores of this machine).
        #[arg(long)]
        slots: Option<usize>,
        /// Folder for shuffle and result files (default: a folder in the system temp folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Seconds between heartbeats to the scheduler (below its --executor-timeout).
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        heartbeat: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn load(config: &Path) -> anyhow::Result<(PipelineConfig, Dag)> {
    let config = PipelineConfig::load(config)?;
    let dag = Dag::new(medtune_stages::build(&config)?)?;
    Ok((config, dag))
}

/// Runs what `options` selects of `dag` through the cache, with progress bars, and prints the
/// run summary.
fn run_and_summarise(
    workdir: &Workdir,
    engine: &Arc<Engine>,
    config: &PipelineConfig,
    dag: Dag,
    options: &RunOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let observer = progress::Bars::default();
    let runner = Runner::new(workdir.clone(), dag, config.settings().clone(), &observer)
        .with_config_path(config.path())
        .with_engine(engine.clone());
    let summaries = runner.run(options)?;
    drop(observer);
    report::print_summary(&summaries, out)?;
    Ok(())
}

/// Runs `stage` of `config` and whatever it needs, as [`run_and_summarise`]. The config must
/// have the stage's section.
fn run_one_stage(
    workdir: &Workdir,
    engine: &Arc<Engine>,
    config: &Path,
    stage: &str,
    force: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (config, dag) = load(config)?;
    if !config.has_section(stage) {
        return Err(config.error(format!("no [{stage}] section")).into());
    }
    let options = RunOptions {
        stages: vec![stage.into()],
        force,
    };
    run_and_summarise(workdir, engine, &config, dag, &options, out)
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    let workdir = Workdir::new(&cli.workdir);
    let place = cli.cluster.map_or(Place::InProcess, Place::Cluster);
    let engine =
        || -> anyhow::Result<Arc<Engine>> { Ok(Arc::new(Engine::at(&place, cli.cluster_jobs)?)) };
    match cli.command {
        Command::Run {
            config,
            stages,
            force,
        } => {
            let (config, dag) = load(&config)?;
            let mut out = std::io::stdout().lock();
            run_and_summarise(
                &workdir,
                &engine()?,
                &config,
                dag,
                &RunOptions { stages, force },
                &mut out,
            )?;
            if let Some(peak) = report::peak_rss_bytes() {
                writeln!(
                    out,
                    "peak memory (RSS): {:.1} MiB",
                    peak as f64 / (1 << 20) as f64
                )?;
            }
        }
        Command::Train { config, force } => {
            let mut out = std::io::stdout().lock();
            run_one_stage(&workdir, &engine()?, &config, train::NAME, force, &mut out)?;
            let artifacts = workdir
                .latest_artifacts(train::NAME)
                .context("the train stage committed no adapter")?;
            report::print_trained(&TrainedAdapter::read(&artifacts)?, &mut out)?;
        }
        Command::Eval { config, force } => {
            let mut out = std::io::stdout().lock();
            run_one_stage(
                &workdir,
                &engine()?,
                &config,
                evaluate::NAME,
                force,
                &mut out,
            )?;
            report::print_evaluation(&workdir, &mut out)?;
        }
        Command::Status { config } => {
            let (config, dag) = load(&config)?;
            let runner = Runner::new(
                workdir.clone(),
                dag,
                config.settings().clone(),
                &medtune_pipeline::Quiet,
            );
            let mut out = std::io::stdout().lock();
            report::print_status(&runner.status()?, &mut out)?;
            report::print_catalog_owner(&workdir, config.path(), &mut out)?;
        }
        Command::Profile { config } => {
            let config = PipelineConfig::load(&config)?;
            let dag = Dag::new(medtune_stages::build_with_profile(&config)?)?;
            let options = RunOptions {
                stages: vec![profile::NAME.into()],
                force: false,
            };
            let mut out = std::io::stdout().lock();
            run_and_summarise(&workdir, &engine()?, &config, dag, &options, &mut out)?;
            let dataset = workdir
                .catalog_datasets()?
                .into_iter()
                .find(|d| d.name == PROFILE)
                .context("the profile stage committed no `profile` dataset")?;
            let profile = ProfileReport::read(&dataset)?;
            for table in profile.tables() {
                writeln!(out, "{table}")?;
            }
            for path in profile.write(workdir.root())? {
                writeln!(out, "wrote {}", path.display())?;
            }
        }
        Command::Query {
            sql,
            format,
            timing,
            limit,
        } => {
            let format = match format {
                Format::Table => OutputFormat::Table,
                Format::Csv => OutputFormat::Csv,
                Format::Json => OutputFormat::Json,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let options = QueryOptions::new(format, limit).on(place.clone());
            let outcome = query_blocking(&workdir, &sql, options, &mut out)?;
            out.flush().context("writing the query result")?;
            if outcome.truncated {
                eprintln!(
                    "medtune: showing the first {} rows; more were not read (raise --limit, \
                     or stream them all with --format csv or json)",
                    outcome.rows
                );
            }
            if timing {
                eprintln!(
                    "catalog {:.1} ms, query {:.1} ms",
                    outcome.timing.catalog.as_secs_f64() * 1e3,
                    outcome.timing.query.as_secs_f64() * 1e3
                );
            }
        }
        #[cfg(feature = "cluster")]
        Command::Scheduler {
            bind,
            port,
            executor_timeout,
        } => cluster::scheduler(bind, port, executor_timeout)?,
        #[cfg(feature = "cluster")]
        Command::Executor {
            scheduler,
            bind,
            external_host,
            flight_port,
            grpc_port,
            slots,
            work_dir,
            heartbeat,
        } => cluster::executor(medtune_cluster::ExecutorOptions {
            scheduler,
            bind_host: bind,
            external_host,
            flight_port,
            grpc_port,
            slots: slots
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            work_dir: work_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("medtune-executor-{}", std::process::id()))
            }),
            heartbeat_interval_seconds: heartbeat,
        })?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("medtune: error: {err:#}");
            let class = err
                .downcast_ref::<PipelineError>()
                .map(PipelineError::class)
                .unwrap_or(ErrorClass::Internal);
            match class {
                ErrorClass::BadInput => ExitCode::from(2),
                ErrorClass::Internal => ExitCode::from(1),
            }
        }
    }
}
