//! `ember bench result`: how fast a large result streams to the caller, and how much
//! memory that takes.
//!
//! Runs `SELECT * FROM <table>` over generated TPC-H data and reads the rows as they
//! stream in (`DataFrame::execute_stream`), counting them. With `--master
//! driver://HOST:PORT` this process is the cluster's driver (start executors against
//! it), so its peak RSS is the driver's. The report gives the rows, their bytes in
//! memory, the time to the first row and to the last, rows/s, and this process's
//! peak RSS.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use ember_driver::{Session, tpch};
use futures::StreamExt;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct ResultBenchArgs {
    /// Scale factor of the generated data.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,

    /// The TPC-H table whose rows are read.
    #[arg(long, default_value = "lineitem")]
    table: String,

    /// Where the job runs: local[N], or driver://HOST:PORT with executors started
    /// against it (`ember executor --driver http://HOST:PORT`).
    #[arg(long, default_value = "local[*]")]
    master: String,

    /// Data directory [default: ~/.cache/ember/tpch-sf<SF>, generated if missing].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// For a driver:// master, the executors to wait for before starting.
    #[arg(long, default_value_t = 1)]
    executors: usize,

    /// Set a configuration key of ember's session (repeatable; see `ember config`).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
    config: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    sf: f64,
    master: String,
    table: String,
    rows: u64,
    /// The rows' size in memory (Arrow arrays), summed over batches.
    bytes: u64,
    first_row_s: f64,
    total_s: f64,
    rows_per_s: f64,
    /// This process's peak resident memory (`VmHWM`).
    peak_rss_bytes: u64,
    /// With a driver:// master, each executor process's peak, from its heartbeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    executor_peak_rss_bytes: Option<std::collections::BTreeMap<String, u64>>,
}

pub async fn run(args: ResultBenchArgs) -> Result<()> {
    let dir = match &args.data {
        Some(dir) => dir.clone(),
        None => crate::bench::data_dir("tpch", args.sf)?,
    };
    if !tpch::is_generated(args.sf, &dir) {
        eprintln!("generating TPC-H SF {} into {} ...", args.sf, dir.display());
        crate::datagen::generate_tpch(args.sf, dir.clone()).await?;
    }
    let mut builder = Session::builder().master(&args.master);
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    let session = builder.build()?;
    crate::bench::wait_for_executors(&session, args.executors).await;
    tpch::register_tables(session.context(), &dir).await?;
    let started = Instant::now();
    let mut stream = session
        .sql(&format!("SELECT * FROM {}", args.table))
        .await?
        .execute_stream()
        .await?;
    let (mut rows, mut bytes, mut first) = (0u64, 0u64, None);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        first.get_or_insert_with(|| started.elapsed());
        rows += batch.num_rows() as u64;
        bytes += batch.get_array_memory_size() as u64;
    }
    let total = started.elapsed().as_secs_f64();
    let report = Report {
        benchmark: "result",
        sf: args.sf,
        master: args.master.clone(),
        table: args.table.clone(),
        rows,
        bytes,
        first_row_s: first.map_or(total, |f| f.as_secs_f64()),
        total_s: total,
        rows_per_s: (rows as f64 / total.max(1e-9)).round(),
        peak_rss_bytes: crate::bench::peak_rss_bytes(),
        executor_peak_rss_bytes: crate::bench::executor_peaks(&session).await,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
