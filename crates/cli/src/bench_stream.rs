//! `ember bench stream`: the IoT query of `examples/iot_stream.rs` (JSON readings keyed
//! by device in the embedded log → `parse_json` → 10-second tumbling average and
//! maximum per device with a 5-second watermark), printed as JSON.
//!
//! - Throughput: a backlog of readings, written before the query starts, read with
//!   `Trigger::AvailableNow` in batches of `--max-per-batch`; events per second from
//!   `start()` to the last commit, JSON parsing and state included.
//! - Latency: a producer writes `--rate` readings per second, as they happen, for
//!   `--seconds`, while the query runs every `--trigger`; the batch durations (from
//!   planning the batch to its commit) give p50 and p99.
//! - Join: `--join-events` ad impressions and as many clicks, each click 0 to 9 s
//!   after its impression, in two topics; a stream-stream join of clicks to
//!   impressions within 20 s (10-second watermarks) reads them with
//!   `Trigger::AvailableNow`, `--join-max-per-batch` offsets of each topic per batch;
//!   events per second and the state's largest size.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ember::functions::{avg, col, max, window};
use ember::stream::{LogSource, OutputMode, StreamingQuery, Trigger};
use ember::{DataFrame, Session};
use ember_log::{Durability, KeyHash, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct StreamBenchArgs {
    /// Readings in the throughput backlog.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Where the query runs.
    #[arg(long, default_value = "local[2]")]
    master: String,
    /// Distinct devices (keys).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Offsets per batch in the throughput run.
    #[arg(long, default_value_t = 500_000)]
    max_per_batch: i64,
    /// Readings per second in the latency run.
    #[arg(long, default_value_t = 10_000)]
    rate: usize,
    /// Length of the latency run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Trigger interval of the latency run, like `100ms`.
    #[arg(long, default_value = "100ms")]
    trigger: String,
    /// Impressions (and as many clicks) in the join run; 0 skips it.
    #[arg(long, default_value_t = 500_000)]
    join_events: usize,
    /// Offsets of each topic per batch in the join run.
    #[arg(long, default_value_t = 50_000)]
    join_max_per_batch: i64,
}

#[derive(Debug, Serialize)]
struct Report {
    query: &'static str,
    master: String,
    throughput: ThroughputReport,
    latency: LatencyReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<JoinReport>,
}

#[derive(Debug, Serialize)]
struct JoinReport {
    query: &'static str,
    /// Impressions and clicks together.
    events: usize,
    batches: usize,
    seconds: f64,
    events_per_s: f64,
    matches_out: usize,
    max_state_rows: usize,
    p50_batch_ms: u64,
}

#[derive(Debug, Serialize)]
struct ThroughputReport {
    events: usize,
    batches: usize,
    seconds: f64,
    events_per_s: f64,
    windows_out: usize,
    late_rows: usize,
    produce_seconds: f64,
}

#[derive(Debug, Serialize)]
struct LatencyReport {
    rate: usize,
    seconds: u64,
    trigger_ms: i64,
    events: u64,
    batches: usize,
    p50_batch_ms: u64,
    p99_batch_ms: u64,
    max_batch_ms: u64,
    windows_out: usize,
}

const QUERY: &str = "parse_json(value) → with_watermark(ts, 5 s) → group by window(ts, 10 s), device → avg, max of temperature";

/// The IoT query over a stream of the log's records.
fn iot_query(stream: DataFrame) -> Result<DataFrame> {
    Ok(stream
        .select_expr(&["value"])?
        .parse_json(
            "value",
            "device STRING, ts TIMESTAMP, temperature DOUBLE",
            "PERMISSIVE",
        )?
        .with_watermark("ts", "5 seconds")?
        .group_by(vec![
            window(col("ts"), "10 seconds").alias("w"),
            col("device"),
        ])
        .agg(vec![
            avg(col("temperature")).alias("avg_temp"),
            max(col("temperature")).alias("max_temp"),
        ])?)
}

fn reading(i: usize, devices: usize, ts: i64) -> (String, String) {
    let device = format!("d{:03}", i % devices);
    let temperature = 15.0 + ((i * 7) % 200) as f64 / 10.0;
    let json = format!(r#"{{"device":"{device}","ts":{ts},"temperature":{temperature}}}"#);
    (device, json)
}

fn producer(log: &Arc<Log>) -> Result<Arc<Producer>> {
    Ok(Producer::new(
        log.clone(),
        ProducerConfig {
            partitioner: Arc::new(KeyHash::default()),
            ..ProducerConfig::default()
        },
    )?)
}

/// Starts the query with a sink that counts the rows it gets.
async fn start(
    session: &Session,
    source: LogSource,
    trigger: Trigger,
    checkpoint: std::path::PathBuf,
    rows_out: Arc<AtomicUsize>,
) -> Result<StreamingQuery> {
    let stream = session.read_stream().source(Arc::new(source))?;
    Ok(iot_query(stream)?
        .write_stream()
        .output_mode(OutputMode::Append)
        .foreach_batch(move |df, _batch| {
            let rows_out = rows_out.clone();
            async move {
                rows_out.fetch_add(df.count().await?, Ordering::Relaxed);
                Ok(())
            }
        })
        .checkpoint(checkpoint)
        .trigger(trigger)
        .start()
        .await?)
}

pub async fn run(args: StreamBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let log = Log::open(
        tmp.path().join("log"),
        LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        },
    )?;
    let session = Session::builder().master(&args.master).build()?;

    // Throughput over a backlog.
    log.create_topic("backlog", args.partitions, None)?;
    let produce = Instant::now();
    let p = producer(&log)?;
    let base = 1_767_225_600_000i64;
    for i in 0..args.events {
        let (device, json) = reading(i, args.devices, base + i as i64);
        p.send(ProducerRecord::new("backlog", json).key(device))?;
    }
    p.flush();
    let produce_seconds = produce.elapsed().as_secs_f64();
    let rows_out = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let q = start(
        &session,
        LogSource::new(log.clone(), vec!["backlog".into()])
            .max_offsets_per_trigger(args.max_per_batch)?,
        Trigger::AvailableNow,
        tmp.path().join("backlog-checkpoint"),
        rows_out.clone(),
    )
    .await?;
    q.await_termination(None).await?;
    let seconds = began.elapsed().as_secs_f64();
    let batches = q.recent_progress().len();
    let throughput = ThroughputReport {
        events: args.events,
        batches,
        seconds: round(seconds),
        events_per_s: (args.events as f64 / seconds).round(),
        windows_out: rows_out.load(Ordering::Relaxed),
        late_rows: q
            .recent_progress()
            .iter()
            .map(|p| p.late_rows_dropped)
            .sum(),
        produce_seconds: round(produce_seconds),
    };

    // Batch durations at a steady rate.
    let trigger_ms = ember_core::event_time::parse_duration(&args.trigger)?;
    log.create_topic("live", args.partitions, None)?;
    let rows_out = Arc::new(AtomicUsize::new(0));
    let q = start(
        &session,
        LogSource::new(log.clone(), vec!["live".into()]),
        Trigger::ProcessingTime(Duration::from_millis(trigger_ms as u64)),
        tmp.path().join("live-checkpoint"),
        rows_out.clone(),
    )
    .await?;
    let p = producer(&log)?;
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate / 100).max(1);
    let began = Instant::now();
    let mut sent = 0usize;
    let mut ticks = tokio::time::interval(tick);
    while began.elapsed() < Duration::from_secs(args.seconds) {
        ticks.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        for _ in 0..per_tick {
            let (device, json) = reading(sent, args.devices, now);
            p.send(ProducerRecord::new("live", json).key(device))?;
            sent += 1;
        }
        p.flush();
    }
    q.process_all_available().await?;
    q.stop().await?;
    let progress: Vec<_> = q
        .recent_progress()
        .into_iter()
        .filter(|p| p.num_input_rows > 0)
        .collect();
    let mut durations: Vec<u64> = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .collect();
    durations.sort_unstable();
    let pct = |q: f64| -> u64 {
        if durations.is_empty() {
            return 0;
        }
        durations[((durations.len() - 1) as f64 * q).round() as usize]
    };
    let latency = LatencyReport {
        rate: args.rate,
        seconds: args.seconds,
        trigger_ms,
        events: progress.iter().map(|p| p.num_input_rows).sum(),
        batches: progress.len(),
        p50_batch_ms: pct(0.5),
        p99_batch_ms: pct(0.99),
        max_batch_ms: durations.last().copied().unwrap_or(0),
        windows_out: rows_out.load(Ordering::Relaxed),
    };
    let join = match args.join_events {
        0 => None,
        n => Some(join_throughput(&session, &log, n, args.join_max_per_batch, tmp.path()).await?),
    };
    let report = Report {
        query: QUERY,
        master: args.master,
        throughput,
        latency,
        join,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

const JOIN_QUERY: &str =
    "impressions ⋈ clicks on ad, click within 20 s of the impression, 10-second watermarks";

/// Impression `i` (`ad{i}` at base + i ms) and its click, 0 to 9 s later.
fn ad_events(i: usize, base: i64) -> (String, String, String) {
    let ad = format!("ad{i:07}");
    let it = base + i as i64;
    let ct = it + (i % 10) as i64 * 1000;
    (
        format!(r#"{{"ad":"{ad}","it":{it}}}"#),
        format!(r#"{{"ad":"{ad}","ct":{ct}}}"#),
        ad,
    )
}

/// The join run: a backlog of impressions and clicks read by a stream-stream join.
async fn join_throughput(
    session: &Session,
    log: &Arc<Log>,
    events: usize,
    max_per_batch: i64,
    dir: &std::path::Path,
) -> Result<JoinReport> {
    use ember::functions::lit;
    for topic in ["impressions", "clicks"] {
        log.create_topic(topic, 4, None)?;
    }
    let p = producer(log)?;
    let base = 1_767_225_600_000i64;
    for i in 0..events {
        let (impression, click, ad) = ad_events(i, base);
        p.send(ProducerRecord::new("impressions", impression).key(ad.clone()))?;
        p.send(ProducerRecord::new("clicks", click).key(ad))?;
    }
    p.flush();
    let side = |topic: &str, schema: &str, time: &str, alias: &str| -> Result<DataFrame> {
        let source = LogSource::new(log.clone(), vec![topic.into()])
            .max_offsets_per_trigger(max_per_batch)?;
        Ok(session
            .read_stream()
            .source(Arc::new(source))?
            .select_expr(&["value"])?
            .parse_json("value", schema, "PERMISSIVE")?
            .with_watermark(time, "10 seconds")?
            .alias(alias)?)
    };
    let impressions = side("impressions", "ad STRING, it TIMESTAMP", "it", "i")?;
    let clicks = side("clicks", "ad STRING, ct TIMESTAMP", "ct", "c")?;
    let twenty = lit(datafusion::common::ScalarValue::new_interval_mdn(
        0,
        0,
        20_000_000_000,
    ));
    let rows_out = Arc::new(AtomicUsize::new(0));
    let counted = rows_out.clone();
    let began = Instant::now();
    let q = impressions
        .join_on(
            &clicks,
            vec![
                col("i.ad").eq(col("c.ad")),
                col("c.ct").between(col("i.it"), col("i.it") + twenty),
            ],
            ember::JoinType::Inner,
        )?
        .select_expr(&["i.ad", "it", "ct"])?
        .write_stream()
        .output_mode(OutputMode::Append)
        .foreach_batch(move |df, _batch| {
            let rows_out = counted.clone();
            async move {
                rows_out.fetch_add(df.count().await?, Ordering::Relaxed);
                Ok(())
            }
        })
        .checkpoint(dir.join("join-checkpoint"))
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    q.await_termination(None).await?;
    let seconds = began.elapsed().as_secs_f64();
    let progress = q.recent_progress();
    let mut durations: Vec<u64> = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .collect();
    durations.sort_unstable();
    Ok(JoinReport {
        query: JOIN_QUERY,
        events: 2 * events,
        batches: progress.len(),
        seconds: round(seconds),
        events_per_s: (2.0 * events as f64 / seconds).round(),
        matches_out: rows_out.load(Ordering::Relaxed),
        max_state_rows: progress
            .iter()
            .map(|p| p.state.rows_total)
            .max()
            .unwrap_or(0),
        p50_batch_ms: durations.get(durations.len() / 2).copied().unwrap_or(0),
    })
}
