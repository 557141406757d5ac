//! Named RecordBatch functions: `df.map_batches("name")` applies a Rust function to
//! every batch, the MapReduce-style escape hatch. Functions are registered by name so
//! a stage plan can name them and any executor that has the same registry can run it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use parking_lot::RwLock;

/// The function type: one batch in, one batch (of the declared schema) out.
pub type BatchFnImpl = dyn Fn(RecordBatch) -> DFResult<RecordBatch> + Send + Sync;

/// A registered batch function with the schema of what it returns.
#[derive(Clone)]
pub struct BatchFn {
    pub name: String,
    pub output_schema: SchemaRef,
    pub func: Arc<BatchFnImpl>,
}

impl fmt::Debug for BatchFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchFn({})", self.name)
    }
}

/// Batch functions by name, shared by a session and its executors.
#[derive(Debug, Default)]
pub struct BatchFnRegistry {
    fns: RwLock<HashMap<String, BatchFn>>,
}

impl BatchFnRegistry {
    pub fn register(&self, f: BatchFn) {
        self.fns.write().insert(f.name.clone(), f);
    }

    pub fn get(&self, name: &str) -> Option<BatchFn> {
        self.fns.read().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.fns.read().keys().cloned().collect();
        v.sort();
        v
    }
}

/// Applies a [`BatchFn`] to every batch of its input, partition by partition.
#[derive(Debug)]
pub struct MapBatchesExec {
    func: BatchFn,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl MapBatchesExec {
    pub fn new(func: BatchFn, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(func.output_schema.clone()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(
                input.output_partitioning().partition_count(),
            ),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        MapBatchesExec {
            func,
            input,
            properties,
        }
    }

    pub fn func(&self) -> &BatchFn {
        &self.func
    }
}

impl DisplayAs for MapBatchesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MapBatchesExec: fn={}", self.func.name)
    }
}

impl ExecutionPlan for MapBatchesExec {
    fn name(&self) -> &str {
        "MapBatchesExec"
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
            .map_err(|_| DataFusionError::Internal("MapBatchesExec takes one child".into()))?;
        Ok(Arc::new(MapBatchesExec::new(self.func.clone(), input)))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx)?;
        let func = self.func.clone();
        let schema = func.output_schema.clone();
        let stream = input.map(move |batch| {
            let out = (func.func)(batch?)?;
            if out.schema().fields() != func.output_schema.fields() {
                return Err(DataFusionError::Execution(format!(
                    "batch function '{}' returned schema {:?}, but was registered with {:?}",
                    func.name,
                    out.schema(),
                    func.output_schema
                )));
            }
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
