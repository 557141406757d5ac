//! Per-executor shuffle environment: where map outputs go.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use parking_lot::Mutex;

use crate::rpc::Security;
use ember_core::shuffle::{MapOutputKey, is_cache_job, is_disk_only_cache_job};

/// Everything a shuffle operator needs from the executor it runs on. Installed as a
/// `SessionConfig` extension of every task's `TaskContext`.
#[derive(Debug)]
pub struct ShuffleEnv {
    pub executor_id: String,
    /// Where this executor serves shuffle files to others; empty in local mode.
    pub address: String,
    /// Root of this executor's shuffle files: `<work_dir>/job-<id>/stage-<id>/...`.
    pub work_dir: PathBuf,
    /// In-memory map outputs; `None` sends every map output to disk.
    pub memory: Option<Arc<MemoryShuffleStore>>,
    /// What the memory store takes: every map output (local mode), or only the
    /// outputs of persisted frames (executor processes, whose other outputs go to
    /// disk for readers on other executors).
    memory_for_caches_only: bool,
    /// How to call other executors for their shuffle files.
    pub security: Security,
    /// One multiplexed connection per executor fetched from, reused by every fetch
    /// (a TLS handshake per partition would cost more than small reads).
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
    next_token: AtomicU64,
}

impl ShuffleEnv {
    pub fn new(
        executor_id: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        memory: Option<Arc<MemoryShuffleStore>>,
    ) -> Self {
        ShuffleEnv {
            executor_id: executor_id.into(),
            address: String::new(),
            work_dir: work_dir.into(),
            memory,
            memory_for_caches_only: false,
            security: Security::none(),
            channels: Mutex::default(),
            next_token: AtomicU64::new(1),
        }
    }

    /// Keeps the outputs of persisted frames (not kept on disk only) in `store`, and
    /// sends every other map output to disk.
    pub fn with_cache_memory(mut self, store: Arc<MemoryShuffleStore>) -> Self {
        self.memory = Some(store);
        self.memory_for_caches_only = true;
        self
    }

    /// Where the output of a map task of `job` may be kept in memory, if anywhere.
    pub fn memory_for(&self, job: u64) -> Option<&Arc<MemoryShuffleStore>> {
        if is_disk_only_cache_job(job) || (self.memory_for_caches_only && !is_cache_job(job)) {
            return None;
        }
        self.memory.as_ref()
    }

    /// Sets the address other executors fetch this one's shuffle files from.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Sets the secret that fetches from other executors carry.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The connection to the executor at `address` (made on first use).
    pub fn channel(&self, address: &str) -> crate::Result<tonic::transport::Channel> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = self.security.channel(address)?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// A token unique within this executor, to keep attempts of a task apart.
    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    pub fn job_dir(&self, job: u64) -> PathBuf {
        self.work_dir.join(format!("job-{job}"))
    }

    /// Frees everything a finished job left: its memory outputs and its files.
    pub fn remove_job(&self, job: u64) {
        if let Some(m) = &self.memory {
            m.remove_job(job);
        }
        remove_dir_quietly(&self.job_dir(job));
    }
}

fn remove_dir_quietly(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove shuffle files");
    }
}

/// Map outputs kept in memory, bounded by a byte budget shared by all running tasks,
/// and drawn from the executor's memory pool when it has one: what the store holds
/// is memory the operators do not get.
#[derive(Debug)]
pub struct MemoryShuffleStore {
    budget: usize,
    used: AtomicUsize,
    outputs: Mutex<HashMap<MapOutputKey, StoredOutput>>,
    pool: Mutex<Option<MemoryReservation>>,
}

#[derive(Debug)]
struct StoredOutput {
    partitions: Arc<Vec<Vec<RecordBatch>>>,
    bytes: usize,
}

impl MemoryShuffleStore {
    pub fn new(budget: usize) -> Self {
        MemoryShuffleStore {
            budget,
            used: AtomicUsize::new(0),
            outputs: Mutex::new(HashMap::new()),
            pool: Mutex::new(None),
        }
    }

    /// Draws what the store holds from `pool` from now on.
    pub fn with_pool(self, pool: &Arc<dyn MemoryPool>) -> Self {
        *self.pool.lock() = Some(MemoryConsumer::new("ShuffleMemoryStore").register(pool));
        self
    }

    /// Reserves `bytes` of the budget (and of the pool); false when either would go
    /// over.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(bytes)?;
                (next <= self.budget).then_some(next)
            })
            .is_ok();
        if !reserved {
            return false;
        }
        if let Some(pool) = self.pool.lock().as_mut()
            && pool.try_grow(bytes).is_err()
        {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back a reservation that was not turned into a stored output.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(pool) = self.pool.lock().as_mut() {
            pool.shrink(bytes.min(pool.size()));
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Stores a map output whose `bytes` were reserved with [`try_reserve`](Self::try_reserve).
    pub fn insert(&self, key: MapOutputKey, partitions: Vec<Vec<RecordBatch>>, bytes: usize) {
        let old = self.outputs.lock().insert(
            key,
            StoredOutput {
                partitions: Arc::new(partitions),
                bytes,
            },
        );
        if let Some(old) = old {
            self.release(old.bytes);
        }
    }

    /// The batches of one output partition of a map output, if it is still here.
    pub fn get(&self, key: &MapOutputKey, reduce_partition: usize) -> Option<Vec<RecordBatch>> {
        let outputs = self.outputs.lock();
        let stored = outputs.get(key)?;
        stored.partitions.get(reduce_partition).cloned()
    }

    /// Forgets every map output of a job and returns its bytes to the budget.
    pub fn remove_job(&self, job: u64) {
        let mut outputs = self.outputs.lock();
        let mut freed = 0;
        outputs.retain(|k, v| {
            let keep = k.job != job;
            if !keep {
                freed += v.bytes;
            }
            keep
        });
        drop(outputs);
        self.release(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_never_exceeded_and_freed_per_job() {
        let store = MemoryShuffleStore::new(100);
        assert!(store.try_reserve(60));
        assert!(!store.try_reserve(50));
        let key = MapOutputKey {
            job: 7,
            stage: 1,
            map_partition: 0,
            token: 1,
        };
        store.insert(key, vec![vec![]], 60);
        assert_eq!(store.used(), 60);
        assert!(store.get(&key, 0).is_some());
        store.remove_job(7);
        assert_eq!(store.used(), 0);
        assert!(store.get(&key, 0).is_none());
    }

    #[test]
    fn the_store_draws_from_the_executor_pool() {
        let pool: Arc<dyn MemoryPool> = Arc::new(
            datafusion::execution::memory_pool::GreedyMemoryPool::new(100),
        );
        let store = MemoryShuffleStore::new(1000).with_pool(&pool);
        assert!(store.try_reserve(80));
        assert_eq!(pool.reserved(), 80);
        assert!(!store.try_reserve(30), "the pool has 20 bytes left");
        assert_eq!(store.used(), 80, "a refused reservation takes nothing");
        store.release(80);
        assert_eq!(pool.reserved(), 0);
    }
}
