//! `medtune executor`: a Ballista executor that can run medtune's functions.

use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use datafusion::logical_expr::ScalarUDF;
use medtune_pipeline::engine::cluster::{scheduler_address, LogicalCodec, PhysicalCodec};
use medtune_pipeline::RowStages;
use medtune_pipeline::{PipelineError, Result};

/// How an executor is started.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler to register with (`df://HOST:PORT`).
    pub scheduler: String,
    /// Address to listen on.
    pub bind_host: String,
    /// The host name other processes reach it by (`None`: `bind_host`).
    pub external_host: Option<String>,
    /// Port of its Arrow Flight service (results and shuffle data are fetched there).
    pub flight_port: u16,
    /// Port of its gRPC service (the scheduler launches tasks there).
    pub grpc_port: u16,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Folder for its shuffle and result files.
    pub work_dir: PathBuf,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_interval_seconds: u64,
}

/// Runs an executor until the process is interrupted; it can run `functions` and the chunk
/// jobs of `stages`.
pub async fn run_executor(
    options: ExecutorOptions,
    functions: Vec<ScalarUDF>,
    stages: RowStages,
) -> Result<()> {
    let (scheduler_host, scheduler_port) = scheduler_address(&options.scheduler)?;
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| PipelineError::io(&options.work_dir, e))?;
    let mut registry = BallistaFunctionRegistry::default();
    for function in functions {
        registry
            .scalar_functions
            .insert(function.name().to_string(), Arc::new(function));
    }
    let config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.flight_port,
        grpc_port: options.grpc_port,
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.slots.max(1),
        work_dir: Some(options.work_dir.display().to_string()),
        executor_heartbeat_interval_seconds: options.heartbeat_interval_seconds.max(1),
        print_thread_info: false,
        override_function_registry: Some(Arc::new(registry)),
        override_logical_codec: Some(Arc::new(LogicalCodec::new(stages.clone()))),
        override_physical_codec: Some(Arc::new(PhysicalCodec::new(stages))),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| PipelineError::Engine(format!("executor: {e}")))
}
