//! IoT readings through the embedded log into a windowed streaming query.
//!
//! ```text
//! cargo run -p ember-cli --example iot_stream [-- OUT_DIR] [--influxdb http://127.0.0.1:8086]
//! ```
//!
//! A producer writes JSON sensor readings `{device, ts, temperature}` to the embedded
//! log's `sensors` topic, keyed by device (same device, same partition, order kept),
//! while two streaming queries compute each device's 10-second tumbling average and
//! maximum with a 5-second watermark: one prints the windows as they close, the other
//! writes them to Parquet (exactly once) under OUT_DIR (default: a temporary folder),
//! which is read back at the end. One reading arrives too late and is dropped.
//! With `--influxdb URL`, a third query writes the windows to InfluxDB (database
//! `ember`, measurement `iot`, tag `device`, fields `avg_temp` and `max_temp`) and
//! reports every query's progress there (measurement `ember_streaming`), for the
//! Grafana dashboard in `deploy/grafana/`. With OUT_DIR, the checkpoints live there
//! too, so a second run resumes instead of writing the windows again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ember_driver::Session;
use ember_driver::functions::{avg, col, get_field, max, window};
use ember_driver::stream::{InfluxConfig, Trigger};
use ember_log::{KeyHash, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

const DEVICES: [&str; 4] = ["boiler", "fridge", "attic", "garage"];
/// Event time of the first reading: 2026-01-01T00:00:00Z, in ms (with InfluxDB: a
/// minute ago, on a 10-second boundary, so that a dashboard of the last minutes
/// shows the windows next to the queries' progress).
const START_MS: i64 = 1_767_225_600_000;

#[tokio::main]
async fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut args = std::env::args().skip(1);
    let (mut out_dir, mut influxdb) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--influxdb" => influxdb = Some(args.next().context("--influxdb needs a URL")?),
            _ => out_dir = Some(std::path::PathBuf::from(arg)),
        }
    }
    let state = out_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let start_ms = match influxdb {
        None => START_MS,
        Some(_) => {
            let now = chrono::Utc::now().timestamp_millis() - 60_000;
            now - now % 10_000
        }
    };
    let out = match &out_dir {
        Some(dir) => dir.join("windows"),
        None => tmp.path().join("windows"),
    };
    // With OUT_DIR the log lives there too: a second run finds the readings there,
    // sends none, and its queries resume from their checkpoints.
    let log = Log::open(state.join("log"), LogConfig::default())?;
    let fresh = log.topic("sensors").is_err();
    if fresh {
        log.create_topic("sensors", 3, None)?;
    }
    let producer = Producer::new(
        log.clone(),
        ProducerConfig {
            partitioner: Arc::new(KeyHash::default()),
            ..ProducerConfig::default()
        },
    )?;

    let session = Session::builder().master("local[2]").build()?;
    let windows = || -> Result<_> {
        Ok(session
            .read_stream()
            .log(log.clone(), &["sensors"])?
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
            ])?
            .select(vec![
                get_field(col("w"), "start").alias("window_start"),
                get_field(col("w"), "end").alias("window_end"),
                col("device"),
                col("avg_temp"),
                col("max_temp"),
            ])?)
    };
    let trigger = Trigger::ProcessingTime(Duration::from_millis(300));
    let console = windows()?
        .write_stream()
        .console()
        .checkpoint(state.join("console-checkpoint"))
        .trigger(trigger)
        .start()
        .await?;
    let files = windows()?
        .write_stream()
        .parquet(&out)
        .checkpoint(state.join("parquet-checkpoint"))
        .trigger(trigger)
        .start()
        .await?;
    // Windows as points for Grafana, and every batch's progress.
    let influx = match &influxdb {
        Some(url) => {
            let options = |measurement: &str| -> Vec<(String, String)> {
                [
                    ("url", url.as_str()),
                    ("database", "ember"),
                    ("measurement", measurement),
                    ("tags", "device"),
                    ("fields", "avg_temp,max_temp"),
                    ("time", "window_start"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
            };
            let config = InfluxConfig::from_options(&options("iot"))?;
            Some(
                windows()?
                    .write_stream()
                    .query_name("iot")
                    .influxdb(config.clone())?
                    .progress_to_influxdb(config)?
                    .checkpoint(state.join("influxdb-checkpoint"))
                    .trigger(trigger)
                    .start()
                    .await?,
            )
        }
        None => None,
    };

    // 40 seconds of readings, one per device per second, sent as they happen (fast).
    for second in 0..if fresh { 40i64 } else { 0 } {
        for (d, device) in DEVICES.iter().enumerate() {
            let temperature = 15.0 + d as f64 * 5.0 + (second % 10) as f64 * 0.5;
            let json = format!(
                r#"{{"device":"{device}","ts":{},"temperature":{temperature}}}"#,
                start_ms + second * 1000
            );
            producer.send(ProducerRecord::new("sensors", json).key(*device))?;
        }
        if second == 30 {
            // A reading from second 2: far behind the watermark by now.
            let late = format!(
                r#"{{"device":"attic","ts":{},"temperature":99.0}}"#,
                start_ms + 2000
            );
            producer.send(ProducerRecord::new("sensors", late).key("attic"))?;
        }
        producer.flush();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    console.process_all_available().await?;
    files.process_all_available().await?;
    if let Some(q) = &influx {
        q.process_all_available().await?;
        q.stop().await?;
        println!(
            "windows written to InfluxDB at {}",
            influxdb.as_deref().unwrap_or("")
        );
    }
    let late: usize = console
        .recent_progress()
        .iter()
        .map(|p| p.late_rows_dropped)
        .sum();
    console.stop().await?;
    files.stop().await?;

    // Windows [0,10), [10,20) and [20,30) have closed (the watermark is 39 - 5 = 34 s);
    // [30,40) waits for more data.
    let written = session
        .read()
        .parquet(out.to_str().context("OUT_DIR is not UTF-8")?)
        .await?;
    written
        .clone()
        .sort(vec![
            ember_driver::col("device").sort(true, false),
            ember_driver::col("window_start").sort(true, false),
        ])?
        .show(12)
        .await?;
    let rows = written.count().await?;
    println!(
        "{rows} windows written to {}, {late} late reading(s) dropped",
        out.display()
    );
    ensure!(
        rows == 3 * DEVICES.len(),
        "expected 3 closed windows per device, got {rows}"
    );
    ensure!(
        late == usize::from(fresh),
        "expected the late reading to be dropped, got {late}"
    );
    Ok(())
}
