//! `cache()`, `persist(level)` and `unpersist()`, as in Spark: lazy, kept on the
//! executors, read by later jobs (see `engine/cache.rs`).

use std::fmt;
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use ember_core::{EmberError, Result};

use super::DataFrame;
use crate::engine::StorageLevel;

/// Marks a persisted frame in a logical plan: planned as a cache stage. Filters and
/// projections of the queries that read it stay above it, so that every query reads
/// the same kept partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct CacheNode {
    pub id: u64,
    pub level: StorageLevel,
    pub input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for CacheNode {
    fn name(&self) -> &str {
        "Cache"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    /// No filter is pushed below: the kept partitions are the whole frame.
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        self.input
            .schema()
            .columns()
            .into_iter()
            .map(|c| c.flat_name())
            .chain(
                self.input
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone()),
            )
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Cache: id={}, level={}", self.id, self.level)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("Cache takes one input".into()))?;
        Ok(CacheNode {
            id: self.id,
            level: self.level,
            input,
        })
    }

    /// Limits are not pushed below either.
    fn supports_limit_pushdown(&self) -> bool {
        false
    }
}

impl DataFrame {
    /// Keeps this frame's partitions, once an action has computed them, on the
    /// executors that computed them, in memory and (what does not fit) on disk:
    /// later actions on the returned frame, and on frames built from it, read them
    /// instead of recomputing. Lazy, like Spark's: nothing runs now.
    pub fn cache(&self) -> Result<DataFrame> {
        self.persist(StorageLevel::MemoryAndDisk)
    }

    /// [`cache`](Self::cache) with a storage level.
    pub fn persist(&self, level: StorageLevel) -> Result<DataFrame> {
        if let LogicalPlan::Extension(e) = self.logical_plan()
            && let Some(node) = e.node.as_any().downcast_ref::<CacheNode>()
            && node.level == level
        {
            return Ok(self.clone());
        }
        let caches = self.session.caches().ok_or_else(|| {
            EmberError::NotSupported(
                "cache() on a client of a remote driver: cache on the driver's session".into(),
            )
        })?;
        let id = self.session.next_cache_id();
        let name = self
            .description
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| self.logical_plan().display().to_string());
        caches.declare(id, name, level);
        let node = CacheNode {
            id,
            level,
            input: self.logical_plan().clone(),
        };
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        let mut cached = self.with_plan(plan);
        cached.description = self.description.clone();
        Ok(cached)
    }

    /// Forgets this frame's kept partitions (on every executor) and returns the frame
    /// as it was before [`persist`](Self::persist): later actions compute it again.
    pub fn unpersist(&self) -> Result<DataFrame> {
        let LogicalPlan::Extension(e) = self.logical_plan() else {
            return Ok(self.clone());
        };
        let Some(node) = e.node.as_any().downcast_ref::<CacheNode>() else {
            return Ok(self.clone());
        };
        self.session.uncache(node.id);
        Ok(self.with_plan(node.input.clone()))
    }
}
