//! `map_batches` in the logical plan: a user-defined node naming a registered batch
//! function, and the extension planner that turns it into `MapBatchesExec`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use ember_exec::batch_fn::{BatchFn, BatchFnRegistry, MapBatchesExec};

/// Logical node: apply batch function `name` to every batch of `input`.
#[derive(Debug, Clone)]
pub struct MapBatchesNode {
    pub name: String,
    pub input: LogicalPlan,
    pub schema: DFSchemaRef,
}

impl MapBatchesNode {
    pub fn try_new(
        name: String,
        input: LogicalPlan,
        output: &arrow::datatypes::Schema,
    ) -> DFResult<Self> {
        let schema = Arc::new(DFSchema::try_from(output.clone())?);
        Ok(MapBatchesNode {
            name,
            input,
            schema,
        })
    }
}

impl PartialEq for MapBatchesNode {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.input == other.input
    }
}
impl Eq for MapBatchesNode {}
impl PartialOrd for MapBatchesNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.name.partial_cmp(&other.name)
    }
}
impl Hash for MapBatchesNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for MapBatchesNode {
    fn name(&self) -> &str {
        "MapBatches"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "MapBatches: fn={}", self.name)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("MapBatches takes one input".into()))?;
        Ok(MapBatchesNode {
            name: self.name.clone(),
            input,
            schema: self.schema.clone(),
        })
    }
}

/// Plans `MapBatchesNode`s with the session's registry.
#[derive(Debug)]
struct MapBatchesPlanner {
    registry: Arc<BatchFnRegistry>,
    /// A cluster driver plans functions only its executors have (checked when the
    /// job is submitted); elsewhere an unknown name is an error now.
    cluster_driver: bool,
}

#[async_trait]
impl ExtensionPlanner for MapBatchesPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<MapBatchesNode>() else {
            return Ok(None);
        };
        let func = match self.registry.get(&node.name) {
            Some(func) => func,
            None if self.cluster_driver => executor_side(&node.name, &node.schema),
            None => {
                return Err(DataFusionError::Plan(format!(
                    "no batch function named '{}' is registered",
                    node.name
                )));
            }
        };
        let input = physical_inputs
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("MapBatches takes one input".into()))?;
        Ok(Some(Arc::new(MapBatchesExec::new(func, input))))
    }
}

/// A batch function the driver knows only by name and schema: tasks decode it from
/// their executor's registry, so this body never runs.
fn executor_side(name: &str, schema: &DFSchemaRef) -> BatchFn {
    let name = name.to_string();
    BatchFn {
        name: name.clone(),
        output_schema: Arc::new(schema.as_arrow().clone()),
        func: Arc::new(move |_| {
            Err(DataFusionError::Execution(format!(
                "batch function '{name}' runs on executors only"
            )))
        }),
    }
}

/// The session's query planner: DataFusion's, plus ember's logical extensions.
#[derive(Debug)]
pub(crate) struct EmberQueryPlanner {
    registry: Arc<BatchFnRegistry>,
    cluster_driver: bool,
}

impl EmberQueryPlanner {
    pub(crate) fn new(registry: Arc<BatchFnRegistry>, cluster_driver: bool) -> Self {
        EmberQueryPlanner {
            registry,
            cluster_driver,
        }
    }
}

#[async_trait]
impl QueryPlanner for EmberQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(MapBatchesPlanner {
                registry: self.registry.clone(),
                cluster_driver: self.cluster_driver,
            }),
            Arc::new(crate::stream::StatefulPlanner),
            Arc::new(CachePlanner),
        ]);
        planner.create_physical_plan(logical_plan, session).await
    }
}

/// Plans a persisted frame's [`CacheNode`](crate::dataframe::CacheNode) as the
/// `CacheExec` the stage planner cuts at.
#[derive(Debug)]
struct CachePlanner;

#[async_trait]
impl ExtensionPlanner for CachePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<crate::dataframe::CacheNode>() else {
            return Ok(None);
        };
        let input = physical_inputs
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("Cache takes one input".into()))?;
        Ok(Some(Arc::new(crate::engine::CacheExec::new(
            node.id, node.level, input,
        ))))
    }
}
