//! Kafka records as Arrow rows, and [`KafkaScanExec`]: a task that reads one offset
//! range of one partition from a Kafka-protocol broker itself. A streaming batch over
//! a Kafka source plans one such task per (topic, partition) range, so in a cluster
//! the executors read the broker, not the driver.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};

/// The columns of a record from a Kafka-like log, as Spark names them.
pub fn kafka_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("timestamp_type", DataType::Int32, false),
        Field::new("headers", headers_type(), false),
    ]))
}

/// `headers`: each record's list of `{key, value}`.
fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// Builds a batch of [`kafka_schema`] record by record.
pub struct KafkaRows {
    key: BinaryBuilder,
    value: BinaryBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    timestamp_type: Int32Builder,
    headers: ListBuilder<StructBuilder>,
}

/// One record, borrowed.
pub struct KafkaRecord<'a, H> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    /// The log set the timestamp (log-append time), not the producer.
    pub log_append_time: bool,
    pub headers: H,
}

impl Default for KafkaRows {
    fn default() -> Self {
        KafkaRows {
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new(),
            timestamp_type: Int32Builder::new(),
            headers: ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(
                Arc::new(Field::new("item", DataType::Struct(header_fields()), true)),
            ),
        }
    }
}

impl KafkaRows {
    pub fn push<'a, H>(&mut self, r: KafkaRecord<'a, H>)
    where
        H: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let entries = self.headers.values();
        for (k, v) in r.headers {
            entries
                .field_builder::<StringBuilder>(0)
                .expect("a string field")
                .append_value(k);
            entries
                .field_builder::<BinaryBuilder>(1)
                .expect("a binary field")
                .append_option(v);
            entries.append(true);
        }
        self.headers.append(true);
        self.key.append_option(r.key);
        self.value.append_option(r.value);
        self.topic.append_value(r.topic);
        self.partition.append_value(r.partition);
        self.offset.append_value(r.offset);
        self.timestamp.append_value(r.timestamp_ms);
        self.timestamp_type
            .append_value(i32::from(r.log_append_time));
    }

    pub fn finish(mut self) -> arrow::error::Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.timestamp_type.finish()),
            Arc::new(self.headers.finish()),
        ];
        RecordBatch::try_new(kafka_schema(), columns)
    }
}

/// Offsets `[from, to)` of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// Reads one [`KafkaRange`] per output partition from `bootstrap`.
#[derive(Debug)]
pub struct KafkaScanExec {
    pub bootstrap: Vec<String>,
    pub ranges: Vec<KafkaRange>,
    pub fail_on_data_loss: bool,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    pub fn new(bootstrap: Vec<String>, ranges: Vec<KafkaRange>, fail_on_data_loss: bool) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(kafka_schema()),
            Partitioning::UnknownPartitioning(ranges.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        KafkaScanExec {
            bootstrap,
            ranges,
            fail_on_data_loss,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KafkaScanExec: {} ranges", self.ranges.len())
    }
}

fn kafka_err(what: String, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("kafka source: {what}: {e}"))
}

/// A Kafka client builder that gives up on unreachable brokers after 15 s (the
/// client's default retries forever), so a wrong address is an error, not a hang.
pub fn client_builder(bootstrap: Vec<String>) -> ClientBuilder {
    ClientBuilder::new(bootstrap).backoff_config(rskafka::BackoffConfig {
        init_backoff: std::time::Duration::from_millis(100),
        max_backoff: std::time::Duration::from_secs(2),
        base: 2.0,
        deadline: Some(std::time::Duration::from_secs(15)),
    })
}

/// Partition clients by (brokers, topic, partition), with when each was last used:
/// a streaming query's tasks read the same partitions batch after batch, and a new
/// client would connect and fetch metadata each time. A client idle for [`IDLE`]
/// (its query stopped, say) is dropped with its connection; all of them with their
/// owner (an executor's [`crate::task::TaskCaches`], a Kafka source).
#[derive(Debug, Default)]
pub struct KafkaClients {
    clients:
        std::sync::Mutex<std::collections::HashMap<PartitionKey, (Arc<PartitionClient>, Instant)>>,
}

/// Brokers, topic, partition.
type PartitionKey = (Vec<String>, String, i32);

const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

impl KafkaClients {
    async fn partition_client(
        &self,
        bootstrap: &[String],
        topic: &str,
        partition: i32,
    ) -> DFResult<Arc<PartitionClient>> {
        let key = (bootstrap.to_vec(), topic.to_string(), partition);
        {
            let mut clients = self.clients.lock().expect("not poisoned");
            clients.retain(|_, (_, used)| used.elapsed() < IDLE);
            if let Some((c, used)) = clients.get_mut(&key) {
                *used = Instant::now();
                return Ok(c.clone());
            }
        }
        let client = client_builder(bootstrap.to_vec())
            .build()
            .await
            .map_err(|e| kafka_err(bootstrap.join(","), e))?;
        let pc = Arc::new(
            client
                .partition_client(topic.to_string(), partition, UnknownTopicHandling::Error)
                .await
                .map_err(|e| kafka_err(format!("{topic}-{partition}"), e))?,
        );
        self.clients
            .lock()
            .expect("not poisoned")
            .insert(key, (pc.clone(), Instant::now()));
        Ok(pc)
    }
}

/// How a query is told to read on past lost data.
const READ_ON: &str = "fail_on_data_loss(false) (ember stream --fail-on-data-loss false)";

/// What a read says when retention deleted offsets `from..earliest` it needed.
pub fn data_loss(topic: &str, partition: i32, from: i64, earliest: i64) -> String {
    format!(
        "data loss: {topic}-{partition} offsets {from}..{earliest} were deleted (retention) before this query read them; {READ_ON} skips them"
    )
}

/// What a query says when partition `topic`-`partition` ends at `latest`, before
/// `from`, the offset it is to read next.
pub fn data_loss_behind(topic: &str, partition: i32, from: i64, latest: i64) -> String {
    format!(
        "data loss: {topic}-{partition} ends at offset {latest}, before offset {from} the query is to read next (the topic was deleted and re-created, its log truncated, or the starting offset lies past its end); {READ_ON} reads it from its earliest offset"
    )
}

/// Fetches a range's records, and how many offsets of it retention had deleted
/// (skipped when `fail` is false; an error naming them otherwise).
pub async fn fetch_range(
    clients: &KafkaClients,
    bootstrap: Vec<String>,
    range: KafkaRange,
    fail: bool,
) -> DFResult<(RecordBatch, i64)> {
    let mut rows = KafkaRows::default();
    let KafkaRange {
        topic,
        partition,
        from,
        to,
    } = range;
    if from >= to {
        return Ok((rows.finish()?, 0));
    }
    let pc = clients
        .partition_client(&bootstrap, &topic, partition)
        .await?;
    let earliest = pc
        .get_offset(OffsetAt::Earliest)
        .await
        .map_err(|e| kafka_err(format!("offsets of {topic}-{partition}"), e))?;
    let mut position = from;
    let mut skipped = 0;
    if from < earliest {
        if fail {
            return Err(DataFusionError::Execution(data_loss(
                &topic, partition, from, earliest,
            )));
        }
        tracing::warn!(
            topic,
            partition,
            from,
            earliest,
            "skipping offsets lost to retention"
        );
        skipped = earliest.min(to) - from;
        position = earliest;
    }
    while position < to {
        let (fetched, _high) = pc
            .fetch_records(position, 1..(8 << 20), 500)
            .await
            .map_err(|e| kafka_err(format!("fetching {topic}-{partition} at {position}"), e))?;
        if fetched.is_empty() {
            return Err(DataFusionError::Execution(format!(
                "kafka source: {topic}-{partition} returned nothing at offset {position} (before {to})"
            )));
        }
        for r in fetched {
            if r.offset < position || r.offset >= to {
                continue;
            }
            position = r.offset + 1;
            rows.push(KafkaRecord {
                key: r.record.key.as_deref(),
                value: r.record.value.as_deref(),
                topic: &topic,
                partition,
                offset: r.offset,
                timestamp_ms: r.record.timestamp.timestamp_millis(),
                log_append_time: false,
                headers: r
                    .record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
            });
        }
    }
    Ok((rows.finish()?, skipped))
}

impl ExecutionPlan for KafkaScanExec {
    fn name(&self) -> &str {
        "KafkaScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DFResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DFResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let range = self.ranges.get(partition).cloned();
        let (bootstrap, fail) = (self.bootstrap.clone(), self.fail_on_data_loss);
        let caches = crate::task::TaskCaches::of(&context);
        let batch = async move {
            match range {
                Some(range) => fetch_range(&caches.kafka, bootstrap, range, fail)
                    .await
                    .map(|(b, _)| b),
                None => Ok(RecordBatch::new_empty(kafka_schema())),
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            kafka_schema(),
            futures::stream::once(batch),
        )))
    }
}
