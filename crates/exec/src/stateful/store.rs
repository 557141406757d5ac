//! The state store of a stateful streaming operator: a versioned key-value map, cut
//! into partitions, kept in the checkpoint directory.
//!
//! ```text
//! <checkpoint>/state/<operator>/<partition>/<v>.delta     keys changed by batch v
//! <checkpoint>/state/<operator>/<partition>/<v>.snapshot  the whole partition after v
//! ```
//!
//! Version `v` is the state after batch `v`: the latest snapshot at or before `v` plus
//! the deltas after it. Every `snapshot_every`-th version is a snapshot; files older
//! than the snapshot that the previous version needs are purged. A file is an Arrow
//! IPC stream with a `key` and a `value` column, both binary; a null value in a delta
//! removes the key. Each operator encodes its own keys and values.
//!
//! Each partition is a task of the operator's stage, wherever the scheduler puts it:
//! the task reads and writes its own partition ([`StateStore::load_partition`],
//! [`StateStore::write_partition`]) and always writes a file, whose schema metadata
//! holds the batch's [`BatchStats`] for the query to read.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::storage::Dir;
use crate::{EmberError, Result};

/// Keys and values of a whole state.
pub type Entries = HashMap<Box<[u8]>, Vec<u8>>;

/// One key's change in a batch: a new value, or removed.
pub type Change = (Box<[u8]>, Option<Vec<u8>>);

/// Every key and value of a state, for a snapshot.
pub type Snapshot = Vec<(Box<[u8]>, Vec<u8>)>;

pub struct StateStore {
    dir: Dir,
    snapshot_every: u64,
}

/// What one task of a partitioned operator did in a batch, kept with its version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Rows older than the batch's watermark, dropped.
    pub late_rows: usize,
    /// The largest event time among the rows kept (for the next watermark).
    pub max_event_time: Option<i64>,
    /// Each side's, for a join.
    #[serde(default)]
    pub max_event_times: Vec<Option<i64>>,
    pub rows_total: usize,
    pub rows_updated: usize,
    pub rows_removed: usize,
}

const STATS_KEY: &str = "ember.stats";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, true),
    ]))
}

impl StateStore {
    pub fn new(dir: Dir, snapshot_every: u64) -> StateStore {
        StateStore {
            dir,
            snapshot_every: snapshot_every.max(1),
        }
    }

    fn part(&self, partition: usize) -> Dir {
        self.dir.join(&partition.to_string())
    }

    fn name(version: u64, kind: &str) -> String {
        format!("{version}.{kind}")
    }

    /// The versions of each kind a partition holds.
    async fn versions(&self, partition: usize) -> Result<Vec<(u64, String)>> {
        let mut found = vec![];
        for name in self.part(partition).list().await? {
            if let Some((v, kind)) = name.split_once('.')
                && let Ok(v) = v.parse()
                && (kind == "delta" || kind == "snapshot")
            {
                found.push((v, kind.to_string()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Checks that the state was written in `layout` (how keys are spread over the
    /// partitions), and records it for a new state: keys read with another layout
    /// would be looked up in the wrong partition.
    pub async fn check_layout(&self, layout: &str) -> Result<()> {
        match self.dir.read("_layout").await? {
            Some(found) if String::from_utf8_lossy(&found).trim() == layout => Ok(()),
            Some(found) => Err(EmberError::Config(format!(
                "{}/_layout: the state was written as '{}', and this query keeps it as '{layout}' (a checkpoint fixes its ember.streaming.state.partitions, and how groups keep their state); start the query from a new checkpoint, or with the settings it was started with",
                self.dir,
                String::from_utf8_lossy(&found).trim()
            ))),
            None => {
                let written = self
                    .dir
                    .list()
                    .await?
                    .iter()
                    .any(|name| name.parse::<usize>().is_ok());
                if written {
                    return Err(EmberError::Config(format!(
                        "{}: the state has no layout marker (an older ember wrote it); start the query from a new checkpoint",
                        self.dir
                    )));
                }
                self.dir.create().await?;
                self.dir.write("_layout", layout.as_bytes().to_vec()).await
            }
        }
    }

    /// One partition's state after batch `version` (empty before the first batch).
    pub async fn load_partition(&self, partition: usize, version: Option<u64>) -> Result<Entries> {
        let mut entries = Entries::new();
        let Some(version) = version else {
            return Ok(entries);
        };
        let versions = self.versions(partition).await?;
        let snapshot = versions
            .iter()
            .filter(|(v, k)| *v <= version && k == "snapshot")
            .map(|(v, _)| *v)
            .max();
        if let Some(s) = snapshot {
            for (k, v) in self.read(partition, s, "snapshot").await? {
                entries.insert(k, v.unwrap_or_default());
            }
        }
        for (v, kind) in &versions {
            if kind == "delta" && *v <= version && snapshot.is_none_or(|s| *v > s) {
                for (k, value) in self.read(partition, *v, "delta").await? {
                    match value {
                        Some(value) => entries.insert(k, value),
                        None => entries.remove(&k),
                    };
                }
            }
        }
        Ok(entries)
    }

    /// Writes one partition's version `version`: its `changes`, or a snapshot of
    /// `all` (the partition after the changes) when the version is due for one; the
    /// file carries `stats`.
    pub async fn write_partition(
        &self,
        partition: usize,
        version: u64,
        changes: Vec<Change>,
        all: impl FnOnce() -> Result<Snapshot>,
        stats: &BatchStats,
    ) -> Result<()> {
        let snapshot = version.is_multiple_of(self.snapshot_every);
        let part = if snapshot {
            all()?.into_iter().map(|(k, v)| (k, Some(v))).collect()
        } else {
            changes
        };
        // A batch run again replaces what its first run wrote.
        let dir = self.part(partition);
        dir.create().await?;
        let (kind, other) = if snapshot {
            ("snapshot", "delta")
        } else {
            ("delta", "snapshot")
        };
        dir.delete(&Self::name(version, other)).await?;
        dir.write(&Self::name(version, kind), encode(part, stats)?)
            .await?;
        self.purge(partition, version).await
    }

    /// What the task of `partition` reported for batch `version`.
    pub async fn stats(&self, partition: usize, version: u64) -> Result<BatchStats> {
        for kind in ["delta", "snapshot"] {
            let name = Self::name(version, kind);
            // The schema, with the statistics, leads the file: its head is enough.
            let Some(bytes) = self.part(partition).read_head(&name, 64 << 10).await? else {
                continue;
            };
            let place = format!("{}/{name}", self.part(partition));
            let bad = |m: String| EmberError::Decode {
                what: "a streaming state file",
                message: format!("{place}: {m}"),
            };
            // Only the schema message is read: the head may end inside a batch.
            let reader = crate::ipc::StreamReader::try_new(
                bytes.as_slice(),
                bytes.len() as u64,
                "a streaming state file",
            )
            .map_err(|e| crate::ipc::at(e, &place))?;
            let json = reader
                .schema()
                .metadata()
                .get(STATS_KEY)
                .cloned()
                .ok_or_else(|| bad("no batch statistics".into()))?;
            return serde_json::from_str(&json).map_err(|e| bad(e.to_string()));
        }
        Err(EmberError::Decode {
            what: "a streaming state partition",
            message: format!(
                "{}: no version {version} (its task did not run, or the directory is not shared with the executors)",
                self.part(partition)
            ),
        })
    }

    /// Drops files that neither this version nor the one before needs.
    async fn purge(&self, partition: usize, version: u64) -> Result<()> {
        let Some(previous) = version.checked_sub(1) else {
            return Ok(());
        };
        let keep_from = previous - previous % self.snapshot_every;
        for (v, kind) in self.versions(partition).await? {
            if v < keep_from {
                self.part(partition).delete(&Self::name(v, &kind)).await?;
            }
        }
        Ok(())
    }
}

/// A state file's bytes: the changes, and the batch's statistics in the schema.
fn encode(changes: Vec<Change>, stats: &BatchStats) -> Result<Vec<u8>> {
    let json = serde_json::to_string(stats).map_err(|e| EmberError::Decode {
        what: "batch statistics",
        message: e.to_string(),
    })?;
    let schema = Arc::new(
        schema()
            .as_ref()
            .clone()
            .with_metadata([(STATS_KEY.to_string(), json)].into()),
    );
    let keys = BinaryArray::from_iter_values(changes.iter().map(|(k, _)| k.as_ref()));
    let values: BinaryArray = changes.iter().map(|(_, v)| v.as_deref()).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(keys) as ArrayRef, Arc::new(values) as ArrayRef],
    )?;
    let mut bytes = vec![];
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    Ok(bytes)
}

impl StateStore {
    async fn read(&self, partition: usize, version: u64, kind: &str) -> Result<Vec<Change>> {
        let name = Self::name(version, kind);
        let dir = self.part(partition);
        let bytes = dir.read(&name).await?.ok_or_else(|| {
            EmberError::io(
                format!("{dir}/{name}"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        decode(bytes, &format!("{dir}/{name}"))
    }
}

fn decode(bytes: Vec<u8>, path: &str) -> Result<Vec<Change>> {
    let bad = |m: String| EmberError::Decode {
        what: "a streaming state file",
        message: format!("{path}: {m}"),
    };
    let (_, batches) = crate::ipc::read_stream(&bytes, "a streaming state file")
        .map_err(|e| crate::ipc::at(e, path))?;
    let mut out = vec![];
    for batch in batches {
        if batch.num_columns() != 2
            || batch.column(0).data_type() != &DataType::Binary
            || batch.column(1).data_type() != &DataType::Binary
        {
            return Err(bad("not a key/value file".into()));
        }
        let keys = batch.column(0).as_binary::<i32>();
        let values = batch.column(1).as_binary::<i32>();
        for i in 0..batch.num_rows() {
            out.push((
                keys.value(i).into(),
                (!values.is_null(i)).then(|| values.value(i).to_vec()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[tokio::test]
    async fn versions_are_snapshots_plus_deltas_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Dir::Local(dir.path().to_path_buf()), 4);
        let mut state = Entries::new();
        for v in 0..10u64 {
            let mut changes = vec![(key(&format!("k{v}")), Some(vec![v as u8]))];
            if v >= 2 {
                changes.push((key(&format!("k{}", v - 2)), None));
            }
            for (k, value) in &changes {
                match value {
                    Some(x) => state.insert(k.clone(), x.clone()),
                    None => state.remove(k),
                };
            }
            let all = state.clone();
            let stats = BatchStats {
                late_rows: v as usize,
                ..BatchStats::default()
            };
            store
                .write_partition(1, v, changes, || Ok(all.into_iter().collect()), &stats)
                .await
                .unwrap();
            assert_eq!(
                store.load_partition(1, Some(v)).await.unwrap(),
                state,
                "version {v}"
            );
            assert_eq!(store.stats(1, v).await.unwrap(), stats);
        }
        // Version 8 is a snapshot; 9 needs it, and 8 needs only itself.
        assert!(
            store
                .versions(1)
                .await
                .unwrap()
                .iter()
                .all(|(v, _)| *v >= 8)
        );
        assert_eq!(store.load_partition(1, Some(8)).await.unwrap().len(), 2);
        assert!(store.load_partition(0, Some(9)).await.unwrap().is_empty());
        std::fs::write(dir.path().join("1").join("8.snapshot"), b"garbage").unwrap();
        let err = store
            .load_partition(1, Some(9))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("8.snapshot"), "{err}");
    }
}
