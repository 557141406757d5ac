//! `UnresolvedShuffleExec`: the placeholder a stage plan holds for a child stage's
//! output until that stage has run.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

/// Leaf standing for the output of stage `stage_id`. Its partitioning is that of the
/// exchange: `Hash(exprs, n)` for a hash shuffle, or `UnknownPartitioning(m)` when map
/// task `i` becomes reader partition `i` (coalesce, merge, broadcast). Its equivalence
/// properties (`facts`) are what the exchange's output is known to satisfy, as
/// DataFusion computed them for the exchange (see [`super::facts`]): operators above
/// rely on them (a window partitioned by a column a filter made constant, say).
#[derive(Debug)]
pub struct UnresolvedShuffleExec {
    stage_id: usize,
    partitioning: Partitioning,
    properties: Arc<PlanProperties>,
}

impl UnresolvedShuffleExec {
    pub fn new(stage_id: usize, partitioning: Partitioning, facts: EquivalenceProperties) -> Self {
        let properties = Arc::new(PlanProperties::new(
            facts,
            partitioning.clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        UnresolvedShuffleExec {
            stage_id,
            partitioning,
            properties,
        }
    }

    pub fn stage_id(&self) -> usize {
        self.stage_id
    }

    pub fn exchange_partitioning(&self) -> &Partitioning {
        &self.partitioning
    }

    /// True when the exchange hashes rows into partitions; false when reader
    /// partition `i` is map task `i`'s whole output.
    pub fn is_hash(&self) -> bool {
        matches!(self.partitioning, Partitioning::Hash(..))
    }
}

impl DisplayAs for UnresolvedShuffleExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "UnresolvedShuffleExec: stage={}, partitions={}",
            self.stage_id,
            self.partitioning.partition_count()
        )
    }
}

impl ExecutionPlan for UnresolvedShuffleExec {
    fn name(&self) -> &str {
        "UnresolvedShuffleExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(format!(
            "UnresolvedShuffleExec for stage {} was executed before the stage finished",
            self.stage_id
        )))
    }
}
