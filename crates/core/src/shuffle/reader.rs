//! `ShuffleReaderExec`: reads a finished stage's map outputs.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use super::format::open_partition;
use super::location::{PartitionLocation, ShuffleData};
use super::store::ShuffleEnv;
use crate::error::EmberError;

/// Reads reduce partition `p` as the concatenation of `partitions[p]`: the pieces of
/// every map output that belong to it. Memory outputs are shared (no copy); files on
/// this host are read directly, a byte range each.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    stage_id: usize,
    schema: SchemaRef,
    partitioning: Partitioning,
    partitions: Vec<Vec<PartitionLocation>>,
    properties: Arc<PlanProperties>,
}

impl ShuffleReaderExec {
    pub fn new(
        stage_id: usize,
        schema: SchemaRef,
        partitioning: Partitioning,
        partitions: Vec<Vec<PartitionLocation>>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning.clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ShuffleReaderExec {
            stage_id,
            schema,
            partitioning,
            partitions,
            properties,
        }
    }

    pub fn stage_id(&self) -> usize {
        self.stage_id
    }

    pub fn exchange_partitioning(&self) -> &Partitioning {
        &self.partitioning
    }

    pub fn partition_locations(&self) -> &[Vec<PartitionLocation>] {
        &self.partitions
    }
}

fn fetch_failed(stage: usize, loc: &PartitionLocation, message: String) -> DataFusionError {
    DataFusionError::External(Box::new(EmberError::FetchFailed {
        executor: loc.executor_id.clone(),
        map_stage: stage,
        map_partition: loc.map_partition,
        message,
    }))
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={}, partitions={}",
            self.stage_id,
            self.partitions.len()
        )
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
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
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let locations = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "ShuffleReaderExec of stage {} has no partition {partition}",
                self.stage_id
            ))
        })?;
        let env = ctx
            .session_config()
            .get_extension::<ShuffleEnv>()
            .ok_or_else(|| DataFusionError::Internal("task context has no ShuffleEnv".into()))?;
        let stage = self.stage_id;
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 4);
        let tx = builder.tx();
        builder.spawn_blocking(move || {
            for loc in &locations {
                if loc.stats.rows == 0 {
                    continue;
                }
                match &loc.data {
                    ShuffleData::Memory(key) => {
                        let batches = env
                            .memory
                            .as_ref()
                            .and_then(|m| m.get(key, loc.reduce_partition))
                            .ok_or_else(|| {
                                fetch_failed(stage, loc, "in-memory map output is gone".into())
                            })?;
                        for b in batches {
                            if tx.blocking_send(Ok(b)).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    ShuffleData::File(path) => {
                        let reader = open_partition(path, loc.stats.offset, loc.stats.length)
                            .map_err(|e| fetch_failed(stage, loc, e.to_string()))?;
                        for b in reader {
                            let b = b.map_err(|e| {
                                fetch_failed(stage, loc, format!("{}: {e}", path.display()))
                            })?;
                            if tx.blocking_send(Ok(b)).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}
