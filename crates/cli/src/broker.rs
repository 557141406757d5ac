//! `ember broker`: the embedded log served over the Kafka protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

    /// Largest request a client may send, in bytes (Kafka's socket.request.max.bytes);
    /// a bigger frame closes its connection.
    #[arg(long, default_value_t = ember_log::broker::DEFAULT_MAX_REQUEST_BYTES,
          value_parser = parse_request_bytes)]
    max_request_bytes: usize,

    /// Serve Prometheus /metrics (bytes in and out, consumer group lag) here.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_bind: Option<SocketAddr>,
}

/// A request size limit: from 1 KiB (a Metadata request must fit) to 2 GiB (a frame's
/// size is an i32).
fn parse_request_bytes(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1024..=i32::MAX as usize).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}': expected a byte count from 1024 to {}",
            i32::MAX
        )),
    }
}

/// The broker's `/metrics`: bytes in and out, requests, and each group's lag.
fn metrics_text(broker: &Broker) -> String {
    use ember_core::metrics::Exposition;
    use std::sync::atomic::Ordering::Relaxed;
    let t = broker.traffic();
    let mut e = Exposition::default();
    e.counter(
        "ember_broker_bytes_in_total",
        "Bytes of Produce requests received.",
        &[(&[], t.bytes_in.load(Relaxed) as f64)],
    );
    e.counter(
        "ember_broker_bytes_out_total",
        "Bytes of Fetch responses sent.",
        &[(&[], t.bytes_out.load(Relaxed) as f64)],
    );
    e.counter(
        "ember_broker_requests_total",
        "Requests served.",
        &[(&[], t.requests.load(Relaxed) as f64)],
    );
    let lags = broker.group_lags();
    let labels: Vec<(String, String, String, f64)> = lags
        .iter()
        .map(|l| {
            (
                l.group.clone(),
                l.topic.clone(),
                l.partition.to_string(),
                l.lag as f64,
            )
        })
        .collect();
    let samples: Vec<([(&str, &str); 3], f64)> = labels
        .iter()
        .map(|(g, t, p, v)| {
            (
                [
                    ("group", g.as_str()),
                    ("topic", t.as_str()),
                    ("partition", p.as_str()),
                ],
                *v,
            )
        })
        .collect();
    let refs: Vec<(&[(&str, &str)], f64)> = samples.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.gauge(
        "ember_broker_consumer_lag",
        "A group's lag on a partition: end offset minus committed offset.",
        &refs,
    );
    e.finish()
}

/// Serves the broker's `/metrics` at `bind`.
async fn serve_metrics(bind: SocketAddr, broker: Arc<Broker>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind} for /metrics"))?;
    eprintln!(
        "broker metrics at http://{}/metrics",
        listener.local_addr()?
    );
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let broker = broker.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    metrics_text(&broker),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the broker's metrics server stopped: {e}");
        }
    });
    Ok(())
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
    broker_config.max_request_bytes = args.max_request_bytes;
    let broker = Arc::new(Broker::start(log.clone(), broker_config).await?);
    eprintln!(
        "broker listening at {} (data in {})",
        broker.address,
        args.data_dir.display()
    );
    if let Some(bind) = args.metrics_bind {
        serve_metrics(bind, broker.clone()).await?;
    }
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
