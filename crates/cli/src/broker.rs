//! `ember broker`: the embedded log served over the Kafka protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ember_log::broker::{Broker, BrokerConfig};
use ember_log::{Durability, Log, LogConfig};

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bind: SocketAddr,

    /// Where the log keeps its topics.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,

    /// Host clients are told to connect to (default: the --bind address).
    #[arg(long, value_name = "HOST")]
    advertised_host: Option<String>,

    /// When appends reach the disk: every-append, never, or an interval like 1000ms.
    #[arg(long, default_value = "1000ms", value_parser = parse_durability)]
    durability: Durability,

    /// Create topics on first use (produce or metadata request).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,

    /// Partitions of auto-created topics.
    #[arg(long, default_value_t = 1)]
    default_partitions: i32,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    Durability::parse(s).map_err(|e| e.to_string())
}

/// Serves until Ctrl-C or SIGTERM, then syncs the log.
pub async fn run(args: BrokerArgs) -> Result<()> {
    let config = LogConfig {
        durability: args.durability,
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.default_partitions,
        ..LogConfig::default()
    };
    let data_dir = args.data_dir.clone();
    let log = tokio::task::spawn_blocking(move || Log::open(&data_dir, config))
        .await?
        .with_context(|| format!("opening the log in {}", args.data_dir.display()))?;
    let maintenance = log.spawn_maintenance(Duration::from_secs(1));
    let mut broker_config = BrokerConfig::new(args.bind);
    broker_config.advertised_host = args.advertised_host;
    let broker = Broker::start(log.clone(), broker_config).await?;
    eprintln!(
        "broker listening at {} (data in {})",
        broker.address,
        args.data_dir.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    broker.stop();
    maintenance.abort();
    log.sync()?;
    eprintln!("broker stopped");
    Ok(())
}
