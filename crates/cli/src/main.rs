//! `ember`: the command line of the ember dataflow engine.
//!
//! `main` parses flags, installs the log subscriber, starts the tokio runtimes and
//! hands the subcommand to its module: `sql` (one-shot statements or the `shell`),
//! `gen`, `bench`, `config`, `history`. Results go to stdout; logs, progress and errors to
//! stderr.

mod bench;
mod bench_log;
mod bench_result;
mod bench_stream;
mod broker;
mod datagen;
mod driver;
mod executor;
mod history;
mod kafka_tools;
mod output;
mod progress;
mod security;
mod shell;
mod sql;
mod statements;
mod stream;
mod tables;
mod ui_args;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "ember: a Spark-style dataflow engine on DataFusion"
)]
struct Cli {
    /// Log filter, e.g. `info` or `ember_driver=debug` (default: $RUST_LOG, else `error`).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL: -e / -f statements, or an interactive shell.
    Sql(sql::SqlArgs),
    /// Generate benchmark data.
    #[command(subcommand)]
    Gen(datagen::GenCommand),
    /// Run a benchmark and print its results as JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print the `ember.*` configuration keys as a Markdown table.
    Config,
    /// Serve the embedded log over the Kafka protocol.
    Broker(broker::BrokerArgs),
    /// Run a streaming SQL query from a log or Kafka source to a sink.
    Stream(stream::StreamArgs),
    /// Create, list, describe and delete topics of a Kafka-protocol broker.
    Topics(kafka_tools::TopicsArgs),
    /// Send stdin's lines to a topic, one record per line.
    Produce(kafka_tools::ProduceArgs),
    /// Print a topic's records, one per line.
    Consume(kafka_tools::ConsumeArgs),
    /// Run a cluster's driver: executors register with it, clients send it queries.
    Driver(driver::DriverArgs),
    /// Run an executor process that registers with a driver and runs its tasks.
    Executor(executor::ExecutorArgs),
    /// Serve the web UI and REST API of finished applications from their event logs.
    History(history::HistoryArgs),
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Sql(args), Some(matches)) =
        (&mut cli.command, matches.subcommand_matches("sql"))
    {
        args.order_scripts(matches);
    }
    init_logging(cli.log_level.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand on the engine's runtime, whose worker threads run the tasks.
///
/// `ember sql` keeps its own control flow (reading input, Ctrl-C, the progress bar's
/// timer) on a second, single-threaded runtime: CPU-bound tasks can keep every
/// engine thread busy for a whole query, and then nothing else on that runtime
/// would run, not even the signal handler that cancels the query.
fn run(command: Command) -> Result<ExitCode> {
    let engine = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ember-engine")
        // Tasks evaluate expressions recursively; room for the deepest a statement
        // may have (ember.sql.max_expression_depth). Untouched pages cost nothing.
        .thread_stack_size(16 << 20)
        .build()
        .context("starting the engine's tokio runtime")?;
    let code = match command {
        Command::Sql(args) => {
            let shell = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the shell's tokio runtime")?;
            let code = shell.block_on(sql::run(args, engine.handle()));
            // Do not wait for a blocking stdin read that Ctrl-C abandoned.
            shell.shutdown_timeout(Duration::from_millis(100));
            code
        }
        Command::Gen(command) => engine
            .block_on(datagen::run(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Bench(command) => engine
            .block_on(bench::run(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Broker(args) => engine
            .block_on(broker::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Stream(args) => engine
            .block_on(stream::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Topics(args) => engine
            .block_on(kafka_tools::topics(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Produce(args) => engine
            .block_on(kafka_tools::produce(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Consume(args) => engine
            .block_on(kafka_tools::consume(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Driver(args) => engine
            .block_on(driver::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Executor(args) => engine
            .block_on(executor::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::History(args) => engine
            .block_on(history::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Config => {
            println!("{}", ember_core::EmberConfig::markdown_table());
            Ok(ExitCode::SUCCESS)
        }
    };
    engine.shutdown_timeout(Duration::from_secs(1));
    code
}

/// By default only errors: a failed query is already reported as its `Error:` line,
/// so the engine's warning about it would be noise. Refused calls (a missing or wrong
/// secret, rate-limited) are the exception: an operator must see them.
const DEFAULT_LOG: &str = "error,ember::audit=warn";

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|e| {
            eprintln!("warning: ignoring --log-level {level}: {e}");
            EnvFilter::new(DEFAULT_LOG)
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// glibc gives each thread that allocates its own heap ("arena"), up to 8 per core,
/// and keeps what is freed in each: a process whose tasks run on many threads in turn
/// grows far past what it uses at once (an executor with `--memory 1g` reached 1.9 GiB
/// over six TPC-H SF 10 queries, 1.2 GiB with two arenas). One arena per core, unless
/// `MALLOC_ARENA_MAX` says otherwise. Before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(2);
        // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
