//! IoT readings through the embedded log into a windowed streaming query.
//!
//! ```text
//! cargo run -p ember-cli --example iot_stream [-- OUT_DIR]
//! ```
//!
//! A producer writes JSON sensor readings `{device, ts, temperature}` to the embedded
//! log's `sensors` topic, keyed by device (same device, same partition, order kept),
//! while two streaming queries compute each device's 10-second tumbling average and
//! maximum with a 5-second watermark: one prints the windows as they close, the other
//! writes them to Parquet (exactly once) under OUT_DIR (default: a temporary folder),
//! which is read back at the end. One reading arrives too late and is dropped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ember_driver::Session;
use ember_driver::functions::{avg, col, get_field, max, window};
use ember_driver::stream::Trigger;
use ember_log::{KeyHash, Log, LogConfig, Producer, ProducerConfig, ProducerRecord};

const DEVICES: [&str; 4] = ["boiler", "fridge", "attic", "garage"];
/// Event time of the first reading: 2026-01-01T00:00:00Z, in ms.
const START_MS: i64 = 1_767_225_600_000;

#[tokio::main]
async fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => tmp.path().join("windows"),
    };
    let log = Log::open(tmp.path().join("log"), LogConfig::default())?;
    log.create_topic("sensors", 3, None)?;
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
        .checkpoint(tmp.path().join("console-checkpoint"))
        .trigger(trigger)
        .start()
        .await?;
    let files = windows()?
        .write_stream()
        .parquet(&out)
        .checkpoint(tmp.path().join("parquet-checkpoint"))
        .trigger(trigger)
        .start()
        .await?;

    // 40 seconds of readings, one per device per second, sent as they happen (fast).
    for second in 0..40i64 {
        for (d, device) in DEVICES.iter().enumerate() {
            let temperature = 15.0 + d as f64 * 5.0 + (second % 10) as f64 * 0.5;
            let json = format!(
                r#"{{"device":"{device}","ts":{},"temperature":{temperature}}}"#,
                START_MS + second * 1000
            );
            producer.send(ProducerRecord::new("sensors", json).key(*device))?;
        }
        if second == 30 {
            // A reading from second 2: far behind the watermark by now.
            let late = format!(
                r#"{{"device":"attic","ts":{},"temperature":99.0}}"#,
                START_MS + 2000
            );
            producer.send(ProducerRecord::new("sensors", late).key("attic"))?;
        }
        producer.flush();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    console.process_all_available().await?;
    files.process_all_available().await?;
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
        late == 1,
        "expected the late reading to be dropped, got {late}"
    );
    Ok(())
}
