//! `ember executor`: an executor process of a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ember_core::batch_fn::BatchFnRegistry;
use ember_executor::{ExecutorConfig, parse_size};

#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The driver's URL, e.g. http://127.0.0.1:7077.
    #[arg(long, value_name = "URL")]
    driver: String,

    /// Task slots.
    #[arg(long, default_value_t = 1)]
    cores: usize,

    /// Memory offered to tasks, e.g. 4g.
    #[arg(long, default_value = "4g", value_parser = parse_memory)]
    memory: u64,

    /// Directory for shuffle files.
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,

    /// Address of this executor's gRPC service (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("expected a size such as 4g or 512m, got '{s}'"))
}

/// Runs until the driver stops it, or Ctrl-C / SIGTERM.
pub async fn run(args: ExecutorArgs) -> Result<()> {
    let mut config = ExecutorConfig::new(&args.driver, &args.work_dir);
    config.cores = args.cores;
    config.memory_bytes = args.memory;
    config.bind = args.bind;
    let executor = ember_executor::start(config, Arc::new(BatchFnRegistry::default()))
        .await
        .context("starting the executor")?;
    eprintln!(
        "executor {} serving at {} ({} cores), driver {}",
        executor.executor_id, executor.address, args.cores, args.driver
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = executor.stop_handle();
    let signals = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        stop.stop();
    });
    let stopped = executor.wait().await;
    signals.abort();
    stopped?;
    Ok(())
}
