//! Streaming sources: what a micro-batch reads, as fixed offset ranges per
//! (topic, partition), so that a batch run again reads exactly the same rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
use ember_log::{ConsumerRecord, Log};
use serde::{Deserialize, Serialize};

/// Offsets per `topic` → partition → offset (the next offset to read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets(pub BTreeMap<String, BTreeMap<i32, i64>>);

impl Offsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    pub fn set(&mut self, topic: &str, partition: i32, offset: i64) {
        self.0
            .entry(topic.to_string())
            .or_default()
            .insert(partition, offset);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    /// Each offset no further than `limit`'s for the same partition, nor before
    /// `floor`'s (a batch never ends before it starts).
    pub fn capped_at(mut self, limit: &Offsets, floor: &Offsets) -> Offsets {
        for (t, ps) in self.0.iter_mut() {
            for (p, o) in ps.iter_mut() {
                if let Some(l) = limit.get(t, *p) {
                    *o = (*o).min(l.max(floor.get(t, *p).unwrap_or(l)));
                }
            }
        }
        self
    }

    /// Rows between `self` (start) and `end`. A range never goes back: a partition
    /// whose end lies before its start is an error naming it (sources report lost
    /// offsets in [`Source::resume`] before a batch is planned).
    pub fn rows_until(&self, end: &Offsets) -> Result<u64> {
        let mut rows = 0u64;
        for (t, p, to) in end.iter() {
            let from = self.get(t, p).unwrap_or(to);
            let n = u64::try_from(to - from).map_err(|_| {
                EmberError::Internal(format!(
                    "the range of {t}-{p} goes back, from offset {from} to {to}"
                ))
            })?;
            rows += n;
        }
        Ok(rows)
    }

    /// Records after `self` up to `available`, per partition never below zero
    /// (the consumer lag).
    pub fn lag_until(&self, available: &Offsets) -> i64 {
        available
            .iter()
            .map(|(t, p, a)| (a - self.get(t, p).unwrap_or(a)).max(0))
            .sum()
    }
}

/// Where a new query starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartingOffsets {
    #[default]
    Earliest,
    Latest,
    /// Explicit offsets; partitions not named start at the earliest. As in Spark,
    /// `-2` means a partition's earliest offset and `-1` its latest.
    Given(Offsets),
}

impl StartingOffsets {
    /// `earliest`, `latest`, or Spark's JSON: `{"topic": {"0": 23, "1": -2}}`.
    pub fn parse(text: &str) -> Result<StartingOffsets> {
        match text.trim() {
            "earliest" => return Ok(StartingOffsets::Earliest),
            "latest" => return Ok(StartingOffsets::Latest),
            _ => {}
        }
        let bad = |why: String| {
            EmberError::Config(format!(
                "starting offsets '{text}': {why}; expected earliest, latest or JSON like {{\"topic\": {{\"0\": 23, \"1\": -2}}}}"
            ))
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let topics = v.as_object().ok_or_else(|| bad("not an object".into()))?;
        let mut offsets = Offsets::default();
        for (topic, partitions) in topics {
            let partitions = partitions
                .as_object()
                .ok_or_else(|| bad(format!("{topic}: not an object of partitions")))?;
            for (p, o) in partitions {
                let p: i32 = p
                    .parse()
                    .map_err(|_| bad(format!("{topic}: partition '{p}' is not a number")))?;
                let o = o
                    .as_i64()
                    .filter(|o| *o >= -2)
                    .ok_or_else(|| bad(format!("{topic}-{p}: {o} is not an offset")))?;
                offsets.set(topic, p, o);
            }
        }
        Ok(StartingOffsets::Given(offsets))
    }

    /// Where partition (`topic`, `p`) starts, given its earliest and latest offsets.
    pub(crate) fn resolve(&self, topic: &str, p: i32, earliest: i64, latest: i64) -> i64 {
        match self {
            StartingOffsets::Earliest => earliest,
            StartingOffsets::Latest => latest,
            StartingOffsets::Given(given) => match given.get(topic, p) {
                Some(-1) => latest,
                Some(-2) | None => earliest,
                Some(o) => o,
            },
        }
    }
}

/// A source of a streaming query.
#[async_trait::async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The rows' schema.
    fn schema(&self) -> SchemaRef;
    /// Offsets a new query starts from.
    async fn initial(&self) -> Result<Offsets>;
    /// Offsets the next batch may read up to, from `start` (bounded by the source's
    /// per-trigger limit).
    async fn latest(&self, start: &Offsets) -> Result<Offsets>;
    /// Where every partition ends now (no per-trigger limit).
    async fn available(&self) -> Result<Offsets>;
    /// Where every partition ended when [`latest`](Self::latest) last asked, for a
    /// source whose [`available`](Self::available) costs requests (the progress's
    /// lag is measured against it, as Spark measures against the offsets it planned
    /// with); none to ask `available` instead.
    fn available_when_planned(&self) -> Option<Offsets> {
        None
    }
    /// The rows in `[start, end)`.
    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>>;
    /// For progress reports.
    fn describe(&self) -> String;
    /// Where the next batch starts: `start`, checked against what the source holds.
    /// A partition that ends before its offset in `start` (its topic deleted and
    /// re-created, its log truncated, a starting offset past its end), or whose
    /// earliest offset lies beyond it (retention deleted records before they were
    /// read) has lost data: an error naming it, or with `fail_on_data_loss(false)` the
    /// partition is read again from its earliest offset, logged and counted
    /// ([`data_loss`](Self::data_loss)).
    async fn resume(&self, start: &Offsets) -> Result<Offsets> {
        Ok(start.clone())
    }
    /// Data lost so far and skipped (with `fail_on_data_loss(false)`).
    fn data_loss(&self) -> DataLoss {
        DataLoss::default()
    }
    /// A table whose scan reads `[start, end)` in the tasks themselves (one task per
    /// partition range), instead of [`read`](Self::read) in the driver; none when the
    /// source cannot (the embedded log lives in the driver's process). Offsets that
    /// are already lost are an error here, or skipped and counted.
    async fn scan_table(
        &self,
        _start: &Offsets,
        _end: &Offsets,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        Ok(None)
    }
}

pub use ember_exec::kafka_scan::kafka_schema;

/// Data a source found lost and skipped, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DataLoss {
    /// Times a partition was found behind where the query stood, or with records
    /// deleted before they were read.
    pub events: u64,
    /// Offsets known to be skipped (those retention deleted; a partition that went
    /// back, deleted and re-created, says nothing of how many records it lost).
    pub offsets: u64,
}

impl std::ops::Sub for DataLoss {
    type Output = DataLoss;
    fn sub(self, before: DataLoss) -> DataLoss {
        DataLoss {
            events: self.events - before.events,
            offsets: self.offsets - before.offsets,
        }
    }
}

/// Counts a source's [`DataLoss`], shared with the reads that find it.
#[derive(Debug, Default)]
pub(crate) struct LossCounter {
    events: std::sync::atomic::AtomicU64,
    offsets: std::sync::atomic::AtomicU64,
}

impl LossCounter {
    pub(crate) fn add(&self, offsets: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.events.fetch_add(1, Relaxed);
        self.offsets.fetch_add(offsets, Relaxed);
    }

    pub(crate) fn get(&self) -> DataLoss {
        use std::sync::atomic::Ordering::Relaxed;
        DataLoss {
            events: self.events.load(Relaxed),
            offsets: self.offsets.load(Relaxed),
        }
    }
}

/// Where partition `topic`-`partition` is read from next, the query standing at
/// `from` and the partition holding `earliest..latest`: `from`, or when records
/// were lost, an error (`fail`) or, logged and counted in `lost`, `earliest`.
pub(crate) fn resume_at(
    topic: &str,
    partition: i32,
    from: i64,
    (earliest, latest): (i64, i64),
    fail: bool,
    lost: &LossCounter,
) -> Result<i64> {
    if from > latest {
        if fail {
            return Err(EmberError::Internal(
                ember_exec::kafka_scan::data_loss_behind(topic, partition, from, latest),
            ));
        }
        tracing::warn!(
            topic,
            partition,
            from,
            latest,
            earliest,
            "data loss: the partition ends before the query's offset (deleted and re-created, or truncated); reading it from its earliest offset"
        );
        lost.add(0);
        return Ok(earliest);
    }
    if from < earliest {
        if fail {
            return Err(data_lost(topic, partition, from, earliest));
        }
        tracing::warn!(
            topic,
            partition,
            from,
            earliest,
            "data loss: skipping offsets deleted (retention) before they were read"
        );
        lost.add((earliest - from) as u64);
        return Ok(earliest);
    }
    Ok(from)
}

/// Records as a batch of [`kafka_schema`].
pub fn records_to_batch(records: &[ConsumerRecord]) -> Result<RecordBatch> {
    let mut rows = ember_exec::kafka_scan::KafkaRows::default();
    for r in records {
        rows.push(ember_exec::kafka_scan::KafkaRecord {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp,
            log_append_time: r.log_append_time,
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        });
    }
    Ok(rows.finish()?)
}

/// The embedded log as a source.
#[derive(Debug)]
pub struct LogSource {
    log: Arc<Log>,
    topics: Vec<String>,
    starting: StartingOffsets,
    max_offsets_per_trigger: Option<i64>,
    fail_on_data_loss: bool,
    lost: Arc<LossCounter>,
}

impl LogSource {
    pub fn new(log: Arc<Log>, topics: Vec<String>) -> Self {
        LogSource {
            log,
            topics,
            starting: StartingOffsets::Earliest,
            max_offsets_per_trigger: None,
            fail_on_data_loss: true,
            lost: Arc::default(),
        }
    }

    /// When offsets a batch should read are gone (see [`Source::resume`]), fail (the
    /// default, naming them) or read on from the earliest offset and count them
    /// ([`Source::data_loss`]).
    pub fn fail_on_data_loss(mut self, fail: bool) -> Self {
        self.fail_on_data_loss = fail;
        self
    }

    pub fn starting_offsets(mut self, starting: StartingOffsets) -> Self {
        self.starting = starting;
        self
    }

    /// At most `max` records per batch, over all partitions; `max` must be positive.
    pub fn max_offsets_per_trigger(mut self, max: i64) -> Result<Self> {
        self.max_offsets_per_trigger = Some(positive_max_offsets(max)?);
        Ok(self)
    }

    fn partitions(&self) -> Result<Vec<(String, i32)>> {
        let mut out = vec![];
        for t in &self.topics {
            let topic = self
                .log
                .topic(t)
                .map_err(|e| EmberError::Config(format!("streaming source: {e}")))?;
            out.extend(topic.partitions.iter().map(|p| (t.clone(), p.id)));
        }
        Ok(out)
    }
}

/// `max_offsets_per_trigger`, which must be at least 1.
pub(crate) fn positive_max_offsets(max: i64) -> Result<i64> {
    if max < 1 {
        return Err(EmberError::Config(format!(
            "max_offsets_per_trigger {max}: must be at least 1 (records per batch)"
        )));
    }
    Ok(max)
}

fn log_error(e: ember_log::LogError) -> EmberError {
    EmberError::Internal(format!("reading the log: {e}"))
}

/// Where a batch ends, given each partition's `(topic, partition, from, latest)`: at
/// `latest`, or under a per-trigger limit, at a share of it in proportion to what each
/// partition has waiting (as Spark's Kafka source does), so that partitions keep pace
/// in event time and one does not make another's rows late.
pub(crate) fn batch_end(ranges: Vec<(String, i32, i64, i64)>, max: Option<i64>) -> Offsets {
    let waiting: i64 = ranges
        .iter()
        .map(|(_, _, from, latest)| (latest - from).max(0))
        .sum();
    let mut end = Offsets::default();
    for (t, p, from, latest) in ranges {
        // A partition that went back since `resume` looked (deleted and made again)
        // holds nothing new for this batch; the next batch's `resume` reports it.
        let latest = latest.max(from);
        let to = match max {
            Some(max) if waiting > max => {
                let available = (latest - from).max(0);
                let share = (available as i128 * max as i128 / waiting as i128) as i64;
                from + share.max(i64::from(available > 0))
            }
            _ => latest,
        };
        end.set(&t, p, to);
    }
    end
}

#[async_trait::async_trait]
impl Source for LogSource {
    fn schema(&self) -> SchemaRef {
        kafka_schema()
    }

    async fn initial(&self) -> Result<Offsets> {
        let mut offsets = Offsets::default();
        for (t, p) in self.partitions()? {
            let partition = self.log.partition(&t, p).map_err(log_error)?;
            let offset =
                self.starting
                    .resolve(&t, p, partition.start_offset(), partition.end_offset());
            offsets.set(&t, p, offset);
        }
        Ok(offsets)
    }

    async fn latest(&self, start: &Offsets) -> Result<Offsets> {
        let partitions = self.partitions()?;
        let mut ranges = vec![];
        for (t, p) in partitions {
            let partition = self.log.partition(&t, p).map_err(log_error)?;
            let from = start.get(&t, p).unwrap_or_else(|| partition.start_offset());
            ranges.push((t, p, from, partition.end_offset()));
        }
        Ok(batch_end(ranges, self.max_offsets_per_trigger))
    }

    async fn resume(&self, start: &Offsets) -> Result<Offsets> {
        let mut resumed = start.clone();
        for (t, p, from) in start.iter() {
            // A partition gone with its topic is not data loss here: the read fails.
            let Ok(partition) = self.log.partition(t, p) else {
                continue;
            };
            let bounds = (partition.start_offset(), partition.end_offset());
            let at = resume_at(t, p, from, bounds, self.fail_on_data_loss, &self.lost)?;
            resumed.set(t, p, at);
        }
        Ok(resumed)
    }

    async fn available(&self) -> Result<Offsets> {
        let mut end = Offsets::default();
        for (t, p) in self.partitions()? {
            end.set(
                &t,
                p,
                self.log.partition(&t, p).map_err(log_error)?.end_offset(),
            );
        }
        Ok(end)
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let (log, start, end) = (self.log.clone(), start.clone(), end.clone());
        let lost = (!self.fail_on_data_loss).then(|| self.lost.clone());
        tokio::task::spawn_blocking(move || read_log(&log, &start, &end, lost.as_deref()))
            .await
            .map_err(|e| EmberError::Internal(e.to_string()))?
    }

    fn describe(&self) -> String {
        format!("log[{}]", self.topics.join(","))
    }

    fn data_loss(&self) -> DataLoss {
        self.lost.get()
    }
}

/// Reads `[start, end)`; offsets retention deleted fail the read, or with `lost` are
/// skipped and counted there.
fn read_log(
    log: &Log,
    start: &Offsets,
    end: &Offsets,
    lost: Option<&LossCounter>,
) -> Result<Vec<RecordBatch>> {
    let mut batches = vec![];
    for (t, p, to) in end.iter() {
        let mut from = start.get(t, p).unwrap_or(to);
        if from >= to {
            continue;
        }
        let log_start = log.partition(t, p).map_err(log_error)?.start_offset();
        if from < log_start {
            let Some(lost) = lost else {
                return Err(data_lost(t, p, from, log_start));
            };
            tracing::warn!(
                topic = t,
                partition = p,
                from,
                to = log_start,
                "skipping offsets lost to retention"
            );
            lost.add((log_start.min(to) - from) as u64);
            from = log_start;
            if from >= to {
                continue;
            }
        }
        let records = ember_log::read_range(log, t, p, from, to).map_err(log_error)?;
        batches.push(records_to_batch(&records)?);
    }
    Ok(batches)
}

/// The error of a read that needs offsets retention deleted.
pub(super) fn data_lost(topic: &str, partition: i32, from: i64, earliest: i64) -> EmberError {
    EmberError::Internal(ember_exec::kafka_scan::data_loss(
        topic, partition, from, earliest,
    ))
}

/// The sources of a query over two streams (a stream-stream join), as one: each
/// part's offsets are kept under its number (`0/topic`, `1/topic`).
#[derive(Debug)]
pub(crate) struct CombinedSource {
    pub(crate) parts: Vec<Arc<dyn Source>>,
}

impl CombinedSource {
    fn merge(parts: Vec<Offsets>) -> Offsets {
        let mut all = Offsets::default();
        for (i, o) in parts.into_iter().enumerate() {
            for (t, p, offset) in o.iter() {
                all.set(&format!("{i}/{t}"), p, offset);
            }
        }
        all
    }

    /// Part `i`'s offsets.
    pub(crate) fn part(all: &Offsets, i: usize) -> Offsets {
        let prefix = format!("{i}/");
        let mut o = Offsets::default();
        for (t, p, offset) in all.iter() {
            if let Some(topic) = t.strip_prefix(&prefix) {
                o.set(topic, p, offset);
            }
        }
        o
    }
}

#[async_trait::async_trait]
impl Source for CombinedSource {
    fn schema(&self) -> SchemaRef {
        self.parts[0].schema()
    }

    async fn initial(&self) -> Result<Offsets> {
        let mut parts = vec![];
        for s in &self.parts {
            parts.push(s.initial().await?);
        }
        Ok(Self::merge(parts))
    }

    async fn latest(&self, start: &Offsets) -> Result<Offsets> {
        let mut parts = vec![];
        for (i, s) in self.parts.iter().enumerate() {
            parts.push(s.latest(&Self::part(start, i)).await?);
        }
        Ok(Self::merge(parts))
    }

    fn available_when_planned(&self) -> Option<Offsets> {
        let parts = self
            .parts
            .iter()
            .map(|s| s.available_when_planned())
            .collect::<Option<Vec<_>>>()?;
        Some(Self::merge(parts))
    }

    async fn available(&self) -> Result<Offsets> {
        let mut parts = vec![];
        for s in &self.parts {
            parts.push(s.available().await?);
        }
        Ok(Self::merge(parts))
    }

    async fn read(&self, _start: &Offsets, _end: &Offsets) -> Result<Vec<RecordBatch>> {
        Err(EmberError::Internal(
            "the streams of a join are read one by one".into(),
        ))
    }

    fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    async fn resume(&self, start: &Offsets) -> Result<Offsets> {
        let mut parts = vec![];
        for (i, s) in self.parts.iter().enumerate() {
            parts.push(s.resume(&Self::part(start, i)).await?);
        }
        Ok(Self::merge(parts))
    }

    fn data_loss(&self) -> DataLoss {
        self.parts.iter().fold(DataLoss::default(), |sum, s| {
            let l = s.data_loss();
            DataLoss {
                events: sum.events + l.events,
                offsets: sum.offsets + l.offsets,
            }
        })
    }
}
