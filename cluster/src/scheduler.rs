//! `medtune scheduler`: a Ballista scheduler whose sessions know medtune's functions.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::utils::default_session_builder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use medtune_pipeline::engine::cluster::{LogicalCodec, PhysicalCodec};
use medtune_pipeline::RowStages;
use medtune_pipeline::{PipelineError, Result};

/// How a scheduler is started.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on.
    pub bind_host: String,
    /// Port to listen on (0: any free port, reported to `listening`).
    pub port: u16,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks are
    /// run elsewhere.
    pub executor_timeout_seconds: u64,
}

fn failed(what: &'static str) -> impl Fn(ballista_core::error::BallistaError) -> PipelineError {
    move |e| PipelineError::Engine(format!("scheduler: {what}: {e}"))
}

/// Runs a scheduler until the process ends; `listening` is told the address once it accepts
/// connections. Its sessions plan with `functions` and the chunk jobs of `stages`.
pub async fn run_scheduler(
    options: SchedulerOptions,
    functions: Vec<ScalarUDF>,
    stages: RowStages,
    listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((options.bind_host.as_str(), options.port))
        .await
        .map_err(|e| {
            PipelineError::Engine(format!(
                "scheduler: listening on {}:{}: {e}",
                options.bind_host, options.port
            ))
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| PipelineError::Engine(format!("scheduler: {e}")))?;
    let functions = Arc::new(functions);
    let session_builder = Arc::new(move |config: SessionConfig| {
        let state = default_session_builder(config)?;
        let mut state = state;
        for function in functions.iter() {
            state.register_udf(Arc::new(function.clone()))?;
        }
        Ok(state)
    });
    let timeout = options.executor_timeout_seconds.max(2);
    let mut config = SchedulerConfig::default()
        .with_hostname(address.ip().to_string())
        .with_port(address.port())
        .with_override_session_builder(session_builder);
    config.executor_timeout_seconds = timeout;
    config.expire_dead_executor_interval_seconds = (timeout / 2).clamp(1, 15);
    config.override_logical_codec = Some(Arc::new(LogicalCodec::new(stages.clone())));
    config.override_physical_codec = Some(Arc::new(PhysicalCodec::new(stages)));
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed("setting up its state"))?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(failed("starting"))?;
    listening(address);
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(failed("serving"))
}
