//! `medtune scheduler` and `medtune executor`: Ballista processes with medtune's row functions.

use std::io::Write;

use medtune_cluster::{run_executor, run_scheduler, ExecutorOptions, SchedulerOptions};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Serves a scheduler; prints `medtune scheduler listening on df://HOST:PORT` once it accepts
/// connections.
pub fn scheduler(bind: String, port: u16, executor_timeout_seconds: u64) -> anyhow::Result<()> {
    let options = SchedulerOptions {
        bind_host: bind,
        port,
        executor_timeout_seconds,
    };
    let listening = |address: std::net::SocketAddr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "medtune scheduler listening on df://{address}");
        let _ = out.flush();
    };
    runtime()?.block_on(run_scheduler(
        options,
        medtune_stages::row_functions(),
        medtune_stages::row_stages(),
        listening,
    ))?;
    Ok(())
}

/// Serves an executor until interrupted.
pub fn executor(options: ExecutorOptions) -> anyhow::Result<()> {
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "medtune executor on {}:{} (tasks on gRPC port {}), {} slots, work dir {}, \
             scheduler {}",
            options
                .external_host
                .as_deref()
                .unwrap_or(&options.bind_host),
            options.flight_port,
            options.grpc_port,
            options.slots,
            options.work_dir.display(),
            options.scheduler
        )?;
        out.flush()?;
    }
    runtime()?.block_on(run_executor(
        options,
        medtune_stages::row_functions(),
        medtune_stages::row_stages(),
    ))?;
    Ok(())
}
