//! The user functions a physical plan calls, so the driver can refuse a job whose
//! functions some executor lacks instead of letting its tasks fail one by one.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, LazyLock};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::prelude::SessionContext;
use ember_exec::batch_fn::MapBatchesExec;

/// DataFusion's built-in function names and ember's own (`from_json`, `window`, ...):
/// every executor has these.
static BUILTINS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let state = SessionContext::new().state();
    let names = |m: Vec<String>| m.into_iter();
    names(state.scalar_functions().keys().cloned().collect())
        .chain(names(state.aggregate_functions().keys().cloned().collect()))
        .chain(names(state.window_functions().keys().cloned().collect()))
        .chain(names(
            state.higher_order_functions().keys().cloned().collect(),
        ))
        .chain(
            ember_core::ember_functions()
                .iter()
                .map(|f| f.name().to_string()),
        )
        .collect()
});

/// Whether every executor has function `name` without being told.
pub(crate) fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(name)
}

/// The non-built-in scalar and aggregate functions, and the batch functions, that
/// `plan` calls, each sorted.
pub(crate) fn user_functions(plan: &Arc<dyn ExecutionPlan>) -> (Vec<String>, Vec<String>) {
    let mut udfs = BTreeSet::new();
    let mut batch_fns = BTreeSet::new();
    let _ = plan.apply(|node| {
        if let Some(m) = node.downcast_ref::<MapBatchesExec>() {
            batch_fns.insert(m.func().name.clone());
        }
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            for a in agg.aggr_expr() {
                udfs.insert(a.fun().name().to_string());
            }
        }
        node.apply_expressions(&mut |expr| {
            expr.apply(|e| {
                if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>() {
                    udfs.insert(f.name().to_string());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(TreeNodeRecursion::Continue)
    });
    udfs.retain(|f| !BUILTINS.contains(f));
    (udfs.into_iter().collect(), batch_fns.into_iter().collect())
}
