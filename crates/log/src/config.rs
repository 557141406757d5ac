//! Settings of the log and of each topic.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{LogError, Result};

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before an append is acknowledged.
    EveryAppend,
    /// fsync at most this often (and by the background flusher).
    Interval(Duration),
    /// Leave it to the OS.
    Never,
}

impl Durability {
    /// Parses `every-append`, `never`, or an interval in milliseconds such as `1000ms`.
    pub fn parse(s: &str) -> Result<Durability> {
        match s {
            "every-append" | "always" => Ok(Durability::EveryAppend),
            "never" => Ok(Durability::Never),
            other => other
                .strip_suffix("ms")
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| Durability::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    LogError::InvalidConfig(format!(
                        "durability '{other}': expected every-append, never or e.g. 1000ms"
                    ))
                }),
        }
    }
}

/// What happens to old segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    Delete,
}

/// A topic's settings (Kafka's names in parentheses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Keep segments whose newest record is younger than this (`retention.ms`).
    pub retention_ms: Option<u64>,
    /// Keep at most about this many bytes per partition (`retention.bytes`).
    pub retention_bytes: Option<u64>,
    /// Roll to a new segment past this size (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll to a new segment after this long (`segment.ms`).
    pub segment_ms: Option<u64>,
    /// (`cleanup.policy`): only `delete`.
    pub cleanup_policy: CleanupPolicy,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            segment_bytes: 128 << 20,
            segment_ms: None,
            cleanup_policy: CleanupPolicy::Delete,
        }
    }
}

impl TopicConfig {
    /// Applies one Kafka-style setting (`retention.ms`, `retention.bytes`,
    /// `segment.bytes`, `segment.ms`, `cleanup.policy`); -1 means unlimited.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = || LogError::InvalidConfig(format!("{key}={value}"));
        let limit = |v: &str| -> Result<Option<u64>> {
            let n: i64 = v.parse().map_err(|_| bad())?;
            Ok((n >= 0).then_some(n as u64))
        };
        match key {
            "retention.ms" => self.retention_ms = limit(value)?,
            "retention.bytes" => self.retention_bytes = limit(value)?,
            "segment.ms" => self.segment_ms = limit(value)?,
            "segment.bytes" => {
                self.segment_bytes = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1024)
                    .ok_or_else(bad)?;
            }
            "cleanup.policy" if value == "delete" => self.cleanup_policy = CleanupPolicy::Delete,
            "cleanup.policy" => {
                return Err(LogError::InvalidConfig(format!(
                    "cleanup.policy={value}: only delete is supported"
                )));
            }
            _ => {
                return Err(LogError::InvalidConfig(format!(
                    "unknown topic setting {key}"
                )));
            }
        }
        Ok(())
    }

    /// The settings as Kafka names them, for describing a topic.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let limit = |v: Option<u64>| v.map_or("-1".to_string(), |n| n.to_string());
        vec![
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", limit(self.retention_ms)),
            ("retention.bytes", limit(self.retention_bytes)),
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", limit(self.segment_ms)),
        ]
    }
}

/// Settings of a whole log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub durability: Durability,
    /// Settings of topics created without their own.
    pub topic_defaults: TopicConfig,
    /// Create a topic on first produce (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics (`num.partitions`).
    pub default_partitions: i32,
    /// Largest record batch accepted (`message.max.bytes`).
    pub max_batch_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Interval(Duration::from_millis(1000)),
            topic_defaults: TopicConfig::default(),
            auto_create_topics: true,
            default_partitions: 1,
            max_batch_bytes: 8 << 20,
        }
    }
}
