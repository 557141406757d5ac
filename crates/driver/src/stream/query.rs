//! Starting a streaming query, its micro-batch loop, and its handle.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::LogicalPlan;
use ember_core::{EmberError, Result};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::StreamTable;
use super::checkpoint::{BatchRange, Checkpoint};
use super::sink::{ConsoleSink, FileFormat, FileSink, ForeachBatchSink, MemorySink, Sink};
use super::source::{CombinedSource, Offsets, Source};
use super::state::StateStore;
use super::stateful::{Emitted, OpState, Operator, QueryPlan, StatefulPlan, plan_query};
use crate::dataframe::DataFrame;

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

/// Which rows a batch hands to the sink (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Append,
    Update,
    Complete,
}

/// One batch's progress report, like Spark's `StreamingQueryProgress`.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    pub batch_id: u64,
    /// When the batch was planned, ms since the epoch.
    pub timestamp_ms: i64,
    pub num_input_rows: i64,
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
#[derive(Debug, Clone, Serialize, Default)]
pub struct StateProgress {
    pub rows_total: usize,
    pub rows_updated: usize,
    pub rows_removed: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Durations {
    pub latest_offset: u64,
    pub wal_commit: u64,
    pub add_batch: u64,
    pub commit_offsets: u64,
    pub trigger_execution: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceProgress {
    pub description: String,
    pub start_offset: Offsets,
    pub end_offset: Offsets,
    pub num_input_rows: i64,
    /// Offsets of this batch's range that retention had deleted, skipped
    /// (`fail_on_data_loss(false)`).
    pub offsets_lost: i64,
    /// Records the source held beyond this batch when it ended (the consumer lag);
    /// none for a source without an end (rate).
    pub lag_rows: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
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

    /// Parquet files under `dir`, exactly once per batch (see [`FileSink`]).
    pub fn parquet(mut self, dir: impl Into<PathBuf>) -> Self {
        self.memory = false;
        self.sink = Some(Arc::new(FileSink::new(dir, FileFormat::Parquet)));
        self
    }

    /// JSON-lines files under `dir`, exactly once per batch.
    pub fn json(mut self, dir: impl Into<PathBuf>) -> Self {
        self.memory = false;
        self.sink = Some(Arc::new(FileSink::new(dir, FileFormat::Json)));
        self
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
            "parquet" => Arc::new(FileSink::new(need("path")?, FileFormat::Parquet)),
            "json" => Arc::new(FileSink::new(need("path")?, FileFormat::Json)),
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

    /// The checkpoint directory: where progress survives restarts (required).
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
        let query = plan_query(self.df.logical_plan(), self.mode)?;
        let streams = stream_sources(&query.batch)?;
        let joins = matches!(
            query.stateful.as_ref().map(|s| &s.op),
            Some(Operator::Join(_))
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
        let checkpoint = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || Checkpoint::open(&dir))
                .await
                .map_err(|e| EmberError::Internal(e.to_string()))??
        };
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
            stateful: query.stateful.as_ref().map(|st| {
                (
                    StateStore::new(state_dir.clone(), STATE_PARTITIONS, SNAPSHOT_EVERY),
                    Mutex::new(st.empty_state()),
                )
            }),
            watermark: Mutex::new(None),
            progress_to: self.progress_to.clone(),
            query,
        };
        let ended = shared.clone();
        let task = tokio::spawn(async move {
            let outcome = runner.run().await;
            ended.finished.store(true, Ordering::Release);
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
fn same(a: &Arc<dyn Source>, b: &Arc<dyn Source>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

struct Shared {
    id: String,
    run_id: String,
    name: Option<String>,
    progress: Mutex<VecDeque<Progress>>,
    status: Mutex<Status>,
    stop: AtomicBool,
    /// The end offsets of the last committed batch.
    committed: Mutex<Option<Offsets>>,
    /// The micro-batch loop has ended.
    finished: AtomicBool,
}

impl crate::ui::StreamView for Shared {
    fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "run_id": self.run_id,
            "name": self.name,
            "active": !self.finished.load(Ordering::Acquire),
            "status": *self.status.lock(),
            "recent_progress": *self.progress.lock(),
        })
    }
}

/// Progress reports kept for `recent_progress`.
const RECENT: usize = 100;

struct Runner {
    df: DataFrame,
    query: QueryPlan,
    source: Arc<dyn Source>,
    /// The streams read: one, or a join's two (whose offsets `source` combines).
    streams: Vec<Arc<dyn Source>>,
    sink: Arc<dyn Sink>,
    checkpoint: Checkpoint,
    trigger: Trigger,
    shared: Arc<Shared>,
    mode: OutputMode,
    /// The stateful operator's store and state, if the query has one.
    stateful: Option<(StateStore, Mutex<OpState>)>,
    /// The watermark the next batch uses.
    watermark: Mutex<Option<i64>>,
    progress_to: Option<Arc<super::InfluxWriter>>,
}

/// Partitions of a stateful operator's state, and how often a version is a snapshot.
const STATE_PARTITIONS: usize = 4;
const SNAPSHOT_EVERY: u64 = 10;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Runner {
    fn set_status(&self, message: &str, active: bool, available: bool) {
        *self.shared.status.lock() = Status {
            message: message.into(),
            is_trigger_active: active,
            is_data_available: available,
        };
    }

    async fn run(self) -> Result<()> {
        let last = self.checkpoint.last()?;
        // The state after the last committed batch.
        let committed_batch = match &last {
            Some((range, Some(commit))) => {
                *self.watermark.lock() = commit.next_watermark_ms;
                Some(range.batch_id)
            }
            Some((range, None)) => range.batch_id.checked_sub(1),
            None => None,
        };
        if let (Some((store, state)), Some(batch), Some(plan)) =
            (&self.stateful, committed_batch, &self.query.stateful)
        {
            *state.lock() = plan.load(store.load(batch)?)?;
        }
        let (mut next_id, mut start) = match last {
            None => (0, self.source.initial().await?),
            Some((range, Some(_))) => (range.batch_id + 1, range.end),
            Some((range, None)) => {
                // Planned but not committed when the last run stopped: the same ranges
                // and watermark again, so the sink sees exactly that batch.
                tracing::info!(batch = range.batch_id, "re-running an uncommitted batch");
                self.run_batch(&range, Instant::now(), Duration::ZERO, 0, 0)
                    .await?;
                (range.batch_id + 1, range.end)
            }
        };
        *self.shared.committed.lock() = Some(start.clone());
        // AvailableNow reads what is there now, and no further.
        let target = match self.trigger {
            Trigger::AvailableNow => Some(self.source.available().await?),
            _ => None,
        };
        let mut last_trigger = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let started = Instant::now();
            let mut end = self.source.latest(&start).await?;
            if let Some(target) = &target {
                end = end.capped_at(target);
            }
            let latest_ms = started.elapsed().as_millis() as u64;
            if end == start {
                match self.trigger {
                    Trigger::Once | Trigger::AvailableNow => break,
                    Trigger::ProcessingTime(d) => {
                        self.set_status("Waiting for data to arrive", false, false);
                        tokio::time::sleep(d.max(Duration::from_millis(20))).await;
                        continue;
                    }
                }
            }
            let range = BatchRange {
                batch_id: next_id,
                start: start.clone(),
                end: end.clone(),
                batch_time_ms: now_ms(),
                watermark_ms: *self.watermark.lock(),
            };
            let wal = Instant::now();
            self.checkpoint.write_offsets(&range)?;
            let wal_ms = wal.elapsed().as_millis() as u64;
            let since_last = last_trigger.elapsed();
            last_trigger = Instant::now();
            self.run_batch(&range, started, since_last, latest_ms, wal_ms)
                .await?;
            start = end;
            next_id += 1;
            match self.trigger {
                Trigger::Once => break,
                Trigger::AvailableNow => {}
                Trigger::ProcessingTime(d) => {
                    let left = d.saturating_sub(started.elapsed());
                    if !left.is_zero() {
                        self.set_status("Waiting for next trigger", false, true);
                        tokio::time::sleep(left).await;
                    }
                }
            }
        }
        self.set_status("Stopped", false, false);
        Ok(())
    }

    /// Reads the range, runs the query over it, hands the rows to the sink, commits.
    /// `since_last` is the time since the previous trigger (for the input rate).
    async fn run_batch(
        &self,
        range: &BatchRange,
        started: Instant,
        since_last: Duration,
        latest_ms: u64,
        wal_ms: u64,
    ) -> Result<()> {
        use tracing::Instrument;
        self.set_status("Processing new data", true, true);
        let add = Instant::now();
        let (num_input_rows, written, late, state_progress, next_watermark, lost) = async {
            if let (Some((store, state)), Some(st)) = (&self.stateful, &self.query.stateful)
                && let Operator::Join(_) = &st.op
            {
                return self.run_join(range, store, state, st).await;
            }
            let lost_before = self.source.offsets_lost();
            let (table, num_input_rows) =
                batch_table(&self.source, &range.start, &range.end).await?;
            let lost = self.source.offsets_lost() - lost_before;
            let plan = swap_provider(&self.query.batch, &is_stream, table)?;
            let description = self.description(range.batch_id);
            let session = self.df.session();
            let mut output = session.collect_described(&plan, Some(&description)).await?;
            let mut late = 0;
            let mut state_progress = StateProgress::default();
            let mut next_watermark = range.watermark_ms;
            let mut schema = Arc::new(plan.schema().as_arrow().clone());
            if let (Some((store, state)), Some(st)) = (&self.stateful, &self.query.stateful) {
                let delay = self.query.watermark.as_ref().map(|w| w.delay_ms);
                let rows = {
                    let mut state = state.lock();
                    let out =
                        st.process(&mut state, &output, range.watermark_ms, delay, self.mode)?;
                    late = out.late_rows;
                    next_watermark = out.next_watermark;
                    state_progress = StateProgress {
                        rows_total: out.rows_total,
                        rows_updated: out.rows_updated,
                        rows_removed: out.rows_removed,
                    };
                    // Before the commit: a restart resumes from this version.
                    store.write(range.batch_id, out.changes, || st.entries(&state))?;
                    out.rows
                };
                output = match &st.above {
                    None => {
                        schema = st.output.clone();
                        vec![rows]
                    }
                    Some((above, emitted)) => {
                        let rows = vec![RecordBatch::try_new(
                            emitted.clone(),
                            rows.columns().to_vec(),
                        )?];
                        let plan = swap_scan(above, &is_emitted, emitted.clone(), rows)?;
                        schema = Arc::new(plan.schema().as_arrow().clone());
                        session.collect_described(&plan, Some(&description)).await?
                    }
                };
            }
            if output.is_empty() {
                output.push(RecordBatch::new_empty(schema));
            }
            let written = self.sink.add_batch(range.batch_id, output).await?;
            Ok::<_, EmberError>((
                num_input_rows,
                written,
                late,
                state_progress,
                next_watermark,
                lost,
            ))
        }
        .instrument(tracing::info_span!("batch", batch = range.batch_id))
        .await?;
        let add_ms = add.elapsed().as_millis() as u64;
        let commit = Instant::now();
        self.checkpoint.commit(range.batch_id, next_watermark)?;
        *self.watermark.lock() = next_watermark;
        *self.shared.committed.lock() = Some(range.end.clone());
        let commit_ms = commit.elapsed().as_millis() as u64;
        let total = started.elapsed();
        let lag_rows = match self.source.available().await {
            Ok(available) => Some(range.end.rows_until(&available).max(0)),
            Err(_) => None,
        };
        let progress = Progress {
            id: self.shared.id.clone(),
            run_id: self.shared.run_id.clone(),
            name: self.shared.name.clone(),
            batch_id: range.batch_id,
            timestamp_ms: range.batch_time_ms,
            num_input_rows,
            input_rows_per_second: rate(num_input_rows, since_last),
            processed_rows_per_second: rate(num_input_rows, total),
            duration_ms: Durations {
                latest_offset: latest_ms,
                wal_commit: wal_ms,
                add_batch: add_ms,
                commit_offsets: commit_ms,
                trigger_execution: total.as_millis() as u64,
            },
            source: SourceProgress {
                description: self.source.describe(),
                start_offset: range.start.clone(),
                end_offset: range.end.clone(),
                num_input_rows,
                offsets_lost: lost,
                lag_rows,
            },
            sink: SinkProgress {
                description: self.sink.describe(),
                num_output_rows: written,
            },
            watermark_ms: range.watermark_ms,
            late_rows_dropped: late,
            state: state_progress,
        };
        tracing::info!(
            batch = range.batch_id,
            input_rows = num_input_rows,
            output_rows = written,
            ms = total.as_millis() as u64,
            "batch committed"
        );
        if let Some(writer) = &self.progress_to {
            let (writer, progress) = (writer.clone(), progress.clone());
            tokio::spawn(async move {
                if let Err(e) = writer.write_progress(&progress).await {
                    tracing::warn!(error = %e, "could not report progress to influxdb");
                }
            });
        }
        let mut recent = self.shared.progress.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(progress);
        Ok(())
    }
}

impl Runner {
    fn description(&self, batch: u64) -> String {
        format!(
            "streaming query {} batch {batch}",
            self.shared.name.as_deref().unwrap_or(&self.shared.id)
        )
    }

    /// A stream-stream join's batch: each side's plan over its stream's new rows, the
    /// join with the kept rows, then the plan above the join and the sink.
    async fn run_join(
        &self,
        range: &BatchRange,
        store: &StateStore,
        state: &Mutex<OpState>,
        st: &StatefulPlan,
    ) -> Result<(i64, usize, usize, StateProgress, Option<i64>, i64)> {
        let Operator::Join(op) = &st.op else {
            unreachable!("called for joins")
        };
        let session = self.df.session();
        let description = self.description(range.batch_id);
        let lost_before = self.source.offsets_lost();
        let mut plans = [op.left.plan.clone(), op.right.plan.clone()];
        let mut num_input_rows = 0;
        for (i, stream) in self.streams.iter().enumerate() {
            let (table, rows) = batch_table(
                stream,
                &CombinedSource::part(&range.start, i),
                &CombinedSource::part(&range.end, i),
            )
            .await?;
            num_input_rows += rows;
            let this = |p: &dyn TableProvider| {
                p.downcast_ref::<StreamTable>()
                    .is_some_and(|t| same(&t.source, stream))
            };
            for plan in plans.iter_mut() {
                *plan = swap_provider(plan, &this, table.clone())?;
            }
        }
        let lost = self.source.offsets_lost() - lost_before;
        let left = session
            .collect_described(&plans[0], Some(&description))
            .await?;
        let right = session
            .collect_described(&plans[1], Some(&description))
            .await?;
        let (batch, progress) = {
            let mut state = state.lock();
            let OpState::Join(join_state) = &mut *state else {
                unreachable!("state made for its operator")
            };
            let before = super::join::JoinOp::rows(join_state);
            let (batch, changes) = op.process(
                join_state,
                range.batch_id,
                &left,
                &right,
                range.watermark_ms,
            )?;
            let after = super::join::JoinOp::rows(join_state);
            store.write(range.batch_id, changes, || op.entries(join_state))?;
            (
                batch,
                StateProgress {
                    rows_total: after,
                    rows_updated: after.saturating_sub(before),
                    rows_removed: before.saturating_sub(after),
                },
            )
        };
        let joined = session
            .collect_described(&batch.plan, Some(&description))
            .await?;
        let (mut output, schema) = match &st.above {
            None => (joined, st.output.clone()),
            Some((above, emitted)) => {
                let rows = joined
                    .iter()
                    .map(|b| RecordBatch::try_new(emitted.clone(), b.columns().to_vec()))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let plan = swap_scan(above, &is_emitted, emitted.clone(), rows)?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                (
                    session.collect_described(&plan, Some(&description)).await?,
                    schema,
                )
            }
        };
        if output.is_empty() {
            output.push(RecordBatch::new_empty(schema));
        }
        let written = self.sink.add_batch(range.batch_id, output).await?;
        Ok((
            num_input_rows,
            written,
            batch.late_rows,
            progress,
            batch.next_watermark,
            lost,
        ))
    }
}

fn rate(rows: i64, over: Duration) -> f64 {
    let s = over.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        (rows as f64 / s * 10.0).round() / 10.0
    }
}

fn is_stream(provider: &dyn TableProvider) -> bool {
    provider.downcast_ref::<StreamTable>().is_some()
}

fn is_emitted(provider: &dyn TableProvider) -> bool {
    provider.downcast_ref::<Emitted>().is_some()
}

/// What a batch's plan scans instead of the stream: a table that reads the range in
/// the tasks (a Kafka source), or the rows the source read here; and the rows in the
/// range (counted from the offsets when the tasks read them).
async fn batch_table(
    source: &Arc<dyn Source>,
    start: &Offsets,
    end: &Offsets,
) -> Result<(Arc<dyn TableProvider>, i64)> {
    if let Some(table) = source.scan_table(start, end) {
        return Ok((table, start.rows_until(end)));
    }
    let input = source.read(start, end).await?;
    let rows = input.iter().map(|b| b.num_rows() as i64).sum();
    Ok((
        Arc::new(MemTable::try_new(source.schema(), vec![input])?),
        rows,
    ))
}

/// `plan` with the scan `is_target` picks (the stream, or a stateful operator's
/// output) replaced by these rows.
fn swap_scan(
    plan: &LogicalPlan,
    is_target: &dyn Fn(&dyn TableProvider) -> bool,
    schema: arrow::datatypes::SchemaRef,
    input: Vec<RecordBatch>,
) -> Result<LogicalPlan> {
    swap_provider(
        plan,
        is_target,
        Arc::new(MemTable::try_new(schema, vec![input])?),
    )
}

/// `plan` with the scan `is_target` picks reading `table` instead.
fn swap_provider(
    plan: &LogicalPlan,
    is_target: &dyn Fn(&dyn TableProvider) -> bool,
    table: Arc<dyn TableProvider>,
) -> Result<LogicalPlan> {
    let rewritten = plan.clone().transform_up_with_subqueries(|node| {
        if let LogicalPlan::TableScan(mut scan) = node {
            let target = source_as_provider(&scan.source).is_ok_and(|p| is_target(p.as_ref()));
            if target {
                scan.source = provider_as_source(table.clone());
                return Ok(Transformed::yes(LogicalPlan::TableScan(scan)));
            }
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(rewritten.data)
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
            if let Some(committed) = committed
                && self.source.latest(&committed).await? == committed
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
