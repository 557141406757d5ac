//! Running tasks: [`run_task`] decodes and runs one task on whichever executor got it
//! (an in-process slot or a remote process), in the [`TaskEnv`] that executor
//! provides. The task vocabulary (ids, definitions, statuses) is `ember_core::task`,
//! re-exported here.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, WindowUDF};
use datafusion::physical_plan::display::DisplayableExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use tracing::Instrument;

pub use ember_core::task::*;

use crate::cancel::{CancelFlag, make_cancellable};
use crate::codec::{EmberCodec, decode_plan};
use crate::config::EmberConfig;
use crate::error::{EmberError, Result};
use crate::kafka_scan::KafkaClients;
use crate::shuffle::{ShuffleEnv, ShuffleWriterExec};
use crate::stateful::exec::StateCache;

/// The functions a task may call, by name.
#[derive(Debug, Clone, Default)]
pub struct FunctionSet {
    pub scalar: HashMap<String, Arc<ScalarUDF>>,
    pub higher_order: HashMap<String, Arc<HigherOrderUDF>>,
    pub aggregate: HashMap<String, Arc<AggregateUDF>>,
    pub window: HashMap<String, Arc<WindowUDF>>,
}

impl FunctionSet {
    /// The functions registered in a DataFusion session.
    pub fn of(state: &datafusion::execution::SessionState) -> FunctionSet {
        FunctionSet {
            scalar: state.scalar_functions().clone(),
            higher_order: state.higher_order_functions().clone(),
            aggregate: state.aggregate_functions().clone(),
            window: state.window_functions().clone(),
        }
    }
}

/// Where an executor gets its functions from (a session in local mode, the user's
/// registry in an executor process).
pub trait FunctionSource: Send + Sync + fmt::Debug {
    fn functions(&self) -> FunctionSet;
}

/// What an executor provides to every task it runs.
#[derive(Debug, Clone)]
pub struct TaskEnv {
    pub executor_id: String,
    pub shuffle: Arc<ShuffleEnv>,
    pub codec: EmberCodec,
    pub functions: Arc<dyn FunctionSource>,
    /// DataFusion's runtime: memory, disk, and the object store registry every
    /// table, checkpoint and state store of the tasks gets its clients from.
    pub runtime: Arc<RuntimeEnv>,
    pub caches: Arc<TaskCaches>,
}

/// The clients and state an executor keeps between its tasks, created and dropped
/// with its [`TaskEnv`]: nothing of it outlives the executor (or the local session).
#[derive(Debug, Default)]
pub struct TaskCaches {
    /// Kafka partition clients of streaming batches' scans.
    pub kafka: KafkaClients,
    /// An executor process's object stores, which take each job's `ember.s3.*`
    /// settings (in local mode the session's own stores do).
    pub object_stores: Option<Arc<crate::storage::EmberStores>>,
    /// State partitions of stateful operators, for the next batch's task here.
    pub state: StateCache,
    /// The settings of recent jobs, parsed.
    pub configs: ConfigCache,
}

/// Task settings already parsed, by their text. Every task of a job carries the same
/// couple of hundred pairs, and parsing them again was most of a short task's setup.
#[derive(Debug, Default)]
pub struct ConfigCache(parking_lot::Mutex<Vec<(Settings, SessionConfig)>>);

/// A task's settings as its definition carries them.
type Settings = Arc<Vec<(String, String)>>;

impl ConfigCache {
    /// Jobs (or their final stages, whose settings differ) whose settings are kept.
    const KEPT: usize = 8;

    /// The session config of `pairs`, parsed once while they are recent.
    pub fn get(&self, pairs: &Settings) -> Result<SessionConfig> {
        let mut kept = self.0.lock();
        if let Some(i) = kept
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p, pairs) || **p == **pairs)
        {
            let entry = kept.remove(i);
            let config = entry.1.clone();
            kept.insert(0, entry);
            return Ok(config);
        }
        drop(kept);
        let config = session_config_from_pairs(pairs)?;
        let mut kept = self.0.lock();
        kept.insert(0, (pairs.clone(), config.clone()));
        kept.truncate(Self::KEPT);
        Ok(config)
    }
}

impl TaskCaches {
    /// The caches of the executor running a task (empty ones, used once, for a plan
    /// run outside [`run_task`]).
    pub fn of(context: &TaskContext) -> Arc<TaskCaches> {
        context
            .session_config()
            .get_extension::<TaskCaches>()
            .unwrap_or_default()
    }
}

/// Decodes and runs one task; never panics on a bad plan, reports a typed failure.
/// Setting `cancel` stops the task at its next batch with a `Killed` failure.
pub async fn run_task(def: &TaskDefinition, env: &TaskEnv, cancel: &CancelFlag) -> TaskStatus {
    let id = def.id;
    let span = tracing::info_span!("task", job = id.job, stage = id.stage, task = id.partition, attempt = id.attempt, executor = %env.executor_id);
    let started = Instant::now();
    let result = run(def, env, cancel).instrument(span).await;
    let result = match result {
        Ok(output) => {
            let (rows, bytes) = match &output {
                TaskOutput::Map(m) => (m.total_rows(), m.total_bytes()),
                TaskOutput::Result(b) => (
                    b.iter().map(|b| b.num_rows() as u64).sum(),
                    b.iter().map(|b| b.get_array_memory_size() as u64).sum(),
                ),
            };
            let metrics = TaskMetrics {
                output_rows: rows,
                output_bytes: bytes,
                elapsed: started.elapsed(),
            };
            Ok((output, metrics))
        }
        Err(e) => Err(failure_of(&e)),
    };
    TaskStatus {
        id,
        executor_id: env.executor_id.clone(),
        result,
    }
}

async fn run(def: &TaskDefinition, env: &TaskEnv, cancel: &CancelFlag) -> Result<TaskOutput> {
    let id = def.id;
    let setup = Instant::now();
    let config = env
        .caches
        .configs
        .get(&def.config)?
        .with_extension(env.shuffle.clone())
        .with_extension(env.caches.clone());
    let ember = EmberConfig::from_session(&config);
    // The job's S3 settings, for the clients this task's scans and writes make.
    if let Some(stores) = &env.caches.object_stores {
        stores.configure_s3(&ember.s3);
    }
    if ember.injected_failure(id.stage, id.attempt) {
        return Err(EmberError::Injected {
            stage: id.stage,
            partition: id.partition,
            attempt: id.attempt,
        });
    }
    if let Some(delay) = ember.injected_delay(id.stage, id.partition) {
        // Killable like the task itself would be.
        let until = Instant::now() + delay;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if cancel.is_cancelled() {
                return Err(EmberError::Killed);
            }
            tokio::time::sleep(left.min(std::time::Duration::from_millis(50))).await;
        }
    }
    let functions = env.functions.functions();
    let ctx = Arc::new(TaskContext::new(
        Some(id.to_string()),
        def.session_id.clone(),
        config,
        functions.scalar,
        functions.higher_order,
        functions.aggregate,
        functions.window,
        env.runtime.clone(),
    ));
    let context_us = setup.elapsed().as_micros() as u64;
    let plan = match &def.in_process {
        Some(plan) => {
            // What a cluster's executor would do with the bytes still works (checked
            // where tests run: debug builds).
            if cfg!(debug_assertions) {
                decode_plan(&def.plan, &ctx, &env.codec)?;
            }
            // Operators keep state for the run (a join's build side, a scan's files):
            // each task runs its own copy, as each would decode its own.
            reset_plan_states(plan.clone())?
        }
        None => decode_plan(&def.plan, &ctx, &env.codec)?,
    };
    let plan = make_cancellable(plan, cancel)?;
    // A task's fixed cost before its first row: its settings, context and plan.
    tracing::debug!(
        setup_us = setup.elapsed().as_micros() as u64,
        context_us,
        plan_bytes = def.plan.len(),
        decoded = def.in_process.is_none(),
        "task plan ready"
    );
    let output = if let Some(writer) = plan.downcast_ref::<ShuffleWriterExec>() {
        TaskOutput::Map(writer.write(id.partition, ctx).await?)
    } else {
        let mut stream = plan.execute(id.partition, ctx)?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.try_next().await? {
            batches.push(batch);
            // Yield now and then so that a killed task stops at the next batch.
            tokio::task::consume_budget().await;
        }
        TaskOutput::Result(batches)
    };
    if tracing::enabled!(tracing::Level::TRACE) {
        // Each operator's rows and time in this task, as `EXPLAIN ANALYZE` shows them.
        // (In local mode a file scan's figures are its stage's so far: the tasks'
        // copies of the plan share the scan's source, where DataFusion keeps them.)
        let operators = DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true);
        tracing::trace!("task operators\n{operators}");
    }
    Ok(output)
}

fn failure_of(e: &EmberError) -> TaskFailure {
    let inner = match e {
        EmberError::DataFusion(df) => find_ember_error(df).unwrap_or(e),
        other => other,
    };
    let exhausted = |df: &datafusion::error::DataFusionError| {
        matches!(
            df.find_root(),
            datafusion::error::DataFusionError::ResourcesExhausted(_)
        )
    };
    let reason = match inner {
        EmberError::DataFusion(df) if exhausted(df) => FailureReason::ResourcesExhausted,
        EmberError::FetchFailed {
            executor,
            map_stage,
            map_partition,
            ..
        } => FailureReason::FetchFailed {
            executor: executor.clone(),
            map_stage: *map_stage,
            map_partition: *map_partition,
        },
        EmberError::Io { .. } => FailureReason::Io,
        EmberError::Cancelled { .. } | EmberError::Killed => FailureReason::Killed,
        _ => FailureReason::Execution,
    };
    // Memory the other tasks of the executor held may be free on the next attempt.
    let retryable =
        e.is_retryable() || inner.is_retryable() || reason == FailureReason::ResourcesExhausted;
    TaskFailure {
        reason,
        message: e.one_line(),
        retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[derive(Debug)]
    struct NoFunctions;

    impl FunctionSource for NoFunctions {
        fn functions(&self) -> FunctionSet {
            FunctionSet::default()
        }
    }

    /// Rows of `partition` of a task run on `plan` itself, as a local slot runs it.
    async fn run_in_process(
        plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        partition: usize,
        env: &TaskEnv,
    ) -> usize {
        let def = TaskDefinition {
            id: TaskId {
                job: 1,
                stage: 1,
                stage_attempt: 0,
                partition,
                attempt: 0,
            },
            plan: crate::codec::encode_plan(plan.clone(), &env.codec).unwrap(),
            in_process: Some(plan.clone()),
            config: Arc::default(),
            session_id: "test".into(),
        };
        let cancel = CancelFlag::default();
        let run = run_task(&def, env, &cancel);
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("the task ends");
        match status.result {
            Ok((TaskOutput::Result(batches), _)) => batches.iter().map(|b| b.num_rows()).sum(),
            other => panic!("task {partition}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn tasks_given_one_plan_each_run_a_fresh_copy_of_it() {
        use arrow::array::{ArrayRef, Int32Array};
        use datafusion::common::NullEquality;
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::logical_expr::JoinType;
        use datafusion::physical_expr::expressions::col;
        use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

        let dir = tempfile::tempdir().unwrap();
        let env = TaskEnv {
            executor_id: "test".into(),
            shuffle: Arc::new(ShuffleEnv::new("test", dir.path(), None)),
            codec: EmberCodec::default(),
            functions: Arc::new(NoFunctions),
            runtime: Arc::new(RuntimeEnv::default()),
            caches: Arc::default(),
        };
        let table = |name: &str, n: i32| {
            let values: ArrayRef = Arc::new(Int32Array::from_iter_values(0..n));
            let batch = arrow::record_batch::RecordBatch::try_from_iter([(name, values)]).unwrap();
            let schema = batch.schema();
            MemorySourceConfig::try_new_exec(&[vec![batch.clone()], vec![batch]], schema, None)
                .unwrap() as Arc<dyn datafusion::physical_plan::ExecutionPlan>
        };
        let (build, probe) = (table("k", 10), table("v", 100));
        let build: Arc<dyn datafusion::physical_plan::ExecutionPlan> = Arc::new(
            datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(build),
        );
        let on = vec![(
            col("k", &build.schema()).unwrap(),
            col("v", &probe.schema()).unwrap(),
        )];
        // A join keeps its build side and its figures for the run of the node.
        let plan: Arc<dyn datafusion::physical_plan::ExecutionPlan> = Arc::new(
            HashJoinExec::try_new(
                build,
                probe,
                on,
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )
            .unwrap(),
        );
        // Each task of the stage joins its probe rows with the whole build side (both
        // build partitions: each key twice).
        for partition in [0, 1, 0] {
            assert_eq!(run_in_process(&plan, partition, &env).await, 20);
        }
        // The tasks ran copies: the plan itself has not run.
        let output_rows = plan.metrics().and_then(|m| m.output_rows());
        assert!(
            output_rows.unwrap_or(0) == 0,
            "the stage plan ran: {output_rows:?}"
        );
    }

    #[test]
    fn cached_settings_are_the_ones_each_task_carries() {
        let cache = ConfigCache::default();
        let two = settings(&[("datafusion.execution.batch_size", "2048")]);
        let three = settings(&[("datafusion.execution.batch_size", "3072")]);
        assert_eq!(cache.get(&two).unwrap().batch_size(), 2048);
        assert_eq!(cache.get(&three).unwrap().batch_size(), 3072);
        // Equal settings in another allocation (as a cluster's tasks each decode
        // theirs) find the same entry; a changed value is not taken for it.
        let again = settings(&[("datafusion.execution.batch_size", "2048")]);
        assert_eq!(cache.get(&again).unwrap().batch_size(), 2048);
        assert_eq!(cache.0.lock().len(), 2);
        // A bad value is an error naming its key, and is not kept.
        let bad = settings(&[("ember.task.max_failures", "many")]);
        let e = cache.get(&bad).unwrap_err().to_string();
        assert!(e.contains("ember.task.max_failures"), "{e}");
        assert_eq!(cache.0.lock().len(), 2);
    }
}
