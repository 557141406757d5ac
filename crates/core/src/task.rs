//! Tasks: what the scheduler sends, what comes back, and [`run_task`], which runs one
//! task on whichever executor got it (an in-process slot or a remote process).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, WindowUDF};
use datafusion::prelude::SessionConfig;
use futures::TryStreamExt;
use tracing::Instrument;

use crate::cancel::{CancelFlag, make_cancellable};
use crate::codec::{EmberCodec, decode_plan};
use crate::config::EmberConfig;
use crate::error::{EmberError, Result};
use crate::shuffle::{MapOutput, ShuffleEnv, ShuffleWriterExec};

/// `(job, stage, stage_attempt, partition, task_attempt)`: every attempt of every task
/// is distinct, so a late report of an old attempt is recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub job: u64,
    pub stage: usize,
    pub stage_attempt: usize,
    pub partition: usize,
    pub attempt: usize,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {}.{}.{} (stage attempt {}, attempt {})",
            self.job, self.stage, self.partition, self.stage_attempt, self.attempt
        )
    }
}

/// Everything needed to run a task: the encoded stage plan and the session config.
#[derive(Debug, Clone)]
pub struct TaskDefinition {
    pub id: TaskId,
    pub plan: bytes::Bytes,
    pub config: Arc<Vec<(String, String)>>,
    pub session_id: String,
}

/// What a successful task produced.
#[derive(Debug, Clone)]
pub enum TaskOutput {
    /// A map task's shuffle output.
    Map(MapOutput),
    /// A final-stage task's result rows.
    Result(Vec<RecordBatch>),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TaskMetrics {
    pub output_rows: u64,
    pub output_bytes: u64,
    pub elapsed: Duration,
}

/// Why a task failed, as the scheduler needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    Execution,
    FetchFailed {
        executor: String,
        map_stage: usize,
        map_partition: usize,
    },
    Io,
    ExecutorLost,
    Killed,
}

#[derive(Debug, Clone)]
pub struct TaskFailure {
    pub reason: FailureReason,
    pub message: String,
    pub retryable: bool,
}

/// A typed task result.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub id: TaskId,
    pub executor_id: String,
    pub result: std::result::Result<(TaskOutput, TaskMetrics), TaskFailure>,
}

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
    pub runtime: Arc<RuntimeEnv>,
}

/// DataFusion settings ember's stages need, whatever the session says.
///
/// - Work stealing lets one partition of a file scan read its siblings' files, which is
///   right in one process that polls every partition, and wrong when each partition is
///   an isolated task: a task would read the whole table.
/// - Join dynamic filters make the partitions of one hash join wait for each other at
///   a barrier: a task runs one partition alone and would wait forever.
/// - Physical scalar subqueries share their result with expressions elsewhere in the
///   plan through memory, which no stage boundary can carry; planned as joins instead,
///   they become ordinary (broadcast) stages.
pub const REQUIRED_DATAFUSION_SETTINGS: &[(&str, &str)] = &[
    (
        "datafusion.execution.enable_file_stream_work_stealing",
        "false",
    ),
    (
        "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
        "false",
    ),
    (
        "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
        "false",
    ),
];

/// Applies `key=value` settings, then [`REQUIRED_DATAFUSION_SETTINGS`], to a config.
pub fn apply_settings<'a>(
    config: &mut SessionConfig,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<()> {
    let required = REQUIRED_DATAFUSION_SETTINGS.iter().map(|(k, v)| (*k, *v));
    for (k, v) in pairs.into_iter().chain(required) {
        config
            .options_mut()
            .set(k, v)
            .map_err(|e| EmberError::Config(format!("{k}={v}: {e}")))?;
    }
    Ok(())
}

/// Builds a session config from the key/value pairs a task definition carries.
pub fn session_config_from_pairs(pairs: &[(String, String)]) -> Result<SessionConfig> {
    let mut config = SessionConfig::new().with_option_extension(EmberConfig::default());
    apply_settings(
        &mut config,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    Ok(config)
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
    let config = session_config_from_pairs(&def.config)?.with_extension(env.shuffle.clone());
    let ember = EmberConfig::from_session(&config);
    if ember.injected_failure(id.stage, id.attempt) {
        return Err(EmberError::Injected {
            stage: id.stage,
            partition: id.partition,
            attempt: id.attempt,
        });
    }
    if let Some(delay) = ember.injected_delay(id.stage) {
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
    let plan = make_cancellable(decode_plan(&def.plan, &ctx, &env.codec)?, cancel)?;
    if let Some(writer) = plan.downcast_ref::<ShuffleWriterExec>() {
        return Ok(TaskOutput::Map(writer.write(id.partition, ctx).await?));
    }
    let mut stream = plan.execute(id.partition, ctx)?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        batches.push(batch);
        // Yield now and then so that a killed task stops at the next batch.
        tokio::task::consume_budget().await;
    }
    Ok(TaskOutput::Result(batches))
}

/// The ember error inside a DataFusion error, if there is one.
pub fn find_ember_error(e: &DataFusionError) -> Option<&EmberError> {
    match e {
        DataFusionError::External(b) => {
            b.downcast_ref::<EmberError>()
                .and_then(|inner| match inner {
                    EmberError::DataFusion(df) => find_ember_error(df).or(Some(inner)),
                    other => Some(other),
                })
        }
        DataFusionError::Context(_, inner) => find_ember_error(inner),
        DataFusionError::Shared(inner) => find_ember_error(inner),
        DataFusionError::Diagnostic(_, inner) => find_ember_error(inner),
        _ => None,
    }
}

fn failure_of(e: &EmberError) -> TaskFailure {
    let inner = match e {
        EmberError::DataFusion(df) => find_ember_error(df).unwrap_or(e),
        other => other,
    };
    let reason = match inner {
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
    TaskFailure {
        reason,
        message: e.one_line(),
        retryable: e.is_retryable() || inner.is_retryable(),
    }
}
