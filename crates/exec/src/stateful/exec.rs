//! `StatefulExec`: one task per state partition folds the partition's rows of a batch
//! into its state, loaded by whichever process runs the task.
//!
//! An executor keeps the partitions its tasks wrote in memory (its [`StateCache`]),
//! by state directory and version: the next batch's task for a partition, if it lands here, starts from
//! them instead of reading the store. A task that finds another version (a first
//! task here, a batch run again, a partition last run elsewhere) reads the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use parking_lot::Mutex;

use super::store::{BatchStats, Change, Entries};
use super::{Aggregates, Op, OpState, StatefulConfig};
use crate::Result;
use crate::task::TaskCaches;

/// Partitions kept in memory per executor, at most.
const CACHED_PARTITIONS: usize = 256;

struct Cached {
    version: u64,
    state: OpState,
    used: u64,
}

/// The state partitions an executor holds between batches: (query and state
/// directory, partition) → the partition after a version; and a counter that orders
/// their uses. Owned by the executor's [`crate::task::TaskCaches`].
#[derive(Default)]
pub struct StateCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    uses: u64,
    partitions: HashMap<(String, usize), Cached>,
}

impl fmt::Debug for StateCache {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StateCache({} partitions)",
            self.inner.lock().partitions.len()
        )
    }
}

impl StateCache {
    /// The partition's state after `version`, if this executor holds it; taken out,
    /// so a task that fails leaves nothing stale behind.
    fn take(&self, operator: &str, partition: usize, version: u64) -> Option<OpState> {
        let mut cache = self.inner.lock();
        let key = (operator.to_string(), partition);
        match cache.partitions.remove(&key) {
            Some(c) if c.version == version => Some(c.state),
            _ => None,
        }
    }

    fn put(&self, operator: &str, partition: usize, version: u64, state: OpState) {
        let mut cache = self.inner.lock();
        cache.uses += 1;
        let used = cache.uses;
        if cache.partitions.len() >= CACHED_PARTITIONS
            && let Some(oldest) = cache
                .partitions
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
        {
            cache.partitions.remove(&oldest);
        }
        cache.partitions.insert(
            (operator.to_string(), partition),
            Cached {
                version,
                state,
                used,
            },
        );
    }
}

/// A stateful operator over its input, hash-partitioned on the operator's keys (or
/// in one partition without keys): partition `p` is state partition `p`.
#[derive(Debug)]
pub struct StatefulExec {
    input: Arc<dyn ExecutionPlan>,
    config: StatefulConfig,
    /// An aggregation's functions (none for other operators).
    aggregates: Aggregates,
    op: Arc<Op>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl StatefulExec {
    /// `schema` is the operator's output; `aggregates` an aggregation's functions
    /// over `input` (none for other operators).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        config: StatefulConfig,
        aggregates: Aggregates,
        schema: SchemaRef,
    ) -> Result<StatefulExec> {
        config.check()?;
        let op = Op::new(&config, &aggregates, &input.schema(), &schema)?;
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(config.partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(StatefulExec {
            input,
            config,
            aggregates,
            op: Arc::new(op),
            schema,
            properties: Arc::new(properties),
        })
    }

    pub fn config(&self) -> &StatefulConfig {
        &self.config
    }

    pub fn aggregates(&self) -> &Aggregates {
        &self.aggregates
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The operator's key columns in `input`'s schema, to hash its rows by.
    pub fn key_exprs(
        config: &StatefulConfig,
        input: &arrow::datatypes::Schema,
    ) -> Vec<Arc<dyn PhysicalExpr>> {
        config
            .op
            .key_columns(config.event_time)
            .map(|i| Arc::new(Column::new(input.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
            .collect()
    }
}

impl DisplayAs for StatefulExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let op = match &self.config.op {
            super::OpConfig::Aggregate { .. } => "aggregation",
            super::OpConfig::Dedup { .. } => "deduplication",
            super::OpConfig::Join { .. } => "join",
        };
        write!(
            f,
            "StatefulExec: {op}, batch={}, partitions={}",
            self.config.batch_id, self.config.partitions
        )
    }
}

/// A partition's state after the batch before this one: the one this executor
/// holds, or read from the store and decoded by `load`.
pub(super) async fn state_before(
    config: &StatefulConfig,
    context: &TaskContext,
    partition: usize,
    load: impl FnOnce(Entries) -> Result<OpState>,
) -> Result<OpState> {
    let previous = config.batch_id.checked_sub(1);
    let caches = TaskCaches::of(context);
    if let Some(state) = previous.and_then(|v| caches.state.take(&config.cache_key(), partition, v))
    {
        return Ok(state);
    }
    let store = config.store(context.runtime_env().object_store_registry.as_ref())?;
    load(store.load_partition(partition, previous).await?)
}

/// Writes a partition's version for this batch (its `changes`, or a snapshot when
/// one is due), and keeps the state in this process for the next batch.
pub(super) async fn save(
    config: &StatefulConfig,
    context: &TaskContext,
    partition: usize,
    state: OpState,
    changes: Vec<Change>,
    stats: &BatchStats,
) -> Result<()> {
    config
        .store(context.runtime_env().object_store_registry.as_ref())?
        .write_partition(
            partition,
            config.batch_id,
            changes,
            || Op::entries(&state),
            stats,
        )
        .await?;
    TaskCaches::of(context)
        .state
        .put(&config.cache_key(), partition, config.batch_id, state);
    Ok(())
}

/// Folds one partition's rows of the batch, writes the partition's new version and
/// returns the rows it emits.
async fn run_partition(
    config: &StatefulConfig,
    context: &TaskContext,
    op: &Op,
    partition: usize,
    input: &[RecordBatch],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let mut state = state_before(config, context, partition, |entries| op.load(entries)).await?;
    let out = op.process(&mut state, input, config, schema)?;
    let stats = BatchStats {
        late_rows: out.late_rows,
        max_event_time: out.max_event_time,
        max_event_times: vec![],
        rows_total: out.rows_total,
        rows_updated: out.rows_updated,
        rows_removed: out.rows_removed,
    };
    save(config, context, partition, state, out.changes, &stats).await?;
    Ok(out.rows)
}

impl ExecutionPlan for StatefulExec {
    fn name(&self) -> &str {
        "StatefulExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// The planner partitions the input itself, into exactly the state's
    /// partitions: the optimizer must not replace that with its own choice (one
    /// partition satisfies a hash requirement, for one).
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn PhysicalExpr>,
        ) -> DFResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DFResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("StatefulExec takes one input".into()))?;
        Ok(Arc::new(StatefulExec {
            input,
            config: self.config.clone(),
            aggregates: self.aggregates.clone(),
            op: self.op.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition >= self.config.partitions {
            return Err(DataFusionError::Internal(format!(
                "StatefulExec has {} partitions, not {}",
                self.config.partitions,
                partition + 1
            )));
        }
        let input = self.input.execute(partition, context.clone())?;
        let (config, op, schema) = (self.config.clone(), self.op.clone(), self.schema.clone());
        let rows = async move {
            let batches = datafusion::physical_plan::common::collect(input).await?;
            run_partition(&config, &context, &op, partition, &batches, &schema)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(rows),
        )))
    }
}
