//! A batch's stateful operator in the logical plan, and its physical planning into
//! `StatefulExec` (whose input the stage planner hashes into its state partitions).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::DFSchemaRef;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use ember_exec::stateful::exec::StatefulExec;
use ember_exec::stateful::join::{StreamJoinExec, joined_filter};
use ember_exec::stateful::{Aggregates, OpConfig, StatefulConfig};

/// One batch of a streaming aggregation or deduplication over `input` (the batch
/// plan), emitting `schema`.
#[derive(Debug, Clone)]
pub(crate) struct StatefulNode {
    pub input: LogicalPlan,
    /// An aggregation's functions over `input`'s columns (none for other operators).
    pub aggregates: Vec<Expr>,
    pub config: StatefulConfig,
    pub schema: DFSchemaRef,
}

impl PartialEq for StatefulNode {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.input == other.input
            && self.aggregates == other.aggregates
            && self.schema == other.schema
    }
}

impl Eq for StatefulNode {}

impl PartialOrd for StatefulNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.config.batch_id.partial_cmp(&other.config.batch_id)
    }
}

impl Hash for StatefulNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.config.hash(state);
        self.input.hash(state);
        self.aggregates.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for StatefulNode {
    fn name(&self) -> &str {
        "Stateful"
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
        write!(
            f,
            "Stateful: batch={}, partitions={}",
            self.config.batch_id, self.config.partitions
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("Stateful takes one input".into()))?;
        Ok(StatefulNode {
            input,
            aggregates: self.aggregates.clone(),
            config: self.config.clone(),
            schema: self.schema.clone(),
        })
    }
}

/// Plans [`StatefulNode`]s as `StatefulExec`, one task per state partition.
#[derive(Debug)]
pub(crate) struct StatefulPlanner;

#[async_trait]
impl ExtensionPlanner for StatefulPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<StatefulNode>() else {
            return Ok(None);
        };
        let input = physical_inputs
            .first()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("Stateful takes one input".into()))?;
        // The exchange into the state partitions is the stage planner's
        // (`engine::planner`), after the optimizer.
        let schema = Arc::new(node.schema.as_arrow().clone());
        if let OpConfig::Join { .. } = &node.config.op {
            return Ok(Some(Arc::new(stream_join(
                input,
                node.config.clone(),
                schema,
            )?)));
        }
        let mut aggregates = Aggregates::default();
        for e in &node.aggregates {
            let lowered = LoweredAggregateBuilder::new(
                e,
                node.input.schema(),
                &input.schema(),
                session.execution_props(),
                planning_ctx,
            )
            .build()?;
            aggregates.exprs.push(lowered.aggregate);
            aggregates.filters.push(lowered.filter);
        }
        let exec = StatefulExec::try_new(input, node.config.clone(), aggregates, schema)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Some(Arc::new(exec)))
    }
}

/// A stream-stream join from the join DataFusion planned: its sides, keys and filter.
fn stream_join(
    join: Arc<dyn ExecutionPlan>,
    config: StatefulConfig,
    schema: arrow::datatypes::SchemaRef,
) -> DFResult<StreamJoinExec> {
    let (left, right, on, filter) = if let Some(j) = join.downcast_ref::<HashJoinExec>() {
        if j.projection.is_some() {
            return Err(DataFusionError::NotImplemented(
                "a stream-stream join with a projection inside it".into(),
            ));
        }
        (
            j.left().clone(),
            j.right().clone(),
            j.on().to_vec(),
            j.filter().cloned(),
        )
    } else if let Some(j) = join.downcast_ref::<NestedLoopJoinExec>() {
        if j.projection().is_some() {
            return Err(DataFusionError::NotImplemented(
                "a stream-stream join with a projection inside it".into(),
            ));
        }
        (
            j.left().clone(),
            j.right().clone(),
            vec![],
            j.filter().cloned(),
        )
    } else if let Some(j) = join.downcast_ref::<CrossJoinExec>() {
        (j.left().clone(), j.right().clone(), vec![], None)
    } else {
        return Err(DataFusionError::NotImplemented(format!(
            "a stream-stream join planned as {}",
            join.name()
        )));
    };
    let filter = filter
        .map(|f| {
            joined_filter(
                f.expression(),
                f.column_indices(),
                left.schema().fields().len(),
                &schema,
            )
        })
        .transpose()?;
    StreamJoinExec::try_new(left, right, on, filter, config, schema)
        .map_err(|e| DataFusionError::Plan(e.to_string()))
}
