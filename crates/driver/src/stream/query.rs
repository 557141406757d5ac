//! Starting a streaming query, its micro-batch loop, and its handle.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use ember_core::{EmberError, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::StreamTable;
use super::checkpoint::Checkpoint;
use super::file_sink::{FileFormat, FileSink};
use super::runner::{Runner, Shared};
use super::sink::{ConsoleSink, ForeachBatchSink, MemorySink, Sink};
use super::source::{CombinedSource, Offsets, Source};
use super::stateful::plan_query;
use crate::dataframe::DataFrame;
use crate::events::{AppEvent, now_ms};
use ember_exec::stateful::OpConfig;

/// When the next micro-batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval (sooner batches wait; a slow one is followed at once).
    ProcessingTime(Duration),
    /// One batch of what is there, then stop.
    Once,
    /// Everything there when the query starts, in batches, then stop.
    AvailableNow,
}

pub use ember_exec::stateful::OutputMode;

/// One batch's progress report, like Spark's `StreamingQueryProgress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    pub batch_id: u64,
    /// When the batch was planned, ms since the epoch.
    pub timestamp_ms: i64,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    pub duration_ms: Durations,
    pub source: SourceProgress,
    pub sink: SinkProgress,
    /// Event time: the watermark this batch used (ms), if the query has one.
    pub watermark_ms: Option<i64>,
    /// Rows older than the watermark, dropped.
    pub late_rows_dropped: usize,
    pub state: StateProgress,
}

/// A stateful operator's state after a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StateProgress {
    pub rows_total: usize,
    pub rows_updated: usize,
    pub rows_removed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Durations {
    pub latest_offset: u64,
    pub wal_commit: u64,
    pub add_batch: u64,
    pub commit_offsets: u64,
    pub trigger_execution: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceProgress {
    pub description: String,
    pub start_offset: Offsets,
    pub end_offset: Offsets,
    pub num_input_rows: u64,
    /// Offsets retention had deleted before they were read, skipped since the last
    /// batch (`fail_on_data_loss(false)`).
    pub offsets_lost: u64,
    /// Partitions found to have lost data since the last batch (records deleted
    /// before they were read, or the partition behind the query's offset: its topic
    /// deleted and re-created, its log truncated), each read on from its earliest
    /// offset (`fail_on_data_loss(false)`).
    pub data_loss_events: u64,
    /// Records the source held beyond this batch when it ended (the consumer lag);
    /// none for a source without an end (rate).
    pub lag_rows: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkProgress {
    pub description: String,
    pub num_output_rows: usize,
}

/// What a query is doing now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub message: String,
    pub is_trigger_active: bool,
    pub is_data_available: bool,
}

/// Configures and starts a streaming query: `df.write_stream()`.
pub struct DataStreamWriter {
    df: DataFrame,
    sink: Option<Arc<dyn Sink>>,
    /// The memory sink takes the query's name, known at `start()`.
    memory: bool,
    mode: OutputMode,
    trigger: Trigger,
    checkpoint: Option<PathBuf>,
    name: Option<String>,
    /// `format(..)` and `option(..)`: a sink named by format, set up at `start()`.
    format: Option<String>,
    options: Vec<(String, String)>,
    /// Where each batch's progress is reported, besides `recent_progress`.
    progress_to: Option<Arc<super::InfluxWriter>>,
}

impl DataFrame {
    /// Starts describing where this streaming DataFrame's results go.
    pub fn write_stream(&self) -> DataStreamWriter {
        DataStreamWriter {
            df: self.clone(),
            sink: None,
            memory: false,
            mode: OutputMode::Append,
            trigger: Trigger::ProcessingTime(Duration::ZERO),
            checkpoint: None,
            name: None,
            format: None,
            options: vec![],
            progress_to: None,
        }
    }
}

impl DataStreamWriter {
    /// A table in the session named after the query (`query_name`, default
    /// `stream`), for SQL.
    pub fn memory(mut self) -> Self {
        self.memory = true;
        self.sink = None;
        self
    }

    /// Parquet files under `dir`, exactly once per batch (see [`FileSink`]): a
    /// path, or a directory in an object store (`s3://bucket/path`, `http(s)://`,
    /// `file://`).
    pub fn parquet(self, dir: impl Into<PathBuf>) -> Self {
        self.files("parquet", dir.into())
    }

    /// JSON-lines files under `dir` (a path or an object store's URL), exactly once
    /// per batch.
    pub fn json(self, dir: impl Into<PathBuf>) -> Self {
        self.files("json", dir.into())
    }

    /// The file sink of `format`, resolved at `start()` through the session's
    /// object stores.
    fn files(self, format: &str, dir: PathBuf) -> Self {
        self.format(format)
            .option("path", dir.to_string_lossy().into_owned())
    }

    /// Records to `topic` of the embedded log (see [`LogSink`](super::LogSink)).
    pub fn log(mut self, log: Arc<ember_log::Log>, topic: &str) -> Result<Self> {
        self.memory = false;
        self.sink = Some(Arc::new(super::LogSink::new(log, topic)?));
        Ok(self)
    }

    /// Records to `topic` of a Kafka cluster (see [`KafkaSink`](super::KafkaSink)).
    pub fn kafka(mut self, bootstrap_servers: &str, topic: &str) -> Self {
        self.memory = false;
        self.sink = Some(Arc::new(super::KafkaSink::new(bootstrap_servers, topic)));
        self
    }

    pub fn console(mut self) -> Self {
        self.memory = false;
        self.sink = Some(Arc::new(ConsoleSink));
        self
    }

    /// Hands each batch to `f` as a DataFrame, with its batch id.
    pub fn foreach_batch<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(DataFrame, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        self.memory = false;
        self.sink = Some(Arc::new(ForeachBatchSink::new(
            self.df.session().clone(),
            f,
        )));
        self
    }

    /// A sink by name, Spark style, configured with [`option`](Self::option):
    /// `influxdb` (see [`InfluxConfig::from_options`](super::InfluxConfig::from_options)),
    /// `parquet` and `json` (`path`), `kafka` (`kafka.bootstrap.servers`, `topic`),
    /// `console`, `memory`.
    pub fn format(mut self, format: &str) -> Self {
        self.format = Some(format.to_ascii_lowercase());
        self.memory = false;
        self.sink = None;
        self
    }

    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    /// Points in InfluxDB (see [`InfluxSink`](super::InfluxSink)).
    pub fn influxdb(mut self, config: super::InfluxConfig) -> Result<Self> {
        self.memory = false;
        self.sink = Some(Arc::new(super::InfluxSink::new(config)?));
        Ok(self)
    }

    /// Also writes each batch's progress to InfluxDB, as measurement
    /// `ember_streaming` tagged with the query's name.
    pub fn progress_to_influxdb(mut self, config: super::InfluxConfig) -> Result<Self> {
        self.progress_to = Some(Arc::new(super::InfluxWriter::new(config)?));
        Ok(self)
    }

    /// The sink `format` and `option` describe.
    fn formatted_sink(&mut self) -> Result<Option<Arc<dyn Sink>>> {
        let Some(format) = self.format.clone() else {
            return Ok(None);
        };
        let get = |k: &str| {
            self.options
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let need = |k: &str| {
            get(k).ok_or_else(|| {
                EmberError::Config(format!("format(\"{format}\") needs option(\"{k}\", ..)"))
            })
        };
        Ok(Some(match format.as_str() {
            "influxdb" => Arc::new(super::InfluxSink::new(super::InfluxConfig::from_options(
                &self.options,
            )?)?),
            "parquet" => Arc::new(FileSink::new(
                self.df.session().dir(&need("path")?)?,
                FileFormat::Parquet,
            )),
            "json" => Arc::new(FileSink::new(
                self.df.session().dir(&need("path")?)?,
                FileFormat::Json,
            )),
            "kafka" => Arc::new(super::KafkaSink::new(
                &need("kafka.bootstrap.servers")?,
                &need("topic")?,
            )),
            "console" => Arc::new(ConsoleSink),
            "memory" => {
                self.memory = true;
                return Ok(None);
            }
            other => {
                return Err(EmberError::Config(format!(
                    "unknown sink format '{other}' (influxdb, parquet, json, kafka, console, memory)"
                )));
            }
        }))
    }

    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The checkpoint directory: where progress survives restarts (required). A
    /// path, or the URL of a directory in an object store: `http(s)://..` (WebDAV)
    /// or `s3://bucket/path` (see `ember_exec::storage`).
    pub fn checkpoint(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(dir.into());
        self
    }

    pub fn query_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Checks the query and starts its micro-batch loop.
    pub async fn start(mut self) -> Result<StreamingQuery> {
        if let Some(sink) = self.formatted_sink()? {
            self.sink = Some(sink);
        }
        let config = ember_core::config::EmberConfig::from_session(
            self.df.session().context().state().config(),
        );
        let query = plan_query(self.df.logical_plan(), self.mode, &config)?;
        let streams = stream_sources(&query.batch)?;
        let joins = matches!(
            query.stateful.as_ref().map(|s| &s.op),
            Some(OpConfig::Join { .. })
        );
        let source: Arc<dyn Source> = match (streams.len(), joins) {
            (1, false) => streams[0].clone(),
            (2, true) => Arc::new(CombinedSource {
                parts: streams.clone(),
            }),
            _ => {
                return Err(EmberError::NotSupported(
                    "a query over several streams must join two of them (a stream-stream join)"
                        .into(),
                ));
            }
        };
        let memory = self.memory.then(|| {
            let name = self.name.clone().unwrap_or_else(|| "stream".into());
            let replace = self.mode == OutputMode::Complete;
            Arc::new(MemorySink::new(self.df.session().clone(), &name, replace)) as Arc<dyn Sink>
        });
        let sink = memory.or(self.sink).ok_or_else(|| {
            EmberError::Config(
                "a streaming query needs a sink: memory(), console() or foreach_batch()".into(),
            )
        })?;
        let dir = self.checkpoint.ok_or_else(|| {
            EmberError::Config("a streaming query needs a checkpoint directory".into())
        })?;
        let runtime = self.df.session().context().runtime_env();
        let checkpoint = Checkpoint::open(
            &dir.to_string_lossy(),
            runtime.object_store_registry.as_ref(),
        )
        .await?;
        let shared = Arc::new(Shared {
            id: checkpoint.id.clone(),
            run_id: format!(
                "{:016x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            ),
            name: self.name.clone(),
            progress: Mutex::new(VecDeque::new()),
            status: Mutex::new(Status {
                message: "Initializing sources".into(),
                is_trigger_active: false,
                is_data_available: false,
            }),
            stop: AtomicBool::new(false),
            committed: Mutex::new(None),
            finished: AtomicBool::new(false),
        });
        if let Some(status) = self.df.session().app_status() {
            status.add_stream(shared.clone());
        }
        let bus = self.df.session().bus().cloned();
        if let Some(bus) = &bus {
            bus.post(AppEvent::StreamingQueryStarted {
                id: shared.id.clone(),
                run_id: shared.run_id.clone(),
                name: shared.name.clone(),
                time_ms: now_ms(),
            });
        }
        let (done_tx, done) = watch::channel(None);
        let state_dir = checkpoint.state_dir(0);
        let runner = Runner {
            df: self.df.clone(),
            source: source.clone(),
            streams,
            sink,
            checkpoint,
            trigger: self.trigger,
            shared: shared.clone(),
            mode: self.mode,
            side_max: Mutex::new(vec![]),
            state_dir,
            watermark: Mutex::new(None),
            progress_to: self.progress_to.clone(),
            reports: Default::default(),
            loss_reported: Mutex::new(source.data_loss()),
            query,
            bus: bus.clone(),
        };
        let ended = shared.clone();
        let task = tokio::spawn(async move {
            let outcome = runner.run().await;
            ended.finished.store(true, Ordering::Release);
            if let Some(bus) = &bus {
                bus.post(AppEvent::StreamingQueryEnded {
                    id: ended.id.clone(),
                    run_id: ended.run_id.clone(),
                    time_ms: now_ms(),
                });
            }
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "streaming query failed");
            }
            let _ = done_tx.send(Some(outcome.map_err(|e| e.one_line())));
        });
        Ok(StreamingQuery {
            shared,
            source,
            done,
            task: Mutex::new(Some(task)),
        })
    }
}

/// The stream sources a plan reads (two for a stream-stream join), one entry per
/// source.
fn stream_sources(plan: &LogicalPlan) -> Result<Vec<Arc<dyn Source>>> {
    let mut found: Vec<Arc<dyn Source>> = vec![];
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(table) = provider.downcast_ref::<StreamTable>()
            && !found.iter().any(|s| same(s, &table.source))
        {
            found.push(table.source.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if found.is_empty() {
        return Err(EmberError::Config(
            "write_stream() needs a streaming DataFrame (session.read_stream())".into(),
        ));
    }
    Ok(found)
}

/// Whether two handles are the same source.
pub(super) fn same(a: &Arc<dyn Source>, b: &Arc<dyn Source>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// A running (or finished) streaming query.
pub struct StreamingQuery {
    shared: Arc<Shared>,
    source: Arc<dyn Source>,
    done: watch::Receiver<Option<std::result::Result<(), String>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for StreamingQuery {
    fn drop(&mut self) {
        self.shared.finished.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

impl StreamingQuery {
    /// Stays the same across restarts from the same checkpoint.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// New at every start.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    pub fn status(&self) -> Status {
        self.shared.status.lock().clone()
    }

    pub fn last_progress(&self) -> Option<Progress> {
        self.shared.progress.lock().back().cloned()
    }

    pub fn recent_progress(&self) -> Vec<Progress> {
        self.shared.progress.lock().iter().cloned().collect()
    }

    pub fn is_active(&self) -> bool {
        self.done.borrow().is_none()
    }

    /// Stops after the batch in progress, and waits for that.
    pub async fn stop(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        self.await_termination(None).await.map(|_| ())
    }

    /// Waits until the query ends (true) or `timeout` passes (false); the query's
    /// error if it failed.
    pub async fn await_termination(&self, timeout: Option<Duration>) -> Result<bool> {
        let mut done = self.done.clone();
        let wait = done.wait_for(|d| d.is_some());
        let ended = match timeout {
            Some(t) => tokio::time::timeout(t, wait).await.ok(),
            None => Some(wait.await),
        };
        match ended {
            None => Ok(false),
            Some(Err(_)) => Err(EmberError::Internal("the query's task ended".into())),
            Some(Ok(outcome)) => match outcome.as_ref().expect("some") {
                Ok(()) => Ok(true),
                Err(e) => Err(EmberError::JobFailed {
                    job: 0,
                    cause: format!("streaming query {}: {e}", self.shared.id),
                }),
            },
        }
    }

    /// Waits until every row available now has been processed and committed.
    pub async fn process_all_available(&self) -> Result<()> {
        loop {
            if !self.is_active() {
                return self.await_termination(None).await.map(|_| ());
            }
            let committed = self.shared.committed.lock().clone();
            if let Some(committed) = committed {
                // A partition that now ends before the committed offset lost data: the
                // next batch reads it again (or fails), so the query is not done yet,
                // though no batch would start past `committed` in it.
                let available = self.source.available().await?;
                let went_back = committed
                    .iter()
                    .any(|(t, p, o)| available.get(t, p).is_some_and(|end| end < o));
                if !went_back && self.source.latest(&committed).await? == committed {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
