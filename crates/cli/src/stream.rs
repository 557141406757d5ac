//! `ember stream`: a streaming SQL query from a source to a sink, with a progress line
//! per batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ember_driver::Session;
use ember_driver::stream::{
    FileSource, KafkaSource, LogSource, OutputMode, Progress, Source, StartingOffsets, Trigger,
};

#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    /// The source: log:DIR:TOPIC[,TOPIC..] (the embedded log in DIR),
    /// kafka:HOST:PORT:TOPIC[,TOPIC..] (any Kafka-protocol broker), or new files in a
    /// directory: json:DIR, csv:DIR (with a header line) or parquet:DIR, where DIR is a
    /// path or an object store's URL (s3://bucket/path, http(s):// WebDAV, file://).
    #[arg(long, value_name = "SOURCE")]
    from: String,

    /// The columns of json: and csv: files, like "device STRING, t DOUBLE".
    #[arg(long, value_name = "COLUMNS")]
    schema: Option<String>,

    /// At most this many new files per batch (file sources).
    #[arg(long, value_name = "N")]
    max_files_per_trigger: Option<usize>,

    /// The name the query's SQL reads the stream as.
    #[arg(long, default_value = "events")]
    table: String,

    /// The query, over the stream's columns: key, value, topic, partition, offset,
    /// timestamp, timestamp_type.
    #[arg(long)]
    sql: String,

    /// The sink: console, memory, parquet:DIR, json:DIR (a path or an object store's
    /// URL, as for --from) or kafka:HOST:PORT:TOPIC.
    #[arg(long, default_value = "console", value_name = "SINK")]
    to: String,

    #[command(flatten)]
    ui: crate::ui_args::UiArgs,

    /// append, update or complete (Spark's output modes).
    #[arg(long, default_value = "append")]
    output_mode: String,

    /// The checkpoint directory, or an object store's URL (http(s):// for WebDAV,
    /// s3://): restarts continue from it, exactly once.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,

    /// once, available-now, or an interval such as 1s or 500ms.
    #[arg(long, default_value = "available-now")]
    trigger: String,

    /// Where a new query starts: earliest, latest, or Spark's JSON of offsets per
    /// partition, {"topic": {"0": 23, "1": -2}} (-2: earliest, -1: latest).
    #[arg(long, default_value = "earliest")]
    starting_offsets: String,

    /// Most records per batch, over all partitions (at least 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    max_offsets_per_trigger: Option<i64>,

    /// When records the query was to read are gone (the topic deleted and
    /// re-created, the log truncated, retention, starting offsets past the end): true
    /// fails the query naming them; false logs it, counts it in the progress line
    /// and reads the partition on from its earliest offset.
    #[arg(long, default_value_t = true, value_name = "true|false", action = clap::ArgAction::Set)]
    fail_on_data_loss: bool,

    #[arg(long, default_value = "local[*]")]
    master: String,
}

fn trigger(s: &str) -> Result<Trigger> {
    Ok(match s {
        "once" => Trigger::Once,
        "available-now" => Trigger::AvailableNow,
        other => {
            let (n, unit) = other.split_at(
                other
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(other.len()),
            );
            let expected = || {
                format!(
                    "--trigger {other}: expected once, available-now, or an interval such as 1s or 500ms"
                )
            };
            let n: u64 = n.parse().with_context(expected)?;
            if n == 0 {
                bail!("--trigger {other}: the interval must be longer than 0");
            }
            Trigger::ProcessingTime(match unit {
                "ms" => Duration::from_millis(n),
                "s" | "" => Duration::from_secs(n),
                _ => bail!(expected()),
            })
        }
    })
}

async fn source(session: &Session, args: &StreamArgs) -> Result<Arc<dyn Source>> {
    let starting = StartingOffsets::parse(&args.starting_offsets)?;
    if args.max_files_per_trigger == Some(0) {
        bail!("--max-files-per-trigger 0: must be at least 1");
    }
    if args.table.trim().is_empty() {
        bail!("--table: the stream needs a name");
    }
    let topics = |list: &str| -> Result<Vec<String>> {
        let topics: Vec<String> = list.split(',').map(|t| t.trim().to_string()).collect();
        if topics.iter().any(String::is_empty) {
            bail!("--from {}: a topic name is empty", args.from);
        }
        Ok(topics)
    };
    let offsets_source = args.from.starts_with("log:") || args.from.starts_with("kafka:");
    if !offsets_source {
        if args.max_offsets_per_trigger.is_some() {
            bail!(
                "--max-offsets-per-trigger is for log: and kafka: sources (files: --max-files-per-trigger)"
            );
        }
        if args.starting_offsets != "earliest" {
            bail!("--starting-offsets is for log: and kafka: sources");
        }
    } else if args.max_files_per_trigger.is_some() {
        bail!(
            "--max-files-per-trigger is for file sources (log:, kafka:: --max-offsets-per-trigger)"
        );
    }
    let max_offsets = |max: i64| {
        if max < 1 {
            bail!("--max-offsets-per-trigger {max}: must be at least 1 (records per batch)");
        }
        Ok(max)
    };
    if let Some(rest) = args.from.strip_prefix("log:") {
        let (dir, list) = rest
            .rsplit_once(':')
            .context("--from log:DIR:TOPIC[,TOPIC..]")?;
        if dir.is_empty() {
            bail!("--from {}: expected log:DIR:TOPIC[,TOPIC..]", args.from);
        }
        let log = ember_log::Log::open(dir, ember_log::LogConfig::default())
            .with_context(|| format!("opening the log in {dir}"))?;
        let mut s = LogSource::new(log, topics(list)?)
            .starting_offsets(starting)
            .fail_on_data_loss(args.fail_on_data_loss);
        if let Some(m) = args.max_offsets_per_trigger {
            s = s.max_offsets_per_trigger(max_offsets(m)?)?;
        }
        return Ok(Arc::new(s));
    }
    if let Some(rest) = args.from.strip_prefix("kafka:") {
        let (servers, list) = rest
            .rsplit_once(':')
            .context("--from kafka:HOST:PORT:TOPIC[,TOPIC..]")?;
        if servers.is_empty() {
            bail!(
                "--from {}: expected kafka:HOST:PORT:TOPIC[,TOPIC..]",
                args.from
            );
        }
        let mut s = KafkaSource::new(servers, topics(list)?)
            .starting_offsets(starting)
            .fail_on_data_loss(args.fail_on_data_loss);
        if let Some(m) = args.max_offsets_per_trigger {
            s = s.max_offsets_per_trigger(max_offsets(m)?)?;
        }
        return Ok(Arc::new(s));
    }
    if let Some((kind, dir)) = args.from.split_once(':')
        && matches!(kind, "json" | "csv" | "parquet")
    {
        let schema = || {
            args.schema
                .as_deref()
                .context("--from json:/csv: needs --schema")
        };
        let dir = session.dir(dir)?;
        let mut s = match kind {
            "json" => FileSource::json(dir, schema()?)?,
            "csv" => FileSource::csv(dir, schema()?, true)?,
            _ => FileSource::parquet(dir).await?,
        };
        if let Some(n) = args.max_files_per_trigger {
            s = s.max_files_per_trigger(n);
        }
        return Ok(Arc::new(s));
    }
    bail!(
        "--from {}: expected log:DIR:TOPIC, kafka:HOST:PORT:TOPIC, json:DIR, csv:DIR or parquet:DIR",
        args.from
    )
}

/// A batch's line: rows in and out, and what would otherwise go unseen: rows
/// dropped as late (behind the watermark) and data lost (skipped, with
/// `--fail-on-data-loss false`).
fn progress_line(p: &Progress) -> String {
    let mut line = format!(
        "batch {}: {} rows in, {} rows out",
        p.batch_id, p.num_input_rows, p.sink.num_output_rows
    );
    if p.late_rows_dropped > 0 {
        line += &format!(", {} late rows dropped", p.late_rows_dropped);
    }
    let source = &p.source;
    if source.data_loss_events > 0 {
        line += &format!(
            ", data loss in {} partition(s) ({} offsets known skipped), read on from the earliest offset",
            source.data_loss_events, source.offsets_lost
        );
    }
    line + &format!(
        ", {} ms ({} rows/s)",
        p.duration_ms.trigger_execution, p.processed_rows_per_second
    )
}

pub async fn run(args: StreamArgs) -> Result<()> {
    let session = args
        .ui
        .apply(
            Session::builder()
                .master(&args.master)
                .app_name("ember stream"),
        )
        .build()?;
    if let Some(ui) = session.ui_address() {
        eprintln!("web UI at http://{ui}/");
    }
    session
        .read_stream()
        .register(&args.table, source(&session, &args).await?)?;
    let df = session.sql(&args.sql).await?;
    let writer = df
        .write_stream()
        .query_name(&args.table)
        .checkpoint(&args.checkpoint)
        .trigger(trigger(&args.trigger)?);
    let writer = match args.to.split_once(':') {
        None if args.to == "console" => writer.console(),
        None if args.to == "memory" => writer.memory(),
        Some(("parquet", dir)) if !dir.is_empty() => writer.parquet(dir),
        Some(("json", dir)) if !dir.is_empty() => writer.json(dir),
        Some(("kafka", rest)) => match rest.rsplit_once(':') {
            Some((bootstrap, topic)) if !bootstrap.is_empty() && !topic.is_empty() => {
                writer.kafka(bootstrap, topic)
            }
            _ => bail!("--to {}: expected kafka:HOST:PORT:TOPIC", args.to),
        },
        _ => bail!(
            "--to {}: expected console, memory, parquet:DIR, json:DIR or kafka:HOST:PORT:TOPIC",
            args.to
        ),
    };
    let writer = writer.output_mode(match args.output_mode.to_ascii_lowercase().as_str() {
        "append" => OutputMode::Append,
        "update" => OutputMode::Update,
        "complete" => OutputMode::Complete,
        other => bail!("--output-mode {other}: expected append, update or complete"),
    });
    let query = writer.start().await?;
    eprintln!(
        "streaming query {} (run {}) started",
        query.id(),
        query.run_id()
    );
    // The first batch id not printed yet.
    let mut next = 0u64;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let ended = tokio::select! {
            ended = query.await_termination(Some(Duration::from_millis(200))) => ended?,
            _ = &mut interrupted => {
                eprintln!("stopping after the batch in progress");
                query.stop().await?;
                true
            }
        };
        for p in query.recent_progress() {
            if p.batch_id < next {
                continue;
            }
            eprintln!("{}", progress_line(&p));
            next = p.batch_id + 1;
        }
        if ended {
            return Ok(());
        }
    }
}
