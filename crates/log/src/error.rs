//! Errors of the log, each with the Kafka error code a broker answers with.

use std::path::PathBuf;

pub type Result<T, E = LogError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record batch (or segment content) that fails validation.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A stored batch that fails its checks (CRC, length, offsets): reading it fails,
    /// the batches around it stay readable.
    #[error(
        "corrupt record batch in {} at byte {position} (offsets {first_offset}..={last_offset}): {reason}",
        file.display()
    )]
    CorruptSegment {
        file: PathBuf,
        position: u64,
        first_offset: i64,
        last_offset: i64,
        reason: String,
    },
    /// A small state file of the log (topic settings, producer ids, group offsets)
    /// that cannot be read: the log will not guess its content.
    #[error("unreadable state file {}: {reason}", path.display())]
    BadStateFile { path: PathBuf, reason: String },
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    #[error("topic '{topic}' has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("offset {offset} is out of range [{start}, {end}] of {topic}-{partition}")]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
        start: i64,
        end: i64,
    },
    #[error("out of order sequence from producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id} epoch {epoch} is older than the current {current}")]
    ProducerFenced {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("record batch of {size} bytes exceeds the limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// The Kafka protocol error code for this error.
    pub fn kafka_code(&self) -> i16 {
        match self {
            LogError::Io { .. } | LogError::Closed => 56, // KAFKA_STORAGE_ERROR
            LogError::Corrupt(_) | LogError::CorruptSegment { .. } => 2, // CORRUPT_MESSAGE
            LogError::BadStateFile { .. } => 56,          // KAFKA_STORAGE_ERROR
            LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => 3, // UNKNOWN_TOPIC_OR_PARTITION
            LogError::TopicExists(_) => 36,   // TOPIC_ALREADY_EXISTS
            LogError::InvalidTopic(_) => 17,  // INVALID_TOPIC_EXCEPTION
            LogError::InvalidConfig(_) => 40, // INVALID_CONFIG
            LogError::OffsetOutOfRange { .. } => 1, // OFFSET_OUT_OF_RANGE
            LogError::OutOfOrderSequence { .. } => 45, // OUT_OF_ORDER_SEQUENCE_NUMBER
            LogError::ProducerFenced { .. } => 47, // INVALID_PRODUCER_EPOCH
            LogError::BatchTooLarge { .. } => 10, // MESSAGE_TOO_LARGE
        }
    }
}
