//! Sinks that write rows as records: to a topic of the embedded log, or of any Kafka
//! cluster. A row's `value` (string or binary) is required; `key` (same types) and
//! `partition` (an integer) are optional, as in Spark's Kafka sink. A row with a key
//! goes to the key's partition by murmur2, as Kafka's Java producer puts it; a row
//! without one, round-robin.
//!
//! Delivery is at least once, as Spark's Kafka sink: a batch that runs again after a
//! crash between its write and its commit is written again. Readers that need exactly
//! once can drop the duplicates by the batch id in each record's `ember.batch` header.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ember_core::{EmberError, Result};
use ember_log::{Log, Producer, ProducerConfig, ProducerRecord, partition_for_key};

use super::kafka::{Connection, Role, kafka_error};
use super::sink::Sink;

/// One row as a record.
struct Row {
    key: Option<Bytes>,
    value: Option<Bytes>,
    partition: Option<i32>,
}

const BATCH_HEADER: &str = "ember.batch";

fn rows(batches: &[RecordBatch], sink: &str) -> Result<Vec<Row>> {
    let mut out = vec![];
    for b in batches {
        let column = |name: &str| -> Result<Option<arrow::array::BinaryArray>> {
            let Some(c) = b.column_by_name(name) else {
                return Ok(None);
            };
            let binary = cast(c, &DataType::Binary).map_err(|e| {
                EmberError::Config(format!(
                    "the {sink} sink: column '{name}' ({}) must be a string or binary: {e}",
                    c.data_type()
                ))
            })?;
            Ok(Some(binary.as_binary::<i32>().clone()))
        };
        let value = column("value")?.ok_or_else(|| {
            EmberError::Config(format!(
                "the {sink} sink needs a 'value' column; the query gives {}",
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let key = column("key")?;
        let partition = match b.column_by_name("partition") {
            Some(p) => Some(
                cast(p, &DataType::Int32)?
                    .as_primitive::<Int32Type>()
                    .clone(),
            ),
            None => None,
        };
        let bytes = |a: &arrow::array::BinaryArray, i: usize| {
            (!a.is_null(i)).then(|| Bytes::copy_from_slice(a.value(i)))
        };
        for i in 0..b.num_rows() {
            out.push(Row {
                key: key.as_ref().and_then(|k| bytes(k, i)),
                value: bytes(&value, i),
                partition: partition
                    .as_ref()
                    .and_then(|p| (!p.is_null(i)).then(|| p.value(i))),
            });
        }
    }
    Ok(out)
}

/// `write_stream().log(log, topic)`.
pub struct LogSink {
    producer: Arc<Producer>,
    topic: String,
}

impl LogSink {
    pub fn new(log: Arc<Log>, topic: &str) -> Result<LogSink> {
        let producer = Producer::new(
            log,
            ProducerConfig {
                partitioner: Arc::new(ember_log::KeyHash::default()),
                ..ProducerConfig::default()
            },
        )
        .map_err(|e| EmberError::Config(format!("the log sink: {e}")))?;
        Ok(LogSink {
            producer,
            topic: topic.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Sink for LogSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let rows = rows(&batches, "log")?;
        let n = rows.len();
        let mut deliveries = Vec::with_capacity(n);
        let log_error = |e: ember_log::LogError| {
            EmberError::Internal(format!("the log sink, topic {}: {e}", self.topic))
        };
        for row in rows {
            let mut record = ProducerRecord::new(&self.topic, row.value.unwrap_or_default())
                .header(BATCH_HEADER, batch_id.to_string());
            if let Some(k) = row.key {
                record = record.key(k);
            }
            if let Some(p) = row.partition {
                record = record.partition(p);
            }
            deliveries.push(self.producer.send(record).map_err(log_error)?);
        }
        self.producer.flush();
        for d in deliveries {
            d.await.map_err(log_error)?;
        }
        Ok(n)
    }

    fn describe(&self) -> String {
        format!("log[{}]", self.topic)
    }
}

/// `write_stream().kafka(bootstrap_servers, topic)`.
pub struct KafkaSink {
    connection: Connection,
    topic: String,
    next: AtomicU32,
}

impl KafkaSink {
    pub fn new(bootstrap_servers: &str, topic: &str) -> KafkaSink {
        KafkaSink {
            connection: Connection::new(bootstrap_servers, Role::Sink),
            topic: topic.to_string(),
            next: AtomicU32::new(0),
        }
    }
}

/// Records per produce request.
const PER_REQUEST: usize = 5_000;

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn add_batch(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<usize> {
        let rows = rows(&batches, "kafka")?;
        let n = rows.len();
        if n == 0 {
            return Ok(0);
        }
        let partitions = self.connection.partitions_of(&self.topic).await?;
        let count = partitions.len() as u32;
        let now = rskafka::chrono::Utc::now();
        let mut by_partition: BTreeMap<i32, Vec<rskafka::record::Record>> = BTreeMap::new();
        for row in rows {
            let partition = match (row.partition, &row.key) {
                (Some(p), _) => p,
                (None, Some(k)) => partitions[partition_for_key(k, count) as usize],
                (None, None) => {
                    partitions[(self.next.fetch_add(1, Ordering::Relaxed) % count) as usize]
                }
            };
            by_partition
                .entry(partition)
                .or_default()
                .push(rskafka::record::Record {
                    key: row.key.map(|k| k.to_vec()),
                    value: row.value.map(|v| v.to_vec()),
                    headers: BTreeMap::from([(
                        BATCH_HEADER.to_string(),
                        batch_id.to_string().into_bytes(),
                    )]),
                    timestamp: now,
                });
        }
        for (partition, records) in by_partition {
            let client = self.connection.partition(&self.topic, partition).await?;
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<_> = records.by_ref().take(PER_REQUEST).collect();
                client
                    .produce(
                        chunk,
                        rskafka::client::partition::Compression::NoCompression,
                    )
                    .await
                    .map_err(|e| {
                        kafka_error(
                            Role::Sink,
                            format!("producing to {}-{partition}", self.topic),
                            e,
                        )
                    })?;
            }
        }
        Ok(n)
    }

    fn describe(&self) -> String {
        format!("kafka[{}@{}]", self.topic, self.connection.describe())
    }
}
