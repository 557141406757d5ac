//! A streaming query's checkpoint directory: the write-ahead log of its batches.
//!
//! ```text
//! <dir>/metadata        {"id": ...}: the query's identity, kept across restarts
//! <dir>/offsets/<n>     batch n's ranges, written before it runs
//! <dir>/commits/<n>     written once the sink has batch n, with the next watermark
//! <dir>/state/<op>/...  stateful operators' state (`ember_exec::stateful::store`)
//! <dir>/lock            held while a query runs from this directory
//! ```
//!
//! The directory is local or in an object store (`ember_exec::storage`). Locally
//! the lock is an flock, released when the process ends however it ends. In an
//! object store it is a lease the running query renews: a query whose lease is
//! younger than [`LEASE`] holds the directory.
//!
//! On restart, a batch with offsets and no commit runs again with the same ranges.

use std::fs::File;
use std::time::Duration;

use ember_core::{EmberError, Result};
use ember_exec::storage::Dir;
use serde::{Deserialize, Serialize};

use super::source::Offsets;

/// How long an object-store lease holds without being renewed.
pub const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchRange {
    pub batch_id: u64,
    pub start: Offsets,
    pub end: Offsets,
    /// When the batch was planned (ms since the epoch), kept for a re-run.
    pub batch_time_ms: i64,
    /// The event-time watermark the batch uses (ms), kept for a re-run.
    #[serde(default)]
    pub watermark_ms: Option<i64>,
}

/// `commits/<n>`: what the next batch needs from this one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Commit {
    #[serde(default)]
    pub next_watermark_ms: Option<i64>,
    /// A stream-stream join's largest event time of each side so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_event_times: Vec<Option<i64>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    id: String,
}

pub struct Checkpoint {
    dir: Dir,
    pub id: String,
    lock: Lock,
}

enum Lock {
    Local(#[allow(dead_code)] File),
    Lease {
        owner: String,
        renewed: parking_lot::Mutex<std::time::Instant>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    owner: String,
    renewed_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn busy(dir: &Dir) -> EmberError {
    EmberError::Config(format!(
        "another streaming query is running with checkpoint {dir}"
    ))
}

/// The numbered files of a directory, in order.
async fn numbered(dir: &Dir) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = dir
        .list()
        .await?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    dir: &Dir,
    name: &str,
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| EmberError::Decode {
        what,
        message: format!("{dir}/{name}: {e}"),
    })
}

impl Checkpoint {
    /// Opens (or creates) the directory and takes its lock: a second query on the
    /// same directory fails here.
    pub async fn open(
        location: &str,
        stores: &dyn datafusion::execution::object_store::ObjectStoreRegistry,
    ) -> Result<Checkpoint> {
        let dir = Dir::parse(location, stores)?.absolute()?;
        for sub in ["offsets", "commits", "state"] {
            dir.join(sub).create().await?;
        }
        let lock = match dir.local_path() {
            Some(path) => {
                let lock_path = path.join("lock");
                let lock =
                    File::create(&lock_path).map_err(|e| EmberError::io(lock_path.display(), e))?;
                lock.try_lock().map_err(|_| busy(&dir))?;
                Lock::Local(lock)
            }
            None => {
                if let Some(bytes) = dir.read("lock").await? {
                    let lease: Lease = decode(&bytes, "a checkpoint lock", &dir, "lock")?;
                    if now_ms() - lease.renewed_ms < LEASE.as_millis() as i64 {
                        return Err(busy(&dir));
                    }
                }
                let owner = format!("{:032x}", rand_id());
                let lock = Lock::Lease {
                    owner,
                    renewed: parking_lot::Mutex::new(std::time::Instant::now()),
                };
                write_lease(&dir, &lock).await?;
                lock
            }
        };
        let id = match dir.read("metadata").await? {
            Some(bytes) => decode::<Metadata>(&bytes, "checkpoint metadata", &dir, "metadata")?.id,
            None => {
                let id = format!("{:032x}", rand_id());
                let meta = serde_json::to_vec(&Metadata { id: id.clone() }).expect("serializable");
                dir.write("metadata", meta).await?;
                id
            }
        };
        Ok(Checkpoint { dir, id, lock })
    }

    /// Renews an object store's lease when a third of it has passed; checks first
    /// that no other query took it over.
    pub async fn renew(&self) -> Result<()> {
        let Lock::Lease { owner, renewed } = &self.lock else {
            return Ok(());
        };
        if renewed.lock().elapsed() < LEASE / 3 {
            return Ok(());
        }
        if let Some(bytes) = self.dir.read("lock").await? {
            let lease: Lease = decode(&bytes, "a checkpoint lock", &self.dir, "lock")?;
            if &lease.owner != owner {
                return Err(busy(&self.dir));
            }
        }
        *renewed.lock() = std::time::Instant::now();
        write_lease(&self.dir, &self.lock).await
    }

    /// Gives an object store's lease up, so the next query need not wait for it.
    pub async fn release(&self) -> Result<()> {
        match &self.lock {
            Lock::Lease { .. } => self.dir.delete("lock").await,
            Lock::Local(_) => Ok(()),
        }
    }

    /// The last batch planned, and its commit if it has one.
    pub async fn last(&self) -> Result<Option<(BatchRange, Option<Commit>)>> {
        let offsets = self.dir.join("offsets");
        let Some(&n) = numbered(&offsets).await?.last() else {
            return Ok(None);
        };
        let name = n.to_string();
        let bytes = offsets
            .read(&name)
            .await?
            .ok_or_else(|| EmberError::Decode {
                what: "a checkpoint offsets file",
                message: format!("{offsets}/{name}: listed, then gone"),
            })?;
        let range: BatchRange = decode(&bytes, "a checkpoint offsets file", &offsets, &name)?;
        let commits = self.dir.join("commits");
        let commit = match commits.read(&name).await? {
            Some(bytes) => Some(decode(&bytes, "a checkpoint commit file", &commits, &name)?),
            None => None,
        };
        Ok(Some((range, commit)))
    }

    pub async fn write_offsets(&self, range: &BatchRange) -> Result<()> {
        self.dir
            .join("offsets")
            .write(
                &range.batch_id.to_string(),
                serde_json::to_vec_pretty(range).expect("serializable"),
            )
            .await
    }

    /// Where stateful operators keep their state (`ember_exec::stateful::store`).
    pub fn state_dir(&self, operator: usize) -> Dir {
        self.dir.join("state").join(&operator.to_string())
    }

    /// Batch `batch_id` reached the sink; `next_watermark_ms` is the watermark the
    /// next batch uses.
    pub async fn commit(
        &self,
        batch_id: u64,
        next_watermark_ms: Option<i64>,
        max_event_times: Vec<Option<i64>>,
    ) -> Result<()> {
        let commit = Commit {
            next_watermark_ms,
            max_event_times,
        };
        self.dir
            .join("commits")
            .write(
                &batch_id.to_string(),
                serde_json::to_vec(&commit).expect("serializable"),
            )
            .await
    }
}

async fn write_lease(dir: &Dir, lock: &Lock) -> Result<()> {
    let Lock::Lease { owner, .. } = lock else {
        return Ok(());
    };
    let lease = Lease {
        owner: owner.clone(),
        renewed_ms: now_ms(),
    };
    dir.write("lock", serde_json::to_vec(&lease).expect("serializable"))
        .await
}

/// A random 128-bit id from the OS's hasher seeds (no extra dependency).
fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    ((a as u128) << 64) | h.finish() as u128
}
