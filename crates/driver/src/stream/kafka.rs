//! The Kafka source: any Kafka-protocol broker (`ember broker` included), read with
//! rskafka. Each batch reads fixed offset ranges per (topic, partition).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ember_core::{EmberError, Result};
use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use tokio::sync::{Mutex, OnceCell};

use super::source::{
    DataLoss, LossCounter, Offsets, Source, StartingOffsets, batch_end, kafka_schema, resume_at,
};

/// `read_stream().kafka(bootstrap_servers, topics)`.
pub struct KafkaSource {
    connection: Connection,
    topics: Vec<String>,
    starting: StartingOffsets,
    max_offsets_per_trigger: Option<i64>,
    fail_on_data_loss: bool,
    lost: LossCounter,
    /// The partitions' ends when the last batch was planned.
    planned_with: parking_lot::Mutex<Option<Offsets>>,
    /// `subscribe_pattern`, instead of `topics`.
    pattern: Option<regex::Regex>,
    /// `assign`: these partitions only.
    assigned: Option<Vec<(String, i32)>>,
    /// The partition clients of the batches this process reads itself.
    clients: ember_exec::kafka_scan::KafkaClients,
}

/// A client of a Kafka cluster (rskafka), made on first use, and its partition clients.
pub(crate) struct Connection {
    role: Role,
    bootstrap: Vec<String>,
    client: OnceCell<Client>,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("bootstrap", &self.connection.bootstrap)
            .field("topics", &self.topics)
            .finish()
    }
}

/// An error of the Kafka source, or of the Kafka sink (`role`), about `what`.
pub(crate) fn kafka_error(
    role: Role,
    what: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> EmberError {
    EmberError::Internal(format!("kafka {}: {what}: {e}", role.name()))
}

/// What a [`Connection`] is for, which its errors say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source,
    Sink,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
        }
    }
}

impl KafkaSource {
    pub fn new(bootstrap_servers: &str, topics: Vec<String>) -> Self {
        KafkaSource {
            connection: Connection::new(bootstrap_servers, Role::Source),
            topics,
            starting: StartingOffsets::Earliest,
            max_offsets_per_trigger: None,
            fail_on_data_loss: true,
            lost: Default::default(),
            planned_with: Default::default(),
            pattern: None,
            assigned: None,
            clients: Default::default(),
        }
    }

    pub fn starting_offsets(mut self, starting: StartingOffsets) -> Self {
        self.starting = starting;
        self
    }

    /// At most `max` records per batch, over all partitions; `max` must be positive.
    pub fn max_offsets_per_trigger(mut self, max: i64) -> Result<Self> {
        self.max_offsets_per_trigger = Some(super::source::positive_max_offsets(max)?);
        Ok(self)
    }

    /// When offsets a batch should read are gone (see [`Source::resume`]), fail (the
    /// default, naming them) or read on from the earliest offset and count them.
    pub fn fail_on_data_loss(mut self, fail: bool) -> Self {
        self.fail_on_data_loss = fail;
        self
    }

    /// Spark's `subscribePattern`: every topic whose whole name matches `pattern` (a
    /// regular expression), including topics created while the query runs.
    pub fn subscribe_pattern(mut self, pattern: &str) -> Result<Self> {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| EmberError::Config(format!("kafka source: pattern '{pattern}': {e}")))?;
        self.pattern = Some(regex);
        self.topics = vec![];
        Ok(self)
    }

    /// Spark's `assign`: exactly these topic partitions.
    pub fn assign(mut self, partitions: &[(&str, i32)]) -> Self {
        self.assigned = Some(
            partitions
                .iter()
                .map(|(t, p)| (t.to_string(), *p))
                .collect(),
        );
        self.topics = partitions.iter().map(|(t, _)| t.to_string()).collect();
        self.topics.dedup();
        self
    }

    async fn topic_partitions(&self) -> Result<Vec<(String, i32)>> {
        if let Some(assigned) = &self.assigned {
            return Ok(assigned.clone());
        }
        let names = match &self.pattern {
            Some(pattern) => {
                let mut names: Vec<String> = self
                    .connection
                    .topics()
                    .await?
                    .into_iter()
                    .filter(|t| pattern.is_match(t))
                    .collect();
                names.sort();
                names
            }
            None => self.topics.clone(),
        };
        let mut out = vec![];
        for name in names {
            let partitions = self.connection.partitions_of(&name).await?;
            out.extend(partitions.into_iter().map(|p| (name.clone(), p)));
        }
        Ok(out)
    }

    async fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>> {
        self.connection.partition(topic, partition).await
    }

    async fn offset(&self, topic: &str, partition: i32, at: OffsetAt) -> Result<i64> {
        self.partition(topic, partition)
            .await?
            .get_offset(at)
            .await
            .map_err(|e| kafka_error(Role::Source, format!("offsets of {topic}-{partition}"), e))
    }
}

impl Connection {
    pub(crate) fn new(bootstrap_servers: &str, role: Role) -> Connection {
        Connection {
            role,
            bootstrap: bootstrap_servers
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            client: OnceCell::new(),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn describe(&self) -> String {
        self.bootstrap.join(",")
    }

    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                ember_exec::kafka_scan::client_builder(self.bootstrap.clone())
                    .build()
                    .await
                    .map_err(|e| kafka_error(self.role, self.bootstrap.join(","), e))
            })
            .await
    }

    /// Every topic's name.
    pub(crate) async fn topics(&self) -> Result<Vec<String>> {
        Ok(self
            .client()
            .await?
            .list_topics()
            .await
            .map_err(|e| kafka_error(self.role, "listing topics", e))?
            .into_iter()
            .map(|t| t.name)
            .collect())
    }

    /// The partitions of `topic`, which must exist.
    pub(crate) async fn partitions_of(&self, topic: &str) -> Result<Vec<i32>> {
        let topics = self
            .client()
            .await?
            .list_topics()
            .await
            .map_err(|e| kafka_error(self.role, "listing topics", e))?;
        let found = topics.iter().find(|t| t.name == topic).ok_or_else(|| {
            EmberError::Config(format!(
                "kafka: topic '{topic}' does not exist on {}",
                self.describe()
            ))
        })?;
        let mut partitions: Vec<i32> = found.partitions.iter().copied().collect();
        partitions.sort_unstable();
        Ok(partitions)
    }

    pub(crate) async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>> {
        let key = (topic.to_string(), partition);
        let mut clients = self.partitions.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = self
            .client()
            .await?
            .partition_client(topic, partition, UnknownTopicHandling::Error)
            .await
            .map_err(|e| kafka_error(self.role, format!("{topic}-{partition}"), e))?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        kafka_schema()
    }

    async fn initial(&self) -> Result<Offsets> {
        let mut offsets = Offsets::default();
        for (t, p) in self.topic_partitions().await? {
            let earliest = self.offset(&t, p, OffsetAt::Earliest).await?;
            let latest = self.offset(&t, p, OffsetAt::Latest).await?;
            let offset = self.starting.resolve(&t, p, earliest, latest);
            offsets.set(&t, p, offset);
        }
        Ok(offsets)
    }

    async fn latest(&self, start: &Offsets) -> Result<Offsets> {
        let partitions = self.topic_partitions().await?;
        let mut ranges = vec![];
        for (t, p) in partitions {
            let latest = self.offset(&t, p, OffsetAt::Latest).await?;
            let from = match start.get(&t, p) {
                Some(o) => o,
                // A partition added since the query started: from its beginning.
                None => self.offset(&t, p, OffsetAt::Earliest).await?,
            };
            ranges.push((t, p, from, latest));
        }
        let mut seen = Offsets::default();
        for (t, p, _, latest) in &ranges {
            seen.set(t, *p, *latest);
        }
        *self.planned_with.lock() = Some(seen);
        Ok(batch_end(ranges, self.max_offsets_per_trigger))
    }

    fn available_when_planned(&self) -> Option<Offsets> {
        self.planned_with.lock().clone()
    }

    async fn resume(&self, start: &Offsets) -> Result<Offsets> {
        let mut resumed = start.clone();
        for (t, p, from) in start.iter() {
            let earliest = self.offset(t, p, OffsetAt::Earliest).await?;
            let latest = self.offset(t, p, OffsetAt::Latest).await?;
            let at = resume_at(
                t,
                p,
                from,
                (earliest, latest),
                self.fail_on_data_loss,
                &self.lost,
            )?;
            resumed.set(t, p, at);
        }
        Ok(resumed)
    }

    async fn available(&self) -> Result<Offsets> {
        let mut end = Offsets::default();
        for (t, p) in self.topic_partitions().await? {
            end.set(&t, p, self.offset(&t, p, OffsetAt::Latest).await?);
        }
        Ok(end)
    }

    async fn read(&self, start: &Offsets, end: &Offsets) -> Result<Vec<RecordBatch>> {
        let mut batches = vec![];
        for (topic, partition, to) in end.iter() {
            let from = start.get(topic, partition).unwrap_or(to);
            let range = ember_exec::kafka_scan::KafkaRange {
                topic: topic.to_string(),
                partition,
                from,
                to,
            };
            let (batch, skipped) = ember_exec::kafka_scan::fetch_range(
                &self.clients,
                self.connection.bootstrap.clone(),
                range,
                self.fail_on_data_loss,
            )
            .await?;
            if skipped > 0 {
                self.lost.add(skipped as u64);
            }
            batches.push(batch);
        }
        Ok(batches)
    }

    fn describe(&self) -> String {
        match &self.pattern {
            Some(p) => format!("kafka[/{p}/]"),
            None => format!("kafka[{}]", self.topics.join(",")),
        }
    }

    fn data_loss(&self) -> DataLoss {
        self.lost.get()
    }

    async fn scan_table(
        &self,
        start: &Offsets,
        end: &Offsets,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let mut ranges = vec![];
        for (t, p, to) in end.iter() {
            let mut from = start.get(t, p).unwrap_or(to);
            if from >= to {
                continue;
            }
            // Offsets retention deleted already: the query stops, or they are skipped
            // and counted here (the tasks check again, for what goes while they run).
            let earliest = self.offset(t, p, OffsetAt::Earliest).await?;
            if from < earliest {
                if self.fail_on_data_loss {
                    return Err(super::source::data_lost(t, p, from, earliest));
                }
                tracing::warn!(
                    topic = t,
                    partition = p,
                    from,
                    earliest,
                    "skipping offsets lost to retention"
                );
                self.lost.add((earliest.min(to) - from) as u64);
                from = earliest.min(to);
            }
            if from < to {
                ranges.push(ember_exec::kafka_scan::KafkaRange {
                    topic: t.to_string(),
                    partition: p,
                    from,
                    to,
                });
            }
        }
        Ok(Some(Arc::new(KafkaRangeTable {
            bootstrap: self.connection.bootstrap.clone(),
            ranges,
            fail_on_data_loss: self.fail_on_data_loss,
        })))
    }
}

/// A batch's offset ranges of a Kafka source as a table: its scan is a
/// [`KafkaScanExec`](ember_exec::kafka_scan::KafkaScanExec), one task per partition
/// range, which reads the broker wherever it runs (an executor, in a cluster).
#[derive(Debug, Clone)]
pub struct KafkaRangeTable {
    pub bootstrap: Vec<String>,
    pub ranges: Vec<ember_exec::kafka_scan::KafkaRange>,
    pub fail_on_data_loss: bool,
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for KafkaRangeTable {
    fn schema(&self) -> SchemaRef {
        kafka_schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_plan::projection::ProjectionExec;
        let scan: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
            Arc::new(ember_exec::kafka_scan::KafkaScanExec::new(
                self.bootstrap.clone(),
                self.ranges.clone(),
                self.fail_on_data_loss,
            ));
        let Some(projection) = projection else {
            return Ok(scan);
        };
        let schema = kafka_schema();
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = projection
            .iter()
            .map(|i| {
                let name = schema.field(*i).name().clone();
                (
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        &name, *i,
                    )) as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
}

impl KafkaRangeTable {
    /// As bytes, for a plan sent to a driver.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let ranges: Vec<serde_json::Value> = self
            .ranges
            .iter()
            .map(|r| serde_json::json!([r.topic, r.partition, r.from, r.to]))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "bootstrap": self.bootstrap,
            "ranges": ranges,
            "fail_on_data_loss": self.fail_on_data_loss,
        }))
        .expect("serializable")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<KafkaRangeTable> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let ranges = v["ranges"]
            .as_array()?
            .iter()
            .map(|r| {
                Some(ember_exec::kafka_scan::KafkaRange {
                    topic: r[0].as_str()?.to_string(),
                    partition: r[1].as_i64()? as i32,
                    from: r[2].as_i64()?,
                    to: r[3].as_i64()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(KafkaRangeTable {
            bootstrap: v["bootstrap"]
                .as_array()?
                .iter()
                .map(|b| b.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?,
            ranges,
            fail_on_data_loss: v["fail_on_data_loss"].as_bool()?,
        })
    }
}
