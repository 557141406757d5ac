//! A streaming query's checkpoint directory: the write-ahead log of its batches.
//!
//! ```text
//! <dir>/metadata        {"id": ...}: the query's identity, kept across restarts
//! <dir>/offsets/<n>     batch n's ranges, written before it runs
//! <dir>/commits/<n>     written once the sink has batch n, with the next watermark
//! <dir>/state/<op>/...  stateful operators' state (`ember_core::stateful::store`)
//! <dir>/lock            held (flock) while a query runs from this directory
//! ```
//!
//! On restart, a batch with offsets and no commit runs again with the same ranges.

use std::fs::File;
use std::path::{Path, PathBuf};

use ember_core::{EmberError, Result};
use serde::{Deserialize, Serialize};

use super::source::Offsets;

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
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    id: String,
}

pub struct Checkpoint {
    dir: PathBuf,
    pub id: String,
    _lock: File,
}

fn io(path: &Path, e: std::io::Error) -> EmberError {
    EmberError::io(path.display(), e)
}

pub(crate) use ember_core::stateful::store::write_atomically;

fn numbered(dir: &Path) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(io(dir, e)),
    };
    ids.sort_unstable();
    Ok(ids)
}

impl Checkpoint {
    /// Opens (or creates) the directory and takes its lock: a second query on the
    /// same directory fails here.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        for sub in ["offsets", "commits", "state"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir, e))?;
        }
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| io(&lock_path, e))?;
        lock.try_lock().map_err(|_| {
            EmberError::Config(format!(
                "another streaming query is running with checkpoint {}",
                dir.display()
            ))
        })?;
        let meta_path = dir.join("metadata");
        let id = match std::fs::read(&meta_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Metadata>(&bytes)
                    .map_err(|e| EmberError::Decode {
                        what: "checkpoint metadata",
                        message: format!("{}: {e}", meta_path.display()),
                    })?
                    .id
            }
            Err(_) => {
                let id = format!("{:032x}", rand_id());
                let meta = serde_json::to_vec(&Metadata { id: id.clone() }).expect("serializable");
                write_atomically(&meta_path, &meta)?;
                id
            }
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            id,
            _lock: lock,
        })
    }

    /// The last batch planned, and its commit if it has one.
    pub fn last(&self) -> Result<Option<(BatchRange, Option<Commit>)>> {
        let Some(&n) = numbered(&self.dir.join("offsets"))?.last() else {
            return Ok(None);
        };
        let path = self.dir.join("offsets").join(n.to_string());
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let range: BatchRange = serde_json::from_slice(&bytes).map_err(|e| EmberError::Decode {
            what: "a checkpoint offsets file",
            message: format!("{}: {e}", path.display()),
        })?;
        let path = self.dir.join("commits").join(n.to_string());
        let commit = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| EmberError::Decode {
                    what: "a checkpoint commit file",
                    message: format!("{}: {e}", path.display()),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path, e)),
        };
        Ok(Some((range, commit)))
    }

    pub fn write_offsets(&self, range: &BatchRange) -> Result<()> {
        let path = self.dir.join("offsets").join(range.batch_id.to_string());
        write_atomically(
            &path,
            &serde_json::to_vec_pretty(range).expect("serializable"),
        )
    }

    /// Where stateful operators keep their state (see `state.rs`).
    pub fn state_dir(&self, operator: usize) -> PathBuf {
        self.dir.join("state").join(operator.to_string())
    }

    /// Batch `batch_id` reached the sink; `next_watermark_ms` is the watermark the
    /// next batch uses.
    pub fn commit(&self, batch_id: u64, next_watermark_ms: Option<i64>) -> Result<()> {
        let path = self.dir.join("commits").join(batch_id.to_string());
        let commit = Commit { next_watermark_ms };
        write_atomically(&path, &serde_json::to_vec(&commit).expect("serializable"))
    }
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
