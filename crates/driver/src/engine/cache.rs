//! Cached frames (`DataFrame::cache` / `persist`): a frame's partitions kept on the
//! executors that computed them, and read by later jobs instead of recomputed.
//!
//! A persisted frame's plan carries a [`CacheExec`] above its input. The stage
//! planner cuts there as at an exchange: the input becomes a *cache stage*, whose map
//! outputs (one per input partition) are written under a job id of the cache's own
//! (`ember_core::shuffle::cache_job`), so that no job's end removes them. Executors
//! keep them in a memory store drawn from their pool (up to a share of it), unless
//! the frame is kept on disk only; what does not fit goes to disk, and a memory-only
//! frame leaves such partitions out. When a cache stage's task
//! succeeds, its output is recorded in the [`CacheRegistry`]; a later job's cache
//! stage starts with those partitions done, and runs only the missing ones (none,
//! once the frame is whole). An executor lost takes its cached partitions with it:
//! they are forgotten and recomputed from lineage by the next job that reads them.
//! `unpersist` forgets the frame and removes its outputs on every executor.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use ember_exec::shuffle::{MapOutput, ShuffleData};
use parking_lot::Mutex;
use serde::Serialize;

/// Where a cached frame's partitions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum StorageLevel {
    /// In the executor's memory; partitions that do not fit are left out and
    /// recomputed when read.
    MemoryOnly,
    /// In memory while it fits, the rest on the executor's disk (Spark's default for
    /// a frame).
    MemoryAndDisk,
    /// On the executor's disk.
    DiskOnly,
}

impl fmt::Display for StorageLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageLevel::MemoryOnly => "memory only",
            StorageLevel::MemoryAndDisk => "memory and disk",
            StorageLevel::DiskOnly => "disk only",
        })
    }
}

/// Marks where a persisted frame's plan is cut into a cache stage. Never run itself:
/// the stage planner replaces it.
#[derive(Debug)]
pub(crate) struct CacheExec {
    pub id: u64,
    pub level: StorageLevel,
    input: Arc<dyn ExecutionPlan>,
}

impl CacheExec {
    pub(crate) fn new(id: u64, level: StorageLevel, input: Arc<dyn ExecutionPlan>) -> Self {
        CacheExec { id, level, input }
    }
}

impl DisplayAs for CacheExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CacheExec: id={}, level={}", self.id, self.level)
    }
}

impl ExecutionPlan for CacheExec {
    fn name(&self) -> &str {
        "CacheExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("CacheExec takes one input".into())
        })?;
        Ok(Arc::new(CacheExec::new(self.id, self.level, input)))
    }

    /// Outside a stage (a plan run by DataFusion alone): the input's rows.
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        self.input.execute(partition, ctx)
    }
}

/// One cached frame: what it is, and where each partition is kept.
#[derive(Debug, Clone)]
struct Cached {
    name: String,
    level: StorageLevel,
    partitions: Vec<Option<MapOutput>>,
}

/// A cached frame as the Storage page and `/api/v1/storage` show it.
#[derive(Debug, Clone, Serialize)]
pub struct CachedFrameView {
    pub id: u64,
    pub name: String,
    pub storage_level: StorageLevel,
    pub partitions: usize,
    pub cached_partitions: usize,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub rows: u64,
    /// Executors holding some of its partitions.
    pub executors: Vec<String>,
}

/// The session's cached frames. Shared by the session (which names and forgets them)
/// and the scheduler (which records and reads their partitions).
#[derive(Debug, Default)]
pub(crate) struct CacheRegistry {
    frames: Mutex<BTreeMap<u64, Cached>>,
}

impl CacheRegistry {
    /// A frame is persisted (its partitions come with the first job that runs it).
    pub(crate) fn declare(&self, id: u64, name: String, level: StorageLevel) {
        self.frames.lock().entry(id).or_insert(Cached {
            name,
            level,
            partitions: vec![],
        });
    }

    /// Whether `id` is still persisted.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.frames.lock().contains_key(&id)
    }

    /// The kept partitions of a cache stage of `tasks` partitions.
    pub(crate) fn outputs(&self, id: u64, tasks: usize) -> Vec<Option<MapOutput>> {
        match self.frames.lock().get(&id) {
            Some(c) if c.partitions.len() == tasks => c.partitions.clone(),
            _ => vec![None; tasks],
        }
    }

    /// A cache stage's task stored partition `p` at `output`. A memory-only frame
    /// keeps a partition that went to disk out.
    pub(crate) fn record(&self, id: u64, tasks: usize, p: usize, output: &MapOutput) {
        let mut frames = self.frames.lock();
        let Some(c) = frames.get_mut(&id) else {
            return;
        };
        if c.level == StorageLevel::MemoryOnly && !matches!(output.data, ShuffleData::Memory(_)) {
            return;
        }
        if c.partitions.len() != tasks {
            c.partitions = vec![None; tasks];
        }
        c.partitions[p] = Some(output.clone());
    }

    /// Forgets the partitions `executor` held (it is lost).
    pub(crate) fn forget_executor(&self, executor: &str) {
        for c in self.frames.lock().values_mut() {
            for p in c.partitions.iter_mut() {
                if p.as_ref().is_some_and(|o| o.executor_id == executor) {
                    *p = None;
                }
            }
        }
    }

    /// Forgets a frame; true if it was persisted.
    pub(crate) fn remove(&self, id: u64) -> bool {
        self.frames.lock().remove(&id).is_some()
    }

    pub(crate) fn views(&self) -> Vec<CachedFrameView> {
        self.frames
            .lock()
            .iter()
            .map(|(id, c)| {
                let kept: Vec<&MapOutput> = c.partitions.iter().flatten().collect();
                let in_memory = |o: &MapOutput| matches!(o.data, ShuffleData::Memory(_));
                let mut executors: Vec<String> =
                    kept.iter().map(|o| o.executor_id.clone()).collect();
                executors.sort();
                executors.dedup();
                CachedFrameView {
                    id: *id,
                    name: c.name.clone(),
                    storage_level: c.level,
                    partitions: c.partitions.len(),
                    cached_partitions: kept.len(),
                    memory_bytes: kept
                        .iter()
                        .filter(|o| in_memory(o))
                        .map(|o| o.total_bytes())
                        .sum(),
                    disk_bytes: kept
                        .iter()
                        .filter(|o| !in_memory(o))
                        .map(|o| o.total_bytes())
                        .sum(),
                    rows: kept.iter().map(|o| o.total_rows()).sum(),
                    executors,
                }
            })
            .collect()
    }
}
