//! An executor's memory: one pool for all its task slots, and where spills go.
//!
//! Every task of an executor runs in the same DataFusion [`RuntimeEnv`], whose memory
//! pool is sized from the executor's memory (`ember executor --memory`, or
//! `ember.executor.memory` in local mode). The pool is a [`FairSpillPool`]: operators
//! that can spill (sorts, aggregations, sort-merge joins, the shuffle writer's
//! buffers) share what the others (hash join build sides, the local shuffle's memory
//! store) leave, and spill their state to files in the executor's spill directory
//! when their share is used; DataFusion deletes each spill file when the operator that
//! wrote it is done with it. An operator that cannot spill and does not fit fails the
//! task with DataFusion's "Resources exhausted" error, which names the operator, what
//! it asked for and what the pool had left.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

use crate::error::Result;

/// The share of an executor's memory its tasks' pool gets; the rest is left for what
/// the pool does not count (batches in flight between operators, fetch buffers, the
/// process itself and the allocator's slack).
pub const POOL_FRACTION: f64 = 0.7;

/// How an executor's tasks may use memory and disk.
#[derive(Debug, Clone, Default)]
pub struct MemoryLimits {
    /// The executor's memory in bytes; `None` leaves the pool unbounded.
    pub memory_bytes: Option<u64>,
    /// Where operators spill; `None` uses the system's temporary directory.
    pub spill_dir: Option<PathBuf>,
}

impl MemoryLimits {
    /// The pool's size in bytes, if bounded.
    pub fn pool_bytes(&self) -> Option<usize> {
        self.memory_bytes
            .map(|m| (m as f64 * POOL_FRACTION) as usize)
    }

    /// A runtime for the executor's tasks under these limits, keeping the object
    /// stores (and file caches) of `base`.
    pub fn runtime(&self, base: &RuntimeEnv) -> Result<Arc<RuntimeEnv>> {
        let mut builder = RuntimeEnvBuilder::from_runtime_env(base);
        if let Some(pool) = self.pool_bytes() {
            // The error of a failed allocation lists the pool's largest consumers.
            let top = NonZeroUsize::new(5).expect("5 is not zero");
            builder = builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(pool),
                top,
            )));
        }
        if let Some(dir) = &self.spill_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::error::EmberError::io(dir.display(), e))?;
            builder = builder.with_disk_manager_builder(
                DiskManagerBuilder::default()
                    .with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
            );
        }
        Ok(builder.build_arc()?)
    }
}

/// Bytes of physical memory on this machine (`/proc/meminfo`), if known.
pub fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_a_share_of_the_memory_and_spills_go_to_the_spill_dir() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MemoryLimits {
            memory_bytes: Some(1 << 30),
            spill_dir: Some(dir.path().join("spill")),
        };
        let runtime = limits
            .runtime(&RuntimeEnvBuilder::new().build().unwrap())
            .unwrap();
        let expected = ((1u64 << 30) as f64 * POOL_FRACTION) as usize;
        assert!(matches!(
            runtime.memory_pool.memory_limit(),
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) if n == expected
        ));
        let file = runtime.disk_manager.create_tmp_file("a test").unwrap();
        let path = file.path().expect("a file").to_path_buf();
        assert!(path.starts_with(dir.path().join("spill")));
        drop(file);
        assert!(!path.exists(), "a spill file is removed when dropped");
    }

    #[test]
    fn this_machine_has_some_memory() {
        assert!(physical_memory().unwrap() > 0);
    }
}
