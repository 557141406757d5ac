//! One partition: an ordered list of segments, offsets assigned on append, reads by
//! offset and by timestamp, retention, idempotent-producer checks, and a watch of the
//! next offset that long-polling readers wait on.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::batch::{self, BatchHeader};
use crate::config::{Durability, TopicConfig};
use crate::error::{LogError, Result};
use crate::recovery::{self, MAX_RELATIVE_OFFSET};
use crate::segment::Segment;
use crate::state;

/// Batches remembered per producer to recognise a retried one.
const PRODUCER_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy)]
struct ProducerBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<ProducerBatch>,
}

impl ProducerState {
    fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    fn remember(&mut self, b: ProducerBatch) {
        if self.batches.len() == PRODUCER_BATCHES {
            self.batches.pop_front();
        }
        self.batches.push_back(b);
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// A retry of a batch the log already has (idempotent producer): not written again.
    pub duplicate: bool,
}

/// What a read returns.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Whole record batches (may start before the offset asked for: skip those records).
    pub records: Bytes,
    /// The offset the next append gets (the end of the log).
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

struct Inner {
    segments: BTreeMap<i64, Segment>,
    next_offset: i64,
    log_start_offset: i64,
    producers: HashMap<i64, ProducerState>,
    /// Appends since the last flush.
    dirty: bool,
    last_sync: Instant,
    /// Every offset below it is on disk.
    flushed: i64,
    /// What `recovery-point` says (at most `flushed`).
    recovery_point: i64,
}

pub struct Partition {
    pub topic: String,
    pub id: i32,
    dir: PathBuf,
    config: TopicConfig,
    durability: Durability,
    inner: Mutex<Inner>,
    end: watch::Sender<i64>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}-{})", self.topic, self.id)
    }
}

impl Partition {
    /// Opens (or creates) the partition in `dir`: checks every segment, cuts a torn
    /// tail of the last one and reports any other damage (see recovery.rs).
    pub(crate) fn open(
        topic: &str,
        id: i32,
        dir: &Path,
        config: TopicConfig,
        durability: Durability,
    ) -> Result<Partition> {
        let (segments, next_offset) = recovery::recover(topic, id, dir)?;
        let log_start_offset = *segments.keys().next().expect("one segment");
        let mut producers: HashMap<i64, ProducerState> = HashMap::new();
        for segment in segments.values() {
            for h in segment.headers()? {
                if h.producer_id >= 0 && h.base_sequence >= 0 {
                    let state = producers.entry(h.producer_id).or_default();
                    state.epoch = h.producer_epoch;
                    state.remember(ProducerBatch {
                        first_seq: h.base_sequence,
                        last_seq: h.base_sequence.wrapping_add(h.last_offset_delta),
                        base_offset: h.base_offset,
                    });
                }
            }
        }
        let (end, _) = watch::channel(next_offset);
        Ok(Partition {
            topic: topic.to_string(),
            id,
            dir: dir.to_path_buf(),
            config,
            durability,
            inner: Mutex::new(Inner {
                segments,
                next_offset,
                log_start_offset,
                producers,
                dirty: false,
                last_sync: Instant::now(),
                flushed: next_offset,
                recovery_point: next_offset,
            }),
            end,
        })
    }

    /// Appends one record batch (format v2, as encoded by a producer): checks it,
    /// assigns its offsets, and writes it; a retried batch of an idempotent producer
    /// is recognised and not written twice.
    pub fn append(&self, batch: &mut [u8]) -> Result<Appended> {
        let header = BatchHeader::parse(batch)?;
        if header.size != batch.len() {
            return Err(LogError::Corrupt(format!(
                "expected one batch of {} bytes, got {} bytes",
                header.size,
                batch.len()
            )));
        }
        crate::batch::check_records(batch, &header)?;
        let mut inner = self.inner.lock();
        let idempotent = header.producer_id >= 0 && header.base_sequence >= 0;
        let last_seq = header.base_sequence.wrapping_add(header.last_offset_delta);
        if idempotent && let Some(state) = inner.producers.get(&header.producer_id) {
            if header.producer_epoch < state.epoch {
                return Err(LogError::ProducerFenced {
                    producer_id: header.producer_id,
                    epoch: header.producer_epoch,
                    current: state.epoch,
                });
            }
            if header.producer_epoch == state.epoch {
                if let Some(dup) = state
                    .batches
                    .iter()
                    .find(|b| b.first_seq == header.base_sequence && b.last_seq == last_seq)
                {
                    return Ok(Appended {
                        base_offset: dup.base_offset,
                        last_offset: dup.base_offset + header.last_offset_delta as i64,
                        duplicate: true,
                    });
                }
                let expected = state.last_seq().map_or(0, |s| s.wrapping_add(1));
                if header.base_sequence != expected {
                    return Err(LogError::OutOfOrderSequence {
                        producer_id: header.producer_id,
                        expected,
                        got: header.base_sequence,
                    });
                }
            }
        }
        let base_offset = inner.next_offset;
        if base_offset
            .checked_add(header.last_offset_delta as i64 + 1)
            .is_none()
        {
            return Err(LogError::InvalidConfig(format!(
                "{}-{}: offsets are exhausted at {base_offset}",
                self.topic, self.id
            )));
        }
        batch::set_base_offset(batch, base_offset);
        let header = BatchHeader {
            base_offset,
            ..header
        };
        let roll = {
            let active = inner.segments.values().next_back().expect("one segment");
            active.size > 0
                && (active.size + batch.len() as u64 > self.config.segment_bytes
                    || header.last_offset() - active.base_offset > MAX_RELATIVE_OFFSET
                    || self.config.segment_ms.is_some_and(|ms| {
                        active
                            .modified
                            .elapsed()
                            .is_ok_and(|age| age > Duration::from_millis(ms))
                    }))
        };
        if roll {
            self.roll_locked(&mut inner)?;
        }
        let active = inner
            .segments
            .values_mut()
            .next_back()
            .expect("one segment");
        active.append(batch, &header)?;
        inner.next_offset = header.last_offset() + 1;
        if idempotent {
            let state = inner.producers.entry(header.producer_id).or_default();
            if header.producer_epoch > state.epoch {
                *state = ProducerState::default();
            }
            state.epoch = header.producer_epoch;
            state.remember(ProducerBatch {
                first_seq: header.base_sequence,
                last_seq,
                base_offset,
            });
        }
        inner.dirty = true;
        match self.durability {
            // The batch is on disk before it is acknowledged; the recovery point
            // follows by maintenance (see `flush_due`).
            Durability::EveryAppend => self.sync_data(&mut inner)?,
            Durability::Interval(every) if inner.last_sync.elapsed() >= every => {
                self.flush(&mut inner)?;
            }
            Durability::Interval(_) | Durability::Never => {}
        }
        let next = inner.next_offset;
        drop(inner);
        self.end.send_replace(next);
        Ok(Appended {
            base_offset,
            last_offset: header.last_offset(),
            duplicate: false,
        })
    }

    /// Writes pending appends to disk and moves the recovery point to the end, in
    /// every durability mode (on shutdown: a clean restart then has nothing to cut).
    pub fn sync(&self) -> Result<()> {
        let mut inner = self.inner.lock();
        self.flush(&mut inner)
    }

    /// The periodic flush (`Log::maintain`): what [`Durability::Interval`] asks for;
    /// under `EveryAppend` the data is on disk already and only the recovery point
    /// catches up; nothing under [`Durability::Never`] (the OS decides).
    pub(crate) fn flush_due(&self) -> Result<()> {
        match self.durability {
            Durability::Interval(_) | Durability::EveryAppend => self.sync(),
            Durability::Never => Ok(()),
        }
    }

    /// Syncs pending appends and records the end of the log as the recovery point:
    /// recovery will not cut below it.
    ///
    /// The file is written after the data is on disk, so it never claims more. Under
    /// `EveryAppend` it is not written at every append (an atomic write is two more
    /// fsyncs, which made appends about three times slower) but here, by the
    /// once-a-second maintenance and at shutdown; until then damage in the newest
    /// acknowledged batches is treated like a torn tail. Kafka itself checkpoints
    /// recovery points only once a minute.
    fn flush(&self, inner: &mut Inner) -> Result<()> {
        if inner.dirty {
            self.sync_data(inner)?;
        }
        if inner.recovery_point != inner.flushed {
            recovery::write_recovery_point(&self.dir, inner.flushed)?;
            inner.recovery_point = inner.flushed;
        }
        Ok(())
    }

    /// Syncs the active segment (older ones were synced when they were rolled).
    fn sync_data(&self, inner: &mut Inner) -> Result<()> {
        inner.segments.values().next_back().expect("one").sync()?;
        inner.dirty = false;
        inner.last_sync = Instant::now();
        inner.flushed = inner.next_offset;
        Ok(())
    }

    /// Syncs the active segment, starts a new one at the end of the log (its name
    /// made durable), and moves the recovery point to it: only the last segment may
    /// then hold unflushed data.
    fn roll_locked(&self, inner: &mut Inner) -> Result<()> {
        let next = inner.next_offset;
        self.sync_data(inner)?;
        let segment = Segment::create(&self.dir, next)?;
        state::sync_dir(&self.dir)?;
        inner.segments.insert(next, segment);
        self.flush(inner)
    }

    /// Whole batches from the one holding `offset`, up to about `max_bytes`.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Fetched> {
        let (views, high_watermark, log_start_offset) = {
            let inner = self.inner.lock();
            if offset < inner.log_start_offset || offset > inner.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start: inner.log_start_offset,
                    end: inner.next_offset,
                });
            }
            let views: Vec<_> = inner
                .segments
                .range(..=offset)
                .next_back()
                .into_iter()
                .chain(inner.segments.range(offset + 1..))
                .map(|(_, s)| s.view(offset))
                .take(2)
                .collect();
            (views, inner.next_offset, inner.log_start_offset)
        };
        let mut records = Bytes::new();
        if offset < high_watermark {
            for view in views {
                if let Some(bytes) = view.read(offset, max_bytes.max(1))? {
                    records = bytes;
                    break;
                }
            }
        }
        Ok(Fetched {
            records,
            high_watermark,
            log_start_offset,
        })
    }

    /// The first offset whose record timestamp is at or after `timestamp` (with that
    /// timestamp), or none when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let views: Vec<_> = {
            let inner = self.inner.lock();
            inner
                .segments
                .values()
                .filter_map(|s| s.time_view(timestamp))
                .collect()
        };
        for view in views {
            let Some(batch) = view.first_batch_at(timestamp)? else {
                continue;
            };
            let mut buf = batch.clone();
            let records = crate::batch::decode_records(&mut buf, "a batch")?;
            if let Some(r) = records.iter().find(|r| r.timestamp >= timestamp) {
                return Ok(Some((r.offset, r.timestamp)));
            }
        }
        Ok(None)
    }

    /// The largest record timestamp the partition holds, if it holds any.
    pub fn max_timestamp(&self) -> Option<i64> {
        let inner = self.inner.lock();
        inner
            .segments
            .values()
            .map(|s| s.max_timestamp)
            .filter(|&t| t >= 0)
            .max()
    }

    /// The largest id of an idempotent producer whose batches the partition holds.
    pub(crate) fn largest_producer_id(&self) -> Option<i64> {
        self.inner.lock().producers.keys().max().copied()
    }

    /// The offset the next append gets.
    pub fn end_offset(&self) -> i64 {
        self.inner.lock().next_offset
    }

    pub fn start_offset(&self) -> i64 {
        self.inner.lock().log_start_offset
    }

    /// Changes whenever the end offset moves (for long polls).
    pub fn watch_end(&self) -> watch::Receiver<i64> {
        self.end.subscribe()
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().segments.values().map(|s| s.size).sum()
    }

    /// Deletes whole segments (never the active one) older than `retention_ms` or
    /// beyond `retention_bytes`; returns how many went.
    pub fn enforce_retention(&self, now: SystemTime) -> Result<usize> {
        let mut inner = self.inner.lock();
        let mut deleted = 0;
        loop {
            if inner.segments.len() <= 1 {
                break;
            }
            let total: u64 = inner.segments.values().map(|s| s.size).sum();
            let oldest = inner.segments.values().next().expect("segments");
            let too_old = self.config.retention_ms.is_some_and(|ms| {
                // By the newest record it holds, like Kafka; by file time without one.
                let newest = if oldest.max_timestamp >= 0 {
                    SystemTime::UNIX_EPOCH + Duration::from_millis(oldest.max_timestamp as u64)
                } else {
                    oldest.modified
                };
                now.duration_since(newest)
                    .is_ok_and(|age| age > Duration::from_millis(ms))
            });
            let too_big = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.size >= limit);
            if !(too_old || too_big) {
                break;
            }
            let (_, segment) = inner.segments.pop_first().expect("segments");
            tracing::info!(
                topic = %self.topic,
                partition = self.id,
                file = %segment.path().display(),
                "deleting segment by retention"
            );
            segment.delete()?;
            inner.log_start_offset = *inner.segments.keys().next().expect("one left");
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Segment files, oldest first (for tests and tools).
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.inner
            .lock()
            .segments
            .values()
            .map(|s| s.path().to_path_buf())
            .collect()
    }

    /// Closes the active segment and starts a new one (for tests and tools).
    pub fn roll(&self) -> Result<()> {
        let mut inner = self.inner.lock();
        let active = inner.segments.values().next_back().expect("one segment");
        if active.size == 0 {
            return Ok(());
        }
        self.roll_locked(&mut inner)
    }
}

/// Waits until any of the partitions' end offsets moves (an append), at most `limit`.
pub(crate) async fn wait_for_append(watches: Vec<watch::Receiver<i64>>, limit: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let waiters: Vec<_> = watches
        .into_iter()
        .map(|mut w| {
            let tx = tx.clone();
            tokio::spawn(async move {
                if w.changed().await.is_ok() {
                    let _ = tx.send(()).await;
                }
            })
        })
        .collect();
    drop(tx);
    let _ = tokio::time::timeout(limit, rx.recv()).await;
    for w in waiters {
        w.abort();
    }
}
