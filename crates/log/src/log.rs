//! A `Log`: topics of partitions under one directory.
//!
//! ```text
//! <root>/<topic>/topic.json        partitions and settings
//! <root>/<topic>/<partition>/      segments (see segment.rs) and recovery-point
//!                                  (see recovery.rs)
//! <root>/__groups/<group>.json     consumer groups' committed offsets
//! <root>/producer-ids              the next idempotent producer id
//! ```
//!
//! The small files are written atomically (see state.rs). A damaged one stops the
//! log from opening with an error that names it; a missing `producer-ids` is rebuilt
//! from the producer ids in the stored batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::{LogConfig, TopicConfig};
use crate::error::{LogError, Result};
use crate::group::Groups;
use crate::partition::Partition;
use crate::state;

/// A topic: its partitions and settings.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    partitions: i32,
    config: TopicConfig,
}

/// Most partitions a topic may have: each is a directory with open files, so a request
/// for two billion (a number any client can send) must be refused, not attempted.
pub const MAX_PARTITIONS: i32 = 10_000;

/// Producer ids are handed out in blocks; the file holds the first id of the next
/// block, so ids are never reused after a restart.
const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct Log {
    root: PathBuf,
    /// Held while the log is open: one process per directory.
    _lock: std::fs::File,
    config: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    next_producer_id: AtomicI64,
    producer_id_limit: Mutex<i64>,
    groups: Groups,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("root", &self.root).finish()
    }
}

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && !name.starts_with("__")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidTopic(format!(
            "'{name}': use 1 to 249 of a-z A-Z 0-9 . _ -, not starting with __"
        )))
    }
}

impl Log {
    /// Opens the log at `root` (created if missing), recovering every partition.
    pub fn open(root: impl AsRef<Path>, config: LogConfig) -> Result<Arc<Log>> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| LogError::io(&root, e))?;
        let lock_path = root.join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| LogError::io(&lock_path, e))?;
        lock.try_lock().map_err(|_| {
            LogError::InvalidConfig(format!(
                "the log in {} is open in another process (a broker?); reach it over Kafka instead",
                root.display()
            ))
        })?;
        let mut topics = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(|e| LogError::io(&root, e))? {
            let entry = entry.map_err(|e| LogError::io(&root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("__") || !entry.path().is_dir() {
                continue;
            }
            let Some(meta) = read_topic_meta(&entry.path())? else {
                continue;
            };
            let topic = open_topic(&root, &name, meta.partitions, meta.config, &config)?;
            topics.insert(name, Arc::new(topic));
        }
        let next_producer_id = next_producer_id(&root.join("producer-ids"), &topics)?;
        let groups = Groups::open(&root.join("__groups"))?;
        let log = Log {
            root,
            _lock: lock,
            config,
            topics: RwLock::new(topics),
            next_producer_id: AtomicI64::new(next_producer_id),
            producer_id_limit: Mutex::new(next_producer_id),
            groups,
        };
        Ok(Arc::new(log))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: Option<TopicConfig>,
    ) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(LogError::InvalidConfig(format!(
                "a topic has 1 to {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        let mut topics = self.topics.write();
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let config = config.unwrap_or_else(|| self.config.topic_defaults.clone());
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        state::sync_dir(&self.root)?;
        let meta = TopicMeta {
            partitions,
            config: config.clone(),
        };
        state::write_atomically(
            &dir.join("topic.json"),
            &serde_json::to_vec_pretty(&meta).expect("serializable"),
        )?;
        let topic = Arc::new(open_topic(
            &self.root,
            name,
            partitions,
            config,
            &self.config,
        )?);
        topics.insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let removed = self.topics.write().remove(name);
        if removed.is_none() {
            return Err(LogError::UnknownTopic(name.to_string()));
        }
        let dir = self.root.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    /// The topic, created with the default settings if auto-creation is on.
    pub fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Err(LogError::UnknownTopic(_)) if self.config.auto_create_topics => {
                match self.create_topic(name, self.config.default_partitions, None) {
                    Err(LogError::TopicExists(_)) => self.topic(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| t.partitions.get(p).cloned())
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    /// A new idempotent producer id, never handed out before by this log.
    pub fn allocate_producer_id(&self) -> Result<i64> {
        let id = self.next_producer_id.fetch_add(1, Ordering::SeqCst);
        let mut limit = self.producer_id_limit.lock();
        if id >= *limit {
            let next = (id / PRODUCER_ID_BLOCK + 1) * PRODUCER_ID_BLOCK;
            state::write_atomically(
                &self.root.join("producer-ids"),
                format!("{next}\n").as_bytes(),
            )?;
            *limit = next;
        }
        Ok(id)
    }

    /// Flushes what the durability mode asks to flush by now and applies
    /// retention, once.
    pub fn maintain(&self) -> Result<()> {
        let now = SystemTime::now();
        for topic in self.topics() {
            for p in &topic.partitions {
                p.flush_due()?;
                p.enforce_retention(now)?;
            }
        }
        Ok(())
    }

    /// Runs [`maintain`](Self::maintain) every `every` on the current runtime.
    pub fn spawn_maintenance(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let log = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(log) = log.upgrade() else { return };
                if let Err(e) = tokio::task::spawn_blocking(move || log.maintain())
                    .await
                    .unwrap_or(Ok(()))
                {
                    tracing::warn!(error = %e, "log maintenance failed");
                }
            }
        })
    }

    /// Syncs every partition and records that all of it is on disk, whatever the
    /// durability mode: the clean shutdown, after which a restart cuts nothing.
    pub fn sync(&self) -> Result<()> {
        for topic in self.topics() {
            for p in &topic.partitions {
                p.sync()?;
            }
        }
        Ok(())
    }
}

fn open_topic(
    root: &Path,
    name: &str,
    partitions: i32,
    config: TopicConfig,
    log: &LogConfig,
) -> Result<Topic> {
    let partitions = (0..partitions)
        .map(|p| {
            Partition::open(
                name,
                p,
                &root.join(name).join(p.to_string()),
                config.clone(),
                log.durability,
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Topic {
        name: name.to_string(),
        config,
        partitions,
    })
}

/// A topic directory's `topic.json`, or `None` for a directory that is not a topic
/// (or one whose creation a crash interrupted before it held any partition).
fn read_topic_meta(dir: &Path) -> Result<Option<TopicMeta>> {
    let path = dir.join("topic.json");
    let Some(bytes) = state::read_optional(&path)? else {
        let has_partitions = std::fs::read_dir(dir)
            .map_err(|e| LogError::io(dir, e))?
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            });
        if has_partitions {
            return Err(LogError::BadStateFile {
                path,
                reason: "missing, but the directory holds partitions: restore it (partitions and \
                         settings) or move the directory away"
                    .to_string(),
            });
        }
        return Ok(None);
    };
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| LogError::BadStateFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !(1..=MAX_PARTITIONS).contains(&meta.partitions) {
        return Err(LogError::BadStateFile {
            path,
            reason: format!(
                "{} partitions (a topic has 1 to {MAX_PARTITIONS})",
                meta.partitions
            ),
        });
    }
    Ok(Some(meta))
}

/// The first producer id this process may hand out.
///
/// The file holds the start of the next block of ids; an id below it may have been
/// handed out. A missing file (a log from before it existed, or one an operator
/// removed) is rebuilt from the log: one past the largest producer id of any stored
/// batch, so that no new producer takes the id (and sequence numbers) of one whose
/// batches the log keeps. A file that exists but cannot be read is an error: writes
/// are atomic, so it was damaged from outside, and the ids handed out before may
/// exceed anything in the log (producers that had not yet written); guessing could
/// give a live producer's id to another, whose records would then be acknowledged
/// and dropped as duplicates. Removing the file is the way to rebuild it.
fn next_producer_id(path: &Path, topics: &BTreeMap<String, Arc<Topic>>) -> Result<i64> {
    let in_log = topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .filter_map(|p| p.largest_producer_id())
        .max()
        .map_or(0, |id| id.saturating_add(1));
    match state::read_optional(path)? {
        Some(bytes) => {
            let stored = state::parse_number(path, &bytes).map_err(|e| match e {
                LogError::BadStateFile { path, reason } => LogError::BadStateFile {
                    reason: format!(
                        "{reason}; remove it to rebuild the next producer id from the log"
                    ),
                    path,
                },
                other => other,
            })?;
            Ok(stored.max(in_log))
        }
        None => {
            if in_log > 0 {
                tracing::warn!(
                    file = %path.display(),
                    next_producer_id = in_log,
                    "no producer id file: continuing after the largest producer id in the log"
                );
            }
            Ok(in_log)
        }
    }
}
