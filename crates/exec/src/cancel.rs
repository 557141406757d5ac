//! Stopping a killed task promptly.
//!
//! DataFusion operators run until their input ends; aborting the tokio task only takes
//! effect when the task yields, and a CPU-bound pipeline (a nested-loop join feeding an
//! aggregate) may not yield for minutes. So before a task runs, every edge of its plan
//! gets a [`CancellableExec`]: each batch that crosses an edge first checks the task's
//! [`CancelFlag`], and once it is set the pipeline ends with a `Killed` error at the
//! next batch, wherever that is.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
    replace_children_if_necessary,
};
use futures::StreamExt;

use crate::error::EmberError;

/// Set once to stop a task.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Passes its input through, unless the task has been cancelled.
#[derive(Debug)]
pub struct CancellableExec {
    input: Arc<dyn ExecutionPlan>,
    flag: CancelFlag,
    properties: Arc<PlanProperties>,
}

impl CancellableExec {
    fn new(input: Arc<dyn ExecutionPlan>, flag: CancelFlag) -> Self {
        let properties = input.properties().clone();
        CancellableExec {
            input,
            flag,
            properties,
        }
    }
}

/// Puts a [`CancellableExec`] above every child in `plan` (not above the root, whose
/// type the task runner looks at).
pub fn make_cancellable(
    plan: Arc<dyn ExecutionPlan>,
    flag: &CancelFlag,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let wrapped = plan.transform_up(|node| {
        if node.children().is_empty() {
            return Ok(Transformed::no(node));
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| {
                Arc::new(CancellableExec::new(c.clone(), flag.clone())) as Arc<dyn ExecutionPlan>
            })
            .collect();
        Ok(Transformed::yes(replace_children_if_necessary(
            node, children,
        )?))
    })?;
    Ok(wrapped.data)
}

impl DisplayAs for CancellableExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CancellableExec")
    }
}

impl ExecutionPlan for CancellableExec {
    fn name(&self) -> &str {
        "CancellableExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("CancellableExec takes one child".into()))?;
        Ok(Arc::new(CancellableExec::new(input, self.flag.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        let schema = input.schema();
        let flag = self.flag.clone();
        let stream = input.map(move |batch| {
            if flag.is_cancelled() {
                return Err(DataFusionError::External(Box::new(EmberError::Killed)));
            }
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
