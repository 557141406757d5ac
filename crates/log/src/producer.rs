//! The in-process producer: records are batched per partition, encoded as Kafka
//! record batches (v2) with the `kafka-protocol` crate, and appended to the log; a
//! delivery resolves to the record's offset once its batch is written.
//!
//! A batch is appended when it reaches `batch_bytes`, when it is `linger` old (a
//! background task on the current tokio runtime), or on [`Producer::flush`]. Each
//! producer is idempotent: its batches carry a producer id and sequence numbers, so
//! the log never writes one twice.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::{LogError, Result};
use crate::log::Log;
use crate::partitioner::{Partitioner, Sticky};

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in milliseconds since the epoch (default: now).
    pub timestamp: Option<i64>,
    /// Explicit partition (default: the partitioner's choice).
    pub partition: Option<i32>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self
    }

    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
}

/// Producer settings.
#[derive(Clone)]
pub struct ProducerConfig {
    /// Append a partition's batch once it holds this many bytes of records.
    pub batch_bytes: usize,
    /// Append a batch at the latest this long after its first record.
    pub linger: Duration,
    pub compression: Compression,
    pub partitioner: Arc<dyn Partitioner>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 << 10,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            partitioner: Arc::new(Sticky::default()),
        }
    }
}

/// Shared by the records of one batch: the base offset once appended.
#[derive(Default)]
struct BatchSlot {
    result: OnceLock<std::result::Result<i64, String>>,
    done: Notify,
}

struct Accumulator {
    records: Vec<Record>,
    bytes: usize,
    started: Instant,
    slot: Arc<BatchSlot>,
}

/// A sent record's delivery: await it for the record's offset.
pub struct Delivery {
    slot: Arc<BatchSlot>,
    index: usize,
    topic: String,
    partition: i32,
    timestamp: i64,
}

impl Delivery {
    pub async fn wait(self) -> Result<RecordMetadata> {
        loop {
            let notified = self.slot.done.notified();
            if let Some(result) = self.slot.result.get() {
                return match result {
                    Ok(base) => Ok(RecordMetadata {
                        topic: self.topic,
                        partition: self.partition,
                        offset: base + self.index as i64,
                        timestamp: self.timestamp,
                    }),
                    Err(e) => Err(LogError::Corrupt(e.clone())),
                };
            }
            notified.await;
        }
    }
}

impl IntoFuture for Delivery {
    type Output = Result<RecordMetadata>;
    type IntoFuture = Pin<Box<dyn std::future::Future<Output = Result<RecordMetadata>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

pub struct Producer {
    log: Arc<Log>,
    config: ProducerConfig,
    producer_id: i64,
    batches: Mutex<HashMap<(String, i32), Accumulator>>,
    /// The next sequence number per partition.
    sequences: Mutex<HashMap<(String, i32), i32>>,
    /// Serialises appends of this producer per partition, in sequence order.
    append_lock: Mutex<()>,
}

impl Producer {
    /// A producer writing to `log`; inside a tokio runtime, a background task appends
    /// batches that have lingered.
    pub fn new(log: Arc<Log>, config: ProducerConfig) -> Result<Arc<Producer>> {
        let producer_id = log.allocate_producer_id()?;
        let producer = Arc::new(Producer {
            log,
            config,
            producer_id,
            batches: Mutex::default(),
            sequences: Mutex::default(),
            append_lock: Mutex::new(()),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&producer);
            let linger = producer.config.linger.max(Duration::from_millis(1));
            handle.spawn(linger_loop(weak, linger));
        }
        Ok(producer)
    }

    /// The idempotent producer id the log gave this producer.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// Queues a record; the returned delivery resolves when its batch is written.
    pub fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        let topic = self.log.topic_or_create(&record.topic)?;
        let partitions = topic.partitions.len() as u32;
        let partition = match record.partition {
            Some(p) if p >= 0 && (p as u32) < partitions => p,
            Some(p) => {
                return Err(LogError::UnknownPartition {
                    topic: record.topic,
                    partition: p,
                });
            }
            None => {
                self.config
                    .partitioner
                    .partition(&record.topic, record.key.as_deref(), partitions)
                    as i32
            }
        };
        let timestamp = record.timestamp.unwrap_or_else(now_millis);
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len())
            + 16;
        let headers: IndexMap<StrBytes, Option<Bytes>> = record
            .headers
            .into_iter()
            .map(|(k, v)| (StrBytes::from_string(k), v))
            .collect();
        let mut full = None;
        let delivery = {
            let mut batches = self.batches.lock();
            let key = (record.topic.clone(), partition);
            let acc = batches.entry(key.clone()).or_insert_with(|| Accumulator {
                records: Vec::with_capacity(64),
                bytes: 0,
                started: Instant::now(),
                slot: Arc::default(),
            });
            let index = acc.records.len();
            acc.records.push(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: self.producer_id,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                sequence: 0,
                timestamp,
                key: record.key,
                value: record.value,
                headers,
            });
            acc.bytes += size;
            let delivery = Delivery {
                slot: acc.slot.clone(),
                index,
                topic: record.topic,
                partition,
                timestamp,
            };
            if acc.bytes >= self.config.batch_bytes {
                full = batches.remove(&key).map(|acc| (key, acc));
            }
            delivery
        };
        if let Some((key, acc)) = full {
            self.config.partitioner.on_new_batch(&key.0, partitions);
            self.append(key, acc);
        }
        Ok(delivery)
    }

    /// Sends and waits for the record's offset.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record)?.wait().await
    }

    /// Appends every queued batch now.
    pub fn flush(&self) {
        let all: Vec<_> = self.batches.lock().drain().collect();
        for (key, acc) in all {
            self.append(key, acc);
        }
    }

    fn flush_older_than(&self, age: Duration) {
        let old: Vec<_> = {
            let mut batches = self.batches.lock();
            let keys: Vec<_> = batches
                .iter()
                .filter(|(_, a)| a.started.elapsed() >= age)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| batches.remove(&k).map(|a| (k, a)))
                .collect()
        };
        for (key, acc) in old {
            self.append(key, acc);
        }
    }

    fn append(&self, key: (String, i32), mut acc: Accumulator) {
        let _in_order = self.append_lock.lock();
        let result = (|| {
            let sequence = {
                let mut sequences = self.sequences.lock();
                let next = sequences.entry(key.clone()).or_insert(0);
                let first = *next;
                *next = next.wrapping_add(acc.records.len() as i32);
                first
            };
            for (i, r) in acc.records.iter_mut().enumerate() {
                r.sequence = sequence.wrapping_add(i as i32);
            }
            let mut buf = BytesMut::with_capacity(acc.bytes + 128);
            RecordBatchEncoder::encode(
                &mut buf,
                acc.records.iter(),
                &RecordEncodeOptions {
                    version: 2,
                    compression: self.config.compression,
                },
            )
            .map_err(|e| LogError::Corrupt(format!("encoding a batch: {e}")))?;
            let partition = self.log.partition(&key.0, key.1)?;
            partition.append(&mut buf).map(|a| a.base_offset)
        })();
        let _ = acc.slot.result.set(result.map_err(|e| e.to_string()));
        acc.slot.done.notify_waiters();
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.flush();
    }
}

async fn linger_loop(producer: Weak<Producer>, linger: Duration) {
    loop {
        tokio::time::sleep(linger).await;
        let Some(p) = producer.upgrade() else { return };
        p.flush_older_than(linger);
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
