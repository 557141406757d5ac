//! When a hash join's build side does not fit an executor's memory: the stage runs
//! again with sort-merge joins, which spill.
//!
//! A hash join keeps its whole build side in memory and cannot spill; past its share
//! of the executor's pool its task fails with "Resources exhausted". The scheduler then
//! rewrites that stage's partitioned hash joins as [`SortMergeJoinExec`]s over sorts
//! of both inputs by the join keys (each input is already hash-partitioned on them,
//! so partition `p` of one side meets partition `p` of the other as before). Sorts
//! and the sort-merge join spill to disk under the pool, so the stage completes in
//! bounded memory, more slowly.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode, SortMergeJoinExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use ember_core::Result;

/// Whether `plan` has a hash join that [`sort_merge_joins`] would replace.
pub(crate) fn has_partitioned_hash_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if node.downcast_ref::<HashJoinExec>().is_some_and(replaceable) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// Hash joins whose two sides are partitioned alike (not a broadcast build side,
/// which no other task shares) and that a sort-merge join computes the same way.
fn replaceable(join: &HashJoinExec) -> bool {
    join.partition_mode() == &PartitionMode::Partitioned
        && !join.null_aware
        && !join.on().is_empty()
}

/// `plan` with every replaceable hash join turned into a sort-merge join.
pub(crate) fn sort_merge_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        let Some(join) = node
            .downcast_ref::<HashJoinExec>()
            .filter(|j| replaceable(j))
        else {
            return Ok(Transformed::no(node));
        };
        let sorted = |input: &Arc<dyn ExecutionPlan>, left: bool| {
            let keys = join.on().iter().map(|(l, r)| {
                PhysicalSortExpr::new(
                    if left { l.clone() } else { r.clone() },
                    SortOptions::default(),
                )
            });
            let ordering = LexOrdering::new(keys).expect("a join has keys");
            Arc::new(SortExec::new(ordering, input.clone()).with_preserve_partitioning(true))
                as Arc<dyn ExecutionPlan>
        };
        let merge = SortMergeJoinExec::try_new(
            sorted(join.left(), true),
            sorted(join.right(), false),
            join.on().to_vec(),
            join.filter().cloned(),
            *join.join_type(),
            vec![SortOptions::default(); join.on().len()],
            join.null_equality(),
        )?;
        let merged: Arc<dyn ExecutionPlan> = Arc::new(merge);
        // The hash join may carry a projection of its output; keep it.
        let out = match &join.projection {
            Some(indices) => {
                let schema = merged.schema();
                let exprs = indices.iter().map(|&i| {
                    let field = schema.field(i);
                    let column: Arc<dyn datafusion::physical_expr::PhysicalExpr> = Arc::new(
                        datafusion::physical_expr::expressions::Column::new(field.name(), i),
                    );
                    (column, field.name().to_string())
                });
                Arc::new(ProjectionExec::try_new(exprs, merged)?) as Arc<dyn ExecutionPlan>
            }
            None => merged,
        };
        Ok(Transformed::yes(out))
    })?;
    Ok(rewritten.data)
}
