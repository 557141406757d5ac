//! `ember bench`: benchmarks that print JSON.
//!
//! `ember bench tpch` (and `ember bench tpcds`, the same over TPC-DS's 99 queries)
//! runs each query through an ember session and, as the baseline, through a plain DataFusion `SessionContext` with as many target
//! partitions as ember has executor slots (or through a second ember session,
//! `--baseline local[2]`), over the same Parquet files in the same process. Each
//! query runs once to warm up, then `--iterations` times, the engines taking turns
//! run by run; the report gives min and median wall time, and the bytes ember's jobs
//! wrote to the shuffle per run.
//! Progress goes to stderr, the report to stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_driver::{Master, Session, tpcds, tpch};
use serde::Serialize;

use crate::output::one_line;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// TPC-H queries, ember against DataFusion.
    Tpch(QueryBenchArgs),
    /// TPC-DS queries, ember against DataFusion (the data from
    /// benchmarks/tpcds/generate.py, which needs python3).
    Tpcds(QueryBenchArgs),
    /// The embedded log: in-process and wire throughput.
    Log(crate::bench_log::LogBenchArgs),
    /// Streaming: the IoT query's throughput and batch durations.
    Stream(crate::bench_stream::StreamBenchArgs),
    /// A large result: every row of a TPC-H table streamed to this process.
    Result(crate::bench_result::ResultBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct QueryBenchArgs {
    /// Scale factor of the generated data.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,

    /// Queries to run, e.g. 1,3,6 (default: all of them: 22 for TPC-H, 99 for TPC-DS).
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    queries: Vec<usize>,

    /// Where ember's jobs run; the baseline gets as many partitions as it has slots.
    #[arg(long, default_value = "local[*]")]
    master: String,

    /// Timed runs per query and engine, after one warm-up run.
    #[arg(long, default_value_t = 3)]
    iterations: usize,

    /// What to compare with: datafusion, none, or an ember master such as local[2].
    #[arg(long, default_value = "datafusion", value_parser = parse_baseline)]
    baseline: Baseline,

    /// Give up on a query run after this many seconds (it is then reported as an error).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,

    /// Data directory [default: ~/.cache/ember/<tpch|tpcds>-sf<SF>, generated if missing].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// For a driver:// master (this process drives executors started against it):
    /// the executors to wait for before the first query.
    #[arg(long, default_value_t = 1)]
    executors: usize,

    /// For an ember:// master: the cluster's secret and TLS.
    #[command(flatten)]
    security: crate::security::SecurityArgs,

    /// Set a configuration key of ember's session (repeatable; see `ember config`).
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
    config: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Baseline {
    /// DataFusion alone, in the same process.
    Datafusion,
    /// ember only.
    None,
    /// A second ember session (e.g. `local[2]` against a cluster).
    Ember(String),
}

fn parse_baseline(s: &str) -> Result<Baseline, String> {
    match s {
        "datafusion" => Ok(Baseline::Datafusion),
        "none" => Ok(Baseline::None),
        master => Master::parse(master)
            .map(|_| Baseline::Ember(master.to_string()))
            .map_err(|e| format!("expected datafusion, none or an ember master: {e}")),
    }
}

/// What the baseline runs on.
enum BaselineEngine {
    Datafusion(SessionContext),
    Ember(Session),
}

impl BaselineEngine {
    async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(match self {
            BaselineEngine::Datafusion(ctx) => ctx.sql(sql).await?.collect().await?,
            BaselineEngine::Ember(session) => session.sql(sql).await?.collect().await?,
        })
    }
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Tpch(args) => {
            let report = query_bench(Workload::Tpch, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::Tpcds(args) => {
            let report = query_bench(Workload::Tpcds, args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        BenchCommand::Log(args) => crate::bench_log::run(args).await,
        BenchCommand::Stream(args) => crate::bench_stream::run(args).await,
        BenchCommand::Result(args) => crate::bench_result::run(args).await,
    }
}

/// The queries and tables a query benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Tpch,
    Tpcds,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Tpch => "tpch",
            Workload::Tpcds => "tpcds",
        }
    }

    /// Generates the data into `dir` unless it is there.
    async fn ensure_data(self, sf: f64, dir: &std::path::Path) -> Result<()> {
        match self {
            Workload::Tpch if !tpch::is_generated(sf, dir) => {
                eprintln!("generating TPC-H SF {sf} into {} ...", dir.display());
                crate::datagen::generate_tpch(sf, dir.to_path_buf()).await?;
            }
            Workload::Tpcds if !tpcds::is_generated(sf, dir) => {
                eprintln!("generating TPC-DS SF {sf} into {} ...", dir.display());
                let dir = dir.to_path_buf();
                tokio::task::spawn_blocking(move || tpcds::generate(sf, &dir)).await??;
            }
            _ => {}
        }
        Ok(())
    }

    fn queries(self, dir: &std::path::Path, only: &[usize]) -> Result<Vec<(usize, String)>> {
        let all: Vec<usize> = match self {
            Workload::Tpch => tpch::QUERY_NUMBERS.to_vec(),
            Workload::Tpcds => tpcds::QUERY_NUMBERS.collect(),
        };
        let chosen = if only.is_empty() { all } else { only.to_vec() };
        chosen
            .into_iter()
            .map(|n| {
                Ok((
                    n,
                    match self {
                        Workload::Tpch => tpch::query(n)?,
                        Workload::Tpcds => tpcds::query(dir, n)?,
                    },
                ))
            })
            .collect()
    }

    async fn register(self, ctx: &SessionContext, dir: &std::path::Path) -> Result<()> {
        match self {
            Workload::Tpch => tpch::register_tables(ctx, dir).await?,
            Workload::Tpcds => tpcds::register_tables(ctx, dir).await?,
        }
        Ok(())
    }
}

async fn query_bench(workload: Workload, args: QueryBenchArgs) -> Result<Report> {
    anyhow::ensure!(args.iterations > 0, "--iterations must be at least 1");
    let dir = match &args.data {
        Some(dir) => dir.clone(),
        None => data_dir(workload.name(), args.sf)?,
    };
    workload.ensure_data(args.sf, &dir).await?;
    let sql = workload.queries(&dir, &args.queries)?;

    let slots = match Master::parse(&args.master)?.slots() {
        // A cluster's slots are not known here: as many as this machine has cores.
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = Session::builder()
        .master(&args.master)
        .security(args.security.security()?);
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    let session = builder.build()?;
    wait_for_executors(&session, args.executors).await;
    workload.register(session.context(), &dir).await?;
    let baseline = match &args.baseline {
        Baseline::Datafusion => {
            let ctx =
                SessionContext::new_with_config(SessionConfig::new().with_target_partitions(slots));
            workload.register(&ctx, &dir).await?;
            Some(BaselineEngine::Datafusion(ctx))
        }
        Baseline::Ember(master) => {
            let other = Session::builder().master(master).build()?;
            workload.register(other.context(), &dir).await?;
            Some(BaselineEngine::Ember(other))
        }
        Baseline::None => None,
    };

    let limits = Limits {
        iterations: args.iterations,
        timeout: Duration::from_secs(args.timeout),
    };
    let mut results = Vec::new();
    for (n, sql) in &sql {
        let shuffled_before = session.shuffle_bytes();
        // The engines take turns, run by run, so that the machine's slow spells fall
        // on both alike.
        let mut ember = Runs::default();
        let mut other = baseline.as_ref().map(|_| Runs::default());
        for _ in 0..=limits.iterations {
            ember
                .run(limits, || async {
                    Ok(session.sql(sql).await?.collect().await?)
                })
                .await;
            if let (Some(runs), Some(engine)) = (&mut other, &baseline) {
                runs.run(limits, || engine.collect(sql)).await;
            }
        }
        // The warm-up run and the timed ones each shuffle the same data.
        let shuffle_bytes =
            (session.shuffle_bytes() - shuffled_before) / (limits.iterations as u64 + 1);
        let (ember, ember_answer) = ember.measured();
        let (other, difference) = match other.map(Runs::measured) {
            Some((other, answer)) => {
                let difference = match (&ember_answer, &answer) {
                    (Some(e), Some(b)) => ember_driver::answers::difference(
                        ember_driver::answers::is_ordered(sql),
                        e,
                        b,
                    )?,
                    _ => None,
                };
                (Some(other), difference)
            }
            None => (None, None),
        };
        let result = QueryResult::new(*n, ember, other, shuffle_bytes, difference);
        eprintln!("{}", result.describe());
        if let Some(diff) = &result.answer_differs {
            eprintln!("warning: q{n}: ember's answer differs from the baseline's: {diff}");
        }
        results.push(result);
    }
    Ok(Report {
        benchmark: workload.name(),
        sf: args.sf,
        master: args.master.clone(),
        baseline: match &args.baseline {
            Baseline::Datafusion => "datafusion".into(),
            Baseline::None => "none".into(),
            Baseline::Ember(master) => format!("ember {master}"),
        },
        partitions: slots,
        iterations: args.iterations,
        data: dir.display().to_string(),
        total: Total::of(&results, baseline.is_some()),
        queries: results,
        peak_rss_bytes: peak_rss_bytes(),
        executor_peak_rss_bytes: executor_peaks(&session).await,
    })
}

/// `~/.cache/ember/<benchmark>-sf<SF>`, where generated data is kept.
pub(crate) fn data_dir(benchmark: &str, sf: f64) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; pass --data DIR")?;
    Ok(PathBuf::from(home)
        .join(".cache/ember")
        .join(format!("{benchmark}-sf{sf}")))
}

/// What `ember bench tpch` prints.
#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    sf: f64,
    master: String,
    baseline: String,
    partitions: usize,
    iterations: usize,
    data: String,
    queries: Vec<QueryResult>,
    total: Total,
    /// This process's peak resident memory (`VmHWM`): ember's driver (and, in local
    /// mode, its executor), and the in-process baseline.
    peak_rss_bytes: u64,
    /// With a driver:// master, each executor process's peak, from its heartbeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    executor_peak_rss_bytes: Option<std::collections::BTreeMap<String, u64>>,
}

/// A driver's executors' peak resident memory, by executor id, after their next
/// heartbeats (one a second) have told the last of it.
pub(crate) async fn executor_peaks(
    session: &Session,
) -> Option<std::collections::BTreeMap<String, u64>> {
    session.driver_address()?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    session
        .executor_peak_rss()
        .map(|peaks| peaks.into_iter().collect())
}

/// With this process as a cluster's driver: waits until `n` executors' slots have
/// registered (at least one slot each).
pub(crate) async fn wait_for_executors(session: &Session, n: usize) {
    if let Some(address) = session.driver_address() {
        eprintln!("waiting for {n} executor(s): ember executor --driver {address}");
        while session.cluster_slots().unwrap_or(0) < n {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

pub(crate) use ember_core::metrics::peak_rss_bytes;

#[derive(Debug, Serialize)]
struct QueryResult {
    query: usize,
    ember: Measured,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Measured>,
    /// Bytes ember's jobs wrote to the shuffle in one run.
    shuffle_bytes: u64,
    /// ember's median over the baseline's.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    /// Present only when the engines' answers differ: how (the row count, or the
    /// first row that differs, floating-point values within a relative 1e-6).
    #[serde(skip_serializing_if = "Option::is_none")]
    answer_differs: Option<String>,
}

impl QueryResult {
    fn new(
        query: usize,
        ember: Measured,
        baseline: Option<Measured>,
        shuffle_bytes: u64,
        answer_differs: Option<String>,
    ) -> QueryResult {
        let mut ratio_ = None;
        if let (Measured::Timing(e), Some(Measured::Timing(d))) = (&ember, &baseline) {
            ratio_ = ratio(e.median_s, d.median_s);
        }
        QueryResult {
            query,
            ember,
            baseline,
            shuffle_bytes,
            ratio: ratio_,
            answer_differs,
        }
    }

    fn describe(&self) -> String {
        let mut line = format!("q{}: ember {}", self.query, self.ember.describe());
        if let Some(b) = &self.baseline {
            line.push_str(&format!(", baseline {}", b.describe()));
        }
        line
    }
}

/// Sums of the medians, over the queries that succeeded on every engine.
#[derive(Debug, Serialize)]
struct Total {
    queries: usize,
    ember_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_s: Option<f64>,
    shuffle_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
}

impl Total {
    fn of(results: &[QueryResult], with_baseline: bool) -> Total {
        let (mut queries, mut ember_s, mut baseline_s) = (0, 0.0, 0.0);
        let shuffle_bytes = results.iter().map(|r| r.shuffle_bytes).sum();
        for r in results {
            match (&r.ember, &r.baseline) {
                (Measured::Timing(e), Some(Measured::Timing(d))) => {
                    ember_s += e.median_s;
                    baseline_s += d.median_s;
                }
                (Measured::Timing(e), None) if !with_baseline => ember_s += e.median_s,
                _ => continue,
            }
            queries += 1;
        }
        Total {
            queries,
            ember_s: round(ember_s),
            baseline_s: with_baseline.then(|| round(baseline_s)),
            shuffle_bytes,
            ratio: if with_baseline {
                ratio(ember_s, baseline_s)
            } else {
                None
            },
        }
    }
}

/// Timings of one query on one engine, or why there are none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Measured {
    Timing(Timing),
    Failed { error: String },
}

#[derive(Debug, Serialize)]
struct Timing {
    min_s: f64,
    median_s: f64,
    rows: usize,
}

impl Measured {
    fn describe(&self) -> String {
        match self {
            Measured::Timing(t) => format!("{:.3}s ({} rows)", t.median_s, t.rows),
            Measured::Failed { error } => format!("failed: {error}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    iterations: usize,
    timeout: Duration,
}

/// One engine's runs of one query: the first warms up and gives the answer, the rest
/// are timed; after a failure, no more.
#[derive(Default)]
struct Runs {
    answer: Option<Vec<RecordBatch>>,
    times: Vec<Duration>,
    error: Option<String>,
}

impl Runs {
    async fn run<F, Fut>(&mut self, limits: Limits, run: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<RecordBatch>>>,
    {
        if self.error.is_some() {
            return;
        }
        let start = Instant::now();
        // Dropping a timed-out query cancels its job.
        match tokio::time::timeout(limits.timeout, run()).await {
            Ok(Ok(answer)) if self.answer.is_none() => self.answer = Some(answer),
            Ok(Ok(_)) => self.times.push(start.elapsed()),
            Ok(Err(e)) => self.error = Some(one_line(&e)),
            Err(_) => self.error = Some(format!("timed out after {}s", limits.timeout.as_secs())),
        }
    }

    /// The timings and the answer, or why there are none.
    fn measured(mut self) -> (Measured, Option<Vec<RecordBatch>>) {
        if let Some(error) = self.error {
            return (Measured::Failed { error }, None);
        }
        let timing = Timing {
            min_s: round(
                self.times
                    .iter()
                    .min()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64(),
            ),
            median_s: round(median(&mut self.times).as_secs_f64()),
            rows: self.answer.iter().flatten().map(|b| b.num_rows()).sum(),
        };
        (Measured::Timing(timing), self.answer)
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    match times.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2,
    }
}

fn ratio(ember: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0).then(|| (ember / baseline * 1000.0).round() / 1000.0)
}

fn round(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&mut [ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
    }

    #[tokio::test]
    async fn the_first_run_warms_up_and_a_failure_ends_the_runs() {
        let limits = Limits {
            iterations: 2,
            timeout: Duration::from_secs(60),
        };
        let mut runs = Runs::default();
        for _ in 0..=limits.iterations {
            runs.run(limits, || async { Ok(vec![]) }).await;
        }
        assert_eq!(runs.times.len(), 2);
        assert!(matches!(runs.measured(), (Measured::Timing(_), Some(_))));

        let mut failing = Runs::default();
        failing.run(limits, || async { Ok(vec![]) }).await;
        failing
            .run(limits, || async { Err(anyhow::anyhow!("lost")) })
            .await;
        failing
            .run(limits, || async { panic!("no run after a failure") })
            .await;
        let (measured, answer) = failing.measured();
        assert!(
            matches!(&measured, Measured::Failed { error } if error == "lost"),
            "{measured:?}"
        );
        assert!(answer.is_none());
    }

    #[test]
    fn ratio_is_ember_over_baseline() {
        assert_eq!(ratio(2.0, 1.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
