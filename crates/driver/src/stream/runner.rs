//! A streaming query's micro-batch loop: plan a batch's ranges, write them ahead,
//! run the batch (stateless, stateful or a stream-stream join), hand its rows to the
//! sink, commit, report progress.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{Extension, LogicalPlan};
use ember_core::{EmberError, Result};
use parking_lot::Mutex;

use super::StreamTable;
use super::checkpoint::{BatchRange, Checkpoint};
use super::query::{
    Durations, OutputMode, Progress, SinkProgress, SourceProgress, StateProgress, Status, Trigger,
    same,
};
use super::sink::Sink;
use super::source::{CombinedSource, DataLoss, Offsets, Source};
use super::stateful::{QueryPlan, StatefulNode};
use crate::dataframe::DataFrame;
use ember_exec::stateful::store::BatchStats;
use ember_exec::stateful::{OpConfig, StatefulConfig};

pub(super) struct Shared {
    pub(super) id: String,
    pub(super) run_id: String,
    pub(super) name: Option<String>,
    pub(super) progress: Mutex<VecDeque<Progress>>,
    pub(super) status: Mutex<Status>,
    pub(super) stop: AtomicBool,
    /// The end offsets of the last committed batch.
    pub(super) committed: Mutex<Option<Offsets>>,
    /// The micro-batch loop has ended.
    pub(super) finished: AtomicBool,
}

impl crate::ui::StreamView for Shared {
    fn view(&self) -> crate::ui::status::StreamInfo {
        crate::ui::status::StreamInfo {
            id: self.id.clone(),
            run_id: self.run_id.clone(),
            name: self.name.clone(),
            active: !self.finished.load(Ordering::Acquire),
            status: self.status.lock().clone(),
            recent_progress: self.progress.lock().iter().cloned().collect(),
        }
    }
}

/// Progress reports kept for `recent_progress`.
pub(super) const RECENT: usize = 100;

pub(super) struct Runner {
    pub(super) df: DataFrame,
    pub(super) query: QueryPlan,
    pub(super) source: Arc<dyn Source>,
    /// The streams read: one, or a join's two (whose offsets `source` combines).
    pub(super) streams: Vec<Arc<dyn Source>>,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) checkpoint: Checkpoint,
    pub(super) trigger: Trigger,
    pub(super) shared: Arc<Shared>,
    pub(super) mode: OutputMode,
    /// A stream-stream join: each side's largest event time so far.
    pub(super) side_max: Mutex<Vec<Option<i64>>>,
    /// Where stateful operators keep their state (`state/0` of the checkpoint).
    pub(super) state_dir: ember_exec::storage::Dir,
    /// The watermark the next batch uses.
    pub(super) watermark: Mutex<Option<i64>>,
    pub(super) progress_to: Option<Arc<super::InfluxWriter>>,
    /// Progress reports on their way to InfluxDB: cut off with the query.
    pub(super) reports: Mutex<tokio::task::JoinSet<()>>,
    /// The source's data loss the last progress report counted.
    pub(super) loss_reported: Mutex<DataLoss>,
    /// Where each committed batch's progress is posted (the UI, the event log).
    pub(super) bus: Option<Arc<crate::events::ListenerBus>>,
}

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

    pub(super) async fn run(self) -> Result<()> {
        let last = self.checkpoint.last().await?;
        // The state after the last committed batch.
        if let Some((_, Some(commit))) = &last {
            *self.watermark.lock() = commit.next_watermark_ms;
            *self.side_max.lock() = commit.max_event_times.clone();
        }
        if let Some(config) = self.stateful_config(0, None) {
            let runtime = self.df.session().context().runtime_env();
            config
                .store(runtime.object_store_registry.as_ref())?
                .check_layout(&config.layout())
                .await?;
        }
        // The watermark the last batch run used: when the query's has moved on since,
        // a batch without new data emits and evicts what the new one closes.
        let (mut next_id, mut start, mut used_watermark) = match last {
            None => (0, self.source.initial().await?, None),
            Some((range, Some(_))) => (range.batch_id + 1, range.end, range.watermark_ms),
            Some((range, None)) => {
                // Planned but not committed when the last run stopped: the same ranges
                // and watermark again, so the sink sees exactly that batch.
                tracing::info!(batch = range.batch_id, "re-running an uncommitted batch");
                self.run_batch(&range, Instant::now(), Duration::ZERO, 0, 0)
                    .await?;
                (range.batch_id + 1, range.end, range.watermark_ms)
            }
        };
        if !self.no_data_batch_due(used_watermark) {
            *self.shared.committed.lock() = Some(start.clone());
        }
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
            self.checkpoint.renew().await?;
            let started = Instant::now();
            // Where the source's partitions stand now may be behind `start` (a topic
            // deleted and re-created): an error, or a new start, counted as data loss.
            start = self.source.resume(&start).await?;
            let mut end = self.source.latest(&start).await?;
            if let Some(target) = &target {
                end = end.capped_at(target, &start);
            }
            let latest_ms = started.elapsed().as_millis() as u64;
            let due = self.no_data_batch_due(used_watermark);
            if end == start && !due {
                *self.shared.committed.lock() = Some(start.clone());
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
            self.checkpoint.write_offsets(&range).await?;
            let wal_ms = wal.elapsed().as_millis() as u64;
            let since_last = last_trigger.elapsed();
            last_trigger = Instant::now();
            self.run_batch(&range, started, since_last, latest_ms, wal_ms)
                .await?;
            used_watermark = range.watermark_ms;
            let due = self.no_data_batch_due(used_watermark);
            if !due {
                *self.shared.committed.lock() = Some(end.clone());
            }
            start = end;
            next_id += 1;
            match self.trigger {
                Trigger::Once => {
                    *self.shared.committed.lock() = Some(start.clone());
                    break;
                }
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
        self.checkpoint.release().await
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
        let (num_input_rows, written, late, state_progress, (next_watermark, side_max), lost) =
            async {
                let (batch_plan, num_input_rows) = self.batch_plan(range).await?;
                // What `resume` found before this batch and the reads found since.
                let lost = {
                    let now = self.source.data_loss();
                    let mut reported = self.loss_reported.lock();
                    let lost = now - *reported;
                    *reported = now;
                    lost
                };
                // A stateful operator runs in the same job, one task per state partition.
                let config = self.stateful_config(range.batch_id, range.watermark_ms);
                let plan = match &config {
                    Some(config) => stateful_plan(batch_plan, config)?,
                    None => batch_plan,
                };
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let description = self.description(range.batch_id);
                let mut output = self
                    .df
                    .session()
                    .collect_described(&plan, Some(&description))
                    .await?;
                let mut late = 0;
                let mut state_progress = StateProgress::default();
                let mut next_watermark = range.watermark_ms;
                let mut side_max = self.side_max.lock().clone();
                if let (Some(config), Some(st)) = (&config, &self.query.stateful) {
                    let runtime = self.df.session().context().runtime_env();
                    let stats = batch_stats(config, runtime.object_store_registry.as_ref()).await?;
                    late = stats.late_rows;
                    state_progress = StateProgress {
                        rows_total: stats.rows_total,
                        rows_updated: stats.rows_updated,
                        rows_removed: stats.rows_removed,
                    };
                    let delay = self.query.watermark.as_ref().map(|w| w.delay_ms);
                    let moved_to = match st.join_delays {
                        // A join's watermark is the smaller of its sides'.
                        Some(delays) => {
                            side_max.resize(2, None);
                            for (m, t) in side_max.iter_mut().zip(&stats.max_event_times) {
                                *m = (*m).max(*t);
                            }
                            match (side_max[0], side_max[1]) {
                                (Some(l), Some(r)) => Some((l - delays[0]).min(r - delays[1])),
                                _ => None,
                            }
                        }
                        None => delay.zip(stats.max_event_time).map(|(d, t)| t - d),
                    };
                    if let Some(m) = moved_to {
                        next_watermark = Some(next_watermark.map_or(m, |w| w.max(m)));
                    }
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
                    (next_watermark, side_max),
                    lost,
                ))
            }
            .instrument(tracing::info_span!("batch", batch = range.batch_id))
            .await?;
        let add_ms = add.elapsed().as_millis() as u64;
        let commit = Instant::now();
        self.checkpoint
            .commit(range.batch_id, next_watermark, side_max.clone())
            .await?;
        *self.watermark.lock() = next_watermark;
        *self.side_max.lock() = side_max;
        let commit_ms = commit.elapsed().as_millis() as u64;
        let total = started.elapsed();
        let available = match self.source.available_when_planned() {
            Some(a) => Ok(a),
            None => self.source.available().await,
        };
        let lag_rows = available.ok().map(|a| range.end.lag_until(&a));
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
                offsets_lost: lost.offsets,
                data_loss_events: lost.events,
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
            late_rows = late,
            data_loss_events = lost.events,
            ms = total.as_millis() as u64,
            "batch committed"
        );
        if let Some(writer) = &self.progress_to {
            let (writer, progress) = (writer.clone(), progress.clone());
            let mut reports = self.reports.lock();
            while reports.try_join_next().is_some() {}
            reports.spawn(async move {
                if let Err(e) = writer.write_progress(&progress).await {
                    tracing::warn!(error = %e, "could not report progress to influxdb");
                }
            });
        }
        if let Some(bus) = &self.bus {
            bus.post(crate::events::AppEvent::StreamingBatchCommitted {
                progress: Box::new(progress.clone()),
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
    /// The batch's configuration of the query's partitioned stateful operator, if it
    /// has one.
    fn stateful_config(&self, batch_id: u64, watermark_ms: Option<i64>) -> Option<StatefulConfig> {
        let st = self.query.stateful.as_ref()?;
        Some(StatefulConfig {
            state_dir: self.state_dir.to_string(),
            query_id: self.shared.id.clone(),
            batch_id,
            watermark_ms,
            ..st.config(self.mode)
        })
    }

    /// Whether the watermark has moved since the last batch used it, so that a batch
    /// without new data has windows to emit and state to evict (Spark's no-data
    /// batch).
    fn no_data_batch_due(&self, used: Option<i64>) -> bool {
        // An inner join emits nothing when it evicts: no need for a batch of its own.
        let partitioned = matches!(
            self.query.stateful.as_ref().map(|st| &st.op),
            Some(OpConfig::Aggregate { .. } | OpConfig::Dedup { .. })
                | Some(OpConfig::Join {
                    outer: [true, _] | [_, true],
                    ..
                })
        );
        let now = *self.watermark.lock();
        let watermarked = self.query.watermark.is_some()
            || self
                .query
                .stateful
                .as_ref()
                .is_some_and(|st| st.join_delays.is_some());
        partitioned && watermarked && now.is_some() && now != used
    }

    /// The batch plan over the range's rows: each stream's scans read its part of
    /// the range. Also the rows in the range.
    async fn batch_plan(&self, range: &BatchRange) -> Result<(LogicalPlan, u64)> {
        if self.streams.len() <= 1 {
            let (table, rows) = batch_table(&self.source, &range.start, &range.end).await?;
            return Ok((swap_provider(&self.query.batch, &is_stream, table)?, rows));
        }
        let mut plan = self.query.batch.clone();
        let mut rows = 0;
        for (i, stream) in self.streams.iter().enumerate() {
            let (table, n) = batch_table(
                stream,
                &CombinedSource::part(&range.start, i),
                &CombinedSource::part(&range.end, i),
            )
            .await?;
            rows += n;
            let this = |p: &dyn TableProvider| {
                p.downcast_ref::<StreamTable>()
                    .is_some_and(|t| same(&t.source, stream))
            };
            plan = swap_provider(&plan, &this, table)?;
        }
        Ok((plan, rows))
    }

    fn description(&self, batch: u64) -> String {
        format!(
            "streaming query {} batch {batch}",
            self.shared.name.as_deref().unwrap_or(&self.shared.id)
        )
    }
}

fn rate(rows: u64, over: Duration) -> f64 {
    let s = over.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        (rows as f64 / s * 10.0).round() / 10.0
    }
}

/// What the tasks of a batch's stateful operator reported, summed.
async fn batch_stats(
    config: &StatefulConfig,
    stores: &dyn datafusion::execution::object_store::ObjectStoreRegistry,
) -> Result<BatchStats> {
    let store = config.store(stores)?;
    let mut sum = BatchStats::default();
    for p in 0..config.partitions {
        let s = store.stats(p, config.batch_id).await?;
        sum.late_rows += s.late_rows;
        sum.max_event_time = sum.max_event_time.max(s.max_event_time);
        sum.max_event_times
            .resize(sum.max_event_times.len().max(s.max_event_times.len()), None);
        for (m, t) in sum.max_event_times.iter_mut().zip(&s.max_event_times) {
            *m = (*m).max(*t);
        }
        sum.rows_total += s.rows_total;
        sum.rows_updated += s.rows_updated;
        sum.rows_removed += s.rows_removed;
    }
    Ok(sum)
}

/// The batch's plan with the stateful operator given the batch's configuration.
fn stateful_plan(plan: LogicalPlan, config: &StatefulConfig) -> Result<LogicalPlan> {
    let configured = plan.transform_up(|n| {
        if let LogicalPlan::Extension(e) = &n
            && let Some(node) = e.node.as_any().downcast_ref::<StatefulNode>()
        {
            return Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                node: Arc::new(StatefulNode {
                    config: config.clone(),
                    ..node.clone()
                }),
            })));
        }
        Ok(Transformed::no(n))
    })?;
    Ok(configured.data)
}

fn is_stream(provider: &dyn TableProvider) -> bool {
    provider.downcast_ref::<StreamTable>().is_some()
}

/// What a batch's plan scans instead of the stream: a table that reads the range in
/// the tasks (a Kafka source), or the rows the source read here; and the rows in the
/// range (counted from the offsets when the tasks read them).
async fn batch_table(
    source: &Arc<dyn Source>,
    start: &Offsets,
    end: &Offsets,
) -> Result<(Arc<dyn TableProvider>, u64)> {
    // Checked before anything is read: a range that goes back is a bug, not rows.
    let in_range = start.rows_until(end)?;
    if let Some(table) = source.scan_table(start, end).await? {
        return Ok((table, in_range));
    }
    let input = source.read(start, end).await?;
    let rows = input.iter().map(|b| b.num_rows() as u64).sum();
    Ok((
        Arc::new(MemTable::try_new(source.schema(), vec![input])?),
        rows,
    ))
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
