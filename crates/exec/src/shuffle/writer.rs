//! `ShuffleWriterExec`: the root of every map stage.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::compute::BatchCoalescer;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::format::{PartSource, SpillWriter, assemble_data_file, ipc_write_options};
use super::store::ShuffleEnv;
use crate::config::EmberConfig;
use crate::error::{EmberError, Result};
use ember_core::keys::KeyValues;
use ember_core::shuffle::{MapOutput, MapOutputKey, PartitionStats, ShuffleData};

/// Runs its input for one partition and splits the rows into the exchange's output
/// partitions: by hash of `partitioning`'s expressions, or not at all (`None`: the
/// whole map output is output partition 0, used for coalesce / merge / broadcast).
#[derive(Debug)]
pub struct ShuffleWriterExec {
    job_id: u64,
    stage_id: usize,
    input: Arc<dyn ExecutionPlan>,
    partitioning: Option<Partitioning>,
    /// Input columns whose values each task summarizes in its map output.
    summarize: Vec<usize>,
    properties: Arc<PlanProperties>,
}

impl ShuffleWriterExec {
    pub fn try_new(
        job_id: u64,
        stage_id: usize,
        input: Arc<dyn ExecutionPlan>,
        partitioning: Option<Partitioning>,
    ) -> Result<Self> {
        if let Some(p) = &partitioning
            && !matches!(p, Partitioning::Hash(_, n) if *n > 0)
        {
            return Err(EmberError::NotSupported(format!(
                "shuffle partitioning {p:?}: only hash partitioning is exchanged"
            )));
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(ShuffleWriterExec {
            job_id,
            stage_id,
            input,
            partitioning,
            summarize: Vec::new(),
            properties,
        })
    }

    /// The same writer, reporting a [`KeySummary`](ember_core::keys::KeySummary) of
    /// each of the input's columns `columns` with every map output.
    pub fn summarizing(mut self, columns: Vec<usize>) -> Self {
        self.summarize = columns;
        self
    }

    pub fn summarized(&self) -> &[usize] {
        &self.summarize
    }

    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    pub fn stage_id(&self) -> usize {
        self.stage_id
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn shuffle_partitioning(&self) -> Option<&Partitioning> {
        self.partitioning.as_ref()
    }

    /// Number of output partitions each map task produces.
    pub fn output_partition_count(&self) -> usize {
        self.partitioning
            .as_ref()
            .map_or(1, |p| p.partition_count())
    }

    /// Number of map tasks: one per input partition.
    pub fn map_task_count(&self) -> usize {
        self.input.output_partitioning().partition_count()
    }

    /// Runs map task `map_partition` and stores its output, in memory when the
    /// executor keeps such outputs there and its budget allows, otherwise as one data
    /// file plus index.
    pub async fn write(&self, map_partition: usize, ctx: Arc<TaskContext>) -> Result<MapOutput> {
        let env = ctx
            .session_config()
            .get_extension::<ShuffleEnv>()
            .ok_or_else(|| EmberError::Internal("task context has no ShuffleEnv".into()))?;
        let config = EmberConfig::from_session(ctx.session_config());
        let schema = self.input.schema();
        let n = self.output_partition_count();
        let mut partitioner = match &self.partitioning {
            Some(p) => Some(BatchPartitioner::try_new(
                p.clone(),
                Time::new(),
                map_partition,
                self.map_task_count(),
            )?),
            None => None,
        };
        let key = MapOutputKey {
            job: self.job_id,
            stage: self.stage_id,
            map_partition,
            token: env.next_token(),
        };
        // Buffers bound for a file count against the executor's pool: a task whose
        // share is used spills its partitions early.
        let reservation =
            MemoryConsumer::new(format!("ShuffleWriter[{}.{map_partition}]", self.stage_id))
                .with_can_spill(true)
                .register(ctx.memory_pool());
        let mut out = PartitionedOutput::new(&env, key, schema.clone(), n, &config, reservation)?;
        let mut keys = self
            .summarize
            .iter()
            .map(|c| KeyValues::try_new(schema.field(*c).data_type()))
            .collect::<ember_core::Result<Vec<_>>>()?;
        let mut stream = self.input.execute(map_partition, ctx)?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            for (values, c) in keys.iter_mut().zip(&self.summarize) {
                values.update(batch.column(*c))?;
            }
            match partitioner.as_mut() {
                Some(p) => {
                    for part in p.partition_iter(batch)? {
                        let (i, b) = part?;
                        out.push(i, b)?;
                    }
                }
                None => out.push(0, batch)?,
            }
            // Yield now and then so that a killed task stops at the next batch.
            tokio::task::consume_budget().await;
        }
        let mut output = out.finish()?;
        output.keys = keys
            .iter()
            .zip(&self.summarize)
            .map(|(values, c)| values.summary(*c))
            .collect::<ember_core::Result<_>>()?;
        Ok(output)
    }
}

/// Bytes a map task holds in memory, when its output goes to disk anyway, before it
/// spills partitions to files of their own.
const TASK_BUFFER_BYTES: usize = 64 << 20;

/// The output partitions of one map task while it runs: coalesced into large batches
/// and held in memory, against the store's budget when the output is to stay in memory
/// or up to [`TASK_BUFFER_BYTES`] when it goes to a file; past that, spilled to
/// per-partition files. At the end, memory outputs go to the store, the rest into one
/// data file (held partitions written straight into it).
struct PartitionedOutput<'a> {
    env: &'a ShuffleEnv,
    key: MapOutputKey,
    schema: SchemaRef,
    coalescers: Vec<BatchCoalescer>,
    rows: Vec<u64>,
    memory: Vec<Vec<RecordBatch>>,
    /// Bytes of `memory` reserved from the store.
    reserved: usize,
    /// Bytes of `memory` held without the store (output bound for a file).
    buffered: usize,
    spills: Option<Vec<Option<SpillWriter>>>,
    options: arrow::ipc::writer::IpcWriteOptions,
    /// `buffered`, as drawn from the executor's memory pool.
    pool: MemoryReservation,
}

impl<'a> PartitionedOutput<'a> {
    fn new(
        env: &'a ShuffleEnv,
        key: MapOutputKey,
        schema: SchemaRef,
        n: usize,
        config: &EmberConfig,
        pool: MemoryReservation,
    ) -> Result<Self> {
        let coalescers = (0..n)
            .map(|_| BatchCoalescer::new(schema.clone(), config.shuffle_batch_rows))
            .collect();
        Ok(PartitionedOutput {
            env,
            key,
            schema,
            coalescers,
            rows: vec![0; n],
            memory: vec![Vec::new(); n],
            reserved: 0,
            buffered: 0,
            spills: None,
            options: ipc_write_options(config.shuffle_compression)?,
            pool,
        })
    }

    fn push(&mut self, partition: usize, batch: RecordBatch) -> Result<()> {
        self.rows[partition] += batch.num_rows() as u64;
        self.coalescers[partition].push_batch(batch)?;
        while let Some(done) = self.coalescers[partition].next_completed_batch() {
            self.emit(partition, done)?;
        }
        Ok(())
    }

    fn emit(&mut self, partition: usize, batch: RecordBatch) -> Result<()> {
        if self.spills.is_none() {
            let size = batch.get_array_memory_size();
            let held = match self.env.memory_for(self.key.job) {
                Some(store) if store.try_reserve(size) => {
                    self.reserved += size;
                    true
                }
                Some(_) => false,
                None if self.buffered + size <= TASK_BUFFER_BYTES
                    && self.pool.try_grow(size).is_ok() =>
                {
                    self.buffered += size;
                    true
                }
                None => false,
            };
            if held {
                self.memory[partition].push(batch);
                return Ok(());
            }
            self.start_spilling()?;
        }
        self.spill(partition, &batch)
    }

    fn map_dir(&self) -> PathBuf {
        self.env
            .job_dir(self.key.job)
            .join(format!("stage-{}", self.key.stage))
    }

    /// Moves everything held in memory to spill files; later batches go there directly.
    fn start_spilling(&mut self) -> Result<()> {
        let dir = self.map_dir();
        std::fs::create_dir_all(&dir).map_err(|e| EmberError::io(dir.display(), e))?;
        self.spills = Some((0..self.coalescers.len()).map(|_| None).collect());
        let held = std::mem::take(&mut self.memory);
        for (p, batches) in held.into_iter().enumerate() {
            for b in batches {
                self.spill(p, &b)?;
            }
        }
        self.memory = vec![Vec::new(); self.coalescers.len()];
        if let Some(store) = self.env.memory_for(self.key.job) {
            store.release(self.reserved);
        }
        self.reserved = 0;
        self.buffered = 0;
        self.pool.free();
        Ok(())
    }

    fn spill(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        let path = self.map_dir().join(format!(
            "map-{}-{}.part-{partition}",
            self.key.map_partition, self.key.token
        ));
        let spills = self.spills.as_mut().expect("spilling");
        let slot = &mut spills[partition];
        if slot.is_none() {
            *slot = Some(SpillWriter::create(
                path,
                &self.schema,
                self.options.clone(),
            )?);
        }
        slot.as_mut().expect("just created").write(batch)
    }

    fn finish(mut self) -> Result<MapOutput> {
        for p in 0..self.coalescers.len() {
            self.coalescers[p].finish_buffered_batch()?;
            while let Some(done) = self.coalescers[p].next_completed_batch() {
                self.emit(p, done)?;
            }
        }
        let executor_id = self.env.executor_id.clone();
        let executor_address = self.env.address.clone();
        let env = self.env;
        let parts: Vec<PartSource> = match (self.spills.take(), env.memory_for(self.key.job)) {
            (None, Some(store)) => {
                let partitions = self
                    .memory
                    .iter()
                    .zip(&self.rows)
                    .map(|(batches, rows)| PartitionStats {
                        offset: 0,
                        length: batches.iter().map(data_bytes).sum(),
                        rows: *rows,
                    })
                    .collect();
                store.insert(self.key, std::mem::take(&mut self.memory), self.reserved);
                self.reserved = 0;
                return Ok(MapOutput {
                    executor_id,
                    executor_address,
                    data: ShuffleData::Memory(self.key),
                    partitions,
                    keys: Vec::new(),
                });
            }
            (None, None) => std::mem::take(&mut self.memory)
                .into_iter()
                .map(PartSource::Batches)
                .collect(),
            (Some(spills), _) => spills
                .into_iter()
                .map(|s| {
                    s.map_or(PartSource::Batches(vec![]), |w| {
                        PartSource::Spill(Box::new(w))
                    })
                })
                .collect(),
        };
        let dir = self.map_dir();
        std::fs::create_dir_all(&dir).map_err(|e| EmberError::io(dir.display(), e))?;
        let path = dir.join(format!(
            "map-{}-{}.data",
            self.key.map_partition, self.key.token
        ));
        let ranges = assemble_data_file(&path, &self.schema, &self.options, parts)?;
        let partitions = ranges
            .into_iter()
            .zip(&self.rows)
            .map(|((offset, length), rows)| PartitionStats {
                offset,
                length,
                rows: *rows,
            })
            .collect();
        Ok(MapOutput {
            executor_id,
            executor_address,
            data: ShuffleData::File(path),
            partitions,
            keys: Vec::new(),
        })
    }
}

/// A task that fails or is killed mid-way gives its memory reservation back.
impl Drop for PartitionedOutput<'_> {
    fn drop(&mut self) {
        if self.reserved > 0
            && let Some(store) = self.env.memory_for(self.key.job)
        {
            store.release(self.reserved);
        }
    }
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleWriterExec: stage={}, partitioning=",
            self.stage_id
        )?;
        match &self.partitioning {
            Some(Partitioning::Hash(exprs, n)) => {
                let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                write!(f, "Hash([{}], {n})", exprs.join(", "))?;
            }
            _ => f.write_str("None")?,
        }
        if !self.summarize.is_empty() {
            let schema = self.input.schema();
            let names: Vec<String> = self
                .summarize
                .iter()
                .map(|c| format!("{}@{c}", schema.field(*c).name()))
                .collect();
            write!(f, ", summarize=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    fn name(&self) -> &str {
        "ShuffleWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        if let Some(Partitioning::Hash(exprs, _)) = &self.partitioning {
            for e in exprs {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("ShuffleWriterExec takes one child".into()))?;
        Ok(Arc::new(
            ShuffleWriterExec::try_new(
                self.job_id,
                self.stage_id,
                input,
                self.partitioning.clone(),
            )?
            .summarizing(self.summarize.clone()),
        ))
    }

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "ShuffleWriterExec is run by ember's task runner (ShuffleWriterExec::write), not executed as a stream".into(),
        ))
    }
}

/// The bytes of `batch`'s rows, not of the buffers' spare capacity (a coalesced
/// batch's buffers are sized for a full batch): what a reader of it takes in.
fn data_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| column_bytes(&c.to_data()).unwrap_or(c.get_array_memory_size()) as u64)
        .sum()
}

/// A column's bytes of values; `None` where Arrow cannot tell (a view column nested
/// in another, whose strings lie in buffers Arrow does not count).
fn column_bytes(data: &arrow::array::ArrayData) -> Option<usize> {
    use arrow::datatypes::DataType;
    let is_view = |d: &arrow::array::ArrayData| {
        matches!(d.data_type(), DataType::Utf8View | DataType::BinaryView)
    };
    if is_view(data) {
        let strings: usize = data.buffers().iter().skip(1).map(|b| b.len()).sum();
        let nulls = data.nulls().map_or(0, |n| n.buffer().len());
        return Some(data.len() * 16 + nulls + strings);
    }
    fn nested_view(d: &arrow::array::ArrayData) -> bool {
        d.child_data().iter().any(|c| {
            matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView) || nested_view(c)
        })
    }
    if nested_view(data) {
        return None;
    }
    data.get_slice_memory_size().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::shuffle::MemoryShuffleStore;

    /// A reservation from an unbounded pool.
    fn reservation() -> MemoryReservation {
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default());
        MemoryConsumer::new("test").register(&pool)
    }

    fn output_env(budget: usize) -> (ShuffleEnv, Arc<MemoryShuffleStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryShuffleStore::new(budget));
        (
            ShuffleEnv::new("test", dir.path(), Some(store.clone())),
            store,
            dir,
        )
    }

    fn batch(schema: &SchemaRef, rows: i64) -> RecordBatch {
        let values: Vec<i64> = (0..rows).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    fn key() -> MapOutputKey {
        MapOutputKey {
            job: 1,
            stage: 1,
            map_partition: 0,
            token: 1,
        }
    }

    #[test]
    fn an_abandoned_map_output_returns_its_memory() {
        let (env, store, _dir) = output_env(1 << 30);
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let config = EmberConfig {
            shuffle_batch_rows: 10,
            ..Default::default()
        };
        let mut out =
            PartitionedOutput::new(&env, key(), schema.clone(), 2, &config, reservation()).unwrap();
        out.push(0, batch(&schema, 100)).unwrap();
        assert!(store.used() > 0);
        drop(out);
        assert_eq!(store.used(), 0);
    }

    #[test]
    fn output_over_the_budget_goes_to_one_file_with_every_row() {
        let (env, store, _dir) = output_env(64);
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let config = EmberConfig {
            shuffle_batch_rows: 10,
            ..Default::default()
        };
        let mut out =
            PartitionedOutput::new(&env, key(), schema.clone(), 3, &config, reservation()).unwrap();
        for p in 0..3 {
            out.push(p, batch(&schema, 25)).unwrap();
        }
        let output = out.finish().unwrap();
        assert_eq!(store.used(), 0);
        let ShuffleData::File(path) = &output.data else {
            panic!("expected a file, got {:?}", output.data)
        };
        assert!(path.exists());
        assert_eq!(output.total_rows(), 75);
        assert_eq!(
            output.partitions.iter().map(|p| p.rows).collect::<Vec<_>>(),
            vec![25; 3]
        );
    }

    #[test]
    fn output_bound_for_disk_is_written_straight_into_one_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = ShuffleEnv::new("test", dir.path(), None);
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let config = EmberConfig {
            shuffle_batch_rows: 10,
            ..Default::default()
        };
        let mut out =
            PartitionedOutput::new(&env, key(), schema.clone(), 3, &config, reservation()).unwrap();
        out.push(0, batch(&schema, 25)).unwrap();
        out.push(2, batch(&schema, 5)).unwrap();
        let output = out.finish().unwrap();
        let ShuffleData::File(path) = &output.data else {
            panic!("expected a file, got {:?}", output.data)
        };
        let rows: Vec<u64> = output.partitions.iter().map(|p| p.rows).collect();
        assert_eq!(rows, vec![25, 0, 5]);
        // Only the data file and its index: no per-partition spill files were needed.
        let mut files: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, vec!["map-0-1.data", "map-0-1.data.index"]);
        let ranges = crate::shuffle::read_index(path).unwrap();
        let read: Vec<usize> = ranges
            .iter()
            .map(|(off, len)| {
                super::super::format::open_partition(path, *off, *len)
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum()
            })
            .collect();
        assert_eq!(read, vec![25, 0, 5]);
    }
}
