//! `ShuffleReaderExec`: reads a finished stage's map outputs.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use std::io::BufReader;

use super::fetch::RemoteRange;
use super::format::open_partition;
use super::store::ShuffleEnv;
use crate::error::EmberError;
use crate::proto::FetchPartitionRequest;
use ember_core::shuffle::{PartitionLocation, ShuffleData};

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
        partitioning: Partitioning,
        partitions: Vec<Vec<PartitionLocation>>,
        facts: EquivalenceProperties,
    ) -> Self {
        let schema = facts.schema().clone();
        let properties = Arc::new(PlanProperties::new(
            facts,
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

/// Bytes of remote map output a reduce task asks for ahead of reading them (Spark's
/// `spark.reducer.maxSizeInFlight`).
const FETCH_BYTES_IN_FLIGHT: u64 = 48 << 20;

/// The memory a reduce task's fetches ahead hold, from its executor's pool.
struct FetchReservation(MemoryReservation);

impl FetchReservation {
    /// Reserves up to [`FETCH_BYTES_IN_FLIGHT`] (no more than the `wanted` bytes of
    /// remote pieces), halving what it asks for while the pool refuses; returns the
    /// bytes granted. With none, pieces are still fetched, one at a time.
    fn grow_up_to(&mut self, wanted: u64) -> u64 {
        let mut ask = FETCH_BYTES_IN_FLIGHT.min(wanted) as usize;
        while ask >= 1 << 20 {
            if self.0.try_grow(ask).is_ok() {
                return ask as u64;
            }
            ask /= 2;
        }
        0
    }
}

/// The remote fetches of one reduce task opened ahead of their turn, in order.
struct FetchesAhead {
    budget: u64,
    in_flight: u64,
    /// How many of the remote pieces have been opened.
    opened: usize,
    open: std::collections::HashMap<usize, (RemoteRange, u64)>,
    /// Bytes of pieces taken and still being read.
    reading: std::collections::HashMap<usize, u64>,
}

impl FetchesAhead {
    fn new(budget: u64) -> Self {
        FetchesAhead {
            budget,
            in_flight: 0,
            opened: 0,
            open: Default::default(),
            reading: Default::default(),
        }
    }

    /// Opens the next pieces of `remote` (location indexes, in reading order) while
    /// their bytes fit the budget, and always one when none is in flight.
    fn open_within_budget(
        &mut self,
        remote: &[usize],
        bytes_of: impl Fn(usize) -> u64,
        mut open: impl FnMut(usize) -> RemoteRange,
    ) {
        while let Some(&next) = remote.get(self.opened) {
            let bytes = bytes_of(next);
            if self.in_flight > 0 && self.in_flight + bytes > self.budget {
                return;
            }
            self.in_flight += bytes;
            self.open.insert(next, (open(next), bytes));
            self.opened += 1;
        }
    }

    fn take(&mut self, index: usize) -> Option<RemoteRange> {
        let (range, bytes) = self.open.remove(&index)?;
        self.reading.insert(index, bytes);
        Some(range)
    }

    /// Piece `index` has been read: its bytes leave the budget.
    fn done(&mut self, index: usize) {
        if let Some(bytes) = self.reading.remove(&index) {
            self.in_flight -= bytes;
        }
    }
}

/// A map output in this executor's memory, or in a file on this host, is read
/// directly; any other is fetched from its executor.
fn is_local(env: &ShuffleEnv, loc: &PartitionLocation) -> bool {
    let this_executor = loc.executor_address.is_empty() || loc.executor_id == env.executor_id;
    match loc.data {
        // Another process's memory is only reached through it.
        ShuffleData::Memory(_) => this_executor,
        ShuffleData::File(_) => {
            this_executor
                || (!env.address.is_empty()
                    && host_of(&env.address) == host_of(&loc.executor_address))
        }
    }
}

/// `host` of `scheme://host:port/...`.
fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, _)) => host,
        None => authority,
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
        let runtime = tokio::runtime::Handle::current();
        let mut ahead_memory = FetchReservation(
            MemoryConsumer::new(format!("ShuffleReader[{stage}.{partition}]"))
                .register(ctx.memory_pool()),
        );
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 4);
        let tx = builder.tx();
        builder.spawn_blocking(move || {
            let request = |loc: &PartitionLocation| match &loc.data {
                ShuffleData::File(path) => FetchPartitionRequest {
                    stage_id: stage as u32,
                    map_partition: loc.map_partition as u32,
                    reduce_partition: loc.reduce_partition as u32,
                    path: path.display().to_string(),
                    offset: loc.stats.offset,
                    length: loc.stats.length,
                    ..Default::default()
                },
                ShuffleData::Memory(key) => FetchPartitionRequest {
                    job_id: key.job,
                    stage_id: key.stage as u32,
                    map_partition: key.map_partition as u32,
                    reduce_partition: loc.reduce_partition as u32,
                    memory: true,
                    token: key.token,
                    ..Default::default()
                },
            };
            // Remote pieces are fetched ahead, concurrently, while their requested
            // bytes stay within the budget (at least one at a time); their chunks wait
            // in bounded channels until read, in order.
            let remote: Vec<usize> = (0..locations.len())
                .filter(|&i| {
                    let loc = &locations[i];
                    loc.stats.rows > 0 && !is_local(&env, loc)
                })
                .collect();
            // What is fetched ahead waits in memory: it comes out of the task's pool.
            let ahead: u64 = remote.iter().map(|&i| locations[i].stats.length).sum();
            let mut fetches = FetchesAhead::new(ahead_memory.grow_up_to(ahead));
            for (i, loc) in locations.iter().enumerate() {
                if loc.stats.rows == 0 {
                    continue;
                }
                fetches.open_within_budget(
                    &remote,
                    |j| locations[j].stats.length,
                    |j| {
                        let loc = &locations[j];
                        RemoteRange::open(
                            &runtime,
                            &env,
                            loc.executor_address.clone(),
                            request(loc),
                        )
                    },
                );
                let batches: Box<dyn Iterator<Item = DFResult<RecordBatch>>> = match &loc.data {
                    ShuffleData::Memory(key) if is_local(&env, loc) => {
                        let batches = env
                            .memory
                            .as_ref()
                            .and_then(|m| m.get(key, loc.reduce_partition))
                            .ok_or_else(|| {
                                fetch_failed(stage, loc, "in-memory map output is gone".into())
                            })?;
                        Box::new(batches.into_iter().map(Ok))
                    }
                    ShuffleData::File(path) if is_local(&env, loc) => {
                        let reader = open_partition(path, loc.stats.offset, loc.stats.length)
                            .map_err(|e| fetch_failed(stage, loc, e.to_string()))?;
                        Box::new(reader.map(move |b| {
                            b.map_err(|e| {
                                fetch_failed(stage, loc, format!("{}: {e}", path.display()))
                            })
                        }))
                    }
                    _ => {
                        let remote = fetches.take(i).ok_or_else(|| {
                            DataFusionError::Internal(format!("fetch {i} was not opened"))
                        })?;
                        let address = &loc.executor_address;
                        // A file's range is its IPC stream; an output in memory is
                        // encoded when served, in about its Arrow size plus messages.
                        let limit = match loc.data {
                            ShuffleData::File(_) => loc.stats.length,
                            ShuffleData::Memory(_) => {
                                loc.stats.length.saturating_mul(2).saturating_add(1 << 20)
                            }
                        };
                        let reader = crate::ipc::StreamReader::try_new(
                            BufReader::new(remote),
                            limit,
                            "a fetched shuffle partition",
                        )
                        .map_err(|e| fetch_failed(stage, loc, format!("{address}: {e}")))?;
                        Box::new(reader.map(move |b| {
                            b.map_err(|e| fetch_failed(stage, loc, format!("{address}: {e}")))
                        }))
                    }
                };
                for batch in batches {
                    if tx.blocking_send(Ok(batch?)).is_err() {
                        return Ok(()); // the consumer went away
                    }
                }
                fetches.done(i);
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};

    use super::{FETCH_BYTES_IN_FLIGHT, FetchReservation, host_of};

    #[test]
    fn fetches_ahead_take_what_the_pool_grants() {
        let reserve = |pool_bytes: usize, wanted: u64| {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(pool_bytes));
            let mut r = FetchReservation(MemoryConsumer::new("reader").register(&pool));
            let granted = r.grow_up_to(wanted);
            assert_eq!(pool.reserved() as u64, granted);
            granted
        };
        assert_eq!(reserve(1 << 30, u64::MAX), FETCH_BYTES_IN_FLIGHT);
        assert_eq!(
            reserve(1 << 30, 5 << 20),
            5 << 20,
            "no more than is fetched"
        );
        assert_eq!(reserve(10 << 20, u64::MAX), 6 << 20, "halved until it fits");
        assert_eq!(reserve(1 << 19, u64::MAX), 0, "none: one piece at a time");
    }

    #[test]
    fn host_of_an_address_ignores_scheme_and_port() {
        assert_eq!(host_of("http://127.0.0.1:7078"), "127.0.0.1");
        assert_eq!(host_of("https://exec-1.ember:7078/"), "exec-1.ember");
        assert_eq!(host_of("10.0.0.5"), "10.0.0.5");
    }
}
