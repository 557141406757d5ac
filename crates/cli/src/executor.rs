//! `ember executor`: an executor process of a cluster.

use anyhow::{Context, Result, bail};
use ember_core::EmberConfig;
use ember_core::rpc::Liveness;
use ember_executor::{ExecutorConfig, Registry, parse_size};

use crate::security::SecurityArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

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

    /// Serve Prometheus /metrics at this address (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_bind: Option<SocketAddr>,

    /// The host the driver and other executors reach this one at, when --bind is not
    /// it (e.g. the pod IP when binding 0.0.0.0).
    #[arg(long, value_name = "HOST", env = "EMBER_ADVERTISE_HOST")]
    advertise_host: Option<String>,

    #[command(flatten)]
    security: SecurityArgs,

    /// Set an `ember.rpc.*` key for this process's connections, e.g.
    /// ember.rpc.keepalive_timeout=20 (repeatable; other settings come with each task).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
    config: Vec<(String, String)>,
}

/// The process's connection settings: the defaults and its `-c ember.rpc.*` flags.
fn liveness(config: &[(String, String)]) -> Result<Liveness> {
    let mut ember = EmberConfig::default();
    for (key, value) in config {
        if !key.starts_with("ember.rpc.") {
            bail!(
                "{key}: an executor takes only ember.rpc.* keys; a job's other settings come with its tasks"
            );
        }
        ember.set_key(key, value)?;
    }
    Ok(Liveness::from_config(&ember))
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("expected a size such as 4g or 512m, got '{s}'"))
}

/// Runs until the driver stops it, or Ctrl-C / SIGTERM (which finish or hand back the
/// running tasks first).
pub async fn run(args: ExecutorArgs) -> Result<()> {
    let mut config = ExecutorConfig::new(&args.driver, &args.work_dir);
    config.cores = args.cores;
    config.memory_bytes = args.memory;
    config.bind = args.bind;
    config.metrics_bind = args.metrics_bind;
    config.advertise_host = args.advertise_host;
    config.security = args
        .security
        .security()?
        .with_liveness(liveness(&args.config)?);
    eprintln!(
        "executor starting ({} cores), driver {}",
        args.cores, args.driver
    );
    ember_executor::run(config, Registry::new())
        .await
        .context("running the executor")
}
