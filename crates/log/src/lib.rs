//! ember-log: the embedded Kafka-like partitioned log.
//!
//! A [`Log`] is a directory of topics; a topic has partitions; a partition is a list
//! of append-only segment files of Kafka record batches (format v2, CRC-32C checked)
//! with a sparse offset index and a time index. Offsets are assigned on append;
//! reads go by offset or by timestamp; old segments go by retention (time or bytes).
//! Opening a log checks every batch of every segment. A torn tail (damage past the
//! partition's recovery point, the offset up to which it was fsynced) is cut; any
//! other damage is reported and kept: reads of those offsets fail with
//! [`LogError::CorruptSegment`], the offsets around them stay readable, and no
//! later segment is touched. Small state files are written atomically, and one that
//! cannot be read stops the log with [`LogError::BadStateFile`] naming it.
//!
//! For fuzzing: [`scan_segment`] is the whole of what the log trusts in a segment
//! file, run over any bytes without I/O or panics, and [`SegmentScan::torn_tail`]
//! what recovery would cut; [`Log::open`] on a directory of arbitrary files runs
//! the same code on disk and returns errors, never panics.
//!
//! ```text
//!  Producer ─send─▶ batches per partition (Partitioner: KeyHash | RoundRobin |
//!                   Sticky | Custom) ─append─▶ Partition ─▶ Segment files
//!  Consumer ─poll─▶ Partition::read(offset) ◀─ assign / subscribe (group: Groups)
//! ```
//!
//! [`broker`] serves the same log over the Kafka protocol (`ember broker`).

pub mod batch;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod error;
pub mod group;
mod log;
pub mod partition;
pub mod partitioner;
pub mod producer;
mod recovery;
mod segment;
mod state;

pub use config::{CleanupPolicy, Durability, LogConfig, TopicConfig};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset, read_range};
pub use error::{LogError, Result};
pub use group::{AssignmentStrategy, Groups, TopicPartition};
pub use log::{Log, MAX_PARTITIONS, Topic, validate_topic_name};
pub use partition::{Appended, Fetched, Partition};
pub use partitioner::{
    Custom, KeyHash, Partitioner, RoundRobin, Sticky, murmur2, partition_for_key,
};
pub use producer::{Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use recovery::{Damage, SegmentScan, scan_segment};
pub use segment::Truncation;

/// Kafka's compression codecs, for [`ProducerConfig::compression`].
pub use kafka_protocol::records::Compression;
