//! The in-process consumer: assigned partitions or a group subscription, `poll` with
//! a timeout (waiting for new records), `seek`, `position`, committed offsets and lag.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::TimestampType;

use crate::error::{LogError, Result};
use crate::group::{AssignmentStrategy, TopicPartition};
use crate::log::Log;

/// Where a consumer starts on a partition without a committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group_id: Option<String>,
    pub auto_offset_reset: OffsetReset,
    /// Most records one poll returns.
    pub max_poll_records: usize,
    /// Most bytes read from one partition at a time.
    pub fetch_max_bytes: usize,
    pub strategy: AssignmentStrategy,
    /// A group member silent for this long is dropped and its partitions reassigned.
    pub session_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 500,
            fetch_max_bytes: 1 << 20,
            strategy: AssignmentStrategy::Range,
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// A record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    /// True when the log set the timestamp (log-append time), false for create time.
    pub log_append_time: bool,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

pub struct Consumer {
    log: Arc<Log>,
    config: ConsumerConfig,
    assignment: Vec<TopicPartition>,
    positions: HashMap<TopicPartition, i64>,
    /// Group membership: (member id, subscribed topics, generation seen).
    member: Option<(String, Vec<String>, i32)>,
    buffered: VecDeque<ConsumerRecord>,
    /// Where the next poll starts in the assignment, so that partitions take turns.
    turn: usize,
}

impl Consumer {
    pub fn new(log: Arc<Log>, config: ConsumerConfig) -> Consumer {
        Consumer {
            log,
            config,
            assignment: vec![],
            positions: HashMap::new(),
            member: None,
            buffered: VecDeque::new(),
            turn: 0,
        }
    }

    /// Reads exactly these partitions (no group rebalancing).
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) -> Result<()> {
        for (t, p) in &partitions {
            self.log.partition(t, *p)?;
        }
        self.leave();
        self.assignment = partitions;
        self.positions.retain(|tp, _| self.assignment.contains(tp));
        self.buffered.clear();
        Ok(())
    }

    /// Joins the consumer group (`group_id` is required) for these topics; the
    /// group's partitions are shared among its members and move when members come
    /// and go.
    pub fn subscribe(&mut self, topics: Vec<String>) -> Result<()> {
        let group = self.group()?.to_string();
        for t in &topics {
            self.log.topic(t)?;
        }
        self.leave();
        let partitions = self.partition_counts(&topics);
        let member =
            self.log
                .groups()
                .join(&group, topics.clone(), self.config.strategy, &partitions);
        self.member = Some((member, topics, -1));
        self.refresh_assignment()?;
        Ok(())
    }

    fn group(&self) -> Result<&str> {
        self.config
            .group_id
            .as_deref()
            .ok_or_else(|| LogError::InvalidConfig("subscribe and commit need a group_id".into()))
    }

    fn partition_counts(&self, topics: &[String]) -> BTreeMap<String, i32> {
        topics
            .iter()
            .filter_map(|t| {
                self.log
                    .topic(t)
                    .ok()
                    .map(|topic| (t.clone(), topic.partitions.len() as i32))
            })
            .collect()
    }

    /// Picks up a new assignment after the group rebalanced.
    fn refresh_assignment(&mut self) -> Result<()> {
        let Some((member, topics, seen)) = self.member.clone() else {
            return Ok(());
        };
        let group = self.group()?.to_string();
        let partitions = self.partition_counts(&topics);
        let Some((generation, assigned)) =
            self.log
                .groups()
                .assignment(&group, &member, self.config.session_timeout, &partitions)
        else {
            // Dropped from the group (silent too long): join again.
            let member =
                self.log
                    .groups()
                    .join(&group, topics.clone(), self.config.strategy, &partitions);
            self.member = Some((member, topics, -1));
            return self.refresh_assignment();
        };
        if generation != seen {
            tracing::debug!(
                group,
                member,
                generation,
                partitions = assigned.len(),
                "new assignment"
            );
            self.assignment = assigned;
            self.positions.retain(|tp, _| self.assignment.contains(tp));
            self.buffered
                .retain(|r| self.assignment.contains(&(r.topic.clone(), r.partition)));
            if let Some((_, _, g)) = &mut self.member {
                *g = generation;
            }
        }
        Ok(())
    }

    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assignment
    }

    /// The offset the next record of this partition will have.
    pub fn position(&mut self, topic: &str, partition: i32) -> Result<i64> {
        let tp = (topic.to_string(), partition);
        if let Some(p) = self.positions.get(&tp) {
            return Ok(*p);
        }
        let start = self.initial_position(&tp)?;
        self.positions.insert(tp, start);
        Ok(start)
    }

    fn initial_position(&self, tp: &TopicPartition) -> Result<i64> {
        let partition = self.log.partition(&tp.0, tp.1)?;
        if let Some(group) = &self.config.group_id
            && let Some((offset, _)) = self.log.groups().committed(group, &tp.0, tp.1)
        {
            return Ok(offset.clamp(partition.start_offset(), partition.end_offset()));
        }
        Ok(match self.config.auto_offset_reset {
            OffsetReset::Earliest => partition.start_offset(),
            OffsetReset::Latest => partition.end_offset(),
        })
    }

    /// The next poll reads this partition from `offset`.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) {
        let tp = (topic.to_string(), partition);
        self.buffered
            .retain(|r| !(r.topic == tp.0 && r.partition == tp.1));
        self.positions.insert(tp, offset);
    }

    pub fn seek_to_beginning(&mut self, topic: &str, partition: i32) -> Result<()> {
        let start = self.log.partition(topic, partition)?.start_offset();
        self.seek(topic, partition, start);
        Ok(())
    }

    pub fn seek_to_end(&mut self, topic: &str, partition: i32) -> Result<()> {
        let end = self.log.partition(topic, partition)?.end_offset();
        self.seek(topic, partition, end);
        Ok(())
    }

    /// Records not yet consumed on this partition (end offset minus position).
    pub fn lag(&mut self, topic: &str, partition: i32) -> Result<i64> {
        let end = self.log.partition(topic, partition)?.end_offset();
        Ok((end - self.position(topic, partition)?).max(0))
    }

    /// Up to `max_poll_records` records, waiting up to `timeout` for the first.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh_assignment()?;
            if self.buffered.is_empty() {
                self.fetch()?;
            }
            if !self.buffered.is_empty() {
                let n = self.buffered.len().min(self.config.max_poll_records);
                let out: Vec<ConsumerRecord> = self.buffered.drain(..n).collect();
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(vec![]);
            }
            // Wait for an append to any assigned partition (or a rebalance check).
            let mut watches = vec![];
            for (t, p) in &self.assignment {
                watches.push(self.log.partition(t, *p)?.watch_end());
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            if watches.is_empty() {
                tokio::time::sleep(wait).await;
                continue;
            }
            crate::partition::wait_for_append(watches, wait).await;
        }
    }

    /// Reads from the assigned partitions, each in turn, into the buffer.
    fn fetch(&mut self) -> Result<()> {
        let n = self.assignment.len();
        for i in 0..n {
            let tp = self.assignment[(self.turn + i) % n].clone();
            let position = self.position(&tp.0, tp.1)?;
            let partition = self.log.partition(&tp.0, tp.1)?;
            let fetched = match partition.read(position, self.config.fetch_max_bytes) {
                Ok(f) => f,
                Err(LogError::OffsetOutOfRange { start, end, .. }) => {
                    // Deleted by retention (or beyond the end): start over per policy.
                    let reset = match self.config.auto_offset_reset {
                        OffsetReset::Earliest => start,
                        OffsetReset::Latest => end,
                    };
                    tracing::warn!(topic = %tp.0, partition = tp.1, position, reset, "position out of range; reset");
                    self.positions.insert(tp, reset);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (records, next) = decode_records(fetched.records, &tp, position, i64::MAX)?;
            self.buffered.extend(records);
            self.positions.insert(tp, next);
            if self.buffered.len() >= self.config.max_poll_records {
                self.turn = (self.turn + i + 1) % n;
                return Ok(());
            }
        }
        if n > 0 {
            self.turn = (self.turn + 1) % n;
        }
        Ok(())
    }

    /// Commits the current positions of the assigned partitions for the group.
    pub fn commit(&mut self) -> Result<()> {
        let group = self.group()?.to_string();
        let offsets: Vec<(String, i32, i64, String)> = self
            .assignment
            .iter()
            .filter_map(|tp| {
                // Records handed out are consumed; buffered ones are not.
                let buffered_first = self
                    .buffered
                    .iter()
                    .find(|r| r.topic == tp.0 && r.partition == tp.1)
                    .map(|r| r.offset);
                let position = buffered_first.or_else(|| self.positions.get(tp).copied())?;
                Some((tp.0.clone(), tp.1, position, String::new()))
            })
            .collect();
        self.log.groups().commit(&group, &offsets)
    }

    /// The group's committed offset for a partition.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let group = self.group()?;
        Ok(self
            .log
            .groups()
            .committed(group, topic, partition)
            .map(|(o, _)| o))
    }

    fn leave(&mut self) {
        if let (Some((member, topics, _)), Some(group)) =
            (self.member.take(), self.config.group_id.clone())
        {
            let partitions = self.partition_counts(&topics);
            self.log.groups().leave(&group, &member, &partitions);
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The records of `bytes` (whole batches of `tp`) with offsets in `from..to`, and the
/// offset after the last record seen (control records and earlier ones are skipped).
fn decode_records(
    mut bytes: bytes::Bytes,
    tp: &TopicPartition,
    from: i64,
    to: i64,
) -> Result<(Vec<ConsumerRecord>, i64)> {
    let mut out = vec![];
    let mut next = from;
    while !bytes.is_empty() {
        let records = crate::batch::decode_records(&mut bytes, &format!("{}-{}", tp.0, tp.1))?;
        for r in records {
            if r.offset >= to {
                return Ok((out, next));
            }
            next = next.max(r.offset + 1);
            if r.control || r.offset < from {
                continue;
            }
            out.push(ConsumerRecord {
                topic: tp.0.clone(),
                partition: tp.1,
                offset: r.offset,
                timestamp: r.timestamp,
                log_append_time: r.timestamp_type == TimestampType::LogAppend,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
    }
    Ok((out, next))
}

/// Every record of a partition with an offset in `from..to` (a fixed range: what a
/// streaming micro-batch reads).
pub fn read_range(
    log: &Log,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Vec<ConsumerRecord>> {
    let p = log.partition(topic, partition)?;
    let tp = (topic.to_string(), partition);
    let mut out = vec![];
    let mut position = from;
    while position < to {
        let fetched = p.read(position, 4 << 20)?;
        if fetched.records.is_empty() {
            break;
        }
        let (records, next) = decode_records(fetched.records, &tp, position, to)?;
        out.extend(records);
        if next <= position {
            break;
        }
        position = next;
    }
    Ok(out)
}
