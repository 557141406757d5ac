//! Consumer groups: committed offsets (stored durably, one file per group) and, for
//! in-process consumers, membership with partition assignment across the members.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{LogError, Result};
use crate::state::write_atomically;

/// A topic and one of its partitions.
pub type TopicPartition = (String, i32);

/// How a group's partitions are spread over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssignmentStrategy {
    /// Per topic, contiguous ranges of partitions (Kafka's `range`).
    #[default]
    Range,
    /// All partitions dealt out one by one (Kafka's `roundrobin`).
    RoundRobin,
}

impl AssignmentStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
        }
    }

    /// Assigns `partitions` (per topic, its partition count) to `members` (member id
    /// and subscribed topics), deterministically.
    pub fn assign(
        &self,
        members: &BTreeMap<String, Vec<String>>,
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out: BTreeMap<String, Vec<TopicPartition>> =
            members.keys().map(|m| (m.clone(), vec![])).collect();
        match self {
            AssignmentStrategy::Range => {
                for (topic, &count) in partitions {
                    let subscribed: Vec<&String> = members
                        .iter()
                        .filter(|(_, topics)| topics.contains(topic))
                        .map(|(m, _)| m)
                        .collect();
                    if subscribed.is_empty() {
                        continue;
                    }
                    let n = subscribed.len() as i32;
                    let (per, extra) = (count / n, count % n);
                    let mut next = 0;
                    for (i, m) in subscribed.iter().enumerate() {
                        let take = per + i32::from((i as i32) < extra);
                        for p in next..next + take {
                            out.get_mut(*m).expect("member").push((topic.clone(), p));
                        }
                        next += take;
                    }
                }
            }
            AssignmentStrategy::RoundRobin => {
                let ids: Vec<&String> = members.keys().collect();
                let mut turn = 0;
                for (topic, &count) in partitions {
                    for p in 0..count {
                        // The next member, in turn, that subscribes to this topic.
                        for _ in 0..ids.len() {
                            let m = ids[turn % ids.len()];
                            turn += 1;
                            if members[m].contains(topic) {
                                out.get_mut(m).expect("member").push((topic.clone(), p));
                                break;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredOffsets {
    offsets: Vec<StoredOffset>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredOffset {
    topic: String,
    partition: i32,
    offset: i64,
    #[serde(default)]
    metadata: String,
}

#[derive(Debug)]
struct Member {
    topics: Vec<String>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Group {
    offsets: BTreeMap<TopicPartition, (i64, String)>,
    members: BTreeMap<String, Member>,
    generation: i32,
    assignment: BTreeMap<String, Vec<TopicPartition>>,
    strategy: AssignmentStrategy,
}

/// Every group of a log.
pub struct Groups {
    dir: PathBuf,
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

impl Groups {
    pub(crate) fn open(dir: &Path) -> Result<Groups> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut groups = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let path = entry.map_err(|e| LogError::io(dir, e))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(decode_name)
            else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| LogError::io(&path, e))?;
            // A group's committed offsets are where its consumers resume: reading a
            // damaged file as "nothing committed" would replay or skip whole
            // partitions, so it stops the log from opening, naming the file.
            let stored: StoredOffsets =
                serde_json::from_slice(&bytes).map_err(|e| LogError::BadStateFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let mut group = Group::default();
            for o in stored.offsets {
                group
                    .offsets
                    .insert((o.topic, o.partition), (o.offset, o.metadata));
            }
            groups.insert(name, group);
        }
        Ok(Groups {
            dir: dir.to_path_buf(),
            groups: Mutex::new(groups),
            next_member: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Stores offsets a group has consumed up to (the next offset to read), durably.
    pub fn commit(&self, group: &str, offsets: &[(String, i32, i64, String)]) -> Result<()> {
        let mut groups = self.groups.lock();
        let g = groups.entry(group.to_string()).or_default();
        for (topic, partition, offset, metadata) in offsets {
            g.offsets
                .insert((topic.clone(), *partition), (*offset, metadata.clone()));
        }
        let stored = StoredOffsets {
            offsets: g
                .offsets
                .iter()
                .map(|((topic, partition), (offset, metadata))| StoredOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: metadata.clone(),
                })
                .collect(),
        };
        write_atomically(
            &self.dir.join(format!("{}.json", encode_name(group))),
            &serde_json::to_vec(&stored).expect("serializable"),
        )
    }

    /// The offset a group committed for a partition.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<(i64, String)> {
        self.groups
            .lock()
            .get(group)
            .and_then(|g| g.offsets.get(&(topic.to_string(), partition)).cloned())
    }

    /// Every offset a group committed.
    pub fn committed_all(&self, group: &str) -> Vec<(TopicPartition, i64)> {
        self.groups.lock().get(group).map_or(vec![], |g| {
            g.offsets
                .iter()
                .map(|(tp, (o, _))| (tp.clone(), *o))
                .collect()
        })
    }

    /// Names of the known groups.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.groups.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// An in-process consumer joins `group`, subscribed to `topics`; every member's
    /// assignment is recomputed. Returns its member id.
    pub(crate) fn join(
        &self,
        group: &str,
        topics: Vec<String>,
        strategy: AssignmentStrategy,
        partitions: &BTreeMap<String, i32>,
    ) -> String {
        let id = format!(
            "member-{}",
            self.next_member
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut groups = self.groups.lock();
        let g = groups.entry(group.to_string()).or_default();
        g.strategy = strategy;
        g.members.insert(
            id.clone(),
            Member {
                topics,
                last_seen: Instant::now(),
            },
        );
        rebalance(g, partitions);
        id
    }

    /// A member leaves; the others share its partitions.
    pub(crate) fn leave(&self, group: &str, member: &str, partitions: &BTreeMap<String, i32>) {
        if let Some(g) = self.groups.lock().get_mut(group)
            && g.members.remove(member).is_some()
        {
            rebalance(g, partitions);
        }
    }

    /// A member's current assignment and the generation it belongs to; members
    /// silent for longer than `session_timeout` are dropped first.
    pub(crate) fn assignment(
        &self,
        group: &str,
        member: &str,
        session_timeout: Duration,
        partitions: &BTreeMap<String, i32>,
    ) -> Option<(i32, Vec<TopicPartition>)> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(group)?;
        g.members.get_mut(member)?.last_seen = Instant::now();
        let before = g.members.len();
        g.members
            .retain(|_, m| m.last_seen.elapsed() <= session_timeout);
        if g.members.len() != before {
            rebalance(g, partitions);
        }
        Some((
            g.generation,
            g.assignment.get(member).cloned().unwrap_or_default(),
        ))
    }
}

fn rebalance(g: &mut Group, partitions: &BTreeMap<String, i32>) {
    let members: BTreeMap<String, Vec<String>> = g
        .members
        .iter()
        .map(|(id, m)| (id.clone(), m.topics.clone()))
        .collect();
    g.generation += 1;
    g.assignment = g.strategy.assign(&members, partitions);
}

/// Group names may hold any character; file names get them percent-encoded.
fn encode_name(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Some(b) = name
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic_extra_to_the_first() {
        let m = members(&[("a", &["t"]), ("b", &["t"])]);
        let p = BTreeMap::from([("t".to_string(), 5)]);
        let out = AssignmentStrategy::Range.assign(&m, &p);
        let parts = |id: &str| out[id].iter().map(|(_, p)| *p).collect::<Vec<_>>();
        assert_eq!(parts("a"), vec![0, 1, 2]);
        assert_eq!(parts("b"), vec![3, 4]);
    }

    #[test]
    fn round_robin_deals_partitions_to_subscribers_in_turn() {
        let m = members(&[("a", &["t", "u"]), ("b", &["t"])]);
        let p = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]);
        let out = AssignmentStrategy::RoundRobin.assign(&m, &p);
        assert_eq!(out["b"], vec![("t".to_string(), 1)]);
        assert_eq!(out["a"].len(), 4);
    }

    #[test]
    fn group_names_round_trip_through_file_names() {
        for name in ["plain", "with space/and:colon", "üñí"] {
            assert_eq!(decode_name(&encode_name(name)), name);
        }
    }
}
